/* test_lifecycle.c -- the process around the daemon (SPEC §3, §10): one
 * daemon per pidfile, `nerve reload` signalling it, SIGTERM under load
 * answering every accepted request and releasing every lock, and the
 * offline commands `nerve check` and `nerve rules test`.
 *
 * Daemons come from the harness, and so do the one-shot commands (run_nerve()
 * below, over h_run_nerve), with their exit status, stdout and stderr apart.
 */
#include "harness.h"

#include <curl/curl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define AUTH "Authorization: Bearer " H_ADMIN_TOKEN

static h_redis *redis;

/* --- small helpers -------------------------------------------------------- */

/* Run `nerve ARGS...` (NULL-terminated) with none of the variables that
 * steer nerve in its environment, for at most 10 s. Fills R (free with
 * h_run_free) and returns its status. */
static int run_nerve(h_run *r, const char *const *args)
{
    return h_run_nerve(r, 10000, NULL, args);
}

/* --- rules ------------------------------------------------------------------ */

static const char *const LC_RULE =
    "return {\n"
    "  name = \"e2e_lc\",\n"
    "  on = { \"financial_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if event.boom then error(\"boom\") end\n"
    "    local out = {}\n"
    "    if event.alert then\n"
    "      out[#out + 1] = { action = \"alert\", level = \"warning\", scope = \"lc:\" .. event.id,\n"
    "                        reason = \"alert \" .. event.id }\n"
    "    end\n"
    "    if event.kill then\n"
    "      out[#out + 1] = { action = \"kill\", scope = \"lc:\" .. event.id, halt_sales = true,\n"
    "                        reason = \"kill \" .. event.id }\n"
    "    end\n"
    "    return out\n"
    "  end,\n"
    "  tests = {\n"
    "    { channel = \"financial_events\", event = { id = \"f\" }, expect = {} },\n"
    "    { channel = \"financial_events\", event = { id = \"f\", alert = true },\n"
    "      expect = { { action = \"alert\", level = \"warning\", scope = \"lc:f\" } } },\n"
    "  },\n"
    "}\n";

static const char *const SYNTAX_ERROR_RULE =   /* error on line 5 */
    "return {\n"
    "  name = \"e2e_broken\",\n"
    "  on = { \"financial_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\" level = \"info\", reason = \"x\" }\n"
    "  end,\n"
    "}\n";

/* --- 1. one daemon per pidfile; nerve reload ---------------------------------- */

static int pidfile_pid(const char *path)
{
    char *t = h_read_file(path);
    if (t == NULL)
        return -1;
    char *end;
    long v = strtol(t, &end, 10);
    int ok = end != t && (*end == '\n' || *end == '\0');
    free(t);
    return ok ? (int)v : -1;
}

