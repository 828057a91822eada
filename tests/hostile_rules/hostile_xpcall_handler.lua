-- hostile_xpcall_handler.lua -- the finding of issue 9 as reported: a message
-- handler that loops. The instruction limit is raised from inside the count
-- hook, so Lua calls the handler with hooks off: without a wall-clock
-- deadline the evaluator thread spins forever.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit
return {
  name = "hostile_xpcall_handler",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    xpcall(error, function() while true do end end)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
