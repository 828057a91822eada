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
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "nerve/log.h"
#include "rules_int.h"

static const char abort_token = 0;     /* its address is the abort error value */

static rules_sbx *sbx_of(lua_State *L)
{
    return *(rules_sbx **)lua_getextraspace(L);
}

void rules_sanitize(char *dst, size_t n, const char *s, size_t len)
{
    size_t i;

    if (n == 0)
        return;
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
static int current_line(lua_State *L)
{
    lua_Debug ar;

    for (int level = 0; level < 8 && lua_getstack(L, level, &ar); level++)
        if (lua_getinfo(L, "l", &ar) && ar.currentline > 0)
            return ar.currentline;
    return 0;
}

/* The memory limit is hit for good: make it stick even if the rule catches
 * the memory error. lua_sethook is safe at any point (lua.c calls it from a
 * signal handler). */
static void mem_abort(rules_sbx *s)
{
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
static void charge(rules_sbx *s, size_t n)
{
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
static void *sbx_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    rules_sbx *s = ud;
    bool retry;
    void *p;

    if (ptr == NULL)
        osize = 0;             /* then osize is a type tag, not a size */
    if (nsize == 0) {
        free(ptr);
        s->used -= osize;
        return NULL;
    }
    retry = s->pending && ptr == s->pend_ptr && osize == s->pend_osize &&
            nsize == s->pend_nsize;
    if (s->pending && nsize > osize && !retry && s->armed)
        mem_abort(s);
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
    if (retry)
        s->pending = false;    /* the collection made room */
    p = realloc(ptr, nsize);
    if (p == NULL)
        return NULL;
    s->used = s->used - osize + nsize;
    if (nsize > osize && s->armed && !s->compiling && s->L != NULL)
        charge(s, nsize - osize);
    return p;
}

static void count_hook(lua_State *L, lua_Debug *ar)
{
    rules_sbx *s = sbx_of(L);

    if (s->abort == RULES_SBX_OK)
        s->abort = RULES_SBX_INSTR;
    if (s->abort_line == 0 && lua_getinfo(L, "l", ar) && ar->currentline > 0)
        s->abort_line = ar->currentline;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);   /* keep firing */
    lua_pushlightuserdata(L, (void *)&abort_token);
    lua_error(L);
}

/* ---- protected calls and error messages -------------------------------- */

/* Lua's abbreviation of "@FILE" (luaO_chunkid), to recognise its messages. */
static void chunkid(char *out, const char *file)
{
    size_t len = strlen(file);

    if (len + 1 <= LUA_IDSIZE) {
        memcpy(out, file, len + 1);
    } else {
        memcpy(out, "...", 3);
        memcpy(out + 3, file + len - (LUA_IDSIZE - 4), LUA_IDSIZE - 3);
    }
}

/* When M starts with "PRE:<digits>:" set *LINE and *REST (after ": "). */
static int strip_pos(const char *m, size_t mlen, const char *pre, int *line,
                     const char **rest)
{
    size_t plen = strlen(pre), i;
    long v = 0;

    if (mlen < plen + 3 || memcmp(m, pre, plen) != 0 || m[plen] != ':')
        return 0;
    for (i = plen + 1; i < mlen && m[i] >= '0' && m[i] <= '9' && v < 100000000; i++)
        v = v * 10 + (m[i] - '0');
    if (i == plen + 1 || i >= mlen || m[i] != ':')
        return 0;
    i++;
    if (i < mlen && m[i] == ' ')
        i++;
    *line = (int)v;
    *rest = m + i;
    return 1;
}

static int fallback_line(const rules_sbx *s, int line)
{
    if (line > 0)
        return line;
    return s->def_line > 0 ? s->def_line : 1;
}

static void log_traceback(lua_State *L, rules_sbx *s)
{
    char buf[512];
    size_t off = 0;
    lua_Debug ar;

    buf[0] = '\0';
    for (int level = 1; level < 16 && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sln", &ar) || ar.currentline <= 0)
            continue;
        int w = snprintf(buf + off, sizeof(buf) - off, "%s%d%s%s", off ? " <- " : "",
                         ar.currentline, ar.name ? " in " : "", ar.name ? ar.name : "");
        if (w < 0 || (size_t)w >= sizeof(buf) - off)
            break;
        off += (size_t)w;
    }
    log_debug("rules", "error traceback rule=%s file=%s lines=\"%s\"",
              s->name ? s->name : "?", s->file, buf);
}

/* Message handler: remember the innermost line of the rule; the message is
 * composed in C afterwards (so this allocates nothing and cannot fail). */
static int msgh(lua_State *L)
{
    rules_sbx *s = sbx_of(L);
    lua_Debug ar;

    if (s->abort != RULES_SBX_OK)
        return 1;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "l", &ar) && ar.currentline > 0) {
            s->err_line = ar.currentline;
            break;
        }
    }
    if (log_enabled(LOG_LVL_DEBUG))
        log_traceback(L, s);
    return 1;
}

