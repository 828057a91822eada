/* rules_new.c -- `nerve rules new NAME --on CHANNEL` (see rules_new.h).
 *
 * The templates below are Lua source in which @NAME@, @CHANNEL@, @WHAT@
 * and @DESC@ stand for the rule's values: one head shared by every kind
 * (comment, name, on, the params declaration's opening) and one body per
 * kind of channel (its one parameter, evaluate, fixtures). Each body's
 * fixtures pass against its own evaluate, and its default parameter makes
 * it decide something on rules/examples/events.jsonl; test_rules_new
 * checks both for every kind.
 *
 * The file is written to a temporary file in the same directory and then
 * linked to its name (refused when the name exists) or, with --force,
 * renamed over it: a reader never sees half a rule, and a file created
 * between our look and our write is not overwritten.
 */
#include "nerve/rules_new.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nerve/cli.h"
#include "nerve/rules.h"

/* ---- templates ------------------------------------------------------------------ */

static const char head_tpl[] =
    "--[[ @NAME@.lua -- a rule on @CHANNEL@, written by `nerve rules new`.\n"
    "\n"
    "@WHAT@\n"
    "\n"
    "It loads, passes its fixtures (`tests` at the bottom) and decides something:\n"
    "change `evaluate` and the fixtures together, then\n"
    "  nerve check                  compiles every rule and runs every fixture\n"
    "  nerve rules test --rule @NAME@ rules/examples/events.jsonl\n"
    "                               runs recorded events through it (no Redis)\n"
    "  nerve reload                 makes the running daemon load it (or SIGHUP)\n"
    "Settings come from the config, rules.params.@NAME@ (declared in `params`).\n"
    "]]\n"
    "\n"
    "return {\n"
    "  -- Unique among the loaded rules; decisions, logs and GET /rules name it.\n"
    "  name = \"@NAME@\",\n"
    "  -- One sentence for whoever reads GET /rules or this rule's alerts.\n"
    "  description = \"@DESC@\",\n"
    "  -- The channels whose events reach `evaluate`.\n"
    "  on = { \"@CHANNEL@\" },\n"
    "\n"
    "  -- The key under rules.params in the config that holds this rule's settings.\n"
    "  params_section = \"@NAME@\",\n"
    "  -- Its settings: `nerve check` refuses an unknown key or a wrong type there,\n"
    "  -- and a key the config leaves out gets its default.\n"
    "  params = {\n";


/* What every template says of its fixtures (each body ends the sentence:
 * "deployment." or with what its fixtures add). */
#define FIXTURES_DOC \
    "  -- Fixtures: run in order by `nerve check` and every reload (a failing one\n" \
    "  -- refuses the reload), on one ctx.state that starts empty. `expect` lists\n" \
    "  -- the decisions, in order; each entry gives only the fields it checks.\n" \
    "  -- `params` replaces the config's, so the fixtures test the rule, not the\n"

