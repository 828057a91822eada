-- hostile_xpcall_body_loop.lua -- the body loops into the instruction limit,
-- then the handler the limit's error runs in loops too (hooks off inside it).
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit
return {
  name = "hostile_xpcall_body_loop",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local n = 0
    xpcall(function() while true do n = n + 1 end end,
           function(msg) while true do n = n - 1 end end)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
