-- missing_reason.lua: an alert without a reason
return {
  name = "missing_reason",
  on = { "test" },
  evaluate = function(event, ctx)
    return { { action = "alert", level = "info", reason = "fine" }, { action = "alert", level = "info" } }
  end,
}
