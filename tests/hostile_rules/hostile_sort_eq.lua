-- hostile_sort_eq.lua -- a sort comparator that compares with ==, whose
-- __eq metamethod recurses into == again.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: stack overflow | memory limit | instruction limit | deadline
local mt = {}
mt.__eq = function(a, b) return a == setmetatable({ v = b.v }, mt) end
return {
  name = "hostile_sort_eq",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local t = {}
    for i = 1, 100 do t[i] = setmetatable({ v = 101 - i }, mt) end
    table.sort(t, function(a, b)
      if a == b then return false end
      return a.v < b.v
    end)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
