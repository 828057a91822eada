-- hostile_table_unpack.lua -- table.unpack over a range of 2e15 elements.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: too many results | stack overflow | memory limit | deadline

return {
  name = "hostile_table_unpack",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    return table.unpack({}, -1e15, 1e15)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
