/* test_reload.c -- hot reload (SPEC §10) and metrics (SPEC §11) end to end:
 * reloads under sale load never disturb a sale, broken rule sets never
 * replace a working one and say why as FILE:LINE, an edited rule takes effect
 * on the next event, ctx.state survives the reload of an unchanged rule, and
 * /metrics is valid Prometheus text whose counters move exactly as the
 * test's own traffic says.
 *
 * Rules are this file's own, in the temp dir. A rule's effect is observed
 * through kill records in Redis (panic.dry_run: no webhook), whose reason the
 * rule sets, so no subscriber is needed.
 */
#include "harness.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHANNELS "bus.channels=[inventory_events,sales_events,financial_events,test_events]"
#define AUTH "Authorization: Bearer " H_ADMIN_TOKEN

static h_redis *redis;

/* --- small helpers -------------------------------------------------------- */

static void remove_file(const char *dir, const char *name)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (unlink(path) != 0 && errno != ENOENT)
        fail_msg("unlink %s: %s", path, strerror(errno));
}

static void publish(const char *channel, const char *json)
{
    if (h_publish(redis, channel, json) < 1)
        fail_msg("PUBLISH %s %s reached no subscriber", channel, json);
}

/* Poll until kill record SCOPE exists; its reason into OUT. */
static void wait_kill_reason(const char *scope, char *out, size_t outlen, int ms)
{
    double dl = h_deadline(ms);
    while (h_before(dl)) {
        cJSON *o = h_kill_record(redis, scope);
        if (o) {
            const char *r = h_jstr(o, "reason");
            snprintf(out, outlen, "%s", r ? r : "");
            cJSON_Delete(o);
            return;
        }
        h_nap();
    }
    fail_msg("no kill record for %s within %d ms: the rule did not act", scope, ms);
}

/* GET /rules, parsed; fails the test unless 200 with a JSON object. */
static cJSON *get_rules(const h_daemon *d)
{
    h_resp r;
    h_http(d, "GET", "/rules", NULL, &r, NULL);
    if (r.status != 200 || !cJSON_IsObject(r.json))
        fail_msg("GET /rules: %ld %s %s", r.status, r.body, r.err);
    cJSON *o = r.json;
    r.json = NULL;
    h_resp_free(&r);
    return o;
}

static long long reloads_total(const h_daemon *d)
{
    char *m = H_METRICS(d);
    double ok = h_metric(m, "nerve_reloads_total", "result=\"ok\"");
    double bad = h_metric(m, "nerve_reloads_total", "result=\"failed\"");
    free(m);
    if (ok < 0 || bad < 0)
        fail_msg("/metrics has no nerve_reloads_total{result=\"ok\"|\"failed\"}");
    return (long long)(ok + bad);
}

/* --- a continuous sale load ------------------------------------------------- */

#define MAX_CLIENTS 64

typedef struct load {
    const h_daemon *d;
    const char *sku;
    int clients;
    pthread_t th[MAX_CLIENTS];
    atomic_bool stop;
    atomic_llong ok, out_of_stock, bad;
    pthread_mutex_t mu;
    char first_bad[1024];       /* the first unexpected answer, for the report */
} load;

static size_t sink(char *p, size_t size, size_t n, void *ud)
{
    char *buf = ud;
    size_t have = strlen(buf), add = size * n;
    size_t room = 1023 - have;
    memcpy(buf + have, p, add < room ? add : room);
    buf[have + (add < room ? add : room)] = '\0';
    return size * n;
}

static void *load_main(void *arg)
{
    load *l = arg;
    CURL *h = h_sale_curl(l->d, l->sku);
    if (h == NULL)
        return NULL;
    char resp[1024], err[CURL_ERROR_SIZE];
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    while (!atomic_load(&l->stop)) {
        resp[0] = '\0';
        err[0] = '\0';
        long status = 0;
        CURLcode cc = curl_easy_perform(h);
        if (cc == CURLE_OK)
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200 && strstr(resp, "\"status\":\"ok\"")) {
            atomic_fetch_add(&l->ok, 1);
        } else if (status == 409 && strstr(resp, "\"error\":\"out_of_stock\"")) {
            atomic_fetch_add(&l->out_of_stock, 1);
        } else {
            if (atomic_fetch_add(&l->bad, 1) == 0) {
                pthread_mutex_lock(&l->mu);
                snprintf(l->first_bad, sizeof l->first_bad, "status %ld curl \"%s\" body %s",
                         status, cc == CURLE_OK ? "ok" : (err[0] ? err : curl_easy_strerror(cc)),
                         resp);
                pthread_mutex_unlock(&l->mu);
            }
        }
    }
    h_sale_curl_free(h);
    return NULL;
}

