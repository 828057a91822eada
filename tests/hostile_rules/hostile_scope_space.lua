-- hostile_scope_space.lua -- a kill scope with a space ("campaign:spring
-- sale"): outside the scope grammar, so no kill record can be made of it.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: scope

return {
  name = "hostile_scope_space",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    return { action = "kill", scope = "campaign:spring sale", reason = "hostile scope" }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
