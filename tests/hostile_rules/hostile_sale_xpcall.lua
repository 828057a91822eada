-- hostile_sale_xpcall.lua -- a sale_request rule with a looping message
-- handler: it runs in the HTTP worker of every sale.
-- mode: sale
-- error: deadline | instruction limit
return {
  name = "hostile_sale_xpcall",
  on = { "sale_request" },
  evaluate = function(event, ctx)
    xpcall(error, function() while true do end end)
  end,
  -- fixtures:begin
  tests = {
    { channel = "sale_request",
      event = { type = "sale_request", sku = "HOSTILE", qty = 1, order_id = "o1" }, expect = {} },
  },
  -- fixtures:end
}
