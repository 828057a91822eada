-- The same with an escape: reason "\0tail" was delivered as "".
return {
  name = "nul_reason",
  on = { "test" },
  evaluate = function(event, ctx)
    return { action = "alert", level = "info", reason = "\0tail" }
  end,
}
