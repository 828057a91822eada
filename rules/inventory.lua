--[[ inventory.lua -- stock thresholds per SKU.

Why: when a SKU is about to run out, every ad click bought for it is money
spent on a visitor who will find it sold out. This rule watches the stock
level nerve publishes after every sale and

  stock <= critical_threshold (default 5)
      kill  scope "sku:<SKU>", halt_sales = false
            engages the kill switch for the SKU: its campaigns are paused,
            while the remaining units still sell;
      alert critical, scope "sku:<SKU>".
  stock <= warning_threshold (default 20)
      alert warning, scope "sku:<SKU>".
  otherwise nothing.

Input, on inventory_events (published by nerve after each successful sale):
  {"type": "stock_changed", "sku": "ABC-1", "stock_remaining": 3, "ts": ...}
Other event types are not this rule's business; a malformed stock_changed
event is ignored (and logged at debug level).

Parameters (config rules.params.inventory): warning_threshold,
critical_threshold, declared in `params` below: `nerve check` refuses an
unknown key, a wrong type or a negative value, and a missing one gets its
default.

Stateless on purpose: each event is judged on its own. Repeats are cheap --
engaging the kill switch is idempotent and alerts are throttled per rule and
scope -- and nothing is lost across restarts.
]]

local DEFAULT_WARNING = 20
local DEFAULT_CRITICAL = 5

-- params.inventory[key] when it is a number, else default.
local function threshold(params, key, default)
  local section = params.inventory
  local v = type(section) == "table" and section[key] or nil
  if type(v) == "number" then
    return v
  end
  return default
end

-- The SKU alphabet of the sale endpoint: it becomes part of a kill scope.
local function valid_sku(sku)
  return type(sku) == "string" and #sku <= 128 and sku:match("^[%w._:-]+$") ~= nil
end

return {
  name = "inventory_threshold",
  description = "Warning alert at low stock; at critical stock, pause the SKU's campaigns (kill sku:<SKU>, sales continue) and alert.",
  on = { "inventory_events" },

  params_section = "inventory",
  params = {
    critical_threshold = { type = "integer", default = DEFAULT_CRITICAL, min = 0,
                           description = "stock at or under which the SKU's campaigns are paused (kill sku:<SKU>)" },
    warning_threshold = { type = "integer", default = DEFAULT_WARNING, min = 0,
                          description = "stock at or under which a warning alert is raised" },
  },

  evaluate = function(event, ctx)
    if event.type ~= "stock_changed" then
      return nil
    end
    local sku, stock = event.sku, event.stock_remaining
    if not valid_sku(sku) or type(stock) ~= "number" then
      log("debug", "ignoring a malformed stock_changed event")
      return nil
    end

    local critical = threshold(ctx.params, "critical_threshold", DEFAULT_CRITICAL)
    local warning = threshold(ctx.params, "warning_threshold", DEFAULT_WARNING)
    local scope = "sku:" .. sku

    if stock <= critical then
      return {
        {
          action = "kill",
          scope = scope,
          halt_sales = false,
          reason = string.format("stock of %s is %s, at or under the critical threshold %s: pausing its campaigns",
                                 sku, tostring(stock), tostring(critical)),
        },
        {
          action = "alert",
          level = "critical",
          scope = scope,
          reason = string.format("stock of %s is %s, at or under the critical threshold %s",
                                 sku, tostring(stock), tostring(critical)),
        },
      }
    elseif stock <= warning then
      return {
        action = "alert",
        level = "warning",
        scope = scope,
        reason = string.format("stock of %s is %s, at or under the warning threshold %s",
                               sku, tostring(stock), tostring(warning)),
      }
    end
    return nil
  end,

  -- Fixtures carry their own params so that they test the rule, not the
  -- deployment's thresholds. `params = {}` exercises the defaults.
  tests = {
    { -- plenty of stock: nothing
      channel = "inventory_events", params = {},
      event = { type = "stock_changed", sku = "ABC-1", stock_remaining = 21 },
      expect = {},
    },
    { -- exactly at the default warning threshold
      channel = "inventory_events", params = {},
      event = { type = "stock_changed", sku = "ABC-1", stock_remaining = 20 },
      expect = {
        { action = "alert", level = "warning", scope = "sku:ABC-1",
          reason = "stock of ABC-1 is 20, at or under the warning threshold 20" },
      },
    },
    { -- between the thresholds
      channel = "inventory_events", params = {},
      event = { type = "stock_changed", sku = "ABC-1", stock_remaining = 6 },
      expect = { { action = "alert", level = "warning", scope = "sku:ABC-1" } },
    },
    { -- exactly at the default critical threshold: kill (sales go on) and alert
      channel = "inventory_events", params = {},
      event = { type = "stock_changed", sku = "ABC-1", stock_remaining = 5 },
      expect = {
        { action = "kill", scope = "sku:ABC-1", halt_sales = false,
          reason = "stock of ABC-1 is 5, at or under the critical threshold 5: pausing its campaigns" },
        { action = "alert", level = "critical", scope = "sku:ABC-1" },
      },
    },
    { -- sold out
      channel = "inventory_events", params = {},
      event = { type = "stock_changed", sku = "ABC-1", stock_remaining = 0 },
      expect = {
        { action = "kill", scope = "sku:ABC-1", halt_sales = false },
        { action = "alert", level = "critical", scope = "sku:ABC-1" },
      },
    },
    { -- thresholds from params
      channel = "inventory_events",
      params = { inventory = { warning_threshold = 100, critical_threshold = 10 } },
      event = { type = "stock_changed", sku = "XYZ.2", stock_remaining = 10 },
      expect = {
        { action = "kill", scope = "sku:XYZ.2", halt_sales = false },
        { action = "alert", level = "critical", scope = "sku:XYZ.2" },
      },
    },
    {
      channel = "inventory_events",
      params = { inventory = { warning_threshold = 100, critical_threshold = 10 } },
      event = { type = "stock_changed", sku = "XYZ.2", stock_remaining = 99 },
      expect = { { action = "alert", level = "warning", scope = "sku:XYZ.2" } },
    },
    { -- a threshold left out gets its declared default (warning 20)
      channel = "inventory_events",
      params = { inventory = { critical_threshold = 2 } },
      event = { type = "stock_changed", sku = "ABC-1", stock_remaining = 20 },
      expect = { { action = "alert", level = "warning", scope = "sku:ABC-1" } },
    },
    { -- not a stock change
      channel = "inventory_events", params = {},
      event = { type = "restock", sku = "ABC-1", stock_remaining = 0 },
      expect = {},
    },
    { -- malformed: ignored
      channel = "inventory_events", params = {},
      event = { type = "stock_changed", sku = "bad sku", stock_remaining = 0 },
      expect = {},
    },
    {
      channel = "inventory_events", params = {},
      event = { type = "stock_changed", sku = "ABC-1", stock_remaining = "3" },
      expect = {},
    },
  },
}
