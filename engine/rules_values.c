/* rules_values.c -- Lua values in and out of a rule's sandbox.
 *
 * Everything that crosses the boundary between C and a rule's Lua state is
 * converted here: events (JSON) into tables, params into read-only tables,
 * ctx, what evaluate returns into validated decisions, and ctx.state from one
 * state into another on reload. These functions run inside rules_sbx_pcall()
 * (they may raise: a memory error, a depth limit), and every one of them is
 * bounded -- nesting depth, number of decisions, string lengths -- because the
 * data comes from outside (events) or from a rule (decisions, state).
 */
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <cjson/cJSON.h>

#include "nerve/scope.h"
#include "rules_int.h"

/* ---- read-only tables -------------------------------------------------- */

static int ro_newindex(lua_State *L) {
    return luaL_error(L, "%s is read-only", lua_tostring(L, lua_upvalueindex(1)));
}

static int ro_len(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
    return 1;
}

static int ro_next(lua_State *L) {
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 2);
    if (lua_next(L, 3)) return 2;
    lua_pushnil(L);
    return 1;
}

static int ro_pairs(lua_State *L) {
    lua_pushvalue(L, lua_upvalueindex(1)); /* ro_next over the inner table */
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Replace the table on top with an empty proxy whose metatable reads from it
 * (__index is the table itself: no function call on the hot path) and refuses
 * writes. The inner table is reachable only through the proxy's metatable,
 * which is protected. */
static void ro_wrap(lua_State *L, const char *what) {
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

void rules_sbx_push_ro_copy(lua_State *L, int idx, const char *ro, int depth) {
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

static void push_number(lua_State *L, double d) {
    /* Integral values become integers so that reasons print "5", not "5.0". */
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == (double)(lua_Integer)d)
        lua_pushinteger(L, (lua_Integer)d);
    else
        lua_pushnumber(L, d);
}

void rules_sbx_push_json(lua_State *L, const cJSON *j, const char *ro, int depth) {
    const cJSON *c;
    int n = 0, i = 1;

    switch (j->type & 0xff) {
    case cJSON_False: lua_pushboolean(L, 0); return;
    case cJSON_True: lua_pushboolean(L, 1); return;
    case cJSON_Number: push_number(L, j->valuedouble); return;
    /* pushlstring: lua_pushstring's cache is keyed by the C pointer, which
     * a fresh tree never repeats (a miss costs two strcmp). */
    case cJSON_String: lua_pushlstring(L, j->valuestring, strlen(j->valuestring)); return;
    case cJSON_Array:
    case cJSON_Object: break;
    default: /* null, raw, invalid */ lua_pushnil(L); return;
    }
    if (depth >= RULES_JSON_DEPTH)
        luaL_error(L, "JSON nested deeper than %d levels", RULES_JSON_DEPTH);
    luaL_checkstack(L, 3, "JSON nesting");
    for (c = j->child; c; c = c->next) n++;
    if ((j->type & 0xff) == cJSON_Array) {
        lua_createtable(L, n, 0);
        for (c = j->child; c; c = c->next, i++) {
            rules_sbx_push_json(L, c, ro, depth + 1);
            lua_rawseti(L, -2, i);
        }
    } else {
        lua_createtable(L, 0, n);
        for (c = j->child; c; c = c->next) {
            if ((c->type & 0xff) == cJSON_NULL || c->string == NULL) continue;
            lua_pushlstring(L, c->string, strlen(c->string));
            rules_sbx_push_json(L, c, ro, depth + 1);
            lua_rawset(L, -3);
        }
    }
    if (ro) ro_wrap(L, ro);
}

/* ctx.scope(kind, id): "kind:" .. id with every byte the scope grammar
 * does not allow percent-encoded, so that any campaign or SKU id yields a
 * scope that can be engaged, listed and reset. */
static int ctx_scope(lua_State *L) {
    char out[SCOPE_MAX + 1];
    size_t ilen;
    const char *kind = luaL_checkstring(L, 1);
    const char *id = luaL_checklstring(L, 2, &ilen);

    if (scope_make(out, sizeof(out), kind, id, ilen) != 0)
        return luaL_error(L,
                          "ctx.scope: kind must be a non-empty word of A-Z a-z 0-9 . _ - "
                          "and the scope at most %d bytes once encoded",
                          SCOPE_MAX);
    lua_pushstring(L, out);
    return 1;
}

#define INCR_KEY_MAX    128
#define INCR_WINDOW_MAX 604800 /* one week */
#define INCR_BY_MAX     1000000000

/* ctx.incr(key, window_s [, by]): add BY (default 1, 0 reads) to the
 * counter KEY of this rule in the current fixed window of WINDOW_S seconds
 * (aligned on multiples of it, by ctx.now) and return the new total. Backed
 * by Redis in the daemon (one count for the whole fleet), by a table local to
 * this Lua state in fixtures and dry runs. Upvalue 1: the inner ctx table. */
static int ctx_incr(lua_State *L) {
    rules_sbx *s = rules_sbx_of(L);
    size_t klen;
    const char *key = luaL_checklstring(L, 1, &klen);
    lua_Integer window = luaL_checkinteger(L, 2);
    lua_Integer by = luaL_optinteger(L, 3, 1);
    lua_Integer now;
    long long count = 0;
    char err[256];

    luaL_argcheck(L, klen >= 1 && klen <= INCR_KEY_MAX, 1, "key must be 1 to 128 bytes");
    for (size_t i = 0; i < klen; i++)
        luaL_argcheck(L, (unsigned char)key[i] >= 0x20 && key[i] != 0x7f, 1,
                      "key must not hold control characters");
    luaL_argcheck(L, window >= 1 && window <= INCR_WINDOW_MAX, 2,
                  "window must be 1 to 604800 seconds");
    luaL_argcheck(L, by >= 0 && by <= INCR_BY_MAX, 3, "by must be 0 to 1000000000");
    if (s->replay) { /* a diagnosis rerun: the same answers, nothing counted */
        if (s->incr_i >= s->incr_n || s->incr_i >= RULES_INCR_LOG)
            return luaL_error(L, "ctx.incr: the rerun called it more often");
        lua_pushinteger(L, (lua_Integer)s->incr_log[s->incr_i++]);
        return 1;
    }
    lua_getfield(L, lua_upvalueindex(1), "now");
    now = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (s->incr != NULL) {
        uint64_t t0 = rules_now_ns();
        int rc = s->incr(s->incr_ud, s->name ? s->name : "?", key, klen, (long long)window,
                         (long long)by, (long long)now, &count, err, sizeof(err));

        rules_sbx_blocked(s, rules_now_ns() - t0);
        if (rc != 0) return luaL_error(L, "ctx.incr: %s", err);
        rules_sbx_check_deadline(L);
        if (s->incr_n < RULES_INCR_LOG) s->incr_log[s->incr_n] = count;
        if (s->incr_n <= RULES_INCR_LOG) s->incr_n++; /* LOG + 1: some not kept */
        lua_pushinteger(L, (lua_Integer)count);
        return 1;
    }
    /* Local: registry[&ctx_incr][key] = { window, bucket, count }. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, (void *)ctx_incr);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, (void *)ctx_incr);
    }
    lua_pushvalue(L, 1);
    if (lua_rawget(L, -2) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 3, 0);
        lua_pushvalue(L, 1);
        lua_pushvalue(L, -2);
        lua_rawset(L, -4);
    }
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    if (lua_tointeger(L, -2) == window && lua_tointeger(L, -1) == now / window) {
        lua_rawgeti(L, -3, 3);
        count = (long long)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    count += by;
    lua_pushinteger(L, window);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, now / window);
    lua_rawseti(L, -2, 2);
    lua_pushinteger(L, (lua_Integer)count);
    lua_rawseti(L, -2, 3);
    if (s->incr_n < RULES_INCR_LOG) s->incr_log[s->incr_n] = count;
    if (s->incr_n <= RULES_INCR_LOG) s->incr_n++;
    lua_pushinteger(L, (lua_Integer)count);
    return 1;
}

/* ---- transactional ctx.state ------------------------------------------ */

/* When evaluate fails, ctx.state must be what it was before the call. A copy
 * before every call costs the size of the state per event; instead every
 * write is journaled. Each table of ctx.state is an empty proxy whose
 * metatable reads from its data table (__index is that table: a read costs no
 * function call) and sends every write through st_newindex, which first
 * appends (data, key, old value) to the journal; a failed call undoes the
 * journal backwards, a good one clears it.
 *
 * The journal is one array kept from call to call (no allocation per event
 * once it has grown). A loop writing the same keys over and over must not
 * grow it without bound (it counts against the rule's memory): a write to the
 * key of the last entry is not journaled again, and past JNL_LINEAR entries an
 * index of the (table, key) pairs already journaled is built for the call.
 *
 * A table becomes a proxy in place, when it is stored into ctx.state (and
 * every plain table reachable from it): its contents move to a new data
 * table, so that references the rule kept elsewhere see the proxy too. Tables
 * with a metatable of their own are stored as they are (not covered). */

#define JNL_LINEAR 64

static const char st_mark = 0; /* metatable[&st_mark] = the data table */
static const char jnl_key = 0; /* registry[&jnl_key] = { data, key, old, ... } */
static const char jnl_idx = 0; /* registry[&jnl_idx] = { [data] = { [key] = true } } */
static const char jnl_nil = 0; /* an old value that was nil */

int rules_state_data(lua_State *L, int idx) {
    if (!lua_getmetatable(L, idx)) return 0;
    if (lua_rawgetp(L, -1, &st_mark) != LUA_TTABLE) {
        lua_pop(L, 2);
        return 0;
    }
    lua_remove(L, -2);
    return 1;
}

size_t rules_state_rawlen(lua_State *L, int idx) {
    size_t n;

    if (!rules_state_data(L, idx)) return lua_rawlen(L, idx);
    n = lua_rawlen(L, -1);
    lua_pop(L, 1);
    return n;
}

/* Add (DATA, KEY) to the index at IX; 1 when it was there already. */
static int index_add(lua_State *L, int ix, int data, int key) {
    int had;

    lua_pushvalue(L, data);
    if (lua_rawget(L, ix) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, data);
        lua_pushvalue(L, -2);
        lua_rawset(L, ix);
    }
    lua_pushvalue(L, key);
    had = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 1);
    if (!had) {
        lua_pushvalue(L, key);
        lua_pushboolean(L, 1);
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
    return had;
}

/* 1 when (DATA, KEY) is in the journal at A already (built on first use). */
static int journaled(lua_State *L, rules_sbx *s, int a, int data, int key) {
    int ix, had;

    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &jnl_idx) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &jnl_idx);
        s->jnl_idx = true;
        ix = lua_gettop(L);
        for (lua_Integer i = 0; i < s->jnl_n; i++) {
            lua_rawgeti(L, a, 3 * i + 1);
            lua_rawgeti(L, a, 3 * i + 2);
            index_add(L, ix, ix + 1, ix + 2);
            lua_pop(L, 2);
        }
    }
    ix = lua_gettop(L);
    had = index_add(L, ix, data, key);
    lua_pop(L, 1);
    return had;
}

