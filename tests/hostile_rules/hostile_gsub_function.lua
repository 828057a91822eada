-- hostile_gsub_function.lua -- gsub whose replacement function loops.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit

return {
  name = "hostile_gsub_function",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local s = ("x"):rep(100)
    return { action = "alert", level = "info",
             reason = (s:gsub(".", function(c) while true do end end)) }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
