/* rules_sandbox.c -- one sandboxed Lua 5.4 state per rule.
 *
 * Why a module of its own: everything that makes running an analyst's Lua
 * safe lives here, in one place to audit -- the whitelisted globals, the
 * byte-counting allocator, the instruction budget, the message handler that
 * turns any error into `LINE: message`, read-only tables, and the conversions
 * between JSON / decisions / another state's data and Lua values.
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
#include <cjson/cJSON.h>

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

static void *sbx_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    rules_sbx *s = ud;
    void *p;

    if (ptr == NULL)
        osize = 0;             /* then osize is a type tag, not a size */
    if (nsize == 0) {
        free(ptr);
        s->used -= osize;
        return NULL;
    }
    if (nsize > osize && nsize - osize > s->limit - s->used) {
        /* Make the refusal stick even if the rule catches the memory error:
         * lua_sethook is safe at any point (lua.c calls it from a signal
         * handler). */
        if (s->armed && s->L != NULL) {
            if (s->abort == RULES_SBX_OK) {
                s->abort = RULES_SBX_MEM;
                s->abort_line = current_line(s->L);
            }
            lua_sethook(s->L, count_hook, LUA_MASKCOUNT, 1);
        }
        return NULL;
    }
    p = realloc(ptr, nsize);
    if (p == NULL)
        return NULL;
    s->used = s->used - osize + nsize;
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
    s->logs_left = RULES_LOG_MAX;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, s->instr_limit);
    s->armed = true;
    st = lua_pcall(L, 1, 0, base + 1);
    s->armed = false;
    lua_sethook(L, NULL, 0, 0);
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

static void open_env(lua_State *L, void *ud)
{
    static const char *const drop[] = {
        "load", "loadfile", "dofile", "collectgarbage", "print", "rawset",
        "warn", "require", NULL
    };
    static const char *const os_keep[] = { "time", "clock", "date", NULL };

    (void)ud;
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
    s->instr_limit = instr_limit < 1 ? 1 : instr_limit > 1000000000LL ? 1000000000 : (int)instr_limit;
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
    if (luaL_loadbufferx(L, src, len, chunkname, "t") != LUA_OK)
        lua_error(L);           /* the message already reads FILE:LINE: */
    lua_call(L, 0, 1);
}

/* ---- read-only tables -------------------------------------------------- */

static int ro_newindex(lua_State *L)
{
    return luaL_error(L, "%s is read-only", lua_tostring(L, lua_upvalueindex(1)));
}

static int ro_len(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
    return 1;
}

static int ro_next(lua_State *L)
{
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 2);
    if (lua_next(L, 3))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int ro_pairs(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));  /* ro_next over the inner table */
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Replace the table on top with an empty proxy whose metatable reads from it
 * (__index is the table itself: no function call on the hot path) and refuses
 * writes. The inner table is reachable only through the proxy's metatable,
 * which is protected. */
static void ro_wrap(lua_State *L, const char *what)
{
    int inner = lua_gettop(L);

    luaL_checkstack(L, 4, "read-only table");
    lua_createtable(L, 0, 0);
    lua_createtable(L, 0, 5);
    lua_pushvalue(L, inner);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, what);
    lua_pushcclosure(L, ro_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, inner);
    lua_pushcclosure(L, ro_len, 1);
    lua_setfield(L, -2, "__len");
    lua_pushvalue(L, inner);
    lua_pushcclosure(L, ro_next, 1);
    lua_pushcclosure(L, ro_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_replace(L, inner);
}

void rules_sbx_push_ro_copy(lua_State *L, int idx, const char *ro, int depth)
{
    idx = lua_absindex(L, idx);
    if (depth > RULES_JSON_DEPTH)
        luaL_error(L, "%s nested deeper than %d levels", ro, RULES_JSON_DEPTH);
    luaL_checkstack(L, 4, "read-only copy");
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        if (lua_type(L, -2) == LUA_TTABLE)
            rules_sbx_push_ro_copy(L, -2, ro, depth + 1);
        else
            lua_pushvalue(L, -2);
        lua_rawset(L, -5);
        lua_pop(L, 1);
    }
    ro_wrap(L, ro);
}

