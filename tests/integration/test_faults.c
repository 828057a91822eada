/* test_faults.c -- fault injection against the real daemon (SPEC §1, §8, §10).
 *
 * Each test injects one kind of fault, bounded in time, and checks what must
 * still hold:
 *   1. redis-server SIGKILLed and restarted (AOF, appendfsync always) under
 *      load: no oversell (every order replayed with its own order_id after
 *      the run, so idempotency says exactly what sold), 503 while it is down,
 *      recovery without restarting nerve, the bus subscriber back.
 *   2. Redis frozen (SIGSTOP) longer than lock.ttl_ms: a stalled holder's
 *      commit is fenced off at the Redis level (sale_commit with the stale
 *      token, linked from libnerve.a), and end to end under load from two
 *      daemons: only 200/409/503, exact stock.
 *   3. The emergency-stop webhook hanging past panic.timeout_ms and closing
 *      connections without answering: retries, the scripted outcome, and
 *      sales and rule evaluation never delayed.
 *   4. The event bus flooded far past the evaluation rate with a small
 *      bus.queue_size: bounded memory, drops counted, /readyz says so and
 *      recovers, events evaluated again.
 *   5. Slowloris clients holding connections open a byte at a time.
 *   6. An unwritable pidfile (in /proc, in a missing directory, on a full
 *      disk): a quick non-zero exit with a message naming the path and why.
 */
#include "harness.h"

#include "nerve/rds.h"
#include "nerve/sale.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHANNELS "bus.channels=[inventory_events,sales_events,financial_events,test_events,probe_events,flood_events]"

static int faults;              /* faults injected, for the summary */
static mock_server *hook;       /* test 3: stopped by the teardown */

/* --- small helpers ----------------------------------------------------------- */

/* A pause that is part of a scenario (Redis kept frozen, a slow client's
 * byte rate), never a wait for something to happen: those poll their
 * condition with a deadline (h_deadline/h_before/h_nap). */
static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static const char *const KILLER_RULE =
    "return {\n"
    "  name = \"fault_killer\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if type(event.kill) == \"string\" then\n"
    "      return { action = \"kill\", scope = event.kill, reason = \"fault test\" }\n"
    "    end\n"
    "  end,\n"
    "}\n";

static const char *const PROBE_RULE =
    "return {\n"
    "  name = \"fault_probe\",\n"
    "  on = { \"probe_events\" },\n"
    "  evaluate = function(event, ctx) end,\n"
    "}\n";

/* Burns ~100k VM instructions per event, then may kill. */
static const char *const BURNER_RULE =
    "return {\n"
    "  name = \"fault_burner\",\n"
    "  on = { \"flood_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    local x = 0\n"
    "    for i = 1, 25000 do x = x + i % 7 end\n"
    "    if type(event.kill) == \"string\" then\n"
    "      return { action = \"kill\", scope = event.kill, reason = \"after the flood\" }\n"
    "    end\n"
    "  end,\n"
    "}\n";

/* A rules dir under the temp dir with the three rules (written once);
 * "rules.dir=..." into SET. */
static void rules_dir(char *set, size_t len)
{
    static char dir[PATH_MAX];
    if (dir[0] == '\0') {
        H_RULES_DIR("fault-rules", "killer.lua", KILLER_RULE, dir, sizeof dir, NULL, 0);
        H_WRITE_FILE(dir, "probe.lua", PROBE_RULE);
        H_WRITE_FILE(dir, "burner.lua", BURNER_RULE);
    }
    snprintf(set, len, "rules.dir=%s", dir);
}

/* VmRSS of PID in KiB, -1 if unreadable. */
static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            v = strtol(line + 6, NULL, 10);
    fclose(f);
    return v;
}

/* Lines of D's log that mention WHAT. */
static int log_count(const h_daemon *d, const char *what)
{
    FILE *f = fopen(d->log, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, what) != NULL;
    if (f)
        fclose(f);
    return n;
}

static long readyz(const h_daemon *d, char *reason, size_t len)
{
    h_resp r;
    long st = h_http(d, "GET", "/readyz", NULL, &r, NULL);
    if (reason) {
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(r.json, "reasons");
        char *t = rs ? cJSON_PrintUnformatted(rs) : NULL;
        const char *one = h_jstr(r.json, "reason");
        snprintf(reason, len, "%s %s", one ? one : "", t ? t : "");
        free(t);
    }
    h_resp_free(&r);
    return st;
}

/* --- the exact count of what sold ------------------------------------------------ */

/* After a load on D with ORDER_PREFIX, replay every order it sent, with its own
 * order_id: a sale that went through answers as a duplicate and sells
 * nothing, one that did not sells now (or answers 409). The units sold by the
 * whole run are then the 200s of the replay. Replays answered 503 are retried.
 * Checks that every 200 of the first run is a duplicate of the same sale. */
static int lost_replies;        /* 503s whose sale had in fact gone through */

static long long sold_after_replay(const h_daemon *d, const char *sku, const char *order_prefix,
                                   const h_load *first)
{
    h_load rp = { .d = d, .path = "/sale", .sku = sku, .qty = 1, .order_prefix = order_prefix,
                  .clients = 4, .requests = first->sent, .timeout_ms = 10000 };
    assert_int_equal(h_load_run(&rp), 0);
    long long sold = 0;
    int bad = 0;
    for (int i = 0; i < rp.requests; i++) {
        h_sale_rec *rec = &rp.recs[i];
        long st = rec->status;
        char oid[96];
        snprintf(oid, sizeof oid, "%s-%d", order_prefix, i);
        double dl = h_deadline(15000);
        while (st == 503 && h_before(dl)) {
            h_resp r;
            st = h_sale(d, "/sale", sku, 1, oid, &r);
            if (st == 200 && bad < 5 && !h_jstr(r.json, "order_id"))
                bad++;
            h_resp_free(&r);
            if (st == 503)
                h_nap();
        }
        if (st == 200)
            sold++;
        if (st == 200 && first->recs[i].status != 200 && rec->status == 200 &&
            h_jbool(rec->json, "duplicate") == 1)
            lost_replies++;
        if (st != 200 && st != 409 && bad++ < 5)
            print_error("replay of %s: %ld %s\n", oid, st, rec->body ? rec->body : "");
        if (first->recs[i].status == 200 &&
            (rec->status != 200 || h_jbool(rec->json, "duplicate") != 1) && bad++ < 5)
            print_error("order %s answered 200 in the run, but its replay answered %ld %s "
                        "(expected 200 with \"duplicate\": true)\n",
                        oid, rec->status, rec->body ? rec->body : "");
    }
    h_load_free(&rp);
    assert_int_equal(bad, 0);
    return sold;
}

