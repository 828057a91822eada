/* test_decisions.c -- the decision log (issue 13, item 1): every decision
 * (alert, kill, reject) and every rule error is appended to the capped
 * stream nerve:decisions with its rule, channel, event id, generation and
 * event, read back through GET /decisions and `nerve decisions`.
 *
 * Before this, a reject was only counted and a rule error only logged:
 * GET /decisions answered 404 and `nerve decisions` was an unknown command
 * (exit 2), so every test here fails on the old daemon.
 *
 * One redis-server and one daemon for the group, with this file's own rule
 * directory: the shipped inventory rule (copied), a sale_request rule that
 * rejects SKUs starting with "rej", a rule that echoes a test event's text
 * as an alert reason, and one that fails on demand.
 */
#include "harness.h"

#include "nerve/jsonck.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static h_redis *redis;
static h_daemon *daemon_;
static char rules_set[PATH_MAX + 32];
static char url_set[160];
static const char *group_sets[] = {
    rules_set,
    "bus.channels=[inventory_events,sales_events,test_events]",
    NULL,
};

static const char *const GATE_RULE =
    "return {\n"
    "  name = \"sale_gate\",\n"
    "  on = { \"sale_request\" },\n"
    "  evaluate = function(e, ctx)\n"
    "    if e.sku:sub(1, 3) == \"rej\" then\n"
    "      return { action = \"reject\", reason = \"no sale of \" .. e.sku }\n"
    "    end\n"
    "  end,\n"
    "}\n";

static const char *const ECHO_RULE =
    "return {\n"
    "  name = \"echo\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(e, ctx)\n"
    "    if type(e.msg) == \"string\" then\n"
    "      return { action = \"alert\", level = \"info\", reason = e.msg, scope = \"echo:x\" }\n"
    "    end\n"
    "  end,\n"
    "}\n";

/* Fails at line 5 when the event says so. */
static const char *const BOOM_RULE =
    "return {\n"
    "  name = \"boom\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(e, ctx)\n"
    "    if e.boom then error(\"boom on demand\") end\n"
    "  end,\n"
    "}\n";

/* --- helpers ------------------------------------------------------------------ */

/* GET /decisions?QUERY, 200 with {"decisions": [...], "count": N}; R holds it. */
static const cJSON *get_decisions(const char *query, h_resp *r)
{
    char path[1024];
    snprintf(path, sizeof path, "/decisions%s%s", query[0] ? "?" : "", query);
    long st = h_http(daemon_, "GET", path, NULL, r, NULL);
    if (st != 200)
        fail_msg("GET %s: %ld %s", path, st, r->body ? r->body : r->err);
    H_ASSERT_JSON(r);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r->json, "decisions");
    long long count = -1;
    assert_true(cJSON_IsArray(arr));
    assert_true(h_jll(r->json, "count", &count));
    assert_int_equal(count, cJSON_GetArraySize(arr));
    return arr;
}

/* Poll GET /decisions?QUERY until it holds at least N records; R holds the
 * last answer. */
static const cJSON *wait_decisions(const char *query, int n, h_resp *r)
{
    double dl = h_deadline(10000);
    const cJSON *arr = NULL;
    for (;;) {
        arr = get_decisions(query, r);
        if (cJSON_GetArraySize(arr) >= n || !h_before(dl))
            break;
        h_resp_free(r);
        h_nap();
    }
    if (cJSON_GetArraySize(arr) < n)
        fail_msg("GET /decisions?%s: %d records after 10 s, expected %d: %s", query,
                 cJSON_GetArraySize(arr), n, r->body);
    return arr;
}

/* The first record of ARR with field KEY equal to VALUE, NULL when none. */
static const cJSON *find(const cJSON *arr, const char *key, const char *value)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        const char *v = h_jstr(it, key);
        if (v && strcmp(v, value) == 0)
            return it;
    }
    return NULL;
}

static void publish_test_event(const char *json)
{
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    assert_true(h_publish(redis, "test_events", json) >= 1);
}

static const char *const *cli_args(const char *a1, const char *a2, const char *a3,
                                   const char *a4)
{
    static const char *args[12];
    size_t n = 0;
    args[n++] = "decisions";
    args[n++] = "-c";
    args[n++] = "config/nerve.yaml";
    args[n++] = "--set";
    args[n++] = url_set;
    const char *more[] = { a1, a2, a3, a4 };
    for (size_t i = 0; i < 4 && more[i]; i++)
        args[n++] = more[i];
    args[n] = NULL;
    return args;
}