/* Journal the value of KEY in DATA (absolute indexes). */
static void journal(lua_State *L, rules_sbx *s, int data, int key) {
    lua_Integer b = 3 * (lua_Integer)s->jnl_n;
    int a;

    luaL_checkstack(L, 8, "ctx.state journal");
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &jnl_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 48, 0);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &jnl_key);
    }
    a = lua_gettop(L);
    if (s->jnl_n > 0) { /* `t[k] = t[k] + 1` in a loop */
        int same;

        lua_rawgeti(L, a, b - 2);
        lua_rawgeti(L, a, b - 1);
        same = lua_rawequal(L, -2, data) && lua_rawequal(L, -1, key);
        lua_pop(L, 2);
        if (same) {
            lua_pop(L, 1);
            return;
        }
    }
    if (s->jnl_n >= JNL_LINEAR && journaled(L, s, a, data, key)) {
        lua_pop(L, 1);
        return;
    }
    lua_pushvalue(L, data);
    lua_rawseti(L, a, b + 1);
    lua_pushvalue(L, key);
    lua_rawseti(L, a, b + 2);
    lua_pushvalue(L, key);
    if (lua_rawget(L, data) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushlightuserdata(L, (void *)&jnl_nil);
    }
    lua_rawseti(L, a, b + 3);
    s->jnl_n++;
    lua_pop(L, 1);
}

