/* test_durability.c -- nothing is lost (issue 11, item 5): faults under load
 * against the real daemon, a real redis-server and the real SQLite ledger.
 *
 *   1. The ledger database locked for 10 s under load: sales go on (Redis is
 *      the system of record), the lag shows in nerve_ledger_lag_seconds and
 *      in /readyz's warnings past ledger.lag_ready_ms (503 with it as the
 *      reason with ledger.lag_unready, the PostgreSQL case), and once the lock is
 *      gone the ledger catches up with every acknowledged order exactly once.
 *      The same with the PostgreSQL ledger stopped for 10 s.
 *   2. nerve killed with -9 mid-load and started again: every acknowledged
 *      order is in the ledger once and `nerve ledger verify` exits 0 (the
 *      entries the dead writer had read are claimed after bus.claim_idle_ms).
 *   3. Redis killed with -9 mid-load and restarted from its AOF
 *      (appendfsync always, the harness' AOF mode): no acknowledged sale is
 *      missing from the ledger, and verify exits 0.
 *
 * "Acknowledged" = answered 200 and not a duplicate. The ledger is read
 * through `nerve ledger export` (the analyst's command), so these tests also
 * run it. Each test polls with a deadline; nothing sleeps to synchronise.
 */
#include "harness.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* --- the ledger, as `nerve ledger` shows it ------------------------------- */

/* `nerve ledger ARGS...` against R's ledger (the harness puts each redis'
 * ledger in its directory) and R. */
static char pg_set[512]; /* "ledger.url=..." while a test uses PostgreSQL */

static int ledger_cmd(h_redis *r, h_run *out, const char *a1, const char *a2, const char *a3,
                      const char *a4)
{
    char path[600], url[96], rurl[64];
    if (pg_set[0])
        snprintf(path, sizeof path, "%s", pg_set);
    else
        snprintf(path, sizeof path, "ledger.path=%s/ledger.db", r->dir);
    snprintf(url, sizeof url, "redis.url=%s", h_redis_url(r, rurl, sizeof rurl));
    const char *args[] = { "ledger", a1, "-c", "config/nerve.yaml", "--set", path, "--set", url,
                           a2, a3, a4, NULL };
    return h_run_nerve(out, 60000, NULL, args);
}

/* The order_ids of SKU's rows in the sales table: how many rows, and how many
 * of ORDERS[0..n) (sorted strings) each appears; a row whose order_id is not
 * in ORDERS counts in *EXTRA. */
typedef struct seen {
    char **ids;     /* sorted */
    int *count;
    int n;
} seen;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The acknowledged orders of the loads L[0..nl): answered 200, not a duplicate. */
static seen acked(h_load *l, int nl, const char *const *prefixes)
{
    seen s = { 0 };
    int cap = 0;
    for (int k = 0; k < nl; k++)
        cap += l[k].requests;
    s.ids = calloc((size_t)cap + 1, sizeof *s.ids);
    s.count = calloc((size_t)cap + 1, sizeof *s.count);
    assert_non_null(s.ids);
    for (int k = 0; k < nl; k++) {
        for (int i = 0; i < l[k].requests; i++) {
            h_sale_rec *rec = &l[k].recs[i];
            if (!rec->sent || rec->status != 200 || !rec->json)
                continue;
            if (h_jbool(rec->json, "duplicate") == 1)
                continue;
            char id[64];
            snprintf(id, sizeof id, "%s-%d", prefixes[k], i);
            s.ids[s.n++] = strdup(id);
        }
    }
    qsort(s.ids, (size_t)s.n, sizeof *s.ids, cmp_str);
    return s;
}

static void seen_free(seen *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->ids[i]);
    free(s->ids);
    free(s->count);
    memset(s, 0, sizeof *s);
}

/* Count, in the ledger's sales of SKU, each acknowledged order. Returns the
 * number of rows of SKU; *MISSING the acknowledged orders with no row,
 * *DOUBLED those with more than one, *EXTRA rows of orders not acknowledged
 * (a 503 "may or may not", or a request cut by a kill, that was in fact
 * recorded: allowed). */
