/* rules_test.c -- running rules against given events: the fixtures that
 * loading a rule file runs (its `tests`), and the dry run behind
 * `nerve rules test`.
 *
 * A fixture failure is a load error like a syntax error, so its message has
 * to say, in one line, which fixture, on which channel, and what differed:
 *     rules/x.lua:41: fixture 3 (inventory_events): decision 1: expected
 *     level="warning", got level="info"
 * The dry run evaluates a JSON-lines file on a fresh rules_vm and prints the
 * decisions as JSON lines; it is the analyst's way to try a rule change
 * against recorded events before a reload. For `nerve rules test`
 * (rules_test_run with options) each of those lines, and each rule error,
 * starts with the input's `FILE:LINE:` -- without it a failure among 10,000
 * recorded events cannot be traced to its event -- and a summary ends it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>
#include <cjson/cJSON.h>

#include "rules_int.h"

/* ---- fixtures ------------------------------------------------------------ */

struct fix_args {
    struct rules_load *la;
    int i;
    int line;
    char chan[RULES_CHANNEL_MAX + 1];
};

static const char *const expect_keys[] = {
    "action", "level", "reason", "scope", "halt_sales", NULL
};

#define FERR(...) \
    do { \
        rules_eb_add(f->la->eb, f->la->file, f->line, "fixture %d (%s): %s", f->i, f->chan, \
                     (snprintf(fmsg, sizeof(fmsg), __VA_ARGS__), fmsg)); \
        return; \
    } while (0)

/* Append to BUF a Lua-like rendering of decision D. */
static void fmt_decision(char *buf, size_t len, const rules_decision *d) {
    size_t off = strlen(buf);

    snprintf(buf + off, len - off, "{action=\"%s\"%s%s%s, reason=\"%s\"%s%s%s%s}",
             rules_action_name(d->action), d->level ? ", level=\"" : "",
             d->level ? rules_level_name(d->level) : "", d->level ? "\"" : "", d->reason,
             d->scope ? ", scope=\"" : "", d->scope ? d->scope : "", d->scope ? "\"" : "",
             d->action == RULES_KILL ? (d->halt_sales ? ", halt_sales=true" : ", halt_sales=false")
                                     : "");
}

/* Append the expect entry at absolute index E. */
static void fmt_expect(lua_State *L, int e, char *buf, size_t len) {
    size_t off = strlen(buf);
    int first = 1;

    if (!lua_istable(L, e)) { /* evaluate replaced it */
        snprintf(buf + off, len - off, "(changed by evaluate)");
        return;
    }
    off += (size_t)snprintf(buf + off, len - off, "{");
    for (int k = 0; expect_keys[k] && off < len; k++) {
        lua_pushstring(L, expect_keys[k]);
        switch (lua_rawget(L, e)) {
        case LUA_TSTRING:
            off += (size_t)snprintf(buf + off, len - off, "%s%s=\"%s\"", first ? "" : ", ",
                                    expect_keys[k], lua_tostring(L, -1));
            first = 0;
            break;
        case LUA_TBOOLEAN:
            off += (size_t)snprintf(buf + off, len - off, "%s%s=%s", first ? "" : ", ",
                                    expect_keys[k], lua_toboolean(L, -1) ? "true" : "false");
            first = 0;
            break;
        default: break;
        }
        lua_pop(L, 1);
    }
    if (off < len) snprintf(buf + off, len - off, "}");
}

/* The value of field K of decision D as text; NULL when D has none. */
static const char *got_field(const rules_decision *d, const char *k) {
    if (strcmp(k, "action") == 0) return rules_action_name(d->action);
    if (strcmp(k, "level") == 0) return d->level ? rules_level_name(d->level) : NULL;
    if (strcmp(k, "reason") == 0) return d->reason;
    if (strcmp(k, "scope") == 0) return d->scope;
    return d->halt_sales ? "true" : "false";
}