static void load_start(load *l, const h_daemon *d, const char *sku, int clients)
{
    memset(l, 0, sizeof *l);
    l->d = d;
    l->sku = sku;
    l->clients = clients;
    pthread_mutex_init(&l->mu, NULL);
    for (int i = 0; i < clients; i++)
        assert_int_equal(pthread_create(&l->th[i], NULL, load_main, l), 0);
}

static void load_stop(load *l)
{
    if (l->d == NULL)
        return;
    atomic_store(&l->stop, true);
    for (int i = 0; i < l->clients; i++)
        pthread_join(l->th[i], NULL);
    pthread_mutex_destroy(&l->mu);
    l->d = NULL;
}

/* The running load, if any: a failed test leaves it to the teardown. */
static load the_load;

static int teardown(void **state)
{
    load_stop(&the_load);
    return h_test_teardown(state);
}

/* --- rules ------------------------------------------------------------------ */

/* The marker rule, version V: {"probe": P} on test_events engages
 * "probe:P" with reason "marker vV"; its fixture checks the same. */
static void marker_text(char *out, size_t len, int v)
{
    snprintf(out, len,
             "-- marker rule, version %d\n"
             "return {\n"
             "  name = \"e2e_marker\",\n"
             "  on = { \"test_events\" },\n"
             "  evaluate = function(event, ctx)\n"
             "    if type(event.probe) == \"string\" then\n"
             "      return { action = \"kill\", scope = \"probe:\" .. event.probe,\n"
             "               reason = \"marker v%d\" }\n"
             "    end\n"
             "  end,\n"
             "  tests = {\n"
             "    { channel = \"test_events\", event = { probe = \"f\" },\n"
             "      expect = { { action = \"kill\", scope = \"probe:f\", reason = \"marker v%d\" } } },\n"
             "    { channel = \"test_events\", event = { other = 1 }, expect = {} },\n"
             "  },\n"
             "}\n", v, v, v);
}

static const char *const SYNTAX_ERROR_RULE =   /* error on line 5 */
    "return {\n"
    "  name = \"e2e_broken\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\" level = \"info\", reason = \"x\" }\n"
    "  end,\n"
    "}\n";

static const char *const FAILING_FIXTURE_RULE =
    "return {\n"
    "  name = \"e2e_fixture\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\", level = \"info\", reason = \"always\" }\n"
    "  end,\n"
    "  tests = {\n"
    "    { channel = \"test_events\", event = { a = 1 }, expect = {} },\n"
    "  },\n"
    "}\n";

/* true when some string of the JSON array ERRS contains FILE followed by
 * ":<digits>: " (LINE 0: any line). */
static bool has_file_line(const cJSON *errs, const char *file, int line)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, errs) {
        if (!cJSON_IsString(e))
            continue;
        for (const char *p = strstr(e->valuestring, file); p; p = strstr(p + 1, file)) {
            const char *q = p + strlen(file);
            if (*q != ':')
                continue;
            char *end;
            long n = strtol(q + 1, &end, 10);
            if (end > q + 1 && end[0] == ':' && end[1] == ' ' && (line == 0 || n == line))
                return true;
        }
    }
    return false;
}

