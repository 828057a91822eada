-- SEGV: the decision comparison read expect[1] after evaluate replaced it.
-- Fixed: engine/rules_test.c checks the type again after evaluate.
local R
R = {
  name = "e",
  on = { "c" },
  evaluate = function(event, ctx)
    R.tests[1].expect[1] = 7
    return { action = "alert", level = "info", reason = "r" }
  end,
  tests = {
    { channel = "c", event = {}, expect = { { action = "alert", reason = "r" } } },
  },
}
return R
