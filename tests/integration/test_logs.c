/* test_logs.c -- log lines (SPEC §11): `ts level component message
 * key=value...` on stderr, or one valid JSON object per line with
 * log.format=json / --log-format json, whose key=value pairs are JSON keys
 * of their own; a rule's alert logs at its level; secrets never appear. */
#include "harness.h"

#include <limits.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static h_redis *redis;

/* Drive a little of everything that logs: stock set, sales, a reload, a
 * failed admin call, a kill switch engaged and reset. */
static void exercise(const h_daemon *d)
{
    h_resp r;
    H_SET_STOCK(d, "LOG-1", 3);
    assert_int_equal(h_sale(d, "/sale", "LOG-1", 1, "log-o1", &r), 200);
    h_resp_free(&r);
    assert_int_equal(h_http(d, "POST", "/admin/reload", NULL, &r,
                            "Authorization: Bearer " H_ADMIN_TOKEN, NULL), 200);
    h_resp_free(&r);
    assert_int_equal(h_http(d, "POST", "/admin/killswitch", "{\"scope\":\"log:1\",\"reason\":\"a \\\"quoted\\\"\\nreason\"}",
                            &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL), 200);
    h_resp_free(&r);
    assert_int_equal(h_http(d, "DELETE", "/admin/killswitch/log:1", NULL, &r,
                            "Authorization: Bearer " H_ADMIN_TOKEN, NULL), 200);
    h_resp_free(&r);
    /* A reason that forges pairs of its own (as a rule's reason built from
     * a stranger's event could). */
    assert_int_equal(h_http(d, "POST", "/admin/killswitch",
                            "{\"scope\":\"log:2\",\"reason\":\"x\\\" scope=\\\"global\\\" rule=\\\"forged\"}",
                            &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL), 200);
    h_resp_free(&r);
}

/* The daemon's log after it stopped (caller frees). */
static char *stop_and_read_log(h_daemon *d)
{
    char path[sizeof d->log];
    snprintf(path, sizeof path, "%s", d->log);
    assert_int_equal(h_daemon_stop(d), 0);
    char *buf = h_read_file(path);
    assert_non_null(buf);
    assert_true(buf[0] != '\0');
    return buf;
}

static void test_json_lines(void **state)
{
    (void)state;
    h_daemon *d = h_daemon_start(redis, "log.format=json", "log.level=debug", NULL);
    assert_non_null(d);
    exercise(d);
    char *log = stop_and_read_log(d);
    int lines = 0, kill_lines = 0;
    for (char *save = NULL, *line = strtok_r(log, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "### ", 4) == 0) continue;     /* the harness's own note */
        cJSON *o = cJSON_Parse(line);
        if (!cJSON_IsObject(o)) fail_msg("not a JSON object: %s", line);
        const char *keys[] = { "ts", "level", "component", "msg" };
        for (int i = 0; i < 4; i++)
            if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(o, keys[i])))
                fail_msg("line without a string \"%s\": %s", keys[i], line);
        for (const cJSON *a = o->child; a; a = a->next)
            for (const cJSON *b = a->next; b; b = b->next)
                if (strcmp(a->string, b->string) == 0) fail_msg("key \"%s\" twice: %s", a->string, line);
        const char *msg = cJSON_GetObjectItemCaseSensitive(o, "msg")->valuestring;
        if (strcmp(msg, "kill switch engaged") == 0 && h_jstr(o, "scope") &&
            strcmp(h_jstr(o, "scope"), "log:1") == 0) {
            /* The pairs are keys, the quoted reason (quotes, a space, a
             * newline) comes back as the operator wrote it. */
            if (strstr(msg, "scope=")) fail_msg("pairs left in msg: %s", line);
            assert_string_equal(h_jstr(o, "rule"), "admin");
            assert_string_equal(h_jstr(o, "halt_sales"), "false");
            assert_string_equal(h_jstr(o, "reason"), "a \"quoted\"\nreason");
            kill_lines++;
        }
        if (strcmp(msg, "kill switch engaged") == 0 && strstr(line, "log:2")) {
            /* The caller's pairs keep their values; no key twice (above). */
            assert_string_equal(h_jstr(o, "scope"), "log:2");
            assert_string_equal(h_jstr(o, "rule"), "admin");
            kill_lines++;
        }
        if (strstr(line, H_ADMIN_TOKEN)) fail_msg("the admin token was logged: %s", line);
        cJSON_Delete(o);
        lines++;
    }
    free(log);
    assert_true(lines >= 5);
    assert_int_equal(kill_lines, 2);
    h_pass();
}

static void test_text_lines(void **state)
{
    (void)state;
    h_daemon *d = h_daemon_start(redis, "log.level=debug", NULL);
    assert_non_null(d);
    exercise(d);
    char *log = stop_and_read_log(d);
    regex_t re;
    assert_int_equal(regcomp(&re,
        "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z (debug|info|warn|error) [a-z]+ .+$",
        REG_EXTENDED | REG_NOSUB), 0);
    int lines = 0;
    for (char *save = NULL, *line = strtok_r(log, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "### ", 4) == 0) continue;     /* the harness's own note */
        if (regexec(&re, line, 0, NULL, 0) != 0) fail_msg("not `ts level component message`: %s", line);
        if (strstr(line, H_ADMIN_TOKEN)) fail_msg("the admin token was logged: %s", line);
        lines++;
    }
    regfree(&re);
    free(log);
    assert_true(lines >= 5);
    h_pass();
}

