/* test_rule_files.c -- a rule file that cannot be read is an error, never a
 * rule silently missing (issue 9: with rules/inventory.lua a dangling
 * symlink, `nerve check` printed "ok (1 rules ...)" and exited 0, and the
 * daemon ran without its inventory rule).
 *
 * Real `nerve check` and a real daemon over HTTP on a throwaway redis-server.
 */
#include "harness.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static h_redis *redis;

/* A rules directory NAME holding the shipped inventory.lua and, as
 * financial.lua, a symlink to nowhere. */
static void dangling_dir(const char *name, char *dir, size_t dirlen, char *set, size_t setlen)
{
    char *inv = h_read_file("rules/inventory.lua");
    char link[4200];

    assert_non_null(inv);
    H_RULES_DIR(name, "inventory.lua", inv, dir, dirlen, set, setlen);
    free(inv);
    snprintf(link, sizeof link, "%s/financial.lua", dir);
    unlink(link);
    assert_int_equal(symlink("/nonexistent/financial.lua", link), 0);
}

static void test_check_fails(void **state)
{
    char dir[4096], set[4200], want[4400];
    h_run r;

    (void)state;
    dangling_dir("check", dir, sizeof dir, set, sizeof set);
    h_run_nerve(&r, 10000, NULL,
                (const char *const[]){ "check", "-c", "config/nerve.yaml", "--set", set, NULL });
    snprintf(want, sizeof want, "%s/financial.lua:1: cannot load rule file: dangling symlink "
             "(No such file or directory)", dir);
    if (r.status != 1 || strstr(r.err, want) == NULL || strstr(r.out, ": ok") != NULL)
        fail_msg("nerve check: exit %d, stdout \"%s\", stderr \"%s\"", r.status, r.out, r.err);
    h_run_free(&r);

    /* A directory named like a rule file is refused too. */
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/financial.lua", dir);
    unlink(sub);
    assert_int_equal(mkdir(sub, 0700), 0);
    h_run_nerve(&r, 10000, NULL,
                (const char *const[]){ "check", "-c", "config/nerve.yaml", "--set", set, NULL });
    if (r.status != 1 || strstr(r.err, "financial.lua:1: cannot load rule file: not a regular file") == NULL)
        fail_msg("nerve check: exit %d, stderr \"%s\"", r.status, r.err);
    h_run_free(&r);
    h_pass();
}

/* A reload whose directory lost a file keeps the rules in force. */
static void test_reload_fails(void **state)
{
    char dir[4096], set[4200], path[4200];
    char *inv = h_read_file("rules/inventory.lua"), *fin = h_read_file("rules/financial.lua");
    h_resp r;

    (void)state;
    assert_non_null(inv);
    assert_non_null(fin);
    H_RULES_DIR("reload", "inventory.lua", inv, dir, sizeof dir, set, sizeof set);
    H_WRITE_FILE(dir, "financial.lua", fin);
    free(inv);
    free(fin);
    const char *sets[] = { set, "panic.dry_run=true", NULL };
    h_daemon *d = h_daemon_startv(redis, true, sets, 2);
    assert_non_null(d);
    long long gen = H_GENERATION(d);

    snprintf(path, sizeof path, "%s/financial.lua", dir);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(symlink("/nonexistent/financial.lua", path), 0);
    h_http(d, "POST", "/admin/reload", "{}", &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    if (r.status != 422 || strstr(r.body, "financial.lua:1: cannot load rule file: dangling symlink") == NULL)
        fail_msg("reload: %ld %s", r.status, r.body);
    h_resp_free(&r);
    /* Both rules still in force, same generation. */
    assert_int_equal(H_GENERATION(d), gen);
    h_http(d, "GET", "/rules", NULL, &r, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"financial_risk\""));
    assert_non_null(strstr(r.body, "\"inventory_threshold\""));
    h_resp_free(&r);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_check_fails),
        T(test_reload_fails),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
