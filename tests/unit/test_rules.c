/* test_rules.c -- unit tests of the rules engine (engine/rules*.c).
 *
 * Sandbox cases are one table: a hostile or broken rule file under
 * tests/unit/rules/, loaded next to good.lua, and the exact error it must
 * produce (`FILE:LINE: message`, the text an analyst reads). Each case checks
 * that the error is reported and counted for that rule only, that good.lua's
 * decision still comes through, and that the next event behaves the same.
 * Then: load-time errors (exact, all of them), fixtures, params and ctx
 * read-only, state carried/reset across rules_vm_new(previous), memory-limit
 * rebuild, the instruction-limit abort time, bad events, the dry run, and the
 * shipped rules against their fixtures and rules/examples/events.jsonl.
 *
 * No network. Run from the repository root (paths are relative to it).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <cjson/cJSON.h>

#include "nerve/config.h"
#include "nerve/log.h"
#include "nerve/rules.h"

#define DIR "tests/unit/rules"

/* ---- helpers --------------------------------------------------------------- */

#include "rules_capture.h"

static const char *shipped_params =
    "{\"inventory\":{\"warning_threshold\":20,\"critical_threshold\":5},"
    "\"financial\":{\"daily_budget\":1000.0,\"refund_ratio_max\":0.3,"
    "\"min_revenue_for_ratio\":100.0,\"min_unit_price\":1.0,\"min_unit_price_by_sku\":{}}}";

/* Load FILES (N of them, relative to DIR_; N == 0: the whole directory). */
static rules_set *load(const char *dir, const char *const *files, size_t n,
                       long long instr, long long mem, const char *params, char **errs)
{
    cfg c;
    rules_set *s;

    memset(&c, 0, sizeof(c));
    c.rules_dir = (char *)dir;
    c.rules_files = (char **)files;
    c.n_rules_files = n;
    c.rules_instruction_limit = instr;
    c.rules_memory_limit = mem;
    c.max_event_bytes = 4096;
    c.params = cJSON_Parse(params ? params : "{}");
    assert_non_null(c.params);
    *errs = NULL;
    s = rules_set_load(&c, errs);
    cJSON_Delete(c.params);
    return s;
}

/* Load and expect failure with exactly ERRORS. */
static void expect_load_errors(const char *dir, const char *const *files, size_t n,
                               long long instr, const char *errors)
{
    char *errs;
    rules_set *s = load(dir, files, n, instr, 1 << 20, NULL, &errs);

    assert_null(s);
    assert_non_null(errs);
    assert_string_equal(errs, errors);
    free(errs);
}

static rules_vm *vm_of(rules_set *s, capture *cap)
{
    char err[1024];
    rules_vm *vm = rules_vm_new(s, NULL, err, sizeof(err));

    if (vm == NULL)
        fail_msg("rules_vm_new: %s", err);
    rules_vm_on_error(vm, on_err, cap);
    return vm;
}

static int eval(rules_vm *vm, const char *channel, const char *json, capture *cap)
{
    memset(cap, 0, sizeof(*cap));
    return rules_eval(vm, channel, json, strlen(json), on_dec, cap);
}

static size_t rule_index(rules_set *s, const char *name)
{
    rules_info in;

    for (size_t i = 0; i < rules_set_count(s); i++)
        if (rules_set_info(s, i, &in) == 0 && strcmp(in.name, name) == 0)
            return i;
    fail_msg("no rule %s", name);
    return 0;
}