/* --- tests -------------------------------------------------------------------- */

/* Stock set to 3 (a stock_changed event): the shipped inventory rule kills
 * sku:<SKU> and raises a critical alert; both are in the log with the rule,
 * the channel, the stream entry id, the generation and the event. */
static void test_stock_event_logged(void **state)
{
    (void)state;
    h_resp r = { 0 };
    H_SET_STOCK(daemon_, "dl-stock", 3);
    const cJSON *arr = wait_decisions("rule=inventory_threshold&scope=sku:dl-stock", 2, &r);
    long long gen = H_GENERATION(daemon_);
    const cJSON *kill = find(arr, "action", "kill");
    const cJSON *alert = find(arr, "action", "alert");
    assert_non_null(kill);
    assert_non_null(alert);
    const cJSON *recs[] = { kill, alert };
    for (int i = 0; i < 2; i++) {
        const cJSON *d = recs[i];
        long long g = -1;
        assert_string_equal(h_jstr(d, "kind"), "decision");
        assert_string_equal(h_jstr(d, "rule"), "inventory_threshold");
        assert_string_equal(h_jstr(d, "scope"), "sku:dl-stock");
        assert_string_equal(h_jstr(d, "channel"), "inventory_events");
        const char *id = h_jstr(d, "event_id");
        unsigned long long ms, seq;
        char tail;
        assert_non_null(id);
        assert_int_equal(sscanf(id, "%llu-%llu%c", &ms, &seq, &tail), 2);
        assert_true(h_jll(d, "generation", &g));
        assert_int_equal(g, gen);
        assert_non_null(h_jstr(d, "instance"));
        assert_non_null(h_jstr(d, "reason"));
        assert_non_null(h_jstr(d, "id"));
        assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(d, "ts")));
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(d, "event");
        long long left = -1;
        assert_true(cJSON_IsObject(ev));
        assert_string_equal(h_jstr(ev, "type"), "stock_changed");
        assert_string_equal(h_jstr(ev, "sku"), "dl-stock");
        assert_true(h_jll(ev, "stock_remaining", &left));
        assert_int_equal(left, 3);
    }
    assert_string_equal(h_jstr(alert, "level"), "critical");
    assert_int_equal(h_jbool(kill, "halt_sales"), 0);
    /* Same event: the same entry id on both. */
    assert_string_equal(h_jstr(kill, "event_id"), h_jstr(alert, "event_id"));
    h_resp_free(&r);
    h_pass();
}

/* A rule that fails: a rule_error record with FILE:LINE in "error". */
static void test_rule_error_logged(void **state)
{
    (void)state;
    h_resp r = { 0 };
    publish_test_event("{\"boom\": true, \"n\": 1}");
    const cJSON *arr = wait_decisions("rule=boom&kind=rule_error", 1, &r);
    const cJSON *d = cJSON_GetArrayItem(arr, 0);
    assert_string_equal(h_jstr(d, "kind"), "rule_error");
    assert_string_equal(h_jstr(d, "channel"), "test_events");
    assert_null(cJSON_GetObjectItemCaseSensitive(d, "action"));
    const char *err = h_jstr(d, "error");
    assert_non_null(err);
    if (!strstr(err, "boom.lua:5:") || !strstr(err, "boom on demand"))
        fail_msg("error \"%s\" does not read FILE:LINE: message", err);
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(d, "event");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ev, "boom")));
    h_resp_free(&r);
    h_pass();
}

/* A sale refused by a sale_request rule (422) is logged as a reject with the
 * sale event; the sale path had only counted it before. */
