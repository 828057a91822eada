/* test_rules_new.c -- an analyst's first rule: `nerve rules new NAME --on
 * CHANNEL` writes a rule that loads, passes its fixtures and decides
 * something on rules/examples/events.jsonl, for every kind of channel; bad
 * names, unknown channels and existing files are refused and leave nothing
 * behind. The README's tutorial rule (rules/examples/velocity.lua, quoted
 * verbatim in README.md) passes `nerve check` and gives the decision the
 * README shows; globals behave as the README says. GET / lists the routes.
 * One daemon for GET /; the rest are one-shot runs of the real binary.
 */
#include "harness.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static h_redis *redis;
static h_daemon *daemon_;

static int run(h_run *r, const char *const *args) {
    return h_run_nerve(r, 20000, NULL, args);
}

#define FAIL_RUN(r, what) \
    fail_msg("%s: exit %d\nstdout:\n%s\nstderr:\n%s", (what), (r).status, (r).out, (r).err)

/* A fresh empty directory NAME in the temp dir, its path into DIR. */
static void fresh_dir(const char *name, char *dir, size_t len) {
    H_RULES_DIR(name, NULL, NULL, dir, len, NULL, 0);
}

/* The names in DIR, sorted, joined by spaces (static buffer). */
static const char *listing(const char *dir) {
    static char out[4096];
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, alphasort);
    out[0] = '\0';
    assert_true(n >= 0);
    for (int i = 0; i < n; i++) {
        if (strcmp(ents[i]->d_name, ".") != 0 && strcmp(ents[i]->d_name, "..") != 0) {
            if (out[0]) strncat(out, " ", sizeof out - strlen(out) - 1);
            strncat(out, ents[i]->d_name, sizeof out - strlen(out) - 1);
        }
        free(ents[i]);
    }
    free(ents);
    return out;
}

static const char *const channels[] = { "sale_request", "inventory_events", "sales_events",
                                        "financial_events" };
#define NCHAN (sizeof channels / sizeof channels[0])

/* One rule per kind of channel, all in one directory: each is written, the
 * set passes `nerve check` (every fixture), and each rule decides something
 * on the shipped sample events with its declared default. */
