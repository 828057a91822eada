-- infinite_loop.lua: runs until the instruction limit aborts it
return {
  name = "infinite_loop",
  on = { "test" },
  evaluate = function(event, ctx)
    while true do end
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