static void fixture_fn(lua_State *L, void *ud) {
    struct fix_args *f = ud;
    struct rules_load *la = f->la;
    rules_decision d[RULES_MAX_DECISIONS];
    char fmsg[RULES_MSG_MAX], exp[RULES_MSG_MAX / 2], got[RULES_MSG_MAX / 2];
    int fx, ev, expect, params, res, vt;
    long long now = la->now;
    size_t n, n_exp;

    lua_rawgeti(L, LUA_REGISTRYINDEX, la->ref_rule);
    lua_pushliteral(L, "tests");
    /* An earlier fixture's evaluate may have replaced the list. */
    if (lua_rawget(L, -2) != LUA_TTABLE || lua_rawgeti(L, -1, f->i) != LUA_TTABLE)
        FERR("must be a table {channel=..., event={...}, expect={...}}");
    fx = lua_gettop(L);

    lua_pushnil(L);
    while (lua_next(L, fx)) {
        static const char *const keys[] = { "channel", "event", "expect", "now", "params", NULL };
        int known = 0;

        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (int i = 0; keys[i]; i++) known |= strcmp(lua_tostring(L, -1), keys[i]) == 0;
        if (!known)
            FERR("unknown field %s%.40s%s (expected channel, event, expect, now, params)",
                 lua_type(L, -1) == LUA_TSTRING ? "\"" : "",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1),
                 lua_type(L, -1) == LUA_TSTRING ? "\"" : "");
    }
    lua_getfield(L, fx, "channel");
    if (lua_type(L, -1) != LUA_TSTRING || !rules_channel_ok(lua_tostring(L, -1), lua_rawlen(L, -1)))
        FERR("channel must be a channel name");
    snprintf(f->chan, sizeof(f->chan), "%s", lua_tostring(L, -1));
    {
        int listed = 0;

        for (size_t i = 0; i < la->n_chan; i++) listed |= strcmp(la->chan[i], f->chan) == 0;
        if (!listed) FERR("channel is not one of the rule's `on` channels");
    }
    if (lua_getfield(L, fx, "event") != LUA_TTABLE) FERR("event must be a table");
    ev = lua_gettop(L);
    if (lua_getfield(L, fx, "expect") != LUA_TTABLE)
        FERR("expect must be a list of decisions ({} = no decision)");
    expect = lua_gettop(L);
    n_exp = lua_rawlen(L, expect);
    for (size_t k = 1; k <= n_exp; k++) {
        int e;

        if (lua_rawgeti(L, expect, (lua_Integer)k) != LUA_TTABLE)
            FERR("expect[%zu] must be a table", k);
        e = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, e)) {
            int known = -1;

            for (int i = 0; lua_type(L, -2) == LUA_TSTRING && expect_keys[i]; i++)
                if (strcmp(lua_tostring(L, -2), expect_keys[i]) == 0) known = i;
            if (known < 0)
                FERR("expect[%zu]: unknown field (expected action, level, reason, scope, "
                     "halt_sales)",
                     k);
            if (lua_type(L, -1) != (known == 4 ? LUA_TBOOLEAN : LUA_TSTRING))
                FERR("expect[%zu]: %s must be a %s", k, expect_keys[known],
                     known == 4 ? "boolean" : "string");
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    vt = lua_getfield(L, fx, "now");
    if (vt == LUA_TNUMBER && !lua_isinteger(L, -1) &&
        !(lua_tonumber(L, -1) >= -9.2e18 && lua_tonumber(L, -1) <= 9.2e18))
        FERR("now must be a number (epoch seconds)"); /* NaN, or no long long */
    if (vt == LUA_TNUMBER)
        now = lua_isinteger(L, -1) ? (long long)lua_tointeger(L, -1)
                                   : (long long)lua_tonumber(L, -1);
    else if (vt != LUA_TNIL)
        FERR("now must be a number (epoch seconds)");
    vt = lua_getfield(L, fx, "params");
    if (vt == LUA_TTABLE) {
        /* Checked like rules.params, defaults filled in: a typo in a
         * fixture's params must not test the default instead. */
        if (rules_params_fixture(L, -1, la, exp, sizeof(exp)) != 0) FERR("%s", exp);
        rules_sbx_push_ro_copy(L, -1, "params", 0);
    } else if (vt == LUA_TNIL)
        lua_rawgeti(L, LUA_REGISTRYINDEX, la->ref_params);
    else
        FERR("params must be a table");
    params = lua_gettop(L);

    lua_rawgeti(L, LUA_REGISTRYINDEX, la->ref_state);
    rules_sbx_push_ctx(L, params, -1); /* ctx, inner */
    lua_pushstring(L, f->chan);
    lua_setfield(L, -2, "channel");
    lua_pushinteger(L, (lua_Integer)now);
    lua_setfield(L, -2, "now");
    lua_pop(L, 1);
    lua_getfield(L, 1, "evaluate");
    lua_pushvalue(L, ev);
    lua_pushvalue(L, -3);
    lua_call(L, 2, 1);
    rules_sbx_check_abort(L);
    /* Before any decision is delivered: an evaluate that returned late must
     * decide nothing (one C call can overrun between two looks). */
    rules_sbx_check_deadline(L);
    res = lua_gettop(L);

    if (rules_sbx_decisions(L, res, f->chan, d, &n, fmsg, sizeof(fmsg)) != 0) {
        /* At the `return` that produced it (fixtures run with the return
         * hook on); the fixture is named by number and line. */
        rules_sbx *s = rules_sbx_of(L);

        rules_eb_add(la->eb, la->file, s->ret_line > 0 ? s->ret_line : f->line,
                     "fixture %d (%s, line %d): %s", f->i, f->chan, f->line, fmsg);
        return;
    }
    if (n != n_exp) {
        exp[0] = got[0] = '\0';
        for (size_t k = 1; k <= n_exp; k++) {
            if (k > 1) strncat(exp, ", ", sizeof(exp) - strlen(exp) - 1);
            lua_rawgeti(L, expect, (lua_Integer)k);
            fmt_expect(L, lua_gettop(L), exp, sizeof(exp));
            lua_pop(L, 1);
        }
        for (size_t k = 0; k < n; k++) {
            if (k > 0) strncat(got, ", ", sizeof(got) - strlen(got) - 1);
            fmt_decision(got, sizeof(got), &d[k]);
        }
        FERR("expected %.480s, got %.480s", n_exp ? exp : "no decision", n ? got : "no decision");
    }
    for (size_t k = 0; k < n; k++) {
        /* Checked again: evaluate can reach the fixture and change it. */
        if (lua_rawgeti(L, expect, (lua_Integer)k + 1) != LUA_TTABLE)
            FERR("expect[%zu] was changed by evaluate", k + 1);
        for (int i = 0; expect_keys[i]; i++) {
            const char *want, *have;
            int is_bool = i == 4;

            lua_pushstring(L, expect_keys[i]);
            vt = lua_rawget(L, -2);
            if (vt == LUA_TNIL) {
                lua_pop(L, 1);
                continue;
            }
            if (!is_bool && vt != LUA_TSTRING)
                FERR("expect[%zu]: %s was changed by evaluate", k + 1, expect_keys[i]);
            want = is_bool ? (lua_toboolean(L, -1) ? "true" : "false") : lua_tostring(L, -1);
            have = got_field(&d[k], expect_keys[i]);
            if (have == NULL || strcmp(want, have) != 0) {
                const char *q = is_bool ? "" : "\"";

                if (have)
                    FERR("decision %zu: expected %s=%s%s%s, got %s=%s%s%s", k + 1, expect_keys[i],
                         q, want, q, expect_keys[i], q, have, q);
                FERR("decision %zu: expected %s=%s%s%s, got no %s", k + 1, expect_keys[i], q, want,
                     q, expect_keys[i]);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
}

/* A file's fixtures share one budget of FIXTURE_DEADLINES evaluation
 * deadlines, and stop at the first that hits a limit: a rule whose 1000
 * fixtures each run just under the deadline must not hold `nerve check` or a
 * reload for minutes. */
#define FIXTURE_DEADLINES 20

void rules_run_fixtures(rules_sbx *s, struct rules_load *a) {
    uint64_t until = rules_now_ns() + (uint64_t)s->timeout_ms * 1000000u * FIXTURE_DEADLINES;

    s->trace_ret = true; /* load time: the return hook's cost does not matter */

    for (int i = 1; i <= a->n_fix; i++) {
        struct fix_args f = { .la = a, .i = i };
        rules_sbx_err e;
        int l = a->tests_line > 0 ? rules_key_line(a->src, a->src_len, "channel", a->tests_line, i)
                                  : 0;

        f.line = l > 0 ? l : a->tests_line > 0 ? a->tests_line : a->eval_line;
        snprintf(f.chan, sizeof(f.chan), "?");
        if (rules_sbx_pcall_until(s, fixture_fn, &f, until, &e) == 0) continue;
        if (e.kind == RULES_SBX_TIME && rules_now_ns() >= until && i > 1)
            snprintf(e.msg, sizeof(e.msg), "fixtures ran longer than %d ms in all",
                     s->timeout_ms * FIXTURE_DEADLINES);
        rules_eb_add(a->eb, a->file, e.line, "fixture %d (%s): %s", i, f.chan, e.msg);
        if (e.kind != RULES_SBX_ERR) {
            if (i < a->n_fix)
                rules_eb_add(a->eb, a->file, e.line, "fixtures %d to %d not run after that limit",
                             i + 1, a->n_fix);
            break;
        }
    }
    s->trace_ret = false;
}

/* ---- dry run -------------------------------------------------------------- */

struct dry {
    FILE *out, *errout;
    int errors;
    const rules_test_opts *o; /* NULL: the library's plain output */
    const char *in_name;
    int lineno;
    int ev_decisions, ev_errors; /* of the current event */
    long events, decisions[RULES_ACTION_COUNT], rule_errors;
};

/* `IN_NAME:LINE: ` before each line about an event, so that an analyst can
 * go from a decision or an error straight to the event that caused it. */
static void dry_where(const struct dry *dr, FILE *f) {
    if (dr->o) fprintf(f, "%s:%d: ", dr->in_name, dr->lineno);
}

/* 1 when --rule names another rule than RULE. */
static int dry_skip(const struct dry *dr, const char *rule) {
    return dr->o && dr->o->rule && (rule == NULL || strcmp(rule, dr->o->rule) != 0);
}

static void dry_decision(void *ud, const rules_decision *d) {
    struct dry *dr = ud;
    cJSON *o, *dec;
    char *txt;

    if (dry_skip(dr, d->rule)) return;
    o = cJSON_CreateObject();
    dec = cJSON_CreateObject();
    if (o == NULL || dec == NULL) {
        cJSON_Delete(o);
        cJSON_Delete(dec);
        dry_where(dr, dr->errout);
        fprintf(dr->errout, "%s: out of memory printing a decision\n", d->file);
        dr->errors++;
        return;
    }
    dr->ev_decisions++;
    if ((unsigned)d->action < RULES_ACTION_COUNT) dr->decisions[d->action]++;
    cJSON_AddStringToObject(o, "rule", d->rule);
    cJSON_AddStringToObject(o, "channel", d->channel);
    cJSON_AddStringToObject(dec, "action", rules_action_name(d->action));
    if (d->level) cJSON_AddStringToObject(dec, "level", rules_level_name(d->level));
    if (d->scope) cJSON_AddStringToObject(dec, "scope", d->scope);
    cJSON_AddStringToObject(dec, "reason", d->reason);
    if (d->action == RULES_KILL) cJSON_AddBoolToObject(dec, "halt_sales", d->halt_sales);
    cJSON_AddItemToObject(o, "decision", dec);
    txt = cJSON_PrintUnformatted(o);
    if (txt) {
        dry_where(dr, dr->out);
        fprintf(dr->out, "%s\n", txt);
        free(txt);
    }
    cJSON_Delete(o);
}

static void dry_error(void *ud, const char *rule, const char *msg) {
    struct dry *dr = ud;

    if (dry_skip(dr, rule)) return;
    dry_where(dr, dr->errout);
    fprintf(dr->errout, "%s\n", msg);
    dr->errors++;
    dr->rule_errors++;
    dr->ev_errors++;
}

/* Check one input line; on success set *CHANNEL, *EVENT and *NOW. */
static const char *dry_line(const cJSON *j, const char **channel, const cJSON **event,
                            long long *now) {
    const cJSON *c, *ev, *n;

    if (!cJSON_IsObject(j)) return "expected a JSON object {\"channel\": ..., \"event\": {...}}";
    for (c = j->child; c; c = c->next)
        if (strcmp(c->string, "channel") != 0 && strcmp(c->string, "event") != 0 &&
            strcmp(c->string, "now") != 0)
            return "unknown key (expected channel, event and optionally now)";
    c = cJSON_GetObjectItemCaseSensitive(j, "channel");
    if (!cJSON_IsString(c) || !rules_channel_ok(c->valuestring, strlen(c->valuestring)))
        return "channel must be a non-empty string without spaces";
    ev = cJSON_GetObjectItemCaseSensitive(j, "event");
    if (!cJSON_IsObject(ev)) return "event must be a JSON object";
    n = cJSON_GetObjectItemCaseSensitive(j, "now");
    if (n && (!cJSON_IsNumber(n) || n->valuedouble < 0 || n->valuedouble > 1e15))
        return "now must be epoch seconds";
    if (rules_json_depth(ev) > RULES_JSON_DEPTH) return "event nested too deep";
    *channel = c->valuestring;
    *event = ev;
    *now = n ? (long long)n->valuedouble : (long long)time(NULL);
    return NULL;
}

/* The last line of a CLI run: what the analyst checks first. */
static void dry_summary(const struct dry *dr) {
    static const rules_action order[] = { RULES_KILL, RULES_REJECT, RULES_ALERT };
    long total = 0;
    int first = 1;

    for (int a = 0; a < RULES_ACTION_COUNT; a++) total += dr->decisions[a];
    fprintf(dr->errout, "events: %ld, decisions: %ld", dr->events, total);
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        if (dr->decisions[order[i]] == 0) continue;
        fprintf(dr->errout, "%s%s %ld", first ? " (" : ", ", rules_action_name(order[i]),
                dr->decisions[order[i]]);
        first = 0;
    }
    fprintf(dr->errout, "%s, errors: %d\n", first ? "" : ")", dr->errors);
}

int rules_test_events(rules_set *set, FILE *in, const char *in_name, FILE *out, FILE *errout) {
    return rules_test_run(set, in, in_name, NULL, out, errout);
}

int rules_test_run(rules_set *set, FILE *in, const char *in_name, const rules_test_opts *o,
                   FILE *out, FILE *errout) {
    struct dry dr = { .out = out, .errout = errout, .o = o, .in_name = in_name };
    char err[RULES_MSG_MAX], *line = NULL;
    size_t cap = 0, max = set->max_event_bytes + 4096;
    ssize_t len;
    int lineno = 0;
    /* --rule NAME: only that rule runs, so another rule's error or
     * slowness changes neither the run nor the exit status. */
    rules_vm *vm = o && o->rule ? rules_vm_new_rule(set, o->rule, err, sizeof(err))
                                : rules_vm_new(set, NULL, err, sizeof(err));

    if (vm == NULL) {
        fprintf(errout, "%s\n", err);
        return -1;
    }
    rules_vm_on_error(vm, dry_error, &dr);
    while ((len = getline(&line, &cap, in)) != -1) {
        const char *channel = NULL, *bad, *p;
        const cJSON *event = NULL;
        long long now = 0;
        cJSON *j;

        lineno++;
        dr.lineno = lineno;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        for (p = line; *p == ' ' || *p == '\t'; p++)
            ;
        if (*p == '\0' || *p == '#') continue;
        dr.events++;
        if ((size_t)len > max) {
            fprintf(errout, "%s:%d: line longer than %zu bytes\n", in_name, lineno, max);
            dr.errors++;
            continue;
        }
        j = cJSON_ParseWithLengthOpts(line, (size_t)len + 1, NULL, 1);
        if (j == NULL) {
            fprintf(errout, "%s:%d: not valid JSON\n", in_name, lineno);
            dr.errors++;
            continue;
        }
        bad = dry_line(j, &channel, &event, &now);
        if (bad) {
            fprintf(errout, "%s:%d: %s\n", in_name, lineno, bad);
            dr.errors++;
        } else {
            dr.ev_decisions = dr.ev_errors = 0;
            rules_eval_cjson(vm, channel, event, now, dry_decision, &dr);
            if (o && o->all && dr.ev_decisions == 0 && dr.ev_errors == 0)
                fprintf(out, "%s:%d: no decision (%s)\n", in_name, lineno, channel);
        }
        cJSON_Delete(j);
    }
    if (ferror(in)) {
        fprintf(errout, "%s:%d: read error: %s\n", in_name, lineno, strerror(errno));
        dr.errors++;
    }
    free(line);
    rules_vm_free(vm);
    fflush(out);
    if (o) dry_summary(&dr);
    return dr.errors ? -1 : 0;
}
