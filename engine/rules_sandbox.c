/* rules_sandbox.c -- one sandboxed Lua 5.4 state per rule.
 *
 * Why a file of its own: what makes running an analyst's Lua safe lives here,
 * in one place to audit -- the whitelisted globals, the byte-counting
 * allocator, the instruction budget, and the message handler that turns any
 * error into (line, message). The values that cross the boundary (events,
 * params, ctx, decisions, state) are converted in rules_values.c.
 *
 * Limits. The allocator refuses any growth past the cap; Lua then runs an
 * emergency collection and, if that does not help, raises a memory error. A
 * rule could catch that error (or the instruction-limit error) with pcall and
 * carry on, so once a limit is hit the count hook is re-armed to fire on every
 * instruction and raises again each time until control is back in C (Redis'
 * luaMaskCountHook). The raised value is a light userdata: no allocation, and
 * nothing a rule can forge. The final message is built in C from s->abort.
 *
 * Every call into Lua runs inside rules_sbx_pcall(): a memory error outside
 * protected mode would reach Lua's panic handler and abort the process.
 *
 * Time. Every protected call also has a wall-clock deadline
 * (rules.eval_timeout_ms). Three things make it hold whatever the rule does:
 *  - the count hook fires every HOOK_PERIOD instructions and checks both the
 *    instruction budget and the clock;
 *  - Lua calls a message handler while the hook that raised is still running,
 *    that is with hooks off: `xpcall(error, function() while true do end end)`
 *    would loop forever. xpcall is replaced so that once an abort is pending
 *    the rule's handler is never called (the abort passes through untouched);
 *  - one C call can loop without any instruction (table.move over 1e15
 *    indices, string.rep("", 1e15), a backtracking pattern): rules_guard.c
 *    wraps every function of string, table, utf8 and os.date, and xpcall.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "nerve/clock.h"
#include "nerve/log.h"
#include "rules_int.h"

static const char abort_token = 0; /* its address is the abort error value */


void rules_sanitize(char *dst, size_t n, const char *s, size_t len) {
    size_t i;

    if (n == 0) return;
    for (i = 0; i < len && i + 1 < n; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    dst[i] = '\0';
}

/* ---- allocator and instruction budget ----------------------------------- */

static void count_hook(lua_State *L, lua_Debug *ar);

/* The line the rule is executing (innermost Lua frame), 0 if none. Only
 * reads the call-info chain: safe from inside the allocator. */
static int current_line(lua_State *L) {
    lua_Debug ar;

    for (int level = 0; level < 8 && lua_getstack(L, level, &ar); level++)
        if (lua_getinfo(L, "l", &ar) && ar.currentline > 0) return ar.currentline;
    return 0;
}

/* The memory limit is hit for good: make it stick even if the rule catches
 * the memory error. lua_sethook is safe at any point (lua.c calls it from a
 * signal handler). */
static void mem_abort(rules_sbx *s) {
    if (s->abort == RULES_SBX_OK) {
        s->abort = RULES_SBX_MEM;
        s->abort_line = s->pending ? s->pend_line : current_line(s->L);
    }
    s->pending = false;
    lua_sethook(s->L, count_hook, LUA_MASKCOUNT, 1);
}

/* Work that no instruction counts: what C functions and the VM's own
 * operations allocate (string.rep writes its result byte by byte, `..`,
 * table.concat, gsub...). Each allocation is bounded by the memory limit, but
 * a loop of them is not: 100000 instructions of string.rep("x", 65536) ran
 * for seconds. So the bytes allocated in one protected call count too: past
 * the memory limit plus 64 bytes per instruction of the budget, the call is
 * aborted like one over the instruction limit. Parsing a chunk is exempt
 * (it is bounded by the file size). */
static void charge(rules_sbx *s, size_t n) {
    s->churn += n;
    if (s->churn > s->churn_limit && s->abort == RULES_SBX_OK) {
        s->abort = RULES_SBX_INSTR;
        s->churned = true;
        s->abort_line = current_line(s->L);
        lua_sethook(s->L, count_hook, LUA_MASKCOUNT, 1);
    }
}

/* When an allocation is refused, Lua runs an emergency full collection
 * (which only frees and shrinks) and retries the very same call. Only a
 * refused retry is a real overrun: a rule whose live data fits but whose
 * garbage reached the cap must not lose its state. A refusal that is not
 * retried raised at once (Lua could not collect, or lauxlib's buffers, which
 * call the allocator directly): the next growth proves it. */
static void *sbx_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    rules_sbx *s = ud;
    bool retry;
    void *p;

    if (ptr == NULL) osize = 0; /* then osize is a type tag, not a size */
    if (nsize == 0) {
        free(ptr);
        s->used -= osize;
        return NULL;
    }
    retry = s->pending && ptr == s->pend_ptr && osize == s->pend_osize && nsize == s->pend_nsize;
    if (s->pending && nsize > osize && !retry && s->armed) mem_abort(s);
    if (nsize > osize && nsize - osize > s->limit - s->used) {
        if (s->armed && s->L != NULL) {
            if (retry) {
                mem_abort(s);
            } else {
                s->pending = true;
                s->pend_ptr = ptr;
                s->pend_osize = osize;
                s->pend_nsize = nsize;
                s->pend_line = current_line(s->L);
            }
        }
        return NULL;
    }
    if (retry) s->pending = false; /* the collection made room */
    p = realloc(ptr, nsize);
    if (p == NULL) return NULL;
    s->used = s->used - osize + nsize;
    if (nsize > osize && s->armed && !s->compiling && s->L != NULL) charge(s, nsize - osize);
    return p;
}

