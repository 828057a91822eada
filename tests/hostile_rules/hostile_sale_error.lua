-- hostile_sale_error.lua -- a sale_request rule that raises an error: the
-- sale must fail closed (rules.sale_on_error: reject), not slip through.
-- mode: sale
-- error: broken on purpose
return {
  name = "hostile_sale_error",
  on = { "sale_request" },
  evaluate = function(event, ctx)
    error("broken on purpose")
  end,
  -- fixtures:begin
  tests = {
    { channel = "sale_request",
      event = { type = "sale_request", sku = "HOSTILE", qty = 1, order_id = "o1" }, expect = {} },
  },
  -- fixtures:end
}
