/* rules_guard.c -- bounded C calls and message handlers in the sandbox.
 *
 * Why a file of its own: the count hook (rules_sandbox.c) only sees Lua
 * instructions. Two things escape it, and this file closes both:
 *  - Lua calls a message handler while the hook that raised is still running,
 *    that is with hooks off: `xpcall(error, function() while true do end end)`
 *    would loop forever. xpcall is replaced so that once an abort is pending
 *    the rule's handler is never called (the abort passes through untouched).
 *  - one C call can loop without any instruction (table.move over 1e15
 *    indices, string.rep("", 1e15), a backtracking pattern). Every function
 *    of string, table, utf8 and os.date runs through a guard that estimates
 *    the work from its arguments, refuses a call that could not finish before
 *    the deadline, and checks the clock when the call returns. The originals
 *    stay in package.loaded (unreachable from rules) so error messages still
 *    name them ("bad argument #1 to 'move'").
 *
 * The instruction hook cannot see inside one C call. Each guarded function
 * gets an estimate of its work in UNITS (about NS_PER_UNIT ns each on this
 * kind of machine, measured: ("a"):rep(1e4):find(".-b") is 2e8 units and ran
 * 0.45 s); a call whose estimate does not fit in the time left before the
 * deadline is refused before it starts, as that rule's error, and the clock
 * is checked when any guarded call returns. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "rules_int.h"

#define NS_PER_UNIT 4.0
#define SMALL_UNITS 2500 /* about 10 us */

enum guard_kind {
    G_PLAIN = 0, /* work bounded by its string arguments (linear) */
    G_FIND,
    G_MATCH,
    G_GMATCH,
    G_GSUB,
    G_REP,
    G_FORMAT,
    G_DATE,
    G_MOVE,
    G_CONCAT,
    G_UNPACK,
    G_SHIFT,
    G_SORT,
};

/* 1 when what follows a repeat at P[I..] can never fail (only capture
 * parentheses): the repeat then scans once instead of backtracking. */
static int tail_only(const char *p, size_t i, size_t n) {
    for (; i < n; i++)
        if (p[i] != ')' && p[i] != '(') return 0;
    return 1;
}

/* Worst-case steps of Lua's backtracking matcher: each attempt walks the
 * pattern's items; an item repeated with * + - that can be backtracked over,
 * a %b (which scans to the end of the subject) and a back reference multiply
 * the attempt by the subject length, ? by two; an unanchored search makes
 * one attempt per position; a repeat that ends the pattern costs one scan in
 * all. Malformed patterns are left to Lua to refuse. Several backtracking
 * repeats on a long subject are refused even when the real input would be
 * quick: the bound is the worst case, which an attacker can supply. */
static double pattern_units(const char *p, size_t plen, size_t n, int scan) {
    double len1 = (double)n + 1, mult = 1, items = 1, tail = 0;
    size_t i = 0;

    if (plen > 0 && p[0] == '^' && scan != G_GMATCH) {
        scan = 0;
        i = 1;
    }
    while (i < plen && mult < 1e30) {
        char c = p[i];
        size_t start = i;
        double cost = 1;

        if (c == '(' || c == ')' || (c == '$' && i + 1 == plen)) {
            i++;
            continue;
        }
        items++;
        if (c == '%' && i + 1 < plen) {
            char d = p[i + 1];

            if (d == 'b') { /* %bxy: a scan per attempt */
                i += 4;
                mult *= len1;
                continue;
            }
            if (d == 'f') { /* %f[set]: one position, the set walked twice */
                i += 2;
                if (i < plen && p[i] == '[') i++;
                if (i < plen && p[i] == '^') i++;
                if (i < plen && p[i] == ']') i++;
                while (i < plen && p[i] != ']') i += (p[i] == '%') ? 2 : 1;
                i++;
                items += 2.0 * (double)(i - start);
                continue;
            }
            if (d >= '0' && d <= '9') { /* back reference: a compare */
                i += 2;
                mult *= len1;
                continue;
            }
            i += 2;
        } else if (c == '[') {
            /* A set is walked item by item at each character it is tried
             * on: it costs its length, not one step. */
            i++;
            if (i < plen && p[i] == '^') i++;
            if (i < plen && p[i] == ']') i++;
            while (i < plen && p[i] != ']') i += (p[i] == '%') ? 2 : 1;
            i++;
            cost = (double)(i - start);
            items += cost - 1;
        } else {
            i++;
        }
        if (i < plen && (p[i] == '*' || p[i] == '+' || p[i] == '-')) {
            i++;
            if (!tail_only(p, i, plen))
                mult *= len1;
            else
                tail += len1 * cost; /* one scan, and only by a match that then succeeds */
        } else if (i < plen && p[i] == '?') {
            i++;
            mult *= 2;
        }
    }
    /* A trailing repeat scans only in an attempt that succeeds at once, and
     * each success consumes what it scanned (gsub, gmatch) or ends the call
     * (find, match): linear in all, not per attempt. */
    return (scan ? len1 : 1) * items * mult + 2 * tail + (double)plen;
}