/* Every string of ERRS reads "FILE:LINE: message". */
static bool all_file_line(const cJSON *errs)
{
    regex_t re;
    regcomp(&re, "^[^ :]+:[0-9]+: .+", REG_EXTENDED | REG_NOSUB);
    bool ok = cJSON_IsArray(errs) && cJSON_GetArraySize(errs) > 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, errs)
        ok = ok && cJSON_IsString(e) && regexec(&re, e->valuestring, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

/* --- 1. reloads under load -------------------------------------------------- */

typedef enum { BAD_SYNTAX, BAD_FIXTURE, BAD_TRUNCATED } bad_kind;

static void test_reload_under_load(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], text[2048];
    H_RULES_DIR("rl-load", NULL, NULL, dir, sizeof dir, rset, sizeof rset);
    marker_text(text, sizeof text, 0);
    H_WRITE_FILE(dir, "marker.lua", text);
    const char *sku = "rl-load-1";
    const long long stock = 1000000;
    h_daemon *d = h_daemon_start(redis, rset, CHANNELS, "panic.dry_run=true", NULL);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    H_SET_STOCK(d, sku, stock);

    load *l = &the_load;
    load_start(l, d, sku, 32);
    double dl = h_deadline(10000);
    while (atomic_load(&l->ok) + atomic_load(&l->bad) < 200 && h_before(dl))
        h_nap();
    if (atomic_load(&l->ok) < 1)
        fail_msg("the load did not get going: ok %lld bad %lld (%s)", (long long)l->ok,
                 (long long)l->bad, l->first_bad);

    long long gen = H_GENERATION(d);
    int good = 0, bad = 0;
    for (int i = 0; i < 20; i++) {
        bool is_good = i % 2 == 0;
        bool by_signal = (i / 2) % 2 == 1;
        bad_kind kind = (bad_kind)((i / 2) % 3);
        const char *file = NULL;
        int line = 0;
        if (is_good) {
            marker_text(text, sizeof text, i);
            H_WRITE_FILE(dir, "marker.lua", text);
            remove_file(dir, "broken.lua");
            remove_file(dir, "fixture.lua");
        } else if (kind == BAD_SYNTAX) {
            H_WRITE_FILE(dir, "broken.lua", SYNTAX_ERROR_RULE);
            file = "broken.lua";
            line = 5;
        } else if (kind == BAD_FIXTURE) {
            H_WRITE_FILE(dir, "fixture.lua", FAILING_FIXTURE_RULE);
            file = "fixture.lua";
        } else {
            /* Half-written by an editor: a new version cut in the middle. */
            marker_text(text, sizeof text, 1000 + i);
            text[strlen(text) / 2] = '\0';
            H_WRITE_FILE(dir, "marker.lua", text);
            file = "marker.lua";
        }

        if (by_signal) {
            long long before = reloads_total(d);
            assert_int_equal(kill(d->pid, SIGHUP), 0);
            dl = h_deadline(10000);
            while (reloads_total(d) == before && h_before(dl))
                h_nap();
            if (reloads_total(d) == before)
                fail_msg("reload %d: SIGHUP did not reload within 10 s", i);
        } else {
            h_resp r;
            h_http(d, "POST", "/admin/reload", "{}", &r, AUTH, NULL);
            if (is_good) {
                long long g = -1;
                if (r.status != 200 || !h_jll(r.json, "generation", &g) || g != gen + 1)
                    fail_msg("reload %d (good, POST): expected 200 {\"generation\":%lld}, got %ld %s",
                             i, gen + 1, r.status, r.body);
            } else {
                H_ASSERT_ERROR(&r, 422, "reload_failed");
                const cJSON *errs = cJSON_GetObjectItemCaseSensitive(r.json, "errors");
                if (!all_file_line(errs) || !has_file_line(errs, file, line))
                    fail_msg("reload %d (broken %s, POST): expected errors [\"...%s:%d: ...\"], got %s",
                             i, file, file, line, r.body);
            }
            h_resp_free(&r);
        }
        if (is_good) {
            gen++;
            good++;
        } else {
            bad++;
        }

        cJSON *rules = get_rules(d);
        long long g = -1;
        h_jll(rules, "generation", &g);
        const cJSON *last = cJSON_GetObjectItemCaseSensitive(rules, "last_reload");
        const char *res = h_jstr(last, "result");
        const cJSON *errs = cJSON_GetObjectItemCaseSensitive(last, "errors");
        char *txt = cJSON_PrintUnformatted(rules);
        if (g != gen)
            fail_msg("reload %d (%s, %s): generation %lld, expected %lld: %s", i,
                     is_good ? "good" : "broken", by_signal ? "SIGHUP" : "POST", g, gen, txt);
        if (res == NULL || strcmp(res, is_good ? "ok" : "failed") != 0)
            fail_msg("reload %d: GET /rules last_reload.result: expected %s: %s", i,
                     is_good ? "ok" : "failed", txt);
        if (!is_good && (!all_file_line(errs) || !has_file_line(errs, file, line)))
            fail_msg("reload %d: GET /rules last_reload.errors should name %s:%d: %s", i, file,
                     line, txt);
        free(txt);
        cJSON_Delete(rules);

        if (is_good) {
            /* The edited rule decides the very next event. */
            char ev[64], scope[64], want[32], reason[256];
            snprintf(ev, sizeof ev, "{\"probe\":\"p%d\"}", i);
            snprintf(scope, sizeof scope, "probe:p%d", i);
            snprintf(want, sizeof want, "marker v%d", i);
            publish("test_events", ev);
            wait_kill_reason(scope, reason, sizeof reason, 5000);
            if (strcmp(reason, want) != 0)
                fail_msg("reload %d: the event after the reload was decided by \"%s\", expected \"%s\"",
                         i, reason, want);
        }
    }
    assert_int_equal(good, 10);
    assert_int_equal(bad, 10);

    load_stop(l);
    long long ok = atomic_load(&l->ok), oos = atomic_load(&l->out_of_stock);
    printf("reload under load: %lld sold, %lld out of stock, %lld other answers\n", ok, oos,
           (long long)atomic_load(&l->bad));
    if (atomic_load(&l->bad) != 0)
        fail_msg("%lld sales answered other than 200/409 during reloads; first: %s",
                 (long long)atomic_load(&l->bad), l->first_bad);
    assert_true(ok > 0);
    assert_int_equal(H_REDIS_STOCK(redis, sku), stock - ok);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 2. ctx.state across reloads ---------------------------------------------- */

/* Counts events in ctx.state.n; {"id": I} engages "count:<TAG>:<I>" with
 * reason "count=N". COMMENT makes a different source with the same name. */
static void counter_text(char *out, size_t len, const char *tag, const char *comment)
{
    snprintf(out, len,
             "-- %s\n"
             "return {\n"
             "  name = \"e2e_counter_%s\",\n"
             "  on = { \"test_events\" },\n"
             "  evaluate = function(event, ctx)\n"
             "    ctx.state.n = (ctx.state.n or 0) + 1\n"
             "    return { action = \"kill\", scope = \"count:%s:\" .. event.id,\n"
             "             reason = string.format(\"count=%%d\", ctx.state.n) }\n"
             "  end,\n"
             "}\n", comment, tag, tag);
}

static void expect_counts(const char *id, int a, int b)
{
    char ev[64], scope[64], reason[128], want[32];
    snprintf(ev, sizeof ev, "{\"id\":\"%s\"}", id);
    publish("test_events", ev);
    const struct { const char *tag; int n; } want_of[] = { { "a", a }, { "b", b } };
    for (size_t i = 0; i < 2; i++) {
        snprintf(scope, sizeof scope, "count:%s:%s", want_of[i].tag, id);
        snprintf(want, sizeof want, "count=%d", want_of[i].n);
        wait_kill_reason(scope, reason, sizeof reason, 5000);
        if (strcmp(reason, want) != 0)
            fail_msg("event %s: rule e2e_counter_%s said \"%s\", expected \"%s\"", id,
                     want_of[i].tag, reason, want);
    }
}

static void reload_ok(const h_daemon *d)
{
    h_resp r;
    h_http(d, "POST", "/admin/reload", "{}", &r, AUTH, NULL);
    if (r.status != 200)
        fail_msg("POST /admin/reload: expected 200, got %ld %s", r.status, r.body);
    h_resp_free(&r);
}

static void test_state_across_reload(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], text[1024];
    H_RULES_DIR("rl-state", NULL, NULL, dir, sizeof dir, rset, sizeof rset);
    counter_text(text, sizeof text, "a", "counter a");
    H_WRITE_FILE(dir, "a.lua", text);
    counter_text(text, sizeof text, "b", "counter b");
    H_WRITE_FILE(dir, "b.lua", text);
    h_daemon *d = h_daemon_start(redis, rset, CHANNELS, "panic.dry_run=true", NULL);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);

    expect_counts("s1", 1, 1);
    expect_counts("s2", 2, 2);
    expect_counts("s3", 3, 3);

    /* b's source changes (same name): its state starts over; a's carries. */
    counter_text(text, sizeof text, "b", "counter b, edited");
    H_WRITE_FILE(dir, "b.lua", text);
    reload_ok(d);
    expect_counts("s4", 4, 1);

    /* Nothing changed: both carry. */
    reload_ok(d);
    expect_counts("s5", 5, 2);

    /* A failed reload changes nothing either. */
    H_WRITE_FILE(dir, "broken.lua", SYNTAX_ERROR_RULE);
    h_resp r;
    h_http(d, "POST", "/admin/reload", "{}", &r, AUTH, NULL);
    H_ASSERT_ERROR(&r, 422, "reload_failed");
    h_resp_free(&r);
    remove_file(dir, "broken.lua");
    expect_counts("s6", 6, 3);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 2b. per-rule counters across reloads ------------------------------------ */

