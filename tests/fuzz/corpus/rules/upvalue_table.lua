local R
R = {
  name = "upvalue_table",
  on = { "test" },
  evaluate = function(event, ctx)
    return { action = "alert", level = "info", reason = R.name }
  end,
  tests = {
    { channel = "test", event = { n = 1 }, expect = { { action = "alert", reason = "upvalue_table" } } },
    { channel = "test", event = { n = 2 }, expect = { { action = "alert", level = "info" } } },
  },
}
return R
