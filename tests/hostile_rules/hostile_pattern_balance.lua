-- hostile_pattern_balance.lua -- %b() on 200,000 unbalanced '(': every start
-- position scans to the end, quadratic inside one C call.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline

return {
  name = "hostile_pattern_balance",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local s = ("("):rep(200000)
    while true do s:find("%b()") end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
