/* test_killswitch.c -- rule decisions end to end (SPEC §7, §8): a kill
 * decision engages the fleet-wide kill switch once, runs the emergency stop
 * against a real (mock) webhook with backoff and jitter, records the outcome,
 * and halts sales only when it says so; alerts are throttled; the bus
 * survives a Redis restart; a runaway rule never takes the daemon down.
 *
 * Everything runs against a real redis-server and the real daemon. Rules are
 * this file's own, written into the temp dir, so that tuning of the shipped
 * rules never changes what is tested. The test's own hiredis connection
 * subscribes to system_alerts to see what the daemon publishes.
 *
 * The daemons here are started by start_nerve() below rather than by
 * h_daemon_start(): the harness strips NERVE_PANIC_TOKEN from the child's
 * environment and can add only NERVE_ADMIN_TOKEN, while the emergency stop
 * must be seen to send `Authorization: Bearer $NERVE_PANIC_TOKEN`.
 */
#include "harness.h"

#include "../lib/mock_webhook.c"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PANIC_TOKEN "e2e-panic-token"
#define ALERTS "system_alerts"
#define CHANNELS "bus.channels=[inventory_events,sales_events,test_events,loop_events]"
#define MAX_MINE 8
#define MAX_MSGS 512

extern char **environ;

static h_redis *redis;
static mock_server *hook;
static char hook_url[128];

/* --- small helpers -------------------------------------------------------- */

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        fail_msg("fopen %s: %s", path, strerror(errno));
    fputs(text, f);
    if (fclose(f) != 0)
        fail_msg("write %s: %s", path, strerror(errno));
}

/* A fresh directory TMP/NAME holding the one rule file FILE = TEXT; its path
 * into OUT, and the override "rules.dir=..." into SET. */
static void rules_dir(const char *name, const char *file, const char *text,
                      char *out, size_t outlen, char *set, size_t setlen)
{
    snprintf(out, outlen, "%s/%s", h_tmpdir(), name);
    if (mkdir(out, 0700) != 0 && errno != EEXIST)
        fail_msg("mkdir %s: %s", out, strerror(errno));
    write_file(out, file, text);
    snprintf(set, setlen, "rules.dir=%s", out);
}

/* PUBLISH on the test redis: the number of receivers, -1 on error. */
static long long publish(const char *channel, const char *json)
{
    redisReply *rep = h_redis_cmd(redis, "PUBLISH %s %s", channel, json);
    long long n = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    if (rep)
        freeReplyObject(rep);
    return n;
}

/* Wait until someone (the daemon's bus) subscribes to CHANNEL on R. */
static void wait_subscribed(h_redis *r, const char *channel)
{
    double dl = h_deadline(10000);
    while (h_before(dl)) {
        redisReply *rep = h_redis_cmd(r, "PUBSUB NUMSUB %s", channel);
        long long n = 0;
        if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
            rep->element[1]->type == REDIS_REPLY_INTEGER)
            n = rep->element[1]->integer;
        if (rep)
            freeReplyObject(rep);
        if (n > 0)
            return;
        h_nap();
    }
    fail_msg("nobody subscribed to %s within 10 s", channel);
}

/* The kill record of SCOPE in R, parsed (caller deletes), NULL when absent. */
static cJSON *kill_record(h_redis *r, const char *scope)
{
    redisReply *rep = h_redis_cmd(r, "GET " H_PREFIX "kill:%s", scope);
    cJSON *o = NULL;
    if (rep && rep->type == REDIS_REPLY_STRING)
        o = cJSON_Parse(rep->str);
    if (rep)
        freeReplyObject(rep);
    return o;
}

/* Poll until SCOPE's record exists (STATE NULL) or has state STATE; the
 * record (caller deletes), or a failed test after MS. */
static cJSON *wait_kill(h_redis *r, const char *scope, const char *state, int ms)
{
    double dl = h_deadline(ms);
    char last[1024] = "(no record)";
    while (h_before(dl)) {
        cJSON *o = kill_record(r, scope);
        if (o) {
            const char *s = h_jstr(o, "state");
            if (state == NULL || (s && strcmp(s, state) == 0))
                return o;
            char *txt = cJSON_PrintUnformatted(o);
            snprintf(last, sizeof last, "%s", txt ? txt : "?");
            free(txt);
            cJSON_Delete(o);
        }
        h_nap();
    }
    fail_msg("kill record %s%s%s not there within %d ms; last seen: %s", scope,
             state ? " with state " : "", state ? state : "", ms, last);
    return NULL;
}

/* The counter FIELD ("evaluations", "errors") of rule NAME in GET /rules,
 * -1 when the rule is not listed. */
static long long rule_stat(const h_daemon *d, const char *name, const char *field)
{
    h_resp r;
    h_http(d, "GET", "/rules", NULL, &r, NULL);
    long long v = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(r.json, "rules")) {
        const char *n = h_jstr(it, "name");
        if (n && strcmp(n, name) == 0 && !h_jll(it, field, &v))
            v = -1;
    }
    h_resp_free(&r);
    return v;
}

/* Poll until rule NAME's FIELD reaches WANT; fails the test after MS. */
static void wait_rule_stat(const h_daemon *d, const char *name, const char *field,
                           long long want, int ms)
{
    double dl = h_deadline(ms);
    long long v = -1;
    while (h_before(dl)) {
        v = rule_stat(d, name, field);
        if (v >= want)
            break;
        h_nap();
    }
    if (v != want)
        fail_msg("GET /rules: rule %s %s: expected %lld, got %lld", name, field, want, v);
}

