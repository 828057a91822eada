-- string_rep.lua: string.rep is bounded by the memory limit
return {
  name = "string_rep",
  on = { "test" },
  evaluate = function(event, ctx)
    local s = string.rep("x", 1e10)
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
