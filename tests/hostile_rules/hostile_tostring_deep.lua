-- hostile_tostring_deep.lua -- tostring of a 10,000-deep structure whose
-- __tostring recurses into its child.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: stack overflow | memory limit | instruction limit | deadline
local mt = {}
mt.__tostring = function(t) return "(" .. tostring(t.child) .. ")" end
return {
  name = "hostile_tostring_deep",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local root = setmetatable({}, mt)
    local cur = root
    for i = 1, 10000 do
      local n = setmetatable({}, mt)
      cur.child = n
      cur = n
    end
    return { action = "alert", level = "info", reason = tostring(root) }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
