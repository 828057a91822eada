-- hostile_memory_table.lua -- table growth up to the memory limit, caught
-- with pcall, then business as usual: the limit must stick.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: memory limit

return {
  name = "hostile_memory_table",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local ok = pcall(function()
      local t = {}
      for i = 1, 1e9 do t[i] = i end
    end)
    return { action = "alert", level = "info", reason = "survived the memory limit: " .. tostring(ok) }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
