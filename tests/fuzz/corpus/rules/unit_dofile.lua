-- dofile.lua: no dofile
return {
  name = "dofile_etc",
  on = { "test" },
  evaluate = function(event, ctx)
    dofile("/etc/passwd")
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
