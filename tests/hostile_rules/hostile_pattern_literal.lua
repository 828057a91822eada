-- hostile_pattern_literal.lua -- a long quantifier-free pattern (500,000
-- bytes) against a long subject (1,000,000 bytes) with match (no memmem fast
-- path): 5*10^11 character comparisons in one C call.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline

return {
  name = "hostile_pattern_literal",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local s = ("a"):rep(1000000)
    local p = ("a"):rep(500000) .. "b"
    while true do s:match(p) end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