static int st_newindex(lua_State *L) {
    rules_sbx *s = rules_sbx_of(L);
    int kt;

    lua_settop(L, 3);
    if (!rules_state_data(L, 1)) return luaL_error(L, "ctx.state: not a state table");
    kt = lua_type(L, 2);
    if (kt == LUA_TNIL) return luaL_error(L, "index is nil");
    if (kt == LUA_TNUMBER && lua_tonumber(L, 2) != lua_tonumber(L, 2))
        return luaL_error(L, "index is NaN");
    if (s->journal) journal(L, s, 4, 2);
    if (lua_type(L, 3) == LUA_TTABLE) rules_state_adopt(L, 3);
    if (kt == LUA_TTABLE) rules_state_adopt(L, 2);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, 4);
    return 0;
}

static int st_len(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)rules_state_rawlen(L, 1));
    return 1;
}

/* next(t, k), also over a proxy's data: the sandbox's `next`. */
static int st_next(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (rules_state_data(L, 1)) lua_replace(L, 1);
    if (lua_next(L, 1)) return 2;
    lua_pushnil(L);
    return 1;
}

static int st_pairs(lua_State *L) {
    lua_pushcfunction(L, st_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static int st_rawget(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    lua_settop(L, 2);
    if (rules_state_data(L, 1)) lua_replace(L, 1);
    lua_rawget(L, 1);
    return 1;
}

static int st_rawlen(lua_State *L) {
    int t = lua_type(L, 1);

    luaL_argexpected(L, t == LUA_TTABLE || t == LUA_TSTRING, 1, "table or string");
    lua_pushinteger(L, (lua_Integer)rules_state_rawlen(L, 1));
    return 1;
}

void rules_state_env(lua_State *L) {
    lua_pushcfunction(L, st_next);
    lua_setglobal(L, "next");
    lua_pushcfunction(L, st_rawget);
    lua_setglobal(L, "rawget");
    lua_pushcfunction(L, st_rawlen);
    lua_setglobal(L, "rawlen");
}

/* Give the table at T (empty) the metatable of a proxy over DATA. */
static void make_proxy(lua_State *L, int t, int data) {
    lua_createtable(L, 0, 6);
    lua_pushvalue(L, data);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, st_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, st_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, st_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, data);
    lua_rawsetp(L, -2, &st_mark);
    lua_setmetatable(L, t);
}

/* Add the value at IDX to the worklist at W (created on first use) when it
 * is a table without a metatable. */
static void add_work(lua_State *L, int w, lua_Integer *n, int idx) {
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE) return;
    if (lua_getmetatable(L, idx)) {
        lua_pop(L, 1);
        return;
    }
    if (lua_isnil(L, w)) {
        lua_newtable(L);
        lua_replace(L, w);
    }
    lua_pushvalue(L, idx);
    lua_rawseti(L, w, ++*n);
}

