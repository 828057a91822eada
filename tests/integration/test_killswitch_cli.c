/* test_killswitch_cli.c -- `nerve killswitch ls|engage|reset`, the audited
 * reset (DELETE /admin/killswitch/{scope} with {"reason","actor"}) and
 * panic.resume_url, end to end: the real CLI against the real daemon over
 * real HTTP, a real redis-server, and two mock webhooks (the emergency stop
 * and the resume call).
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PANIC_TOKEN "cli-panic-token"

static h_redis *redis;
static h_daemon *daemon_;
static mock_server *hook;   /* panic.webhook_url */
static mock_server *resume; /* panic.resume_url */
static char hook_set[160], resume_set[160];
static const char *sets[] = { hook_set, resume_set, "panic.backoff_initial_ms=10",
                              "panic.backoff_max_ms=50", NULL };

/* --- helpers ---------------------------------------------------------------- */

/* `nerve killswitch ARGS...` against the group's daemon (--url first), with
 * ENV (NULL-terminated). */
static int ks_cli(h_run *r, const char *const *env, const char *const *args) {
    const char *argv[16] = { "killswitch" };
    size_t n = 1;
    for (; args[n - 1] && n < 13; n++) argv[n] = args[n - 1];
    argv[n++] = "--url";
    argv[n++] = daemon_->base;
    argv[n] = NULL;
    return h_run_nerve(r, 15000, env, argv);
}

static const char *const env_ok[] = { "NERVE_ADMIN_TOKEN=" H_ADMIN_TOKEN, "USER=tester", NULL };

/* The newest audit entry of KIND about SCOPE (its data parsed; the caller
 * deletes it), NULL when there is none among the last 50. */
static cJSON *audit_entry(const char *kind, const char *scope) {
    redisReply *r = h_redis_cmd(redis, "XREVRANGE " H_PREFIX "audit + - COUNT 50");
    cJSON *found = NULL;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements && !found; i++) {
        redisReply *f = r->element[i]->element[1];
        if (f->elements < 4 || strcmp(f->element[1]->str, kind) != 0) continue;
        cJSON *o = cJSON_Parse(f->element[3]->str);
        if (o && h_jstr(o, "scope") && strcmp(h_jstr(o, "scope"), scope) == 0)
            found = o;
        else
            cJSON_Delete(o);
    }
    freeReplyObject(r);
    return found;
}

/* Poll for that entry; fails after MS. */
static cJSON *wait_audit(const char *kind, const char *scope, int ms) {
    double dl = h_deadline(ms);
    cJSON *o;
    while (!(o = audit_entry(kind, scope)) && h_before(dl)) h_nap();
    if (!o) fail_msg("no %s audit entry for %s within %d ms", kind, scope, ms);
    return o;
}