/* Count the first run's answers; fail on any status outside ALLOWED (0-terminated). */
static void tally(const h_load *l, const char *what, const long *allowed)
{
    int other = 0;
    char line[512];
    int n = snprintf(line, sizeof line, "# %s: %d requests in %.1f s:", what, l->sent, l->secs);
    for (int s = 100; s < 600; s++) {
        if (l->by_status[s] == 0)
            continue;
        n += snprintf(line + n, sizeof line - (size_t)n, " %d x %d", l->by_status[s], s);
        bool ok = false;
        for (const long *a = allowed; *a; a++)
            ok |= *a == s;
        if (!ok)
            other += l->by_status[s];
    }
    snprintf(line + n, sizeof line - (size_t)n, ", %d transport errors, slowest %.2f s",
             l->transport_errors, l->max_secs);
    printf("%s\n", line);
    for (int i = 0, shown = 0; i < l->requests && shown < 5; i++) {
        const h_sale_rec *rec = &l->recs[i];
        bool ok = false;
        for (const long *a = allowed; *a; a++)
            ok |= *a == rec->status;
        if (rec->sent && !ok) {
            print_error("%s: request %d answered %ld: %s\n", what, i, rec->status,
                        rec->body ? rec->body : "");
            shown++;
        }
    }
    if (other + l->transport_errors)
        fail_msg("%s: %d answers outside the allowed statuses, %d transport errors", what,
                 other, l->transport_errors);
}

/* --- 1. redis-server SIGKILLed under load ------------------------------------------ */

/* The load comes in waves of 150 sales from 4 keep-alive clients, one wave
 * after another, each with its own order_id prefix: the kill lands inside a
 * wave (sales in flight), waves keep coming while Redis is down (503s, fast)
 * and after it is back. A single unpaced load would spend itself on 503s
 * within the outage. */
#define MAX_WAVES 160

typedef struct waves {
    h_load l[MAX_WAVES];
    char prefix[MAX_WAVES][16];
    int n;
} waves;

static waves wv;

static h_load *wave_start(h_daemon *d, const char *sku)
{
    if (wv.n >= MAX_WAVES)
        fail_msg("more than %d waves", MAX_WAVES);
    h_load *l = &wv.l[wv.n];
    snprintf(wv.prefix[wv.n], sizeof wv.prefix[0], "fk%d", wv.n);
    *l = (h_load){ .d = d, .path = "/sale", .sku = sku, .qty = 1, .order_prefix = wv.prefix[wv.n],
                   .clients = 4, .requests = 150, .timeout_ms = 15000 };
    wv.n++;
    assert_int_equal(h_load_start(l), 0);
    return l;
}

static void wave_run(h_daemon *d, const char *sku)
{
    assert_int_equal(h_load_wait(wave_start(d, sku)), 0);
}

static void waves_free(void)
{
    for (int i = 0; i < wv.n; i++)
        h_load_free(&wv.l[i]);
    wv.n = 0;
}

/* How many 503s said the sale may or may not have been recorded (its reply
 * was lost with the connection). */
static int unknown_outcomes(const h_load *l)
{
    int n = 0;
    for (int i = 0; i < l->requests; i++)
        if (l->recs[i].status == 503 && l->recs[i].body &&
            strstr(l->recs[i].body, "may or may not"))
            n++;
    return n;
}

