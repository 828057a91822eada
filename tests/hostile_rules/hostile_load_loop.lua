-- hostile_load_loop.lua -- the chunk itself never returns: a top-level
-- while true when the file loads (daemon start, reload, nerve check).
-- mode: load
-- error: deadline | instruction limit
while true do end

return {
  name = "hostile_load_loop",
  on = { "inventory_events" },
  evaluate = function(event, ctx) end,
}