struct tramp {
    rules_sbx_fn fn;
    void *ud;
};

static int trampoline(lua_State *L)
{
    struct tramp *t = lua_touserdata(L, 1);

    lua_settop(L, 0);
    t->fn(L, t->ud);
    return 0;
}

static void fill_error(rules_sbx *s, int st, rules_sbx_err *e)
{
    lua_State *L = s->L;

    if (s->abort == RULES_SBX_INSTR) {
        e->kind = RULES_SBX_INSTR;
        e->line = fallback_line(s, s->abort_line);
        if (s->churned)
            snprintf(e->msg, sizeof(e->msg), "instruction limit exceeded (%d instructions; "
                     "allocated more than %zu bytes)", s->instr_limit, s->churn_limit);
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
            snprintf(e->msg, sizeof(e->msg), "error object is a %s value",
                     luaL_typename(L, -1));
    }
}

int rules_sbx_pcall(rules_sbx *s, rules_sbx_fn fn, void *ud, rules_sbx_err *e)
{
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
    s->logs_left = RULES_LOG_MAX;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, s->instr_limit);
    s->armed = true;
    st = lua_pcall(L, 1, 0, base + 1);
    s->armed = false;
    lua_sethook(L, NULL, 0, 0);
    if (s->pending) {           /* refused, not retried, and swallowed */
        if (s->abort == RULES_SBX_OK) {
            s->abort = RULES_SBX_MEM;
            s->abort_line = s->pend_line;
        }
        s->pending = false;
    }
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

static int sbx_setmetatable(lua_State *L)
{
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

static int sbx_log(lua_State *L)
{
    static const char *const names[] = { "debug", "info", "warn", "error", "warning", NULL };
    static const log_level levels[] = { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN,
                                        LOG_LVL_ERROR, LOG_LVL_WARN };
    rules_sbx *s = sbx_of(L);
    log_level lvl = levels[luaL_checkoption(L, 1, NULL, names)];
    char buf[512];
    const char *msg;
    size_t len;
    lua_Debug ar;
    int line = 0;

    if (!log_enabled(lvl) || s->logs_left <= 0)
        return 0;
    s->logs_left--;
    msg = luaL_tolstring(L, 2, &len);
    rules_sanitize(buf, sizeof(buf), msg, len);
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar))
        line = ar.currentline;
    log_write(lvl, "rules", "%s rule=%s src=%s:%d", buf, s->name ? s->name : "?",
              s->file, line);
    return 0;
}

/* Lua's pattern matcher backtracks inside one C call, where the instruction
 * hook cannot interrupt it: ("a"):rep(2000):find(".-.-.-b") runs for hours.
 * Each item repeated with *, + or - multiplies the worst case by the subject
 * length, so a call whose subject length to the power of its repeated items
 * exceeds PATTERN_BUDGET is refused as that rule's error before it starts. */
#define PATTERN_BUDGET 1e8