void rules_state_adopt(lua_State *L, int idx) {
    lua_Integer n = 0;
    int w;

    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 10, "ctx.state");
    lua_pushnil(L); /* the worklist: no recursion on the C stack */
    w = lua_gettop(L);
    lua_pushvalue(L, idx);
    for (;;) {
        int t = w + 1;

        if (!lua_getmetatable(L, t)) { /* plain: its contents move to data */
            lua_newtable(L);           /* t, data */
            lua_pushnil(L);
            while (lua_next(L, t)) { /* t, data, k, v */
                add_work(L, w, &n, -1);
                add_work(L, w, &n, -2);
                lua_pushvalue(L, -2);
                lua_insert(L, -2);
                lua_rawset(L, t + 1);
                /* Clearing a field during the traversal is allowed. */
                lua_pushvalue(L, -1);
                lua_pushnil(L);
                lua_rawset(L, t);
            }
            make_proxy(L, t, t + 1);
        }
        lua_settop(L, w);
        if (n == 0) break;
        lua_rawgeti(L, w, n);
        lua_pushnil(L);
        lua_rawseti(L, w, n--);
    }
    lua_settop(L, w - 1);
}

void rules_state_commit(rules_sbx *s) {
    lua_State *L = s->L;

    s->journal = false;
    if (s->jnl_n == 0) return;
    /* Clearing existing slots neither allocates nor raises; cleared, the
     * journal holds no old value (or table) alive. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &jnl_key);
    for (lua_Integer i = 1; i <= 3 * (lua_Integer)s->jnl_n; i++) {
        lua_pushnil(L);
        lua_rawseti(L, -2, i);
    }
    lua_pop(L, 1);
    s->jnl_n = 0;
    if (s->jnl_idx) {
        lua_pushnil(L);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &jnl_idx);
        s->jnl_idx = false;
    }
}

void rules_state_rollback(lua_State *L, void *ud) {
    rules_sbx *s = rules_sbx_of(L);

    (void)ud;
    s->journal = false;
    if (s->jnl_n == 0) return;
    luaL_checkstack(L, 8, "ctx.state rollback");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &jnl_key);
    /* Backwards: the first value journaled for a key is the one left. */
    for (lua_Integer b = 3 * (lua_Integer)s->jnl_n; b > 0; b -= 3) {
        lua_rawgeti(L, -1, b - 2); /* data */
        lua_rawgeti(L, -2, b - 1); /* key */
        lua_rawgeti(L, -3, b);     /* old */
        if (lua_touserdata(L, -1) == (void *)&jnl_nil) {
            lua_pop(L, 1);
            lua_pushnil(L);
        }
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    rules_state_commit(s);
}

void rules_sbx_push_ctx(lua_State *L, int params_idx, int state_idx) {
    params_idx = lua_absindex(L, params_idx);
    state_idx = lua_absindex(L, state_idx);
    rules_state_adopt(L, state_idx);
    lua_createtable(L, 0, 6);
    lua_pushcfunction(L, ctx_scope);
    lua_setfield(L, -2, "scope");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, ctx_incr, 1);
    lua_setfield(L, -2, "incr");
    lua_pushvalue(L, params_idx);
    lua_setfield(L, -2, "params");
    lua_pushvalue(L, state_idx);
    lua_setfield(L, -2, "state");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "channel");
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, "now");
    lua_pushvalue(L, -1);
    ro_wrap(L, "ctx"); /* stack: inner, ctx */
    lua_insert(L, -2); /* stack: ctx, inner */
}

