-- logger.lua: log() goes to the log module, at most 16 lines per evaluation
return {
  name = "logger",
  on = { "test" },
  evaluate = function(event, ctx)
    for i = 1, 20 do log("info", "line " .. i .. "\nforged=1") end
    log("debug", "hidden at info level")
    if event.bad then log("loud", "x") end
  end,
}
