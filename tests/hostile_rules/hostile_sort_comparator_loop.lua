-- hostile_sort_comparator_loop.lua -- a comparator that never returns.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit

return {
  name = "hostile_sort_comparator_loop",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    table.sort({ 3, 2, 1 }, function(a, b) while true do end end)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
