-- hostile_concat_recursion.lua -- a __concat metamethod that concatenates its
-- operands again: recursion through the VM's concat.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: stack overflow | memory limit | instruction limit | deadline
local mt = {}
mt.__concat = function(a, b) return a .. b end
return {
  name = "hostile_concat_recursion",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local t = setmetatable({}, mt)
    return { action = "alert", level = "info", reason = t .. "x" }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