/* POST /sale {"sku","qty":1[,"unit_price"]} (PRICE < 0: none). */
static long sell(const h_daemon *d, const char *sku, double price, h_resp *r)
{
    char body[256];
    if (price < 0)
        snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":1}", sku);
    else
        snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":1,\"unit_price\":%g}", sku, price);
    return h_http(d, "POST", "/sale", body, r, NULL);
}

static void expect_sale_ok(const h_daemon *d, const char *sku, double price, long long remaining)
{
    h_resp r;
    sell(d, sku, price, &r);
    long long left = -1;
    if (r.status != 200 || !h_jll(r.json, "stock_remaining", &left) || left != remaining)
        fail_msg("sale of %s: expected 200 with stock_remaining %lld, got %ld %s %s", sku,
                 remaining, r.status, r.body, r.err);
    h_resp_free(&r);
}

/* --- the test's own subscriber on system_alerts --------------------------- */

typedef struct sub {
    redisContext *c;
    cJSON *msg[MAX_MSGS];       /* every payload received, parsed */
    double at[MAX_MSGS];        /* h_now() when it was read */
    size_t n;
} sub;

static sub *alerts;             /* closed by teardown */

static sub *sub_open(h_redis *r, const char *channel)
{
    sub *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->c = h_redis_connect(r);
    assert_non_null(s->c);
    redisReply *rep = redisCommand(s->c, "SUBSCRIBE %s", channel);
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
        fail_msg("SUBSCRIBE %s failed: %s", channel, s->c->errstr);
    freeReplyObject(rep);
    return s;
}

static void sub_close(sub *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        cJSON_Delete(s->msg[i]);
    redisFree(s->c);
    free(s);
}

/* Read every message that arrives within MS (0: only what is already here). */
static void sub_pump(sub *s, int ms)
{
    double dl = h_deadline(ms);
    for (;;) {
        void *reply = NULL;
        if (redisGetReplyFromReader(s->c, &reply) != REDIS_OK)
            fail_msg("subscriber: %s", s->c->errstr);
        if (reply) {
            redisReply *rep = reply;
            if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
                rep->element[0]->type == REDIS_REPLY_STRING &&
                strcmp(rep->element[0]->str, "message") == 0 && s->n < MAX_MSGS) {
                s->msg[s->n] = cJSON_Parse(rep->element[2]->str);
                s->at[s->n] = h_now();
                if (s->msg[s->n] == NULL)
                    fail_msg("an alert that is not JSON: %s", rep->element[2]->str);
                s->n++;
            }
            freeReplyObject(rep);
            continue;
        }
        int left = (int)((dl - h_now()) * 1000);
        if (left < 0)
            left = 0;
        struct pollfd pf = { s->c->fd, POLLIN, 0 };
        int pr = poll(&pf, 1, left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return;
        if (redisBufferRead(s->c) != REDIS_OK)
            fail_msg("subscriber: %s", s->c->errstr);
    }
}

static bool msg_is(const cJSON *m, const char *kind, const char *scope)
{
    const char *k = h_jstr(m, "kind"), *sc = h_jstr(m, "scope");
    return k && strcmp(k, kind) == 0 && (scope == NULL || (sc && strcmp(sc, scope) == 0));
}

static int sub_count(const sub *s, const char *kind, const char *scope)
{
    int n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += msg_is(s->msg[i], kind, scope);
    return n;
}

/* The I-th (0-based) message of KIND and SCOPE, NULL when there is none. */
static const cJSON *sub_find(const sub *s, const char *kind, const char *scope, int i)
{
    for (size_t j = 0; j < s->n; j++)
        if (msg_is(s->msg[j], kind, scope) && i-- == 0)
            return s->msg[j];
    return NULL;
}

/* Pump until at least N messages of KIND and SCOPE arrived; fails after MS. */
static void sub_wait(sub *s, const char *kind, const char *scope, int n, int ms)
{
    double dl = h_deadline(ms);
    while (sub_count(s, kind, scope) < n && h_before(dl))
        sub_pump(s, 20);
    if (sub_count(s, kind, scope) < n)
        fail_msg("expected %d %s alert(s) for scope %s on " ALERTS " within %d ms, saw %d",
                 n, kind, scope ? scope : "*", ms, sub_count(s, kind, scope));
}

/* --- daemons with NERVE_PANIC_TOKEN ---------------------------------------- */

static h_daemon *mine[MAX_MINE];
static bool passed;

static const char *nerve_bin(void)
{
    static char path[PATH_MAX];
    const char *b = getenv("NERVE_BIN");
    if (b == NULL || *b == '\0')
        b = "./nerve";
    if (path[0] == '\0' && realpath(b, path) == NULL)
        return b;
    return path;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Our environment minus what would steer the daemon, plus both tokens. */
static char **daemon_env(void)
{
    static const char *const drop[] = {
        "REDIS_URL=", "NERVE_LISTEN=", "NERVE_RULES_DIR=", "NERVE_PANIC_URL=",
        "NERVE_ADMIN_TOKEN=", "NERVE_PANIC_TOKEN=", "LD_PRELOAD=", "_STDBUF_",
    };
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 3, sizeof *env);
    assert_non_null(env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool skip = false;
        for (size_t j = 0; j < sizeof drop / sizeof drop[0]; j++)
            skip |= strncmp(environ[i], drop[j], strlen(drop[j])) == 0;
        if (!skip)
            env[k++] = environ[i];
    }
    env[k++] = "NERVE_ADMIN_TOKEN=" H_ADMIN_TOKEN;
    env[k++] = "NERVE_PANIC_TOKEN=" PANIC_TOKEN;
    env[k] = NULL;
    return env;
}

