-- hostile_utf8.lua -- utf8 on huge inputs: utf8.char with 50,000 arguments,
-- utf8.codes, then utf8.len and utf8.offset over a 2 MB string in a loop (each call walks
-- the whole string for a few instructions).
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: deadline | instruction limit

return {
  name = "hostile_utf8",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local many = utf8.char(("x"):rep(50000):byte(1, -1))
    local s = ("\u{7FF}"):rep(1000000)
    for p, c in utf8.codes(s) do if p > 64 then break end end
    while true do
      utf8.len(s)
      utf8.offset(s, -900000)
    end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