static void test_redis_sigkill(void **state)
{
    (void)state;
    const char *sku = "fault-kill";
    const long long initial = 1000000;
    h_redis *r = h_redis_start(true);
    assert_non_null(r);
    char rset[PATH_MAX + 32];
    rules_dir(rset, sizeof rset);
    h_daemon *d = h_daemon_start(r, rset, CHANNELS, "panic.dry_run=true",
                                 "redis.reconnect_max_ms=300", "redis.command_timeout_ms=1000",
                                 "lock.max_wait_ms=500", NULL);
    assert_non_null(d);
    pid_t pid = d->pid;
    H_WAIT_SUBSCRIBERS(r, "test_events", 1);
    H_SET_STOCK(d, sku, initial);

    for (int i = 0; i < 3; i++)
        wave_run(d, sku);
    h_load *l = wave_start(d, sku);
    double dl = h_deadline(10000);
    while (h_load_completed(l) < 40 && h_before(dl))
        h_nap();
    assert_int_equal(kill(r->pid, SIGKILL), 0);
    faults++;
    double t_kill = h_now();
    int at_kill = h_load_completed(l);
    h_redis_stop(r);            /* reaps it (reports the SIGKILL) */
    assert_int_equal(h_load_wait(l), 0);
    printf("# redis SIGKILLed with wave %d at %d of 150 answered\n", wv.n - 1, at_kill);

    /* While it is down: 503 with Retry-After, fast; not ready; alive. */
    h_resp hr;
    h_sale(d, "/sale", sku, 1, "fk-probe-down", &hr);
    H_ASSERT_ERROR(&hr, 503, "unavailable");
    assert_true(h_header(&hr, "Retry-After", NULL, 0));
    if (hr.secs > 3.0)
        fail_msg("a sale with Redis down took %.2f s to answer 503", hr.secs);
    h_resp_free(&hr);
    char why[512];
    dl = h_deadline(5000);
    while (readyz(d, why, sizeof why) != 503 && h_before(dl))
        h_nap();
    assert_int_equal(readyz(d, why, sizeof why), 503);
    printf("# /readyz with Redis down: 503 %s\n", why);
    int down_first = wv.n;
    while (h_now() < t_kill + 1.5) {
        wave_run(d, sku);
        /* Scenario: Redis stays down 1.5 s with a wave every 100 ms (a wave
         * of fast 503s takes milliseconds; unpaced, the outage would use up
         * MAX_WAVES). */
        sleep_ms(100);
    }
    int down_waves = wv.n - down_first;

    /* Back, while a wave runs. */
    l = wave_start(d, sku);
    assert_int_equal(h_redis_restart(r), 0);
    double t_up = h_now();
    assert_int_equal(h_load_wait(l), 0);
    printf("# redis restarted %.2f s after the kill (AOF, appendfsync always)\n", t_up - t_kill);

    /* Recovery by itself: a fresh sale succeeds. */
    int probe = 0;
    long last = 0;
    char probe_oid[64];
    dl = h_deadline(15000);
    while (h_before(dl)) {
        snprintf(probe_oid, sizeof probe_oid, "fk-probe-up-%d", probe++);
        last = h_sale(d, "/sale", sku, 1, probe_oid, &hr);
        h_resp_free(&hr);
        if (last == 200)
            break;
        if (last != 503)
            fail_msg("a sale after the redis restart: %ld (expected 503 until it recovers)", last);
        h_nap();
    }
    if (last != 200)
        fail_msg("sales did not recover within 15 s of the redis restart");
    printf("# sales recovered %.2f s after the restart\n", h_now() - t_up);
    /* Each worker thread's connection retries on its own backoff, at most
     * redis.reconnect_max_ms (300) after its last failure, which came before
     * t_up: once that bound has passed and a whole wave answered 200, every
     * sale must succeed. The settling waves count like any other (200 or
     * 503, replayed below), not as "after the recovery". */
    dl = h_deadline(15000);
    bool settled = false;
    while (!settled && h_before(dl)) {
        h_load *w = wave_start(d, sku);
        assert_int_equal(h_load_wait(w), 0);
        settled = w->by_status[200] == 150 && h_now() > t_up + 0.3;
    }
    if (!settled)
        fail_msg("no whole wave of 150 sales answered 200 within 15 s of the recovery");
    int up_first = wv.n;
    for (int i = 0; i < 4; i++)
        wave_run(d, sku);

    /* Every answer was a 200 or a 503; 503s while down, 200s after. */
    int by[600] = { 0 }, transport = 0, unknown = 0, up_ok = 0, down_503 = 0;
    for (int w = 0; w < wv.n; w++) {
        for (int s = 0; s < 600; s++)
            by[s] += wv.l[w].by_status[s];
        transport += wv.l[w].transport_errors;
        unknown += unknown_outcomes(&wv.l[w]);
        if (w >= up_first)
            up_ok += wv.l[w].by_status[200];
        if (w >= down_first && w < down_first + down_waves)
            down_503 += wv.l[w].by_status[503];
    }
    int total = 0;
    for (int s = 0; s < 600; s++)
        total += by[s];
    printf("# %d waves, %d sales: %d x 200, %d x 503 (%d of them \"may or may not have been "
           "recorded\"), %d transport errors; %d waves while down\n", wv.n, total + transport,
           by[200], by[503], unknown, transport, down_waves);
    if (by[200] + by[503] != total || transport)
        fail_msg("answers other than 200/503 across the kill: %d of %d, %d transport errors",
                 total - by[200] - by[503], total, transport);
    if (down_waves == 0 || down_503 != down_waves * 150)
        fail_msg("while Redis was down: %d of %d sales answered 503", down_503, down_waves * 150);
    if (up_ok != 4 * 150)
        fail_msg("after the recovery: %d of %d sales answered 200", up_ok, 4 * 150);

    /* The exact count: every wave's orders replayed, plus the probes. */
    long long sold = 0;
    lost_replies = 0;
    for (int w = 0; w < wv.n; w++)
        sold += sold_after_replay(d, sku, wv.prefix[w], &wv.l[w]);
    for (int i = 0; i < probe; i++) {
        snprintf(probe_oid, sizeof probe_oid, "fk-probe-up-%d", i);
        if (h_sale(d, "/sale", sku, 1, probe_oid, &hr) == 200)
            sold++;
        h_resp_free(&hr);
    }
    if (h_sale(d, "/sale", sku, 1, "fk-probe-down", &hr) == 200)
        sold++;
    h_resp_free(&hr);
    long long final = H_REDIS_STOCK(r, sku);
    printf("# sold %lld (replays included; %d sales answered 503 had gone through), "
           "stock %lld -> %lld\n", sold, lost_replies, initial, final);
    if (sold != initial - final || final < 0)
        fail_msg("oversell check: sold %lld but stock went %lld -> %lld (difference %lld)", sold,
                 initial, final, initial - final);

    /* The bus subscriber is back: an event now is evaluated and acted on. */
    char scope[64], ev[128];
    snprintf(scope, sizeof scope, "test:fk-%d", (int)getpid());
    snprintf(ev, sizeof ev, "{\"kill\":\"%s\"}", scope);
    dl = h_deadline(15000);
    long long got = 0;
    while (h_before(dl) && (got = h_publish(r, "test_events", ev)) < 1)
        h_nap();
    if (got < 1)
        fail_msg("the bus did not resubscribe within 15 s of the redis restart");
    cJSON_Delete(H_WAIT_KILL(r, scope, NULL, 5000));

    assert_int_equal(d->pid, pid);
    assert_int_equal(h_daemon_alive(d), 1);
    waves_free();
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 2. Redis frozen past the lock TTL --------------------------------------------- */

static void test_fencing_redis_pause(void **state)
{
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    const char *sku = "fence-1";
    const char *lock = H_PREFIX "{p0}:lock:fence-1", *stock = H_PREFIX "{p0}:stock:fence-1";
    const char *tok_a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", *tok_b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    redisReply *rep = h_redis_cmd(r, "SET %s 10", stock);
    freeReplyObject(rep);
    rep = h_redis_cmd(r, "SET %s %s PX 300", lock, tok_a);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);

    /* Freeze Redis for twice the TTL: by its own clock the lock expires.
     * Scenario, not a wait: nothing can be polled in a frozen Redis. */
    assert_int_equal(h_redis_pause(r), 0);
    faults++;
    sleep_ms(600);
    assert_int_equal(h_redis_resume(r), 0);
    rep = h_redis_cmd(r, "PTTL %s", lock);
    assert_non_null(rep);
    if (rep->integer != -2)
        fail_msg("after 600 ms frozen, the 300 ms lock still has PTTL %lld", rep->integer);
    freeReplyObject(rep);
    /* Another holder takes it. */
    rep = h_redis_cmd(r, "SET %s %s PX 5000 NX", lock, tok_b);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);

    rds_opts ro;
    memset(&ro, 0, sizeof ro);
    snprintf(ro.host, sizeof ro.host, "127.0.0.1");
    ro.port = r->port;
    ro.connect_timeout_ms = 1000;
    ro.command_timeout_ms = 2000;
    ro.reconnect_max_ms = 100;
    rds_client *c = rds_client_new(&ro);
    assert_non_null(c);
    sale_opts so = { .prefix = H_PREFIX, .partitions = H_PARTITIONS,
                     .inventory_channel = "inventory_events",
                     .sales_channel = "sales_events", .lock_ttl_ms = 300, .lock_max_wait_ms = 0,
                     .idempotency_ttl_s = 60, .max_batch = 1, .max_qty = 100 };
    sale_req q;
    memset(&q, 0, sizeof q);
    snprintf(q.sku, sizeof q.sku, "%s", sku);
    q.qty = 2;
    snprintf(q.order_id, sizeof q.order_id, "fence-order-a");
    q.client_order_id = true;
    sale_res res[1];
    char err[256] = "";

    /* The stalled holder A commits with its stale token: refused. */
    int rc = sale_commit(c, &so, sku, tok_a, &q, res, 1, err, sizeof err);
    if (rc != 1)
        fail_msg("sale_commit with the expired token: expected 1 (lock not held), got %d %s", rc, err);
    assert_int_equal(H_REDIS_STOCK(r, sku), 10);
    rep = h_redis_cmd(r, "EXISTS " H_PREFIX "{p0}:order:fence-1:fence-order-a");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    rep = h_redis_cmd(r, "GET %s", lock);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, tok_b);           /* B's lock untouched */
    freeReplyObject(rep);

    /* B, the holder, commits (the fence is not simply shut). */
    snprintf(q.order_id, sizeof q.order_id, "fence-order-b");
    rc = sale_commit(c, &so, sku, tok_b, &q, res, 1, err, sizeof err);
    if (rc != 0 || res[0].status != SALE_OK || res[0].stock_remaining != 8)
        fail_msg("sale_commit by the holder: rc %d status %d remaining %lld %s", rc,
                 (int)res[0].status, res[0].stock_remaining, err);
    assert_int_equal(H_REDIS_STOCK(r, sku), 8);
    rep = h_redis_cmd(r, "EXISTS %s", lock);
    assert_int_equal(rep->integer, 0);              /* released by the script */
    freeReplyObject(rep);

    /* A once more, nobody holding the lock: still refused. */
    snprintf(q.order_id, sizeof q.order_id, "fence-order-a");
    rc = sale_commit(c, &so, sku, tok_a, &q, res, 1, err, sizeof err);
    assert_int_equal(rc, 1);
    assert_int_equal(H_REDIS_STOCK(r, sku), 8);
    rds_client_free(c);
    h_pass();
}

