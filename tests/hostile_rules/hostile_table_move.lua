-- hostile_table_move.lua -- table.move({}, 1, 1e15, 2): 10^15 iterations
-- inside one C call, no instruction counted, nothing allocated.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline

return {
  name = "hostile_table_move",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    table.move({}, 1, 1e15, 2)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
