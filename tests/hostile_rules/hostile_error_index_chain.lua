-- hostile_error_index_chain.lua -- an error object at the end of a chain of
-- 1,500 __index tables (just under Lua's loop limit of 2,000) whose last
-- __index function loops; raised as the rule's error and read by the rule.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit
local function chain(n)
  local t = setmetatable({}, { __index = function(self, k) while true do end end })
  for i = 1, n do t = setmetatable({}, { __index = t }) end
  return t
end

return {
  name = "hostile_error_index_chain",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local ok, err = pcall(error, chain(1500))
    return { action = "alert", level = "info", reason = err.message }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
