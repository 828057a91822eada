-- hostile_gc_eval.lua -- finalizers from evaluate: a __gc added to a
-- metatable after setmetatable (Lua 5.4 ignores it: the object is not marked
-- for finalization), then the same metatable set again, which the sandbox
-- must refuse.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: __gc
return {
  name = "hostile_gc_eval",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local mt = {}
    local victim = setmetatable({}, mt)
    mt.__gc = function() while true do end end
    victim = nil
    setmetatable({}, mt)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
