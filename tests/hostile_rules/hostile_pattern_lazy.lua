-- hostile_pattern_lazy.lua -- ("a"):rep(n):find(".-b"): one repeated item, so
-- the backtracking guard lets it through, but it is quadratic: 2*10^10 steps
-- for n = 200,000, inside one C call.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline

return {
  name = "hostile_pattern_lazy",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local s = ("a"):rep(200000)
    while true do s:find(".-b") end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