static void test_sale_reject_logged(void **state)
{
    (void)state;
    h_resp r = { 0 }, s = { 0 };
    H_SET_STOCK(daemon_, "rej-1", 10);
    assert_int_equal(h_sale(daemon_, "/sale", "rej-1", 2, "order-rej-1", &s), 422);
    h_resp_free(&s);
    const cJSON *arr = wait_decisions("rule=sale_gate&scope=", 1, &r);
    const cJSON *d = cJSON_GetArrayItem(arr, 0);
    long long qty = -1;
    assert_string_equal(h_jstr(d, "kind"), "decision");
    assert_string_equal(h_jstr(d, "action"), "reject");
    assert_string_equal(h_jstr(d, "reason"), "no sale of rej-1");
    assert_string_equal(h_jstr(d, "channel"), "sale_request");
    assert_string_equal(h_jstr(d, "event_id"), "");
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(d, "event");
    assert_string_equal(h_jstr(ev, "sku"), "rej-1");
    assert_string_equal(h_jstr(ev, "order_id"), "order-rej-1");
    assert_true(h_jll(ev, "qty", &qty));
    assert_int_equal(qty, 2);
    /* Stock untouched: the reject is a decision, not a sale. */
    assert_int_equal(H_GET_STOCK(daemon_, "rej-1"), 10);
    h_resp_free(&r);
    h_pass();
}

/* rule, scope, kind and limit filter; newest first; bad parameters 400. */
static void test_filters(void **state)
{
    (void)state;
    h_resp r = { 0 }, s = { 0 };
    H_SET_STOCK(daemon_, "rej-2", 10);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(h_sale(daemon_, "/sale", "rej-2", 1, NULL, &s), 422);
        h_resp_free(&s);
    }
    wait_decisions("rule=sale_gate", 3, &r);
    h_resp_free(&r);

    const cJSON *arr = get_decisions("rule=sale_gate&limit=2", &r);
    assert_int_equal(cJSON_GetArraySize(arr), 2);
    const char *id0 = h_jstr(cJSON_GetArrayItem(arr, 0), "id");
    const char *id1 = h_jstr(cJSON_GetArrayItem(arr, 1), "id");
    unsigned long long m0, s0, m1, s1;
    assert_int_equal(sscanf(id0, "%llu-%llu", &m0, &s0), 2);
    assert_int_equal(sscanf(id1, "%llu-%llu", &m1, &s1), 2);
    assert_true(m0 > m1 || (m0 == m1 && s0 > s1)); /* newest first */
    h_resp_free(&r);

    arr = get_decisions("limit=1000", &r);
    const cJSON *it;
    int rules_seen = 0;
    cJSON_ArrayForEach(it, arr) rules_seen |= strcmp(h_jstr(it, "rule"), "sale_gate") ? 1 : 2;
    assert_int_equal(rules_seen, 3); /* unfiltered: more than one rule */
    h_resp_free(&r);

    arr = get_decisions("rule=sale_gate&limit=1000", &r);
    cJSON_ArrayForEach(it, arr) assert_string_equal(h_jstr(it, "rule"), "sale_gate");
    assert_true(cJSON_GetArraySize(arr) >= 3);
    h_resp_free(&r);

    arr = get_decisions("scope=sku%3Adl-stock", &r);
    assert_true(cJSON_GetArraySize(arr) >= 2);
    cJSON_ArrayForEach(it, arr) assert_string_equal(h_jstr(it, "scope"), "sku:dl-stock");
    h_resp_free(&r);

    arr = get_decisions("kind=rule_error", &r);
    cJSON_ArrayForEach(it, arr) assert_string_equal(h_jstr(it, "kind"), "rule_error");
    h_resp_free(&r);

    arr = get_decisions("rule=no_such_rule", &r);
    assert_int_equal(cJSON_GetArraySize(arr), 0);
    h_resp_free(&r);

    static const char *const bad[] = { "limit=0", "limit=1001", "limit=abc", "limit=",
                                       "limit=-1", "limit=5x" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[64];
        snprintf(path, sizeof path, "/decisions?%s", bad[i]);
        h_http(daemon_, "GET", path, NULL, &r, NULL);
        H_ASSERT_ERROR(&r, 400, "bad_request");
        h_resp_free(&r);
    }
    char path[512] = "/decisions?rule=";
    memset(path + strlen(path), 'a', 129);
    h_http(daemon_, "GET", path, NULL, &r, NULL);
    H_ASSERT_ERROR(&r, 400, "bad_request");
    h_resp_free(&r);
    h_pass();
}

/* A reason built from a stranger's event (quotes, a newline, a forged
 * key=value, a non-ASCII byte) is stored and answered as data. */
