-- io_open.lua: no io library
return {
  name = "io_open",
  on = { "test" },
  evaluate = function(event, ctx)
    local f = io.open("/etc/passwd", "r")
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