static double mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *tmpdir(void)
{
    char *d = strdup("/tmp/nerve-test-rules-XXXXXX");

    assert_non_null(mkdtemp(d));
    return d;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void rm_dir(char *dir)
{
    char cmd[600];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

/* ---- the sandbox table ------------------------------------------------------ */

typedef struct sandbox_case {
    const char *file;
    const char *rule;
    const char *error;          /* after DIR "/" */
} sandbox_case;

static const sandbox_case cases[] = {
    { "io_open.lua", "io_open", "io_open.lua:6: attempt to index a nil value (global 'io')" },
    { "os_execute.lua", "os_execute",
      "os_execute.lua:6: attempt to call a nil value (field 'execute')" },
    { "require.lua", "require_io", "require.lua:6: attempt to call a nil value (global 'require')" },
    { "load.lua", "load_string", "load.lua:6: attempt to call a nil value (global 'load')" },
    { "dofile.lua", "dofile_etc", "dofile.lua:6: attempt to call a nil value (global 'dofile')" },
    { "string_dump.lua", "string_dump",
      "string_dump.lua:6: attempt to call a nil value (field 'dump')" },
    { "infinite_loop.lua", "infinite_loop",
      "infinite_loop.lua:6: instruction limit exceeded (100000 instructions)" },
    { "pcall_loop.lua", "pcall_loop",
      "pcall_loop.lua:6: instruction limit exceeded (100000 instructions)" },
    { "table_grow.lua", "table_grow",
      "table_grow.lua:7: memory limit exceeded (1048576 bytes); ctx.state reset" },
    { "table_grow_pcall.lua", "table_grow_pcall",
      "table_grow_pcall.lua:6: memory limit exceeded (1048576 bytes); ctx.state reset" },
    { "string_rep.lua", "string_rep", "string_rep.lua:6: resulting string too large" },
    { "string_rep_1g.lua", "string_rep_1g",
      "string_rep_1g.lua:6: memory limit exceeded (1048576 bytes); ctx.state reset" },
    { "error_table.lua", "error_table", "error_table.lua:6: error object is a table value" },
    { "gc_finalizer.lua", "gc_finalizer",
      "gc_finalizer.lua:6: __gc metamethods are not allowed in rules" },
    { "unknown_action.lua", "unknown_action",
      "unknown_action.lua:6: decision 1: unknown action \"explode\" (expected alert, kill or reject)" },
    { "missing_reason.lua", "missing_reason", "missing_reason.lua:6: decision 2: alert needs a reason" },
    { "kill_no_scope.lua", "kill_no_scope", "kill_no_scope.lua:6: decision 1: kill needs a scope" },
    { "reject_not_sale.lua", "reject_not_sale",
      "reject_not_sale.lua:6: decision 1: reject is only allowed in sale_request rules (channel is test)" },
    { "bad_field.lua", "bad_field", "bad_field.lua:6: decision 1: unknown field \"halt_sale\"" },
    { "bad_return.lua", "bad_return",
      "bad_return.lua:6: evaluate must return nothing, a decision or a list of decisions, not a string" },
};

static void test_sandbox_case(void **state)
{
    const sandbox_case *tc = *state;
    const char *files[] = { "good.lua", tc->file };
    char *errs, want[512], reason[32];
    rules_set *s = load(DIR, files, 2, 100000, 1 << 20, NULL, &errs);
    rules_stats st;
    capture cap;
    rules_vm *vm;
    size_t bad, good;

    if (s == NULL)
        fail_msg("load: %s", errs);
    vm = vm_of(s, &cap);
    snprintf(want, sizeof(want), DIR "/%s", tc->error);
    for (int round = 1; round <= 3; round++) {
        char ev[32];

        snprintf(ev, sizeof(ev), "{\"n\":%d}", round);
        assert_int_equal(eval(vm, "test", ev, &cap), 1);
        assert_int_equal(cap.n_err, 1);
        assert_string_equal(cap.err_rule[0], tc->rule);
        assert_string_equal(cap.err_msg[0], want);
        /* The neighbour is not affected, nor is any decision of the failed
         * evaluation delivered. */
        assert_int_equal(cap.n_dec, 1);
        assert_string_equal(cap.dec_rule[0], "good");
        snprintf(reason, sizeof(reason), "good %d", round);
        assert_string_equal(cap.dec_reason[0], reason);
    }
    bad = rule_index(s, tc->rule);
    good = rule_index(s, "good");
    assert_int_equal(rules_set_stats(s, bad, &st), 0);
    assert_int_equal(st.evaluations, 3);
    assert_int_equal(st.errors, 3);
    assert_int_equal(st.decisions[RULES_ALERT] + st.decisions[RULES_KILL] + st.decisions[RULES_REJECT], 0);
    assert_int_equal(rules_set_stats(s, good, &st), 0);
    assert_int_equal(st.evaluations, 3);
    assert_int_equal(st.errors, 0);
    assert_int_equal(st.decisions[RULES_ALERT], 3);
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* ---- load-time errors -------------------------------------------------------- */

static int bytecode_writer(lua_State *L, const void *p, size_t sz, void *ud)
{
    (void)L;
    return fwrite(p, 1, sz, ud) == sz ? 0 : 1;
}

/* A precompiled chunk, written with lua_dump (no luac needed), is refused
 * with a clear message, not Lua's "attempt to load a binary chunk". */
static void test_bytecode_refused(void **state)
{
    char *dir = tmpdir(), path[512], want[1024];
    const char *files[1] = { path };
    lua_State *L = luaL_newstate();
    FILE *f;

    (void)state;
    snprintf(path, sizeof(path), "%s/bytecode.lua", dir);
    assert_int_equal(luaL_loadstring(L, "return { name = 'bc', on = { 'test' }, "
                                        "evaluate = function() end }"), LUA_OK);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(lua_dump(L, bytecode_writer, f, 0), 0);
    fclose(f);
    lua_close(L);
    snprintf(want, sizeof(want), "%s:1: precompiled Lua bytecode is not accepted: rule files "
             "are loaded from source text only\n", path);
    expect_load_errors(DIR, files, 1, 100000, want);
    rm_dir(dir);
}

static void test_syntax_error(void **state)
{
    const char *files[] = { "good.lua", "syntax_error.lua" };

    (void)state;
    expect_load_errors(DIR, files, 2, 100000,
                       DIR "/syntax_error.lua:7: unexpected symbol near '='\n");
}

static void test_not_table(void **state)
{
    const char *files[] = { "not_table.lua" };

    (void)state;
    expect_load_errors(DIR, files, 1, 100000,
                       DIR "/not_table.lua:1: rule file must return a table, not number\n");
}

static void test_bad_shape(void **state)
{
    const char *files[] = { "bad_shape.lua" };

    (void)state;
    expect_load_errors(DIR, files, 1, 100000,
        DIR "/bad_shape.lua:5: unknown field \"evalute\" in the rule table (expected name, on, "
            "evaluate, tests, description, params_section, params)\n"
        DIR "/bad_shape.lua:3: name must be a string of 1 to 64 characters from [A-Za-z0-9_.-]\n"
        DIR "/bad_shape.lua:4: on must be a list of 1 to 32 channel names\n"
        DIR "/bad_shape.lua:1: evaluate must be a function(event, ctx)\n"
        DIR "/bad_shape.lua:6: tests must be a list of fixtures\n");
}

static void test_duplicate_names(void **state)
{
    const char *files[] = { "dup_a.lua", "good.lua", "dup_b.lua" };

    (void)state;
    expect_load_errors(DIR, files, 3, 100000,
                       DIR "/dup_b.lua:4: duplicate rule name \"dup\" (also in "
                       DIR "/dup_a.lua:3)\n");
}

static void test_toplevel_loop(void **state)
{
    const char *files[] = { "toplevel_loop.lua" };

    (void)state;
    expect_load_errors(DIR, files, 1, 100000,
                       DIR "/toplevel_loop.lua:3: instruction limit exceeded (100000 instructions)\n");
}

static void test_failing_fixture(void **state)
{
    const char *files[] = { "failing_fixture.lua" };

    (void)state;
    expect_load_errors(DIR, files, 1, 100000,
        DIR "/failing_fixture.lua:13: fixture 2 (test): decision 1: expected level=\"warning\", "
            "got level=\"info\"\n"
        DIR "/failing_fixture.lua:15: fixture 3 (other): expected {action=\"alert\", "
            "level=\"info\", reason=\"x\"}, got no decision\n"
        DIR "/failing_fixture.lua:17: fixture 4 (test): expected no decision, got "
            "{action=\"alert\", level=\"critical\", reason=\"level critical\"}\n"
        DIR "/failing_fixture.lua:19: fixture 5 (nope): channel is not one of the rule's `on` "
            "channels\n"
        DIR "/failing_fixture.lua:7: fixture 6 (test, line 20): decision 1: unknown level \"loud\" "
            "(expected info, warning or critical)\n");
}

/* Every broken file of a set is reported, in file order, not just the first. */
static void test_all_errors_collected(void **state)
{
    const char *files[] = { "syntax_error.lua", "good.lua", "not_table.lua", "dup_a.lua",
                            "toplevel_loop.lua", "dup_b.lua", "missing.lua" };

    (void)state;
    expect_load_errors(DIR, files, 7, 100000,
        DIR "/syntax_error.lua:7: unexpected symbol near '='\n"
        DIR "/not_table.lua:1: rule file must return a table, not number\n"
        DIR "/toplevel_loop.lua:3: instruction limit exceeded (100000 instructions)\n"
        DIR "/dup_b.lua:4: duplicate rule name \"dup\" (also in " DIR "/dup_a.lua:3)\n"
        DIR "/missing.lua:1: cannot open rule file: No such file or directory\n");
}

static void test_rules_dir(void **state)
{
    char *dir = tmpdir(), *errs, want[600];
    const char *one = "return { name = '%s', on = { 'test' }, evaluate = function() end }\n";
    char text[200];
    rules_set *s;
    rules_info in;

    (void)state;
    snprintf(want, sizeof(want), "%s:1: no rule files (*.lua) in the rules directory\n", dir);
    expect_load_errors(dir, NULL, 0, 100000, want);
    snprintf(text, sizeof(text), one, "b");
    write_file(dir, "b.lua", text);
    snprintf(text, sizeof(text), one, "a");
    write_file(dir, "a.lua", text);
    write_file(dir, ".hidden.lua", "this is not Lua");
    write_file(dir, "notes.txt", "neither is this");
    s = load(dir, NULL, 0, 100000, 1 << 20, NULL, &errs);
    if (s == NULL)
        fail_msg("%s", errs);
    assert_int_equal(rules_set_count(s), 2);
    assert_int_equal(rules_set_info(s, 0, &in), 0);
    assert_string_equal(in.name, "a");
    snprintf(want, sizeof(want), "%s/a.lua", dir);
    assert_string_equal(in.file, want);
    assert_int_equal(rules_set_info(s, 1, &in), 0);
    assert_string_equal(in.name, "b");
    assert_int_equal(rules_set_info(s, 2, &in), -1);
    rules_set_unref(s);
    rm_dir(dir);

    expect_load_errors("/nonexistent/nerve-rules", NULL, 0, 100000,
                       "/nonexistent/nerve-rules:1: cannot open rules directory: No such file "
                       "or directory\n");
}

/* ---- evaluation -------------------------------------------------------------- */

static void test_params_read_only(void **state)
{
    const char *files[] = { "params_write.lua" };
    const char *params = "{\"inventory\":{\"warning_threshold\":20},\"list\":[1,2,3]}";
    static const struct { const char *ev, *err; } w[] = {
        { "{\"case\":\"top\"}", DIR "/params_write.lua:6: params is read-only" },
        { "{\"case\":\"nested\"}", DIR "/params_write.lua:7: params is read-only" },
        { "{\"case\":\"ctx\"}", DIR "/params_write.lua:8: ctx is read-only" },
        { "{\"case\":\"meta\"}", DIR "/params_write.lua:9: cannot change a protected metatable" },
    };
    char *errs;
    rules_set *s = load(DIR, files, 1, 100000, 1 << 20, params, &errs);
    capture cap;
    rules_vm *vm;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    vm = vm_of(s, &cap);
    /* Reading works: pairs, ipairs and # through the read-only proxies. */
    assert_int_equal(eval(vm, "test", "{}", &cap), 0);
    assert_int_equal(cap.n_dec, 1);
    assert_string_equal(cap.dec_reason[0], "keys=2 len=3 sum=6 warn=20");
    for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
        assert_int_equal(eval(vm, "test", w[i].ev, &cap), 1);
        assert_int_equal(cap.n_err, 1);
        assert_string_equal(cap.err_msg[0], w[i].err);
    }
    /* Nothing was changed by the attempts. */
    assert_int_equal(eval(vm, "test", "{}", &cap), 0);
    assert_string_equal(cap.dec_reason[0], "keys=2 len=3 sum=6 warn=20");
    rules_vm_free(vm);
    rules_set_unref(s);
}

static void test_whitelist(void **state)
{
    const char *files[] = { "whitelist.lua" };
    char *errs;
    rules_set *s = load(DIR, files, 1, 100000, 1 << 20, NULL, &errs);
    capture cap;
    rules_vm *vm;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    vm = vm_of(s, &cap);
    assert_int_equal(eval(vm, "test", "{}", &cap), 0);
    assert_int_equal(cap.n_dec, 1);
    assert_string_equal(cap.dec_reason[0], "missing= leaked=");
    rules_vm_free(vm);
    rules_set_unref(s);
}

static void test_sale_policy(void **state)
{
    const char *files[] = { "sale_policy.lua", "good.lua" };
    char *errs;
    rules_set *s = load(DIR, files, 2, 100000, 1 << 20, NULL, &errs);
    capture cap;
    rules_vm *vm;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    assert_true(rules_set_listens(s, RULES_SALE_CHANNEL));
    assert_false(rules_set_listens(s, "inventory_events"));
    vm = vm_of(s, &cap);
    assert_int_equal(eval(vm, RULES_SALE_CHANNEL, "{\"sku\":\"A\",\"qty\":11}", &cap), 0);
    assert_int_equal(cap.n_dec, 1);
    assert_string_equal(cap.dec_rule[0], "sale_policy");
    assert_int_equal(cap.dec_action[0], RULES_REJECT);
    assert_string_equal(cap.dec_reason[0], "at most 10 per order");
    assert_string_equal(cap.dec_scope[0], "");
    assert_int_equal(eval(vm, RULES_SALE_CHANNEL, "{\"sku\":\"A\",\"qty\":2}", &cap), 0);
    assert_int_equal(cap.n_dec, 0);
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* {"a":[[...[1]...]]} with ARRAYS nested arrays. */
static void nested(char *buf, int arrays)
{
    int off = sprintf(buf, "{\"a\":");

    for (int i = 0; i < arrays; i++)
        buf[off++] = '[';
    buf[off++] = '1';
    for (int i = 0; i < arrays; i++)
        buf[off++] = ']';
    strcpy(buf + off, "}");
}

static void test_bad_events(void **state)
{
    const char *files[] = { "good.lua" };
    static const struct { const char *json, *err; } w[] = {
        { "{\"n\":", "event is not valid JSON (at byte 4)" },
        { "[1,2]", "event is not one JSON object" },
        { "{\"n\":1} {}", "event is not one JSON object" },
    };
    char *errs, big[5000];
    rules_set *s = load(DIR, files, 1, 100000, 1 << 20, NULL, &errs);
    capture cap;
    rules_vm *vm;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    vm = vm_of(s, &cap);
    for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
        assert_int_equal(eval(vm, "test", w[i].json, &cap), -1);
        assert_string_equal(rules_vm_errstr(vm), w[i].err);
        assert_int_equal(cap.n_dec + cap.n_err, 0);
    }
    /* An object holding 32 nested arrays is 33 levels: too deep; 32 is fine. */
    nested(big, 32);
    assert_int_equal(eval(vm, "test", big, &cap), -1);
    assert_string_equal(rules_vm_errstr(vm), "event nested deeper than 32 levels");
    nested(big, 31);
    assert_int_equal(eval(vm, "test", big, &cap), 0);
    assert_int_equal(cap.n_dec, 1);
    memset(big, ' ', sizeof(big));
    big[0] = '{';
    big[sizeof(big) - 2] = '}';
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(eval(vm, "test", big, &cap), -1);
    assert_string_equal(rules_vm_errstr(vm), "event of 4999 bytes is over the limit of 4096");
    /* Nobody listening means no parse at all. */
    assert_int_equal(eval(vm, "elsewhere", "not json", &cap), 0);
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* The abort of a runaway rule takes time proportional to the limit, not
 * forever, also when the rule wraps the loop in pcall. */
static void test_instruction_limit_time(void **state)
{
    const char *files[] = { "infinite_loop.lua", "pcall_loop.lua", "good.lua" };
    char *errs;
    rules_set *s = load(DIR, files, 3, 10000000, 1 << 20, NULL, &errs);
    capture cap;
    rules_vm *vm;
    double t0, dt;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    vm = vm_of(s, &cap);
    t0 = mono();
    assert_int_equal(eval(vm, "test", "{\"n\":1}", &cap), 2);
    dt = mono() - t0;
    assert_int_equal(cap.n_err, 2);
    assert_string_equal(cap.err_msg[0],
                        DIR "/infinite_loop.lua:6: instruction limit exceeded (10000000 instructions)");
    assert_string_equal(cap.err_msg[1],
                        DIR "/pcall_loop.lua:6: instruction limit exceeded (10000000 instructions)");
    assert_int_equal(cap.n_dec, 1);
    /* 2 x 1e7 instructions: well under a second on anything; 5 s is slack
     * for sanitizers and loaded CI machines. */
    assert_true(dt < 5.0);
    rules_vm_free(vm);
    rules_set_unref(s);
}

static void test_memory_rebuild(void **state)
{
    const char *files[] = { "mem_state.lua", "good.lua" };
    char *errs;
    rules_set *s = load(DIR, files, 2, 100000000, 1 << 20, NULL, &errs);
    capture cap;
    rules_vm *vm;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    vm = vm_of(s, &cap);
    assert_int_equal(eval(vm, "test", "{\"n\":1}", &cap), 0);
    assert_string_equal(cap.dec_reason[0], "n=1");
    assert_int_equal(eval(vm, "test", "{\"n\":2}", &cap), 0);
    assert_string_equal(cap.dec_reason[0], "n=2");
    assert_int_equal(eval(vm, "test", "{\"n\":3,\"grow\":true}", &cap), 1);
    assert_string_equal(cap.err_msg[0],
                        DIR "/mem_state.lua:8: memory limit exceeded (1048576 bytes); ctx.state reset");
    assert_int_equal(cap.n_dec, 1);           /* good.lua */
    /* A fresh state: the counter starts over, and keeps working. */
    assert_int_equal(eval(vm, "test", "{\"n\":4}", &cap), 0);
    assert_string_equal(cap.dec_reason[0], "n=1");
    assert_int_equal(eval(vm, "test", "{\"n\":5}", &cap), 0);
    assert_string_equal(cap.dec_reason[0], "n=2");
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* Garbage over the cap is collected, not punished: no error, state kept. */
static void test_memory_garbage(void **state)
{
    const char *files[] = { "garbage_ok.lua" };
    char *errs;
    rules_set *s = load(DIR, files, 1, 100000, 1 << 20, NULL, &errs);
    capture cap;
    rules_vm *vm;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    vm = vm_of(s, &cap);
    for (int i = 1; i <= 5; i++) {
        char want[64];

        assert_int_equal(eval(vm, "test", "{}", &cap), 0);
        assert_int_equal(cap.n_err, 0);
        snprintf(want, sizeof(want), "n=%d total=1638892", i);
        assert_string_equal(cap.dec_reason[0], want);
    }
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* ---- state across reloads ---------------------------------------------------- */

static const char *counter_v1 =
    "-- counter.lua\n"
    "return {\n"
    "  name = 'counter', on = { 'test' },\n"
    "  evaluate = function(event, ctx)\n"
    "    local s = ctx.state\n"
    "    s.n = (s.n or 0) + 1\n"
    "    s.nested = s.nested or { list = {}, flag = true, f = function() end }\n"
    "    s.self = s\n"
    "    s.nested.list[#s.nested.list + 1] = 'x' .. s.n\n"
    "    s[1.5] = 'float key'\n"
    "    return { action = 'alert', level = 'info', reason = string.format('n=%d len=%d last=%s self=%s flag=%s f=%s k=%s',\n"
    "      s.n, #s.nested.list, s.nested.list[#s.nested.list], tostring(s.self == s), tostring(s.nested.flag),\n"
    "      type(s.nested.f), s[1.5]) }\n"
    "  end,\n"
    "}\n";

static void test_state_carry(void **state)
{
    char *dir = tmpdir(), *errs;
    const char *files[] = { "counter.lua" };
    const char *files2[] = { "counter.lua", "other.lua" };
    rules_set *s1, *s2, *s3;
    rules_vm *vm1, *vm2, *vm3;
    capture cap;
    char err[512];

    (void)state;
    write_file(dir, "counter.lua", counter_v1);
    write_file(dir, "other.lua", "return { name = 'other', on = { 'test' }, evaluate = function() end }\n");
    s1 = load(dir, files, 1, 100000, 1 << 20, NULL, &errs);
    if (s1 == NULL)
        fail_msg("%s", errs);
    vm1 = vm_of(s1, &cap);
    for (int i = 0; i < 3; i++)
        assert_int_equal(eval(vm1, "test", "{}", &cap), 0);
    assert_string_equal(cap.dec_reason[0],
                        "n=3 len=3 last=x3 self=true flag=true f=function k=float key");

    /* Same source, plus a new rule: counter's state is carried over. */
    s2 = load(dir, files2, 2, 100000, 1 << 20, NULL, &errs);
    if (s2 == NULL)
        fail_msg("%s", errs);
    vm2 = rules_vm_new(s2, vm1, err, sizeof(err));
    assert_non_null(vm2);
    rules_vm_on_error(vm2, on_err, &cap);
    assert_int_equal(rules_vm_state_origin(vm2, 0), RULES_STATE_KEPT);
    assert_int_equal(rules_vm_state_origin(vm2, 1), RULES_STATE_NEW);
    assert_string_equal(rules_state_origin_name(RULES_STATE_KEPT), "kept");
    assert_int_equal(eval(vm2, "test", "{}", &cap), 0);
    /* Plain data only: the function is dropped; the cycle is kept. */
    assert_string_equal(cap.dec_reason[0],
                        "n=4 len=4 last=x4 self=true flag=true f=nil k=float key");
    /* A copy, not a share: the previous vm goes on with its own. */
    assert_int_equal(eval(vm1, "test", "{}", &cap), 0);
    assert_string_equal(cap.dec_reason[0],
                        "n=4 len=4 last=x4 self=true flag=true f=function k=float key");
    rules_vm_free(vm1);

    /* Edited source: the state starts over. */
    write_file(dir, "counter.lua", "-- edited\n");
    {
        char path[512];
        FILE *f;

        snprintf(path, sizeof(path), "%s/counter.lua", dir);
        f = fopen(path, "a");
        fputs(counter_v1, f);
        fclose(f);
    }
    s3 = load(dir, files, 1, 100000, 1 << 20, NULL, &errs);
    if (s3 == NULL)
        fail_msg("%s", errs);
    assert_string_not_equal(rules_set_sha256(s3), rules_set_sha256(s2));
    vm3 = rules_vm_new(s3, vm2, err, sizeof(err));
    assert_non_null(vm3);
    assert_int_equal(rules_vm_state_origin(vm3, 0), RULES_STATE_RESET);
    assert_int_equal(eval(vm3, "test", "{}", &cap), 0);
    assert_string_equal(cap.dec_reason[0],
                        "n=1 len=1 last=x1 self=true flag=true f=function k=float key");
    rules_vm_free(vm2);
    rules_vm_free(vm3);
    /* The vms held their own references. */
    rules_set_unref(s1);
    rules_set_unref(s2);
    rules_set_unref(s3);
    rm_dir(dir);
}

static void test_state_lost(void **state)
{
    const char *files[] = { "deep_state.lua" };
    char *errs, err[512];
    rules_set *s1 = load(DIR, files, 1, 100000, 1 << 20, NULL, &errs), *s2;
    rules_vm *vm1, *vm2;
    capture cap;

    (void)state;
    if (s1 == NULL)
        fail_msg("%s", errs);
    vm1 = vm_of(s1, &cap);
    assert_int_equal(eval(vm1, "test", "{}", &cap), 0);
    assert_int_equal(eval(vm1, "test", "{}", &cap), 0);
    assert_string_equal(cap.dec_reason[0], "n=2");
    s2 = load(DIR, files, 1, 100000, 1 << 20, NULL, &errs);
    assert_non_null(s2);
    assert_string_equal(rules_set_sha256(s1), rules_set_sha256(s2));
    vm2 = rules_vm_new(s2, vm1, err, sizeof(err));
    assert_non_null(vm2);
    rules_vm_on_error(vm2, on_err, &cap);
    assert_int_equal(rules_vm_state_origin(vm2, 0), RULES_STATE_LOST);
    assert_int_equal(eval(vm2, "test", "{}", &cap), 0);
    assert_string_equal(cap.dec_reason[0], "n=1");
    rules_vm_free(vm1);
    rules_vm_free(vm2);
    rules_set_unref(s1);
    rules_set_unref(s2);
}

/* ---- shipped rules ------------------------------------------------------------ */

static void test_shipped_load(void **state)
{
    char *errs;
    rules_set *s = load("rules", NULL, 0, 1000000, 8 << 20, shipped_params, &errs), *s2;
    const char *const *ch;
    rules_info in;
    size_t n;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    assert_int_equal(rules_set_count(s), 2);
    assert_int_equal(rules_set_info(s, 0, &in), 0);
    assert_string_equal(in.name, "financial_risk");
    assert_string_equal(in.file, "rules/financial.lua");
    assert_int_equal(in.n_channels, 3);
    assert_string_equal(in.channels[0], "financial_events");
    assert_string_equal(in.channels[1], "sales_events");
    assert_string_equal(in.channels[2], RULES_SALE_CHANNEL);
    assert_int_equal(in.n_fixtures, 28);
    assert_int_equal(strlen(in.sha256), 64);
    assert_int_equal(rules_set_info(s, 1, &in), 0);
    assert_string_equal(in.name, "inventory_threshold");
    assert_string_equal(in.file, "rules/inventory.lua");
    assert_int_equal(in.n_fixtures, 11);
    assert_true(strlen(in.description) > 0);
    ch = rules_set_channels(s, &n);
    assert_int_equal(n, 4);
    assert_string_equal(ch[0], "financial_events");
    assert_string_equal(ch[1], "sales_events");
    assert_string_equal(ch[2], RULES_SALE_CHANNEL);
    assert_string_equal(ch[3], "inventory_events");
    assert_true(rules_set_listens(s, "inventory_events"));
    /* financial.lua refuses client prices under the floor at sale time. */
    assert_true(rules_set_listens(s, RULES_SALE_CHANNEL));
    assert_int_equal(strlen(rules_set_sha256(s)), 64);
    assert_true(rules_set_loaded_at(s) > 1700000000);
    /* The fixtures do not depend on the deployment's params. */
    s2 = load("rules", NULL, 0, 1000000, 8 << 20, "{\"inventory\":{\"warning_threshold\":1}}", &errs);
    if (s2 == NULL)
        fail_msg("%s", errs);
    assert_string_equal(rules_set_sha256(s), rules_set_sha256(s2));
    assert_ptr_equal(rules_set_ref(s2), s2);
    rules_set_unref(s2);
    rules_set_unref(s2);
    rules_set_unref(s);
    rules_set_unref(NULL);
}

static void test_shipped_eval(void **state)
{
    char *errs;
    rules_set *s = load("rules", NULL, 0, 1000000, 8 << 20, shipped_params, &errs);
    rules_stats st;
    capture cap;
    rules_vm *vm;
    size_t inv;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    vm = vm_of(s, &cap);
    assert_int_equal(eval(vm, "inventory_events",
                          "{\"type\":\"stock_changed\",\"sku\":\"S-1\",\"stock_remaining\":3}", &cap), 0);
    assert_int_equal(cap.n_dec, 2);
    assert_int_equal(cap.dec_action[0], RULES_KILL);
    assert_string_equal(cap.dec_scope[0], "sku:S-1");
    assert_false(cap.dec_halt[0]);
    assert_string_equal(cap.dec_reason[0],
                        "stock of S-1 is 3, at or under the critical threshold 5: pausing its campaigns");
    assert_int_equal(cap.dec_action[1], RULES_ALERT);
    assert_int_equal(cap.dec_level[1], RULES_CRITICAL);
    assert_int_equal(eval(vm, "inventory_events",
                          "{\"type\":\"stock_changed\",\"sku\":\"S-1\",\"stock_remaining\":17}", &cap), 0);
    assert_int_equal(cap.n_dec, 1);
    assert_int_equal(cap.dec_level[0], RULES_WARNING);
    assert_int_equal(eval(vm, "inventory_events",
                          "{\"type\":\"stock_changed\",\"sku\":\"S-1\",\"stock_remaining\":70}", &cap), 0);
    assert_int_equal(cap.n_dec, 0);
    assert_int_equal(eval(vm, "sales_events",
                          "{\"type\":\"sale\",\"sku\":\"S-2\",\"qty\":1,\"unit_price\":0.25,"
                          "\"catalog_price\":0.25,\"order_id\":\"o-9\"}", &cap), 0);
    assert_int_equal(cap.n_dec, 2);
    assert_int_equal(cap.dec_action[0], RULES_KILL);
    assert_string_equal(cap.dec_scope[0], "sku:S-2");
    assert_true(cap.dec_halt[0]);
    assert_string_equal(cap.dec_reason[0], "catalog price of S-2 is 0.25, under the minimum "
                        "1.00 (sale o-9): pricing error, sales halted");
    inv = rule_index(s, "inventory_threshold");
    assert_int_equal(rules_set_stats(s, inv, &st), 0);
    assert_int_equal(st.evaluations, 3);
    assert_int_equal(st.errors, 0);
    assert_int_equal(st.decisions[RULES_KILL], 1);
    assert_int_equal(st.decisions[RULES_ALERT], 2);
    assert_int_equal(st.decisions[RULES_REJECT], 0);
    assert_true(st.duration_ns > 0);
    assert_int_equal(rules_set_stats(s, 9, &st), -1);
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* Run FILE through rules_test_events; returns its status, fills OUT and ERR. */
static int dry_run(rules_set *s, const char *name, FILE *in, char **out, char **err)
{
    size_t olen, elen;
    FILE *o = open_memstream(out, &olen), *e = open_memstream(err, &elen);
    int rc;

    assert_non_null(o);
    assert_non_null(e);
    rc = rules_test_events(s, in, name, o, e);
    fclose(o);
    fclose(e);
    return rc;
}

static void test_shipped_examples(void **state)
{
    static const struct { const char *rule, *channel, *action, *level, *scope; int halt; } want[] = {
        { "inventory_threshold", "inventory_events", "alert", "warning", "sku:ABC-1", -1 },
        { "inventory_threshold", "inventory_events", "kill", NULL, "sku:ABC-1", 0 },
        { "inventory_threshold", "inventory_events", "alert", "critical", "sku:ABC-1", -1 },
        { "inventory_threshold", "inventory_events", "kill", NULL, "sku:ABC-1", 0 },
        { "inventory_threshold", "inventory_events", "alert", "critical", "sku:ABC-1", -1 },
        { "financial_risk", "financial_events", "kill", NULL, "campaign:spring-sale", 0 },
        { "financial_risk", "financial_events", "alert", "critical", "campaign:spring-sale", -1 },
        { "financial_risk", "financial_events", "alert", "critical", "refund_ratio", -1 },
        { "financial_risk", "sales_events", "kill", NULL, "sku:XYZ-9", 1 },
        { "financial_risk", "sales_events", "alert", "critical", "sku:XYZ-9", -1 },
    };
    char *errs, *out, *err, *line, *save = NULL;
    rules_set *s = load("rules", NULL, 0, 1000000, 8 << 20, shipped_params, &errs);
    FILE *in = fopen("rules/examples/events.jsonl", "r");
    size_t i = 0;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    assert_non_null(in);
    assert_int_equal(dry_run(s, "rules/examples/events.jsonl", in, &out, &err), 0);
    fclose(in);
    assert_string_equal(err, "");
    for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save), i++) {
        cJSON *j = cJSON_Parse(line), *d;

        assert_non_null(j);
        assert_true(i < sizeof(want) / sizeof(want[0]));
        assert_string_equal(cJSON_GetObjectItem(j, "rule")->valuestring, want[i].rule);
        assert_string_equal(cJSON_GetObjectItem(j, "channel")->valuestring, want[i].channel);
        d = cJSON_GetObjectItem(j, "decision");
        assert_non_null(d);
        assert_string_equal(cJSON_GetObjectItem(d, "action")->valuestring, want[i].action);
        assert_string_equal(cJSON_GetObjectItem(d, "scope")->valuestring, want[i].scope);
        assert_true(cJSON_IsString(cJSON_GetObjectItem(d, "reason")));
        if (want[i].level)
            assert_string_equal(cJSON_GetObjectItem(d, "level")->valuestring, want[i].level);
        else
            assert_null(cJSON_GetObjectItem(d, "level"));
        if (want[i].halt >= 0)
            assert_int_equal(cJSON_IsTrue(cJSON_GetObjectItem(d, "halt_sales")), want[i].halt);
        else
            assert_null(cJSON_GetObjectItem(d, "halt_sales"));
        cJSON_Delete(j);
    }
    assert_int_equal(i, sizeof(want) / sizeof(want[0]));
    free(out);
    free(err);
    rules_set_unref(s);
}

static void test_dry_run_errors(void **state)
{
    const char *files[] = { "good.lua", "error_table.lua" };
    static const char input[] =
        "# a comment, then a blank line\n"
        "\n"
        "{\"channel\":\"test\",\"event\":{\"n\":7},\"now\":1767225600}\n"
        "not json\n"
        "{\"channel\":\"test\"}\n"
        "{\"channel\":\"test\",\"event\":{},\"extra\":1}\n"
        "[1]\n";
    char *errs, *out, *err;
    rules_set *s = load(DIR, files, 2, 100000, 1 << 20, NULL, &errs);
    FILE *in = fmemopen((void *)input, sizeof(input) - 1, "r");

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    assert_int_equal(dry_run(s, "ev.jsonl", in, &out, &err), -1);
    fclose(in);
    assert_string_equal(out, "{\"rule\":\"good\",\"channel\":\"test\",\"decision\":"
                             "{\"action\":\"alert\",\"level\":\"info\",\"reason\":\"good 7\"}}\n");
    assert_string_equal(err,
        DIR "/error_table.lua:6: error object is a table value\n"
        "ev.jsonl:4: not valid JSON\n"
        "ev.jsonl:5: event must be a JSON object\n"
        "ev.jsonl:6: unknown key (expected channel, event and optionally now)\n"
        "ev.jsonl:7: expected a JSON object {\"channel\": ..., \"event\": {...}}\n");
    free(out);
    free(err);
    rules_set_unref(s);
}

/* The shipped rules under the shipped config (params as config.c builds
 * them from YAML), and the examples give the same decisions. */
static void test_shipped_with_config(void **state)
{
    char *errs = NULL, *out, *err;
    cfg *c = cfg_load("config/nerve.yaml", NULL, 0, &errs);
    rules_set *s;
    FILE *in;
    int lines = 0;

    (void)state;
    if (c == NULL)
        fail_msg("config/nerve.yaml: %s", errs);
    s = rules_set_load(c, &errs);
    if (s == NULL)
        fail_msg("%s", errs);
    assert_int_equal(rules_set_count(s), 2);
    in = fopen("rules/examples/events.jsonl", "r");
    assert_non_null(in);
    assert_int_equal(dry_run(s, "rules/examples/events.jsonl", in, &out, &err), 0);
    fclose(in);
    assert_string_equal(err, "");
    for (char *p = out; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 10);
    free(out);
    free(err);
    rules_set_unref(s);
    cfg_free(c);
}

/* log() from a rule: one line per call with the rule name and source line,
 * control characters flattened (no forged log lines), level filtered, and at
 * most 16 lines per evaluation. */
static void test_log(void **state)
{
    const char *files[] = { "logger.lua" };
    char *errs, buf[8192], tmpl[] = "/tmp/nerve-test-rules-log-XXXXXX";
    rules_set *s = load(DIR, files, 1, 100000, 1 << 20, NULL, &errs);
    int fd = mkstemp(tmpl), saved, lines = 0;
    capture cap;
    rules_vm *vm;
    ssize_t n;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    assert_true(fd >= 0);
    vm = vm_of(s, &cap);
    log_set_level(LOG_LVL_INFO);
    fflush(stderr);
    saved = dup(2);
    assert_true(dup2(fd, 2) >= 0);
    assert_int_equal(eval(vm, "test", "{}", &cap), 0);
    assert_int_equal(eval(vm, "test", "{\"bad\":true}", &cap), 1);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    assert_string_equal(cap.err_msg[0], DIR "/logger.lua:8: bad argument #1 to 'log' "
                        "(invalid option 'loud')");
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    close(fd);
    unlink(tmpl);
    for (char *p = buf; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    assert_int_equal(lines, 32);
    assert_non_null(strstr(buf, " info rules line 1 forged=1 rule=logger src=" DIR "/logger.lua:6\n"));
    assert_non_null(strstr(buf, " info rules line 16 forged=1 rule=logger"));
    assert_null(strstr(buf, "line 17"));
    assert_null(strstr(buf, "hidden"));
    rules_vm_free(vm);
    rules_set_unref(s);
}

struct worker {
    rules_set *set;
    int decisions, failures;
};

static void count_dec(void *ud, const rules_decision *d)
{
    (void)d;
    ((struct worker *)ud)->decisions++;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char err[512];
    rules_vm *vm = rules_vm_new(w->set, NULL, err, sizeof(err));
    static const char ev[] = "{\"type\":\"stock_changed\",\"sku\":\"T\",\"stock_remaining\":3}";

    if (vm == NULL) {
        w->failures = -1;
        return NULL;
    }
    for (int i = 0; i < 5000; i++)
        if (rules_eval(vm, "inventory_events", ev, sizeof(ev) - 1, count_dec, w) != 0)
            w->failures++;
    rules_vm_free(vm);
    return NULL;
}

/* One set, one vm per thread: the set's counters add up, nothing is shared
 * that is not meant to be (run under TSan to check). */
static void test_threads(void **state)
{
    char *errs;
    rules_set *s = load("rules", NULL, 0, 1000000, 8 << 20, shipped_params, &errs);
    struct worker w[4];
    pthread_t th[4];
    rules_stats st;

    (void)state;
    if (s == NULL)
        fail_msg("%s", errs);
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){ rules_set_ref(s), 0, 0 };
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].failures, 0);
        assert_int_equal(w[i].decisions, 2 * 5000);
        rules_set_unref(w[i].set);
    }
    assert_int_equal(rules_set_stats(s, rule_index(s, "inventory_threshold"), &st), 0);
    assert_int_equal(st.evaluations, 4 * 5000);
    assert_int_equal(st.decisions[RULES_KILL], 4 * 5000);
    assert_int_equal(st.decisions[RULES_ALERT], 4 * 5000);
    assert_int_equal(st.errors, 0);
    rules_set_unref(s);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(rules_action_name(RULES_ALERT), "alert");
    assert_string_equal(rules_action_name(RULES_KILL), "kill");
    assert_string_equal(rules_action_name(RULES_REJECT), "reject");
    assert_string_equal(rules_level_name(RULES_INFO), "info");
    assert_string_equal(rules_level_name(RULES_WARNING), "warning");
    assert_string_equal(rules_level_name(RULES_CRITICAL), "critical");
    assert_string_equal(rules_level_name(RULES_LEVEL_NONE), "");
    assert_string_equal(rules_state_origin_name(RULES_STATE_RESET), "reset");
}

/* The evaluator's shortcuts must not show: ctx.channel and ctx.now follow
 * every event (they are only written when they change), type() answers as
 * the base library's, and os.date's memo of UTC strings (per format and
 * time) never hands out a stale day or a shared "*t" table. */
static void test_fast_paths(void **state)
{
    static const struct { const char *channel; long long now; const char *reason; } want[] = {
        { "a", 0, "a 0 1970-01-01 00:00:00 1970 nil table number string boolean function" },
        { "a", 0, "a 0 1970-01-01 00:00:00 1970 nil table number string boolean function" },
        { "b", 0, "b 0 1970-01-01 00:00:00 1970 nil table number string boolean function" },
        { "b", 86461, "b 86461 1970-01-02 00:01:01 1970 nil table number string boolean function" },
        { "a", 86461, "a 86461 1970-01-02 00:01:01 1970 nil table number string boolean function" },
        { "a", 1767225600, "a 1767225600 2026-01-01 00:00:00 2026 nil table number string boolean function" },
    };
    char *dir = tmpdir(), *errs;
    rules_set *s;
    rules_vm *vm;
    capture cap;

    (void)state;
    write_file(dir, "fast.lua",
               "return { name = 'fast', on = { 'a', 'b', 'c' },\n"
               "  evaluate = function(event, ctx)\n"
               "    local t = os.date('!*t', ctx.now)\n"
               "    t.year = 1 -- a fresh table every call\n"
               "    local ok, msg = pcall(type)\n"
               "    assert(not ok and msg:find('bad argument #1 to \\'type\\' (value expected)', 1, true), msg)\n"
               "    return { action = 'alert', level = 'info', reason = string.format(\n"
               "      '%s %d %s %s %d %s %s %s %s %s %s', ctx.channel, ctx.now,\n"
               "      os.date('!%Y-%m-%d', ctx.now), os.date('!%H:%M:%S', ctx.now),\n"
               "      os.date('!*t', ctx.now).year, type(nil), type(event), type(1), type('x'),\n"
               "      type(true), type(print or type)) }\n"
               "  end }\n");
    s = load(dir, NULL, 0, 100000, 1 << 20, NULL, &errs);
    if (s == NULL)
        fail_msg("%s", errs);
    vm = vm_of(s, &cap);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        cJSON *ev = cJSON_Parse("{\"n\":1}");

        memset(&cap, 0, sizeof(cap));
        assert_int_equal(rules_eval_cjson(vm, want[i].channel, ev, want[i].now, on_dec, &cap), 0);
        cJSON_Delete(ev);
        assert_int_equal(cap.n_err, 0);
        assert_int_equal(cap.n_dec, 1);
        assert_string_equal(cap.dec_reason[0], want[i].reason);
    }
    /* A channel no rule listens on, and one only this rule does. */
    memset(&cap, 0, sizeof(cap));
    assert_int_equal(rules_eval(vm, "d", "{}", 2, on_dec, &cap), 0);
    assert_int_equal(cap.n_dec, 0);
    assert_int_equal(rules_eval(vm, "c", "{}", 2, on_dec, &cap), 0);
    assert_int_equal(cap.n_dec, 1);
    assert_memory_equal(cap.dec_reason[0], "c ", 2);
    rules_vm_free(vm);
    rules_set_unref(s);
    rm_dir(dir);
}