static int ledger_count(h_redis *r, const char *sku, seen *s, int *missing, int *doubled,
                        int *extra)
{
    h_run run;
    int st = ledger_cmd(r, &run, "export", "--table", "sales", "--format=jsonl");
    if (st != 0) {
        print_error("nerve ledger export: exit %d\n%s\n", st, run.err);
        h_run_free(&run);
        return -1;
    }
    memset(s->count, 0, (size_t)s->n * sizeof *s->count);
    int rows = 0;
    *extra = 0;
    char *save = NULL;
    for (char *line = strtok_r(run.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);
        if (!o) {
            print_error("export line is not JSON: %s\n", line);
            h_run_free(&run);
            return -1;
        }
        const char *osku = h_jstr(o, "sku"), *oid = h_jstr(o, "order_id");
        if (osku && oid && strcmp(osku, sku) == 0) {
            rows++;
            char *key = (char *)oid;
            char **hit = bsearch(&key, s->ids, (size_t)s->n, sizeof *s->ids, cmp_str);
            if (hit)
                s->count[hit - s->ids]++;
            else
                (*extra)++;
        }
        cJSON_Delete(o);
    }
    h_run_free(&run);
    *missing = *doubled = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->count[i] == 0)
            (*missing)++;
        if (s->count[i] > 1)
            (*doubled)++;
    }
    return rows;
}

/* Poll until every acknowledged order of SKU is in the ledger (fails after
 * MS with the numbers), then check none is there twice. */
static void wait_ledger_complete(h_redis *r, const char *sku, seen *s, int ms)
{
    double dl = h_deadline(ms);
    int rows = 0, missing = 0, doubled = 0, extra = 0;
    do {
        rows = ledger_count(r, sku, s, &missing, &doubled, &extra);
        if (rows >= 0 && missing == 0)
            break;
        h_nap();
    } while (h_before(dl));
    printf("# ledger: %d rows of %s, %d acknowledged orders, %d missing, %d doubled, %d "
           "extra (recorded, but the client got a 503 or no answer)\n",
           rows, sku, s->n, missing, doubled, extra);
    if (rows < 0 || missing)
        fail_msg("%d of %d acknowledged orders of %s never reached the ledger within %d ms",
                 missing, s->n, sku, ms);
    assert_int_equal(doubled, 0);
    assert_int_equal(rows, s->n + extra);
}

static void expect_verify_ok(h_redis *r)
{
    h_run run;
    int st = ledger_cmd(r, &run, "verify", NULL, NULL, NULL);
    if (st != 0)
        fail_msg("nerve ledger verify: exit %d\nstdout: %s\nstderr: %s", st, run.out, run.err);
    h_run_free(&run);
}

/* --- load in waves ---------------------------------------------------------- */

#define MAX_WAVES 2000

static h_load waves[MAX_WAVES];
static char wave_prefix[MAX_WAVES][24];
static const char *wave_prefixes[MAX_WAVES];
static int nwaves;

static h_load *wave_start(h_daemon *d, const char *sku, const char *tag)
{
    if (nwaves >= MAX_WAVES)
        fail_msg("more than %d waves", MAX_WAVES);
    h_load *l = &waves[nwaves];
    snprintf(wave_prefix[nwaves], sizeof wave_prefix[0], "%s%d", tag, nwaves);
    wave_prefixes[nwaves] = wave_prefix[nwaves];
    *l = (h_load){ .d = d, .path = "/sale", .sku = sku, .qty = 1,
                   .order_prefix = wave_prefix[nwaves], .clients = 4, .requests = 200,
                   .timeout_ms = 15000 };
    nwaves++;
    assert_int_equal(h_load_start(l), 0);
    return l;
}

static void waves_free(void)
{
    for (int i = 0; i < nwaves; i++)
        h_load_free(&waves[i]);
    nwaves = 0;
}

static int status_count(long status)
{
    int n = 0;
    for (int i = 0; i < nwaves; i++)
        n += waves[i].by_status[status];
    return n;
}

/* --- 1. the ledger locked for 10 s under load ------------------------------- */