static const char inventory_tpl[] =
    "    low_stock = { type = \"integer\", default = 10, min = 0,\n"
    "                  description = \"alert when a SKU's stock is at or under this\" },\n"
    "  },\n"
    "\n"
    "  -- Called once per event on @CHANNEL@. `event` is the event's JSON as a Lua\n"
    "  -- table (a JSON null arrives as nil); `ctx` holds params, state, channel, now.\n"
    "  -- nerve publishes, after every sale and stock change:\n"
    "  --   {\"type\": \"stock_changed\", \"sku\": \"ABC-1\", \"stock_remaining\": 3, ...}\n"
    "  evaluate = function(event, ctx)\n"
    "    -- Other event types may share the channel: not this rule's business.\n"
    "    if event.type ~= \"stock_changed\" then\n"
    "      return nil\n"
    "    end\n"
    "    -- Trust no event's shape: a missing or non-numeric field decides nothing.\n"
    "    local sku, stock = event.sku, event.stock_remaining\n"
    "    if type(sku) ~= \"string\" or type(stock) ~= \"number\" then\n"
    "      return nil\n"
    "    end\n"
    "    -- This rule's setting: rules.params.@NAME@.low_stock, or its default.\n"
    "    local low = ctx.params.@NAME@.low_stock\n"
    "    -- ctx.state is this rule's own table, kept between events and across\n"
    "    -- reloads while the rule's name and source stay the same. Here: the SKUs\n"
    "    -- already alerted on, so that one shortage makes one alert.\n"
    "    ctx.state.alerted = ctx.state.alerted or {}\n"
    "    if stock > low then\n"
    "      ctx.state.alerted[sku] = nil -- restocked: the next shortage alerts again\n"
    "      return nil\n"
    "    end\n"
    "    if ctx.state.alerted[sku] then\n"
    "      return nil -- said already\n"
    "    end\n"
    "    ctx.state.alerted[sku] = true\n"
    "    -- A decision: an alert (level info, warning or critical) about a scope.\n"
    "    -- Return a list of them to decide several things, nil for nothing.\n"
    "    return {\n"
    "      action = \"alert\",\n"
    "      level = \"warning\",\n"
    "      scope = ctx.scope(\"sku\", sku),\n"
    "      reason = string.format(\"stock of %s is %s, at or under %s\", sku, tostring(stock), tostring(low)),\n"
    "    }\n"
    "  end,\n"
    "\n" FIXTURES_DOC "  -- deployment.\n"
    "  tests = {\n"
    "    { -- plenty of stock: no decision\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { low_stock = 10 } },\n"
    "      event = { type = \"stock_changed\", sku = \"ABC-1\", stock_remaining = 50 },\n"
    "      expect = {},\n"
    "    },\n"
    "    { -- at the threshold: one warning\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { low_stock = 10 } },\n"
    "      event = { type = \"stock_changed\", sku = \"ABC-1\", stock_remaining = 10 },\n"
    "      expect = {\n"
    "        { action = \"alert\", level = \"warning\", scope = \"sku:ABC-1\",\n"
    "          reason = \"stock of ABC-1 is 10, at or under 10\" },\n"
    "      },\n"
    "    },\n"
    "    { -- still low: ctx.state remembers the alert, so nothing new\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { low_stock = 10 } },\n"
    "      event = { type = \"stock_changed\", sku = \"ABC-1\", stock_remaining = 3 },\n"
    "      expect = {},\n"
    "    },\n"
    "    { -- restocked, then low again: a new alert\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { low_stock = 10 } },\n"
    "      event = { type = \"stock_changed\", sku = \"ABC-1\", stock_remaining = 40 },\n"
    "      expect = {},\n"
    "    },\n"
    "    {\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { low_stock = 10 } },\n"
    "      event = { type = \"stock_changed\", sku = \"ABC-1\", stock_remaining = 0 },\n"
    "      expect = { { action = \"alert\", scope = \"sku:ABC-1\" } },\n"
    "    },\n"
    "    { -- malformed: no decision\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { low_stock = 10 } },\n"
    "      event = { type = \"stock_changed\", sku = \"XYZ-9\", stock_remaining = \"3\" },\n"
    "      expect = {},\n"
    "    },\n"
    "  },\n"
    "}\n";

