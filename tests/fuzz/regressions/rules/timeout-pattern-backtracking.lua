-- Regression: Lua's pattern matcher backtracks inside one C call that the
-- instruction hook cannot interrupt; this took hours before the pattern guard
-- in engine/rules_sandbox.c (sbx_pattern_guard) refused it as too costly.
local s = string.rep("a", 2000)
local hit = s:find(".-.-.-b")
return {
  name = "pattern_backtracking",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    return { action = "alert", level = "info", reason = tostring(s:match("(.-)(.-)(.-)x")) }
  end,
}
