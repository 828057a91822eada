-- hostile_recursion.lua -- unbounded Lua recursion (not a tail call): the
-- stack grows until Lua's stack limit or the memory limit stops it.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: stack overflow | memory limit | instruction limit | deadline
local function deep(n) return 1 + deep(n + 1) end
return {
  name = "hostile_recursion",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    return { action = "alert", level = "info", reason = tostring(deep(1)) }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