/* NAME{rule="e2e_counter_TAG"} (LABEL appended after the rule when given). */
static double rule_metric(const h_daemon *d, const char *name, const char *tag, const char *label)
{
    char want[160];
    snprintf(want, sizeof want, "rule=\"e2e_counter_%s\"%s%s", tag, label ? "," : "",
             label ? label : "");
    char *m = H_METRICS(d);
    double v = h_metric(m, name, want);
    free(m);
    return v;
}

/* Poll until rule e2e_counter_TAG has counted N evaluations (it counts one
 * after its decision is applied, so a kill record may come first). */
static void wait_evals(const h_daemon *d, const char *tag, double n)
{
    double dl = h_deadline(5000), v = -1;
    while (h_before(dl)) {
        if ((v = rule_metric(d, "nerve_rule_evaluations_total", tag, NULL)) == n)
            return;
        h_nap();
    }
    fail_msg("nerve_rule_evaluations_total{rule=\"e2e_counter_%s\"} is %g, want %g", tag, v, n);
}

/* Right after a reload, nothing evaluated since: every per-rule series of
 * TAG still says N (a reload used to start them over at 0). */
static void expect_rule_series(const h_daemon *d, const char *tag, double n, const char *when)
{
    static const struct { const char *name, *label; } series[] = {
        { "nerve_rule_evaluations_total", NULL },
        { "nerve_rule_errors_total", NULL },
        { "nerve_decisions_total", "action=\"kill\"" },
        { "nerve_rule_duration_seconds_count", NULL },
        { "nerve_rule_duration_seconds_bucket", "le=\"+Inf\"" },
    };
    for (size_t i = 0; i < sizeof series / sizeof *series; i++) {
        double want = strcmp(series[i].name, "nerve_rule_errors_total") == 0 ? 0 : n;
        double v = rule_metric(d, series[i].name, tag, series[i].label);
        if (v != want)
            fail_msg("%s: %s{rule=\"e2e_counter_%s\"%s%s} is %g, want %g (counters must not "
                     "go backwards)", when, series[i].name, tag, series[i].label ? "," : "",
                     series[i].label ? series[i].label : "", v, want);
    }
}

