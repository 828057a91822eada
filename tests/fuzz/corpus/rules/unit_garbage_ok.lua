-- garbage_ok.lua: live data well under the memory limit, garbage over it:
-- the emergency collection makes room and the rule keeps its state
return {
  name = "garbage_ok",
  on = { "test" },
  evaluate = function(event, ctx)
    local s = ctx.state
    if not s.big then
      s.big = {}
      for i = 1, 9 do s.big[i] = string.rep(tostring(i), 65536) end
    end
    s.n = (s.n or 0) + 1
    local total = 0
    for i = 1, 200 do total = total + #(string.rep("g", 8192) .. i) end
    return { action = "alert", level = "info", reason = "n=" .. s.n .. " total=" .. total }
  end,
}
