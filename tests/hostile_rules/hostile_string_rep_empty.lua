-- hostile_string_rep_empty.lua -- string.rep("", 1e15): the result is empty,
-- so nothing is allocated, but Lua's rep copies zero bytes 10^15 times in one
-- C call. Bounded either way: by the deadline, or by a rep that returns "" at
-- once (the rule then fails on purpose, so that its fixture fails).
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | returned after all

return {
  name = "hostile_string_rep_empty",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local s = string.rep("", 1e15)
    error("string.rep returned after all: " .. #s .. " bytes")
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
