-- hostile_gc_load.lua -- a __gc finalizer that loops, set when the chunk
-- loads: finalizers run with hooks off, at any allocation, so setmetatable
-- refuses __gc and the file does not load.
-- mode: load
-- error: __gc
setmetatable({}, { __gc = function() while true do end end })

return {
  name = "hostile_gc_load",
  on = { "inventory_events" },
  evaluate = function(event, ctx) end,
}
