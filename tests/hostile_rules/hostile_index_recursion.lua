-- hostile_index_recursion.lua -- an __index metamethod that indexes its own
-- table with a new key: recursion through the C boundary on every level.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: stack overflow | memory limit | instruction limit | deadline
local mt = {}
mt.__index = function(self, k) return self[k .. "x"] end
return {
  name = "hostile_index_recursion",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local t = setmetatable({}, mt)
    return { action = "alert", level = "info", reason = t.a }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
