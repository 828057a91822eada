-- hostile_table_concat_range.lua -- table.concat over 1..1e15 of a table
-- whose __index makes up every element.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit | memory limit
local endless = setmetatable({}, { __index = function(self, i) return "" end })
return {
  name = "hostile_table_concat_range",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    return { action = "alert", level = "info", reason = table.concat(endless, "", 1, 1e15) }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
