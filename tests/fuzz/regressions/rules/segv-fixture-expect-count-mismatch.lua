-- SEGV: the count-mismatch message formatted expect[1] after evaluate
-- replaced it. Fixed: engine/rules_test.c fmt_expect().
local R
R = {
  name = "e",
  on = { "c" },
  evaluate = function(event, ctx)
    R.tests[1].expect[1] = 7
  end,
  tests = {
    { channel = "c", event = {}, expect = { { action = "alert", reason = "r" } } },
  },
}
return R