static void test_redis_pause_under_load(void **state)
{
    (void)state;
    const char *sku = "fault-pause";
    const long long initial = 400;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    char rset[PATH_MAX + 32];
    rules_dir(rset, sizeof rset);
    const char *sets[] = { rset, CHANNELS, "panic.dry_run=true", "lock.ttl_ms=300",
                           "lock.max_wait_ms=500", "redis.command_timeout_ms=500",
                           "redis.reconnect_max_ms=300" };
    h_daemon *d1 = h_daemon_startv(r, true, sets, 7);
    h_daemon *d2 = h_daemon_startv(r, true, sets, 7);
    assert_non_null(d1);
    assert_non_null(d2);
    H_SET_STOCK(d1, sku, initial);

    h_load l1 = { .d = d1, .path = "/sale", .sku = sku, .qty = 1, .order_prefix = "pa",
                  .clients = 3, .requests = 30000, .timeout_ms = 15000 };
    h_load l2 = { .d = d2, .path = "/sale", .sku = sku, .qty = 1, .order_prefix = "pb",
                  .clients = 3, .requests = 30000, .timeout_ms = 15000 };
    assert_int_equal(h_load_start(&l1), 0);
    assert_int_equal(h_load_start(&l2), 0);
    double dl = h_deadline(10000);
    while (h_load_completed(&l1) + h_load_completed(&l2) < 100 && h_before(dl))
        h_nap();
    assert_true(h_load_completed(&l1) + h_load_completed(&l2) >= 100);

    assert_int_equal(h_redis_pause(r), 0);      /* 1.2 s: over lock.ttl_ms and the timeout */
    faults++;
    int at_pause = h_load_completed(&l1) + h_load_completed(&l2);
    sleep_ms(1200);             /* scenario: the freeze itself */
    assert_int_equal(h_redis_resume(r), 0);
    printf("# redis frozen 1.2 s after %d answers (lock.ttl_ms=300)\n", at_pause);
    /* The loads go on across the recovery until the whole stock is sold and
     * each daemon has answered 100 more (409s: the lock is free again). */
    int c1 = h_load_completed(&l1), c2 = h_load_completed(&l2);
    double t_resume = h_now();
    dl = h_deadline(15000);
    long long stock_left = -1;
    bool over = false;
    while (!over && h_before(dl)) {
        stock_left = H_REDIS_STOCK(r, sku);
        over = stock_left == 0 && h_load_completed(&l1) >= c1 + 100 &&
               h_load_completed(&l2) >= c2 + 100;
        if (!over)
            h_nap();
    }
    printf("# stock sold out and 100 more answers each %.2f s after the resume\n",
           h_now() - t_resume);
    if (!over)
        fail_msg("15 s after the freeze: stock %lld left, %d and %d answers since the resume "
                 "(expected 0 left and 100 each)", stock_left, h_load_completed(&l1) - c1,
                 h_load_completed(&l2) - c2);
    h_load_stop(&l1);
    h_load_stop(&l2);
    assert_int_equal(h_load_wait(&l1), 0);
    assert_int_equal(h_load_wait(&l2), 0);
    const long allowed[] = { 200, 409, 503, 0 };
    tally(&l1, "daemon 1 across the freeze", allowed);
    tally(&l2, "daemon 2 across the freeze", allowed);
    for (int k = 0; k < 2; k++) {
        const h_load *l = k ? &l2 : &l1;
        for (int i = 0; i < l->requests; i++) {
            long long left = 0;
            if (l->recs[i].status == 200 &&
                (!h_jll(l->recs[i].json, "stock_remaining", &left) || left < 0))
                fail_msg("a 200 with stock_remaining %lld: %s", left, l->recs[i].body);
        }
    }
    printf("# sale batches fenced off (lock expired before the commit): %d and %d; commits "
           "whose outcome was unknown: %d and %d\n",
           log_count(d1, "expired before the commit"), log_count(d2, "expired before the commit"),
           log_count(d1, "may or may not"), log_count(d2, "may or may not"));
    lost_replies = 0;
    long long sold = sold_after_replay(d1, sku, "pa", &l1) + sold_after_replay(d2, sku, "pb", &l2);
    long long final = H_REDIS_STOCK(r, sku);
    printf("# sold %lld (replays included; %d sales answered 503 had gone through), "
           "stock %lld -> %lld\n", sold, lost_replies, initial, final);
    if (final < 0 || sold != initial - final)
        fail_msg("after the freeze: sold %lld but stock went %lld -> %lld", sold, initial, final);
    h_load_free(&l1);
    h_load_free(&l2);
    assert_int_equal(h_daemon_stop(d1), 0);
    assert_int_equal(h_daemon_stop(d2), 0);
    h_pass();
}

