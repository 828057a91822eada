/* test_rules_state.c -- ctx.state is transactional (issue 13, item 4).
 *
 * When evaluate fails -- a Lua error, the instruction limit, the deadline, an
 * invalid decision -- ctx.state is what it was before that event: nested
 * counters, new keys, deleted keys, table.insert, writes through a reference
 * the rule kept in a global, and the state a reload carries over. What still
 * behaves as before: a good event's writes stay, a pcall inside the rule
 * keeps what it caught, next/rawget/rawlen/#/pairs see the state's tables as
 * plain tables, and a decision kept in ctx.state can be returned.
 *
 * No network. Run from the repository root.
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
#include <unistd.h>

#include <cjson/cJSON.h>

#include "nerve/config.h"
#include "nerve/log.h"
#include "nerve/rules.h"

#include "rules_capture.h"

/* One rule; the event's "op" says what it does. Every op but the failing
 * ones answers with an alert whose reason shows the state. */
static const char *rule_src =
    "-- st.lua\n"
    "local function show(s)\n"
    "  local c = s.counts and s.counts.a or 'nil'\n"
    "  local keys = {}\n"
    "  for k in pairs(s) do keys[#keys + 1] = tostring(k) end\n"
    "  table.sort(keys)\n"
    "  local list = s.list and table.concat(s.list, ',') or ''\n"
    "  return string.format('a=%s keep=%s new=%s deep=%s list=%s keys=%s', tostring(c),\n"
    "    tostring(s.keep), tostring(s.new), tostring(s.deep and s.deep.x and s.deep.x.y),\n"
    "    list, table.concat(keys, ','))\n"
    "end\n"
    "return {\n"
    "  name = 'st', on = { 'test' },\n"
    "  evaluate = function(event, ctx)\n"
    "    local s, op = ctx.state, event.op\n"
    "    if op == 'init' then\n"
    "      s.counts = { a = 0 }\n"
    "      s.keep = 'kept'\n"
    "      s.list = { 'x' }\n"
    "      s.deep = { x = { y = 1 } }\n"
    "      G = s.counts -- a reference kept across events\n"
    "    elseif op == 'inc' then\n"
    "      s.counts.a = (s.counts.a or 0) + 1\n"
    "    elseif op == 'inc_error' then\n"
    "      s.counts.a = (s.counts.a or 0) + 1\n"
    "      error('boom')\n"
    "    elseif op == 'inc_loop' then\n"
    "      s.counts.a = (s.counts.a or 0) + 1\n"
    "      while true do end\n"
    "    elseif op == 'inc_slow' then\n"
    "      s.counts.a = (s.counts.a or 0) + 1\n"
    "      local t0 = os.clock()\n"
    "      while os.clock() - t0 < 1 do end\n"
    "    elseif op == 'inc_bad' then\n"
    "      s.counts.a = (s.counts.a or 0) + 1\n"
    "      return { action = 'nope', reason = 'x' }\n"
    "    elseif op == 'new_error' then\n"
    "      s.new = 'fresh'\n"
    "      s.deep.x.y = 2\n"
    "      s.deep.x.z = { 1, 2, 3 }\n"
    "      error('boom')\n"
    "    elseif op == 'del_error' then\n"
    "      s.keep = nil\n"
    "      s.counts = nil\n"
    "      error('boom')\n"
    "    elseif op == 'insert_error' then\n"
    "      table.insert(s.list, 'y')\n"
    "      table.insert(s.list, 1, 'w')\n"
    "      table.remove(s.list)\n"
    "      error('boom')\n"
    "    elseif op == 'global_error' then\n"
    "      G.a = 100\n"
    "      error('boom')\n"
    "    elseif op == 'replace_error' then\n"
    "      local old = s.counts\n"
    "      s.counts = { a = 50 }\n"
    "      old.a = 60\n"
    "      error('boom')\n"
    "    elseif op == 'many_error' then\n"
    "      for i = 1, 200 do s.counts['k' .. i] = i end\n"
    "      for i = 1, 200000 do s.counts.a = s.counts.a + 1; s.keep = i end\n"
    "      error('boom')\n"
    "    elseif op == 'pcall' then\n"
    "      pcall(function() s.counts.a = s.counts.a + 10; error('caught') end)\n"
    "    elseif op == 'raw' then\n"
    "      local e = {}\n"
    "      s.empty = e\n"
    "      return { action = 'alert', level = 'info', reason = string.format(\n"
    "        'next=%s rawget=%s rawlen=%d len=%d empty=%s same=%s',\n"
    "        tostring(next(s.counts)), tostring(rawget(s.counts, 'a')), rawlen(s.list), #s.list,\n"
    "        tostring(next(s.empty) == nil), tostring(s.empty == e)) }\n"
    "    elseif op == 'keep_decision' then\n"
    "      s.last = { action = 'alert', level = 'warning', reason = 'remembered' }\n"
    "      return s.last\n"
    "    elseif op == 'keep_decisions' then\n"
    "      s.lastlist = { { action = 'alert', level = 'info', reason = 'one' }, s.last }\n"
    "      return s.lastlist\n"
    "    end\n"
    "    return { action = 'alert', level = 'info', reason = show(s) }\n"
    "  end,\n"
    "}\n";

