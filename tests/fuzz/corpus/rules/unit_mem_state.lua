-- mem_state.lua: a rule that hits its memory limit gets a fresh state
return {
  name = "mem_state",
  on = { "test" },
  evaluate = function(event, ctx)
    ctx.state.n = (ctx.state.n or 0) + 1
    if event.grow then
      local t = {} while true do t[#t + 1] = string.rep("y", 65536) .. #t end
    end
    return { action = "alert", level = "info", reason = "n=" .. ctx.state.n }
  end,
}
