-- ASan heap-use-after-free: the name, channels and description kept by the loader
-- pointed into the rule table, which a fixture's evaluate can change (and the
-- GC then frees). Fixed: engine/rules.c anchors them (anchored()).
local R
R = {
  name = "n" .. string.rep("x", 40),
  on = { "c" .. string.rep("y", 40) },
  description = "d" .. string.rep("z", 40),
  evaluate = function(event, ctx)
    R.name, R.on, R.description = nil, nil, nil
    local junk = {}
    for i = 1, 2000 do junk[i] = { i } end
    junk = nil
  end,
  tests = {
    { channel = "c" .. string.rep("y", 40), event = {}, expect = {} },
    { channel = "c" .. string.rep("y", 40), event = {}, expect = {} },
  },
}
return R