static void test_counters_across_reload(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], text[1024];
    H_RULES_DIR("rl-counters", NULL, NULL, dir, sizeof dir, rset, sizeof rset);
    counter_text(text, sizeof text, "a", "counter a");
    H_WRITE_FILE(dir, "a.lua", text);
    counter_text(text, sizeof text, "b", "counter b");
    H_WRITE_FILE(dir, "b.lua", text);
    h_daemon *d = h_daemon_start(redis, rset, CHANNELS, "panic.dry_run=true", NULL);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);

    expect_counts("c1", 1, 1);
    expect_counts("c2", 2, 2);
    wait_evals(d, "a", 2);
    wait_evals(d, "b", 2);

    /* Two reloads of unchanged rules: every series holds. */
    reload_ok(d);
    expect_rule_series(d, "a", 2, "after a reload of unchanged rules");
    expect_rule_series(d, "b", 2, "after a reload of unchanged rules");
    expect_counts("c3", 3, 3);
    wait_evals(d, "a", 3);
    wait_evals(d, "b", 3);
    reload_ok(d);
    expect_rule_series(d, "a", 3, "after a second reload");
    expect_rule_series(d, "b", 3, "after a second reload");

    /* b's source changes: its ctx.state starts over, its counters go on
     * under the same name (a counter never goes backwards for a label set). */
    counter_text(text, sizeof text, "b", "counter b, edited");
    H_WRITE_FILE(dir, "b.lua", text);
    reload_ok(d);
    expect_rule_series(d, "b", 3, "after b changed");
    expect_counts("c4", 4, 1);
    wait_evals(d, "a", 4);
    wait_evals(d, "b", 4);

    /* b removed, then back: it continues where it stopped. */
    remove_file(dir, "b.lua");
    reload_ok(d);
    if (rule_metric(d, "nerve_rule_evaluations_total", "b", NULL) >= 0)
        fail_msg("a removed rule still has a nerve_rule_evaluations_total series");
    H_WRITE_FILE(dir, "b.lua", text);
    reload_ok(d);
    expect_rule_series(d, "b", 4, "after b was removed and added back");
    expect_rule_series(d, "a", 4, "after b was removed and added back");

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 3. /metrics ---------------------------------------------------------------- */

#define PROM_MAX 1024

typedef struct prom_sample {
    char name[128];
    char labels[512];           /* as written between the braces, "" = none */
    char le[256];               /* the value of the le label, "" = none */
    char rest[512];             /* the labels without le, for grouping buckets */
    double value;
} prom_sample;

typedef struct prom {
    prom_sample s[PROM_MAX];
    size_t n;
    struct { char name[128]; char type[32]; } fam[256];
    size_t nfam;
    char errors[4096];
} prom;

static void prom_err(prom *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void prom_err(prom *p, const char *fmt, ...)
{
    size_t have = strlen(p->errors);
    if (have + 2 >= sizeof p->errors)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->errors + have, sizeof p->errors - have - 1, fmt, ap);
    va_end(ap);
    strcat(p->errors, "\n");
}

static const char *prom_type(const prom *p, const char *name)
{
    for (size_t i = 0; i < p->nfam; i++)
        if (strcmp(p->fam[i].name, name) == 0)
            return p->fam[i].type;
    return NULL;
}

static bool is_name(const char *s, size_t n, bool colon)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

/* Parse LABELS ("k=\"v\",k2=\"v2\""), pulling out le; false when malformed. */
static bool parse_labels(const char *labels, prom_sample *s)
{
    const char *p = labels;
    s->le[0] = s->rest[0] = '\0';
    while (*p) {
        const char *eq = strchr(p, '=');
        if (eq == NULL || !is_name(p, (size_t)(eq - p), false) || eq[1] != '"')
            return false;
        char value[256];
        size_t vn = 0;
        const char *q = eq + 2;
        for (; *q && *q != '"'; q++) {
            if (*q == '\\') {
                q++;
                if (*q != '\\' && *q != '"' && *q != 'n')
                    return false;
            }
            if (vn + 1 < sizeof value)
                value[vn++] = *q;
        }
        if (*q != '"')
            return false;
        value[vn] = '\0';
        if ((size_t)(eq - p) == 2 && strncmp(p, "le", 2) == 0) {
            snprintf(s->le, sizeof s->le, "%s", value);
        } else {
            size_t have = strlen(s->rest);
            snprintf(s->rest + have, sizeof s->rest - have, "%s%.*s", have ? "," : "",
                     (int)(q + 1 - p), p);
        }
        p = q + 1;
        if (*p == ',')
            p++;
        else if (*p)
            return false;
    }
    return true;
}

