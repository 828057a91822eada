-- SEGV: fixture 2 read R.tests after fixture 1's evaluate replaced it.
-- Fixed: engine/rules_test.c checks the type again.
local R
R = {
  name = "t",
  on = { "c" },
  evaluate = function(event, ctx) R.tests = 5 end,
  tests = {
    { channel = "c", event = {}, expect = {} },
    { channel = "c", event = {}, expect = {} },
  },
}
return R
