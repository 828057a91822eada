-- gc_finalizer.lua: no __gc: finalizers run outside the instruction budget
return {
  name = "gc_finalizer",
  on = { "test" },
  evaluate = function(event, ctx)
    setmetatable({}, { __gc = function() while true do end end })
    return { action = "alert", level = "info", reason = "not reached" }
  end,
}
