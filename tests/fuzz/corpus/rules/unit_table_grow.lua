-- table_grow.lua: grows until the memory limit aborts it
return {
  name = "table_grow",
  on = { "test" },
  evaluate = function(event, ctx)
    local t = {}
    while true do t[#t + 1] = string.rep("x", 65536) .. #t end
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