uint64_t rules_now_ns(void) {
    return clock_now_ns();
}

/* Instructions between two looks at the budget and the clock: a look costs
 * about a clock read, so the overhead is well under 1 %. Some single
 * instructions are slow (comparing two 4 MB strings, tonumber on one), so the
 * period adapts: it shrinks (down to HOOK_PERIOD_MIN) until a look comes about
 * every HOOK_AIM_NS, and so bounds how far past the deadline a rule can run. */
#define HOOK_PERIOD     1000
#define HOOK_PERIOD_MIN 16
#define HOOK_AIM_NS     1000000.0

/* CivetWeb runs its workers on small stacks (100,000 bytes in Debian's
 * build), and Lua allows 200 nested C calls (metamethods, C functions calling
 * back into Lua) before its own "C stack overflow": some recursions through
 * metamethods need more than 100 KB for that, and the worker would crash. On
 * a thread whose stack is under STACK_SMALL, every call is checked against
 * the stack left (a call hook, so only such threads pay for it) and a call
 * that would start with less than STACK_MARGIN left fails the rule. The
 * margin covers the deepest C work one call does without calling back into
 * Lua (the pattern matcher's recursion, format buffers). */
#define STACK_SMALL  (1u << 20)
#define STACK_MARGIN (40u << 10)

static __thread uintptr_t stack_low;
static __thread size_t stack_size;
static __thread int stack_known;

static void stack_bounds(void) {
    pthread_attr_t a;
    void *addr;
    size_t size;

    if (stack_known) return;
    stack_known = 1;
    if (pthread_getattr_np(pthread_self(), &a) != 0) return;
    if (pthread_attr_getstack(&a, &addr, &size) == 0) {
        stack_low = (uintptr_t)addr;
        stack_size = size;
    }
    pthread_attr_destroy(&a);
}

/* The deadline is about the rule's own work: on a loaded machine a thread
 * can be preempted for tens of ms, and a benign rule must not fail for it.
 * So once a call has run HOOK_MARK_NS of wall time, the thread's CPU clock is
 * read (a system call: only long calls pay it); when the wall-clock deadline
 * passes, the time the rule really used -- wall time up to the mark (see
 * tick), then CPU time plus time blocked in ctx.incr -- decides, and the
 * deadline moves out
 * if that is still under rules.eval_timeout_ms. HARD_FACTOR x the timeout
 * of wall time ends it in any case. */
#define HOOK_MARK_NS 1000000u
#define HARD_FACTOR  10u

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;

    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The thread's CPU clock, sampled at the start of a protected call at most
 * every CPU_SAMPLE_NS of wall time (sample_thread, below). */
static __thread uint64_t sample_wall, sample_cpu;

