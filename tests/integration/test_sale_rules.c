/* test_sale_rules.c -- sale-time rules hold, fail closed and cost little
 * (issue 9, item 4).
 *
 * Findings, each reproduced against the daemon over real HTTP on a real
 * redis-server:
 *   - a "reject after 3" limit written with ctx.state rejected 0 of 12 sales
 *     sent on fresh connections: ctx.state of a sale_request rule lives in one
 *     HTTP worker thread. The same limit written with ctx.incr (a counter in
 *     Redis) now answers exactly 3 x 200 and 9 x 422 naming the rule, on one
 *     instance with 8 workers (test_limit_fresh_connections) and over two
 *     instances sharing the Redis (test_limit_fleet_wide);
 *   - a sale_request rule that errors let the sale through. Now it answers
 *     per rules.sale_on_error: 422 naming the rule (reject, the default) or
 *     200 (allow), counted in nerve_sale_rule_failures_total{outcome} and in
 *     the rule's error counter (test_sale_on_error_reject,
 *     test_sale_on_error_allow);
 *   - a sale_request rule that never returns made eight requests hang
 *     /healthz and /sale with server.threads=8. Now the deadline
 *     (rules.eval_timeout_ms) ends each evaluation: 16 concurrent sales are
 *     all answered 422 within seconds and /healthz answers meanwhile
 *     (test_sale_rule_endless_loop);
 *   - every HTTP worker built every rule, so an event rule holding 6 MB was
 *     held once per worker (RSS 20 MB -> 945 MB with 128 workers). Now a
 *     worker builds only the sale_request rules: with 64 workers each
 *     serving sales, RSS grows by far less than one copy per worker
 *     (test_event_rule_not_per_worker); and what a rule sees: ctx.state
 *     counts per worker thread, ctx.incr once for everyone
 *     (test_state_per_thread_incr_per_fleet).
 *
 * Each test starts its own daemon(s) with a rule directory of its own in the
 * temp dir (the shipped rules are not loaded), on the group's redis-server.
 */
#include "harness.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static h_redis *redis;

/* --- rules ------------------------------------------------------------------ */

/* "reject after 3": the fourth sale of a SKU within the hour is refused,
 * whichever worker or instance it reaches. Its fixtures count locally
 * (ctx.incr in a fixture is a table of the rule's own state). */
static const char *const LIMIT_RULE =
    "return {\n"
    "  name = \"sku_limit\",\n"
    "  on = { \"sale_request\" },\n"
    "  evaluate = function(e, ctx)\n"
    "    local n = ctx.incr(\"sku:\" .. e.sku, 3600)\n"
    "    if n > 3 then\n"
    "      return { action = \"reject\", reason = \"sale \" .. n .. \" of \" .. e.sku .. \" this hour\" }\n"
    "    end\n"
    "  end,\n"
    "  tests = {\n"
    "    { channel = \"sale_request\", event = { type = \"sale_request\", sku = \"A\", qty = 1 }, expect = {} },\n"
    "    { channel = \"sale_request\", event = { type = \"sale_request\", sku = \"A\", qty = 1 }, expect = {} },\n"
    "    { channel = \"sale_request\", event = { type = \"sale_request\", sku = \"A\", qty = 1 }, expect = {} },\n"
    "    { channel = \"sale_request\", event = { type = \"sale_request\", sku = \"A\", qty = 1 },\n"
    "      expect = { { action = \"reject\" } } },\n"
    "  },\n"
    "}\n";

static const char *const BOOM_RULE =
    "return {\n"
    "  name = \"boom\",\n"
    "  on = { \"sale_request\" },\n"
    "  evaluate = function(e, ctx)\n"
    "    error(\"boom\")\n"
    "  end,\n"
    "}\n";

static const char *const FOREVER_RULE =
    "return {\n"
    "  name = \"forever\",\n"
    "  on = { \"sale_request\" },\n"
    "  evaluate = function(e, ctx)\n"
    "    while true do end\n"
    "  end,\n"
    "}\n";

/* Rejects every sale, saying what its two counters read: ctx.state (this
 * worker's) and ctx.incr (everyone's). */
static const char *const COUNT_RULE =
    "return {\n"
    "  name = \"counts\",\n"
    "  on = { \"sale_request\" },\n"
    "  evaluate = function(e, ctx)\n"
    "    ctx.state.n = (ctx.state.n or 0) + 1\n"
    "    local fleet = ctx.incr(\"all:\" .. e.sku, 604800)\n"
    "    return { action = \"reject\", reason = \"local=\" .. ctx.state.n .. \" fleet=\" .. fleet }\n"
    "  end,\n"
    "}\n";

