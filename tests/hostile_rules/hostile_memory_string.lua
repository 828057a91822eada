-- hostile_memory_string.lua -- string growth up to the memory limit, caught
-- with pcall again and again.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: memory limit | instruction limit | deadline

return {
  name = "hostile_memory_string",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    while true do
      pcall(function()
        local s = "x"
        for i = 1, 64 do s = s .. s end
      end)
    end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
