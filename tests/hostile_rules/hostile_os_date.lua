-- hostile_os_date.lua -- os.date abuse: a time out of range (caught), then a
-- format of 1,000,000 %c conversions (some 24 MB of output).
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: memory limit | instruction limit | deadline

return {
  name = "hostile_os_date",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    pcall(os.date, "*t", 2^62)
    pcall(os.time, { year = 1e15, month = 1, day = 1 })
    return { action = "alert", level = "info", reason = os.date(("%c"):rep(1000000)) }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