static void engage_http(const char *scope) {
    char body[256];
    snprintf(body, sizeof body, "{\"scope\":\"%s\",\"reason\":\"test\"}", scope);
    h_resp r;
    long st = h_http(daemon_, "POST", "/admin/killswitch", body, &r,
                     "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    assert_int_equal(st, 200);
    h_resp_free(&r);
}

static void expect_engaged(const char *scope, bool engaged) {
    cJSON *rec = h_kill_record(redis, scope);
    if (engaged && !rec) fail_msg("%s is not engaged", scope);
    if (!engaged && rec) fail_msg("%s is still engaged", scope);
    cJSON_Delete(rec);
}

static int setup(void **state) {
    h_hook_reset(hook);
    h_hook_reset(resume);
    return h_test_setup(state);
}

/* --- tests ----------------------------------------------------------------- */

/* engage -> ls shows it -> reset with a reason: the audit entry says who
 * (actor, token name, remote address) and why, and the resume URL gets one
 * successful POST with the scope after a 500. */
static void test_engage_ls_reset_resume(void **state) {
    (void)state;
    mock_set_script(resume, (int[]){ 500 }, 1, 200);
    h_run r;
    assert_int_equal(ks_cli(&r, env_ok,
                            (const char *const[]){ "engage", "sku:CLI1", "--reason", "bad feed",
                                                   "--halt-sales", NULL }),
                     0);
    assert_non_null(strstr(r.out, "engaged sku:CLI1"));
    h_run_free(&r);
    cJSON *rec = H_WAIT_KILL(redis, "sku:CLI1", NULL, 5000);
    assert_string_equal(h_jstr(rec, "reason"), "bad feed");
    assert_int_equal(h_jbool(rec, "halt_sales"), 1);
    cJSON_Delete(rec);

    /* ls needs no token. */
    assert_int_equal(ks_cli(&r, NULL, (const char *const[]){ "ls", NULL }), 0);
    const char *row = strstr(r.out, "sku:CLI1");
    if (!row || !strstr(r.out, "SCOPE") || !strstr(row, "admin") || !strstr(row, "yes") ||
        !strstr(row, "bad feed"))
        fail_msg("ls does not show sku:CLI1 (admin, halt yes, bad feed):\n%s", r.out);
    h_run_free(&r);
    assert_int_equal(ks_cli(&r, NULL, (const char *const[]){ "ls", "--json", NULL }), 0);
    assert_true(cJSON_IsArray(r.json));
    bool seen = false;
    const cJSON *e;
    cJSON_ArrayForEach(e, r.json)
        seen |= h_jstr(e, "scope") && strcmp(h_jstr(e, "scope"), "sku:CLI1") == 0;
    assert_true(seen);
    h_run_free(&r);

    /* reset: the reason is required by the CLI. */
    assert_int_equal(ks_cli(&r, env_ok, (const char *const[]){ "reset", "sku:CLI1", NULL }), 2);
    assert_non_null(strstr(r.err, "--reason"));
    h_run_free(&r);
    expect_engaged("sku:CLI1", true);
    assert_int_equal(
        ks_cli(&r, env_ok,
               (const char *const[]){ "reset", "sku:CLI1", "--reason", "feed fixed", NULL }),
        0);
    assert_non_null(strstr(r.out, "reset sku:CLI1"));
    h_run_free(&r);
    expect_engaged("sku:CLI1", false);

    cJSON *a = wait_audit("kill_reset", "sku:CLI1", 5000);
    assert_string_equal(h_jstr(a, "actor"), "cli:tester");
    assert_string_equal(h_jstr(a, "token"), "admin");
    assert_string_equal(h_jstr(a, "remote"), "127.0.0.1");
    assert_string_equal(h_jstr(a, "reason"), "feed fixed");
    cJSON_Delete(a);

    /* The resume call: 500, then one success; its outcome audited. */
    cJSON *done = wait_audit("kill_resume", "sku:CLI1", 10000);
    assert_string_equal(h_jstr(done, "result"), "resumed");
    cJSON_Delete(done);
    assert_int_equal(mock_requests(resume), 2);
    for (size_t i = 0; i < 2; i++) {
        const mock_req *q = mock_request(resume, i);
        assert_int_equal(q->status, i == 0 ? 500 : 200);
        assert_string_equal(q->method, "POST");
        assert_non_null(q->authorization);
        assert_string_equal(q->authorization, "Bearer " PANIC_TOKEN);
        cJSON *b = cJSON_Parse(q->body);
        assert_true(h_jkeys(b, "scope", "reason", "actor", "ts", NULL));
        assert_string_equal(h_jstr(b, "scope"), "sku:CLI1");
        assert_string_equal(h_jstr(b, "reason"), "feed fixed");
        assert_string_equal(h_jstr(b, "actor"), "cli:tester");
        cJSON_Delete(b);
    }
    char *m = H_METRICS(daemon_);
    assert_true(h_metric(m, "nerve_resume_attempts_total", "result=\"failed\"") == 1);
    assert_true(h_metric(m, "nerve_resume_attempts_total", "result=\"ok\"") == 1);
    assert_true(h_metric(m, "nerve_resume_calls_total", "result=\"resumed\"") == 1);
    free(m);

    /* Resetting again: nothing engaged, 404, no second resume call. */
    assert_int_equal(
        ks_cli(&r, env_ok, (const char *const[]){ "reset", "sku:CLI1", "--reason", "again", NULL }),
        1);
    assert_non_null(strstr(r.err, "not engaged"));
    h_run_free(&r);
    assert_int_equal(mock_requests(resume), 2);
    h_pass();
}

/* No token, a wrong token, admin disabled, an unreachable daemon: a clear
 * message, exit 1, nothing changed. */
static void test_refusals(void **state) {
    (void)state;
    h_run r;
    const char *const no_token[] = { "USER=tester", NULL };
    assert_int_equal(
        ks_cli(&r, no_token, (const char *const[]){ "engage", "sku:CLI2", "--reason", "x", NULL }),
        1);
    assert_non_null(strstr(r.err, "NERVE_ADMIN_TOKEN"));
    h_run_free(&r);
    expect_engaged("sku:CLI2", false);

    engage_http("sku:CLI2");
    assert_int_equal(
        ks_cli(&r, no_token, (const char *const[]){ "reset", "sku:CLI2", "--reason", "x", NULL }),
        1);
    assert_non_null(strstr(r.err, "no admin token"));
    h_run_free(&r);
    expect_engaged("sku:CLI2", true);

    const char *const wrong[] = { "NERVE_ADMIN_TOKEN=not-the-token", NULL };
    assert_int_equal(
        ks_cli(&r, wrong, (const char *const[]){ "reset", "sku:CLI2", "--reason", "x", NULL }), 1);
    assert_non_null(strstr(r.err, "401"));
    assert_non_null(strstr(r.err, "refused the admin token"));
    h_run_free(&r);
    expect_engaged("sku:CLI2", true);

    /* A daemon without NERVE_ADMIN_TOKEN: 403, and the daemon's reason. */
    h_daemon *open = h_daemon_startv(redis, false, NULL, 0);
    assert_non_null(open);
    const char *argv[] = { "killswitch", "reset", "sku:CLI2", "--reason",
                           "x",          "--url", open->base, NULL };
    assert_int_equal(h_run_nerve(&r, 15000, env_ok, argv), 1);
    assert_non_null(strstr(r.err, "403"));
    assert_non_null(strstr(r.err, "set NERVE_ADMIN_TOKEN"));
    h_run_free(&r);
    assert_int_equal(h_daemon_stop(open), 0);
    expect_engaged("sku:CLI2", true);

    /* Nothing listening. */
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", h_free_port());
    const char *argv2[] = { "killswitch", "ls", "--url", url, NULL };
    assert_int_equal(h_run_nerve(&r, 15000, NULL, argv2), 1);
    assert_non_null(strstr(r.err, "cannot reach the daemon"));
    assert_non_null(strstr(r.err, "Connection refused"));
    h_run_free(&r);

    /* A scope outside the grammar is refused before anything is sent. */
    assert_int_equal(
        ks_cli(&r, env_ok, (const char *const[]){ "engage", "sku:a b", "--reason", "x", NULL }), 2);
    assert_non_null(strstr(r.err, "invalid scope"));
    h_run_free(&r);

    /* --token-file works where the environment has none. */
    H_WRITE_FILE(h_tmpdir(), "admin.token", H_ADMIN_TOKEN "\n");
    char tf[256];
    snprintf(tf, sizeof tf, "%s/admin.token", h_tmpdir());
    assert_int_equal(ks_cli(&r, no_token,
                            (const char *const[]){ "reset", "sku:CLI2", "--reason", "done",
                                                   "--token-file", tf, NULL }),
                     0);
    h_run_free(&r);
    expect_engaged("sku:CLI2", false);
    h_pass();
}

/* A reset body that is there must be valid: 400 and still engaged. The
 * old body-less DELETE still resets, audited with the token's name as the
 * actor and an empty reason. */
static void test_reset_body(void **state) {
    (void)state;
    engage_http("sku:CLI3");
    char long_reason[300], long_actor[100];
    snprintf(long_reason, sizeof long_reason, "{\"reason\":\"%0257d\"}", 0);
    snprintf(long_actor, sizeof long_actor, "{\"actor\":\"%065d\"}", 0);
    const char *bad[] = { "not json",
                          "[1]",
                          "{\"reason\":5}",
                          "{\"actor\":true}",
                          "{\"reason\":\"x\",\"who\":\"me\"}",
                          "{\"reason\":\"a\\nb\"}",
                          long_reason,
                          long_actor };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        h_resp r;
        h_http(daemon_, "DELETE", "/admin/killswitch/sku:CLI3", bad[i], &r,
               "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
        if (r.status != 400)
            fail_msg("body %s: expected 400, got %ld %s", bad[i], r.status, r.body);
        H_ASSERT_ERROR(&r, 400, "bad_request");
        h_resp_free(&r);
        expect_engaged("sku:CLI3", true);
    }
    /* At the bounds: accepted. */
    char ok[400];
    snprintf(ok, sizeof ok, "{\"reason\":\"%0256d\",\"actor\":\"%064d\"}", 0, 0);
    h_resp r;
    assert_int_equal(h_http(daemon_, "DELETE", "/admin/killswitch/sku:CLI3", ok, &r,
                            "Authorization: Bearer " H_ADMIN_TOKEN, NULL),
                     200);
    h_resp_free(&r);
    expect_engaged("sku:CLI3", false);
    cJSON *a = wait_audit("kill_reset", "sku:CLI3", 5000);
    assert_int_equal(strlen(h_jstr(a, "reason")), 256);
    assert_int_equal(strlen(h_jstr(a, "actor")), 64);
    cJSON_Delete(a);

    engage_http("sku:CLI4");
    assert_int_equal(h_http(daemon_, "DELETE", "/admin/killswitch/sku:CLI4", NULL, &r,
                            "Authorization: Bearer " H_ADMIN_TOKEN, NULL),
                     200);
    h_resp_free(&r);
    a = wait_audit("kill_reset", "sku:CLI4", 5000);
    assert_string_equal(h_jstr(a, "actor"), "admin");
    assert_string_equal(h_jstr(a, "token"), "admin");
    assert_string_equal(h_jstr(a, "reason"), "");
    assert_string_equal(h_jstr(a, "remote"), "127.0.0.1");
    cJSON_Delete(a);

    /* What the caller declares comes after what the daemon knows in the log
     * line, so a quote in it cannot forge the token's name or the address. */
    engage_http("sku:CLI8");
    assert_int_equal(h_http(daemon_, "DELETE", "/admin/killswitch/sku:CLI8",
                            "{\"actor\":\"x\\\" token=forged\",\"reason\":\"y\\\" "
                            "remote=6.6.6.6\"}",
                            &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL),
                     200);
    h_resp_free(&r);
    a = wait_audit("kill_reset", "sku:CLI8", 5000);
    assert_string_equal(h_jstr(a, "actor"), "x\" token=forged");
    assert_string_equal(h_jstr(a, "token"), "admin");
    cJSON_Delete(a);
    char *log = h_read_file(daemon_->log);
    assert_non_null(log);
    if (!strstr(log, "kill switch reset scope=sku:CLI8 token=admin remote=127.0.0.1 actor="))
        fail_msg("no reset line with the token's name and address first in %s", daemon_->log);
    free(log);
    h_pass();
}

/* Named admin tokens (NERVE_ADMIN_TOKENS): the reset is audited with the
 * name of the token used, never the token; panic.dry_run covers the resume
 * call (audited "dry_run", no request). */
static void test_named_tokens_dry_run(void **state)
{
    (void)state;
    static const char *const env[] = { "NERVE_ADMIN_TOKEN=" H_ADMIN_TOKEN,
                                       "NERVE_ADMIN_TOKENS=alice:alice-secret-1,bob:bob-secret-2",
                                       NULL };
    const char *dsets[] = { resume_set, "panic.dry_run=true" };
    h_daemon *d = h_daemon_start_env(redis, env, dsets, 2);
    assert_non_null(d);
    const char *const as_bob[] = { "NERVE_ADMIN_TOKEN=bob-secret-2", "USER=tester", NULL };
    const char *eng[] = { "killswitch", "engage", "sku:CLI5", "--reason", "r", "--url", d->base,
                          NULL };
    h_run r;
    assert_int_equal(h_run_nerve(&r, 15000, as_bob, eng), 0);
    h_run_free(&r);
    cJSON *e = wait_audit("kill_switch", "sku:CLI5", 5000);
    assert_string_equal(h_jstr(e, "actor"), "bob");
    assert_string_equal(h_jstr(e, "token"), "bob");
    assert_string_equal(h_jstr(e, "remote"), "127.0.0.1");
    cJSON_Delete(e);
    const char *rst[] = { "killswitch", "reset", "sku:CLI5", "--reason", "ok now", "--url", d->base,
                          NULL };
    assert_int_equal(h_run_nerve(&r, 15000, as_bob, rst), 0);
    h_run_free(&r);
    cJSON *a = wait_audit("kill_reset", "sku:CLI5", 5000);
    assert_string_equal(h_jstr(a, "token"), "bob");
    assert_string_equal(h_jstr(a, "actor"), "cli:tester");
    cJSON_Delete(a);
    cJSON *done = wait_audit("kill_resume", "sku:CLI5", 5000);
    assert_string_equal(h_jstr(done, "result"), "dry_run");
    cJSON_Delete(done);
    assert_int_equal(mock_requests(resume), 0);

    /* NERVE_ADMIN_TOKEN is still the token named admin; a name is no token. */
    engage_http("sku:CLI6");
    h_resp hr;
    char path[] = "/admin/killswitch/sku:CLI6";
    assert_int_equal(h_http(d, "DELETE", path, NULL, &hr, "Authorization: Bearer bob", NULL), 401);
    h_resp_free(&hr);
    expect_engaged("sku:CLI6", true);
    assert_int_equal(h_http(d, "DELETE", path, NULL, &hr,
                            "Authorization: Bearer " H_ADMIN_TOKEN, NULL),
                     200);
    h_resp_free(&hr);
    a = wait_audit("kill_reset", "sku:CLI6", 5000);
    assert_string_equal(h_jstr(a, "token"), "admin");
    cJSON_Delete(a);
    char logpath[sizeof d->log];
    snprintf(logpath, sizeof logpath, "%s", d->log);
    assert_int_equal(h_daemon_stop(d), 0);
    char *log = h_read_file(logpath);
    assert_non_null(log);
    assert_non_null(strstr(log, "token=bob"));
    assert_null(strstr(log, "secret-"));
    free(log);
    h_pass();
}

/* Without panic.resume_url a reset calls nothing and says so. */
static void test_no_resume_url(void **state)
{
    (void)state;
    h_daemon *d = h_daemon_startv(redis, true, NULL, 0);
    assert_non_null(d);
    engage_http("sku:CLI7");
    const char *rst[] = { "killswitch", "reset", "sku:CLI7", "--reason", "r", "--url", d->base,
                          NULL };
    h_run r;
    assert_int_equal(h_run_nerve(&r, 15000, env_ok, rst), 0);
    assert_non_null(strstr(r.out, "no panic.resume_url: nothing resumed"));
    h_run_free(&r);
    expect_engaged("sku:CLI7", false);
    assert_int_equal(h_daemon_stop(d), 0);
    assert_null(audit_entry("kill_resume", "sku:CLI7"));
    assert_int_equal(mock_requests(resume), 0);
    h_pass();
}

/* The CLI finds the daemon from the config's server.listen. */
static void test_url_from_config(void **state) {
    (void)state;
    char listen[64];
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", daemon_->port);
    const char *argv[] = { "killswitch", "ls", "--set", listen, NULL };
    h_run r;
    assert_int_equal(h_run_nerve(&r, 15000, NULL, argv), 0);
    assert_non_null(strstr(r.out, "SCOPE"));
    h_run_free(&r);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, h_test_teardown)

static int group_setup(void **state) {
    h_init();
    int port = 0;
    if (!(resume = mock_start(&port))) return -1;
    char url[128];
    mock_url(resume, "/resume", url, sizeof url);
    snprintf(resume_set, sizeof resume_set, "panic.resume_url=%s", url);
    h_group_use(&redis, NULL, NULL);
    h_group_hook(&hook, hook_set, sizeof hook_set);
    if (h_group_setup(state) != 0) return -1;
    static const char *const env[] = { "NERVE_ADMIN_TOKEN=" H_ADMIN_TOKEN,
                                       "NERVE_PANIC_TOKEN=" PANIC_TOKEN, NULL };
    daemon_ = h_daemon_start_env(redis, env, sets, 4);
    return daemon_ ? 0 : -1;
}

static int group_teardown(void **state) {
    int rc = h_daemon_stop(daemon_) == 0 ? 0 : -1;
    daemon_ = NULL;
    mock_stop(resume);
    resume = NULL;
    return h_group_teardown(state) == 0 ? rc : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_engage_ls_reset_resume),
        T(test_refusals),
        T(test_reset_body),
        T(test_url_from_config),
        T(test_named_tokens_dry_run),
        T(test_no_resume_url),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
