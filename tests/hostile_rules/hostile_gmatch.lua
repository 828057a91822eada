-- hostile_gmatch.lua -- gmatch with a quadratic pattern: the first call of the
-- iterator tries every start position of a 200,000-byte subject.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline

return {
  name = "hostile_gmatch",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    for m in ("a"):rep(200000):gmatch("a-b") do end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
