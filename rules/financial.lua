--[[ financial.lua -- financial risk: ad budget, refund ratio, pricing errors.

Why: the expensive failures of a commerce/ads platform are rarely outages;
they are a campaign burning through its budget, a wave of refunds, or a price
typed wrong and sold a thousand times. This rule watches the money events and

  on financial_events
    {"type": "spend", "campaign": C, "amount": A}
        adds A to campaign C's ad spend of the day (UTC). Once it is over
        daily_budget:
          kill  scope "campaign:<C>", halt_sales = false  (pause the campaign)
          alert critical, scope "campaign:<C>".
        (<C> as ctx.scope writes it: bytes outside the scope grammar are
        percent-encoded, "Spring Sale" -> "campaign:Spring%20Sale".)
    {"type": "revenue", "amount": A}     adds A to the day's revenue.
    {"type": "refund", "amount": A}      adds A to the day's refunds. Once the
        day's revenue is at least min_revenue_for_ratio and refunds are over
        refund_ratio_max of it:
          alert critical, scope "refund_ratio".
  on sale_request (every POST /sale, before anything is sold)
    {"type": "sale_request", "sku": S, "qty": Q, "unit_price": P?, ...}
        a P under the SKU's minimum price (min_unit_price_by_sku[S], else
        min_unit_price) is refused: {action = "reject"}, the sale answers 422.
        The client chose P: it is never a reason to halt anything.
  on sales_events (published by nerve after each sale)
    {"type": "sale", "sku": S, "qty": Q, "unit_price": P, "catalog_price": C?,
     "order_id": O}
        adds Q * P (what was paid) to the day's revenue. C is the catalog price
        the operator set with PUT /admin/stock (the client cannot set it); when
        C is under the SKU's minimum price, the catalog is wrong and every
        further sale loses money:
          kill  scope "sku:<S>", halt_sales = true   (stop selling it)
          alert critical, scope "sku:<S>".
        A P under the minimum (only possible when the sale_request check did
        not run, e.g. rules.sale_on_error = allow) raises a warning alert and
        halts nothing: an anonymous client must not be able to stop sales.

Parameters (config rules.params.financial), declared in `params` below with
their defaults (DEFAULTS): `nerve check` refuses an unknown key, a wrong type
or a value out of range, and a missing one gets its default.

State: ctx.state.days[YYYY-MM-DD] = {spend = {[campaign] = amount}, revenue,
refunds}, for today and yesterday (UTC, from ctx.now) only, so it stays small
and an event arriving just after midnight does not resurrect old days. The
state survives reloads of an unchanged rule file; a restart starts the day
over, which errs on the side of spending (documented limitation).

Malformed events (missing campaign, non-numeric or negative amount) are
ignored and logged at debug level.
]]

local DEFAULTS = {
  daily_budget = 1000.0,
  refund_ratio_max = 0.3,
  min_revenue_for_ratio = 100.0,
  min_unit_price = 1.0,
}

local function param(params, key)
  local section = params.financial
  local v = type(section) == "table" and section[key] or nil
  if type(v) == "number" then
    return v
  end
  return DEFAULTS[key]
end

local function min_price(params, sku)
  local section = params.financial
  local by_sku = type(section) == "table" and section.min_unit_price_by_sku or nil
  local v = type(by_sku) == "table" and by_sku[sku] or nil
  if type(v) == "number" then
    return v
  end
  return param(params, "min_unit_price")
end

-- A campaign id: any 1..128 bytes without control characters. ctx.scope
-- percent-encodes what the scope grammar does not allow, so a campaign named
-- "Spring Sale" is still budgeted, and its kill can be listed and reset.
local function valid_campaign(s)
  return type(s) == "string" and #s > 0 and #s <= 128 and not s:find("[%c]")
end

-- A SKU as nerve sells them: [A-Za-z0-9._:-], 1..128 bytes.
local function valid_sku(s)
  return type(s) == "string" and #s > 0 and #s <= 128 and s:match("^[%w._:-]+$") ~= nil
end

local function valid_amount(a)
  return type(a) == "number" and a >= 0 and a < math.huge
end

local function money(x)
  return string.format("%.2f", x)
end

-- The running totals of the UTC day of ctx.now; keeps today and yesterday.
local function today(ctx)
  local day = os.date("!%Y-%m-%d", ctx.now)
  local days = ctx.state.days
  if days == nil then
    days = {}
    ctx.state.days = days
  end
  local t = days[day]
  if t == nil then
    t = { spend = {}, revenue = 0, refunds = 0 }
    days[day] = t
    local yesterday = os.date("!%Y-%m-%d", ctx.now - 86400)
    for d in pairs(days) do
      if d ~= day and d ~= yesterday then
        days[d] = nil
      end
    end
  end
  return t, day
