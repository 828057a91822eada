/* test_stress.c -- `nerve stress` end to end (SPEC §9): the real binary
 * ($NERVE_BIN) run as a child against the real daemon and a throwaway
 * redis-server, its JSON report checked against Redis' own records; against
 * a deliberately broken server that sells twice its stock, which it must
 * catch; and its setup errors, compared exactly.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* One translation unit with the test: the Makefile does not link tests/lib. */
#include "../lib/bad_server.c"

#define STRESS_TIMEOUT_MS 120000

extern char **environ;

static h_redis *redis;
static h_daemon *daemon_;

/* --- running `nerve stress` ------------------------------------------- */

typedef struct run {
    int rc;                     /* exit status; -1: killed or did not run */
    char *out, *err;            /* whole stdout and stderr */
    cJSON *json;                /* stdout parsed, NULL when not JSON */
} run;

static void run_free(run *r)
{
    free(r->out);
    free(r->err);
    cJSON_Delete(r->json);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    if (s && n > 0 && fread(s, 1, (size_t)n, f) != (size_t)n)
        s[0] = '\0';
    fclose(f);
    return s;
}

static const char *nerve_bin(void)
{
    const char *b = getenv("NERVE_BIN");
    return b && *b ? b : "./nerve";
}

/* Run `nerve stress ARGS...` (NULL-terminated) with NERVE_ADMIN_TOKEN set to
 * TOKEN, or unset when TOKEN is NULL; wait for it with a deadline. */
static void stress_at(run *r, const char *token, const char *file, int line, ...)
{
    memset(r, 0, sizeof *r);
    r->rc = -1;
    const char *argv[64];
    int argc = 0;
    argv[argc++] = nerve_bin();
    argv[argc++] = "stress";
    va_list ap;
    va_start(ap, line);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL && argc < 63;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;

    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "NERVE_ADMIN_TOKEN=", 18) != 0)
            env[k++] = environ[i];
    char tok[256];
    if (token) {
        snprintf(tok, sizeof tok, "NERVE_ADMIN_TOKEN=%s", token);
        env[k++] = tok;
    }

    char out[300], err[300];
    static int seq;
    snprintf(out, sizeof out, "%s/stress-%d.out", h_tmpdir(), ++seq);
    snprintf(err, sizeof err, "%s/stress-%d.err", h_tmpdir(), seq);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
            _exit(126);
        execve(argv[0], (char *const *)argv, env);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    free(env);
    if (pid < 0)
        h_fail_at(file, line, "fork: %s", strerror(errno));
    int status = 0;
    double deadline = h_deadline(STRESS_TIMEOUT_MS);
    pid_t w;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && h_before(deadline))
        h_nap();
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    r->out = slurp(out);
    r->err = slurp(err);
    r->json = cJSON_Parse(r->out);
    if (w == 0)
        h_fail_at(file, line, "nerve stress did not finish within %d ms; stderr:\n%s",
                  STRESS_TIMEOUT_MS, r->err);
    r->rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
#define STRESS(r, token, ...) stress_at((r), (token), __FILE__, __LINE__, __VA_ARGS__, NULL)

/* A number of the JSON report (fails the test when absent). */
static long long jnum_at(const run *r, const cJSON *o, const char *key, const char *file, int line)
{
    long long v;
    if (!h_jll(o, key, &v))
        h_fail_at(file, line, "report has no integer \"%s\": %s", key, r->out);
    return v;
}
#define JNUM(r, key) jnum_at((r), (r)->json, (key), __FILE__, __LINE__)

static void expect_rc_at(const run *r, int rc, const char *file, int line)
{
    if (r->rc != rc)
        h_fail_at(file, line, "nerve stress exited %d, expected %d\nstdout:\n%s\nstderr:\n%s", r->rc,
                  rc, r->out, r->err);
}
#define EXPECT_RC(r, rc) expect_rc_at((r), (rc), __FILE__, __LINE__)