static void push_number(lua_State *L, double d)
{
    /* Integral values become integers so that reasons print "5", not "5.0". */
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 &&
        d == (double)(lua_Integer)d)
        lua_pushinteger(L, (lua_Integer)d);
    else
        lua_pushnumber(L, d);
}

void rules_sbx_push_json(lua_State *L, const cJSON *j, const char *ro, int depth)
{
    const cJSON *c;
    int n = 0, i = 1;

    switch (j->type & 0xff) {
    case cJSON_False: lua_pushboolean(L, 0); return;
    case cJSON_True: lua_pushboolean(L, 1); return;
    case cJSON_Number: push_number(L, j->valuedouble); return;
    case cJSON_String: lua_pushstring(L, j->valuestring); return;
    case cJSON_Array:
    case cJSON_Object:
        break;
    default:            /* null, raw, invalid */
        lua_pushnil(L);
        return;
    }
    if (depth >= RULES_JSON_DEPTH)
        luaL_error(L, "JSON nested deeper than %d levels", RULES_JSON_DEPTH);
    luaL_checkstack(L, 3, "JSON nesting");
    for (c = j->child; c; c = c->next)
        n++;
    if ((j->type & 0xff) == cJSON_Array) {
        lua_createtable(L, n, 0);
        for (c = j->child; c; c = c->next, i++) {
            rules_sbx_push_json(L, c, ro, depth + 1);
            lua_rawseti(L, -2, i);
        }
    } else {
        lua_createtable(L, 0, n);
        for (c = j->child; c; c = c->next) {
            if ((c->type & 0xff) == cJSON_NULL || c->string == NULL)
                continue;
            lua_pushstring(L, c->string);
            rules_sbx_push_json(L, c, ro, depth + 1);
            lua_rawset(L, -3);
        }
    }
    if (ro)
        ro_wrap(L, ro);
}

void rules_sbx_push_ctx(lua_State *L, int params_idx, int state_idx)
{
    params_idx = lua_absindex(L, params_idx);
    state_idx = lua_absindex(L, state_idx);
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, params_idx);
    lua_setfield(L, -2, "params");
    lua_pushvalue(L, state_idx);
    lua_setfield(L, -2, "state");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "channel");
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, "now");
    lua_pushvalue(L, -1);
    ro_wrap(L, "ctx");          /* stack: inner, ctx */
    lua_insert(L, -2);          /* stack: ctx, inner */
}

/* ---- decisions ---------------------------------------------------------- */

static const char *const action_names[] = { "alert", "kill", "reject" };
static const char *const level_names[] = { "", "info", "warning", "critical" };

const char *rules_action_name(rules_action a)
{
    return (unsigned)a < RULES_ACTION_COUNT ? action_names[a] : "?";
}

const char *rules_level_name(rules_level l)
{
    return (unsigned)l <= RULES_CRITICAL ? level_names[l] : "?";
}

#define DERR(...) do { \
        int w_ = snprintf(err, errlen, "decision %d: ", num); \
        if (w_ >= 0 && (size_t)w_ < errlen) snprintf(err + w_, errlen - (size_t)w_, __VA_ARGS__); \
        return -1; \
    } while (0)

