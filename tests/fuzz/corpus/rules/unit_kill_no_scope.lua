-- kill_no_scope.lua: a kill must say what it kills
return {
  name = "kill_no_scope",
  on = { "test" },
  evaluate = function(event, ctx)
    return { action = "kill", reason = "everything" }
  end,
}
