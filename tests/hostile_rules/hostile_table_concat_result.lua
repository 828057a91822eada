-- hostile_table_concat_result.lua -- table.concat building results far
-- over the memory limit, in a loop.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: memory limit | instruction limit | deadline

return {
  name = "hostile_table_concat_result",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local parts = {}
    for i = 1, 64 do parts[i] = ("x"):rep(65536) end
    local sep = ("y"):rep(65536)
    while true do
      parts[#parts + 1] = table.concat(parts, sep)
    end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
