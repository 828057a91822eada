-- hostile_load_cloop.lua -- the chunk spends forever inside one C call at
-- load: table.move({}, 1, 1e15, 2) at top level.
-- mode: load
-- error: deadline
table.move({}, 1, 1e15, 2)

return {
  name = "hostile_load_cloop",
  on = { "inventory_events" },
  evaluate = function(event, ctx) end,
}