static void test_pidfile_and_reload_command(void **state)
{
    (void)state;
    char rset[PATH_MAX + 16], pidfile[PATH_MAX], pset[PATH_MAX + 32];
    H_RULES_DIR("lc-pid", "lc.lua", LC_RULE, NULL, 0, rset, sizeof rset);
    snprintf(pidfile, sizeof pidfile, "%s/nerve.pid", h_tmpdir());
    snprintf(pset, sizeof pset, "server.pidfile=%s", pidfile);

    h_daemon *d = h_daemon_start(redis, rset, pset, NULL);
    assert_non_null(d);
    assert_int_equal(pidfile_pid(pidfile), d->pid);

    /* A second daemon with the same pidfile refuses to start and says why. */
    char listen[64], url[96], pid_s[32];
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", h_free_port());
    snprintf(url, sizeof url, "redis.url=redis://127.0.0.1:%d/0", redis->port);
    snprintf(pid_s, sizeof pid_s, "%d", (int)d->pid);
    h_run r;
    run_nerve(&r, (const char *const[]){ "serve", "-c", "config/nerve.yaml", "--set", listen,
                                         "--set", url, "--set", rset, "--set", pset, NULL });
    if (r.status == 0 || r.status == -1)
        fail_msg("a second nerve on pidfile %s: expected a non-zero exit, got %s%d; stderr:\n%s",
                 pidfile, r.status == -1 ? "killed/timed out " : "", r.status, r.err);
    if (strstr(r.err, pidfile) == NULL || strstr(r.err, pid_s) == NULL)
        fail_msg("the second nerve's message should name %s and pid %s; stderr:\n%s", pidfile,
                 pid_s, r.err);
    h_run_free(&r);
    assert_int_equal(h_daemon_alive(d), 1);
    assert_int_equal(pidfile_pid(pidfile), d->pid);     /* not clobbered */

    /* nerve reload signals the daemon of the pidfile (and reads the outcome
     * from its API: --url, the config's server.listen is not the test's). */
    long long g0 = H_GENERATION(d);
    run_nerve(&r, (const char *const[]){ "reload", "-c", "config/nerve.yaml", "--set", pset,
                                         "--set", rset, "--url", d->base, NULL });
    if (r.status != 0)
        fail_msg("nerve reload: exit %d; stdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
    h_run_free(&r);
    double dl = h_deadline(5000);
    long long g = g0;
    while (g == g0 && h_before(dl)) {
        g = H_GENERATION(d);
        if (g == g0)
            h_nap();
    }
    assert_int_equal(g, g0 + 1);

    /* No daemon behind the pidfile: nerve reload fails. */
    char nopid[PATH_MAX + 32];
    snprintf(nopid, sizeof nopid, "server.pidfile=%s/none.pid", h_tmpdir());
    run_nerve(&r, (const char *const[]){ "reload", "-c", "config/nerve.yaml", "--set", nopid,
                                         "--set", rset, NULL });
    if (r.status == 0)
        fail_msg("nerve reload without a daemon: expected a non-zero exit; stdout:\n%s", r.out);
    h_run_free(&r);

    assert_int_equal(h_daemon_stop(d), 0);
    if (access(pidfile, F_OK) == 0)
        fail_msg("pidfile %s left behind after a clean exit", pidfile);
    h_pass();
}

/* --- 2. SIGTERM under load ------------------------------------------------------ */

#define CLIENTS 32

typedef struct load {
    const h_daemon *d;
    const char *sku;
    pthread_t th[CLIENTS];
    bool running;
    atomic_bool stop;
    atomic_llong ok, refused, unanswered, bad;
    atomic_llong died;          /* curl: a reused connection died with the
                                 * request unanswered, and it retried */
    pthread_mutex_t mu;
    char first_bad[1024];
} load;

static load the_load;           /* stopped by the teardown when a test fails */

typedef struct rbuf {
    char b[1024];
    size_t n;
} rbuf;

static size_t sink(char *p, size_t size, size_t n, void *ud)
{
    rbuf *r = ud;
    size_t add = size * n, room = sizeof r->b - 1 - r->n;
    memcpy(r->b + r->n, p, add < room ? add : room);
    r->n += add < room ? add : room;
    r->b[r->n] = '\0';
    return size * n;
}

static void note_bad(load *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_bad(load *l, const char *fmt, ...)
{
    if (atomic_fetch_add(&l->bad, 1) != 0)
        return;
    pthread_mutex_lock(&l->mu);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->first_bad, sizeof l->first_bad, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&l->mu);
}

/* curl's own account of what happened on the wire: a request sent on a
 * kept-alive connection that closed without a byte of answer is silently
 * retried on a fresh connection, which then sees "connection refused". */
static int on_debug(CURL *h, curl_infotype type, char *data, size_t size, void *ud)
{
    (void)h;
    load *l = ud;
    if (type == CURLINFO_TEXT && memmem(data, size, "retrying a fresh connect", 24))
        atomic_fetch_add(&l->died, 1);
    return 0;
}

/* Sell one unit at a time over one keep-alive connection until told to
 * stop or the server is gone (connection refused). */
static void *load_main(void *arg)
{
    load *l = arg;
    CURL *h = h_sale_curl(l->d, l->sku);
    if (h == NULL)
        return NULL;
    char err[CURL_ERROR_SIZE];
    rbuf resp;
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, on_debug);
    curl_easy_setopt(h, CURLOPT_DEBUGDATA, l);
    curl_easy_setopt(h, CURLOPT_VERBOSE, 1L);
    while (!atomic_load(&l->stop)) {
        resp.n = 0;
        resp.b[0] = '\0';
        err[0] = '\0';
        long status = 0;
        curl_off_t clen = -1;
        CURLcode cc = curl_easy_perform(h);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &clen);
        if (cc == CURLE_COULDNT_CONNECT) {
            atomic_fetch_add(&l->refused, 1);
            break;                  /* the server is gone: done */
        }
        if (cc != CURLE_OK && status == 0 &&
            (cc == CURLE_GOT_NOTHING || cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR)) {
            /* Closed before a byte of answer: a request the server never
             * took (the stock check below catches one it did take). */
            atomic_fetch_add(&l->unanswered, 1);
            continue;
        }
        if (cc != CURLE_OK) {
            note_bad(l, "truncated or failed answer: status %ld, curl \"%s\", %zu bytes: %s",
                     status, err[0] ? err : curl_easy_strerror(cc), resp.n, resp.b);
            continue;
        }
        bool complete = clen < 0 || (size_t)clen == resp.n;
        if (status == 200 && complete && strstr(resp.b, "\"status\":\"ok\""))
            atomic_fetch_add(&l->ok, 1);
        else
            note_bad(l, "unexpected answer: status %ld, %zu of %lld bytes: %s", status, resp.n,
                     (long long)clen, resp.b);
    }
    h_sale_curl_free(h);
    return NULL;
}