/* Called with the wall clock NOW whenever it was read inside a call. Up to
 * the mark the call is charged its wall time -- unless the mark comes late
 * (the first look after the thread was preempted: on a loaded machine that
 * can be longer than the whole deadline, and a benign rule failed for it).
 * Then the CPU time since the last sample, less the wall time from that
 * sample to the call's start, bounds what the call used from below, and is
 * charged when smaller (plus any time blocked in ctx.incr, which counts in
 * full). */
static void tick(rules_sbx *s, uint64_t now) {
    if (s->cpu_mark == 0 && now - s->start_ns >= HOOK_MARK_NS) {
        s->cpu_mark = thread_cpu_ns();
        s->mark_ns = now;
        s->pre_ns = now - s->start_ns;
        if (s->pre_ns > 2 * HOOK_MARK_NS && sample_wall != 0 && sample_wall <= s->start_ns &&
            s->cpu_mark >= sample_cpu) {
            uint64_t cpu = s->cpu_mark - sample_cpu, before = s->start_ns - sample_wall;
            uint64_t est = (cpu > before ? cpu - before : 0) + s->io_early_ns;

            if (est < s->pre_ns) s->pre_ns = est;
        }
    }
}

/* 1 when the call is over its deadline; else 0, moving the deadline out when
 * the wall clock passed it while the rule itself did not use the time. */
static int over_deadline(rules_sbx *s, uint64_t now) {
    uint64_t limit = (uint64_t)s->timeout_ms * 1000000u, used;

    if (now < s->deadline_ns) return 0;
    if (now >= s->hard_ns || s->cpu_mark == 0) return 1;
    used = s->pre_ns + (thread_cpu_ns() - s->cpu_mark) + s->io_ns;
    if (used >= limit) return 1;
    s->deadline_ns = now + (limit - used);
    if (s->deadline_ns > s->hard_ns) s->deadline_ns = s->hard_ns;
    return 0;
}

/* The thread's CPU clock, sampled at the start of a protected call at most
 * every CPU_SAMPLE_NS of wall time (a system call: rarely). When a call
 * ends, or its evaluate returns, with no look since its first ms, what it
 * used is bounded from below by the CPU time since the sample less the wall
 * time between the sample and the call's start: a short rule preempted for
 * longer than its deadline is not failed for it, one that really ran
 * (within CPU_SAMPLE_NS) is. */
#define CPU_SAMPLE_NS 10000000u

static void sample_thread(uint64_t now) {
    if (sample_wall != 0 && now - sample_wall < CPU_SAMPLE_NS) return;
    sample_wall = now;
    sample_cpu = thread_cpu_ns();
}

/* over_deadline for a look that may come long after the previous one. */
static int over_deadline_late(rules_sbx *s, uint64_t now) {
    uint64_t limit = (uint64_t)s->timeout_ms * 1000000u, cpu, before;

    if (now < s->deadline_ns) return 0;
    if (s->cpu_mark == 0 && now < s->hard_ns && sample_wall != 0 && sample_wall <= s->start_ns) {
        cpu = thread_cpu_ns() - sample_cpu + s->io_early_ns;
        before = s->start_ns - sample_wall;
        return cpu > before && cpu - before >= limit;
    }
    tick(s, now);
    return over_deadline(s, now);
}

void rules_sbx_blocked(rules_sbx *s, uint64_t ns) {
    if (s->cpu_mark != 0)
        s->io_ns += ns;
    else
        s->io_early_ns += ns; /* in the wall time up to the mark, unless it comes late */
}

/* A limit was hit: record it, make the hook fire on every instruction from
 * now on, and raise the abort token. Raised again at the next instruction if
 * a pcall in the rule catches it, until control is back in C. */
static int sbx_abort(lua_State *L, rules_sbx *s, int kind) {
    if (s->abort == RULES_SBX_OK) s->abort = kind;
    if (s->abort_line == 0) s->abort_line = current_line(L);
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1); /* keep firing */
    lua_pushlightuserdata(L, (void *)&abort_token);
    return lua_error(L);
}

