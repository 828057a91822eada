-- hostile_error_tostring.lua -- an error object whose __tostring, __index and
-- __concat loop: whoever turns the error into a message (the rule itself, a
-- log line, the sandbox) must not be trapped by it.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit
local mt = {}
mt.__tostring = function(self) while true do end end
mt.__index = function(self, k) return tostring(self) end
mt.__concat = function(a, b) return tostring(a) .. tostring(b) end
mt.__name = "HostileError"

return {
  name = "hostile_error_tostring",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local ok, err = pcall(error, setmetatable({}, mt))
    log("warn", err)            -- luaL_tolstring calls __tostring
    error(err .. " again")      -- __concat
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
