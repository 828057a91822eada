-- hostile_string_rep_sep.lua -- string.rep with an empty string and an
-- empty separator, 10^15 times: the separator path of the same C loop
-- (bounded as in hostile_string_rep_empty.lua).
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | returned after all

return {
  name = "hostile_string_rep_sep",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local s = (""):rep(1e15, "")
    error("string.rep returned after all: " .. #s .. " bytes")
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