static void test_hostile_round_trip(void **state)
{
    (void)state;
    h_resp r = { 0 };
    const char *want = "x\" kind=\"decision\"\n rule=forged \\ \xc3\xa9 }{";
    publish_test_event("{\"msg\": \"x\\\" kind=\\\"decision\\\"\\n rule=forged \\\\ \xc3\xa9 }{\"}");
    const cJSON *arr = wait_decisions("rule=echo", 1, &r);
    const cJSON *d = cJSON_GetArrayItem(arr, 0);
    assert_string_equal(h_jstr(d, "reason"), want);
    assert_string_equal(h_jstr(d, "kind"), "decision");
    assert_string_equal(h_jstr(d, "rule"), "echo");
    assert_string_equal(h_jstr(cJSON_GetObjectItemCaseSensitive(d, "event"), "msg"), want);
    h_resp_free(&r);

    /* The CLI prints it on one line, escaped. */
    h_run run = { 0 };
    h_run_nerve(&run, 10000, NULL, cli_args("--rule", "echo", NULL, NULL));
    assert_int_equal(run.status, 0);
    int lines = 0;
    for (const char *p = run.out; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 1);
    if (!strstr(run.out, "reason=\"x\\\" kind=\\\"decision\\\"\\u000a rule=forged \\\\ "))
        fail_msg("reason not escaped on one line: %s", run.out);
    assert_null(strstr(run.out, "rule=forged\n"));
    h_run_free(&run);
    h_pass();
}

/* The stored record is strict JSON whatever the event was: lenient JSON the
 * rules accepted (a number 01, a raw tab in a string) is printed again, and
 * an event over decisions.event_max_bytes (4096) is left out. */
static void test_event_text_bounded(void **state)
{
    (void)state;
    h_resp r = { 0 };
    publish_test_event("{\"msg\": \"lenient\", \"n\": 01, \"t\": \"a\tb\"}");
    char big[6000];
    int n = snprintf(big, sizeof big, "{\"msg\": \"big\", \"pad\": \"");
    memset(big + n, 'p', 5000);
    snprintf(big + n + 5000, sizeof big - (size_t)n - 5000, "\"}");
    publish_test_event(big);
    const cJSON *arr = wait_decisions("rule=echo&scope=echo:x", 3, &r);
    const cJSON *len = find(arr, "reason", "lenient"), *bg = find(arr, "reason", "big");
    assert_non_null(len);
    assert_non_null(bg);
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(len, "event");
    long long num = -1;
    assert_true(h_jll(ev, "n", &num));
    assert_int_equal(num, 1);
    assert_string_equal(h_jstr(ev, "t"), "a\tb");
    assert_null(cJSON_GetObjectItemCaseSensitive(bg, "event"));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(bg, "event_truncated")));
    h_resp_free(&r);

    /* The raw stream field: strict JSON, no control byte. */
    redisReply *x = h_redis_cmd(redis, "XREVRANGE nerve:decisions + - COUNT 1000");
    assert_non_null(x);
    int checked = 0;
    for (size_t i = 0; i < x->elements; i++) {
        const redisReply *fv = x->element[i]->element[1];
        const char *d = fv->element[1]->str;
        size_t dl = fv->element[1]->len;
        char why[128];
        if (jsonck_check(d, dl, 64, why, sizeof why) != 0)
            fail_msg("record %s is not strict JSON (%s): %s", x->element[i]->element[0]->str,
                     why, d);
        for (size_t k = 0; k < dl; k++)
            if ((unsigned char)d[k] < 0x20)
                fail_msg("record %s holds a raw control byte: %s",
                         x->element[i]->element[0]->str, d);
        checked++;
    }
    assert_true(checked >= 3);
    freeReplyObject(x);
    h_pass();
}

/* `nerve decisions --rule R` prints R's records, oldest first; --json one
 * object a line; bad options exit 2. */
