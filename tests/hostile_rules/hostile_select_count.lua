-- hostile_select_count.lua -- select('#', ...) over 999,000 values unpacked
-- onto the stack.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: memory limit | stack overflow | too many results | deadline

return {
  name = "hostile_select_count",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local n = select("#", table.unpack({}, 1, 999000))
    return { action = "alert", level = "info", reason = tostring(n) }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
