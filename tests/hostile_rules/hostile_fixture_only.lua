-- hostile_fixture_only.lua -- harmless on live events, but its fixture (with
-- params of its own) sends evaluate into a looping message handler: a reload
-- or `nerve check` that runs the fixtures must still end.
-- mode: fixture
-- error: deadline | instruction limit
return {
  name = "hostile_fixture_only",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    if ctx.params.hostile_fixture then
      xpcall(error, function() while true do end end)
    end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events", params = { hostile_fixture = true },
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