static void test_cli(void **state)
{
    (void)state;
    h_resp r = { 0 }, s = { 0 };
    H_SET_STOCK(daemon_, "rej-3", 10);
    assert_int_equal(h_sale(daemon_, "/sale", "rej-3", 1, NULL, &s), 422);
    h_resp_free(&s);
    /* Wait for this sale's record: the log has one writer, in order, so
     * every earlier test's reject is written by then and TOTAL holds. */
    int total = 0;
    double dl = h_deadline(10000);
    for (bool seen = false; !seen;) {
        const cJSON *arr = get_decisions("rule=sale_gate&limit=1000", &r), *it;
        cJSON_ArrayForEach(it, arr) {
            const char *sku = h_jstr(cJSON_GetObjectItemCaseSensitive(it, "event"), "sku");
            seen = seen || (sku && strcmp(sku, "rej-3") == 0);
        }
        total = cJSON_GetArraySize(arr);
        h_resp_free(&r);
        if (!seen && !h_before(dl))
            fail_msg("the reject of rej-3 is not in GET /decisions after 10 s");
        if (!seen)
            h_nap();
    }

    h_run run = { 0 };
    h_run_nerve(&run, 10000, NULL, cli_args("--rule", "sale_gate", "--limit", "1000"));
    assert_int_equal(run.status, 0);
    int lines = 0;
    for (char *line = run.out, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = 0;
        lines++;
        if (!strstr(line, " kind=decision rule=sale_gate action=reject ") ||
            !strstr(line, " channel=sale_request "))
            fail_msg("line %d: %s", lines, line);
    }
    assert_int_equal(lines, total);
    h_run_free(&run);

    h_run_nerve(&run, 10000, NULL, cli_args("--rule", "sale_gate", "--json", NULL));
    assert_int_equal(run.status, 0);
    lines = 0;
    const char *last_sku = NULL;
    cJSON *last = NULL;
    for (char *line = run.out, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = 0;
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        assert_string_equal(h_jstr(j, "action"), "reject");
        cJSON_Delete(last);
        last = j;
        lines++;
    }
    assert_true(lines >= 1 && lines <= 20);
    /* Oldest first: the newest (rej-3) is the last line. */
    last_sku = h_jstr(cJSON_GetObjectItemCaseSensitive(last, "event"), "sku");
    assert_string_equal(last_sku, "rej-3");
    cJSON_Delete(last);
    h_run_free(&run);

    h_run_nerve(&run, 10000, NULL, cli_args("--limit", "0", NULL, NULL));
    assert_int_equal(run.status, 2);
    h_run_free(&run);
    h_run_nerve(&run, 10000, NULL, cli_args("--kind", "other", NULL, NULL));
    assert_int_equal(run.status, 2);
    h_run_free(&run);
    h_pass();
}

/* `nerve decisions --follow` prints a record written after it started, and
 * ends with status 0 on SIGTERM. */
