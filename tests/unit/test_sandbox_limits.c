/* test_sandbox_limits.c -- the evaluation deadline (rules.eval_timeout_ms)
 * holds whatever the Lua does, ctx.incr and ctx.scope, vms of one kind, and
 * rule files that cannot be read. No network: rules are written to a
 * temporary directory and evaluated in process.
 *
 * Each hostile case ran forever (or for hours) before the deadline existed:
 * a message handler runs with hooks off, and a C function loops where no
 * instruction is counted. Here each must end as that rule's error, quickly,
 * and the rule after it must still decide.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <cjson/cJSON.h>

#include "nerve/config.h"
#include "nerve/rules.h"
#include "rules_capture.h"
#include "../../engine/rules_int.h"

#define TIMEOUT_MS 50

static char dir[256];

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void write_rule(const char *name, const char *text)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Load FILES from dir with a huge instruction limit, so that only the
 * deadline can stop a loop. */
static rules_set *load_files(const char *const *files, size_t n, char **errs)
{
    cfg c;
    rules_set *s;

    memset(&c, 0, sizeof(c));
    c.rules_dir = dir;
    c.rules_files = (char **)files;
    c.n_rules_files = n;
    c.rules_instruction_limit = 1000000000;
    c.rules_memory_limit = 8 << 20;
    c.rules_eval_timeout_ms = TIMEOUT_MS;
    c.max_event_bytes = 4096;
    c.params = cJSON_CreateObject();
    *errs = NULL;
    s = rules_set_load(&c, errs);
    cJSON_Delete(c.params);
    return s;
}

/* Write NAME with TEXT, load it alone and build a vm whose errors go to CAP;
 * the set goes to *SET (the caller frees the vm, then unrefs the set). */
static rules_vm *one_rule_vm(const char *name, const char *text, capture *cap, rules_set **set)
{
    const char *files[] = { name };
    char *errs, err[256];
    rules_vm *vm;

    write_rule(name, text);
    *set = load_files(files, 1, &errs);
    if (*set == NULL)
        fail_msg("load %s: %s", name, errs);
    vm = rules_vm_new(*set, NULL, err, sizeof(err));
    if (vm == NULL)
        fail_msg("rules_vm_new: %s", err);
    rules_vm_on_error(vm, on_err, cap);
    return vm;
}

typedef struct hostile {
    const char *name;
    const char *body;           /* the body of evaluate(e, ctx) */
    const char *want;           /* the error must contain this */
} hostile;

