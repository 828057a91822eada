-- hostile_string_format.lua -- string.format with a 1000-digit width (caught),
-- then 200 %s of 64 KiB each, over and over.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: memory limit | instruction limit | deadline

return {
  name = "hostile_string_format",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    pcall(string.format, "%" .. ("9"):rep(1000) .. "s", "x")
    local big = ("z"):rep(65536)
    local args = {}
    for i = 1, 200 do args[i] = big end
    local fmt = ("%s"):rep(200)
    while true do
      local s = string.format(fmt, table.unpack(args))
    end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