/* Start `nerve serve` against R with the overrides SETS (NULL-terminated),
 * both tokens in its environment; wait for /healthz. Fails the test when it
 * does not come up. Stopped by stop_nerve() or the teardown. */
static h_daemon *start_nerve_on(const h_redis *r, const char *const *sets)
{
    static int seq;
    h_init();
    h_daemon *d = calloc(1, sizeof *d);
    assert_non_null(d);
    snprintf(d->log, sizeof d->log, "%s/ks-nerve-%d.log", h_tmpdir(), ++seq);
    const char *root = getenv("NERVE_ROOT");
    for (int attempt = 0; attempt < 3; attempt++) {
        d->port = free_port();
        char listen[64], url[96];
        snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", d->port);
        snprintf(url, sizeof url, "redis.url=redis://127.0.0.1:%d/0", r->port);
        snprintf(d->base, sizeof d->base, "http://127.0.0.1:%d", d->port);
        const char *argv[64];
        size_t n = 0;
        argv[n++] = nerve_bin();
        argv[n++] = "serve";
        argv[n++] = "-c";
        argv[n++] = "config/nerve.yaml";
        argv[n++] = "--set";
        argv[n++] = listen;
        argv[n++] = "--set";
        argv[n++] = url;
        argv[n++] = "--set";
        argv[n++] = "server.pidfile=";
        for (size_t i = 0; sets[i] && n < 60; i++) {
            argv[n++] = "--set";
            argv[n++] = sets[i];
        }
        argv[n] = NULL;
        char **env = daemon_env();
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        dprintf(fd, "### test_killswitch:");
        for (size_t i = 0; i < n; i++)
            dprintf(fd, " %s", argv[i][0] ? argv[i] : "''");
        dprintf(fd, "\n");
        pid_t parent = getpid();
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            setpgid(0, 0);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(127);
            int in = open("/dev/null", O_RDONLY);
            if (in >= 0)
                dup2(in, 0);
            dup2(fd, 1);
            dup2(fd, 2);
            close_range(3, ~0U, 0);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            signal(SIGPIPE, SIG_DFL);
            if (root && *root && chdir(root) != 0)
                _exit(127);
            execve(argv[0], (char *const *)argv, env);
            dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
            _exit(127);
        }
        setpgid(pid, pid);
        close(fd);
        free(env);
        d->pid = pid;
        d->owned = false;
        double dl = h_deadline(10000);
        int status;
        bool exited = false;
        while (h_before(dl)) {
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = true;
                break;
            }
            h_resp hr;
            long st = h_http(d, "GET", "/healthz", NULL, &hr, NULL);
            h_resp_free(&hr);
            if (st == 200) {
                for (int i = 0; i < MAX_MINE; i++)
                    if (mine[i] == NULL) {
                        mine[i] = d;
                        break;
                    }
                return d;
            }
            h_nap();
        }
        if (!exited) {
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
        }
        d->pid = 0;
        printf("start_nerve: the daemon did not come up (attempt %d)\n", attempt + 1);
        h_daemon_log_tail(d, 30);
    }
    free(d);
    fail_msg("could not start %s", nerve_bin());
    return NULL;
}

static h_daemon *start_nerve(const char *const *sets)
{
    return start_nerve_on(redis, sets);
}

/* SIGTERM, wait, free; the exit status (0 expected). */
static int stop_nerve(h_daemon *d)
{
    for (int i = 0; i < MAX_MINE; i++)
        if (mine[i] == d)
            mine[i] = NULL;
    return h_daemon_stop(d);
}

static int setup(void **state)
{
    passed = false;
    mock_set_script(hook, NULL, 0, 200);
    mock_set_delay_ms(hook, 0);
    mock_reset(hook);
    return h_test_setup(state);
}

static void pass(void)
{
    passed = true;
    h_pass();
}

static int teardown(void **state)
{
    for (int i = 0; i < MAX_MINE; i++) {
        if (mine[i]) {
            if (!passed)
                h_daemon_log_tail(mine[i], 40);
            stop_nerve(mine[i]);
        }
    }
    sub_close(alerts);
    alerts = NULL;
    /* A delayed answer in flight must not outlive the test's daemons. */
    mock_set_script(hook, NULL, 0, 200);
    mock_set_delay_ms(hook, 0);
    return h_test_teardown(state);
}

/* --- rules ------------------------------------------------------------------ */

static const char *const INVENTORY_RULE =
    "return {\n"
    "  name = \"e2e_inventory\",\n"
    "  on = { \"inventory_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    local crit = ctx.params.inventory.critical_threshold\n"
    "    if event.type == \"stock_changed\" and type(event.stock_remaining) == \"number\"\n"
    "       and event.stock_remaining <= crit then\n"
    "      return { action = \"kill\", scope = \"sku:\" .. event.sku, halt_sales = false,\n"
    "               reason = string.format(\"stock of %s is %d\", event.sku,\n"
    "                                      math.floor(event.stock_remaining)) }\n"
    "    end\n"
    "  end,\n"
    "}\n";

static const char *const MIN_PRICE_RULE =
    "return {\n"
    "  name = \"e2e_min_price\",\n"
    "  on = { \"sales_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if event.type == \"sale\" and type(event.unit_price) == \"number\"\n"
    "       and event.unit_price < 1 then\n"
    "      return { action = \"kill\", scope = \"sku:\" .. event.sku, halt_sales = true,\n"
    "               reason = \"unit price under 1: pricing error\" }\n"
    "    end\n"
    "  end,\n"
    "}\n";

