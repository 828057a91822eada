-- hostile_decisions_many.lua -- 100,000 decisions from one evaluation.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: decisions | memory limit

return {
  name = "hostile_decisions_many",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local d = { action = "alert", level = "info", reason = "one of many", scope = "sku:HOSTILE" }
    local out = {}
    for i = 1, 100000 do out[i] = d end
    return out
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
