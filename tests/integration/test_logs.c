/* test_logs.c -- log lines (SPEC §11): `ts level component message
 * key=value...` on stderr, or one valid JSON object per line with
 * log.format=json / --log-format json; secrets never appear in either. */
#include "harness.h"

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
        const char *msg = cJSON_GetObjectItemCaseSensitive(o, "msg")->valuestring;
        if (strstr(msg, "kill switch engaged scope=log:1")) kill_lines++;
        if (strstr(line, H_ADMIN_TOKEN)) fail_msg("the admin token was logged: %s", line);
        cJSON_Delete(o);
        lines++;
    }
    free(log);
    assert_true(lines >= 5);
    assert_int_equal(kill_lines, 1);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_json_lines, h_test_setup, h_test_teardown),
        cmocka_unit_test_setup_teardown(test_text_lines, h_test_setup, h_test_teardown),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
