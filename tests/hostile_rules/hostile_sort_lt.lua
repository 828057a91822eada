-- hostile_sort_lt.lua -- table.sort without a comparator over objects whose
-- __lt metamethod loops: the loop runs inside sort's C frame.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit
local mt = { __lt = function(a, b) while true do end end }
return {
  name = "hostile_sort_lt",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local t = {}
    for i = 1, 100 do t[i] = setmetatable({ v = i }, mt) end
    table.sort(t)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