static void count_hook(lua_State *L, lua_Debug *ar) {
    rules_sbx *s = rules_sbx_of(L);

    if (ar->event == LUA_HOOKRET) { /* only with trace_ret */
        lua_Debug up;

        /* Returning to C: the top-level call (or one from a C function; the
         * top-level evaluate returns last). Its current line is the return
         * statement's (or the `end` it fell off). */
        if (lua_getinfo(L, "Sl", ar) && ar->what[0] != 'C' && ar->currentline > 0 &&
            (!lua_getstack(L, 1, &up) || (lua_getinfo(L, "S", &up) && up.what[0] == 'C')))
            s->ret_line = ar->currentline;
        return;
    }
    if (ar->event == LUA_HOOKCALL || ar->event == LUA_HOOKTAILCALL) {
        char here;

        /* Only set with a stack guard (a thread with a small stack). */
        if (s->abort == RULES_SBX_OK && (uintptr_t)&here < s->stack_guard)
            sbx_abort(L, s, RULES_SBX_STACK);
        return;
    }
    if (s->abort == RULES_SBX_OK) {
        uint64_t now = rules_now_ns();

        s->budget -= s->period;
        tick(s, now);
        if (s->budget > 0 && !over_deadline(s, now)) {
            double dt = (double)(now - s->last_hook_ns), next = HOOK_PERIOD;

            if (dt > HOOK_AIM_NS)
                next = fmax(HOOK_PERIOD_MIN, s->period * HOOK_AIM_NS / dt);
            else if (s->period < HOOK_PERIOD)
                next = fmin(HOOK_PERIOD, s->period * 2.0);
            s->last_hook_ns = now;
            s->period = (double)s->budget < next ? (int)s->budget : (int)next;
            lua_sethook(L, count_hook, s->hookmask, s->period);
            return;
        }
        sbx_abort(L, s, s->budget > 0 ? RULES_SBX_TIME : RULES_SBX_INSTR);
    }
    sbx_abort(L, s, s->abort);
}

int rules_sbx_abort(lua_State *L, int kind) {
    return sbx_abort(L, rules_sbx_of(L), kind);
}

double rules_sbx_time_left(lua_State *L) {
    rules_sbx *s = rules_sbx_of(L);
    uint64_t now = rules_now_ns();

    tick(s, now);
    over_deadline(s, now); /* may move the deadline out */
    return s->deadline_ns > now ? (double)(s->deadline_ns - now) : 0;
}

void rules_sbx_check_abort(lua_State *L) {
    rules_sbx *s = rules_sbx_of(L);

    if (s->armed && s->abort != RULES_SBX_OK) sbx_abort(L, s, s->abort);
}

void rules_sbx_check_deadline(lua_State *L) {
    rules_sbx *s = rules_sbx_of(L);

    if (!s->armed) return;
    if (s->abort != RULES_SBX_OK || over_deadline_late(s, rules_now_ns()))
        sbx_abort(L, s, RULES_SBX_TIME);
}

/* ---- protected calls and error messages -------------------------------- */

/* Lua's abbreviation of "@FILE" (luaO_chunkid), to recognise its messages. */
static void chunkid(char *out, const char *file) {
    size_t len = strlen(file);

    if (len + 1 <= LUA_IDSIZE) {
        memcpy(out, file, len + 1);
    } else {
        memcpy(out, "...", 3);
        memcpy(out + 3, file + len - (LUA_IDSIZE - 4), LUA_IDSIZE - 3);
    }
}

/* When M starts with "PRE:<digits>:" set *LINE and *REST (after ": "). */
static int strip_pos(const char *m, size_t mlen, const char *pre, int *line, const char **rest) {
    size_t plen = strlen(pre), i;
    long v = 0;

    if (mlen < plen + 3 || memcmp(m, pre, plen) != 0 || m[plen] != ':') return 0;
    for (i = plen + 1; i < mlen && m[i] >= '0' && m[i] <= '9' && v < 100000000; i++)
        v = v * 10 + (m[i] - '0');
    if (i == plen + 1 || i >= mlen || m[i] != ':') return 0;
    i++;
    if (i < mlen && m[i] == ' ') i++;
    *line = (int)v;
    *rest = m + i;
    return 1;
}

static int fallback_line(const rules_sbx *s, int line) {
    if (line > 0) return line;
    return s->def_line > 0 ? s->def_line : 1;
}