static double str_arg_len(lua_State *L, int idx) {
    size_t len = 0;

    if (lua_type(L, idx) == LUA_TSTRING)
        lua_tolstring(L, idx, &len);
    else if (lua_type(L, idx) == LUA_TNUMBER)
        len = 48;
    return (double)len;
}

static double int_arg(lua_State *L, int idx, double dflt) {
    int isnum = 0;
    lua_Integer v;

    if (lua_isnoneornil(L, idx)) return dflt;
    v = lua_tointegerx(L, idx, &isnum);
    return isnum ? (double)v : dflt;
}

/* The length the table functions will see: tables with __len are refused
 * before this (refuse_meta), and a string's length is its own. */
static double raw_len(lua_State *L, int idx) {
    int t = lua_type(L, idx);

    /* A ctx.state table's length is its data's (rules_values.c). */
    return t == LUA_TTABLE || t == LUA_TSTRING ? (double)rules_state_rawlen(L, idx) : 0;
}

/* The longest string among T[1..N]: sort compares whole strings (strcoll). */
static double longest_string(lua_State *L, int idx, double n) {
    double longest = 0;
    int data;

    if (lua_type(L, idx) != LUA_TTABLE) return 0;
    if ((data = rules_state_data(L, idx))) idx = lua_gettop(L);
    for (lua_Integer i = 1; i <= (lua_Integer)n; i++) {
        if (lua_rawgeti(L, idx, i) == LUA_TSTRING && (double)lua_rawlen(L, -1) > longest)
            longest = (double)lua_rawlen(L, -1);
        lua_pop(L, 1);
    }
    if (data) lua_pop(L, 1);
    return longest;
}

/* Elements in [I, J], 0 when empty. */
static double range(double i, double j) {
    return j >= i ? j - i + 1 : 0;
}

