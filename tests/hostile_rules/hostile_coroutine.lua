-- hostile_coroutine.lua -- coroutine-free yields: the coroutine library is not
-- in the sandbox, so coroutine.wrap / coroutine.yield are plain errors.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: coroutine

return {
  name = "hostile_coroutine",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local gen = coroutine.wrap(function() while true do coroutine.yield(1) end end)
    return { action = "alert", level = "info", reason = tostring(gen()) }
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
