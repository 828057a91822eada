-- hostile_string_doubling.lua -- s = s .. s until something gives.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: memory limit | instruction limit | deadline

return {
  name = "hostile_string_doubling",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local s = "x"
    while true do s = s .. s end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
