-- hostile_while_true.lua -- the plainest: while true do end.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit
return {
  name = "hostile_while_true",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    while true do end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