static const hostile cases[] = {
    { "xpcall_handler_loop", "xpcall(error, function() while true do end end)",
      "evaluation deadline exceeded (50 ms)" },
    { "nested_xpcall", "xpcall(function() xpcall(error, function() while true do end end) end,\n"
                       "  function() while true do end end)", "evaluation deadline exceeded" },
    { "pcall_swallow_loop", "while true do pcall(function() while true do end end) end",
      "evaluation deadline exceeded" },
    { "close_loop", "do local x <close> = setmetatable({}, {__close = function() while true do end end})\n"
                    "  error('boom') end", "evaluation deadline exceeded" },
    { "goto_loop", "::top:: goto top", "evaluation deadline exceeded" },
    { "gsub_fn_loop", "('x'):gsub('x', function() while true do end end)", "evaluation deadline exceeded" },
    { "sort_cmp_loop", "table.sort({3, 2, 1}, function(a, b) while true do end end)",
      "evaluation deadline exceeded" },
    { "error_tostring", "error(setmetatable({}, {__tostring = function() while true do end end}))",
      "error object is a table value" },
    { "table_move", "table.move({}, 1, 1e15, 2)", "table.move: too much work for one call" },
    { "table_concat", "table.concat({}, '', 1, 1e15)", "table.concat: too much work for one call" },
    { "find_quadratic", "local s = ('a'):rep(40000); s:find('.-b')",
      "string.find: pattern too costly for a 40000-byte subject" },
    { "balance", "local s = ('('):rep(100000); s:find('%b()')", "string.find: pattern too costly" },
    { "long_pattern", "local s = ('a'):rep(200000); s:match(('a'):rep(100000) .. 'b')",
      "string.match: pattern too costly" },
    { "gmatch_loop", "for w in ('a'):rep(100000):gmatch('.-.-b') do end", "string.gmatch: pattern too costly" },
    { "os_date", "os.date(('%c'):rep(2000000))", "os.date: too much work for one call" },
    { "rep_then_find_loop", "local s = ('ab'):rep(100000)\n"
                            "while true do s:find('b', 1, true) end", "evaluation deadline exceeded" },
    { "long_compare_loop", "local a, b = ('a'):rep(2000000), ('a'):rep(2000000)\n"
                           "while a <= b do end", "evaluation deadline exceeded" },
    { "tonumber_loop", "local s = ('1'):rep(3000000)\nwhile true do tonumber(s, 36) end",
      "evaluation deadline exceeded" },
    { "utf8_len_loop", "local s = ('\\u{10FFFF}'):rep(1000000)\nwhile true do utf8.len(s) end",
      "evaluation deadline exceeded" },
    /* The table functions read the length with __len (2e8: 3 s in one C
     * call, 1e12: hours) and the elements with __index / __newindex. */
    { "insert_len_meta", "local t = setmetatable({}, {__len = function() return 2e8 end})\n"
                         "table.insert(t, 1, 'x')\n"
                         "return { action = 'alert', level = 'info', reason = 'late' }",
      "table.insert: the table has a __len metamethod" },
    { "remove_len_meta", "local t = setmetatable({}, {__len = function() return 2e8 end})\n"
                         "table.remove(t, 1)", "table.remove: the table has a __len metamethod" },
    { "unpack_index_meta", "local t = setmetatable({}, {__index = function() return 1 end})\n"
                           "table.unpack(t, 1, 10)", "table.unpack: the table has a __index metamethod" },
    /* A set costs its length at each character: 9 s. */
    { "long_class", "local s = ('c'):rep(100000)\ns:find('[' .. ('a'):rep(100000) .. ']')",
      "string.find: pattern too costly for a 100000-byte subject" },
    { "long_frontier", "local s = ('c'):rep(100000)\ns:find('%f[' .. ('a'):rep(100000) .. ']')",
      "string.find: pattern too costly for a 100000-byte subject" },
    /* A plain find compares up to the whole needle at each position: 27 s. */
    { "plain_find_quadratic", "local s = ('a'):rep(2000000)\n"
                              "s:find(('a'):rep(1000000) .. 'b', 1, true)",
      "string.find: too much work for one call" },
    /* Each comparison reads a 4 MB string: 5.4 s. */
    { "sort_long_strings", "local s = ('a'):rep(4000000)\n"
                           "local t = {} for i = 1, 2000 do t[i] = s end\ntable.sort(t)",
      "table.sort: too much work for one call" },
    /* A gmatch iterator searches on each call (6 ms here), and gsub calls it
     * 1000 times without one instruction: 6 s, then the decision was
     * delivered as if on time. */
    { "gmatch_iterator", "local it = ('a'):rep(2000):gmatch('a-b');\n"
                         "('x'):rep(1000):gsub('x', it)\n"
                         "return { action = 'alert', level = 'info', reason = 'late' }",
      "evaluation deadline exceeded (50 ms)" },
};