end

local function on_spend(event, ctx)
  local campaign, amount = event.campaign, event.amount
  if not valid_campaign(campaign) or not valid_amount(amount) then
    log("debug", "ignoring a malformed spend event")
    return nil
  end
  local t, day = today(ctx)
  local total = (t.spend[campaign] or 0) + amount
  t.spend[campaign] = total
  local budget = param(ctx.params, "daily_budget")
  if total <= budget then
    return nil
  end
  local scope = ctx.scope("campaign", campaign)
  local what = string.format("ad spend of campaign %s on %s is %s, over the daily budget of %s",
                             campaign, day, money(total), money(budget))
  return {
    { action = "kill", scope = scope, halt_sales = false, reason = what .. ": pausing the campaign" },
    { action = "alert", level = "critical", scope = scope, reason = what },
  }
end

local function on_revenue(event, ctx)
  if not valid_amount(event.amount) then
    log("debug", "ignoring a malformed revenue event")
    return nil
  end
  local t = today(ctx)
  t.revenue = t.revenue + event.amount
  return nil
end

local function on_refund(event, ctx)
  if not valid_amount(event.amount) then
    log("debug", "ignoring a malformed refund event")
    return nil
  end
  local t, day = today(ctx)
  t.refunds = t.refunds + event.amount
  local max = param(ctx.params, "refund_ratio_max")
  if t.revenue < param(ctx.params, "min_revenue_for_ratio") or t.refunds <= max * t.revenue then
    return nil
  end
  return {
    action = "alert",
    level = "critical",
    scope = "refund_ratio",
    reason = string.format("refunds on %s are %s, %.1f%% of revenue %s, over the %.1f%% limit",
                           day, money(t.refunds), 100 * t.refunds / t.revenue,
                           money(t.revenue), 100 * max),
  }
end

-- A price as people write it: 2 decimals when that is exact, else all digits
-- (0.001 must not read as 0.00).
local function price_str(x)
  local s = string.format("%.2f", x)
  if tonumber(s) == x then
    return s
  end
  return string.format("%.15g", x)
end

-- sale_request: refuse a client price under the SKU's minimum. This is the
-- only place a client's unit_price is judged against the floor.
local function on_sale_request(event, ctx)
  local sku, price = event.sku, event.unit_price
  if type(sku) ~= "string" or type(price) ~= "number" then
    return nil   -- no price sent: the catalog price (if any) applies
  end
  local min = min_price(ctx.params, sku)
  if price >= min then
    return nil
  end
  return {
    action = "reject",
    reason = string.format("unit_price %s is under the minimum price %s of SKU %s",
                           price_str(price), price_str(min), sku),
  }
end

local function on_sale(event, ctx)
  local sku, price, qty, catalog = event.sku, event.unit_price, event.qty, event.catalog_price
  if event.type ~= "sale" or not valid_sku(sku) then
    return nil
  end
  if price ~= nil and type(price) ~= "number" then
    log("debug", "ignoring a sale with a non-numeric unit_price")
    price = nil
  end
  if price and type(qty) == "number" and qty > 0 and valid_amount(price) then
    local t = today(ctx)
    t.revenue = t.revenue + qty * price
  end
  local min = min_price(ctx.params, sku)
  local scope = ctx.scope("sku", sku)
  local order = tostring(event.order_id or "?")
  if valid_amount(catalog) and catalog < min then
    -- The operator's catalog price is under the floor: a real pricing error.
    local what = string.format("catalog price of %s is %s, under the minimum %s (sale %s): pricing error",
                               sku, price_str(catalog), price_str(min), order)
    return {
      { action = "kill", scope = scope, halt_sales = true, reason = what .. ", sales halted" },
      { action = "alert", level = "critical", scope = scope, reason = what },
    }
  end
  if price and price < min then
    -- The client's price: the sale_request check should have refused it.
    return {
      action = "alert", level = "warning", scope = scope,
      reason = string.format("sale %s of %s at the client's unit price %s, under the minimum %s: "
                             .. "not refused at sale time (is rules.sale_on_error allow?); nothing halted",
                             order, sku, price_str(price), price_str(min)),
    }
  end
  return nil
end

local financial = { spend = on_spend, revenue = on_revenue, refund = on_refund }

-- 2026-01-01T00:00:00Z, for fixtures.
local DAY1 = 1767225600

-- Fixture params: small numbers, independent of the deployment's config.
local P = {
  financial = {
    daily_budget = 100,
    refund_ratio_max = 0.25,
    min_revenue_for_ratio = 50,
    min_unit_price = 2,
    min_unit_price_by_sku = { ["GOLD-1"] = 500 },
  },
}