int main(void)
{
    struct CMUnitTest tests[sizeof(cases) / sizeof(cases[0]) + 32];
    size_t n = 0;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct CMUnitTest t = cmocka_unit_test_prestate(test_sandbox_case, (void *)&cases[i]);

        t.name = cases[i].file;
        tests[n++] = t;
    }
#define ADD(f) tests[n++] = (struct CMUnitTest)cmocka_unit_test(f)
    ADD(test_bytecode_refused);
    ADD(test_syntax_error);
    ADD(test_not_table);
    ADD(test_bad_shape);
    ADD(test_duplicate_names);
    ADD(test_toplevel_loop);
    ADD(test_failing_fixture);
    ADD(test_all_errors_collected);
    ADD(test_rules_dir);
    ADD(test_params_read_only);
    ADD(test_whitelist);
    ADD(test_sale_policy);
    ADD(test_bad_events);
    ADD(test_instruction_limit_time);
    ADD(test_memory_rebuild);
    ADD(test_memory_garbage);
    ADD(test_state_carry);
    ADD(test_state_lost);
    ADD(test_shipped_load);
    ADD(test_shipped_eval);
    ADD(test_shipped_examples);
    ADD(test_dry_run_errors);
    ADD(test_shipped_with_config);
    ADD(test_threads);
    ADD(test_log);
    ADD(test_names);
    ADD(test_fast_paths);
#undef ADD
    return _cmocka_run_group_tests("rules", tests, n, NULL, NULL);
}
