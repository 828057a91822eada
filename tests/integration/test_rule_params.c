/* test_rule_params.c -- typos are errors (issue 13): a rule's declared
 * parameters are checked against rules.params with the config's
 * FILE:LINE:COL (or the --set that wrote them), an `on` channel no config
 * names is refused with a suggestion, a reload with such a typo keeps the old
 * set, and an invalid decision names the line of its `return`.
 * The real binary: one-shot commands, and one daemon for the reload.
 */
#include "harness.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AUTH "Authorization: Bearer " H_ADMIN_TOKEN

static h_redis *redis;

/* TEXT has LINE (without its newline) as a whole line. */
static bool has_line(const char *text, const char *line) {
    size_t n = strlen(line);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0')) return true;
    return false;
}

/* A line of TEXT starts with HEAD and contains TAIL. */
static bool has_line_like(const char *text, const char *head, const char *tail) {
    size_t n = strlen(head);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len < n || strncmp(p, head, n) != 0) continue;
        char *l = strndup(p, len);
        bool ok = strstr(l, tail) != NULL;
        free(l);
        if (ok) return true;
    }
    return false;
}

static void run(h_run *r, const char *const *args) {
    h_run_nerve(r, 20000, NULL, args);
}

/* `nerve check -c CFG` with rules.params written in a temp file. */
static void check_yaml(h_run *r, char *path, size_t len, const char *name, const char *yaml) {
    H_WRITE_FILE(h_tmpdir(), name, yaml);
    snprintf(path, len, "%s/%s", h_tmpdir(), name);
    run(r, (const char *const[]){ "check", "-c", path, NULL });
}

#define EXPECT_LIKE(r, head, tail) \
    do { \
        if ((r).status != 1 || !has_line_like((r).err, (head), (tail))) \
            fail_msg("expected exit 1 and a line starting\n%s\nwith\n%s\ngot exit %d\nstdout:\n%s\n" \
                     "stderr:\n%s", \
                     (head), (tail), (r).status, (r).out, (r).err); \
    } while (0)

/* A typo in a key, a wrong type, out of range, a bad map entry: each at its
 * FILE:LINE:COL; today's shipped config still passes. */
static void test_check_params(void **state) {
    (void)state;
    h_run r;
    char path[PATH_MAX], head[PATH_MAX + 128];

    run(&r, (const char *const[]){ "check", "-c", "config/nerve.yaml", NULL });
    if (r.status != 0) fail_msg("the shipped config fails: %s", r.err);
    h_run_free(&r);

    check_yaml(&r, path, sizeof path, "typo.yaml",
               "rules:\n"
               "  params:\n"
               "    inventory:\n"
               "      critical_treshold: 8\n");
    snprintf(head, sizeof head, "%s:4:26: rules.params.inventory.critical_treshold: unknown parameter",
             path);
    EXPECT_LIKE(r, head, "; did you mean critical_threshold?");
    h_run_free(&r);

    check_yaml(&r, path, sizeof path, "type.yaml",
               "rules:\n"
               "  params:\n"
               "    inventory:\n"
               "      critical_threshold: eight\n"
               "      warning_threshold: -1\n"
               "    financial:\n"
               "      min_unit_price_by_sku: {GOLD-1: cheap}\n");
    snprintf(head, sizeof head,
             "%s:4:27: rules.params.inventory.critical_threshold: expected an integer, got \"eight\"",
             path);
    EXPECT_LIKE(r, head, "(rule inventory_threshold, rules/inventory.lua:");
    snprintf(head, sizeof head,
             "%s:5:26: rules.params.inventory.warning_threshold: -1 is under the minimum 0", path);
    EXPECT_LIKE(r, head, "");
    snprintf(head, sizeof head,
             "%s:7:39: rules.params.financial.min_unit_price_by_sku.GOLD-1: expected a number, "
             "got \"cheap\"",
             path);
    EXPECT_LIKE(r, head, "(rule financial_risk, rules/financial.lua:");
    h_run_free(&r);

    /* A --set is named as written. */
    run(&r, (const char *const[]){ "check", "-c", "config/nerve.yaml", "--set",
                                   "rules.params.inventory.critical_threshold=eight", NULL });
    EXPECT_LIKE(r,
                "--set rules.params.inventory.critical_threshold=eight: "
                "rules.params.inventory.critical_threshold: expected an integer, got \"eight\"",
                "");
    h_run_free(&r);
    run(&r, (const char *const[]){ "check", "-c", "config/nerve.yaml", "--set",
                                   "rules.params.financial.daily_budgett=5", NULL });
    EXPECT_LIKE(r, "--set rules.params.financial.daily_budgett=5: "
                   "rules.params.financial.daily_budgett: unknown parameter",
                "did you mean daily_budget?");
    h_run_free(&r);
    h_pass();
}