#define BIG_MB 6
#define WORKERS 64

/* An event rule holding BIG_MB MiB from the moment its file runs (a lookup
 * table loaded at start, say): the old daemon ran it again in every HTTP
 * worker that built a vm for the sale rule below. */
static const char *const BIG_RULE =
    "local BIG = string.rep(\"x\", " H_STR(BIG_MB) " * 1024 * 1024)\n"
    "return {\n"
    "  name = \"big\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(e, ctx)\n"
    "    ctx.state.len = #BIG\n"
    "  end,\n"
    "}\n";

static const char *const TRIVIAL_SALE_RULE =
    "return {\n"
    "  name = \"trivial\",\n"
    "  on = { \"sale_request\" },\n"
    "  evaluate = function(e, ctx)\n"
    "    if e.qty > 1000 then return { action = \"reject\", reason = \"too many\" } end\n"
    "  end,\n"
    "}\n";

/* --- helpers ------------------------------------------------------------------ */

/* A daemon on the group's redis with the rule directory NAME holding FILE
 * (TEXT) and the NULL-terminated overrides that follow. */
static h_daemon *start_with_rule(const char *name, const char *file, const char *text, ...)
{
    char rset[PATH_MAX + 32];
    const char *sets[16];
    size_t n = 0;
    va_list ap;

    H_RULES_DIR(name, file, text, NULL, 0, rset, sizeof rset);
    sets[n++] = rset;
    va_start(ap, text);
    for (const char *s; n < sizeof sets / sizeof sets[0] && (s = va_arg(ap, const char *)); )
        sets[n++] = s;
    va_end(ap);
    h_daemon *d = h_daemon_startv(redis, true, sets, n);
    assert_non_null(d);
    return d;
}

/* The sale_on_error outcome counter of D. */
static double failures(const h_daemon *d, const char *outcome)
{
    char label[64];
    snprintf(label, sizeof label, "outcome=\"%s\"", outcome);
    char *m = H_METRICS(d);
    double v = h_metric(m, "nerve_sale_rule_failures_total", label);
    free(m);
    return v;
}

/* D's log holds NEEDLE (a rule error is logged as FILE:LINE: message). */
static void assert_logged(const h_daemon *d, const char *needle)
{
    char *log = h_read_file(d->log);
    assert_non_null(log);
    if (strstr(log, needle) == NULL) {
        h_daemon_log_tail(d, 20);
        fail_msg("the daemon log does not say \"%s\"", needle);
    }
    free(log);
}

/* VmRSS of PID in KiB, -1 when unreadable. */
static long rss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

typedef struct limit_run {
    int ok, rejected, other;
    int ok_by[2], rejected_by[2];
} limit_run;

/* Send 12 sales of SKU (stock 100), each on a fresh connection (h_sale
 * forbids reuse), alternating over the ND daemons DS. Every 422 must name
 * sku_limit. false when the sales straddled the start of a new hour (the
 * counter's window): the caller runs again with another SKU. */
static bool sell_twelve(h_daemon *const *ds, int nd, const char *sku, limit_run *out)
{
    memset(out, 0, sizeof *out);
    H_SET_STOCK(ds[0], sku, 100);
    time_t t0 = time(NULL);
    for (int i = 0; i < 12; i++) {
        h_resp r;
        char oid[64];
        snprintf(oid, sizeof oid, "%s-%d", sku, i);
        long st = h_sale(ds[i % nd], "/sale", sku, 1, oid, &r);
        if (st == 200) {
            out->ok++;
            out->ok_by[i % nd]++;
        } else if (st == 422) {
            H_ASSERT_ERROR(&r, 422, "policy_rejected");
            const char *rule = h_jstr(r.json, "rule");
            if (rule == NULL || strcmp(rule, "sku_limit") != 0)
                fail_msg("sale %d: 422 from rule %s, want sku_limit: %s", i, rule ? rule : "(none)",
                         r.body);
            out->rejected++;
            out->rejected_by[i % nd]++;
        } else {
            printf("# sale %d: %ld %s\n", i, st, r.body ? r.body : r.err);
            out->other++;
        }
        h_resp_free(&r);
    }
    return t0 / 3600 == time(NULL) / 3600;
}

