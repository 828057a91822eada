-- hostile_sale_recursion.lua -- a sale_request rule recursing through C
-- (__concat calling concat): up to Lua's 200 C levels, each a few KB of the
-- C stack of the HTTP worker the sale runs in, whose stack is much smaller
-- than the evaluator's.
-- mode: sale
-- error: stack overflow | memory limit | instruction limit | deadline
local mt = {}
mt.__concat = function(a, b) return a .. b end

return {
  name = "hostile_sale_recursion",
  on = { "sale_request" },
  evaluate = function(event, ctx)
    local t = setmetatable({}, mt)
    return { action = "reject", reason = t .. "x" }
  end,
  -- fixtures:begin
  tests = {
    { channel = "sale_request",
      event = { type = "sale_request", sku = "HOSTILE", qty = 1, order_id = "o1" }, expect = {} },
  },
  -- fixtures:end
}