/* Every invariant of the report PASS (or skipped when KILL is false). */
static void expect_all_pass_at(const run *r, bool kill, const char *file, int line)
{
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(r->json, "invariants"), *c;
    if (!cJSON_IsArray(inv) || cJSON_GetArraySize(inv) != 5)
        h_fail_at(file, line, "report without 5 invariants: %s", r->out);
    cJSON_ArrayForEach(c, inv) {
        const char *name = h_jstr(c, "name"), *res = h_jstr(c, "result");
        bool want_skip = !kill && name && strcmp(name, "kill_switch") == 0;
        if (!res || strcmp(res, want_skip ? "skipped" : "PASS") != 0)
            h_fail_at(file, line, "invariant %s: %s (%s)", name ? name : "?", res ? res : "?",
                      h_jstr(c, "detail") ? h_jstr(c, "detail") : "");
    }
    if (h_jbool(r->json, "pass") != 1)
        h_fail_at(file, line, "report says pass != true: %s", r->out);
}
#define EXPECT_ALL_PASS(r, kill) expect_all_pass_at((r), (kill), __FILE__, __LINE__)

/* KEYS PREFIX{SKU}:order:* counted (a test-sized keyspace). */
static long long redis_orders(const char *sku)
{
    redisReply *rep = h_redis_cmd(redis, "KEYS %s{%s}:order:*", H_PREFIX, sku);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    long long n = (long long)rep->elements;
    freeReplyObject(rep);
    return n;
}

static const cJSON *sku_entry(const run *r, int i)
{
    const cJSON *skus = cJSON_GetObjectItemCaseSensitive(r->json, "skus");
    assert_true(cJSON_IsArray(skus));
    const cJSON *e = cJSON_GetArrayItem(skus, i);
    assert_non_null(e);
    return e;
}

/* A port nothing listens on (bound, read, released). */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* --- against nerve ------------------------------------------------------- */

/* 500 units, 32 clients, 2000 requests: exactly 500 sold, stock 0, and the
 * report agrees with Redis to the unit and to the order. */
static void test_stress_sells_exactly_the_stock(void **state)
{
    (void)state;
    const char *sku = "stress-a";
    run r;
    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", sku, "--stock", "500",
           "--clients", "32", "--requests", "2000", "--kill-check", "--json");
    EXPECT_RC(&r, 0);
    assert_non_null(r.json);
    long long ok = JNUM(&r, "ok"), qty = JNUM(&r, "qty");
    assert_int_equal(JNUM(&r, "requests"), 2000);
    assert_int_equal(qty, 1);
    assert_int_equal(ok * qty, 500);
    assert_int_equal(JNUM(&r, "out_of_stock"), 2000 - ok);
    assert_int_equal(JNUM(&r, "errors"), 0);
    assert_int_equal(JNUM(&r, "sold"), 500);
    assert_int_equal(JNUM(&r, "initial_stock"), 500);
    assert_int_equal(JNUM(&r, "final_stock"), 0);
    EXPECT_ALL_PASS(&r, true);
    const cJSON *lat = cJSON_GetObjectItemCaseSensitive(r.json, "latency_ms");
    assert_int_equal(jnum_at(&r, lat, "samples", __FILE__, __LINE__), 2000);

    /* Redis' own records: the stock key, one order record per 200, and the
     * kill switch the inventory rule engaged at the critical threshold. */
    assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
    assert_int_equal(redis_orders(sku), ok);
    redisReply *k = h_redis_cmd(redis, "EXISTS %skill:sku:%s", H_PREFIX, sku);
    assert_non_null(k);
    assert_int_equal(k->integer, 1);
    freeReplyObject(k);
    run_free(&r);

    /* Again: the kill switch left engaged is reset first, the stock set
     * anew, and the order ids of the first run do not collide. */
    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", sku, "--stock", "300",
           "--clients", "8", "--requests", "400", "--kill-check", "--json", "--quiet");
    EXPECT_RC(&r, 0);
    assert_int_equal(JNUM(&r, "ok"), 300);
    assert_int_equal(JNUM(&r, "duplicates"), 0);
    EXPECT_ALL_PASS(&r, true);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
    assert_int_equal(redis_orders(sku), 500 + 300);
    run_free(&r);
    h_pass();
}