static bool parse_value(const char *s, double *v)
{
    if (strcmp(s, "+Inf") == 0 || strcmp(s, "Inf") == 0) {
        *v = INFINITY;
        return true;
    }
    if (strcmp(s, "-Inf") == 0) {
        *v = -INFINITY;
        return true;
    }
    if (strcmp(s, "NaN") == 0) {
        *v = NAN;
        return true;
    }
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return end != s && *end == '\0' && errno == 0;
}

/* The family a sample belongs to: its own name when typed, else the name
 * without _bucket/_sum/_count when that is a histogram (or summary). */
static const char *family_of(const prom *p, const char *name, char *buf, size_t len)
{
    if (prom_type(p, name))
        return name;
    static const char *const sfx[] = { "_bucket", "_sum", "_count" };
    size_t n = strlen(name);
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(sfx[i]);
        if (n > k && strcmp(name + n - k, sfx[i]) == 0) {
            snprintf(buf, len, "%.*s", (int)(n - k), name);
            const char *t = prom_type(p, buf);
            if (t && (strcmp(t, "histogram") == 0 || (i > 0 && strcmp(t, "summary") == 0)))
                return buf;
        }
    }
    return NULL;
}

/* Parse TEXT as Prometheus text format 0.0.4 and check what we demand of it. */
static void prom_parse(prom *p, const char *text)
{
    memset(p, 0, sizeof *p);
    int lineno = 0;
    for (const char *line = text; line && *line; ) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[1024];
        snprintf(buf, sizeof buf, "%.*s", (int)len, line);
        line = nl ? nl + 1 : NULL;
        lineno++;
        if (nl == NULL && len > 0)
            prom_err(p, "line %d: the last line has no newline", lineno);
        if (buf[0] == '\0')
            continue;
        if (buf[0] == '#') {
            char name[128], type[32];
            if (sscanf(buf, "# TYPE %127s %31s", name, type) == 2) {
                if (prom_type(p, name))
                    prom_err(p, "line %d: a second # TYPE for %s", lineno, name);
                else if (strcmp(type, "counter") && strcmp(type, "gauge") &&
                         strcmp(type, "histogram") && strcmp(type, "summary") &&
                         strcmp(type, "untyped"))
                    prom_err(p, "line %d: unknown type %s", lineno, type);
                else if (p->nfam < 256) {
                    snprintf(p->fam[p->nfam].name, sizeof p->fam[0].name, "%s", name);
                    snprintf(p->fam[p->nfam].type, sizeof p->fam[0].type, "%s", type);
                    p->nfam++;
                    if (strcmp(type, "counter") == 0 &&
                        (strlen(name) < 6 || strcmp(name + strlen(name) - 6, "_total") != 0))
                        prom_err(p, "line %d: counter %s does not end in _total", lineno, name);
                }
                for (size_t i = 0; i < p->n; i++)
                    if (strcmp(p->s[i].name, name) == 0)
                        prom_err(p, "line %d: # TYPE %s after its samples", lineno, name);
            }
            continue;
        }
        if (p->n == PROM_MAX) {
            prom_err(p, "more than %d samples", PROM_MAX);
            return;
        }
        prom_sample *s = &p->s[p->n];
        size_t nl_ = strcspn(buf, "{ ");
        if (!is_name(buf, nl_, true)) {
            prom_err(p, "line %d: bad metric name: %s", lineno, buf);
            continue;
        }
        snprintf(s->name, sizeof s->name, "%.*s", (int)nl_, buf);
        const char *q = buf + nl_;
        if (*q == '{') {
            const char *close = strrchr(q, '}');
            if (close == NULL) {
                prom_err(p, "line %d: unclosed labels: %s", lineno, buf);
                continue;
            }
            snprintf(s->labels, sizeof s->labels, "%.*s", (int)(close - q - 1), q + 1);
            if (!parse_labels(s->labels, s)) {
                prom_err(p, "line %d: bad labels: %s", lineno, buf);
                continue;
            }
            q = close + 1;
        }
        if (*q != ' ') {
            prom_err(p, "line %d: no space before the value: %s", lineno, buf);
            continue;
        }
        char val[64], ts[64];
        int k = sscanf(q, " %63s %63s", val, ts);
        if (k < 1 || !parse_value(val, &s->value)) {
            prom_err(p, "line %d: bad value: %s", lineno, buf);
            continue;
        }
        char fb[128];
        const char *fam = family_of(p, s->name, fb, sizeof fb);
        if (fam == NULL)
            prom_err(p, "line %d: %s has no # TYPE", lineno, s->name);
        p->n++;
    }

    /* Histograms: per label set, buckets ascending in le and cumulative,
     * le="+Inf" last, _count equal to it, a _sum. */
    for (size_t f = 0; f < p->nfam; f++) {
        if (strcmp(p->fam[f].type, "histogram") != 0)
            continue;
        char bname[160], sname[160], cname[160];
        snprintf(bname, sizeof bname, "%s_bucket", p->fam[f].name);
        snprintf(sname, sizeof sname, "%s_sum", p->fam[f].name);
        snprintf(cname, sizeof cname, "%s_count", p->fam[f].name);
        bool any = false;
        for (size_t i = 0; i < p->n; i++) {
            if (strcmp(p->s[i].name, bname) != 0)
                continue;
            /* The first bucket of a label set starts the check of that set. */
            bool first = true;
            for (size_t j = 0; j < i; j++)
                if (strcmp(p->s[j].name, bname) == 0 && strcmp(p->s[j].rest, p->s[i].rest) == 0)
                    first = false;
            if (!first)
                continue;
            any = true;
            const char *set = p->s[i].rest;
            double prev_le = -INFINITY, prev = 0, inf = -1;
            for (size_t j = i; j < p->n; j++) {
                if (strcmp(p->s[j].name, bname) != 0 || strcmp(p->s[j].rest, set) != 0)
                    continue;
                double le;
                if (!parse_value(p->s[j].le, &le)) {
                    prom_err(p, "%s{%s}: bucket without a valid le", bname, p->s[j].labels);
                    continue;
                }
                if (!(le > prev_le))
                    prom_err(p, "%s{%s}: le not ascending", bname, p->s[j].labels);
                if (p->s[j].value < prev)
                    prom_err(p, "%s{%s}: buckets not cumulative", bname, p->s[j].labels);
                prev_le = le;
                prev = p->s[j].value;
                if (isinf(le))
                    inf = p->s[j].value;
            }
            if (inf < 0)
                prom_err(p, "%s{%s}: no le=\"+Inf\" bucket", bname, set);
            bool has_sum = false, has_count = false;
            for (size_t j = 0; j < p->n; j++) {
                if (strcmp(p->s[j].rest, set) != 0)
                    continue;
                if (strcmp(p->s[j].name, sname) == 0)
                    has_sum = true;
                if (strcmp(p->s[j].name, cname) == 0) {
                    has_count = true;
                    if (p->s[j].value != inf)
                        prom_err(p, "%s{%s} = %g, but the +Inf bucket is %g", cname, set,
                                 p->s[j].value, inf);
                }
            }
            if (!has_sum)
                prom_err(p, "%s: no %s for {%s}", p->fam[f].name, sname, set);
            if (!has_count)
                prom_err(p, "%s: no %s for {%s}", p->fam[f].name, cname, set);
        }
        if (!any)
            prom_err(p, "histogram %s has no _bucket samples", p->fam[f].name);
    }
}