static const char sales_tpl[] =
    "    big_order = { type = \"number\", default = 500, min = 0,\n"
    "                  description = \"alert on a sale worth this much or more (qty x unit_price)\" },\n"
    "  },\n"
    "\n"
    "  -- Called once per event on @CHANNEL@. `event` is the event's JSON as a Lua\n"
    "  -- table (a JSON null arrives as nil); `ctx` holds params, state, channel, now.\n"
    "  -- nerve publishes, after every sale:\n"
    "  --   {\"type\": \"sale\", \"sku\": \"ABC-1\", \"qty\": 2, \"unit_price\": 19.99,\n"
    "  --    \"order_id\": \"o-1\", \"stock_remaining\": 8, \"catalog_price\": 19.99, ...}\n"
    "  -- unit_price is the client's price, else the catalog price, else null (nil).\n"
    "  evaluate = function(event, ctx)\n"
    "    -- Other event types may share the channel: not this rule's business.\n"
    "    if event.type ~= \"sale\" then\n"
    "      return nil\n"
    "    end\n"
    "    -- Trust no event's shape: a missing or non-numeric field decides nothing\n"
    "    -- (a sale without any price has unit_price nil).\n"
    "    local sku, qty, price = event.sku, event.qty, event.unit_price\n"
    "    if type(sku) ~= \"string\" or type(qty) ~= \"number\" or type(price) ~= \"number\" then\n"
    "      return nil\n"
    "    end\n"
    "    local value = qty * price\n"
    "    -- This rule's setting: rules.params.@NAME@.big_order, or its default.\n"
    "    local big = ctx.params.@NAME@.big_order\n"
    "    if value < big then\n"
    "      return nil\n"
    "    end\n"
    "    -- ctx.state is this rule's own table, kept between events and across\n"
    "    -- reloads while the rule's name and source stay the same. Here: how many\n"
    "    -- big orders each SKU has had (since the daemon started).\n"
    "    ctx.state.big = ctx.state.big or {}\n"
    "    local n = (ctx.state.big[sku] or 0) + 1\n"
    "    ctx.state.big[sku] = n\n"
    "    -- A decision: an alert (level info, warning or critical) about a scope.\n"
    "    -- Return a list of them to decide several things, nil for nothing.\n"
    "    return {\n"
    "      action = \"alert\",\n"
    "      level = \"info\",\n"
    "      scope = ctx.scope(\"sku\", sku),\n"
    "      reason = string.format(\"order %s of %s is worth %.2f (%s x %.2f), at or over %.2f: big order %d of this SKU\",\n"
    "                             tostring(event.order_id), sku, value, tostring(qty), price, big, n),\n"
    "    }\n"
    "  end,\n"
    "\n" FIXTURES_DOC "  -- deployment.\n"
    "  tests = {\n"
    "    { -- a small order: no decision\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { big_order = 500 } },\n"
    "      event = { type = \"sale\", sku = \"ABC-1\", qty = 2, unit_price = 19.99, order_id = \"o-1\" },\n"
    "      expect = {},\n"
    "    },\n"
    "    { -- a big one: an alert\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { big_order = 500 } },\n"
    "      event = { type = \"sale\", sku = \"ABC-1\", qty = 30, unit_price = 20, order_id = \"o-2\" },\n"
    "      expect = {\n"
    "        { action = \"alert\", level = \"info\", scope = \"sku:ABC-1\",\n"
    "          reason = \"order o-2 of ABC-1 is worth 600.00 (30 x 20.00), at or over 500.00: big order 1 of this SKU\" },\n"
    "      },\n"
    "    },\n"
    "    { -- the next big one of that SKU: ctx.state counted the first\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { big_order = 500 } },\n"
    "      event = { type = \"sale\", sku = \"ABC-1\", qty = 1, unit_price = 900, order_id = \"o-3\" },\n"
    "      expect = {\n"
    "        { action = \"alert\",\n"
    "          reason = \"order o-3 of ABC-1 is worth 900.00 (1 x 900.00), at or over 500.00: big order 2 of this SKU\" },\n"
    "      },\n"
    "    },\n"
    "    { -- no price at all (JSON null): no decision\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { big_order = 500 } },\n"
    "      event = { type = \"sale\", sku = \"ABC-1\", qty = 1000, order_id = \"o-4\" },\n"
    "      expect = {},\n"
    "    },\n"
    "  },\n"
    "}\n";

static const char sale_request_tpl[] =
    "    max_qty = { type = \"integer\", default = 100, min = 1,\n"
    "                description = \"refuse a sale of more units than this in one order\" },\n"
    "  },\n"
    "\n"
    "  -- Called for every POST /sale, before anything is sold: returning\n"
    "  -- {action = \"reject\", reason = ...} answers the sale 422 policy_rejected.\n"
    "  -- `event` is the request as a Lua table (a field the client left out is nil):\n"
    "  --   {\"type\": \"sale_request\", \"sku\": \"ABC-1\", \"qty\": 2, \"unit_price\": 19.99?,\n"
    "  --    \"order_id\": \"o-1\"}   (order_id: the client's, else a generated one)\n"
    "  -- Keep it quick: the client waits for it.\n"
    "  evaluate = function(event, ctx)\n"
    "    local sku, qty = event.sku, event.qty\n"
    "    if type(sku) ~= \"string\" or type(qty) ~= \"number\" then\n"
    "      return nil\n"
    "    end\n"
    "    -- This rule's setting: rules.params.@NAME@.max_qty, or its default.\n"
    "    local max = ctx.params.@NAME@.max_qty\n"
    "    if qty <= max then\n"
    "      return nil\n"
    "    end\n"
    "    -- ctx.state is this rule's own table, kept between events and across\n"
    "    -- reloads while the rule's name and source stay the same. sale_request\n"
    "    -- rules run on a pool of evaluators, each with its own ctx.state: count\n"
    "    -- here only what may be per evaluator (a fleet-wide limit: ctx.incr).\n"
    "    ctx.state.refused = (ctx.state.refused or 0) + 1\n"
    "    -- log(level, message): debug, info, warn or error, into nerve's log.\n"
    "    log(\"debug\", string.format(\"refusals on this evaluator: %d\", ctx.state.refused))\n"
    "    return {\n"
    "      action = \"reject\",\n"
    "      reason = string.format(\"qty %s of %s is over the maximum of %d per order\", tostring(qty), sku, max),\n"
    "    }\n"
    "  end,\n"
    "\n" FIXTURES_DOC "  -- deployment.\n"
    "  tests = {\n"
    "    { -- within the limit: the sale goes on\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { max_qty = 100 } },\n"
    "      event = { type = \"sale_request\", sku = \"ABC-1\", qty = 100, order_id = \"o-1\" },\n"
    "      expect = {},\n"
    "    },\n"
    "    { -- over it: refused\n"
    "      channel = \"@CHANNEL@\", params = { @NAME@ = { max_qty = 100 } },\n"
    "      event = { type = \"sale_request\", sku = \"ABC-1\", qty = 101, order_id = \"o-2\" },\n"
    "      expect = {\n"
    "        { action = \"reject\", reason = \"qty 101 of ABC-1 is over the maximum of 100 per order\" },\n"
    "      },\n"
    "    },\n"
    "  },\n"
    "}\n";