static void log_traceback(lua_State *L, rules_sbx *s) {
    char buf[512];
    size_t off = 0;
    lua_Debug ar;

    buf[0] = '\0';
    for (int level = 1; level < 16 && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sln", &ar) || ar.currentline <= 0) continue;
        int w = snprintf(buf + off, sizeof(buf) - off, "%s%d%s%s", off ? " <- " : "",
                         ar.currentline, ar.name ? " in " : "", ar.name ? ar.name : "");
        if (w < 0 || (size_t)w >= sizeof(buf) - off) break;
        off += (size_t)w;
    }
    log_debug("rules", "error traceback rule=%s file=%s lines=\"%s\"", s->name ? s->name : "?",
              s->file, buf);
}

/* Message handler: remember the innermost line of the rule; the message is
 * composed in C afterwards (so this allocates nothing and cannot fail). */
static int msgh(lua_State *L) {
    rules_sbx *s = rules_sbx_of(L);
    lua_Debug ar;

    if (s->abort != RULES_SBX_OK) return 1;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "l", &ar) && ar.currentline > 0) {
            s->err_line = ar.currentline;
            break;
        }
    }
    if (log_enabled(LOG_LVL_DEBUG)) log_traceback(L, s);
    return 1;
}

struct tramp {
    rules_sbx_fn fn;
    void *ud;
};

static int trampoline(lua_State *L) {
    struct tramp *t = lua_touserdata(L, 1);

    lua_settop(L, 0);
    t->fn(L, t->ud);
    return 0;
}

static void fill_error(rules_sbx *s, int st, rules_sbx_err *e) {
    lua_State *L = s->L;

    if (s->abort == RULES_SBX_STACK) {
        e->kind = RULES_SBX_STACK;
        e->line = fallback_line(s, s->abort_line);
        snprintf(e->msg, sizeof(e->msg),
                 "C stack overflow (calls through metamethods or "
                 "library functions nested too deeply for this thread's %zu KiB stack)",
                 stack_size >> 10);
    } else if (s->abort == RULES_SBX_TIME) {
        e->kind = RULES_SBX_TIME;
        e->line = fallback_line(s, s->abort_line);
        snprintf(e->msg, sizeof(e->msg), "evaluation deadline exceeded (%d ms)", s->timeout_ms);
    } else if (s->abort == RULES_SBX_INSTR) {
        e->kind = RULES_SBX_INSTR;
        e->line = fallback_line(s, s->abort_line);
        if (s->churned)
            snprintf(e->msg, sizeof(e->msg),
                     "instruction limit exceeded (%d instructions; "
                     "allocated more than %zu bytes)",
                     s->instr_limit, s->churn_limit);
        else
            snprintf(e->msg, sizeof(e->msg), "instruction limit exceeded (%d instructions)",
                     s->instr_limit);
    } else if (s->abort == RULES_SBX_MEM || st == LUA_ERRMEM) {
        e->kind = RULES_SBX_MEM;
        e->line = fallback_line(s, s->abort_line);
        snprintf(e->msg, sizeof(e->msg), "memory limit exceeded (%zu bytes)", s->limit);
    } else if (st == LUA_ERRERR) {
        e->kind = RULES_SBX_ERR;
        e->line = fallback_line(s, s->err_line);
        snprintf(e->msg, sizeof(e->msg), "error while handling an error");
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        size_t mlen;
        const char *m = lua_tolstring(L, -1, &mlen), *rest;
        int line;

        e->kind = RULES_SBX_ERR;
        if (strip_pos(m, mlen, s->short_src, &line, &rest) ||
            strip_pos(m, mlen, s->file, &line, &rest)) {
            e->line = fallback_line(s, line);
            rules_sanitize(e->msg, sizeof(e->msg), rest, mlen - (size_t)(rest - m));
        } else {
            e->line = fallback_line(s, s->err_line);
            rules_sanitize(e->msg, sizeof(e->msg), m, mlen);
        }
    } else {
        e->kind = RULES_SBX_ERR;
        e->line = fallback_line(s, s->err_line);
        if (lua_type(L, -1) == LUA_TNUMBER)
            snprintf(e->msg, sizeof(e->msg), "%.14g", lua_tonumber(L, -1));
        else
            snprintf(e->msg, sizeof(e->msg), "error object is a %s value", luaL_typename(L, -1));
    }
}

int rules_sbx_pcall(rules_sbx *s, rules_sbx_fn fn, void *ud, rules_sbx_err *e) {
    return rules_sbx_pcall_until(s, fn, ud, 0, e);
}

