-- unknown_action.lua: a decision with an action nerve does not know
return {
  name = "unknown_action",
  on = { "test" },
  evaluate = function(event, ctx)
    return { action = "explode", reason = "boom" }
  end,
}