static int pattern_repeats(const char *p, size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t item = i;
        if (p[i] == '%') {
            if (i + 1 < n && p[i + 1] == 'b') { i += 3; continue; }     /* %bxy */
            if (i + 1 < n && p[i + 1] == 'f') {                          /* %f[set] */
                i += 2;
                while (i < n && p[i] != ']') i += (p[i] == '%') ? 2 : 1;
                continue;
            }
            i++;
        } else if (p[i] == '[') {
            i++;
            if (i < n && p[i] == '^') i++;
            if (i < n && p[i] == ']') i++;
            while (i < n && p[i] != ']') i += (p[i] == '%') ? 2 : 1;
        }
        (void)item;
        if (i + 1 < n && (p[i + 1] == '*' || p[i + 1] == '+' || p[i + 1] == '-')) {
            k++;
            i++;
        }
    }
    return k;
}

static int sbx_pattern_guard(lua_State *L)
{
    size_t slen, plen;
    luaL_checklstring(L, 1, &slen);
    const char *pat = luaL_checklstring(L, 2, &plen);
    int plain = lua_toboolean(L, lua_upvalueindex(2)) && lua_toboolean(L, 4);
    if (!plain) {
        int k = pattern_repeats(pat, plen);
        double cost = 1;
        for (int i = 0; i < k && cost <= PATTERN_BUDGET; i++) cost *= (double)(slen + 1);
        if (k >= 2 && cost > PATTERN_BUDGET)
            return luaL_error(L, "pattern with %d repeated items is too costly for a %d-byte subject "
                              "(it could backtrack for hours): shorten the subject or simplify the pattern",
                              k, (int)(slen > 0x7fffffff ? 0x7fffffff : slen));
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* Wrap string.find/match/gmatch/gsub with the guard above. */
static void guard_patterns(lua_State *L)
{
    static const char *const fns[] = { "find", "match", "gmatch", "gsub", NULL };
    lua_getglobal(L, LUA_STRLIBNAME);
    for (int i = 0; fns[i]; i++) {
        lua_getfield(L, -1, fns[i]);
        lua_pushboolean(L, i == 0);     /* only find has a "plain" argument */
        lua_pushcclosure(L, sbx_pattern_guard, 2);
        lua_setfield(L, -2, fns[i]);
    }
    lua_pop(L, 1);
}

static void open_env(lua_State *L, void *ud)
{
    static const char *const drop[] = {
        "load", "loadfile", "dofile", "collectgarbage", "print", "rawset",
        "warn", "require", NULL
    };
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

    lua_getglobal(L, LUA_TABLIBNAME);
    lua_getfield(L, -1, "unpack");
    lua_setglobal(L, "unpack");
    lua_pop(L, 1);

    lua_getglobal(L, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    guard_patterns(L);
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
}

int rules_sbx_open(rules_sbx *s, const char *file, const char *name,
                   long long instr_limit, size_t mem_limit, rules_sbx_err *e)
{
    memset(s, 0, sizeof(*s));
    s->file = file;
    s->name = name;
    s->limit = mem_limit;
    s->instr_limit = instr_limit < 1 ? 1
                   : instr_limit > 1000000000LL ? 1000000000 : (int)instr_limit;
    s->churn_limit = mem_limit + (size_t)s->instr_limit * 64;
    chunkid(s->short_src, file);
    s->L = lua_newstate(sbx_alloc, s);
    if (s->L == NULL) {
        e->kind = RULES_SBX_MEM;
        e->line = 1;
        snprintf(e->msg, sizeof(e->msg), "cannot create a Lua state within %zu bytes",
                 mem_limit);
        return -1;
    }
    *(rules_sbx **)lua_getextraspace(s->L) = s;
    if (rules_sbx_pcall(s, open_env, NULL, e) != 0) {
        rules_sbx_close(s);
        return -1;
    }
    return 0;
}

void rules_sbx_close(rules_sbx *s)
{
    if (s->L != NULL) {
        lua_close(s->L);
        s->L = NULL;
    }
}

void rules_sbx_run_chunk(lua_State *L, const char *src, size_t len)
{
    rules_sbx *s = sbx_of(L);
    char chunkname[RULES_MSG_MAX];

    snprintf(chunkname, sizeof(chunkname), "@%s", s->file);
    s->compiling = true;
    if (luaL_loadbufferx(L, src, len, chunkname, "t") != LUA_OK) {
        s->compiling = false;
        lua_error(L);           /* the message already reads FILE:LINE: */
    }
    s->compiling = false;
    lua_call(L, 0, 1);
}
