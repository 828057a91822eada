-- load.lua: no load: no code from strings
return {
  name = "load_string",
  on = { "test" },
  evaluate = function(event, ctx)
    local f = load("return 1")
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
