-- hostile_close_loop.lua -- a to-be-closed variable whose __close loops: it
-- runs while the limit's error unwinds the stack, and on a normal exit.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit
local closer = { __close = function() while true do end end }

return {
  name = "hostile_close_loop",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local outer <close> = setmetatable({}, closer)
    pcall(function()
      local inner <close> = setmetatable({}, closer)
      error("leave through __close")
    end)
    local last <close> = setmetatable({}, closer)
    while true do end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
