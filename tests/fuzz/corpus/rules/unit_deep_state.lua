-- deep_state.lua: ctx.state nested deeper than a reload carries
return {
  name = "deep_state",
  on = { "test" },
  evaluate = function(event, ctx)
    local t = ctx.state
    for i = 1, 80 do t.next = {} t = t.next end
    ctx.state.n = (ctx.state.n or 0) + 1
    return { action = "alert", level = "info", reason = "n=" .. ctx.state.n }
  end,
}
