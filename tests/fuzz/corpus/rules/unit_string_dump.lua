-- string_dump.lua: no string.dump (bytecode out means bytecode in)
return {
  name = "string_dump",
  on = { "test" },
  evaluate = function(event, ctx)
    local b = string.dump(function() end)
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
