-- UBSan float-cast-overflow: now = 1e300 converted to long long.
-- Fixed: engine/rules_test.c refuses a now that does not fit.
return {
  name = "now",
  on = { "c" },
  evaluate = function(event, ctx) end,
  tests = { { channel = "c", event = {}, expect = {}, now = 1e300 } },
}