int rules_sbx_pcall_until(rules_sbx *s, rules_sbx_fn fn, void *ud, uint64_t deadline_ns,
                          rules_sbx_err *e) {
    lua_State *L = s->L;
    struct tramp t = { fn, ud };
    int base = lua_gettop(L), st;

    /* Light C functions and light userdata: these pushes never allocate. */
    lua_pushcfunction(L, msgh);
    lua_pushcfunction(L, trampoline);
    lua_pushlightuserdata(L, &t);
    s->abort = RULES_SBX_OK;
    s->abort_line = 0;
    s->err_line = 0;
    s->pending = false;
    s->churn = 0;
    s->churned = false;
    s->compiling = false;
    s->logs_left = s->replay ? 0 : RULES_LOG_MAX;
    s->ret_line = 0;
    s->incr_i = 0; /* incr_n is reset by the caller, before the call it replays */
    s->budget = s->instr_limit;
    /* Slow start: the first look comes early, whatever the first
     * instructions cost; the period then doubles while they are cheap. */
    s->period = s->instr_limit < HOOK_PERIOD_MIN ? s->instr_limit : HOOK_PERIOD_MIN;
    s->start_ns = s->last_hook_ns = rules_now_ns();
    sample_thread(s->start_ns);
    s->deadline_ns = s->start_ns + (uint64_t)s->timeout_ms * 1000000u;
    s->hard_ns = s->start_ns + (uint64_t)s->timeout_ms * 1000000u * HARD_FACTOR;
    if (deadline_ns != 0 && deadline_ns < s->deadline_ns) s->deadline_ns = deadline_ns;
    if (deadline_ns != 0 && deadline_ns < s->hard_ns) s->hard_ns = deadline_ns;
    s->cpu_mark = s->mark_ns = s->pre_ns = s->io_ns = s->io_early_ns = 0;
    stack_bounds();
    s->stack_guard = stack_size > 0 && stack_size < STACK_SMALL ? stack_low + STACK_MARGIN : 0;
    s->hookmask = LUA_MASKCOUNT | (s->stack_guard ? LUA_MASKCALL : 0) |
                  (s->trace_ret ? LUA_MASKRET : 0);
    lua_sethook(L, count_hook, s->hookmask, s->period);
    s->armed = true;
    st = lua_pcall(L, 1, 0, base + 1);
    s->armed = false;
    lua_sethook(L, NULL, 0, 0);
    if (s->pending) { /* refused, not retried, and swallowed */
        if (s->abort == RULES_SBX_OK) {
            s->abort = RULES_SBX_MEM;
            s->abort_line = s->pend_line;
        }
        s->pending = false;
    }
    /* One C call can overrun without any look (a guard's estimate too low):
     * a call that ended over its deadline fails all the same. */
    s->end_ns = rules_now_ns();
    if (st == LUA_OK && s->abort == RULES_SBX_OK && over_deadline_late(s, s->end_ns))
        s->abort = RULES_SBX_TIME;
    if (st == LUA_OK && s->abort == RULES_SBX_OK) {
        lua_settop(L, base);
        return 0;
    }
    /* A limit hit after an emergency collection succeeded still counts: the
     * state is at its cap. */
    fill_error(s, st, e);
    lua_settop(L, base);
    s->abort = RULES_SBX_OK;
    return -1;
}

/* ---- the sandboxed environment ----------------------------------------- */

static int sbx_setmetatable(lua_State *L) {
    int t = lua_type(L, 2);

    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (t == LUA_TTABLE) {
        /* A finalizer runs with hooks off: it could loop forever unbounded. */
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "__gc metamethods are not allowed in rules");
        lua_pop(L, 1);
    }
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

static int sbx_log(lua_State *L) {
    static const char *const names[] = { "debug", "info", "warn", "error", "warning", NULL };
    static const log_level levels[] = { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR,
                                        LOG_LVL_WARN };
    rules_sbx *s = rules_sbx_of(L);
    log_level lvl = levels[luaL_checkoption(L, 1, NULL, names)];
    char buf[512];
    const char *msg;
    size_t len;
    lua_Debug ar;
    int line = 0;

    if (!log_enabled(lvl) || s->logs_left <= 0) return 0;
    s->logs_left--;
    msg = luaL_tolstring(L, 2, &len);
    rules_sanitize(buf, sizeof(buf), msg, len);
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar)) line = ar.currentline;
    log_write(lvl, "rules", "%s rule=%s src=%s:%d", buf, s->name ? s->name : "?", s->file, line);
    return 0;
}