/* --skus, --qty and --duration: every SKU sold out, qty units at a time. */
static void test_stress_many_skus_for_a_duration(void **state)
{
    (void)state;
    run r;
    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", "stress-m", "--skus", "4",
           "--qty", "2", "--stock", "100", "--clients", "16", "--duration", "1", "--json");
    EXPECT_RC(&r, 0);
    EXPECT_ALL_PASS(&r, false);
    assert_int_equal(JNUM(&r, "ok"), 4 * 50);
    assert_int_equal(JNUM(&r, "sold"), 400);
    assert_int_equal(JNUM(&r, "initial_stock"), 400);
    assert_int_equal(JNUM(&r, "final_stock"), 0);
    assert_true(JNUM(&r, "requests") > 200);
    for (int i = 0; i < 4; i++) {
        char sku[32];
        snprintf(sku, sizeof sku, "stress-m-%d", i);
        const cJSON *e = sku_entry(&r, i);
        assert_string_equal(h_jstr(e, "sku"), sku);
        assert_int_equal(jnum_at(&r, e, "sold", __FILE__, __LINE__), 100);
        assert_int_equal(jnum_at(&r, e, "final_stock", __FILE__, __LINE__), 0);
        assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
        assert_int_equal(redis_orders(sku), 50);
    }
    run_free(&r);
    h_pass();
}

/* Two instances on one Redis: both serve, and together they sell exactly. */
static void test_stress_fleet(void **state)
{
    (void)state;
    h_daemon *second = h_daemon_start(redis, NULL);
    assert_non_null(second);
    const char *sku = "stress-f";
    run r;
    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--url", second->base, "--sku", sku,
           "--stock", "700", "--clients", "24", "--requests", "3000", "--json");
    EXPECT_RC(&r, 0);
    EXPECT_ALL_PASS(&r, false);
    assert_int_equal(JNUM(&r, "ok"), 700);
    const cJSON *urls = cJSON_GetObjectItemCaseSensitive(r.json, "urls"), *u;
    assert_int_equal(cJSON_GetArraySize(urls), 2);
    long long total = 0;
    cJSON_ArrayForEach(u, urls) {
        long long n = jnum_at(&r, u, "requests", __FILE__, __LINE__);
        assert_true(n > 0);
        total += n;
    }
    assert_int_equal(total, 3000);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
    assert_int_equal(redis_orders(sku), 700);
    run_free(&r);
    assert_int_equal(h_daemon_stop(second), 0);
    h_pass();
}

/* --- against a server that oversells -------------------------------------- */