/* ---- decisions ---------------------------------------------------------- */

static const char *const action_names[] = { "alert", "kill", "reject" };
static const char *const level_names[] = { "", "info", "warning", "critical" };

const char *rules_action_name(rules_action a) {
    return (unsigned)a < RULES_ACTION_COUNT ? action_names[a] : "?";
}

const char *rules_level_name(rules_level l) {
    return (unsigned)l <= RULES_CRITICAL ? level_names[l] : "?";
}

#define DERR(...) \
    do { \
        int w_ = snprintf(err, errlen, "decision %d: ", num); \
        if (w_ >= 0 && (size_t)w_ < errlen) snprintf(err + w_, errlen - (size_t)w_, __VA_ARGS__); \
        return -1; \
    } while (0)


/* Validate the decision table at absolute index T. */
static int parse_decision(lua_State *L, int t, int num, const char *channel, rules_decision *d,
                          char *err, size_t errlen) {
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
            /* Decisions travel on as C strings: "\0" would cut them short. */
            if (strlen(v) != len) {
                lua_pop(L, 2);
                DERR("%s must not contain NUL characters", k);
            }
            switch (k[0]) {
            case 'a': action = v; break;
            case 'l': level = v; break;
            case 'r':
                d->reason = v;
                reason_len = len;
                break;
            default:
                d->scope = v;
                scope_len = len;
                break;
            }
        } else {
            char kb[64];

            rules_sanitize(kb, sizeof(kb), k, strlen(k));
            lua_pop(L, 2);
            DERR("unknown field \"%s\"", kb);
        }
        lua_pop(L, 1);
    }
    if (action == NULL) DERR("missing action");
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
    if (d->reason == NULL || reason_len == 0) DERR("%s needs a reason", action);
    if (reason_len > RULES_REASON_MAX) DERR("reason longer than %d bytes", RULES_REASON_MAX);
    if (d->scope && !scope_valid(d->scope, scope_len)) {
        char sb[64];

        rules_sanitize(sb, sizeof(sb), d->scope, scope_len);
        DERR("invalid scope \"%s%s\": a scope is %s; build one from any id with "
             "ctx.scope(kind, id)",
             sb, scope_len > 60 ? "..." : "", SCOPE_GRAMMAR);
    }
    switch (d->action) {
    case RULES_ALERT:
        if (level == NULL) DERR("alert needs a level (info, warning or critical)");
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
        if (has_halt) DERR("halt_sales applies to kill only");
        break;
    case RULES_KILL:
        if (d->scope == NULL) DERR("kill needs a scope");
        if (level) DERR("level applies to alert only");
        break;
    default:
        if (strcmp(channel, RULES_SALE_CHANNEL) != 0)
            DERR("reject is only allowed in %s rules (channel is %s)", RULES_SALE_CHANNEL, channel);
        if (level || d->scope || has_halt) DERR("reject takes only action and reason");
        break;
    }
    return 0;
}

