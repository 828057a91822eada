-- hostile_next_modify.lua -- pairs() while the loop renames every key it
-- visits: new keys keep appearing ahead of the traversal.
-- mode: event
-- trigger: inventory_events {"type":"stock_changed","sku":"HOSTILE","stock_remaining":50}
-- error: invalid key | memory limit | instruction limit | deadline

return {
  name = "hostile_next_modify",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local t = {}
    for i = 1, 100 do t["k" .. i] = i end
    while true do
      for k, v in pairs(t) do
        t[k] = nil
        t[k .. "+"] = v
      end
    end
  end,
  -- fixtures:begin
  tests = {
    { channel = "inventory_events",
      event = { type = "stock_changed", sku = "HOSTILE", stock_remaining = 50 }, expect = {} },
  },
  -- fixtures:end
}