static const char amount_tpl[] =
    "    max_total = { type = \"number\", default = 1000, min = 0,\n"
    "                  description = \"alert once a day when the amounts of one event type add up to more than this\" },\n"
    "  },\n"
    "\n"
    "  -- Called once per event on @CHANNEL@. `event` is the event's JSON as a Lua\n"
    "  -- table (a JSON null arrives as nil); `ctx` holds params, state, channel, now.\n"
    "  -- Events on @CHANNEL@ come from other services, so their shape is theirs;\n"
    "  -- this rule expects a type and an amount, as financial_events carries:\n"
    "  --   {\"type\": \"spend\", \"campaign\": \"c1\", \"amount\": 60}\n"
    "  --   {\"type\": \"revenue\", \"amount\": 200}    {\"type\": \"refund\", \"amount\": 50}\n"
    "  evaluate = function(event, ctx)\n"
    "    -- Trust no event's shape: a missing or non-numeric field decides nothing.\n"
    "    local kind, amount = event.type, event.amount\n"
    "    if type(kind) ~= \"string\" or type(amount) ~= \"number\" or amount < 0 then\n"
    "      return nil\n"
    "    end\n"
    "    -- ctx.state is this rule's own table, kept between events and across\n"
    "    -- reloads while the rule's name and source stay the same. Here: the\n"
    "    -- day's total per event type (ctx.now is the event's time, epoch seconds).\n"
    "    local day = os.date(\"!%Y-%m-%d\", ctx.now)\n"
    "    if ctx.state.day ~= day then\n"
    "      ctx.state.day, ctx.state.totals, ctx.state.alerted = day, {}, {}\n"
    "    end\n"
    "    local total = (ctx.state.totals[kind] or 0) + amount\n"
    "    ctx.state.totals[kind] = total\n"
    "    -- This rule's setting: rules.params.@NAME@.max_total, or its default.\n"
    "    local max = ctx.params.@NAME@.max_total\n"
    "    if total <= max or ctx.state.alerted[kind] then\n"
    "      return nil -- under the limit, or said already today\n"
    "    end\n"
    "    ctx.state.alerted[kind] = true\n"
    "    -- A decision: an alert (level info, warning or critical) about a scope.\n"
    "    -- Return a list of them to decide several things, nil for nothing.\n"
    "    return {\n"
    "      action = \"alert\",\n"
    "      level = \"warning\",\n"
    "      scope = ctx.scope(\"total\", kind),\n"
    "      reason = string.format(\"%s on %s adds up to %.2f, over %.2f\", kind, day, total, max),\n"
    "    }\n"
    "  end,\n"
    "\n" FIXTURES_DOC "  -- deployment; `now` sets ctx.now (2026-01-01 here).\n"
    "  tests = {\n"
    "    { -- under the limit: no decision\n"
    "      channel = \"@CHANNEL@\", now = 1767225600, params = { @NAME@ = { max_total = 1000 } },\n"
    "      event = { type = \"spend\", campaign = \"c1\", amount = 600 },\n"
    "      expect = {},\n"
    "    },\n"
    "    { -- the day's spend goes over: one alert\n"
    "      channel = \"@CHANNEL@\", now = 1767225660, params = { @NAME@ = { max_total = 1000 } },\n"
    "      event = { type = \"spend\", campaign = \"c1\", amount = 450.5 },\n"
    "      expect = {\n"
    "        { action = \"alert\", level = \"warning\", scope = \"total:spend\",\n"
    "          reason = \"spend on 2026-01-01 adds up to 1050.50, over 1000.00\" },\n"
    "      },\n"
    "    },\n"
    "    { -- still over: said already today (ctx.state)\n"
    "      channel = \"@CHANNEL@\", now = 1767225720, params = { @NAME@ = { max_total = 1000 } },\n"
    "      event = { type = \"spend\", campaign = \"c2\", amount = 10 },\n"
    "      expect = {},\n"
    "    },\n"
    "    { -- a new day starts from zero\n"
    "      channel = \"@CHANNEL@\", now = 1767312000, params = { @NAME@ = { max_total = 1000 } },\n"
    "      event = { type = \"spend\", campaign = \"c1\", amount = 999 },\n"
    "      expect = {},\n"
    "    },\n"
    "    { -- no amount: no decision\n"
    "      channel = \"@CHANNEL@\", now = 1767312000, params = { @NAME@ = { max_total = 1000 } },\n"
    "      event = { type = \"refund\" },\n"
    "      expect = {},\n"
    "    },\n"
    "  },\n"
    "}\n";

