-- hostile_goto_loop.lua -- a loop made of goto, on the financial and sales
-- channels (a sale by the driver or a financial event triggers it).
-- mode: event
-- trigger: financial_events {"type":"spend","campaign":"c1","amount":1}
-- trigger: sales_events {"type":"sale","sku":"HOSTILE","qty":1,"unit_price":10}
-- error: deadline | instruction limit
return {
  name = "hostile_goto_loop",
  on = { "financial_events", "sales_events" },
  evaluate = function(event, ctx)
    local n = 0
    ::again::
    n = n + 1
    goto again
  end,
  -- fixtures:begin
  tests = {
    { channel = "financial_events",
      event = { type = "spend", campaign = "c1", amount = 1 }, expect = {} },
  },
  -- fixtures:end
}