/* Channels: a typo is refused with a suggestion; the ones the config names
 * (bus.channels, the inventory and sales channels, sale_request) load. */
static void test_check_channels(void **state) {
    (void)state;
    h_run r;
    char dir[PATH_MAX], rset[PATH_MAX + 16], head[PATH_MAX + 64];

    H_RULES_DIR("rp-chan", "typo.lua",
                "return {\n"
                "  name = \"typo\",\n"
                "  on = { \"financial_event\" },\n"
                "  evaluate = function(event, ctx) end,\n"
                "}\n",
                dir, sizeof dir, rset, sizeof rset);
    run(&r, (const char *const[]){ "check", "--set", rset, NULL });
    snprintf(head, sizeof head, "%s/typo.lua:3: on[1]: unknown channel \"financial_event\"", dir);
    EXPECT_LIKE(r, head, "; did you mean financial_events?");
    EXPECT_LIKE(r, head, "(known: inventory_events, sales_events, financial_events, sale_request)");
    h_run_free(&r);

    /* The same channel, once configured, loads. */
    run(&r, (const char *const[]){ "check", "--set", rset, "--set",
                                   "bus.channels=[financial_event]", NULL });
    if (r.status != 0) fail_msg("a configured channel is refused: %s", r.err);
    h_run_free(&r);

    H_WRITE_FILE(dir, "typo.lua",
                 "return {\n"
                 "  name = \"typo\",\n"
                 "  on = { \"sale_request\", \"sales_events\", \"inventory_events\" },\n"
                 "  evaluate = function(event, ctx) end,\n"
                 "}\n");
    run(&r, (const char *const[]){ "check", "--set", rset, "--set", "bus.channels=[x]", NULL });
    if (r.status != 0) fail_msg("built-in and bus.*_channel channels are refused: %s", r.err);
    h_run_free(&r);
    h_pass();
}

/* An invalid decision is reported at the `return` that produced it (line 16
 * in evaluate; line 8 in a helper it tail-calls), not at `evaluate`; the
 * rerun that finds the line replays ctx.incr and changes nothing else. */
static void test_decision_return_line(void **state) {
    (void)state;
    h_run r;
    char dir[PATH_MAX], rset[PATH_MAX + 16], ev[PATH_MAX], want[PATH_MAX * 2 + 128];

    H_RULES_DIR("rp-ret", "ret.lua",
                "-- helper first\n"
                "local function helper(event)\n"
                "  if event.x then\n"
                "    return {\n"
                "      action = \"alert\", level = \"info\", reason = \"fine\",\n"
                "    }, nil\n"
                "  end\n"
                "  return { action = \"alert\", level = \"info\" }\n"
                "end\n"
                "return {\n"
                "  name = \"ret\",\n"
                "  on = { \"financial_events\" },\n"
                "  evaluate = function(event, ctx)\n"
                "    local n = ctx.incr(\"k\", 60)\n"
                "    if event.kill then\n"
                "      return { action = \"kill\", reason = \"no scope \" .. n }\n"
                "    end\n"
                "    return helper(event)\n"
                "  end,\n"
                "}\n",
                dir, sizeof dir, rset, sizeof rset);
    H_WRITE_FILE(h_tmpdir(), "ret.jsonl",
                 "{\"channel\":\"financial_events\",\"event\":{\"kill\":true}}\n"
                 "{\"channel\":\"financial_events\",\"event\":{}}\n"
                 "{\"channel\":\"financial_events\",\"event\":{\"x\":1}}\n");
    snprintf(ev, sizeof ev, "%s/ret.jsonl", h_tmpdir());
    run(&r, (const char *const[]){ "rules", "test", "--set", rset, ev, NULL });
    assert_int_equal(r.status, 1);
    snprintf(want, sizeof want, "%s:1: %s/ret.lua:16: decision 1: kill needs a scope", ev, dir);
    if (!has_line(r.err, want)) fail_msg("expected\n%s\ngot\n%s", want, r.err);
    snprintf(want, sizeof want, "%s:2: %s/ret.lua:8: decision 1: alert needs a reason", ev, dir);
    if (!has_line(r.err, want)) fail_msg("expected\n%s\ngot\n%s", want, r.err);
    if (!has_line(r.err, "events: 3, decisions: 1 (alert 1), errors: 2"))
        fail_msg("expected the third event to decide: %s\n%s", r.out, r.err);
    h_run_free(&r);
    h_pass();
}