typedef enum { KIND_SALE_REQUEST, KIND_INVENTORY, KIND_SALES, KIND_AMOUNT } rule_kind;

/* What each kind of rule is about: the body, the top comment's paragraph,
 * the description and the parameter it declares. */
static const struct {
    const char *body, *what, *desc, *param;
} kinds[] = {
    [KIND_SALE_REQUEST] = { sale_request_tpl,
                            "What it does: refuses (422 policy_rejected) a sale of more than max_qty\n"
                            "units in one order, before anything is sold.",
                            "Refuse a sale of more than max_qty units in one order.", "max_qty" },
    [KIND_INVENTORY] = { inventory_tpl,
                         "What it does: a warning alert once a SKU's stock is at or under\n"
                         "low_stock, one per shortage (again only after a restock above it).",
                         "Warn once when a SKU's stock falls to low_stock or under.", "low_stock" },
    [KIND_SALES] = { sales_tpl,
                     "What it does: an info alert for each sale worth big_order or more\n"
                     "(qty x unit_price), counting each SKU's big orders in ctx.state.",
                     "Alert on each sale worth big_order or more.", "big_order" },
    [KIND_AMOUNT] = { amount_tpl,
                      "What it does: adds up each event type's amounts per day (UTC) and\n"
                      "alerts once a day when one goes over max_total.",
                      "Alert once a day when an event type's amounts add up to over max_total.",
                      "max_total" },
};

static rule_kind kind_of(const cfg *c, const char *channel) {
    if (strcmp(channel, RULES_SALE_CHANNEL) == 0) return KIND_SALE_REQUEST;
    if (strcmp(channel, c->inventory_channel) == 0) return KIND_INVENTORY;
    if (strcmp(channel, c->sales_channel) == 0) return KIND_SALES;
    return KIND_AMOUNT;
}

/* ---- checks --------------------------------------------------------------------- */

int rules_new_name_ok(const char *name, char *err, size_t errlen) {
    static const char *const keywords[] = { "and",   "break",  "do",     "else",     "elseif",
                                            "end",   "false",  "for",    "function", "goto",
                                            "if",    "in",     "local",  "nil",      "not",
                                            "or",    "repeat", "return", "then",     "true",
                                            "until", "while",  NULL };
    size_t n = strlen(name);
    if (n == 0 || n > RULES_NEW_NAME_MAX) {
        snprintf(err, errlen, "rule name must be 1 to %d characters", RULES_NEW_NAME_MAX);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
        if (!alpha && !(i > 0 && ch >= '0' && ch <= '9')) {
            snprintf(err, errlen,
                     "rule name \"%.64s\" must be letters, digits and _, not starting with a "
                     "digit (it names the file NAME.lua and the params section)",
                     name);
            return -1;
        }
    }
    for (int i = 0; keywords[i]; i++)
        if (strcmp(name, keywords[i]) == 0) {
            snprintf(err, errlen, "rule name \"%s\" is a Lua keyword", name);
            return -1;
        }
    return 0;
}