static char *dir;

static int setup(void **state) {
    char path[512];
    FILE *f;

    (void)state;
    log_set_level(LOG_LVL_ERROR + 1);
    dir = strdup("/tmp/nerve-test-rules-state-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/st.lua", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(rule_src, f);
    fclose(f);
    return 0;
}

static int teardown(void **state) {
    char cmd[600];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
    return 0;
}

static rules_set *load(long long instr, int timeout_ms) {
    const char *files[] = { "st.lua" };
    cfg c;
    rules_set *s;
    char *errs = NULL;

    memset(&c, 0, sizeof(c));
    c.rules_dir = dir;
    c.rules_files = (char **)files;
    c.n_rules_files = 1;
    c.rules_instruction_limit = instr;
    c.rules_memory_limit = 1 << 22;
    c.rules_eval_timeout_ms = timeout_ms;
    c.max_event_bytes = 4096;
    c.params = cJSON_Parse("{}");
    s = rules_set_load(&c, &errs);
    cJSON_Delete(c.params);
    if (s == NULL) fail_msg("%s", errs ? errs : "?");
    return s;
}

static rules_vm *vm_of(rules_set *s, rules_vm *prev, capture *cap) {
    char err[1024];
    rules_vm *vm = rules_vm_new(s, prev, err, sizeof(err));

    if (vm == NULL) fail_msg("rules_vm_new: %s", err);
    rules_vm_on_error(vm, on_err, cap);
    return vm;
}

/* Run OP; return the reason of its one decision ("" when none). */
static const char *run(rules_vm *vm, capture *cap, const char *op) {
    char json[128];

    memset(cap, 0, sizeof(*cap));
    snprintf(json, sizeof(json), "{\"op\":\"%s\"}", op);
    rules_eval(vm, "test", json, strlen(json), on_dec, cap);
    return cap->n_dec > 0 ? cap->dec_reason[0] : "";
}

/* OP fails (one error containing WANT_ERR), and the state is then exactly
 * what "show" printed before. */
static void fails_unchanged(rules_vm *vm, capture *cap, const char *op, const char *want_err) {
    char before[512];

    snprintf(before, sizeof(before), "%s", run(vm, cap, "show"));
    run(vm, cap, op);
    assert_int_equal(cap->n_dec, 0);
    assert_int_equal(cap->n_err, 1);
    if (strstr(cap->err_msg[0], want_err) == NULL)
        fail_msg("%s: error %s, expected %s", op, cap->err_msg[0], want_err);
    assert_string_equal(run(vm, cap, "show"), before);
}

#define START "a=0 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list"

static void test_error_rolls_back_nested_counter(void **state) {
    rules_set *s = load(100000, 1000);
    capture cap;
    rules_vm *vm = vm_of(s, NULL, &cap);

    (void)state;
    assert_string_equal(run(vm, &cap, "init"), START);
    assert_string_equal(run(vm, &cap, "inc"),
                        "a=1 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list");
    fails_unchanged(vm, &cap, "inc_error", "st.lua:26: boom");
    /* The next good event sees the old value + 1. */
    assert_string_equal(run(vm, &cap, "inc"),
                        "a=2 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list");
    rules_vm_free(vm);
    rules_set_unref(s);
}

static void test_instruction_limit_rolls_back(void **state) {
    rules_set *s = load(100000, 1000);
    capture cap;
    rules_vm *vm = vm_of(s, NULL, &cap);

    (void)state;
    run(vm, &cap, "init");
    run(vm, &cap, "inc");
    fails_unchanged(vm, &cap, "inc_loop", "instruction limit");
    assert_string_equal(run(vm, &cap, "inc"),
                        "a=2 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list");
    rules_vm_free(vm);
    rules_set_unref(s);
}

static void test_deadline_rolls_back(void **state) {
    rules_set *s = load(1000000000, 20);
    capture cap;
    rules_vm *vm = vm_of(s, NULL, &cap);

    (void)state;
    run(vm, &cap, "init");
    run(vm, &cap, "inc");
    fails_unchanged(vm, &cap, "inc_slow", "ms");
    assert_string_equal(run(vm, &cap, "inc"),
                        "a=2 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list");
    rules_vm_free(vm);
    rules_set_unref(s);
}

static void test_invalid_decision_rolls_back(void **state) {
    rules_set *s = load(100000, 1000);
    capture cap;
    rules_vm *vm = vm_of(s, NULL, &cap);

    (void)state;
    run(vm, &cap, "init");
    run(vm, &cap, "inc");
    fails_unchanged(vm, &cap, "inc_bad", "unknown action \"nope\"");
    assert_string_equal(run(vm, &cap, "inc"),
                        "a=2 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list");
    rules_vm_free(vm);
    rules_set_unref(s);
}

static void test_new_and_deleted_keys_roll_back(void **state) {
    rules_set *s = load(100000, 1000);
    capture cap;
    rules_vm *vm = vm_of(s, NULL, &cap);

    (void)state;
    assert_string_equal(run(vm, &cap, "init"), START);
    /* A new key (and a nested change, and a new nested table) is gone. */
    fails_unchanged(vm, &cap, "new_error", "boom");
    /* Deleted keys (a string, a whole subtable) are back. */
    fails_unchanged(vm, &cap, "del_error", "boom");
    assert_string_equal(run(vm, &cap, "show"), START);
    rules_vm_free(vm);
    rules_set_unref(s);
}

static void test_table_functions_and_references(void **state) {
    rules_set *s = load(100000, 1000);
    capture cap;
    rules_vm *vm = vm_of(s, NULL, &cap);

    (void)state;
    run(vm, &cap, "init");
    /* table.insert / table.remove work on the state's tables, and roll back. */
    fails_unchanged(vm, &cap, "insert_error", "boom");
    /* A reference the rule kept in a global is the state's table itself. */
    fails_unchanged(vm, &cap, "global_error", "boom");
    /* A subtable replaced, then written through the old reference. */
    fails_unchanged(vm, &cap, "replace_error", "boom");
    assert_string_equal(run(vm, &cap, "show"), START);
    /* A pcall inside the rule keeps what it caught: evaluate succeeded. */
    assert_string_equal(run(vm, &cap, "pcall"),
                        "a=10 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list");
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* Many keys, and two keys written in turn 200000 times: the journal stays
 * one entry per key (200000 entries would be over the 4 MiB memory limit). */
static void test_many_writes_roll_back(void **state) {
    rules_set *s = load(10000000, 5000);
    capture cap;
    rules_vm *vm = vm_of(s, NULL, &cap);

    (void)state;
    run(vm, &cap, "init");
    fails_unchanged(vm, &cap, "many_error", "boom");
    assert_string_equal(run(vm, &cap, "inc"),
                        "a=1 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list");
    rules_vm_free(vm);
    rules_set_unref(s);
}

static void test_state_tables_look_plain(void **state) {
    rules_set *s = load(100000, 1000);
    capture cap;
    rules_vm *vm = vm_of(s, NULL, &cap);

    (void)state;
    run(vm, &cap, "init");
    assert_string_equal(run(vm, &cap, "raw"),
                        "next=a rawget=0 rawlen=1 len=1 empty=true same=true");
    assert_int_equal(cap.n_err, 0);
    /* A decision kept in ctx.state, alone or in a kept list. */
    assert_string_equal(run(vm, &cap, "keep_decision"), "remembered");
    assert_int_equal(cap.dec_level[0], RULES_WARNING);
    run(vm, &cap, "keep_decisions");
    assert_int_equal(cap.n_err, 0);
    assert_int_equal(cap.n_dec, 2);
    assert_string_equal(cap.dec_reason[0], "one");
    assert_string_equal(cap.dec_reason[1], "remembered");
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* "A reload kept the poison": the state carried over is the rolled-back one,
 * and the carried tables are transactional too. */
static void test_reload_carries_rolled_back_state(void **state) {
    rules_set *s1 = load(100000, 1000), *s2 = load(100000, 1000);
    capture cap;
    rules_vm *vm1 = vm_of(s1, NULL, &cap), *vm2;

    (void)state;
    run(vm1, &cap, "init");
    run(vm1, &cap, "inc");
    fails_unchanged(vm1, &cap, "inc_error", "boom");
    fails_unchanged(vm1, &cap, "new_error", "boom");
    vm2 = vm_of(s2, vm1, &cap);
    assert_int_equal(rules_vm_state_origin(vm2, 0), RULES_STATE_KEPT);
    rules_vm_free(vm1);
    assert_string_equal(run(vm2, &cap, "show"),
                        "a=1 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list");
    fails_unchanged(vm2, &cap, "inc_error", "boom");
    fails_unchanged(vm2, &cap, "insert_error", "boom");
    assert_string_equal(run(vm2, &cap, "inc"),
                        "a=2 keep=kept new=nil deep=1 list=x keys=counts,deep,keep,list");
    rules_vm_free(vm2);
    rules_set_unref(s1);
    rules_set_unref(s2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_rolls_back_nested_counter),
        cmocka_unit_test(test_instruction_limit_rolls_back),
        cmocka_unit_test(test_deadline_rolls_back),
        cmocka_unit_test(test_invalid_decision_rolls_back),
        cmocka_unit_test(test_new_and_deleted_keys_roll_back),
        cmocka_unit_test(test_table_functions_and_references),
        cmocka_unit_test(test_many_writes_roll_back),
        cmocka_unit_test(test_state_tables_look_plain),
        cmocka_unit_test(test_reload_carries_rolled_back_state),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
