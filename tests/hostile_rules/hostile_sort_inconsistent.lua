-- hostile_sort_inconsistent.lua -- a comparator that always says "less":
-- sort's partition runs off the array ("invalid order function").
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: invalid order function | instruction limit | deadline

return {
  name = "hostile_sort_inconsistent",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local t = {}
    for i = 1, 1000 do t[i] = i end
    table.sort(t, function(a, b) return true end)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