int rules_new_channel_ok(const cfg *c, const char *channel, char *err, size_t errlen) {
    if (rules_channel_known(c, channel, err, errlen) != 0) return -1;
    /* It becomes a Lua string literal in the rule: keep it plain. */
    for (const char *p = channel; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-", *p)) {
            snprintf(err, errlen,
                     "channel \"%.128s\": nerve rules new writes rules only for channels of "
                     "A-Z a-z 0-9 . _ : -",
                     channel);
            return -1;
        }
    return 0;
}

/* ---- rendering ------------------------------------------------------------------ */

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void put(struct buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 8192) + n;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Append template T to B, each @KEYS[i]@ in it written as VALS[i]. */
static void expand(struct buf *b, const char *t, const char *const *keys, const char *const *vals) {
    while (*t) {
        const char *at = strchr(t, '@');
        if (!at) {
            put(b, t, strlen(t));
            return;
        }
        put(b, t, (size_t)(at - t));
        int k = 0;
        while (keys[k] && strncmp(at, keys[k], strlen(keys[k])) != 0) k++;
        if (keys[k]) {
            put(b, vals[k], strlen(vals[k]));
            t = at + strlen(keys[k]);
        } else {
            put(b, "@", 1);
            t = at + 1;
        }
    }
}

char *rules_new_render(const cfg *c, const char *name, const char *channel) {
    rule_kind k = kind_of(c, channel);
    const char *const keys[] = { "@NAME@", "@CHANNEL@", "@WHAT@", "@DESC@", NULL };
    const char *const vals[] = { name, channel, kinds[k].what, kinds[k].desc };
    struct buf b = { 0 };
    expand(&b, head_tpl, keys, vals);
    expand(&b, kinds[k].body, keys, vals);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- writing -------------------------------------------------------------------- */

/* Write TEXT to PATH in DIR through a temporary file: linked to PATH (refused
 * when PATH exists) or, with FORCE, renamed over it. 0, or -1 with the reason
 * in ERR; *EXISTED tells a refusal because PATH exists. */
static int write_atomic(const char *dir, const char *path, const char *text, bool force,
                        bool *existed, char *err, size_t errlen) {
    char tmp[PATH_MAX];
    *existed = false;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.rules-new.XXXXXX", dir) >= sizeof tmp) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot create a file there: %s", dir, strerror(e));
        return -1;
    }
    size_t n = strlen(text), off = 0;
    int rc = -1;
    while (off < n) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            snprintf(err, errlen, "%s: cannot write: %s", tmp, strerror(e));
            goto out;
        }
        off += (size_t)w;
    }
    if (fchmod(fd, 0644) != 0 || fsync(fd) != 0) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot write: %s", tmp, strerror(e));
        goto out;
    }
    if (force ? rename(tmp, path) : link(tmp, path)) {
        int e = errno;
        *existed = e == EEXIST;
        if (*existed)
            snprintf(err, errlen, "%s exists; not overwritten (--force replaces it)", path);
        else
            snprintf(err, errlen, "%s: cannot write: %s", path, strerror(e));
        goto out;
    }
    rc = 0;
out:
    close(fd);
    if (!(rc == 0 && force)) unlink(tmp); /* renamed: gone already */
    if (rc == 0) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) {
            (void)fsync(dfd); /* the new name, durable; best effort */
            close(dfd);
        }
    }
    return rc;
}

/* ---- the command ---------------------------------------------------------------- */

static const char new_help[] =
    "usage: nerve rules new NAME --on CHANNEL [-c FILE] [--dir DIR] [--force]\n"
    "\n"
    "Write DIR/NAME.lua (DIR: the config's rules.dir), a commented rule on CHANNEL that\n"
    "loads, passes its fixtures and decides something on rules/examples/events.jsonl:\n"
    "  sale_request          refuses an order over max_qty units (422)\n"
    "  the inventory channel warns once when a SKU's stock is at or under low_stock\n"
    "  the sales channel     alerts on a sale worth big_order or more\n"
    "  any other (financial_events...)  alerts when a type's amounts of the day pass max_total\n"
    "NAME: 1 to 64 of A-Z a-z 0-9 _, not starting with a digit. CHANNEL: sale_request or\n"
    "one of bus.channels. The file is written whole or not at all.\n"
    "\n"
    "  --on CHANNEL   the channel the rule listens on (required)\n"
    "  --dir DIR      where to write it (default: rules.dir of the config)\n"
    "  --force        replace an existing DIR/NAME.lua\n"
    "  -c, --config FILE, --set dotted.key=value, --log-format text|json  (see nerve help)\n"
    "\n"
    "exit status: 0 written; 1 the config does not load, the file exists (without --force)\n"
    "or cannot be written; 2 usage (bad NAME, unknown CHANNEL, bad option).\n";

