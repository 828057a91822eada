-- hostile_xpcall_nested.lua -- xpcall inside xpcall, every handler loops and
-- the outer handler starts yet another xpcall: each level is entered with the
-- hooks in whatever state the level below left them.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit
local function spin() while true do end end

return {
  name = "hostile_xpcall_nested",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    return xpcall(function()
      return xpcall(function() while true do end end, spin)
    end, function(msg)
      return xpcall(spin, function() return xpcall(spin, spin) end)
    end)
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