static void load_start(load *l, const h_daemon *d, const char *sku)
{
    memset(l, 0, sizeof *l);
    l->d = d;
    l->sku = sku;
    pthread_mutex_init(&l->mu, NULL);
    for (int i = 0; i < CLIENTS; i++)
        assert_int_equal(pthread_create(&l->th[i], NULL, load_main, l), 0);
    l->running = true;
}

static void load_stop(load *l)
{
    if (!l->running)
        return;
    atomic_store(&l->stop, true);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(l->th[i], NULL);
    pthread_mutex_destroy(&l->mu);
    l->running = false;
}

static int teardown(void **state)
{
    load_stop(&the_load);
    return h_test_teardown(state);
}

static void test_sigterm_under_load(void **state)
{
    (void)state;
    char rset[PATH_MAX + 16];
    H_RULES_DIR("lc-term", "lc.lua", LC_RULE, NULL, 0, rset, sizeof rset);
    const int grace_ms = 5000;
    h_daemon *d = h_daemon_start(redis, rset, "server.shutdown_grace_ms=5000",
                                 "panic.dry_run=true", NULL);
    assert_non_null(d);
    const char *sku = "lc-term-1";
    const long long stock = 1000000;
    H_SET_STOCK(d, sku, stock);

    load *l = &the_load;
    load_start(l, d, sku);
    double dl = h_deadline(10000);
    while (atomic_load(&l->ok) < 500 && atomic_load(&l->bad) == 0 && h_before(dl))
        h_nap();
    if (atomic_load(&l->ok) < 500)
        fail_msg("the load did not get going: %lld sold, %lld bad (%s)",
                 (long long)atomic_load(&l->ok), (long long)atomic_load(&l->bad), l->first_bad);

    double t0 = h_now();
    int rc = h_daemon_stop(d);          /* SIGTERM while 32 clients sell */
    double took = h_now() - t0;
    load_stop(l);
    long long ok = atomic_load(&l->ok);
    long long died = atomic_load(&l->died);
    printf("SIGTERM under load: exit %d after %.2f s; %lld sold, %lld refused, %lld unanswered, "
           "%lld sent on a connection that closed unanswered, %lld bad\n", rc, took, ok,
           (long long)atomic_load(&l->refused), (long long)atomic_load(&l->unanswered), died,
           (long long)atomic_load(&l->bad));
    assert_int_equal(rc, 0);
    if (took > grace_ms / 1000.0 + 1.0)
        fail_msg("exit took %.2f s, over the %d ms grace period", took, grace_ms);
    if (atomic_load(&l->bad) != 0)
        fail_msg("%lld requests got a truncated or unexpected answer; first: %s",
                 (long long)atomic_load(&l->bad), l->first_bad);

    /* No lock left behind. */
    redisReply *rep = h_redis_cmd(redis, "KEYS %s", H_PREFIX "{p*}:lock:*");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    if (rep->elements != 0)
        fail_msg("%zu lock key(s) left after exit, e.g. %s", rep->elements, rep->element[0]->str);
    freeReplyObject(rep);

    /* Every sale the server made was reported to a client. */
    long long left = H_REDIS_STOCK(redis, sku);
    if (left != stock - ok)
        fail_msg("stock %lld, but clients were told of %lld sales out of %lld: %lld sales made "
                 "and never answered (%lld requests were sent on connections that then closed "
                 "without an answer)", left, ok, stock, stock - ok - left, died);
    h_pass();
}