static void test_cli_follow(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    const char *const *args = cli_args("--follow", "--rule", "sale_gate", "--limit=1");
    char *argv[16];
    size_t n = 0;
    argv[n++] = (char *)h_nerve_bin();
    for (size_t i = 0; args[i]; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        const char *root = getenv("NERVE_ROOT");
        if (root && chdir(root) != 0)
            _exit(127);
        unsetenv("REDIS_URL");
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    char out[65536];
    size_t len = 0;
    /* Read what it printed until NEEDLE shows up or 10 s pass. */
#define READ_UNTIL(needle)                                                          \
    do {                                                                            \
        double dl_ = h_deadline(10000);                                             \
        while (h_before(dl_)) {                                                     \
            ssize_t k = read(fds[0], out + len, sizeof out - 1 - len);              \
            if (k > 0)                                                              \
                len += (size_t)k;                                                   \
            out[len] = 0;                                                           \
            if (strstr(out, needle))                                                \
                break;                                                              \
            h_nap();                                                                \
        }                                                                           \
        if (!strstr(out, needle)) {                                                 \
            kill(pid, SIGKILL);                                                     \
            waitpid(pid, NULL, 0);                                                  \
            fail_msg("nerve decisions --follow: no \"%s\" in: %s", needle, out);    \
        }                                                                           \
    } while (0)
    READ_UNTIL("rule=sale_gate"); /* the last record, printed at start */
    h_resp s = { 0 };
    H_SET_STOCK(daemon_, "rej-follow", 10);
    assert_int_equal(h_sale(daemon_, "/sale", "rej-follow", 1, NULL, &s), 422);
    h_resp_free(&s);
    READ_UNTIL("no sale of rej-follow");
    kill(pid, SIGTERM);
    int st = -1;
    double dl = h_deadline(5000);
    while (h_before(dl) && waitpid(pid, &st, WNOHANG) == 0)
        h_nap();
    close(fds[0]);
    if (!WIFEXITED(st)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("nerve decisions --follow did not exit on SIGTERM");
    }
    assert_int_equal(WEXITSTATUS(st), 0);
    h_pass();
}

/* The ledger writer records the decision log in the ledger's decisions
 * table (migration 2): `nerve ledger export --table decisions` shows the
 * sale_gate reject of test_sale_reject_logged with its event. */
static void test_ledger_rows(void **state)
{
    (void)state;
    char path_set[300];
    snprintf(path_set, sizeof path_set, "ledger.path=%s/ledger.db", redis->dir);
    const char *args[] = { "ledger", "export", "--table", "decisions", "--format", "jsonl",
                           "-c", "config/nerve.yaml", "--set", path_set, NULL };
    double dl = h_deadline(10000);
    h_run run = { 0 };
    const char *hit = NULL;
    while (h_before(dl)) {
        h_run_free(&run);
        memset(&run, 0, sizeof run);
        h_run_nerve(&run, 10000, NULL, args);
        if (run.status == 0 && (hit = strstr(run.out, "\"reason\":\"no sale of rej-1\"")))
            break;
        h_nap();
    }
    if (!hit)
        fail_msg("no reject of rej-1 in the ledger's decisions table (status %d): %s %s",
                 run.status, run.out, run.err);
    const char *start = hit;
    while (start > run.out && start[-1] != '\n')
        start--;
    const char *end = strchr(hit, '\n');
    char *line = strndup(start, end ? (size_t)(end - start) : strlen(start));
    cJSON *row = cJSON_Parse(line);
    assert_non_null(row);
    assert_string_equal(h_jstr(row, "kind"), "decision");
    assert_string_equal(h_jstr(row, "action"), "reject");
    assert_string_equal(h_jstr(row, "rule"), "sale_gate");
    assert_string_equal(h_jstr(row, "channel"), "sale_request");
    assert_non_null(strstr(h_jstr(row, "event_id"), "nerve:decisions/"));
    cJSON *ev = cJSON_Parse(h_jstr(row, "event"));
    assert_non_null(ev);
    assert_string_equal(h_jstr(ev, "sku"), "rej-1");
    cJSON_Delete(ev);
    cJSON_Delete(row);
    free(line);
    h_run_free(&run);
    h_pass();
}

/* decisions.maxlen caps the stream (MAXLEN ~: whole nodes of 100 entries are
 * trimmed), and /metrics counts what was written. */
static void test_capped(void **state)
{
    (void)state;
    char rset[PATH_MAX + 32];
    H_RULES_DIR("dl_cap_rules", "gate.lua", GATE_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, "redis.prefix=dlcap:", "decisions.maxlen=50" };
    h_daemon *d = h_daemon_startv(redis, true, sets, 3);
    assert_non_null(d);
    H_SET_STOCK(d, "rej-cap", 10);
    h_load l = { .d = d, .path = "/sale", .sku = "rej-cap", .qty = 1, .clients = 4,
                 .requests = 600 };
    assert_int_equal(h_load_run(&l), 0);
    assert_int_equal(l.by_status[422], 600);
    h_load_free(&l);
    double dl = h_deadline(10000);
    double written = -1, dropped = -1;
    while (h_before(dl)) {
        char *m = H_METRICS(d);
        written = h_metric(m, "nerve_decision_log_written_total", NULL);
        dropped = h_metric(m, "nerve_decision_log_dropped_total", NULL);
        free(m);
        if (written >= 600)
            break;
        h_nap();
    }
    assert_true(written == 600);
    assert_true(dropped == 0);
    redisReply *x = h_redis_cmd(redis, "XLEN dlcap:decisions");
    assert_non_null(x);
    assert_int_equal(x->type, REDIS_REPLY_INTEGER);
    if (x->integer < 50 || x->integer > 150)
        fail_msg("XLEN dlcap:decisions = %lld, expected 50..150 (maxlen 50, ~)", x->integer);
    freeReplyObject(x);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* One query reads at most DECLOG_SCAN_BYTES of records: 400 records of
 * ~60 KB each (as big as decisions.event_max_bytes allows), a filter that
 * matches none, and the scan stops after its first page of 100 instead of
 * copying 24 MB out of Redis for an anonymous client. */
static void test_scan_bytes_bounded(void **state)
{
    (void)state;
    const char *sets[] = { "redis.prefix=dlbytes:" };
    h_daemon *d = h_daemon_startv(redis, true, sets, 1);
    assert_non_null(d);
    size_t big = 60000;
    char *rec = malloc(big + 200);
    assert_non_null(rec);
    int n = snprintf(rec, 200, "{\"ts\":1,\"kind\":\"decision\",\"rule\":\"r\",\"reason\":\"");
    memset(rec + n, 'x', big);
    snprintf(rec + n + big, 200, "\"}");
    for (int i = 0; i < 400; i++) {
        redisReply *x = h_redis_cmd(redis, "XADD dlbytes:decisions * d %s", rec);
        assert_non_null(x);
        assert_int_equal(x->type, REDIS_REPLY_STRING);
        freeReplyObject(x);
    }
    free(rec);
    h_resp r;
    assert_int_equal(h_http(d, "GET", "/decisions?rule=none&limit=1000", NULL, &r, NULL), 200);
    long long scanned = -1;
    assert_true(h_jll(r.json, "scanned", &scanned));
    if (scanned < 1 || scanned > 100)
        fail_msg("a filtered query read %lld records of 60 KB (want at most 100: 4 MiB)", scanned);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "decisions")), 0);
    h_resp_free(&r);
    assert_int_equal(h_http(d, "GET", "/decisions?limit=1000", NULL, &r, NULL), 200);
    int got = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "decisions"));
    if (got < 1 || got > 100)
        fail_msg("an unfiltered query of 1000 answered %d records of 60 KB (want 1..100)", got);
    h_resp_free(&r);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* Redis stops answering: sales rejected by a rule are answered at once, the
 * records that do not fit the queue are dropped and counted, and the log
 * catches up when Redis is back. */