/* {"kill": SCOPE[, "halt": true]} on test_events engages SCOPE. */
static const char *const KILLER_RULE =
    "return {\n"
    "  name = \"e2e_killer\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if type(event.kill) == \"string\" then\n"
    "      return { action = \"kill\", scope = event.kill, halt_sales = event.halt == true,\n"
    "               reason = \"test event asked to kill \" .. event.kill }\n"
    "    end\n"
    "  end,\n"
    "}\n";

static const char *const ALERT_EVERY_RULE =
    "return {\n"
    "  name = \"e2e_alert_every\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\", level = \"warning\", scope = \"throttle:t5\",\n"
    "             reason = \"event \" .. tostring(event.n) }\n"
    "  end,\n"
    "}\n";

/* --- 1. inventory under the critical threshold ------------------------------ */

static void test_inventory_kill_once(void **state)
{
    (void)state;
    const char *sku = "ks-inv-1", *scope = "sku:ks-inv-1";
    char dir[PATH_MAX], rset[PATH_MAX + 16], uset[200];
    rules_dir("ks-inventory", "inventory.lua", INVENTORY_RULE, dir, sizeof dir, rset, sizeof rset);
    snprintf(uset, sizeof uset, "panic.webhook_url=%s", hook_url);
    const char *sets[] = { rset, uset, CHANNELS, "rules.params.inventory.critical_threshold=5",
                           "panic.max_attempts=3", "panic.backoff_initial_ms=50", NULL };
    h_daemon *d = start_nerve(sets);
    wait_subscribed(redis, "inventory_events");
    alerts = sub_open(redis, ALERTS);
    H_SET_STOCK(d, sku, 8);

    /* 8 -> 5: the third sale reaches the threshold. */
    for (long long left = 7; left >= 5; left--)
        expect_sale_ok(d, sku, -1, left);
    cJSON *rec = wait_kill(redis, scope, NULL, 5000);
    cJSON_Delete(rec);
    sub_wait(alerts, "kill_switch", scope, 1, 5000);
    assert_int_equal(mock_wait_requests(hook, 1, 5000), 0);

    /* The last units still sell (halt_sales=false), then 409. */
    for (long long left = 4; left >= 0; left--)
        expect_sale_ok(d, sku, -1, left);
    h_resp r;
    sell(d, sku, -1, &r);
    H_ASSERT_ERROR(&r, 409, "out_of_stock");
    h_resp_free(&r);

    /* Every stock_changed (7..0) evaluated; six of them said kill; still one
     * engagement, one alert, one webhook call. */
    wait_rule_stat(d, "e2e_inventory", "evaluations", 8, 5000);
    rec = wait_kill(redis, scope, "stopped", 5000);
    sub_pump(alerts, 300);
    assert_int_equal(sub_count(alerts, "kill_switch", scope), 1);
    assert_int_equal(mock_requests(hook), 1);

    const cJSON *a = sub_find(alerts, "kill_switch", scope, 0);
    assert_string_equal(h_jstr(a, "level"), "critical");
    assert_string_equal(h_jstr(a, "rule"), "e2e_inventory");
    assert_string_equal(h_jstr(a, "reason"), "stock of ks-inv-1 is 5");

    /* The webhook: one POST {"scope","reason","rule","ts"} with the token. */
    const mock_req *q = mock_request(hook, 0);
    assert_non_null(q);
    assert_string_equal(q->method, "POST");
    assert_string_equal(q->path, "/hook");
    assert_non_null(q->authorization);
    assert_string_equal(q->authorization, "Bearer " PANIC_TOKEN);
    assert_non_null(q->content_type);
    assert_true(strncmp(q->content_type, "application/json", 16) == 0);
    cJSON *body = cJSON_Parse(q->body);
    if (!h_jkeys(body, "scope", "reason", "rule", "ts", NULL))
        fail_msg("webhook body: expected exactly scope, reason, rule, ts; got %s", q->body);
    assert_string_equal(h_jstr(body, "scope"), scope);
    assert_string_equal(h_jstr(body, "rule"), "e2e_inventory");
    assert_string_equal(h_jstr(body, "reason"), "stock of ks-inv-1 is 5");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(body, "ts");
    assert_true(cJSON_IsNumber(ts));
    double now = (double)time(NULL);
    if (ts->valuedouble < now - 60 || ts->valuedouble > now + 5)
        fail_msg("webhook ts %f is not the time of the kill (now %f)", ts->valuedouble, now);
    cJSON_Delete(body);

    /* The record. */
    assert_string_equal(h_jstr(rec, "scope"), scope);
    assert_string_equal(h_jstr(rec, "rule"), "e2e_inventory");
    assert_string_equal(h_jstr(rec, "reason"), "stock of ks-inv-1 is 5");
    assert_int_equal(h_jbool(rec, "halt_sales"), 0);
    const char *inst = h_jstr(rec, "instance");
    assert_true(inst && *inst);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(rec, "ts")));
    long long attempts = -1;
    assert_true(h_jll(rec, "attempts", &attempts));
    assert_int_equal(attempts, 1);
    cJSON_Delete(rec);

    assert_int_equal(stop_nerve(d), 0);
    pass();
}

/* --- 2. a pricing error halts the SKU's sales -------------------------------- */

