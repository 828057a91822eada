-- require.lua: no require (no package library at all)
return {
  name = "require_io",
  on = { "test" },
  evaluate = function(event, ctx)
    local io = require("io")
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