/* The rule of the reload test: {"probe": P} kills probe:P with a reason
 * naming its params (from --set, and a default). */
static void params_rule(char *out, size_t len, const char *key) {
    snprintf(out, len,
             "return {\n"
             "  name = \"rp_reload\",\n"
             "  on = { \"test_events\" },\n"
             "  params_section = \"rp\",\n"
             "  params = {\n"
             "    %s = { type = \"integer\", default = 1, min = 0 },\n"
             "    other = { type = \"number\", default = 7.5 },\n"
             "  },\n"
             "  evaluate = function(event, ctx)\n"
             "    return { action = \"kill\", scope = \"probe:\" .. event.probe,\n"
             "             reason = string.format(\"limit %%s other %%s\",\n"
             "                                    tostring(ctx.params.rp.%s),\n"
             "                                    tostring(ctx.params.rp.other)) }\n"
             "  end,\n"
             "}\n",
             key, key);
}

static void wait_kill_reason(const char *scope, char *out, size_t outlen) {
    double dl = h_deadline(5000);
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
    fail_msg("no kill record for %s within 5 s", scope);
}

/* A reload that turns a configured key into a typo is refused: the old set
 * stays and keeps deciding with its params. */
static void test_reload_typo_keeps_old_set(void **state) {
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], text[2048], reason[256];
    H_RULES_DIR("rp-reload", NULL, NULL, dir, sizeof dir, rset, sizeof rset);
    params_rule(text, sizeof text, "limit");
    H_WRITE_FILE(dir, "rp.lua", text);
    h_daemon *d = h_daemon_start(redis, rset, "bus.channels=[test_events]",
                                 "rules.params.rp.limit=3", "panic.dry_run=true", NULL);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    assert_true(h_publish(redis, "test_events", "{\"probe\":\"a\"}") >= 1);
    wait_kill_reason("probe:a", reason, sizeof reason);
    assert_string_equal(reason, "limit 3 other 7.5"); /* the default filled in */
    long long gen = H_GENERATION(d);

    params_rule(text, sizeof text, "limt"); /* the rule's own key, mistyped */
    H_WRITE_FILE(dir, "rp.lua", text);
    h_resp r;
    h_http(d, "POST", "/admin/reload", "{}", &r, AUTH, NULL);
    H_ASSERT_ERROR(&r, 422, "reload_failed");
    const cJSON *errs = cJSON_GetObjectItemCaseSensitive(r.json, "errors");
    const cJSON *e = cJSON_IsArray(errs) ? cJSON_GetArrayItem(errs, 0) : NULL;
    if (!cJSON_IsString(e) ||
        strncmp(e->valuestring,
                "--set rules.params.rp.limit=3: rules.params.rp.limit: unknown parameter", 71) != 0 ||
        !strstr(e->valuestring, "did you mean limt?"))
        fail_msg("expected the --set named with a suggestion, got %s", r.body);
    h_resp_free(&r);
    assert_int_equal(H_GENERATION(d), gen);
    assert_true(h_publish(redis, "test_events", "{\"probe\":\"b\"}") >= 1);
    wait_kill_reason("probe:b", reason, sizeof reason);
    assert_string_equal(reason, "limit 3 other 7.5");
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_check_params),
        T(test_check_channels),
        T(test_decision_return_line),
        T(test_reload_typo_keeps_old_set),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