static void test_hostile_case(void **state)
{
    const hostile *h = *state;
    const char *files[] = { "hostile.lua", "good.lua" };
    char text[2048], *errs;
    capture cap;
    rules_set *s;
    rules_vm *vm;
    double t0, took;

    snprintf(text, sizeof(text), "return { name = '%s', on = {'t'},\n"
             "  evaluate = function(e, ctx)\n%s\n  end }\n", h->name, h->body);
    write_rule("hostile.lua", text);
    s = load_files(files, 2, &errs);
    if (s == NULL)
        fail_msg("load: %s", errs);
    vm = rules_vm_new(s, NULL, text, sizeof(text));
    assert_non_null(vm);
    rules_vm_on_error(vm, on_err, &cap);
    for (int round = 0; round < 2; round++) {
        memset(&cap, 0, sizeof(cap));
        t0 = now_s();
        assert_int_equal(rules_eval(vm, "t", "{}", 2, on_dec, &cap), 1);
        took = now_s() - t0;
        assert_int_equal(cap.n_err, 1);
        if (strstr(cap.err_msg[0], h->want) == NULL || strncmp(cap.err_msg[0], dir, strlen(dir)) != 0)
            fail_msg("%s: got \"%s\", want FILE:LINE: ...%s...", h->name, cap.err_msg[0], h->want);
        /* The neighbour still decides, and the hostile rule cost at most
         * about its deadline (generous bound: sanitizers and valgrind). */
        assert_int_equal(cap.n_dec, 1);
        assert_string_equal(cap.dec_reason[0], "good");
        print_message("%s: %.1f ms\n", h->name, took * 1e3);
        if (took > 2.0)
            fail_msg("%s: evaluation took %.3f s (deadline %d ms)", h->name, took, TIMEOUT_MS);
    }
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* string.rep("", 1e15) used to loop 1e15 times copying nothing. */
static void test_rep_empty(void **state)
{
    capture cap = { 0 };

    (void)state;
    rules_set *s;
    rules_vm *vm = one_rule_vm("rep.lua", "return { name = 'rep', on = {'t'}, evaluate = function(e, ctx)\n"
               "  local s = string.rep('', 1e15) .. string.rep('', 1e15, '')\n"
               "  return { action = 'alert', level = 'info', reason = 'len ' .. #s } end }\n", &cap, &s);
    assert_int_equal(rules_eval(vm, "t", "{}", 2, on_dec, &cap), 0);
    assert_int_equal(cap.n_dec, 1);
    assert_string_equal(cap.dec_reason[0], "len 0");
    rules_vm_free(vm);
    rules_set_unref(s);
}

static int eval_now(rules_vm *vm, long long now, const char *json, capture *cap)
{
    cJSON *ev = cJSON_Parse(json);
    int rc;

    memset(cap, 0, sizeof(*cap));
    rc = rules_eval_cjson(vm, "t", ev, now, on_dec, cap);
    cJSON_Delete(ev);
    return rc;
}

/* Common patterns on long subjects stay allowed: a repeat that ends the
 * pattern is linear (whitespace clean-up over 64 KB). */
static void test_patterns_allowed(void **state)
{
    capture cap;

    (void)state;
    rules_set *s;
    rules_vm *vm = one_rule_vm("pat.lua", "return { name = 'pat', on = {'t'}, evaluate = function(e, ctx)\n"
               "  local s = ('ab  '):rep(16000)\n"
               "  local t, n = s:gsub('%s+', ' ')\n"
               "  local words = 0 for w in s:gmatch('%a+') do words = words + 1 end\n"
               "  local k = ('campaign-' .. ('x'):rep(100) .. '-42'):match('^(%a+)-(%w+)-(%d+)$')\n"
               "  return { action = 'alert', level = 'info', reason = n .. ' ' .. words .. ' ' .. k } end }\n", &cap, &s);
    eval_now(vm, 1, "{}", &cap);
    if (cap.n_err)
        fail_msg("%s", cap.err_msg[0]);
    assert_string_equal(cap.dec_reason[0], "16000 16000 campaign");
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* A fixture that loops fails the load within a few deadlines, and the
 * fixtures after it are not run. */
static void test_fixture_deadline(void **state)
{
    const char *files[] = { "fix.lua" };
    char *errs;
    double t0 = now_s();

    (void)state;
    write_rule("fix.lua", "return { name = 'fix', on = {'t'},\n"
               "  evaluate = function(e, ctx) while e.loop do end end,\n"
               "  tests = {\n"
               "    { channel = 't', event = { loop = true }, expect = {} },\n"
               "    { channel = 't', event = { loop = true }, expect = {} },\n"
               "    { channel = 't', event = { loop = true }, expect = {} },\n"
               "  } }\n");
    rules_set *s = load_files(files, 1, &errs);
    assert_null(s);
    assert_non_null(errs);
    if (strstr(errs, "/fix.lua:2: fixture 1 (t): evaluation deadline exceeded (50 ms)\n") == NULL ||
        strstr(errs, "fixtures 2 to 3 not run after that limit") == NULL)
        fail_msg("errors: %s", errs);
    assert_true(now_s() - t0 < 2.0);
    free(errs);

    /* A chunk that loops at load. */
    write_rule("fix.lua", "while true do end\nreturn {}\n");
    s = load_files(files, 1, &errs);
    assert_null(s);
    if (strstr(errs, "/fix.lua:1: evaluation deadline exceeded (50 ms)") == NULL)
        fail_msg("errors: %s", errs);
    free(errs);
}


/* The local ctx.incr (fixtures, dry runs) counts in fixed windows aligned on
 * multiples of window_s, as the Redis one does. */
static void test_incr_local(void **state)
{
    capture cap;

    (void)state;
    rules_set *s;
    rules_vm *vm = one_rule_vm("incr.lua", "return { name = 'incr', on = {'t'}, evaluate = function(e, ctx)\n"
               "  return { action = 'alert', level = 'info',\n"
               "           reason = tostring(ctx.incr(e.key, 60, e.by)) } end }\n", &cap, &s);
    eval_now(vm, 120, "{\"key\":\"a\"}", &cap);
    assert_string_equal(cap.dec_reason[0], "1");
    eval_now(vm, 179, "{\"key\":\"a\",\"by\":4}", &cap);
    assert_string_equal(cap.dec_reason[0], "5");
    eval_now(vm, 179, "{\"key\":\"b\"}", &cap);
    assert_string_equal(cap.dec_reason[0], "1");
    eval_now(vm, 179, "{\"key\":\"a\",\"by\":0}", &cap);
    assert_string_equal(cap.dec_reason[0], "5");
    eval_now(vm, 180, "{\"key\":\"a\"}", &cap);          /* next window */
    assert_string_equal(cap.dec_reason[0], "1");
    eval_now(vm, 180, "{\"key\":\"\"}", &cap);
    assert_int_equal(cap.n_err, 1);
    assert_non_null(strstr(cap.err_msg[0], "key must be 1 to 128 bytes"));
    eval_now(vm, 180, "{\"key\":\"a\",\"by\":-1}", &cap);
    assert_int_equal(cap.n_err, 1);
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* A counter backend that records what it is asked. */
static int fake_incr(void *ud, const char *rule, const char *key, size_t keylen,
                     long long window_s, long long by, long long now, long long *count,
                     char *err, size_t errlen)
{
    char *seen = ud;

    if (strcmp(key, "down") == 0) {
        snprintf(err, errlen, "redis unavailable");
        return -1;
    }
    snprintf(seen, 256, "%s|%.*s|%lld|%lld|%lld", rule, (int)keylen, key, window_s, by, now);
    *count = 42;
    return 0;
}

static void test_incr_backend(void **state)
{
    char seen[256] = "";
    capture cap;

    (void)state;
    rules_set *s;
    rules_vm *vm = one_rule_vm("incr.lua", "return { name = 'incr', on = {'t'}, evaluate = function(e, ctx)\n"
               "  return { action = 'alert', level = 'info',\n"
               "           reason = tostring(ctx.incr(e.key, 3600, 2)) } end }\n", &cap, &s);
    rules_vm_set_incr(vm, fake_incr, seen);
    eval_now(vm, 7200, "{\"key\":\"card:1\"}", &cap);
    assert_string_equal(cap.dec_reason[0], "42");
    assert_string_equal(seen, "incr|card:1|3600|2|7200");
    /* A backend error fails the rule (never a silent skip). */
    eval_now(vm, 7200, "{\"key\":\"down\"}", &cap);
    assert_int_equal(cap.n_err, 1);
    assert_non_null(strstr(cap.err_msg[0], "ctx.incr: redis unavailable"));
    rules_vm_free(vm);
    rules_set_unref(s);
}

static int slow_incr(void *ud, const char *rule, const char *key, size_t keylen,
                     long long window_s, long long by, long long now, long long *count,
                     char *err, size_t errlen)
{
    struct timespec ts = { 0, 20 * 1000000 };

    (void)ud, (void)rule, (void)key, (void)keylen, (void)window_s, (void)by, (void)now;
    (void)err, (void)errlen;
    nanosleep(&ts, NULL);       /* a slow Redis, not synchronisation */
    *count = 1;
    return 0;
}

/* Time blocked in ctx.incr counts in full against the deadline, although
 * the thread uses no CPU meanwhile. */
static void test_blocked_counts(void **state)
{
    capture cap;

    (void)state;
    rules_set *s;
    rules_vm *vm = one_rule_vm("slow.lua", "return { name = 'slow', on = {'t'}, evaluate = function(e, ctx)\n"
               "  while true do ctx.incr('k', 60) end end }\n", &cap, &s);
    rules_vm_set_incr(vm, slow_incr, NULL);
    double t0 = now_s();
    eval_now(vm, 1, "{}", &cap);
    assert_int_equal(cap.n_err, 1);
    assert_non_null(strstr(cap.err_msg[0], "evaluation deadline exceeded (50 ms)"));
    assert_true(now_s() - t0 < 2.0);
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* A rule preempted for longer than its deadline, while its own CPU time
 * stays under it, is not failed: on a loaded machine benign rules must not
 * lose their decisions. The evaluation runs in a child that the test stops
 * (SIGSTOP) for 150 ms DELAY_MS into a 25 ms CPU loop; returns the child's
 * exit status (0: decided after the stop; 3: the stop missed the call). */
static int run_preempted(int delay_ms)
{
    const char *files[] = { "spin.lua" };
    char *errs, err[256], go;
    int pfd[2];
    pid_t pid;
    int status;

    write_rule("spin.lua", "return { name = 'spin', on = {'t'}, evaluate = function(e, ctx)\n"
               "  local t = os.clock() while os.clock() - t < 0.025 do end\n"
               "  return { action = 'alert', level = 'info', reason = 'done' } end }\n");
    rules_set *s = load_files(files, 1, &errs);
    assert_non_null(s);
    assert_int_equal(pipe(pfd), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        capture cap;
        rules_vm *vm;
        double t0;
        struct timespec pause = { 0, 20 * 1000000 };

        /* The sandbox samples the thread's CPU clock at most every 10 ms;
         * the sample inherited from the parent's thread is of another
         * clock: wait for a fresh one (taken building the vm). */
        nanosleep(&pause, NULL);
        vm = rules_vm_new(s, NULL, err, sizeof(err));

        rules_vm_on_error(vm, on_err, &cap);
        (void)!write(pfd[1], "g", 1);
        t0 = now_s();
        eval_now(vm, 1, "{}", &cap);
        if (cap.n_err) fprintf(stderr, "child: %s\n", cap.err_msg[0]);
        /* 0: decided, ran long; 2: failed; 3: the stop missed the call. */
        _exit(cap.n_err ? 2 : cap.n_dec != 1 ? 4 : now_s() - t0 < 0.14 ? 3 : 0);
    }
    assert_int_equal(read(pfd[0], &go, 1), 1);
    struct timespec ts = { 0, delay_ms * 1000000L };
    if (delay_ms > 0) nanosleep(&ts, NULL);
    kill(pid, SIGSTOP);
    ts.tv_nsec = 150 * 1000000;
    nanosleep(&ts, NULL);
    kill(pid, SIGCONT);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    close(pfd[0]);
    close(pfd[1]);
    assert_true(WIFEXITED(status));
    rules_set_unref(s);
    return WEXITSTATUS(status);
}

static void test_preempted_not_failed(void **state)
{
    (void)state;
    assert_int_equal(run_preempted(5), 0);
}

/* The same when the stop comes before the call's first look at the clock
 * (its first ms): that look then finds 150 ms of wall time, of which the
 * rule used about nothing (it failed with "deadline exceeded" before). The
 * stop is sent at once; when it lands before the call starts, try again. */
static void test_preempted_early(void **state)
{
    int rc = 3;

    (void)state;
    for (int i = 0; i < 5 && rc == 3; i++) {
        rc = run_preempted(0);
        assert_true(rc == 0 || rc == 3);
    }
    assert_int_equal(rc, 0);
}

struct small_run {
    rules_set *set;
    capture cap;
    int rc;
};

static void *small_thread(void *arg)
{
    struct small_run *r = arg;
    char err[256];
    rules_vm *vm = rules_vm_new(r->set, NULL, err, sizeof(err));

    if (vm == NULL)
        return NULL;
    rules_vm_on_error(vm, on_err, &r->cap);
    for (int i = 0; i < 3; i++) {
        memset(&r->cap, 0, sizeof(r->cap));
        r->rc = rules_eval(vm, "t", "{}", 2, on_dec, &r->cap);
    }
    rules_vm_free(vm);
    return NULL;
}

/* Recursion through metamethods on a thread with CivetWeb's 100,000-byte
 * stack crashed the process before Lua's own limit of 200 C levels: the
 * stack guard fails the rule instead. */
static void test_small_stack(void **state)
{
    static const char *const bodies[] = {
        "local mt = {}\nmt.__concat = function(a, b) return a .. b end\n"
        "local t = setmetatable({}, mt)\nreturn { action = 'alert', level = 'info', reason = t .. 'x' }",
        "local mt = {}\nmt.__index = function(t, k) return t[k .. 'x'] end\n"
        "return { action = 'alert', level = 'info', reason = setmetatable({}, mt).a }",
        "local mt = {}\nmt.__tostring = function(t) return tostring(t) end\n"
        "return { action = 'alert', level = 'info', reason = tostring(setmetatable({}, mt)) }",
        "local function f(s) return (s:gsub('.', function(c) return f(c) end)) end\n"
        "return { action = 'alert', level = 'info', reason = f('ab') }",
    };
    const char *files[] = { "hostile.lua", "good.lua" };

    (void)state;
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        char text[1024], *errs;
        struct small_run r = { 0 };
        pthread_attr_t a;
        pthread_t th;

        snprintf(text, sizeof(text), "return { name = 'rec', on = {'t'},\n"
                 "  evaluate = function(e, ctx)\n%s\n  end }\n", bodies[i]);
        write_rule("hostile.lua", text);
        r.set = load_files(files, 2, &errs);
        assert_non_null(r.set);
        assert_int_equal(pthread_attr_init(&a), 0);
        assert_int_equal(pthread_attr_setstacksize(&a, 100000), 0);
        assert_int_equal(pthread_create(&th, &a, small_thread, &r), 0);
        pthread_join(th, NULL);
        pthread_attr_destroy(&a);
        /* The rule failed (stack guard, or Lua's own C stack limit), the
         * process is alive, and the neighbour still decided. */
        assert_int_equal(r.rc, 1);
        assert_int_equal(r.cap.n_err, 1);
        if (strstr(r.cap.err_msg[0], "stack overflow") == NULL)
            fail_msg("case %zu: %s", i, r.cap.err_msg[0]);
        assert_int_equal(r.cap.n_dec, 1);
        assert_string_equal(r.cap.dec_reason[0], "good");
        rules_set_unref(r.set);
    }
}

/* ctx.scope encodes any id into the one scope grammar; a rule returning a
 * scope outside it is that rule's error. */
static void test_scope(void **state)
{
    capture cap;

    (void)state;
    rules_set *s;
    rules_vm *vm = one_rule_vm("scope.lua", "return { name = 'scope', on = {'t'}, evaluate = function(e, ctx)\n"
               "  if e.raw then return { action = 'kill', scope = e.raw, reason = 'r' } end\n"
               "  return { action = 'kill', scope = ctx.scope('campaign', e.id), reason = 'r' } end }\n", &cap, &s);
    eval_now(vm, 1, "{\"id\":\"spring/sale@x\"}", &cap);
    assert_string_equal(cap.dec_scope[0], "campaign:spring/sale@x");
    eval_now(vm, 1, "{\"id\":\"spring sale 100%\"}", &cap);
    assert_string_equal(cap.dec_scope[0], "campaign:spring%20sale%20100%25");
    eval_now(vm, 1, "{\"raw\":\"campaign:spring sale\"}", &cap);
    assert_int_equal(cap.n_dec, 0);
    assert_int_equal(cap.n_err, 1);
    if (strstr(cap.err_msg[0], "/scope.lua:2: decision 1: invalid scope \"campaign:spring sale\"") == NULL)
        fail_msg("got %s", cap.err_msg[0]);
    eval_now(vm, 1, "{\"raw\":\"sku:A%zz\"}", &cap);
    assert_int_equal(cap.n_err, 1);
    rules_vm_free(vm);
    rules_set_unref(s);
}

/* The evaluator's vm holds only bus rules, a worker's only sale rules. */
static void test_vm_kinds(void **state)
{
    const char *files[] = { "ev.lua", "sale.lua", "both.lua" };
    char *errs, err[256];

    (void)state;
    write_rule("ev.lua", "return { name = 'ev', on = {'t'}, evaluate = function() end }\n");
    write_rule("sale.lua", "return { name = 'sale', on = {'sale_request'}, evaluate = function() end }\n");
    write_rule("both.lua", "return { name = 'both', on = {'t', 'sale_request'}, evaluate = function() end }\n");
    rules_set *s = load_files(files, 3, &errs);
    assert_non_null(s);
    rules_vm *all = rules_vm_new(s, NULL, err, sizeof(err));
    rules_vm *ev = rules_vm_new_kind(s, NULL, RULES_VM_EVENTS, err, sizeof(err));
    rules_vm *sale = rules_vm_new_kind(s, NULL, RULES_VM_SALE, err, sizeof(err));
    assert_int_equal(rules_vm_count(all), 3);
    assert_int_equal(rules_vm_count(ev), 2);
    assert_int_equal(rules_vm_count(sale), 2);
    rules_vm_free(all);
    rules_vm_free(ev);
    rules_vm_free(sale);
    rules_set_unref(s);
}

/* A reload that changed nothing a vm's rules can see moves the vm onto the
 * new set (no Lua state rebuilt, ctx.state kept, counters on the new set);
 * anything else refuses, and the caller builds a new vm. */
static void test_rebind(void **state)
{
    const char *files[] = { "cnt.lua", "ev.lua" };
    char *errs, err[256];
    capture cap;
    rules_stats st;

    (void)state;
    write_rule("cnt.lua", "return { name = 'cnt', on = {'sale_request'}, evaluate = function(e, ctx)\n"
               "  ctx.state.n = (ctx.state.n or 0) + 1\n"
               "  return { action = 'reject', reason = tostring(ctx.state.n) } end }\n");
    write_rule("ev.lua", "return { name = 'ev', on = {'t'}, evaluate = function() end }\n");
    rules_set *a = load_files(files, 2, &errs), *b;
    assert_non_null(a);
    rules_vm *vm = rules_vm_new_kind(a, NULL, RULES_VM_SALE, err, sizeof(err));
    rules_vm_on_error(vm, on_err, &cap);
    memset(&cap, 0, sizeof(cap));
    rules_eval(vm, "sale_request", "{}", 2, on_dec, &cap);
    assert_string_equal(cap.dec_reason[0], "1");

    /* Another bus rule changed: the sale vm is rebound. */
    write_rule("ev.lua", "return { name = 'ev', on = {'t'}, evaluate = function() return nil end }\n");
    b = load_files(files, 2, &errs);
    assert_non_null(b);
    assert_int_equal(rules_vm_rebind(vm, b), 0);
    assert_ptr_equal(rules_vm_set(vm), b);
    rules_set_unref(a);                 /* the vm no longer needs it */
    memset(&cap, 0, sizeof(cap));
    rules_eval(vm, "sale_request", "{}", 2, on_dec, &cap);
    assert_string_equal(cap.dec_reason[0], "2");
    assert_int_equal(rules_set_stats(b, 0, &st), 0);
    assert_int_equal(st.evaluations, 1);

    /* The sale rule itself changed: refused, the vm untouched. */
    write_rule("cnt.lua", "return { name = 'cnt', on = {'sale_request'}, evaluate = function() end }\n");
    rules_set *c = load_files(files, 2, &errs);
    assert_non_null(c);
    assert_int_equal(rules_vm_rebind(vm, c), -1);
    assert_ptr_equal(rules_vm_set(vm), b);
    rules_set_unref(c);
    rules_vm_free(vm);
    rules_set_unref(b);
}

/* A *.lua that cannot be read is a load error naming it, never skipped. */
static void test_unreadable_files(void **state)
{
    char path[512], *errs;
    cfg c;
    rules_set *s;

    (void)state;
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/d", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(path, sizeof(path), "%s/good.lua", sub);
    FILE *f = fopen(path, "w");
    fputs("return { name = 'good', on = {'t'}, evaluate = function() end }\n", f);
    fclose(f);
    snprintf(path, sizeof(path), "%s/inventory.lua", sub);
    assert_int_equal(symlink("/nonexistent/inventory.lua", path), 0);
    snprintf(path, sizeof(path), "%s/dir.lua", sub);
    assert_int_equal(mkdir(path, 0700), 0);

    memset(&c, 0, sizeof(c));
    c.rules_dir = sub;
    c.rules_instruction_limit = 100000;
    c.rules_memory_limit = 1 << 20;
    c.max_event_bytes = 4096;
    c.params = cJSON_CreateObject();
    s = rules_set_load(&c, &errs);
    cJSON_Delete(c.params);
    assert_null(s);
    char want[1024];
    snprintf(want, sizeof(want), "%s/inventory.lua:1: cannot load rule file: dangling symlink "
             "(No such file or directory)\n", sub);
    if (strstr(errs, want) == NULL)
        fail_msg("errors: %s", errs);
    snprintf(want, sizeof(want), "%s/dir.lua:1: cannot load rule file: not a regular file\n", sub);
    if (strstr(errs, want) == NULL)
        fail_msg("errors: %s", errs);
    free(errs);
}

static double cpu_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 30 ms of CPU in C: no instruction, so no look at the clock. */
static void spin_fn(lua_State *L, void *ud)
{
    double t0 = cpu_s();

    (void)L, (void)ud;
    while (cpu_s() - t0 < 0.030)
        ;
}

/* 30 ms blocked: the thread preempted, the rule using no time. */
static void nap_fn(lua_State *L, void *ud)
{
    struct timespec ts = { 0, 30 * 1000000 };

    (void)L, (void)ud;
    nanosleep(&ts, NULL);       /* stands for a preemption, not synchronisation */
}

/* A call that ran past its deadline without any look used to succeed; one
 * that was only preempted still does. */
static void test_call_overrun(void **state)
{
    rules_sbx sbx;
    rules_sbx_err e;

    (void)state;
    assert_int_equal(rules_sbx_open(&sbx, "overrun.lua", "overrun", 1000000, 1 << 20, 10, &e), 0);
    assert_int_equal(rules_sbx_pcall(&sbx, spin_fn, NULL, &e), -1);
    assert_int_equal(e.kind, RULES_SBX_TIME);
    assert_string_equal(e.msg, "evaluation deadline exceeded (10 ms)");
    assert_int_equal(rules_sbx_pcall(&sbx, nap_fn, NULL, &e), 0);
    rules_sbx_close(&sbx);
}

/* A file name with a newline would forge a log line after it ("FILE:LINE:
 * message"): a load error, the name shown with its control bytes blanked. */
static void test_control_char_name(void **state)
{
    char sub[300], path[600], *errs, want[700];
    cfg c;
    rules_set *s;
    FILE *f;

    (void)state;
    snprintf(sub, sizeof(sub), "%s/n", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(path, sizeof(path), "%s/a\n2026-12-04T00:00:00.000Z info rules all good.lua", sub);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("return { name = 'nl', on = {'t'}, evaluate = function() error('boom') end }\n", f);
    fclose(f);
    memset(&c, 0, sizeof(c));
    c.rules_dir = sub;
    c.rules_instruction_limit = 100000;
    c.rules_memory_limit = 1 << 20;
    c.max_event_bytes = 4096;
    c.params = cJSON_CreateObject();
    s = rules_set_load(&c, &errs);
    cJSON_Delete(c.params);
    assert_null(s);
    snprintf(want, sizeof(want), "%s/a 2026-12-04T00:00:00.000Z info rules all good.lua:1: "
             "cannot load rule file: its name holds a control character (byte 0x0a)", sub);
    if (strstr(errs, want) == NULL || strchr(errs, '\n') != errs + strlen(errs) - 1)
        fail_msg("errors: %s", errs);
    free(errs);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "%s/nerve-sbx.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL)
        return -1;
    write_rule("good.lua", "return { name = 'good', on = {'t'}, evaluate = function(e, ctx)\n"
               "  return { action = 'alert', level = 'info', reason = 'good' } end }\n");
    return 0;
}

static int teardown(void **state)
{
    char cmd[512];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    struct CMUnitTest tests[sizeof(cases) / sizeof(cases[0]) + 16];
    size_t n = 0;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct CMUnitTest t = cmocka_unit_test_prestate(test_hostile_case, (void *)&cases[i]);

        t.name = cases[i].name;
        tests[n++] = t;
    }
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_rep_empty);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_patterns_allowed);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_fixture_deadline);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_incr_local);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_incr_backend);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_blocked_counts);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_preempted_not_failed);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_preempted_early);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_small_stack);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_scope);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_vm_kinds);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_rebind);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_unreadable_files);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_call_overrun);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_control_char_name);
    return _cmocka_run_group_tests("sandbox_limits", tests, n, setup, teardown);
}
