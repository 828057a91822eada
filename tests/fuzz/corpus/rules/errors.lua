return {
  name = "errors",
  on = { "a", "b" },
  evaluate = function(event, ctx)
    if ctx.channel == "a" then error({ code = 1 }) end
    if event.type == "sale" then error("boom", 0) end
    if event.type == "spend" then return { action = "alert", level = "info", reason = string.rep("r", 2000) } end
    return { action = "kill", reason = "x", scope = "has space" }
  end,
}
