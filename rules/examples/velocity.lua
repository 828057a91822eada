-- velocity.lua -- more than max_sales sales of one SKU within window_s
-- seconds: a warning alert (a bot, a pricing error being exploited, a hit).
-- Started with `nerve rules new velocity --on sales_events`.

-- The SKU's sale times still inside the window (a new plain table).
local function recent(times, since)
  local kept = {}
  for _, t in ipairs(times or {}) do
    if t > since then
      kept[#kept + 1] = t
    end
  end
  return kept
end

return {
  name = "velocity",
  description = "Warn when one SKU sells more than max_sales times within window_s seconds.",
  on = { "sales_events" },

  params_section = "velocity",           -- rules.params.velocity in the config
  params = {
    max_sales = { type = "integer", default = 3, min = 1,
                  description = "sales of one SKU allowed within the window" },
    window_s = { type = "integer", default = 60, min = 1,
                 description = "the window, seconds" },
  },

  evaluate = function(event, ctx)
    if event.type ~= "sale" or type(event.sku) ~= "string" then
      return nil                         -- not a sale, or no SKU: not ours
    end
    local p = ctx.params.velocity
    -- ctx.state keeps, per SKU, the times of its sales in the window.
    local times = recent(ctx.state[event.sku], ctx.now - p.window_s)
    times[#times + 1] = ctx.now
    ctx.state[event.sku] = times
    if #times <= p.max_sales then
      return nil
    end
    return {
      action = "alert", level = "warning", scope = ctx.scope("sku", event.sku),
      reason = string.format("%d sales of %s within %d s (more than %d)",
                             #times, event.sku, p.window_s, p.max_sales),
    }
  end,

  -- Run in order on one ctx.state by `nerve check` and every reload.
  tests = {
    { channel = "sales_events", now = 1000, params = { velocity = { max_sales = 2, window_s = 60 } },
      event = { type = "sale", sku = "ABC-1", qty = 1 }, expect = {} },
    { channel = "sales_events", now = 1010, params = { velocity = { max_sales = 2, window_s = 60 } },
      event = { type = "sale", sku = "ABC-1", qty = 1 }, expect = {} },
    { channel = "sales_events", now = 1020, params = { velocity = { max_sales = 2, window_s = 60 } },
      event = { type = "sale", sku = "ABC-1", qty = 1 },
      expect = { { action = "alert", scope = "sku:ABC-1",
                   reason = "3 sales of ABC-1 within 60 s (more than 2)" } } },
    { channel = "sales_events", now = 1020, params = { velocity = { max_sales = 2, window_s = 60 } },
      event = { type = "sale", sku = "XYZ-9", qty = 1 }, expect = {} },   -- per SKU
    { channel = "sales_events", now = 1075, params = { velocity = { max_sales = 2, window_s = 60 } },
      event = { type = "sale", sku = "ABC-1", qty = 1 }, expect = {} },   -- 1000 and 1010 left the window
  },
}