static double estimate(lua_State *L, int kind) {
    double units = 0, n;
    int top = lua_gettop(L);

    switch (kind) {
    case G_FIND:
        if (lua_toboolean(L, 4)) {
            /* plain: a memchr for the first byte, then a memcmp of up to the
             * whole needle at each candidate position: 2e6 'a' searched for
             * 1e6 'a' and a 'b' compared 1e12 bytes for 27 s. memcmp ran at
             * 37 to 86 bytes/ns here; a unit per 64 bytes (16 bytes/ns)
             * leaves room for a machine without wide vectors. */
            double n1 = str_arg_len(L, 1), n2 = str_arg_len(L, 2);

            units = n1 * (n2 > 0 ? 2 : 1);
            if (n2 > 1 && n2 <= n1) units += (n1 - n2 + 1) * n2 / 64;
            return units;
        }
        /* fallthrough */
    case G_MATCH:
    case G_GMATCH:
    case G_GSUB:
        if (lua_type(L, 2) != LUA_TSTRING) return str_arg_len(L, 1);
        {
            size_t plen;
            const char *p = lua_tolstring(L, 2, &plen);

            units = pattern_units(p, plen, (size_t)str_arg_len(L, 1), kind);
        }
        if (kind == G_GSUB && lua_type(L, 3) == LUA_TSTRING)
            units += str_arg_len(L, 1) * str_arg_len(L, 3) / 8;
        return units;
    case G_REP:
        /* The result is allocated before the copy loop: one over the memory
         * limit fails at once, so only a result that fits costs time. */
        n = int_arg(L, 2, 0);
        units = n * (str_arg_len(L, 1) + str_arg_len(L, 3));
        return n > 0 ? fmin(units, (double)rules_sbx_of(L)->limit) / 8 : 0;
    case G_FORMAT:
        units = str_arg_len(L, 1) * 8;
        for (int i = 2; i <= top; i++) units += str_arg_len(L, i) / 8;
        return units;
    case G_DATE: return str_arg_len(L, 1) * 64;
    case G_MOVE: return range(int_arg(L, 2, 1), int_arg(L, 3, 0)) * 4;
    case G_CONCAT: return range(int_arg(L, 3, 1), int_arg(L, 4, raw_len(L, 1))) * 4;
    case G_UNPACK: return range(int_arg(L, 2, 1), int_arg(L, 3, raw_len(L, 1))) * 2;
    case G_SHIFT: return raw_len(L, 1);
    case G_SORT:
        /* Each comparison of two strings reads up to the shorter one: 2000
         * copies of a 4 MB string took 5.4 s to sort. */
        n = raw_len(L, 1);
        return n * (log2(n + 1) + 1) * (4 + longest_string(L, 1, n) / 16);
    default:
        for (int i = 1; i <= top; i++) units += str_arg_len(L, i) / 4;
        return units;
    }
}

/* Call upvalue 1 with the arguments on the stack; leave its results. */
static int call_upvalue(lua_State *L, int nresults) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, nresults);
    return lua_gettop(L);
}

/* Raise, as the rule's error, when UNITS of work cannot finish before the
 * deadline; a call that would fit a whole evaluation but not the time left
 * means the rule is over its deadline. NAME names the function, SUBJECT is
 * the length of a pattern function's subject. */
static void admit(lua_State *L, int kind, const char *name, double subject, double units) {
    rules_sbx *s = rules_sbx_of(L);
    double left = rules_sbx_time_left(L);
    char msg[400];

    if (units * NS_PER_UNIT <= left) return;
    if (units * NS_PER_UNIT <= s->timeout_ms * 1e6) rules_sbx_abort(L, RULES_SBX_TIME);
    /* lua_pushfstring knows no %g precision: format here. */
    if (kind >= G_FIND && kind <= G_GSUB)
        snprintf(msg, sizeof(msg),
                 "%s: pattern too costly for a %.0f-byte subject (it "
                 "could backtrack for about %.3g steps, more than fit in the %d ms "
                 "evaluation deadline): shorten the subject or simplify the pattern",
                 name, subject, units, s->timeout_ms);
    else
        snprintf(msg, sizeof(msg),
                 "%s: too much work for one call (about %.3g steps, "
                 "more than fit in the %d ms evaluation deadline)",
                 name, units, s->timeout_ms);
    luaL_error(L, "%s", msg);
}

/* insert, remove, concat, unpack and sort read the length with __len and
 * the elements with __index / __newindex: one call would run as long as a
 * __len returning 1e12 says, and calling __len to estimate would run the
 * rule's code where no deadline can stop it. Such tables are refused. */
static void refuse_meta(lua_State *L, const char *name) {
    static const char *const fields[] = { "__len", "__index", "__newindex" };

    if (lua_type(L, 1) != LUA_TTABLE) return;
    /* ctx.state's tables: their metamethods are ours, bounded (a journal). */
    if (rules_state_data(L, 1)) {
        lua_pop(L, 1);
        return;
    }
    if (!lua_getmetatable(L, 1)) return;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        lua_pushstring(L, fields[i]);
        if (lua_rawget(L, -2) != LUA_TNIL)
            luaL_error(L,
                       "%s: the table has a %s metamethod, whose work no deadline can bound: "
                       "pass a plain table",
                       name, fields[i]);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* The work of the next call of a gmatch iterator: a search over what is left
 * of the subject. The iterator's upvalues are the subject, the pattern and
 * Lua's GMatchState, whose first field is the current position (lstrlib.c,
 * Lua 5.4); a position outside the subject means another layout, and the
 * whole subject is assumed. */