/* --- 3. a hanging, hanging-up webhook ------------------------------------------------ */

/* A sale that must answer at once, and an evaluation that must happen at once. */
static void expect_not_delayed(h_daemon *d, h_redis *r, const char *sku, long long left,
                               const char *when)
{
    h_resp hr;
    long st = h_sale(d, "/sale", sku, 1, NULL, &hr);
    long long rem = -1;
    if (st != 200 || !h_jll(hr.json, "stock_remaining", &rem) || rem != left)
        fail_msg("sale %s: expected 200 with stock_remaining %lld, got %ld %s", when, left, st,
                 hr.body);
    if (hr.secs > 1.0)
        fail_msg("sale %s took %.2f s (the webhook must not delay sales)", when, hr.secs);
    printf("# sale %s answered in %.3f s\n", when, hr.secs);
    h_resp_free(&hr);
    long long before = h_rule_stat(d, "fault_probe", "evaluations");
    double t0 = h_now();
    assert_true(h_publish(r, "probe_events", "{\"n\":1}") >= 1);
    double dl = h_deadline(1000);
    while (h_rule_stat(d, "fault_probe", "evaluations") <= before && h_before(dl))
        h_nap();
    if (h_rule_stat(d, "fault_probe", "evaluations") <= before)
        fail_msg("an event %s was not evaluated within 1 s", when);
    printf("# event %s evaluated in %.3f s\n", when, h_now() - t0);
}

static void test_webhook_hang_and_close(void **state)
{
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    char uset[160], rset[PATH_MAX + 32];
    hook = h_hook_start(uset, sizeof uset);
    assert_non_null(hook);
    rules_dir(rset, sizeof rset);
    h_daemon *d = h_daemon_start(r, rset, uset, CHANNELS, "panic.timeout_ms=1500",
                                 "panic.max_attempts=4", "panic.backoff_initial_ms=50",
                                 "panic.backoff_max_ms=200", "alerts.throttle_s=0", NULL);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(r, "test_events", 1);
    H_SET_STOCK(d, "fault-hook", 100);

    /* a: hangs 3 s (past the 1.5 s timeout), closes, closes after 100 ms, 200. */
    mock_set_steps(hook, (const mock_step[]){ { 200, 3000 }, { MOCK_CLOSE, 0 }, { MOCK_CLOSE, 100 } },
                   3, (mock_step){ 200, 0 });
    assert_true(h_publish(r, "test_events", "{\"kill\":\"hook:a\"}") >= 1);
    assert_int_equal(mock_wait_requests(hook, 1, 5000), 0);
    faults++;
    cJSON *rec = h_kill_record(r, "hook:a");
    assert_non_null(rec);
    assert_string_equal(h_jstr(rec, "state"), "stopping");
    cJSON_Delete(rec);
    expect_not_delayed(d, r, "fault-hook", 99, "while the webhook hangs");
    rec = H_WAIT_KILL(r, "hook:a", "stopped", 10000);
    long long attempts = -1;
    assert_true(h_jll(rec, "attempts", &attempts));
    cJSON_Delete(rec);
    if (attempts != 4 || mock_requests(hook) != 4)
        fail_msg("hook:a: expected stopped after 4 attempts (hang, close, close, 200), got "
                 "attempts %lld, %zu requests", attempts, mock_requests(hook));
    faults += 2;
    /* The hanging attempt was given up at the timeout, not waited out. */
    const mock_req *q0 = mock_request(hook, 0), *q1 = mock_request(hook, 1);
    double gap = (double)(q1->t_ns - q0->t_ns) / 1e9;
    printf("# hook:a: attempt 2 came %.2f s after the hanging attempt 1\n", gap);
    if (gap < 1.4 || gap > 2.9)
        fail_msg("attempt 2 came %.2f s after attempt 1: expected about panic.timeout_ms "
                 "(1.5 s) plus a backoff", gap);

    /* b: hangs, then closes every time: stop_failed after max_attempts. */
    mock_reset(hook);
    mock_set_steps(hook, (const mock_step[]){ { 200, 3000 } }, 1, (mock_step){ MOCK_CLOSE, 0 });
    assert_true(h_publish(r, "test_events", "{\"kill\":\"hook:b\"}") >= 1);
    assert_int_equal(mock_wait_requests(hook, 1, 5000), 0);
    faults++;
    expect_not_delayed(d, r, "fault-hook", 98, "while the webhook hangs again");
    rec = H_WAIT_KILL(r, "hook:b", "stop_failed", 10000);
    assert_true(h_jll(rec, "attempts", &attempts));
    cJSON_Delete(rec);
    if (attempts != 4 || mock_requests(hook) != 4)
        fail_msg("hook:b: expected stop_failed after 4 attempts, got attempts %lld, %zu requests",
                 attempts, mock_requests(hook));
    faults += 3;
    char *m = H_METRICS(d);
    double failed = h_metric(m, "nerve_panic_attempts_total", "result=\"failed\"");
    double ok = h_metric(m, "nerve_panic_attempts_total", "result=\"ok\"");
    free(m);
    printf("# nerve_panic_attempts_total: ok %.0f, failed %.0f\n", ok, failed);
    assert_true(failed == 7 && ok == 1);
    expect_not_delayed(d, r, "fault-hook", 97, "after the failed stop");
    assert_int_equal(h_daemon_stop(d), 0);
    mock_stop(hook);
    hook = NULL;
    h_pass();
}

/* --- 4. the bus flooded ------------------------------------------------------------- */

