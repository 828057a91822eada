-- os_execute.lua: os has time, clock and date only
return {
  name = "os_execute",
  on = { "test" },
  evaluate = function(event, ctx)
    os.execute("touch /tmp/nerve-pwned")
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