static void test_ledger_locked_under_load(void **state)
{
    (void)state;
    const char *sku = "dur-locked";
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    h_daemon *d = h_daemon_start(r, "ledger.lag_ready_ms=1000", "panic.dry_run=true", NULL);
    assert_non_null(d);
    H_SET_STOCK(d, sku, 1000000);
    assert_int_equal(h_load_wait(wave_start(d, sku, "lk")), 0);

    /* The writer has created the file and its schema by now (the wave's
     * first orders): lock it the way another writer would. */
    char path[256];
    snprintf(path, sizeof path, "%s/ledger.db", r->dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *why = NULL;
    if (sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, &why) != SQLITE_OK)
        fail_msg("BEGIN EXCLUSIVE on %s: %s", path, why ? why : "?");
    double locked_at = h_now();

    /* 10 s of load with the ledger locked: every sale answered 200. */
    bool saw_lag = false, saw_reason = false;
    while (h_now() - locked_at < 10.0) {
        h_load *l = wave_start(d, sku, "lk");
        assert_int_equal(h_load_wait(l), 0);
        if (l->by_status[200] != l->requests)
            fail_msg("with the ledger locked, %d of %d sales answered 200", l->by_status[200],
                     l->requests);
        char *m = H_METRICS(d);
        if (h_metric(m, "nerve_ledger_lag_seconds", NULL) >= 1.5)
            saw_lag = true;
        free(m);
        /* By default the lag is a warning: the instance stays ready. */
        h_resp rr;
        h_http(d, "GET", "/readyz", NULL, &rr, NULL);
        if (rr.status != 200)
            fail_msg("/readyz answered %ld with the ledger behind (ledger.lag_unready is off): %s",
                     rr.status, rr.body);
        if (rr.body && strstr(rr.body, "\"warnings\"") && strstr(rr.body, "ledger lag"))
            saw_reason = true;
        h_resp_free(&rr);
    }
    printf("# %d sales answered 200 while the ledger was locked for %.1f s\n",
           status_count(200), h_now() - locked_at);
    assert_true(saw_lag);
    assert_true(saw_reason);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);

    /* It catches up, exactly once, and /readyz turns 200 again. */
    seen s = acked(waves, nwaves, wave_prefixes);
    wait_ledger_complete(r, sku, &s, 30000);
    double dl = h_deadline(10000);
    bool warned = true;
    do {
        h_resp rr;
        h_http(d, "GET", "/readyz", NULL, &rr, NULL);
        warned = !rr.body || strstr(rr.body, "ledger lag");
        h_resp_free(&rr);
    } while (warned && h_before(dl) && (h_nap(), 1));
    assert_false(warned);
    expect_verify_ok(r);
    seen_free(&s);
    waves_free();
    assert_int_equal(h_daemon_stop(d), 0);
    h_redis_free(r);
    h_pass();
}

/* --- 1b. the PostgreSQL ledger stopped for 10 s under load ------------------- */

static void test_pg_down_under_load(void **state)
{
    (void)state;
    const char *sku = "dur-pgdown";
    h_pg *pg = h_pg_start();
    assert_non_null(pg);
    assert_int_equal(h_pg_createdb(pg, "ledger"), 0);
    char u[400];
    snprintf(pg_set, sizeof pg_set, "ledger.url=%s", h_pg_url(pg, "ledger", u, sizeof u));
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    /* ledger.lag_unready: the lag makes /readyz 503 with its reason. */
    h_daemon *d = h_daemon_start(r, pg_set, "ledger.lag_ready_ms=1000", "ledger.lag_unready=true",
                                 "panic.dry_run=true", NULL);
    assert_non_null(d);
    H_SET_STOCK(d, sku, 1000000);
    assert_int_equal(h_load_wait(wave_start(d, sku, "pg")), 0);
    assert_int_equal(h_pg_stop(pg), 0);
    double down_at = h_now();
    bool saw_lag = false, saw_reason = false;
    while (h_now() - down_at < 10.0) {
        h_load *l = wave_start(d, sku, "pg");
        assert_int_equal(h_load_wait(l), 0);
        if (l->by_status[200] != l->requests)
            fail_msg("with PostgreSQL down, %d of %d sales answered 200", l->by_status[200],
                     l->requests);
        char *m = H_METRICS(d);
        if (h_metric(m, "nerve_ledger_lag_seconds", NULL) >= 1.5)
            saw_lag = true;
        free(m);
        h_resp rr;
        h_http(d, "GET", "/readyz", NULL, &rr, NULL);
        if (rr.status == 503 && rr.body && strstr(rr.body, "ledger"))
            saw_reason = true;
        h_resp_free(&rr);
    }
    printf("# %d sales answered 200 while PostgreSQL was down for %.1f s\n", status_count(200),
           h_now() - down_at);
    assert_true(saw_lag);
    assert_true(saw_reason);
    assert_int_equal(h_pg_restart(pg), 0);
    seen s = acked(waves, nwaves, wave_prefixes);
    wait_ledger_complete(r, sku, &s, 30000);
    expect_verify_ok(r);
    seen_free(&s);
    waves_free();
    assert_int_equal(h_daemon_stop(d), 0);
    h_redis_free(r);
    h_pg_free(pg);
    pg_set[0] = 0;
    h_pass();
}

