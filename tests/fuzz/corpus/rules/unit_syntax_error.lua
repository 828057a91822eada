-- syntax_error.lua: the message must point at line 7
return {
  name = "syntax_error",
  on = { "test" },
  evaluate = function(event, ctx)
    local x = 1
    local y = = 2
    return nil
  end,
}