static void test_stress_catches_an_oversell(void **state)
{
    (void)state;
    int port;
    assert_int_equal(bad_server_start(&port), 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    run r;
    STRESS(&r, "any", "--url", url, "--sku", "bad", "--stock", "100", "--clients", "8",
           "--requests", "500", "--json");
    bad_server_stop();
    EXPECT_RC(&r, 1);
    assert_string_equal(r.err, "INVARIANT FAILED: sold (200) != initial - final (100)\n");
    assert_int_equal(JNUM(&r, "ok"), 200);
    assert_int_equal(JNUM(&r, "final_stock"), 0);
    assert_int_equal(h_jbool(r.json, "pass"), 0);
    run_free(&r);

    /* The table says it too. */
    assert_int_equal(bad_server_start(&port), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    STRESS(&r, "any", "--url", url, "--sku", "bad", "--stock", "10", "--clients", "2",
           "--requests", "50");
    bad_server_stop();
    EXPECT_RC(&r, 1);
    assert_non_null(strstr(r.out, "FAIL  sold == initial - final"));
    assert_string_equal(r.err, "INVARIANT FAILED: sold (20) != initial - final (10)\n");
    run_free(&r);
    h_pass();
}

/* --- setup errors ------------------------------------------------------------ */

static void expect_setup_error_at(run *r, const char *want, bool prefix, const char *file, int line)
{
    expect_rc_at(r, 2, file, line);
    if (prefix ? strncmp(r->err, want, strlen(want)) != 0 : strcmp(r->err, want) != 0)
        h_fail_at(file, line, "stderr:\n%s\nexpected%s:\n%s", r->err, prefix ? " to start with" : "",
                  want);
    if (r->out[0])
        h_fail_at(file, line, "a setup error printed a report: %s", r->out);
    run_free(r);
}
#define EXPECT_SETUP_ERROR(r, want) expect_setup_error_at((r), (want), false, __FILE__, __LINE__)
#define EXPECT_SETUP_ERROR_PREFIX(r, want) expect_setup_error_at((r), (want), true, __FILE__, __LINE__)

static void test_stress_setup_errors(void **state)
{
    (void)state;
    run r;
    char url[64], want[256];

    STRESS(&r, H_ADMIN_TOKEN, "--url", "localhost:8011", "--sku", "e", "--stock", "5",
           "--clients", "2", "--requests", "10");
    EXPECT_SETUP_ERROR(&r, "nerve stress: --url: expected http://HOST:PORT, got 'localhost:8011'\n");

    int port = dead_port();
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    STRESS(&r, H_ADMIN_TOKEN, "--url", url, "--sku", "e", "--stock", "5", "--clients", "2",
           "--requests", "10");
    snprintf(want, sizeof want,
             "nerve stress: cannot connect to %s: connection refused — is nerve running?\n", url);
    EXPECT_SETUP_ERROR(&r, want);

    STRESS(&r, NULL, "--url", daemon_->base, "--sku", "e", "--stock", "5", "--clients", "2",
           "--requests", "10");
    EXPECT_SETUP_ERROR(&r, "nerve stress: no admin token: set NERVE_ADMIN_TOKEN or pass --token\n");

    STRESS(&r, NULL, "--url", daemon_->base, "--sku", "e", "--stock", "5", "--clients", "2",
           "--requests", "10", "--token", "wrong-token");
    snprintf(want, sizeof want, "nerve stress: admin token rejected by %s (HTTP 401", daemon_->base);
    EXPECT_SETUP_ERROR_PREFIX(&r, want);

    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", "e", "--stock", "5",
           "--clients", "3x", "--requests", "10");
    EXPECT_SETUP_ERROR(&r, "nerve stress: --clients: expected an integer in 1..10000, got '3x'\n");

    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", "e", "--stock", "5",
           "--clients", "2", "--requests", "10", "--frobnicate");
    EXPECT_SETUP_ERROR(&r, "nerve stress: unknown option --frobnicate (see nerve stress --help)\n");

    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", "e", "--stock", "5",
           "--clients", "2");
    EXPECT_SETUP_ERROR(&r, "nerve stress: give either --requests R or --duration SECONDS\n");

    STRESS(&r, H_ADMIN_TOKEN, "--help");
    EXPECT_RC(&r, 0);
    assert_int_equal(strncmp(r.out, "usage: nerve stress --url URL", 29), 0);
    assert_string_equal(r.err, "");
    run_free(&r);

    /* None of these sold anything or set a stock. */
    assert_int_equal(H_REDIS_STOCK(redis, "e"), -1);
    h_pass();
}

/* --- main ------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    redis = h_redis_start(false);
    if (redis == NULL)
        return -1;
    daemon_ = h_daemon_start(redis, NULL);
    return daemon_ ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = daemon_ ? h_daemon_stop(daemon_) : 0;
    h_redis_free(redis);
    return rc == 0 ? 0 : -1;
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_stress_sells_exactly_the_stock),
        T(test_stress_many_skus_for_a_duration),
        T(test_stress_fleet),
        T(test_stress_catches_an_oversell),
        T(test_stress_setup_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
