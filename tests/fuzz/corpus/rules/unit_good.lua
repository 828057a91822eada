-- good.lua: a well-behaved neighbour: every sandbox case loads it too
return {
  name = "good",
  on = { "test" },
  evaluate = function(event, ctx)
    return { action = "alert", level = "info", reason = "good " .. tostring(event.n) }
  end,
}