static int scope_ok(const char *s, size_t len)
{
    if (len == 0 || len > RULES_SCOPE_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

/* Validate the decision table at absolute index T. */
static int parse_decision(lua_State *L, int t, int num, const char *channel,
                          rules_decision *d, char *err, size_t errlen)
{
    const char *action = NULL, *level = NULL;
    size_t reason_len = 0, scope_len = 0;
    bool has_halt = false;

    memset(d, 0, sizeof(*d));
    luaL_checkstack(L, 3, "decision");
    lua_pushnil(L);
    while (lua_next(L, t)) {
        const char *k;
        int vt = lua_type(L, -1);

        if (lua_type(L, -2) != LUA_TSTRING) {
            const char *tn = luaL_typename(L, -2);

            lua_pop(L, 2);
            DERR("unexpected key of type %s", tn);
        }
        k = lua_tostring(L, -2);
        if (strcmp(k, "halt_sales") == 0) {
            if (vt != LUA_TBOOLEAN) {
                lua_pop(L, 2);
                DERR("halt_sales must be a boolean, not a %s", lua_typename(L, vt));
            }
            d->halt_sales = lua_toboolean(L, -1);
            has_halt = true;
        } else if (strcmp(k, "action") == 0 || strcmp(k, "level") == 0 ||
                   strcmp(k, "reason") == 0 || strcmp(k, "scope") == 0) {
            size_t len;
            const char *v;

            if (vt != LUA_TSTRING) {
                lua_pop(L, 2);
                DERR("%s must be a string, not a %s", k, lua_typename(L, vt));
            }
            /* Strings stay anchored by the decision table on the stack. */
            v = lua_tolstring(L, -1, &len);
            switch (k[0]) {
            case 'a': action = v; break;
            case 'l': level = v; break;
            case 'r': d->reason = v; reason_len = len; break;
            default: d->scope = v; scope_len = len; break;
            }
        } else {
            char kb[64];

            rules_sanitize(kb, sizeof(kb), k, strlen(k));
            lua_pop(L, 2);
            DERR("unknown field \"%s\"", kb);
        }
        lua_pop(L, 1);
    }
    if (action == NULL)
        DERR("missing action");
    if (strcmp(action, "alert") == 0) {
        d->action = RULES_ALERT;
    } else if (strcmp(action, "kill") == 0) {
        d->action = RULES_KILL;
    } else if (strcmp(action, "reject") == 0) {
        d->action = RULES_REJECT;
    } else {
        char ab[64];

        rules_sanitize(ab, sizeof(ab), action, strlen(action));
        DERR("unknown action \"%s\" (expected alert, kill or reject)", ab);
    }
    if (d->reason == NULL || reason_len == 0)
        DERR("%s needs a reason", action);
    if (reason_len > RULES_REASON_MAX)
        DERR("reason longer than %d bytes", RULES_REASON_MAX);
    if (d->scope && !scope_ok(d->scope, scope_len))
        DERR("scope must be 1 to %d printable characters without spaces", RULES_SCOPE_MAX);
    switch (d->action) {
    case RULES_ALERT:
        if (level == NULL)
            DERR("alert needs a level (info, warning or critical)");
        if (strcmp(level, "info") == 0)
            d->level = RULES_INFO;
        else if (strcmp(level, "warning") == 0)
            d->level = RULES_WARNING;
        else if (strcmp(level, "critical") == 0)
            d->level = RULES_CRITICAL;
        else {
            char lb[64];

            rules_sanitize(lb, sizeof(lb), level, strlen(level));
            DERR("unknown level \"%s\" (expected info, warning or critical)", lb);
        }
        if (has_halt)
            DERR("halt_sales applies to kill only");
        break;
    case RULES_KILL:
        if (d->scope == NULL)
            DERR("kill needs a scope");
        if (level)
            DERR("level applies to alert only");
        break;
    default:
        if (strcmp(channel, RULES_SALE_CHANNEL) != 0)
            DERR("reject is only allowed in %s rules (channel is %s)",
                 RULES_SALE_CHANNEL, channel);
        if (level || d->scope || has_halt)
            DERR("reject takes only action and reason");
        break;
    }
    return 0;
}

int rules_sbx_decisions(lua_State *L, int idx, const char *channel,
                        rules_decision *out, size_t *n, char *err, size_t errlen)
{
    lua_Integer len;
    int num = 0;

    *n = 0;
    if (lua_isnoneornil(L, idx))
        return 0;
    if (lua_type(L, idx) != LUA_TTABLE) {
        snprintf(err, errlen, "evaluate must return nothing, a decision or a list of "
                 "decisions, not a %s", luaL_typename(L, idx));
        return -1;
    }
    luaL_checkstack(L, 3, "decisions");
    lua_pushliteral(L, "action");
    if (lua_rawget(L, idx) != LUA_TNIL) {
        lua_pop(L, 1);
        *n = 1;
        return parse_decision(L, idx, 1, channel, out, err, errlen);
    }
    lua_pop(L, 1);
    len = (lua_Integer)lua_rawlen(L, idx);
    /* A list: every key must be 1..len. */
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > len) {
            lua_pop(L, 1);
            snprintf(err, errlen, "evaluate returned a table that is neither a decision "
                     "(no action) nor a list of decisions");
            return -1;
        }
    }
    if (len > RULES_MAX_DECISIONS) {
        snprintf(err, errlen, "more than %d decisions in one evaluation", RULES_MAX_DECISIONS);
        return -1;
    }
    for (num = 1; num <= len; num++) {
        /* Each decision table stays on the stack: its strings must live until
         * the callbacks ran. */
        if (lua_rawgeti(L, idx, num) != LUA_TTABLE) {
            snprintf(err, errlen, "decision %d: must be a table, not a %s", num,
                     luaL_typename(L, -1));
            return -1;
        }
        if (parse_decision(L, lua_gettop(L), num, channel, &out[num - 1], err, errlen) != 0)
            return -1;
    }
    *n = (size_t)len;
    return 0;
}

