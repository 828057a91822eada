-- hostile_sale_table_move.lua -- a sale_request rule stuck in one C call
-- (table.move over 10^15 slots) in the HTTP worker.
-- mode: sale
-- error: deadline
return {
  name = "hostile_sale_table_move",
  on = { "sale_request" },
  evaluate = function(event, ctx)
    table.move({}, 1, 1e15, 2)
  end,
  -- fixtures:begin
  tests = {
    { channel = "sale_request",
      event = { type = "sale_request", sku = "HOSTILE", qty = 1, order_id = "o1" }, expect = {} },
  },
  -- fixtures:end
}
