-- pcall_loop.lua: a pcall must not swallow the instruction-limit abort
return {
  name = "pcall_loop",
  on = { "test" },
  evaluate = function(event, ctx)
    while true do pcall(function() while true do end end) end
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