static void test_each_channel(void **state) {
    (void)state;
    char dir[PATH_MAX], set[PATH_MAX + 16], name[64], want[3 * PATH_MAX];
    h_run r;
    fresh_dir("rn-kinds", dir, sizeof dir);
    snprintf(set, sizeof set, "rules.dir=%s", dir);
    for (size_t i = 0; i < NCHAN; i++) {
        snprintf(name, sizeof name, "my_%s", channels[i]);
        run(&r, (const char *const[]){ "rules", "new", name, "--on", channels[i], "--dir", dir,
                                       NULL });
        snprintf(want, sizeof want, "wrote %s/%s.lua: rule %s on %s, with fixtures", dir, name,
                 name, channels[i]);
        if (r.status != 0 || strncmp(r.out, want, strlen(want)) != 0 || r.err[0])
            FAIL_RUN(r, want);
        /* The next steps it prints are runnable as printed. */
        snprintf(want, sizeof want,
                 "next:\n  nerve check --set rules.dir=%s\n  nerve rules test --set rules.dir=%s "
                 "--rule %s rules/examples/events.jsonl\n",
                 dir, dir, name);
        if (!strstr(r.out, want)) FAIL_RUN(r, want);
        h_run_free(&r);

        snprintf(want, sizeof want, "%s/%s.lua", dir, name);
        char *text = h_read_file(want);
        assert_non_null(text);
        char decl[256];
        snprintf(decl, sizeof decl, "  name = \"%s\",\n", name);
        if (!strstr(text, decl)) fail_msg("%s lacks %s:\n%s", want, decl, text);
        snprintf(decl, sizeof decl, "  on = { \"%s\" },\n", channels[i]);
        if (!strstr(text, decl)) fail_msg("%s lacks %s", want, decl);
        snprintf(decl, sizeof decl, "  params_section = \"%s\",\n", name);
        if (!strstr(text, decl)) fail_msg("%s lacks %s", want, decl);
        if (!strstr(text, "  params = {\n") || !strstr(text, "ctx.state") ||
            !strstr(text, "  tests = {\n"))
            fail_msg("%s: no params declaration, ctx.state or fixtures:\n%s", want, text);
        free(text);
        struct stat st;
        assert_int_equal(stat(want, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0644);
    }
    /* Only the four rules: no temporary file left behind. */
    assert_string_equal(listing(dir), "my_financial_events.lua my_inventory_events.lua "
                                      "my_sale_request.lua my_sales_events.lua");

    run(&r, (const char *const[]){ "check", "--set", set, NULL });
    if (r.status != 0 || !strstr(r.out, ": ok (4 rules, 17 fixtures passed")) FAIL_RUN(r, "check");
    h_run_free(&r);

    for (size_t i = 0; i < NCHAN; i++) {
        snprintf(name, sizeof name, "my_%s", channels[i]);
        run(&r, (const char *const[]){ "rules", "test", "--set", set, "--rule", name,
                                       "rules/examples/events.jsonl", NULL });
        snprintf(want, sizeof want, "{\"rule\":\"%s\",\"channel\":\"%s\",\"decision\":", name,
                 channels[i]);
        if (r.status != 0 || !strstr(r.out, want) || strstr(r.err, "errors: 0\n") == NULL)
            FAIL_RUN(r, want);
        h_run_free(&r);
    }
    h_pass();
}

/* RUN ARGS: exit STATUS with exactly ERR on stderr and nothing on stdout. */
static void refused(const char *const *args, int status, const char *err) {
    h_run r;
    run(&r, args);
    if (r.status != status || strcmp(r.err, err) != 0 || r.out[0])
        fail_msg("nerve rules new %s: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant: %s",
                 args[2], r.status, status, r.out, r.err, err);
    h_run_free(&r);
}

static void test_refusals(void **state) {
    (void)state;
    char dir[PATH_MAX], path[PATH_MAX + 32], err[PATH_MAX + 256];
    fresh_dir("rn-refuse", dir, sizeof dir);
    static const char *const bad[] = { "1st", "a/b", "../x", "x.lua", "my-rule", "a b", "",
                                       "é" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(err, sizeof err,
                 "nerve rules new: rule name \"%s\" must be letters, digits and _, not starting "
                 "with a digit (it names the file NAME.lua and the params section)\n",
                 bad[i]);
        if (!bad[i][0])
            snprintf(err, sizeof err, "nerve rules new: rule name must be 1 to 64 characters\n");
        refused((const char *const[]){ "rules", "new", bad[i], "--on", "sales_events", "--dir",
                                       dir, NULL },
                2, err);
    }
    char longname[66];
    memset(longname, 'a', 65);
    longname[65] = '\0';
    refused((const char *const[]){ "rules", "new", longname, "--on", "sales_events", "--dir", dir,
                                   NULL },
            2, "nerve rules new: rule name must be 1 to 64 characters\n");
    refused((const char *const[]){ "rules", "new", "end", "--on", "sales_events", "--dir", dir,
                                   NULL },
            2, "nerve rules new: rule name \"end\" is a Lua keyword\n");
    refused((const char *const[]){ "rules", "new", "ok_name", "--on", "nope", "--dir", dir, NULL },
            2,
            "nerve rules new: --on nope: unknown channel \"nope\": not in bus.channels, "
            "bus.inventory_channel or bus.sales_channel, nor built in (known: inventory_events, "
            "sales_events, financial_events, sale_request)\n");
    /* The known list is the config's, and the message is the loader's own
     * (rules_channel_known: one definition), suggestion included. */
    refused((const char *const[]){ "rules", "new", "ok_name", "--on", "order", "--dir", dir,
                                   "--set", "bus.channels=[orders]", NULL },
            2,
            "nerve rules new: --on order: unknown channel \"order\": not in bus.channels, "
            "bus.inventory_channel or bus.sales_channel, nor built in (known: orders, "
            "inventory_events, sales_events, sale_request); did you mean orders?\n");
    refused((const char *const[]){ "rules", "new", "ok_name", "--dir", dir, NULL }, 2,
            "usage: nerve rules new NAME --on CHANNEL [-c FILE] [--dir DIR] [--force] (nerve "
            "rules new --help)\n");
    assert_string_equal(listing(dir), "");

    /* An existing file is left as it is without --force, replaced with it. */
    H_WRITE_FILE(dir, "mine.lua", "-- my work\n");
    snprintf(path, sizeof path, "%s/mine.lua", dir);
    snprintf(err, sizeof err,
             "nerve rules new: %s exists; not overwritten (--force replaces it)\n", path);
    refused((const char *const[]){ "rules", "new", "mine", "--on", "sales_events", "--dir", dir,
                                   NULL },
            1, err);
    char *text = h_read_file(path);
    assert_non_null(text);
    assert_string_equal(text, "-- my work\n");
    free(text);
    assert_string_equal(listing(dir), "mine.lua");
    h_run r;
    run(&r, (const char *const[]){ "rules", "new", "mine", "--on", "sales_events", "--dir", dir,
                                   "--force", NULL });
    if (r.status != 0) FAIL_RUN(r, "--force");
    h_run_free(&r);
    text = h_read_file(path);
    assert_non_null(text);
    assert_non_null(strstr(text, "  name = \"mine\",\n"));
    free(text);
    assert_string_equal(listing(dir), "mine.lua");

    /* A directory that is not there. */
    snprintf(path, sizeof path, "%s/missing", dir);
    snprintf(err, sizeof err, "nerve rules new: %s: No such file or directory\n", path);
    refused((const char *const[]){ "rules", "new", "x", "--on", "sales_events", "--dir", path,
                                   NULL },
            1, err);

    run(&r, (const char *const[]){ "rules", "new", "--help", NULL });
    if (r.status != 0 || !strstr(r.out, "usage: nerve rules new NAME --on CHANNEL"))
        FAIL_RUN(r, "--help");
    h_run_free(&r);
    run(&r, (const char *const[]){ "help", NULL });
    if (!strstr(r.out, "rules new NAME --on CHANNEL")) FAIL_RUN(r, "nerve help");
    h_run_free(&r);
    h_pass();
}

/* README.md quotes rules/examples/velocity.lua whole; it checks and gives
 * the decision the README shows on rules/examples/velocity.jsonl. */
static void test_readme_tutorial(void **state) {
    (void)state;
    char *readme = h_read_file("README.md");
    char *rule = h_read_file("rules/examples/velocity.lua");
    assert_non_null(readme);
    assert_non_null(rule);
    if (!strstr(readme, rule))
        fail_msg("README.md does not quote rules/examples/velocity.lua as it is");
    h_run r;
    run(&r, (const char *const[]){ "check", "--set", "rules.dir=rules/examples", NULL });
    if (r.status != 0 || !strstr(r.out, ": ok (1 rules, 5 fixtures passed")) FAIL_RUN(r, "check");
    h_run_free(&r);
    run(&r, (const char *const[]){ "rules", "test", "--set", "rules.dir=rules/examples",
                                   "rules/examples/velocity.jsonl", NULL });
    const char *want = "rules/examples/velocity.jsonl:4: {\"rule\":\"velocity\",\"channel\":"
                       "\"sales_events\",\"decision\":{\"action\":\"alert\",\"level\":\"warning\","
                       "\"scope\":\"sku:ABC-1\",\"reason\":\"4 sales of ABC-1 within 60 s (more "
                       "than 3)\"}}\n";
    if (r.status != 0 || strcmp(r.out, want) != 0 ||
        !strstr(r.err, "events: 5, decisions: 1 (alert 1), errors: 0\n"))
        FAIL_RUN(r, want);
    if (!strstr(readme, want)) fail_msg("README.md does not show the line\n%s", want);
    h_run_free(&r);
    free(rule);
    free(readme);
    h_pass();
}

/* What the README says of globals: a global (or a file-level local) lives
 * as long as the rule's Lua state -- it carries from event to event, never
 * from the fixtures to the events (they run on another state). */
#define GLOBAL_RULE \
    "count = 0\n" \
    "local up = 0\n" \
    "return {\n" \
    "  name = \"g\", on = { \"t\" },\n" \
    "  evaluate = function(event, ctx)\n" \
    "    count = count + 1\n" \
    "    up = up + 1\n" \
    "    return { action = \"alert\", level = \"info\", reason = count .. \" \" .. up }\n" \
    "  end,\n" \
    "  tests = { { channel = \"t\", event = {}, expect = { { reason = \"1 1\" } } },\n" \
    "            { channel = \"t\", event = {}, expect = { { reason = \"2 2\" } } } },\n" \
    "}\n"

static void test_globals(void **state) {
    (void)state;
    char dir[PATH_MAX], set[PATH_MAX + 16], events[PATH_MAX];
    H_RULES_DIR("rn-globals", "g.lua", GLOBAL_RULE, dir, sizeof dir, set, sizeof set);
    snprintf(events, sizeof events, "%s/g.jsonl", h_tmpdir());
    H_WRITE_FILE(h_tmpdir(), "g.jsonl",
                 "{\"channel\":\"t\",\"event\":{}}\n{\"channel\":\"t\",\"event\":{}}\n"
                 "{\"channel\":\"t\",\"event\":{}}\n");
    h_run r;
    run(&r, (const char *const[]){ "rules", "test", "--set", set, "--set", "bus.channels=[t]",
                                   events, NULL });
    if (r.status != 0 || !strstr(r.out, ":1: {\"rule\":\"g\",\"channel\":\"t\",\"decision\":"
                                        "{\"action\":\"alert\",\"level\":\"info\",\"reason\":\"1 1\"}}\n") ||
        !strstr(r.out, ":3: {\"rule\":\"g\",\"channel\":\"t\",\"decision\":"
                       "{\"action\":\"alert\",\"level\":\"info\",\"reason\":\"3 3\"}}\n"))
        FAIL_RUN(r, "globals");
    h_run_free(&r);
    h_pass();
}

/* GET / lists every route from the route table; other paths still 404. */
static void test_index(void **state) {
    (void)state;
    h_resp r;
    assert_int_equal(h_http(daemon_, "GET", "/", NULL, &r, NULL), 200);
    H_ASSERT_JSON(&r);
    assert_true(h_jkeys(r.json, "name", "version", "endpoints", NULL));
    assert_string_equal(h_jstr(r.json, "name"), "nerve");
    assert_true(h_jstr(r.json, "version") && h_jstr(r.json, "version")[0]);
    const cJSON *list = cJSON_GetObjectItem(r.json, "endpoints"), *e;
    assert_true(cJSON_IsArray(list));
    static const struct {
        const char *method, *path;
        int admin;
    } want[] = { { "GET", "/", 0 },
                 { "POST", "/sale", 0 },
                 { "GET", "/stock/{sku}", 0 },
                 { "GET", "/rules", 0 },
                 { "PUT", "/admin/stock/{sku}", 1 },
                 { "DELETE", "/admin/killswitch/{scope}", 1 },
                 { "POST", "/admin/reload", 1 } };
    int found[sizeof want / sizeof want[0]] = { 0 };
    cJSON_ArrayForEach(e, list) {
        assert_true(h_jkeys(e, "method", "path", "admin", "does", NULL));
        assert_true(h_jbool(e, "admin") >= 0);
        if (!h_jstr(e, "does")[0]) fail_msg("%s %s: empty does", h_jstr(e, "method"), h_jstr(e, "path"));
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
            if (strcmp(h_jstr(e, "method"), want[i].method) == 0 &&
                strcmp(h_jstr(e, "path"), want[i].path) == 0) {
                assert_int_equal(h_jbool(e, "admin"), want[i].admin);
                found[i]++;
            }
    }
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (found[i] != 1)
            fail_msg("GET / lists %s %s %d times:\n%s", want[i].method, want[i].path, found[i],
                     r.body);
    h_resp_free(&r);

    /* / is not a prefix: unknown paths are still 404, and the routes with a
     * {name} part (/stock/{sku}) still take their argument. */
    assert_int_equal(h_http(daemon_, "GET", "/nowhere", NULL, &r, NULL), 404);
    H_ASSERT_ERROR(&r, 404, "not_found");
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "GET", "/stock", NULL, &r, NULL), 404);
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "POST", "/", "{}", &r, NULL), 405);
    H_ASSERT_ERROR(&r, 405, "method_not_allowed");
    h_resp_free(&r);
    H_SET_STOCK(daemon_, "RN-1", 7);
    assert_int_equal(H_GET_STOCK(daemon_, "RN-1"), 7);
    assert_int_equal(H_GET_STOCK(daemon_, "RN-none"), -1);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_each_channel), T(test_refusals), T(test_readme_tutorial),
        T(test_globals),      T(test_index),
    };
    h_group_use(&redis, &daemon_, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