static void test_min_price_halts_sales(void **state)
{
    (void)state;
    const char *sku = "ks-price-1", *other = "ks-price-2", *scope = "sku:ks-price-1";
    char dir[PATH_MAX], rset[PATH_MAX + 16];
    rules_dir("ks-price", "price.lua", MIN_PRICE_RULE, dir, sizeof dir, rset, sizeof rset);
    const char *sets[] = { rset, CHANNELS, "panic.dry_run=true", NULL };
    h_daemon *d = start_nerve(sets);
    wait_subscribed(redis, "sales_events");
    H_SET_STOCK(d, sku, 10);
    H_SET_STOCK(d, other, 10);

    expect_sale_ok(d, sku, 2.5, 9);         /* a sane price: nothing happens */
    expect_sale_ok(d, sku, 0.5, 8);         /* the sale itself goes through */
    cJSON *rec = wait_kill(redis, scope, NULL, 5000);
    assert_int_equal(h_jbool(rec, "halt_sales"), 1);
    assert_string_equal(h_jstr(rec, "rule"), "e2e_min_price");
    cJSON_Delete(rec);

    h_resp r;
    sell(d, sku, -1, &r);
    H_ASSERT_ERROR(&r, 423, "sales_halted");
    const char *sc = h_jstr(r.json, "scope");
    if (sc == NULL || strcmp(sc, scope) != 0)
        fail_msg("423 body: expected \"scope\":\"%s\", got %s", scope, r.body);
    h_resp_free(&r);
    expect_sale_ok(d, other, -1, 9);        /* another SKU still sells */
    assert_int_equal(H_GET_STOCK(d, sku), 8);

    /* dry run: recorded as such, never a webhook */
    rec = wait_kill(redis, scope, "dry_run", 5000);
    cJSON_Delete(rec);

    /* Reset needs the token. */
    h_http(d, "DELETE", "/admin/killswitch/sku:ks-price-1", NULL, &r, NULL);
    H_ASSERT_ERROR(&r, 401, "unauthorized");
    h_resp_free(&r);
    h_http(d, "DELETE", "/admin/killswitch/sku:ks-price-1", NULL, &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    assert_int_equal(r.status, 200);
    H_ASSERT_JSON(&r);
    h_resp_free(&r);
    cJSON *gone = kill_record(redis, scope);
    assert_null(gone);

    /* The SKU sells again (poll: other instances learn it over the bus). */
    double dl = h_deadline(5000);
    long st = 0;
    while (h_before(dl)) {
        st = sell(d, sku, -1, &r);
        if (st != 423)
            break;
        h_resp_free(&r);
        h_nap();
    }
    if (st != 200)
        fail_msg("after DELETE /admin/killswitch/%s: expected 200, got %ld %s", scope, st, r.body);
    h_resp_free(&r);
    assert_int_equal(H_GET_STOCK(d, sku), 7);

    h_http(d, "DELETE", "/admin/killswitch/sku:ks-price-1", NULL, &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    H_ASSERT_ERROR(&r, 404, "not_found");
    h_resp_free(&r);

    assert_int_equal(stop_nerve(d), 0);
    pass();
}

/* --- 3. emergency stop: retries, final failure, a hanging webhook ------------ */

/* The gaps between the arrivals of requests 0..N-1 are each within
 * [0, cap_k + TOL] for backoff initial 50 ms, multiplier 2, max 400. */
static void expect_backoff_gaps(size_t n)
{
    const double tol_ms = 150;
    for (size_t k = 1; k < n; k++) {
        const mock_req *a = mock_request(hook, k - 1), *b = mock_request(hook, k);
        assert_non_null(a);
        assert_non_null(b);
        double gap = (double)(b->t_ns - a->t_ns) / 1e6;
        double cap = 50.0 * (double)(1 << (k - 1));
        if (cap > 400)
            cap = 400;
        if (gap < 0 || gap > cap + tol_ms)
            fail_msg("gap between webhook attempts %zu and %zu: %.1f ms, expected within "
                     "[0, %.0f] + %.0f ms", k, k + 1, gap, cap, tol_ms);
    }
}

static void test_emergency_stop_retries(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], uset[200];
    rules_dir("ks-killer", "killer.lua", KILLER_RULE, dir, sizeof dir, rset, sizeof rset);
    snprintf(uset, sizeof uset, "panic.webhook_url=%s", hook_url);
    const char *sets[] = { rset, uset, CHANNELS, "panic.max_attempts=3",
                           "panic.backoff_initial_ms=50", "panic.backoff_max_ms=400",
                           "panic.backoff_multiplier=2", "panic.jitter=true",
                           "panic.timeout_ms=5000", "server.shutdown_grace_ms=2000", NULL };
    h_daemon *d = start_nerve(sets);
    wait_subscribed(redis, "test_events");
    alerts = sub_open(redis, ALERTS);

    /* 500, 500, 200: three attempts, stopped. */
    mock_set_script(hook, (const int[]){ 500, 500 }, 2, 200);
    assert_true(publish("test_events", "{\"kill\":\"retry:a\"}") >= 1);
    cJSON *rec = wait_kill(redis, "retry:a", "stopped", 5000);
    long long attempts = -1;
    assert_true(h_jll(rec, "attempts", &attempts));
    assert_int_equal(attempts, 3);
    cJSON_Delete(rec);
    assert_int_equal(mock_requests(hook), 3);
    assert_int_equal(mock_request(hook, 0)->status, 500);
    assert_int_equal(mock_request(hook, 1)->status, 500);
    assert_int_equal(mock_request(hook, 2)->status, 200);
    expect_backoff_gaps(3);
    for (size_t i = 0; i < 3; i++) {
        cJSON *b = cJSON_Parse(mock_request(hook, i)->body);
        assert_string_equal(h_jstr(b, "scope"), "retry:a");
        cJSON_Delete(b);
    }

    /* Always 500: max_attempts requests, stop_failed, one fatal alert. */
    mock_reset(hook);
    mock_set_script(hook, NULL, 0, 500);
    assert_true(publish("test_events", "{\"kill\":\"retry:b\"}") >= 1);
    rec = wait_kill(redis, "retry:b", "stop_failed", 5000);
    assert_true(h_jll(rec, "attempts", &attempts));
    assert_int_equal(attempts, 3);
    cJSON_Delete(rec);
    assert_int_equal(mock_requests(hook), 3);
    expect_backoff_gaps(3);
    sub_wait(alerts, "critical_failure", "retry:b", 1, 3000);
    sub_pump(alerts, 300);
    assert_int_equal(sub_count(alerts, "critical_failure", "retry:b"), 1);
    assert_string_equal(h_jstr(sub_find(alerts, "critical_failure", "retry:b", 0), "level"), "fatal");
    assert_int_equal(sub_count(alerts, "critical_failure", "retry:a"), 0);
    assert_int_equal(sub_count(alerts, "kill_switch", "retry:a"), 1);
    assert_int_equal(sub_count(alerts, "kill_switch", "retry:b"), 1);
    assert_int_equal(mock_requests(hook), 3);

    /* A webhook that hangs 3 s (timeout 5 s) delays no other engagement. */
    mock_reset(hook);
    mock_set_steps(hook, (const mock_step[]){ { 200, 3000 } }, 1, (mock_step){ 200, 0 });
    assert_true(publish("test_events", "{\"kill\":\"slow:a\"}") >= 1);
    assert_int_equal(mock_wait_requests(hook, 1, 5000), 0);
    double t0 = h_now();
    assert_true(publish("test_events", "{\"kill\":\"slow:b\"}") >= 1);
    rec = wait_kill(redis, "slow:b", NULL, 5000);
    double took = h_now() - t0;
    cJSON_Delete(rec);
    if (took >= 1.0)
        fail_msg("slow:b engaged %.2f s after its event while the webhook hung: expected < 1 s", took);
    sub_wait(alerts, "kill_switch", "slow:b", 1, 1000);
    rec = kill_record(redis, "slow:a");
    assert_non_null(rec);
    assert_string_equal(h_jstr(rec, "state"), "stopping");  /* still in the hanging call */
    cJSON_Delete(rec);
    cJSON_Delete(wait_kill(redis, "slow:a", "stopped", 8000));
    cJSON_Delete(wait_kill(redis, "slow:b", "stopped", 8000));
    assert_int_equal(mock_requests(hook), 2);

    assert_int_equal(stop_nerve(d), 0);
    pass();
}

/* --- 4. engaging by hand ---------------------------------------------------- */

static void test_admin_engage(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], uset[200];
    rules_dir("ks-killer", "killer.lua", KILLER_RULE, dir, sizeof dir, rset, sizeof rset);
    snprintf(uset, sizeof uset, "panic.webhook_url=%s", hook_url);
    const char *sets[] = { rset, uset, CHANNELS, NULL };
    h_daemon *d = start_nerve(sets);
    const char *body = "{\"scope\":\"campaign:e2e-4\",\"reason\":\"operator says stop\"}";
    h_resp r;

    h_http(d, "POST", "/admin/killswitch", body, &r, NULL);
    H_ASSERT_ERROR(&r, 401, "unauthorized");
    h_resp_free(&r);
    h_http(d, "POST", "/admin/killswitch", body, &r, "Authorization: Bearer nope", NULL);
    H_ASSERT_ERROR(&r, 401, "unauthorized");
    h_resp_free(&r);
    assert_null(kill_record(redis, "campaign:e2e-4"));
    assert_int_equal(mock_requests(hook), 0);

    h_http(d, "POST", "/admin/killswitch", body, &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    assert_int_equal(r.status, 200);
    H_ASSERT_JSON(&r);
    assert_string_equal(h_jstr(r.json, "scope"), "campaign:e2e-4");
    if (h_jbool(r.json, "already_engaged") != 0)
        fail_msg("first engagement: expected \"already_engaged\": false, got %s", r.body);
    h_resp_free(&r);

    h_http(d, "GET", "/killswitch", NULL, &r, NULL);
    assert_int_equal(r.status, 200);
    const cJSON *found = NULL, *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(r.json, "engaged")) {
        const char *s = h_jstr(it, "scope");
        if (s && strcmp(s, "campaign:e2e-4") == 0)
            found = it;
    }
    if (found == NULL)
        fail_msg("GET /killswitch does not list campaign:e2e-4: %s", r.body);
    assert_string_equal(h_jstr(found, "reason"), "operator says stop");
    h_resp_free(&r);

    h_http(d, "POST", "/admin/killswitch", body, &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    assert_int_equal(r.status, 200);
    if (h_jbool(r.json, "already_engaged") != 1)
        fail_msg("second engagement: expected \"already_engaged\": true, got %s", r.body);
    h_resp_free(&r);

    cJSON_Delete(wait_kill(redis, "campaign:e2e-4", "stopped", 5000));
    assert_int_equal(mock_requests(hook), 1);
    cJSON *b = cJSON_Parse(mock_request(hook, 0)->body);
    assert_string_equal(h_jstr(b, "scope"), "campaign:e2e-4");
    assert_string_equal(h_jstr(b, "reason"), "operator says stop");
    cJSON_Delete(b);
    assert_string_equal(mock_request(hook, 0)->authorization, "Bearer " PANIC_TOKEN);

    assert_int_equal(stop_nerve(d), 0);
    pass();
}

/* --- 5. alert throttling ------------------------------------------------------ */

static void test_alert_throttling(void **state)
{
    (void)state;
    const int window_s = 2;
    char dir[PATH_MAX], rset[PATH_MAX + 16];
    rules_dir("ks-throttle", "every.lua", ALERT_EVERY_RULE, dir, sizeof dir, rset, sizeof rset);
    const char *sets[] = { rset, CHANNELS, "alerts.throttle_s=2", NULL };
    h_daemon *d = start_nerve(sets);
    wait_subscribed(redis, "test_events");
    alerts = sub_open(redis, ALERTS);

    for (int i = 1; i <= 10; i++) {
        char ev[64];
        snprintf(ev, sizeof ev, "{\"n\":%d}", i);
        assert_true(publish("test_events", ev) >= 1);
    }
    wait_rule_stat(d, "e2e_alert_every", "evaluations", 10, 5000);
    sub_wait(alerts, "rule_alert", "throttle:t5", 1, 2000);
    sub_pump(alerts, 100);
    size_t first = 0;
    while (first < alerts->n && !msg_is(alerts->msg[first], "rule_alert", "throttle:t5"))
        first++;
    double t_first = alerts->at[first];
    if (h_now() - t_first >= window_s)
        fail_msg("the 10 events took longer than the %d s window: cannot judge throttling", window_s);
    assert_int_equal(sub_count(alerts, "rule_alert", "throttle:t5"), 1);
    const cJSON *a = sub_find(alerts, "rule_alert", "throttle:t5", 0);
    assert_string_equal(h_jstr(a, "reason"), "event 1");
    assert_string_equal(h_jstr(a, "level"), "warning");
    assert_string_equal(h_jstr(a, "rule"), "e2e_alert_every");
    long long sup = 0;
    if (cJSON_HasObjectItem(a, "suppressed") && (!h_jll(a, "suppressed", &sup) || sup != 0))
        fail_msg("first alert: expected no or zero \"suppressed\", got %s",
                 cJSON_PrintUnformatted(a));

    /* Past the window (a time contract, not synchronisation): still one. */
    while (h_now() < t_first + window_s + 0.3)
        sub_pump(alerts, 50);
    assert_int_equal(sub_count(alerts, "rule_alert", "throttle:t5"), 1);

    assert_true(publish("test_events", "{\"n\":11}") >= 1);
    sub_wait(alerts, "rule_alert", "throttle:t5", 2, 3000);
    a = sub_find(alerts, "rule_alert", "throttle:t5", 1);
    assert_string_equal(h_jstr(a, "reason"), "event 11");
    if (!h_jll(a, "suppressed", &sup) || sup != 9) {
        char *txt = cJSON_PrintUnformatted(a);
        fail_msg("alert after the window: expected \"suppressed\": 9, got %s", txt);
    }
    sub_pump(alerts, 100);
    assert_int_equal(sub_count(alerts, "rule_alert", "throttle:t5"), 2);

    assert_int_equal(stop_nerve(d), 0);
    pass();
}

/* --- 6. the bus survives a Redis restart ------------------------------------ */

static void test_bus_redis_restart(void **state)
{
    (void)state;
    h_redis *r6 = h_redis_start(false);     /* the test's own: restarted below */
    assert_non_null(r6);
    char dir[PATH_MAX], rset[PATH_MAX + 16];
    rules_dir("ks-killer", "killer.lua", KILLER_RULE, dir, sizeof dir, rset, sizeof rset);
    const char *sets[] = { rset, CHANNELS, "panic.dry_run=true", "redis.reconnect_max_ms=500", NULL };
    h_daemon *d = start_nerve_on(r6, sets);
    wait_subscribed(r6, "test_events");
    pid_t pid = d->pid;

    redisReply *rep = h_redis_cmd(r6, "PUBLISH test_events %s", "{\"x\":1}");
    assert_non_null(rep);
    freeReplyObject(rep);
    wait_rule_stat(d, "e2e_killer", "evaluations", 1, 5000);

    assert_int_equal(h_redis_restart(r6), 0);

    /* Publish until an event reaches a subscriber: the daemon's bus is back.
     * Events published before that reach nobody and are not counted. */
    double dl = h_deadline(15000);
    long long got = 0;
    while (h_before(dl)) {
        rep = h_redis_cmd(r6, "PUBLISH test_events %s", "{\"x\":2}");
        got = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
        if (rep)
            freeReplyObject(rep);
        if (got >= 1)
            break;
        h_nap();
    }
    if (got < 1)
        fail_msg("the daemon did not resubscribe to test_events within 15 s of the redis restart");
    wait_rule_stat(d, "e2e_killer", "evaluations", 2, 5000);

    /* And decisions act on the new server: the first kill decided after the
     * restart engages (judged after the sales check, so that a failure here
     * still says whether sales came back). */
    rep = h_redis_cmd(r6, "PUBLISH test_events %s", "{\"kill\":\"bus:after-restart\"}");
    assert_non_null(rep);
    freeReplyObject(rep);
    bool engaged = false;
    dl = h_deadline(5000);
    while (!engaged && h_before(dl)) {
        cJSON *rec = kill_record(r6, "bus:after-restart");
        engaged = rec != NULL;
        cJSON_Delete(rec);
        if (!engaged)
            h_nap();
    }

    /* Sales recover by themselves (503 allowed while reconnecting). */
    dl = h_deadline(10000);
    long st = 0;
    h_resp r;
    while (h_before(dl)) {
        st = h_http(d, "PUT", "/admin/stock/ks-bus-1", "{\"stock\":3}", &r,
                    "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
        h_resp_free(&r);
        if (st == 200)
            break;
        if (st != 503)
            fail_msg("PUT /admin/stock after the restart: %ld", st);
        h_nap();
    }
    assert_int_equal(st, 200);
    dl = h_deadline(10000);
    while (h_before(dl)) {
        st = sell(d, "ks-bus-1", -1, &r);
        h_resp_free(&r);
        if (st != 503)
            break;
        h_nap();
    }
    if (st != 200)
        fail_msg("a sale after the redis restart: expected 200 (after 503s), got %ld", st);
    if (!engaged)
        fail_msg("the kill decided after the redis restart (the daemon's bus already back and "
                 "evaluating) never engaged: no record bus:after-restart within 5 s");

    assert_int_equal(d->pid, pid);
    assert_int_equal(h_daemon_alive(d), 1);
    assert_int_equal(stop_nerve(d), 0);
    pass();
}

/* --- 7. a runaway rule never takes the daemon down --------------------------- */

static const char *const GOOD_RULE =
    "return {\n"
    "  name = \"e2e_good\",\n"
    "  on = { \"loop_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\", level = \"info\", scope = \"good:\" .. event.id,\n"
    "             reason = \"still here\" }\n"
    "  end,\n"
    "}\n";

static const char *const LOOP_RULE =
    "return {\n"
    "  name = \"e2e_loop\",\n"
    "  on = { \"loop_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    while true do end\n"
    "  end,\n"
    "}\n";

static const char *const PCALL_LOOP_RULE =
    "return {\n"
    "  name = \"e2e_pcall_loop\",\n"
    "  on = { \"loop_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    pcall(function() while true do end end)\n"
    "    return { action = \"alert\", level = \"critical\", scope = \"swallowed:\" .. event.id,\n"
    "             reason = \"pcall swallowed the instruction limit\" }\n"
    "  end,\n"
    "}\n";

static const char *const MEMORY_RULE =
    "return {\n"
    "  name = \"e2e_memory\",\n"
    "  on = { \"loop_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    local s = string.rep(\"x\", 1 << 30)\n"
    "    return { action = \"alert\", level = \"critical\", scope = \"swallowed:\" .. event.id,\n"
    "             reason = \"allocated \" .. #s }\n"
    "  end,\n"
    "}\n";

static void test_sandbox_survival(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16];
    rules_dir("ks-sandbox", "good.lua", GOOD_RULE, dir, sizeof dir, rset, sizeof rset);
    write_file(dir, "loop.lua", LOOP_RULE);
    write_file(dir, "pcall_loop.lua", PCALL_LOOP_RULE);
    write_file(dir, "memory.lua", MEMORY_RULE);
    const char *sets[] = { rset, CHANNELS, "rules.instruction_limit=200000",
                           "alerts.throttle_s=60", NULL };
    h_daemon *d = start_nerve(sets);
    wait_subscribed(redis, "loop_events");
    alerts = sub_open(redis, ALERTS);

    for (int i = 1; i <= 3; i++) {
        char ev[64];
        snprintf(ev, sizeof ev, "{\"id\":\"e%d\"}", i);
        assert_true(publish("loop_events", ev) >= 1);
    }
    sub_wait(alerts, "rule_alert", "good:e1", 1, 10000);
    sub_wait(alerts, "rule_alert", "good:e2", 1, 10000);
    sub_wait(alerts, "rule_alert", "good:e3", 1, 10000);
    wait_rule_stat(d, "e2e_loop", "errors", 3, 10000);
    wait_rule_stat(d, "e2e_pcall_loop", "errors", 3, 10000);
    wait_rule_stat(d, "e2e_memory", "errors", 3, 10000);
    assert_int_equal(rule_stat(d, "e2e_good", "evaluations"), 3);
    assert_int_equal(rule_stat(d, "e2e_good", "errors"), 0);
    sub_pump(alerts, 100);
    for (int i = 1; i <= 3; i++) {
        char scope[32];
        snprintf(scope, sizeof scope, "swallowed:e%d", i);
        if (sub_count(alerts, "rule_alert", scope) != 0)
            fail_msg("a rule over its limits still decided (%s)", scope);
    }

    /* Still serving. */
    h_resp r;
    assert_int_equal(h_http(d, "GET", "/healthz", NULL, &r, NULL), 200);
    h_resp_free(&r);
    H_SET_STOCK(d, "ks-sandbox-1", 2);
    expect_sale_ok(d, "ks-sandbox-1", -1, 1);
    assert_int_equal(h_daemon_alive(d), 1);
    assert_int_equal(stop_nerve(d), 0);
    pass();
}

/* --- main ----------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    redis = h_redis_start(false);
    if (redis == NULL)
        return -1;
    int port = 0;
    hook = mock_start(&port);
    if (hook == NULL || mock_url(hook, "/hook", hook_url, sizeof hook_url) != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    mock_stop(hook);
    h_redis_free(redis);
    return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_inventory_kill_once),
        T(test_min_price_halts_sales),
        T(test_emergency_stop_retries),
        T(test_admin_engage),
        T(test_alert_throttling),
        T(test_bus_redis_restart),
        T(test_sandbox_survival),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