/* The value of NAME{LABELS} (LABELS as written, "" = none); NAN if absent. */
static double prom_get(const prom *p, const char *name, const char *labels)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->s[i].name, name) == 0 && strcmp(p->s[i].labels, labels) == 0)
            return p->s[i].value;
    return NAN;
}

static prom *scrape(const h_daemon *d)
{
    prom *p = calloc(1, sizeof *p);
    assert_non_null(p);
    h_resp r;
    h_http(d, "GET", "/metrics", NULL, &r, NULL);
    assert_int_equal(r.status, 200);
    char ct[128] = "";
    h_header(&r, "Content-Type", ct, sizeof ct);
    if (strncmp(ct, "text/plain", 10) != 0)
        fail_msg("/metrics Content-Type: %s", ct);
    prom_parse(p, r.body);
    h_resp_free(&r);
    return p;
}

static void expect_delta(const prom *a, const prom *b, const char *name, const char *labels,
                         double want, int *failures)
{
    double x = prom_get(a, name, labels), y = prom_get(b, name, labels);
    if (isnan(x))
        x = 0;          /* a series may only appear once it has a value */
    if (isnan(y) || y - x != want) {
        print_error("%s{%s}: expected to grow by %g, went from %g to %g\n", name, labels, want,
                    x, y);
        (*failures)++;
    }
}

/* The parser itself: what it must accept and what it must reject, so that a
 * clean scrape means something. No daemon. */
