-- hostile_pattern_optional.lua -- many repeats: 40 optional items (a?) then
-- 40 a's against 40 a's: 2^40 backtracking paths. '?' is not counted by the
-- repeated-item guard.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | too costly

return {
  name = "hostile_pattern_optional",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local s = ("a"):rep(40)
    local p = ("a?"):rep(40) .. ("a"):rep(40)
    while true do s:match(p) end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