/* A rule that kills on {"kill":true} (a reason with quotes and spaces) and
 * otherwise alerts at the event's level. */
static const char *const LOG_RULE =
    "return {\n"
    "  name = \"log_rule\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if event.kill then\n"
    "      return { action = \"kill\", scope = \"log:rule\", halt_sales = true,\n"
    "               reason = 'said \"stop now\" twice' }\n"
    "    end\n"
    "    return { action = \"alert\", level = event.level, scope = \"log:\" .. event.level,\n"
    "             reason = \"level \" .. event.level }\n"
    "  end,\n"
    "}\n";

/* The JSON line of D's log whose msg is MSG and whose scope is SCOPE, polled
 * for until MS ran out (caller deletes). */
static cJSON *wait_json_line(const h_daemon *d, const char *msg, const char *scope, int ms)
{
    double dl = h_deadline(ms);
    do {
        char *log = h_read_file(d->log);
        for (char *save = NULL, *line = log ? strtok_r(log, "\n", &save) : NULL; line;
             line = strtok_r(NULL, "\n", &save)) {
            cJSON *o = cJSON_Parse(line);
            const char *m = h_jstr(o, "msg"), *s = h_jstr(o, "scope");
            if (m && s && strcmp(m, msg) == 0 && strcmp(s, scope) == 0) {
                free(log);
                return o;
            }
            cJSON_Delete(o);
        }
        free(log);
        h_nap();
    } while (h_before(dl));
    fail_msg("no JSON log line with msg \"%s\" and scope \"%s\" in %s", msg, scope, d->log);
    return NULL;
}

static void test_json_rule_kill_and_alert_levels(void **state)
{
    (void)state;
    char rset[PATH_MAX + 16];
    H_RULES_DIR("logs-rules", "log.lua", LOG_RULE, NULL, 0, rset, sizeof rset);
    h_daemon *d = h_daemon_start(redis, "log.format=json", rset,
                                 "bus.channels=[inventory_events,sales_events,test_events]",
                                 "panic.dry_run=true", NULL);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    assert_true(h_publish(redis, "test_events", "{\"kill\":true}") >= 1);
    const char *levels[] = { "info", "warning", "critical" };
    for (int i = 0; i < 3; i++) {
        char ev[64];
        snprintf(ev, sizeof ev, "{\"level\":\"%s\"}", levels[i]);
        assert_true(h_publish(redis, "test_events", ev) >= 1);
    }

    cJSON *o = wait_json_line(d, "kill switch engaged", "log:rule", 5000);
    assert_string_equal(h_jstr(o, "level"), "warn");
    assert_string_equal(h_jstr(o, "component"), "actions");
    assert_string_equal(h_jstr(o, "rule"), "log_rule");
    assert_string_equal(h_jstr(o, "halt_sales"), "true");
    assert_string_equal(h_jstr(o, "reason"), "said \"stop now\" twice");
    cJSON_Delete(o);

    /* An alert's level is the line's level; the alert's own level=, a key
     * the line already has, comes as field_level. */
    const char *want[] = { "info", "warn", "error" };
    for (int i = 0; i < 3; i++) {
        char scope[32];
        snprintf(scope, sizeof scope, "log:%s", levels[i]);
        o = wait_json_line(d, "alert", scope, 5000);
        assert_string_equal(h_jstr(o, "level"), want[i]);
        assert_string_equal(h_jstr(o, "field_level"), levels[i]);
        assert_string_equal(h_jstr(o, "rule"), "log_rule");
        cJSON_Delete(o);
    }
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* An emergency stop that fails for good logs one error line whose parts are
 * keys of their own (scope, rule, attempts, the last error, the kill's
 * reason), not a sentence the reader must cut up; a reason carrying
 * pairs of its own stays one value. */
static void test_json_critical_failure_fields(void **state)
{
    (void)state;
    char hook[96];
    snprintf(hook, sizeof hook, "panic.webhook_url=http://127.0.0.1:%d/pause", h_free_port());
    h_daemon *d = h_daemon_start(redis, "log.format=json", hook, "panic.max_attempts=2",
                                 "panic.backoff_initial_ms=1", "panic.timeout_ms=500", NULL);
    assert_non_null(d);
    h_resp r;
    assert_int_equal(h_http(d, "POST", "/admin/killswitch",
                            "{\"scope\":\"log:fail\",\"reason\":\"down x=\\\"1\\\" y\"}", &r,
                            "Authorization: Bearer " H_ADMIN_TOKEN, NULL),
                     200);
    h_resp_free(&r);
    cJSON *o = wait_json_line(d, "critical failure: emergency stop failed", "log:fail", 10000);
    assert_string_equal(h_jstr(o, "level"), "error");
    assert_string_equal(h_jstr(o, "attempts"), "2");
    assert_string_equal(h_jstr(o, "reason"), "down x=\"1\" y");
    assert_true(strlen(h_jstr(o, "error")) > 0);
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "x"));
    cJSON_Delete(o);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_json_lines, h_test_setup, h_test_teardown),
        cmocka_unit_test_setup_teardown(test_text_lines, h_test_setup, h_test_teardown),
        cmocka_unit_test_setup_teardown(test_json_critical_failure_fields, h_test_setup,
                                        h_test_teardown),
        cmocka_unit_test_setup_teardown(test_json_rule_kill_and_alert_levels, h_test_setup,
                                        h_test_teardown),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