int rules_sbx_decisions(lua_State *L, int idx, const char *channel, rules_decision *out, size_t *n,
                        char *err, size_t errlen) {
    lua_Integer len;
    int num = 0;

    *n = 0;
    if (lua_isnoneornil(L, idx)) return 0;
    luaL_checkstack(L, 5, "decisions");
    /* A decision kept in ctx.state is a proxy: read its data. */
    if (lua_type(L, idx) == LUA_TTABLE && rules_state_data(L, idx)) lua_replace(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE) {
        snprintf(err, errlen,
                 "evaluate must return nothing, a decision or a list of "
                 "decisions, not a %s",
                 luaL_typename(L, idx));
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
            snprintf(err, errlen,
                     "evaluate returned a table that is neither a decision "
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
        luaL_checkstack(L, 3, "decisions");
        if (lua_rawgeti(L, idx, num) != LUA_TTABLE) {
            snprintf(err, errlen, "decision %d: must be a table, not a %s", num,
                     luaL_typename(L, -1));
            return -1;
        }
        if (rules_state_data(L, -1)) lua_replace(L, -2);
        if (parse_decision(L, lua_gettop(L), num, channel, &out[num - 1], err, errlen) != 0)
            return -1;
    }
    *n = (size_t)len;
    return 0;
}

/* ---- copying plain data between states -------------------------------- */

static int plain(int t) {
    return t == LUA_TBOOLEAN || t == LUA_TNUMBER || t == LUA_TSTRING || t == LUA_TTABLE;
}

/* Push onto DST a copy of the value on top of SRC. SEEN (absolute index on
 * DST) maps SRC tables (by address, as light userdata) to their DST copies,
 * so shared subtables and cycles are preserved. SRC is idle; only raw
 * operations that cannot allocate are used on it, plus lua_checkstack, which
 * reports failure instead of raising. */
static void copy_value(lua_State *dst, lua_State *src, int seen, int depth) {
    const void *p;
    int src_data;

    switch (lua_type(src, -1)) {
    case LUA_TBOOLEAN: lua_pushboolean(dst, lua_toboolean(src, -1)); return;
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
    case LUA_TTABLE: break;
    default: lua_pushnil(dst); return;
    }
    p = lua_topointer(src, -1);
    if (lua_rawgetp(dst, seen, p) == LUA_TTABLE) return;
    lua_pop(dst, 1);
    if (depth >= RULES_STATE_DEPTH)
        luaL_error(dst, "ctx.state nested deeper than %d levels", RULES_STATE_DEPTH);
    luaL_checkstack(dst, 5, "ctx.state copy");
    if (!lua_checkstack(src, 6)) luaL_error(dst, "ctx.state copy: source stack exhausted");
    /* SRC's ctx.state tables are read through their data; the copy is made
     * of proxies over fresh data (nothing else refers to them). */
    src_data = rules_state_data(src, -1);
    lua_newtable(dst); /* the proxy */
    lua_pushvalue(dst, -1);
    lua_rawsetp(dst, seen, p);
    lua_newtable(dst); /* its data */
    lua_pushnil(src);
    while (lua_next(src, -2)) {
        if (plain(lua_type(src, -2)) && plain(lua_type(src, -1))) {
            lua_pushvalue(src, -2);
            copy_value(dst, src, seen, depth + 1); /* key */
            lua_pop(src, 1);
            copy_value(dst, src, seen, depth + 1); /* value */
            if (lua_isnil(dst, -1) || lua_isnil(dst, -2))
                lua_pop(dst, 2);
            else
                lua_rawset(dst, -3);
        }
        lua_pop(src, 1);
    }
    if (src_data) lua_pop(src, 1);
    make_proxy(dst, lua_gettop(dst) - 1, lua_gettop(dst));
    lua_pop(dst, 1);
}

void rules_sbx_copy(lua_State *dst, lua_State *src) {
    int seen;

    lua_newtable(dst);
    seen = lua_gettop(dst);
    copy_value(dst, src, seen, 0);
    lua_remove(dst, seen);
}
