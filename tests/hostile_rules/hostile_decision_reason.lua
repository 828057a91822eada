-- hostile_decision_reason.lua -- a decision whose reason is 1 MiB.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: reason | memory limit

return {
  name = "hostile_decision_reason",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    return { action = "alert", level = "warning", reason = ("r"):rep(1 << 20) }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