static void test_queue_full_drops(void **state)
{
    (void)state;
    char rset[PATH_MAX + 32];
    H_RULES_DIR("dl_drop_rules", "gate.lua", GATE_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, "redis.prefix=dldrop:", "decisions.queue_size=5" };
    h_daemon *d = h_daemon_startv(redis, true, sets, 3);
    assert_non_null(d);
    H_SET_STOCK(d, "rej-drop", 10);
    assert_int_equal(h_redis_pause(redis), 0);
    h_load l = { .d = d, .path = "/sale", .sku = "rej-drop", .qty = 1, .clients = 2,
                 .requests = 200, .timeout_ms = 5000 };
    assert_int_equal(h_load_run(&l), 0);
    assert_int_equal(h_redis_resume(redis), 0);
    assert_int_equal(l.by_status[422], 200);
    /* No sale waited for the log (the paused Redis held the writer). */
    if (l.max_secs > 0.5)
        fail_msg("slowest rejected sale took %.3f s with Redis paused", l.max_secs);
    h_load_free(&l);
    double dl = h_deadline(10000);
    double written = -1, dropped = -1;
    while (h_before(dl)) {
        char *m = H_METRICS(d);
        written = h_metric(m, "nerve_decision_log_written_total", NULL);
        dropped = h_metric(m, "nerve_decision_log_dropped_total", NULL);
        free(m);
        if (written >= 1 && written + dropped >= 200)
            break;
        h_nap();
    }
    if (!(dropped >= 100 && written >= 1 && written + dropped >= 200))
        fail_msg("written %.0f, dropped %.0f of 200 records (queue of 5, Redis paused)", written,
                 dropped);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

static int group_setup(void **state)
{
    char dir[PATH_MAX];
    char *inv = h_read_file("rules/inventory.lua");
    if (!inv) {
        printf("cannot read rules/inventory.lua: %s\n", strerror(errno));
        return -1;
    }
    H_RULES_DIR("dl_rules", "inventory.lua", inv, dir, sizeof dir, rules_set, sizeof rules_set);
    free(inv);
    H_WRITE_FILE(dir, "gate.lua", GATE_RULE);
    H_WRITE_FILE(dir, "echo.lua", ECHO_RULE);
    H_WRITE_FILE(dir, "boom.lua", BOOM_RULE);
    int rc = h_group_setup(state);
    if (rc == 0) {
        char u[128];
        snprintf(url_set, sizeof url_set, "redis.url=%s", h_redis_url(redis, u, sizeof u));
    }
    return rc;
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_stock_event_logged), T(test_rule_error_logged), T(test_sale_reject_logged),
        T(test_filters),            T(test_hostile_round_trip), T(test_event_text_bounded),
        T(test_cli),
        T(test_cli_follow), T(test_ledger_rows),         T(test_capped), T(test_scan_bytes_bounded),             T(test_queue_full_drops),
    };
    h_group_use(&redis, &daemon_, group_sets);
    return cmocka_run_group_tests(tests, group_setup, h_group_teardown);
}
