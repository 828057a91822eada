-- UBSan/NULL strcmp: expect[1].reason became a table during evaluate.
-- Fixed: engine/rules_test.c checks the field type again after evaluate.
local R
R = {
  name = "e",
  on = { "c" },
  evaluate = function(event, ctx)
    R.tests[1].expect[1].reason = {}
    return { action = "alert", level = "info", reason = "r" }
  end,
  tests = {
    { channel = "c", event = {}, expect = { { action = "alert", reason = "r" } } },
  },
}
return R