/* --- a. a limit holds over fresh connections ---------------------------------- */

static void test_limit_fresh_connections(void **state)
{
    (void)state;
    h_daemon *d = start_with_rule("sr-limit", "limit.lua", LIMIT_RULE, "server.threads=8", NULL);
    limit_run lr;
    const char *sku = "lim-a";
    if (!sell_twelve(&d, 1, sku, &lr))
        assert_true(sell_twelve(&d, 1, sku = "lim-a2", &lr));
    printf("# 12 sales on fresh connections: %d x 200, %d x 422\n", lr.ok, lr.rejected);
    assert_int_equal(lr.other, 0);
    assert_int_equal(lr.ok, 3);
    assert_int_equal(lr.rejected, 9);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 97);

    /* The count is one Redis key of the rule and the window. */
    char key[256];
    long long v = -1;
    snprintf(key, sizeof key, H_PREFIX "ctr:{sku_limit}:sku:%s:3600:%lld", sku,
             (long long)(time(NULL) / 3600));
    assert_int_equal(h_redis_get_ll(redis, key, &v), 0);
    assert_int_equal(v, 12);
    redisReply *ttl = h_redis_cmd(redis, "TTL %s", key);
    assert_non_null(ttl);
    assert_true(ttl->type == REDIS_REPLY_INTEGER && ttl->integer > 0 && ttl->integer <= 2 * 3600 + 1);
    freeReplyObject(ttl);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- b. ... and over the fleet ------------------------------------------------- */

static void test_limit_fleet_wide(void **state)
{
    (void)state;
    h_daemon *ds[2];
    ds[0] = start_with_rule("sr-limit", "limit.lua", LIMIT_RULE, "server.threads=8", NULL);
    ds[1] = start_with_rule("sr-limit", "limit.lua", LIMIT_RULE, "server.threads=8", NULL);
    limit_run lr;
    const char *sku = "lim-b";
    if (!sell_twelve(ds, 2, sku, &lr))
        assert_true(sell_twelve(ds, 2, sku = "lim-b2", &lr));
    printf("# 12 sales alternating over two instances: %d x 200 (%d + %d), %d x 422 (%d + %d)\n",
           lr.ok, lr.ok_by[0], lr.ok_by[1], lr.rejected, lr.rejected_by[0], lr.rejected_by[1]);
    assert_int_equal(lr.other, 0);
    assert_int_equal(lr.ok, 3);
    assert_int_equal(lr.rejected, 9);
    /* Both instances refused: neither had counted only its own sales. */
    assert_true(lr.rejected_by[0] > 0 && lr.rejected_by[1] > 0);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 97);
    assert_int_equal(h_daemon_stop(ds[1]), 0);
    assert_int_equal(h_daemon_stop(ds[0]), 0);
    h_pass();
}

/* --- c. a failing sale rule ------------------------------------------------------ */

