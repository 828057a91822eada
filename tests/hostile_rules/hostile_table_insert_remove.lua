-- hostile_table_insert_remove.lua -- table.insert/remove at the front of a
-- 100,000-element table in a loop: each call moves the whole table inside one
-- C call while the loop costs a handful of instructions.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit

return {
  name = "hostile_table_insert_remove",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local t = { ("x"):rep(100000):byte(1, -1) }
    while true do
      table.insert(t, 1, 0)
      table.remove(t, 1)
    end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