/* type(v) as the base library's, answering from upvalues: the original
 * interns the name (lua_pushstring) at every call, and rules call type() a
 * lot (type(x) == "number" is how they validate events). */
static int sbx_type(lua_State *L) {
    int t = lua_type(L, 1);

    luaL_argcheck(L, t != LUA_TNONE, 1, "value expected");
    lua_pushvalue(L, lua_upvalueindex(t + 1));
    return 1;
}

static void open_env(lua_State *L, void *ud) {
    static const char *const drop[] = { "load",           "loadfile", "dofile",
                                        "collectgarbage", "print",    "rawset",
                                        "warn",           "require",  NULL };
    static const char *const os_keep[] = { "time", "clock", "date", NULL };

    (void)ud;
    /* Generational: event tables die young, and frequent minor collections
     * keep garbage from piling up to the memory cap (lauxlib's buffers, as
     * in string.rep, get no emergency collection when the cap refuses them). */
    lua_gc(L, LUA_GCGEN, 0, 0);
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
    lua_settop(L, 0);

    for (int i = 0; drop[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, drop[i]);
    }
    lua_pushcfunction(L, sbx_setmetatable);
    lua_setglobal(L, "setmetatable");
    lua_pushcfunction(L, sbx_log);
    lua_setglobal(L, "log");
    for (int t = LUA_TNIL; t < LUA_NUMTYPES; t++) lua_pushstring(L, lua_typename(L, t));
    lua_pushcclosure(L, sbx_type, LUA_NUMTYPES);
    lua_setglobal(L, "type");
    rules_state_env(L);

    /* getmetatable("") would hand out the string library's metatable. */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);

    /* os: time, clock, date only; the full library is not kept anywhere. */
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
    lua_createtable(L, 0, 3);
    for (int i = 0; os_keep[i]; i++) {
        lua_getfield(L, -2, os_keep[i]);
        lua_setfield(L, -2, os_keep[i]);
    }
    lua_setglobal(L, LUA_OSLIBNAME);
    lua_pop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushnil(L);
    lua_setfield(L, -2, LUA_OSLIBNAME);
    lua_pop(L, 1);
    rules_guard_env(L);
}

int rules_sbx_open(rules_sbx *s, const char *file, const char *name, long long instr_limit,
                   size_t mem_limit, int timeout_ms, rules_sbx_err *e) {
    memset(s, 0, sizeof(*s));
    s->timeout_ms = timeout_ms < 1 ? 1 : timeout_ms;
    s->file = file;
    s->name = name;
    s->limit = mem_limit;
    s->instr_limit = instr_limit < 1              ? 1
                     : instr_limit > 1000000000LL ? 1000000000
                                                  : (int)instr_limit;
    s->churn_limit = mem_limit + (size_t)s->instr_limit * 64;
    chunkid(s->short_src, file);
    s->L = lua_newstate(sbx_alloc, s);
    if (s->L == NULL) {
        e->kind = RULES_SBX_MEM;
        e->line = 1;
        snprintf(e->msg, sizeof(e->msg), "cannot create a Lua state within %zu bytes", mem_limit);
        return -1;
    }
    *(rules_sbx **)lua_getextraspace(s->L) = s;
    if (rules_sbx_pcall(s, open_env, NULL, e) != 0) {
        rules_sbx_close(s);
        return -1;
    }
    return 0;
}

void rules_sbx_close(rules_sbx *s) {
    if (s->L != NULL) {
        lua_close(s->L);
        s->L = NULL;
    }
}

void rules_sbx_run_chunk(lua_State *L, const char *src, size_t len) {
    rules_sbx *s = rules_sbx_of(L);
    char chunkname[RULES_MSG_MAX];

    snprintf(chunkname, sizeof(chunkname), "@%s", s->file);
    s->compiling = true;
    if (luaL_loadbufferx(L, src, len, chunkname, "t") != LUA_OK) {
        s->compiling = false;
        lua_error(L); /* the message already reads FILE:LINE: */
    }
    s->compiling = false;
    lua_call(L, 0, 1);
}