static void test_sale_on_error_reject(void **state)
{
    (void)state;
    h_daemon *d = start_with_rule("sr-boom", "boom.lua", BOOM_RULE, NULL);
    H_SET_STOCK(d, "boom-r", 10);
    long long err0 = h_rule_stat(d, "boom", "errors");
    assert_int_equal(err0, 0);
    assert_true(failures(d, "rejected") == 0 && failures(d, "allowed") == 0);
    for (int i = 0; i < 3; i++) {
        h_resp r;
        assert_int_equal(h_sale(d, "/sale", "boom-r", 1, NULL, &r), 422);
        H_ASSERT_ERROR(&r, 422, "policy_rejected");
        assert_string_equal(h_jstr(r.json, "rule"), "boom");
        h_resp_free(&r);
    }
    assert_int_equal(H_REDIS_STOCK(redis, "boom-r"), 10);
    assert_true(failures(d, "rejected") == 3);
    assert_true(failures(d, "allowed") == 0);
    assert_int_equal(h_rule_stat(d, "boom", "errors"), 3);
    assert_logged(d, "boom.lua:5: boom");
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* A sale rule whose file runs fine on the main thread (load, fixtures,
 * nerve check) but needs more C stack than an HTTP worker has: the worker
 * cannot build its evaluator. That used to leave the gate with no vm, and
 * every sale went through although another rule rejects them all. */
#define BOMB_RULE                                                            \
    "local function f(n)\n"                                                  \
    "  if n == 0 then return 'x' end\n"                                      \
    "  return (('a'):gsub('a', function() return f(n - 1) end))\n"          \
    "end\n"                                                                  \
    "local probe = f(60)\n"                                                  \
    "return { name = 'bomb', on = { 'sale_request' },\n"                     \
    "  evaluate = function(event, ctx) return nil end }\n"
#define FLOOR_RULE                                                           \
    "return { name = 'floor', on = { 'sale_request' },\n"                    \
    "  evaluate = function(event, ctx)\n"                                    \
    "    return { action = 'reject', reason = 'every sale is rejected' } end }\n"

static void test_sale_rules_unbuildable(void **state)
{
    char dir[PATH_MAX];
    (void)state;
    H_RULES_DIR("sr-bomb", "floor.lua", FLOOR_RULE, dir, sizeof dir, NULL, 0);
    h_daemon *d = start_with_rule("sr-bomb", "bomb.lua", BOMB_RULE, NULL);
    H_SET_STOCK(d, "bomb-r", 10);
    for (int i = 0; i < 3; i++) {
        h_resp r;
        long st = h_sale(d, "/sale", "bomb-r", 1, NULL, &r);
        if (st != 422)
            fail_msg("sale %d with an unbuildable sale rule: %ld %s", i, st, r.body);
        H_ASSERT_ERROR(&r, 422, "policy_rejected");
        h_resp_free(&r);
    }
    assert_int_equal(H_REDIS_STOCK(redis, "bomb-r"), 10);
    assert_true(failures(d, "rejected") == 3);
    assert_logged(d, "cannot build a sale-rule evaluator");
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

static void test_sale_on_error_allow(void **state)
{
    (void)state;
    h_daemon *d = start_with_rule("sr-boom", "boom.lua", BOOM_RULE, "rules.sale_on_error=allow", NULL);
    H_SET_STOCK(d, "boom-a", 10);
    for (int i = 0; i < 3; i++) {
        h_resp r;
        long st = h_sale(d, "/sale", "boom-a", 1, NULL, &r);
        if (st != 200)
            fail_msg("sale %d with sale_on_error=allow: %ld %s", i, st, r.body);
        h_resp_free(&r);
    }
    assert_int_equal(H_REDIS_STOCK(redis, "boom-a"), 7);
    assert_true(failures(d, "allowed") == 3);
    assert_true(failures(d, "rejected") == 0);
    assert_int_equal(h_rule_stat(d, "boom", "errors"), 3);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* A sale rule that never returns, with an instruction limit so high that
 * only the deadline (100 ms) stops it, and 8 workers: 16 concurrent sales. */
static void test_sale_rule_endless_loop(void **state)
{
    (void)state;
    h_daemon *d = start_with_rule("sr-forever", "forever.lua", FOREVER_RULE, "server.threads=8",
                                  "rules.instruction_limit=1000000000", "rules.eval_timeout_ms=100",
                                  NULL);
    H_SET_STOCK(d, "loop", 100);
    h_load l = { .d = d, .path = "/sale", .sku = "loop", .qty = 1, .clients = 16, .requests = 16,
                 .timeout_ms = 20000 };
    assert_int_equal(h_load_start(&l), 0);
    int probes = 0;
    double worst = 0;
    while (h_load_completed(&l) < 16) {
        h_resp r;
        long st = h_http(d, "GET", "/healthz", NULL, &r, NULL);
        if (st != 200)
            fail_msg("/healthz %ld while sale rules loop: %s", st, r.body ? r.body : r.err);
        if (r.secs > worst)
            worst = r.secs;
        h_resp_free(&r);
        probes++;
    }
    assert_int_equal(h_load_wait(&l), 0);
    printf("# 16 concurrent sales through an endless rule: answered in %.2f s (slowest %.2f s); "
           "/healthz %d x 200 meanwhile, slowest %.2f s\n", l.secs, l.max_secs, probes, worst);
    assert_int_equal(l.by_status[422], 16);
    for (int i = 0; i < 16; i++)
        assert_string_equal(h_jstr(l.recs[i].json, "rule"), "forever");
    assert_true(l.secs < 5.0);
    assert_true(worst < 3.0);
    assert_int_equal(H_REDIS_STOCK(redis, "loop"), 100);
    assert_true(failures(d, "rejected") == 16);
    assert_int_equal(h_rule_stat(d, "forever", "errors"), 16);
    assert_logged(d, "forever.lua:5:");
    h_load_free(&l);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- d. which state lives where; what a worker holds ------------------------------ */

/* Eight keep-alive connections, opened before any sale, hold eight workers;
 * 32 sales over them. The rule answers each with its two counts. */
static void test_state_per_thread_incr_per_fleet(void **state)
{
    (void)state;
    enum { CONNS = 8, SALES = 32 };
    h_daemon *d = start_with_rule("sr-counts", "counts.lua", COUNT_RULE, "server.threads=8", NULL);
    H_SET_STOCK(d, "cnt", 100);
    h_load l = { .d = d, .path = "/sale", .sku = "cnt", .qty = 1, .clients = CONNS,
                 .requests = SALES, .together = true, .timeout_ms = 20000 };
    assert_int_equal(h_load_run(&l), 0);
    assert_int_equal(l.by_status[422], SALES);
    bool seen[SALES + 1] = { false };
    int firsts = 0, max_local = 0;
    for (int i = 0; i < SALES; i++) {
        const char *reason = h_jstr(l.recs[i].json, "reason");
        int loc = 0, fleet = 0;
        if (reason == NULL || sscanf(reason, "local=%d fleet=%d", &loc, &fleet) != 2)
            fail_msg("sale %d: %s", i, l.recs[i].body);
        assert_true(fleet >= 1 && fleet <= SALES);
        assert_false(seen[fleet]);          /* one count for everyone: 1..SALES once each */
        seen[fleet] = true;
        firsts += loc == 1;
        if (loc > max_local)
            max_local = loc;
    }
    printf("# %d sales over %d connections: ctx.incr counted 1..%d once each; ctx.state started "
           "at 1 in %d workers, the busiest counted %d\n", SALES, CONNS, SALES, firsts, max_local);
    /* ctx.state is per worker: several started from scratch, none saw all. */
    assert_true(firsts >= 2);
    assert_true(max_local < SALES);
    h_load_free(&l);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* 64 workers each build their sale vm; the event rule's BIG_MB MiB must not
 * come with it. The old daemon (every worker built every rule) grew by about
 * 64 x BIG_MB = 384 MiB here. */
static void test_event_rule_not_per_worker(void **state)
{
    (void)state;
    char rdir[PATH_MAX], rset[PATH_MAX + 32];
    H_RULES_DIR("sr-big", "big.lua", BIG_RULE, rdir, sizeof rdir, rset, sizeof rset);
    H_WRITE_FILE(rdir, "trivial.lua", TRIVIAL_SALE_RULE);
    const char *sets[] = { rset, "server.threads=" H_STR(WORKERS), "bus.channels=[test_events]",
                           "rules.memory_limit=33554432" };
    h_daemon *d = h_daemon_startv(redis, true, sets, sizeof sets / sizeof sets[0]);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    assert_true(h_publish(redis, "test_events", "{\"type\":\"ping\"}") >= 1);
    double dl = h_deadline(5000);
    while (h_rule_stat(d, "big", "evaluations") < 1 && h_before(dl))
        h_nap();
    assert_int_equal(h_rule_stat(d, "big", "evaluations"), 1);
    assert_int_equal(h_rule_stat(d, "big", "errors"), 0);
    H_SET_STOCK(d, "rss", 100000);

    long before = rss_kb(d->pid);
    assert_true(before > 0);
    h_load l = { .d = d, .path = "/sale", .sku = "rss", .qty = 1, .clients = WORKERS,
                 .requests = WORKERS * 4, .together = true, .timeout_ms = 20000 };
    assert_int_equal(h_load_run(&l), 0);
    assert_int_equal(l.by_status[200], WORKERS * 4);
    long after = rss_kb(d->pid);
    h_load_free(&l);
    printf("# RSS with %d workers serving sales and an event rule holding %d MiB: "
           "%ld KiB -> %ld KiB (+%ld KiB)\n", WORKERS, BIG_MB, before, after, after - before);
    /* Far less than one copy per worker (64 x 6 MiB = 384 MiB). */
    assert_true(after - before < 100 * 1024);
    assert_int_equal(h_rule_stat(d, "trivial", "evaluations"), WORKERS * 4);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_limit_fresh_connections),
        T(test_limit_fleet_wide),
        T(test_sale_on_error_reject),
        T(test_sale_on_error_allow),
        T(test_sale_rules_unbuildable),
        T(test_sale_rule_endless_loop),
        T(test_state_per_thread_incr_per_fleet),
        T(test_event_rule_not_per_worker),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