static void test_prom_parser(void **state)
{
    (void)state;
    prom *p = calloc(1, sizeof *p);
    assert_non_null(p);
    prom_parse(p,
               "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n"
               "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
               "h_sum 0.3\nh_count 2\n# TYPE g gauge\ng 1.5e3\n");
    if (p->errors[0])
        fail_msg("a valid exposition was rejected:\n%s", p->errors);
    assert_true(prom_get(p, "a_total", "x=\"1\",y=\"q\\\"\"") == 3);
    assert_true(prom_get(p, "g", "") == 1500);
    static const char *const bad[] = {
        "a_total 1\n",                                              /* no TYPE */
        "# TYPE a counter\na 1\n",                                  /* no _total */
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n",
        "# TYPE g gauge\ng{x=1} 1\n",                               /* unquoted label */
        "# TYPE g gauge\ng one\n",
        "# TYPE g gauge\ng 1",                                       /* no final newline */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        prom_parse(p, bad[i]);
        if (p->errors[0] == '\0')
            fail_msg("the parser accepted an invalid exposition:\n%s", bad[i]);
    }
    free(p);
    h_pass();
}

static void test_metrics(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], text[2048];
    H_RULES_DIR("rl-metrics", NULL, NULL, dir, sizeof dir, rset, sizeof rset);
    marker_text(text, sizeof text, 1);
    H_WRITE_FILE(dir, "marker.lua", text);
    h_daemon *d = h_daemon_start(redis, rset, CHANNELS, "panic.dry_run=true", NULL);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);

    int failures = 0;
    prom *before = scrape(d);
    if (before->errors[0]) {
        print_error("/metrics (before) is not valid as required:\n%s", before->errors);
        failures++;
    }

    /* Traffic whose effect on the counters we know exactly. */
    const char *sku = "rl-metrics-1";
    H_SET_STOCK(d, sku, 5);
    int ok = 0, oos = 0;
    for (int i = 0; i < 8; i++) {
        h_resp r;
        long st = h_sale(d, "/sale", sku, 1, NULL, &r);
        ok += st == 200;
        oos += st == 409;
        h_resp_free(&r);
    }
    assert_int_equal(ok, 5);
    assert_int_equal(oos, 3);
    int reloads_ok = 0, reloads_failed = 0;
    for (int i = 0; i < 3; i++) {
        if (i == 1)
            H_WRITE_FILE(dir, "broken.lua", SYNTAX_ERROR_RULE);
        h_resp r;
        long st = h_http(d, "POST", "/admin/reload", "{}", &r, AUTH, NULL);
        reloads_ok += st == 200;
        reloads_failed += st == 422;
        h_resp_free(&r);
        if (i == 1)
            remove_file(dir, "broken.lua");
    }
    assert_int_equal(reloads_ok, 2);
    assert_int_equal(reloads_failed, 1);

    prom *after = scrape(d);
    if (after->errors[0]) {
        print_error("/metrics (after) is not valid as required:\n%s", after->errors);
        failures++;
    }
    expect_delta(before, after, "nerve_sales_total", "result=\"ok\"", ok, &failures);
    expect_delta(before, after, "nerve_sales_total", "result=\"out_of_stock\"", oos, &failures);
    expect_delta(before, after, "nerve_sales_total", "result=\"halted\"", 0, &failures);
    expect_delta(before, after, "nerve_sales_total", "result=\"unavailable\"", 0, &failures);
    expect_delta(before, after, "nerve_sale_duration_seconds_count", "", ok + oos, &failures);
    expect_delta(before, after, "nerve_reloads_total", "result=\"ok\"", reloads_ok, &failures);
    expect_delta(before, after, "nerve_reloads_total", "result=\"failed\"", reloads_failed,
                 &failures);
    double g = prom_get(after, "nerve_rules_generation", "");
    long long rg = H_GENERATION(d);
    if (g != (double)rg) {
        print_error("nerve_rules_generation %g, GET /rules generation %lld\n", g, rg);
        failures++;
    }
    if (prom_get(after, "nerve_redis_up", "") != 1) {
        print_error("nerve_redis_up is not 1\n");
        failures++;
    }
    static const char *const required[] = {
        "nerve_sales_total", "nerve_sale_duration_seconds", "nerve_lock_wait_seconds",
        "nerve_events_total", "nerve_rule_evaluations_total", "nerve_rule_errors_total",
        "nerve_rule_duration_seconds", "nerve_decisions_total", "nerve_kill_switch_engaged",
        "nerve_panic_attempts_total", "nerve_reloads_total", "nerve_rules_generation",
        "nerve_redis_up",
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        if (prom_type(after, required[i]) == NULL) {
            print_error("/metrics has no # TYPE for %s (SPEC §11)\n", required[i]);
            failures++;
        }
    }
    free(before);
    free(after);
    assert_int_equal(failures, 0);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- main ----------------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_reload_under_load),
        T(test_state_across_reload),
        T(test_counters_across_reload),
        T(test_prom_parser),
        T(test_metrics),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