static void test_bus_flood(void **state)
{
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    char rset[PATH_MAX + 32];
    rules_dir(rset, sizeof rset);
    h_daemon *d = h_daemon_start(r, rset, CHANNELS, "panic.dry_run=true", "bus.queue_size=1000",
                                 NULL);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(r, "flood_events", 1);
    redisContext *pc = h_redis_connect(r);
    assert_non_null(pc);
    char payload[128];

    /* Warm up, and measure the evaluation rate. */
    double t0 = h_now();
    for (int i = 0; i < 500; i++) {
        int n = snprintf(payload, sizeof payload, "{\"type\":\"warm\",\"n\":%d}", i);
        redisAppendCommand(pc, "PUBLISH flood_events %b", payload, (size_t)n);
    }
    for (int i = 0; i < 500; i++) {
        void *rep = NULL;
        assert_int_equal(redisGetReply(pc, &rep), REDIS_OK);
        freeReplyObject(rep);
    }
    double dl = h_deadline(20000);
    while (h_rule_stat(d, "fault_burner", "evaluations") < 500 && h_before(dl))
        h_nap();
    assert_int_equal(h_rule_stat(d, "fault_burner", "evaluations"), 500);
    double eval_rate = 500 / (h_now() - t0);
    long rss0 = rss_kib(d->pid);
    char *m0 = H_METRICS(d);
    double drop0 = h_metric(m0, "nerve_event_queue_dropped_total", NULL);
    double ev0 = h_metric(m0, "nerve_events_total", "flood_events");
    free(m0);
    assert_int_equal(readyz(d, NULL, 0), 200);

    /* The flood: 200,000 events, pipelined 2,000 at a time. */
    const int total = 200000, batch = 2000;
    long long delivered = 0;
    long rss_max = rss0;
    bool saw_overflow = false;
    char why[1024] = "", overflow_why[1024] = "";
    t0 = h_now();
    faults++;
    for (int sent = 0; sent < total; sent += batch) {
        for (int i = 0; i < batch; i++) {
            int n = snprintf(payload, sizeof payload,
                             "{\"type\":\"spend\",\"campaign\":\"c-%d\",\"amount\":%d.5}",
                             (sent + i) % 97, sent + i);
            redisAppendCommand(pc, "PUBLISH flood_events %b", payload, (size_t)n);
        }
        for (int i = 0; i < batch; i++) {
            void *rep = NULL;
            if (redisGetReply(pc, &rep) != REDIS_OK)
                fail_msg("PUBLISH pipeline: %s", pc->errstr);
            delivered += ((redisReply *)rep)->integer;
            freeReplyObject(rep);
        }
        if ((sent / batch) % 10 == 0) {
            long rss = rss_kib(d->pid);
            if (rss > rss_max)
                rss_max = rss;
            if (readyz(d, why, sizeof why) == 503 && strstr(why, "event queue")) {
                saw_overflow = true;
                snprintf(overflow_why, sizeof overflow_why, "%s", why);
            }
        }
    }
    double flood_secs = h_now() - t0;
    double t_end = h_now();
    long rss_end = rss_kib(d->pid);
    if (rss_end > rss_max)
        rss_max = rss_end;
    if (readyz(d, why, sizeof why) == 503 && strstr(why, "event queue")) {
        saw_overflow = true;
        snprintf(overflow_why, sizeof overflow_why, "%s", why);
    }
    printf("# flood: %d events published in %.2f s (%.0f/s), %lld delivered to the daemon; "
           "it evaluates about %.0f/s\n", total, flood_secs, total / flood_secs, delivered,
           eval_rate);
    printf("# RSS: %ld KiB before, %ld KiB at most, %ld KiB after\n", rss0, rss_max, rss_end);
    if (saw_overflow)
        printf("# /readyz during the flood: 503%s\n", overflow_why);

    /* Recovery: /readyz 200 again, within ~15 s of the flood's end. */
    dl = h_deadline(20000);
    while (readyz(d, why, sizeof why) != 200 && h_before(dl))
        h_nap();
    double back = h_now() - t_end;
    long ready_status = readyz(d, why, sizeof why);
    printf("# /readyz back to %ld %.1f s after the flood\n", ready_status, back);

    char *m1 = H_METRICS(d);
    double dropped = h_metric(m1, "nerve_event_queue_dropped_total", NULL) - drop0;
    double evaluated = h_metric(m1, "nerve_events_total", "flood_events") - ev0;
    free(m1);
    printf("# nerve_event_queue_dropped_total +%.0f, nerve_events_total{flood_events} +%.0f "
           "(sum %.0f of %lld delivered)\n", dropped, evaluated, dropped + evaluated, delivered);

    /* Events are evaluated again. */
    assert_true(h_publish(r, "flood_events", "{\"kill\":\"flood:after\"}") >= 1);
    cJSON_Delete(H_WAIT_KILL(r, "flood:after", NULL, 10000));

    assert_int_equal(h_daemon_alive(d), 1);
    redisFree(pc);
    if (rss_max - rss0 >= 64 * 1024)
        fail_msg("RSS grew by %ld KiB during the flood (limit 64 MiB)", rss_max - rss0);
    if (dropped <= 0)
        fail_msg("nerve_event_queue_dropped_total did not move during the flood");
    if (!saw_overflow)
        fail_msg("/readyz never reported the event queue overflow during the flood (last: %s)", why);
    if (ready_status != 200 || back > 15.5)
        fail_msg("/readyz: %ld %.1f s after the flood (expected 200 within ~15 s): %s",
                 ready_status, back, why);
    if (dropped + evaluated != (double)delivered)
        fail_msg("%lld events delivered, but %.0f evaluated + %.0f dropped = %.0f: some were "
                 "lost without being counted", delivered, evaluated, dropped, dropped + evaluated);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 5. slowloris ------------------------------------------------------------------- */

#define SLOW_MAX 64

typedef struct slow_run {
    int port, n, period_ms, run_ms;
    int fd[SLOW_MAX];
    double opened[SLOW_MAX], closed_at[SLOW_MAX];   /* 0: still open at the end */
    int bytes[SLOW_MAX];
    atomic_int engaged;         /* connections that sent their first byte (or were cut) */
    atomic_bool stop;
    pthread_t th;
    bool running;
} slow_run;

static slow_run slow;           /* joined by the teardown if a test failed */

static void *slow_main(void *arg)
{
    slow_run *s = arg;
    static const char head[] = "POST /sale HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
                               "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                               "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    double end = h_now() + s->run_ms / 1000.0;
    int open = s->n;
    while (!atomic_load(&s->stop) && h_now() < end && open > 0) {
        for (int i = 0; i < s->n; i++) {
            if (s->fd[i] < 0)
                continue;
            char ch = head[(size_t)s->bytes[i] % (sizeof head - 1)];
            char tmp[512];
            ssize_t rd = recv(s->fd[i], tmp, sizeof tmp, MSG_DONTWAIT);
            ssize_t w = rd == 0 ? -1 : send(s->fd[i], &ch, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (rd == 0 || (rd < 0 && errno != EAGAIN && errno != EWOULDBLOCK) ||
                (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) || rd > 0) {
                if (s->bytes[i] == 0)
                    atomic_fetch_add(&s->engaged, 1);
                s->closed_at[i] = h_now();
                close(s->fd[i]);
                s->fd[i] = -1;
                open--;
                continue;
            }
            if (w == 1 && s->bytes[i]++ == 0)
                atomic_fetch_add(&s->engaged, 1);
        }
        /* Scenario: one byte per connection every period_ms. */
        for (int slept = 0; slept < s->period_ms && !atomic_load(&s->stop); slept += 20)
            sleep_ms(20);
    }
    for (int i = 0; i < s->n; i++)
        if (s->fd[i] >= 0) {
            close(s->fd[i]);
            s->fd[i] = -1;
        }
    return NULL;
}

/* Open N connections to PORT and feed them a byte every PERIOD_MS for RUN_MS. */
static void slow_start(int port, int n, int period_ms, int run_ms)
{
    memset(&slow, 0, sizeof slow);
    slow.port = port;
    slow.n = n;
    slow.period_ms = period_ms;
    slow.run_ms = run_ms;
    atomic_init(&slow.stop, false);
    atomic_init(&slow.engaged, 0);
    for (int i = 0; i < n; i++) {
        slow.fd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(slow.fd[i] >= 0);
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(slow.fd[i], (struct sockaddr *)&sa, sizeof sa) != 0)
            fail_msg("slow client %d: connect: %s", i, strerror(errno));
        slow.opened[i] = h_now();
    }
    assert_int_equal(pthread_create(&slow.th, NULL, slow_main, &slow), 0);
    slow.running = true;
}

/* Wait until every slow connection has sent its first byte: they are then
 * all in the server's hands (accepted first, ahead of any sale). */
static void slow_wait_engaged(void)
{
    double dl = h_deadline(5000);
    while (atomic_load(&slow.engaged) < slow.n && h_before(dl))
        h_nap();
    if (atomic_load(&slow.engaged) < slow.n)
        fail_msg("only %d of %d slow clients sent a byte within 5 s", atomic_load(&slow.engaged),
                 slow.n);
}

static void slow_join(void)
{
    if (!slow.running)
        return;
    atomic_store(&slow.stop, true);
    pthread_join(slow.th, NULL);
    slow.running = false;
}

/* Sales every 200 ms for MS; the slowest into *MAX; fails on a non-200. */
static int sales_during(h_daemon *d, const char *sku, int ms, double *max, long long *left)
{
    int n = 0;
    double dl = h_deadline(ms);
    *max = 0;
    while (h_before(dl)) {
        h_resp hr;
        long st = h_sale(d, "/sale", sku, 1, NULL, &hr);
        if (st != 200)
            fail_msg("a sale during the slowloris: %ld %s %s (after %.2f s)", st, hr.body, hr.err,
                     hr.secs);
        h_jll(hr.json, "stock_remaining", left);
        if (hr.secs > *max)
            *max = hr.secs;
        h_resp_free(&hr);
        n++;
        sleep_ms(200);          /* scenario: a buyer every 200 ms */
    }
    return n;
}

static void slow_report(const char *what, int timeout_ms, int *cut, double *last_cut)
{
    *cut = 0;
    *last_cut = 0;
    double first = 1e9;
    for (int i = 0; i < slow.n; i++) {
        if (slow.closed_at[i] > 0) {
            double t = slow.closed_at[i] - slow.opened[i];
            (*cut)++;
            if (t > *last_cut)
                *last_cut = t;
            if (t < first)
                first = t;
        }
    }
    printf("# %s: %d of %d slow connections cut by the server (request_timeout_ms=%d), "
           "after %.1f..%.1f s\n", what, *cut, slow.n, timeout_ms, *cut ? first : 0, *last_cut);
}

static void test_slowloris(void **state)
{
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    h_daemon *d = h_daemon_start(r, "server.threads=32", "server.request_timeout_ms=2000",
                                 "panic.dry_run=true", NULL);
    assert_non_null(d);
    H_SET_STOCK(d, "fault-slow", 1000);
    double max = 0;
    long long left = -1;
    int cut;
    double last_cut;

    /* 20 slow clients, 32 threads: sales go on. */
    slow_start(d->port, 20, 500, 6000);
    faults++;
    slow_wait_engaged();
    int n = sales_during(d, "fault-slow", 4000, &max, &left);
    printf("# 20 slowloris clients, 32 threads: %d sales, slowest %.3f s\n", n, max);
    if (max > 3.0)
        fail_msg("with 20 slow clients and 32 threads a sale took %.2f s", max);
    slow_join();
    slow_report("20 slow clients", 2000, &cut, &last_cut);
    if (cut != 20 || last_cut > 4.5)
        fail_msg("server.request_timeout_ms=2000 should cut every slow client within ~2 s: "
                 "%d of 20 cut, the last after %.1f s", cut, last_cut);

    /* 40 slow clients, more than the 32 threads: sales wait for the cut. */
    slow_start(d->port, 40, 500, 8000);
    faults++;
    slow_wait_engaged();
    n = sales_during(d, "fault-slow", 5000, &max, &left);
    printf("# 40 slowloris clients, 32 threads: %d sales, slowest %.3f s\n", n, max);
    slow_join();
    slow_report("40 slow clients", 2000, &cut, &last_cut);
    if (max > 6.0)
        fail_msg("with 40 slow clients and 32 threads a sale took %.2f s (request_timeout_ms "
                 "2 s should free the threads)", max);
    if (cut != 40)
        fail_msg("%d of 40 slow clients cut by the server", cut);
    assert_int_equal(h_daemon_alive(d), 1);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 6. an unwritable pidfile ----------------------------------------------------------- */

typedef struct exit_res {
    int status;                 /* exit status, -1: signal or still running (killed) */
    double secs;
    char err[4096];             /* stderr (and stdout) */
} exit_res;

enum { FS_PLAIN, FS_FSIZE0, FS_TMPFS_FULL };

/* Run `nerve serve` against R with PIDFILE, stderr into a pipe; wait up to
 * 10 s for it to exit. FS_FSIZE0: RLIMIT_FSIZE 0 (writes fail with EFBIG);
 * FS_TMPFS_FULL: in a private mount namespace, a full 16 KiB tmpfs on
 * TMPFS_DIR (the child exits 99 when it cannot set that up). */
static void run_serve(const h_redis *r, const char *pidfile, int fs, const char *tmpfs_dir,
                      exit_res *o)
{
    memset(o, 0, sizeof *o);
    o->status = -1;
    const char *bin = h_nerve_bin();
    if (access(bin, X_OK) != 0)
        fail_msg("NERVE_BIN %s: %s", bin, strerror(errno));
    char url[96], pf[PATH_MAX + 32], listen[64];
    snprintf(url, sizeof url, "redis.url=redis://127.0.0.1:%d/0", r->port);
    snprintf(pf, sizeof pf, "server.pidfile=%s", pidfile);
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", h_free_port());
    const char *argv[] = { bin, "serve", "-c", "config/nerve.yaml", "--set", listen,
                           "--set", url, "--set", pf, NULL };
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    double t0 = h_now();
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        dup2(p[1], 2);
        const char *root = getenv("NERVE_ROOT");
        if (root && *root && chdir(root) != 0)
            _exit(127);
        if (fs == FS_FSIZE0) {
            signal(SIGXFSZ, SIG_IGN);
            struct rlimit rl = { 0, 0 };
            setrlimit(RLIMIT_FSIZE, &rl);
        } else if (fs == FS_TMPFS_FULL) {
            if (unshare(CLONE_NEWNS) != 0 ||
                mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
                mount("tmpfs", tmpfs_dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=16k") != 0) {
                dprintf(2, "tmpfs setup: %s\n", strerror(errno));
                _exit(99);
            }
            char filler[PATH_MAX + 16], blk[4096];
            memset(blk, 'f', sizeof blk);
            snprintf(filler, sizeof filler, "%s/filler", tmpfs_dir);
            int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            while (fd >= 0 && write(fd, blk, sizeof blk) > 0)
                ;
            if (fd < 0 || errno != ENOSPC) {
                dprintf(2, "tmpfs fill: %s\n", strerror(errno));
                _exit(99);
            }
            close(fd);
        }
        char *env[] = { "PATH=/usr/bin:/bin", NULL };
        execve(argv[0], (char *const *)argv, env);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    int status = 0;
    bool done = false;
    double dl = h_deadline(10000);
    while (h_before(dl)) {
        struct pollfd pf1 = { p[0], POLLIN, 0 };
        if (poll(&pf1, 1, 50) > 0) {
            ssize_t rd = read(p[0], o->err + n, sizeof o->err - 1 - n);
            if (rd > 0)
                n += (size_t)rd;
        }
        if (waitpid(pid, &status, WNOHANG) == pid) {
            done = true;
            break;
        }
    }
    o->secs = h_now() - t0;
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    ssize_t rd;
    while (n < sizeof o->err - 1 && (rd = read(p[0], o->err + n, sizeof o->err - 1 - n)) > 0)
        n += (size_t)rd;
    o->err[n] = '\0';
    close(p[0]);
    if (done && WIFEXITED(status))
        o->status = WEXITSTATUS(status);
}

static void expect_pidfile_refused(const h_redis *r, const char *what, const char *pidfile,
                                   int fs, const char *tmpfs_dir, int want_errno)
{
    exit_res o;
    run_serve(r, pidfile, fs, tmpfs_dir, &o);
    if (fs == FS_TMPFS_FULL && o.status == 99) {
        printf("# %s: not tested here (cannot mount a tmpfs: %s)", what, o.err);
        return;
    }
    faults++;
    const char *reason = want_errno ? strerror(want_errno) : NULL;
    printf("# %s: exit %d after %.2f s: %.*s\n", what, o.status, o.secs,
           (int)strcspn(o.err, "\n"), o.err);
    if (o.status <= 0 || o.secs > 5.0)
        fail_msg("%s: expected a non-zero exit within 5 s, got status %d after %.2f s; output:\n%s",
                 what, o.status, o.secs, o.err);
    if (strstr(o.err, pidfile) == NULL)
        fail_msg("%s: the message does not name the path %s:\n%s", what, pidfile, o.err);
    if (reason && strstr(o.err, reason) == NULL)
        fail_msg("%s: the message does not say \"%s\":\n%s", what, reason, o.err);
    if (!reason) {
        static const int any[] = { ENOENT, EACCES, EPERM, EROFS, ENOTDIR, EINVAL, EIO };
        bool found = false;
        for (size_t i = 0; i < sizeof any / sizeof any[0]; i++)
            found |= strstr(o.err, strerror(any[i])) != NULL;
        if (!found)
            fail_msg("%s: the message gives no reason:\n%s", what, o.err);
    }
}

static void test_unwritable_pidfile(void **state)
{
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    char missing[PATH_MAX], efbig[PATH_MAX], fulldir[PATH_MAX], full[PATH_MAX + 16];
    snprintf(missing, sizeof missing, "%s/no-such-dir/nerve.pid", h_tmpdir());
    snprintf(efbig, sizeof efbig, "%s/nerve-efbig.pid", h_tmpdir());
    snprintf(fulldir, sizeof fulldir, "%s/fullfs", h_tmpdir());
    snprintf(full, sizeof full, "%s/nerve.pid", fulldir);
    assert_int_equal(mkdir(fulldir, 0700), 0);

    expect_pidfile_refused(r, "pidfile in /proc", "/proc/nerve.pid", FS_PLAIN, NULL, 0);
    expect_pidfile_refused(r, "pidfile in a missing directory", missing, FS_PLAIN, NULL, ENOENT);
    expect_pidfile_refused(r, "pidfile write failing (RLIMIT_FSIZE 0)", efbig, FS_FSIZE0, NULL, EFBIG);
    expect_pidfile_refused(r, "pidfile on a full tmpfs", full, FS_TMPFS_FULL, fulldir, ENOSPC);
    /* Nothing left behind. */
    assert_int_equal(access(efbig, F_OK), -1);
    h_pass();
}

/* --- main ----------------------------------------------------------------------------------- */

static int teardown(void **state)
{
    slow_join();
    wv.n = 0;                   /* loads left running are the harness's to join */
    if (hook) {
        mock_stop(hook);
        hook = NULL;
    }
    return h_test_teardown(state);
}

static int group_teardown(void **state)
{
    (void)state;
    printf("# faults injected: %d\n", faults);
    return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_redis_sigkill),
        T(test_fencing_redis_pause),
        T(test_redis_pause_under_load),
        T(test_webhook_hang_and_close),
        T(test_bus_flood),
        T(test_slowloris),
        T(test_unwritable_pidfile),
    };
    return cmocka_run_group_tests(tests, NULL, group_teardown);
}
