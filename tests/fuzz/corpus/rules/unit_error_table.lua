-- error_table.lua: error() with a table value
return {
  name = "error_table",
  on = { "test" },
  evaluate = function(event, ctx)
    error({ code = 42 })
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