return {
  name = "financial_risk",
  description = "Kill a campaign over its daily ad budget; alert when refunds exceed a share of revenue; refuse sales under the minimum price; halt sales of a SKU whose catalog price is under it.",
  on = { "financial_events", "sales_events", "sale_request" },

  params_section = "financial",
  params = {
    daily_budget = { type = "number", default = DEFAULTS.daily_budget, min = 0,
                     description = "ad spend per campaign per UTC day over which the campaign is killed" },
    refund_ratio_max = { type = "number", default = DEFAULTS.refund_ratio_max, min = 0, max = 1,
                         description = "share of the day's revenue refunds may reach before a critical alert" },
    min_revenue_for_ratio = { type = "number", default = DEFAULTS.min_revenue_for_ratio, min = 0,
                              description = "revenue of the day under which the refund ratio is not judged" },
    min_unit_price = { type = "number", default = DEFAULTS.min_unit_price, min = 0,
                       description = "minimum unit price of every SKU" },
    min_unit_price_by_sku = { type = "map", values = "number", default = {}, min = 0,
                              description = "SKU: minimum unit price, overriding min_unit_price" },
  },

  evaluate = function(event, ctx)
    if ctx.channel == "sale_request" then
      return on_sale_request(event, ctx)
    end
    if ctx.channel == "sales_events" then
      return on_sale(event, ctx)
    end
    local handler = financial[event.type]
    if handler then
      return handler(event, ctx)
    end
    return nil
  end,

  -- Fixtures run in order on one ctx.state, like a day of events.
  tests = {
    { -- under budget
      channel = "financial_events", now = DAY1, params = P,
      event = { type = "spend", campaign = "c1", amount = 60 },
      expect = {},
    },
    { -- the same campaign goes over: pause it and alert
      channel = "financial_events", now = DAY1 + 60, params = P,
      event = { type = "spend", campaign = "c1", amount = 50.5 },
      expect = {
        { action = "kill", scope = "campaign:c1", halt_sales = false,
          reason = "ad spend of campaign c1 on 2026-01-01 is 110.50, over the daily budget of 100.00: pausing the campaign" },
        { action = "alert", level = "critical", scope = "campaign:c1",
          reason = "ad spend of campaign c1 on 2026-01-01 is 110.50, over the daily budget of 100.00" },
      },
    },
    { -- any campaign id is budgeted; its scope is percent-encoded into the grammar
      channel = "financial_events", now = DAY1 + 60, params = P,
      event = { type = "spend", campaign = "Spring Sale/50%", amount = 100.5 },
      expect = {
        { action = "kill", scope = "campaign:Spring%20Sale/50%25", halt_sales = false },
        { action = "alert", level = "critical", scope = "campaign:Spring%20Sale/50%25" },
      },
    },
    { -- budgets are per campaign
      channel = "financial_events", now = DAY1 + 120, params = P,
      event = { type = "spend", campaign = "c2", amount = 100 },
      expect = {},
    },
    { -- and per day
      channel = "financial_events", now = DAY1 + 86400, params = P,
      event = { type = "spend", campaign = "c1", amount = 99 },
      expect = {},
    },
    { -- default budget (1000) when params say nothing
      channel = "financial_events", now = DAY1 + 86400, params = {},
      event = { type = "spend", campaign = "c3", amount = 1000.01 },
      expect = {
        { action = "kill", scope = "campaign:c3", halt_sales = false },
        { action = "alert", level = "critical", scope = "campaign:c3" },
      },
    },
    { -- day 3: revenue below the minimum for judging the ratio
      channel = "financial_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "revenue", amount = 40 },
      expect = {},
    },
    { -- 20 of 40 refunded, but 40 < min_revenue_for_ratio: not judged yet
      channel = "financial_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "refund", amount = 20 },
      expect = {},
    },
    {
      channel = "financial_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "revenue", amount = 60 },
      expect = {},
    },
    { -- 30 of 100 refunded > 25%
      channel = "financial_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "refund", amount = 10 },
      expect = {
        { action = "alert", level = "critical", scope = "refund_ratio",
          reason = "refunds on 2026-01-03 are 30.00, 30.0% of revenue 100.00, over the 25.0% limit" },
      },
    },
    { -- a sale at a sane price only adds revenue (100 + 2 * 10 = 120; 30 is 25%)
      channel = "sales_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale", sku = "ABC-1", qty = 2, unit_price = 10, order_id = "o-1" },
      expect = {},
    },
    {
      channel = "financial_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "refund", amount = 0 },
      expect = {},
    },
    { -- exactly the minimum price is fine
      channel = "sales_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale", sku = "ABC-1", qty = 1, unit_price = 2, catalog_price = 2, order_id = "o-2" },
      expect = {},
    },
    { -- a catalog price under it: the operator's pricing error halts the SKU's sales
      channel = "sales_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale", sku = "ABC-1", qty = 1, unit_price = 1.99, catalog_price = 1.99, order_id = "o-3" },
      expect = {
        { action = "kill", scope = "sku:ABC-1", halt_sales = true,
          reason = "catalog price of ABC-1 is 1.99, under the minimum 2.00 (sale o-3): pricing error, sales halted" },
        { action = "alert", level = "critical", scope = "sku:ABC-1" },
      },
    },
    { -- also when the client paid more than the (wrong) catalog price
      channel = "sales_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale", sku = "ABC-1", qty = 1, unit_price = 5, catalog_price = 0.001, order_id = "o-3b" },
      expect = {
        { action = "kill", scope = "sku:ABC-1", halt_sales = true,
          reason = "catalog price of ABC-1 is 0.001, under the minimum 2.00 (sale o-3b): pricing error, sales halted" },
        { action = "alert", level = "critical", scope = "sku:ABC-1" },
      },
    },
    { -- a per-SKU minimum overrides the global one
      channel = "sales_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale", sku = "GOLD-1", qty = 1, unit_price = 100, catalog_price = 100, order_id = "o-4" },
      expect = {
        { action = "kill", scope = "sku:GOLD-1", halt_sales = true },
        { action = "alert", level = "critical", scope = "sku:GOLD-1" },
      },
    },
    { -- default minimum (1.0)
      channel = "sales_events", now = DAY1 + 2 * 86400, params = {},
      event = { type = "sale", sku = "ABC-1", qty = 1, catalog_price = 0, unit_price = 0, order_id = "o-5" },
      expect = {
        { action = "kill", scope = "sku:ABC-1", halt_sales = true },
        { action = "alert", level = "critical", scope = "sku:ABC-1" },
      },
    },
    { -- the client's price under the minimum: never a kill, a warning at most
      channel = "sales_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale", sku = "ABC-1", qty = 1, unit_price = 0, order_id = "o-5b" },
      expect = {
        { action = "alert", level = "warning", scope = "sku:ABC-1",
          reason = "sale o-5b of ABC-1 at the client's unit price 0.00, under the minimum 2.00: not refused at sale time (is rules.sale_on_error allow?); nothing halted" },
      },
    },
    { -- the client's price under a sane catalog price: still not a kill
      channel = "sales_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale", sku = "ABC-1", qty = 1, unit_price = 1, catalog_price = 10, order_id = "o-5c" },
      expect = {
        { action = "alert", level = "warning", scope = "sku:ABC-1" },
      },
    },
    { -- no price at all, nothing to judge
      channel = "sales_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale", sku = "ABC-1", qty = 1, order_id = "o-6" },
      expect = {},
    },
    { -- a non-numeric catalog_price is not a pricing error
      channel = "sales_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale", sku = "ABC-1", qty = 1, unit_price = 3, catalog_price = "0", order_id = "o-6b" },
      expect = {},
    },
    { -- sale time: a client price under the minimum is refused
      channel = "sale_request", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale_request", sku = "ABC-1", qty = 1, unit_price = 0, order_id = "o-7" },
      expect = {
        { action = "reject", reason = "unit_price 0.00 is under the minimum price 2.00 of SKU ABC-1" },
      },
    },
    {
      channel = "sale_request", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale_request", sku = "GOLD-1", qty = 1, unit_price = 499.999, order_id = "o-8" },
      expect = {
        { action = "reject", reason = "unit_price 499.999 is under the minimum price 500.00 of SKU GOLD-1" },
      },
    },
    { -- at the minimum, or no price (the catalog price applies): let it through
      channel = "sale_request", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale_request", sku = "ABC-1", qty = 1, unit_price = 2, order_id = "o-9" },
      expect = {},
    },
    {
      channel = "sale_request", now = DAY1 + 2 * 86400, params = P,
      event = { type = "sale_request", sku = "ABC-1", qty = 1, order_id = "o-10" },
      expect = {},
    },
    { -- malformed events are ignored
      channel = "financial_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "spend", campaign = "c1", amount = "lots" },
      expect = {},
    },
    {
      channel = "financial_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "spend", amount = 1e9 },
      expect = {},
    },
    {
      channel = "financial_events", now = DAY1 + 2 * 86400, params = P,
      event = { type = "impression", campaign = "c1", amount = 1e9 },
      expect = {},
    },
  },
}
