return {
  name = "multi",
  on = { "inventory_events", "sales_events", "sale_request" },
  evaluate = function(event, ctx)
    local out = {}
    if ctx.channel == "sale_request" then
      return { action = "reject", reason = "no" }
    end
    ctx.state.n = (ctx.state.n or 0) + 1
    out[1] = { action = "alert", level = "warning", reason = "n=" .. ctx.state.n, scope = "sku:" .. tostring(event.sku) }
    out[2] = { action = "kill", scope = "global", reason = "stop", halt_sales = true }
    return out
  end,
  tests = {
    { channel = "inventory_events", event = { sku = "A" }, now = 1767225600,
      expect = { { action = "alert", level = "warning", reason = "n=1" }, { action = "kill", scope = "global" } } },
    { channel = "sale_request", event = {}, params = { x = { y = 1 } }, expect = { { action = "reject" } } },
  },
}
