-- hostile_scope_grammar.lua -- a kill scope the old rule check accepted (any
-- printable bytes) but the admin API could not name ("campaign:50%off{spring}":
-- a '%' that is not %XX, braces): once engaged it could never be listed or
-- reset. The fixture expects the kill so that the old, lenient check passes
-- it: with one scope grammar it is the rule's error instead.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: scope
return {
  name = "hostile_scope_grammar",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    return { action = "kill", scope = "campaign:50%off{spring}", reason = "hostile scope" }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 },
      expect = { { action = "kill", scope = "campaign:50%off{spring}", reason = "hostile scope" } } },
  },
  -- fixtures:end
}