/* --- 2. nerve killed with -9 mid-load ---------------------------------------- */

static void test_nerve_kill9_then_verify(void **state)
{
    (void)state;
    const char *sku = "dur-kill9";
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    const char *sets[] = { "bus.claim_idle_ms=500", "panic.dry_run=true" };
    h_daemon *d = h_daemon_startv(r, true, sets, 2);
    assert_non_null(d);
    H_SET_STOCK(d, sku, 1000000);
    for (int i = 0; i < 3; i++)
        assert_int_equal(h_load_wait(wave_start(d, sku, "k9")), 0);
    h_load *l = wave_start(d, sku, "k9");
    double dl = h_deadline(10000);
    while (h_load_completed(l) < 30 && h_before(dl))
        h_nap();
    assert_int_equal(kill(d->pid, SIGKILL), 0);
    h_load_wait(l);
    h_daemon_stop(d); /* reaps it; reports the SIGKILL */

    h_daemon *d2 = h_daemon_startv(r, true, sets, 2);
    assert_non_null(d2);
    for (int i = 0; i < 2; i++)
        assert_int_equal(h_load_wait(wave_start(d2, sku, "k9")), 0);
    seen s = acked(waves, nwaves, wave_prefixes);
    wait_ledger_complete(r, sku, &s, 30000);
    expect_verify_ok(r);
    seen_free(&s);
    waves_free();
    assert_int_equal(h_daemon_stop(d2), 0);
    h_redis_free(r);
    h_pass();
}

/* --- 3. Redis killed with -9 and restarted from its AOF ---------------------- */

static void test_redis_aof_restart_keeps_acknowledged(void **state)
{
    (void)state;
    const char *sku = "dur-aof";
    h_redis *r = h_redis_start(true);
    assert_non_null(r);
    const char *sets[] = { "redis.reconnect_max_ms=300", "lock.max_wait_ms=500",
                           "bus.claim_idle_ms=500", "panic.dry_run=true" };
    h_daemon *d = h_daemon_startv(r, true, sets, 4);
    assert_non_null(d);
    H_SET_STOCK(d, sku, 1000000);
    for (int i = 0; i < 2; i++)
        assert_int_equal(h_load_wait(wave_start(d, sku, "ao")), 0);
    h_load *l = wave_start(d, sku, "ao");
    double dl = h_deadline(10000);
    while (h_load_completed(l) < 30 && h_before(dl))
        h_nap();
    assert_int_equal(kill(r->pid, SIGKILL), 0);
    h_redis_stop(r);
    h_load_wait(l);
    assert_int_equal(h_redis_restart(r), 0);
    /* Waves until the daemon sells again, then two more. */
    dl = h_deadline(20000);
    int ok_waves = 0;
    while (ok_waves < 2 && h_before(dl)) {
        h_load *w = wave_start(d, sku, "ao");
        assert_int_equal(h_load_wait(w), 0);
        if (w->by_status[200] == w->requests)
            ok_waves++;
    }
    assert_int_equal(ok_waves, 2);
    seen s = acked(waves, nwaves, wave_prefixes);
    printf("# %d acknowledged sales across the Redis restart\n", s.n);
    wait_ledger_complete(r, sku, &s, 30000);
    expect_verify_ok(r);
    seen_free(&s);
    waves_free();
    assert_int_equal(h_daemon_stop(d), 0);
    h_redis_free(r);
    h_pass();
}

int main(void)
{
    h_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ledger_locked_under_load, h_test_setup,
                                        h_test_teardown),
        cmocka_unit_test_setup_teardown(test_pg_down_under_load, h_test_setup, h_test_teardown),
        cmocka_unit_test_setup_teardown(test_nerve_kill9_then_verify, h_test_setup,
                                        h_test_teardown),
        cmocka_unit_test_setup_teardown(test_redis_aof_restart_keeps_acknowledged, h_test_setup,
                                        h_test_teardown),
    };
    return cmocka_run_group_tests_name("durability", tests, NULL, NULL);
}