struct new_opts {
    const char *on, *dir;
    bool force;
};

static int new_opt(void *ud, int val, const char *arg) {
    struct new_opts *o = ud;
    if (val == CLI_OPT(1))
        o->on = arg;
    else if (val == CLI_OPT(2))
        o->dir = arg;
    else
        o->force = true;
    return 0;
}

int rules_new_main(int argc, char **argv) {
    static const struct option own[] = { { "on", required_argument, NULL, CLI_OPT(1) },
                                         { "dir", required_argument, NULL, CLI_OPT(2) },
                                         { "force", no_argument, NULL, CLI_OPT(3) },
                                         { 0, 0, 0, 0 } };
    struct new_opts no = { 0 };
    cli_args a;
    char err[PATH_MAX + 512];
    if (cli_parse("nerve rules new", "nerve rules new --help", argc, argv, own, new_opt, &no, &a)) {
        cli_args_free(&a);
        return 2;
    }
    if (a.help) {
        fputs(new_help, stdout);
        cli_args_free(&a);
        return 0;
    }
    if (a.nrest != 1 || !no.on) {
        fprintf(stderr, "usage: nerve rules new NAME --on CHANNEL [-c FILE] [--dir DIR] [--force]"
                        " (nerve rules new --help)\n");
        cli_args_free(&a);
        return 2;
    }
    const char *name = a.rest[0];
    if (rules_new_name_ok(name, err, sizeof err) != 0) {
        fprintf(stderr, "nerve rules new: %s\n", err);
        cli_args_free(&a);
        return 2;
    }
    cfg *c = cli_load_config(&a);
    if (!c) {
        cli_args_free(&a);
        return 1;
    }
    int rc = 1;
    char *text = NULL;
    if (rules_new_channel_ok(c, no.on, err, sizeof err) != 0) {
        fprintf(stderr, "nerve rules new: --on %s: %s\n", no.on, err);
        rc = 2;
        goto out;
    }
    const char *dir = no.dir ? no.dir : c->rules_dir;
    char path[PATH_MAX];
    struct stat st;
    if (stat(dir, &st) != 0) {
        int e = errno;
        fprintf(stderr, "nerve rules new: %s: %s\n", dir, strerror(e));
        goto out;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "nerve rules new: %s: not a directory\n", dir);
        goto out;
    }
    if ((size_t)snprintf(path, sizeof path, "%s/%s.lua", dir, name) >= sizeof path) {
        fprintf(stderr, "nerve rules new: %s: path too long\n", dir);
        goto out;
    }
    text = rules_new_render(c, name, no.on);
    bool existed;
    if (!text) {
        fprintf(stderr, "nerve rules new: out of memory\n");
    } else if (write_atomic(dir, path, text, no.force, &existed, err, sizeof err) != 0) {
        fprintf(stderr, "nerve rules new: %s\n", err);
    } else {
        rule_kind k = kind_of(c, no.on);
        /* The next commands must see the file: same config, same directory. */
        char with[PATH_MAX + 64] = "";
        size_t wl = 0;
        if (strcmp(a.config, "config/nerve.yaml") != 0)
            wl += (size_t)snprintf(with + wl, sizeof with - wl, " -c %s", a.config);
        if (no.dir && strcmp(no.dir, c->rules_dir) != 0 && wl < sizeof with)
            snprintf(with + wl, sizeof with - wl, " --set rules.dir=%s", no.dir);
        printf("wrote %s: rule %s on %s, with fixtures; its setting: rules.params.%s.%s\n", path,
               name, no.on, name, kinds[k].param);
        if (c->n_rules_files > 0)
            printf("note: rules.files lists the files to load: add %s.lua to it, or nothing "
                   "loads it\n",
                   name);
        printf("next:\n"
               "  nerve check%s\n"
               "  nerve rules test%s --rule %s rules/examples/events.jsonl\n",
               with, with, name);
        rc = 0;
    }
out:
    free(text);
    cfg_free(c);
    cli_args_free(&a);
    return rc;
}
