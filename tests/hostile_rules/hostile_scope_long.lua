-- hostile_scope_long.lua -- a kill scope 10 KiB long.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: scope

return {
  name = "hostile_scope_long",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    return { action = "kill", scope = "campaign:" .. ("x"):rep(10240), reason = "hostile scope" }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