/* ---- copying plain data between states -------------------------------- */

static int plain(int t)
{
    return t == LUA_TBOOLEAN || t == LUA_TNUMBER || t == LUA_TSTRING || t == LUA_TTABLE;
}

/* Push onto DST a copy of the value on top of SRC. SEEN (absolute index on
 * DST) maps SRC tables (by address, as light userdata) to their DST copies,
 * so shared subtables and cycles are preserved. SRC is idle; only raw
 * operations that cannot allocate are used on it, plus lua_checkstack, which
 * reports failure instead of raising. */
static void copy_value(lua_State *dst, lua_State *src, int seen, int depth)
{
    const void *p;

    switch (lua_type(src, -1)) {
    case LUA_TBOOLEAN:
        lua_pushboolean(dst, lua_toboolean(src, -1));
        return;
    case LUA_TNUMBER:
        if (lua_isinteger(src, -1))
            lua_pushinteger(dst, lua_tointeger(src, -1));
        else
            lua_pushnumber(dst, lua_tonumber(src, -1));
        return;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(src, -1, &len);

        lua_pushlstring(dst, s, len);
        return;
    }
    case LUA_TTABLE:
        break;
    default:
        lua_pushnil(dst);
        return;
    }
    p = lua_topointer(src, -1);
    if (lua_rawgetp(dst, seen, p) == LUA_TTABLE)
        return;
    lua_pop(dst, 1);
    if (depth >= RULES_STATE_DEPTH)
        luaL_error(dst, "ctx.state nested deeper than %d levels", RULES_STATE_DEPTH);
    luaL_checkstack(dst, 4, "ctx.state copy");
    if (!lua_checkstack(src, 4))
        luaL_error(dst, "ctx.state copy: source stack exhausted");
    lua_newtable(dst);
    lua_pushvalue(dst, -1);
    lua_rawsetp(dst, seen, p);
    lua_pushnil(src);
    while (lua_next(src, -2)) {
        if (plain(lua_type(src, -2)) && plain(lua_type(src, -1))) {
            lua_pushvalue(src, -2);
            copy_value(dst, src, seen, depth + 1);      /* key */
            lua_pop(src, 1);
            copy_value(dst, src, seen, depth + 1);      /* value */
            if (lua_isnil(dst, -1) || lua_isnil(dst, -2))
                lua_pop(dst, 2);
            else
                lua_rawset(dst, -3);
        }
        lua_pop(src, 1);
    }
}

void rules_sbx_copy(lua_State *dst, lua_State *src)
{
    int seen;

    lua_newtable(dst);
    seen = lua_gettop(dst);
    copy_value(dst, src, seen, 0);
    lua_remove(dst, seen);
}