/* --- 3. nerve check, nerve rules test --------------------------------------------- */

static void test_check_and_rules_test(void **state)
{
    (void)state;
    char bad[PATH_MAX], gset[PATH_MAX + 16], bset[PATH_MAX + 16];
    H_RULES_DIR("lc-check-good", "lc.lua", LC_RULE, NULL, 0, gset, sizeof gset);
    H_RULES_DIR("lc-check-bad", "lc.lua", LC_RULE, bad, sizeof bad, bset, sizeof bset);
    H_WRITE_FILE(bad, "broken.lua", SYNTAX_ERROR_RULE);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/broken.lua", bad);
    h_run r;

    run_nerve(&r, (const char *const[]){ "check", "-c", "config/nerve.yaml", "--set", gset, NULL });
    if (r.status != 0)
        fail_msg("nerve check on a good dir: exit %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out,
                 r.err);
    h_run_free(&r);

    run_nerve(&r, (const char *const[]){ "check", "-c", "config/nerve.yaml", "--set", bset, NULL });
    char want[PATH_MAX + 128];
    snprintf(want, sizeof want, "%s:5: ", path);
    if (r.status != 1 || (strstr(r.err, want) == NULL && strstr(r.out, want) == NULL))
        fail_msg("nerve check with a syntax error: expected exit 1 and \"%s...\", got exit %d\n"
                 "stdout:\n%s\nstderr:\n%s", want, r.status, r.out, r.err);
    h_run_free(&r);

    /* rules test: one JSON line per decision, after EVENTS.jsonl:LINE: of its event. */
    char events[PATH_MAX];
    snprintf(events, sizeof events, "%s/events.jsonl", h_tmpdir());
    H_WRITE_FILE(h_tmpdir(), "events.jsonl",
                 "{\"channel\":\"financial_events\",\"event\":{\"id\":\"n0\"}}\n"
                 "{\"channel\":\"financial_events\",\"event\":{\"id\":\"n1\",\"alert\":true}}\n"
                 "{\"channel\":\"financial_events\",\"event\":{\"id\":\"n2\",\"alert\":true,"
                 "\"kill\":true}}\n"
                 "{\"channel\":\"other_events\",\"event\":{\"id\":\"n3\",\"alert\":true}}\n");
    run_nerve(&r, (const char *const[]){ "rules", "test", "-c", "config/nerve.yaml", "--set",
                                         gset, events, NULL });
    if (r.status != 0)
        fail_msg("nerve rules test: exit %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
    static const struct { const char *action, *scope, *reason; int halt; } want_d[] = {
        { "alert", "lc:n1", "alert n1", -1 },
        { "alert", "lc:n2", "alert n2", -1 },
        { "kill", "lc:n2", "kill n2", 1 },
    };
    int lines = 0;
    for (char *line = r.out, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (lines >= 3)
            fail_msg("nerve rules test: more than 3 lines: %s", line);
        char where[PATH_MAX + 32];
        snprintf(where, sizeof where, "%s:%d: ", events, lines < 1 ? 2 : 3);
        if (strncmp(line, where, strlen(where)) != 0)
            fail_msg("nerve rules test line %d: expected it to start with %s: %s", lines + 1,
                     where, line);
        line += strlen(where);
        cJSON *o = cJSON_Parse(line);
        const cJSON *dec = cJSON_GetObjectItemCaseSensitive(o, "decision");
        const char *rule = h_jstr(o, "rule"), *ch = h_jstr(o, "channel");
        const char *act = h_jstr(dec, "action"), *sc = h_jstr(dec, "scope");
        const char *rs = h_jstr(dec, "reason");
        bool ok = o && rule && strcmp(rule, "e2e_lc") == 0 && ch &&
                  strcmp(ch, "financial_events") == 0 && act && strcmp(act, want_d[lines].action) == 0 &&
                  sc && strcmp(sc, want_d[lines].scope) == 0 && rs &&
                  strcmp(rs, want_d[lines].reason) == 0 &&
                  (want_d[lines].halt < 0 || h_jbool(dec, "halt_sales") == want_d[lines].halt);
        if (!ok)
            fail_msg("nerve rules test line %d: expected {\"rule\":\"e2e_lc\",\"channel\":"
                     "\"financial_events\",\"decision\":{\"action\":\"%s\",\"scope\":\"%s\","
                     "\"reason\":\"%s\"...}}, got %s", lines + 1, want_d[lines].action,
                     want_d[lines].scope, want_d[lines].reason, line);
        cJSON_Delete(o);
        lines++;
    }
    assert_int_equal(lines, 3);
    h_run_free(&r);

    /* A line that is not an event: non-zero, and the line is named. */
    H_WRITE_FILE(h_tmpdir(), "events.jsonl",
                 "{\"channel\":\"financial_events\",\"event\":{\"id\":\"n1\",\"alert\":true}}\n"
                 "this is not json\n");
    run_nerve(&r, (const char *const[]){ "rules", "test", "-c", "config/nerve.yaml", "--set",
                                         gset, events, NULL });
    snprintf(want, sizeof want, "%s:2:", events);
    if (r.status == 0 || r.status == -1 || strstr(r.err, want) == NULL)
        fail_msg("nerve rules test with a bad line: expected a non-zero exit and \"%s\" on "
                 "stderr, got exit %d\nstderr:\n%s", want, r.status, r.err);
    h_run_free(&r);

    /* A rule error: non-zero, reported as FILE:LINE of the rule. */
    H_WRITE_FILE(h_tmpdir(), "events.jsonl",
                 "{\"channel\":\"financial_events\",\"event\":{\"id\":\"n1\",\"boom\":true}}\n");
    run_nerve(&r, (const char *const[]){ "rules", "test", "-c", "config/nerve.yaml", "--set",
                                         gset, events, NULL });
    if (r.status == 0 || r.status == -1 || strstr(r.err, "lc.lua:5:") == NULL)
        fail_msg("nerve rules test with a rule error: expected a non-zero exit and "
                 "\"lc.lua:5:\" on stderr, got exit %d\nstderr:\n%s", r.status, r.err);
    h_run_free(&r);
    h_pass();
}

/* --- main ----------------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_pidfile_and_reload_command),
        T(test_sigterm_under_load),
        T(test_check_and_rules_test),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
