-- hostile_pcall_swallow.lua -- catch the limit's error with pcall and carry
-- on, forever: the abort must stick until control is back in C.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit
return {
  name = "hostile_pcall_swallow",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local caught = 0
    while true do
      if not pcall(function() while true do end end) then caught = caught + 1 end
      pcall(error, "and again")
    end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