static double gmatch_units(lua_State *L, int it, double *rest) {
    size_t slen, plen;
    const char *subj, *p, *pos;

    if (lua_getupvalue(L, it, 1) == NULL || lua_getupvalue(L, it, 2) == NULL ||
        lua_getupvalue(L, it, 3) == NULL || lua_type(L, -3) != LUA_TSTRING ||
        lua_type(L, -2) != LUA_TSTRING) {
        /* Not the expected closure: no estimate, every call refused. */
        lua_settop(L, 0);
        *rest = 0;
        return 1e30;
    }
    subj = lua_tolstring(L, -3, &slen);
    p = lua_tolstring(L, -2, &plen);
    *rest = (double)slen;
    if (lua_type(L, -1) == LUA_TUSERDATA && lua_rawlen(L, -1) >= sizeof(const char *)) {
        pos = *(const char *const *)lua_touserdata(L, -1);
        if (pos >= subj && pos <= subj + slen) *rest = (double)(subj + slen - pos);
    }
    lua_settop(L, 0);
    return pattern_units(p, plen, (size_t)*rest, G_GMATCH);
}

/* upvalue 1: the iterator string.gmatch returned. */
static int gmatch_next(lua_State *L) {
    rules_sbx *s = rules_sbx_of(L);

    lua_settop(L, 0);
    if (s->armed) {
        double rest, units = gmatch_units(L, lua_upvalueindex(1), &rest);

        admit(L, G_GMATCH, "string.gmatch", rest, units);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_call(L, 0, LUA_MULTRET);
    rules_sbx_check_deadline(L);
    return lua_gettop(L);
}

/* os.date(FMT, T) with FMT in UTC ("!...") is a function of its arguments
 * alone, and rules ask for the day of ctx.now, which changes once a second:
 * os.date keeps its last short string result in upvalues 4 to 6 (format,
 * time, result). 1 when the call is such a call (the key is then stored and
 * the result cleared), 2 when the result is known (it is pushed). */
#define DATE_MEMO_MAX 64

static int date_memo(lua_State *L) {
    if (lua_gettop(L) != 2 || lua_type(L, 1) != LUA_TSTRING || !lua_isinteger(L, 2) ||
        lua_tostring(L, 1)[0] != '!')
        return 0;
    if (lua_type(L, lua_upvalueindex(6)) == LUA_TSTRING &&
        lua_rawequal(L, 1, lua_upvalueindex(4)) &&
        lua_tointeger(L, 2) == lua_tointeger(L, lua_upvalueindex(5))) {
        lua_pushvalue(L, lua_upvalueindex(6));
        return 2;
    }
    lua_pushvalue(L, 1);
    lua_replace(L, lua_upvalueindex(4));
    lua_pushvalue(L, 2);
    lua_replace(L, lua_upvalueindex(5));
    lua_pushnil(L);
    lua_replace(L, lua_upvalueindex(6));
    return 1;
}

/* upvalue 1: the original function; 2: its guard_kind; 3: its name (4 to 6:
 * os.date's memo). */
static int sbx_guarded(lua_State *L) {
    rules_sbx *s = rules_sbx_of(L);
    int kind = (int)lua_tointeger(L, lua_upvalueindex(2));
    int memo = 0;
    double units;

    if (kind == G_DATE && (memo = date_memo(L)) == 2) return 1;

    if (kind == G_REP && str_arg_len(L, 1) == 0 && str_arg_len(L, 3) == 0 &&
        lua_type(L, 1) == LUA_TSTRING && int_arg(L, 2, 0) > 0) {
        /* Lua would loop n times copying nothing. */
        lua_pushliteral(L, "");
        return 1;
    }
    if (kind >= G_CONCAT) refuse_meta(L, lua_tostring(L, lua_upvalueindex(3)));
    units = s->armed ? estimate(L, kind) : 0;
    /* Most calls are tiny: no clock for them (the count hook still sees the
     * time a loop of them takes). */
    if (units < SMALL_UNITS) {
        call_upvalue(L, LUA_MULTRET);
    } else {
        /* A plain find does not backtrack: say "too much work". */
        int mkind = kind == G_FIND && lua_toboolean(L, 4) ? G_PLAIN : kind;

        admit(L, mkind, lua_tostring(L, lua_upvalueindex(3)), str_arg_len(L, 1), units);
        call_upvalue(L, LUA_MULTRET);
        rules_sbx_check_deadline(L);
    }
    if (memo && lua_gettop(L) == 1 && lua_type(L, 1) == LUA_TSTRING &&
        lua_rawlen(L, 1) <= DATE_MEMO_MAX) {
        lua_pushvalue(L, 1);
        lua_replace(L, lua_upvalueindex(6));
    }
    if (kind == G_GMATCH && lua_gettop(L) == 1 && lua_type(L, 1) == LUA_TFUNCTION) {
        /* Each call of the iterator is a search of its own: guard it too. */
        lua_pushcclosure(L, gmatch_next, 1);
    }
    return lua_gettop(L);
}

/* Replace the global library table LIB by a copy whose functions are guarded;
 * the original table stays in package.loaded, unreachable from rules, so
 * that Lua's messages keep naming the functions. Returns with the new table
 * on the stack. */
static void guard_lib(lua_State *L, const char *lib) {
    static const struct {
        const char *name;
        int kind;
    } kinds[] = {
        { "find", G_FIND },     { "match", G_MATCH },  { "gmatch", G_GMATCH },
        { "gsub", G_GSUB },     { "rep", G_REP },      { "format", G_FORMAT },
        { "date", G_DATE },     { "move", G_MOVE },    { "concat", G_CONCAT },
        { "unpack", G_UNPACK }, { "insert", G_SHIFT }, { "remove", G_SHIFT },
        { "sort", G_SORT },
    };

    lua_getglobal(L, lib); /* orig */
    lua_newtable(L);       /* orig, copy */
    lua_pushnil(L);
    while (lua_next(L, -3) != 0) { /* orig, copy, k, v */
        if (lua_type(L, -2) == LUA_TSTRING && lua_tocfunction(L, -1) != NULL) {
            const char *name = lua_tostring(L, -2);
            int kind = G_PLAIN;

            for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
                if (strcmp(name, kinds[i].name) == 0) kind = kinds[i].kind;
            lua_pushinteger(L, kind);
            lua_pushfstring(L, "%s.%s", lib, name);
            lua_pushcclosure(L, sbx_guarded, 3); /* orig, copy, k, guarded */
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4); /* copy[k] = v or guarded */
    }
    lua_remove(L, -2);
    lua_pushvalue(L, -1);
    lua_setglobal(L, lib);
}

/* xpcall(f, handler, ...) whose handler never runs while an abort is
 * pending: Lua calls it from inside the hook that raised, with hooks off,
 * where nothing could stop it. */
static int xpcall_handler(lua_State *L) {
    rules_sbx *s = rules_sbx_of(L);

    if (s->abort != RULES_SBX_OK) return 1; /* the abort token, as it is */
    call_upvalue(L, 1);
    return 1;
}

static int sbx_xpcall(lua_State *L) {
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, xpcall_handler, 1);
    lua_replace(L, 2);
    return call_upvalue(L, LUA_MULTRET);
}

void rules_guard_env(lua_State *L) {
    lua_getglobal(L, "xpcall");
    lua_pushcclosure(L, sbx_xpcall, 1);
    lua_setglobal(L, "xpcall");
    guard_lib(L, LUA_TABLIBNAME);
    lua_getfield(L, -1, "unpack");
    lua_setglobal(L, "unpack");
    lua_pop(L, 1);
    guard_lib(L, LUA_UTF8LIBNAME);
    lua_pop(L, 1);
    /* ("x"):rep(n) goes through the string metatable: point it at the copy. */
    guard_lib(L, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 3);
    lua_getglobal(L, LUA_OSLIBNAME);
    lua_getfield(L, -1, "date");
    lua_pushinteger(L, G_DATE);
    lua_pushliteral(L, "os.date");
    lua_pushnil(L); /* the memo: format, time, result */
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushcclosure(L, sbx_guarded, 6);
    lua_setfield(L, -2, "date");
    lua_pop(L, 1);
}
