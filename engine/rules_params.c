/* rules_params.c -- what a rule declares it reads: its parameters and its
 * channels.
 *
 * A rule reads its settings from ctx.params, a free-form tree the operator
 * writes in rules.params. Free-form means a typo (`critical_treshold: 8`) or a
 * wrong type (`critical_threshold: eight`) used to load fine, and the rule
 * then silently ran on its default -- the worst kind of error for a safety
 * rule. So a rule may declare its parameters:
 *
 *     params_section = "inventory",   -- default: the rule's name
 *     params = {
 *       critical_threshold = { type = "integer", default = 5, min = 0,
 *                              description = "..." },
 *     },
 *
 * and loading then refuses, with the config's FILE:LINE:COL (or the --set
 * that wrote it), a key of that section no rule declares, a value of the
 * wrong type and one out of range; and fills in the defaults, so a declared
 * key is always present in ctx.params. Fixture params get the same check and
 * defaults. A rule without `params` is not checked; a rule that names a
 * params_section without declaring params makes that section unchecked for
 * unknown keys (it may read any of them).
 *
 * The channels a rule listens on are checked here too: an `on` entry that no
 * configuration names is a rule that can never run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <cjson/cJSON.h>

#include "nerve/config.h"
#include "rules_int.h"

#define MAX_ERRORS_PER_SECTION 20
#define SUGGEST_MAX            128 /* longer words get no suggestion */

static const char *const type_names[] = { "integer", "number", "string", "boolean", "map" };
static const char *const type_articles[] = { "an integer", "a number", "a string", "a boolean",
                                             "a mapping" };

/* ---- suggestions --------------------------------------------------------- */

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), row[SUGGEST_MAX + 1];

    if (la > SUGGEST_MAX || lb > SUGGEST_MAX) return (size_t)-1;
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];

        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);

            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

const char *rules_suggest(const char *word, const char *const *cands, size_t n) {
    size_t len = strlen(word), allow = len / 4 < 1 ? 1 : len / 4 > 3 ? 3 : len / 4;
    size_t best = (size_t)-1;
    const char *pick = NULL;

    for (size_t i = 0; i < n; i++) {
        size_t d = edit_distance(word, cands[i]);

        /* d < both lengths: "x" is no typo of "z" */
        if (d > 0 && d <= allow && d < best && d < len && d < strlen(cands[i])) {
            best = d;
            pick = cands[i];
        }
    }
    return pick;
}

/* ---- values, from JSON or Lua -------------------------------------------- */

enum { PV_NUM, PV_STR, PV_BOOL, PV_MAP, PV_LIST, PV_NULL, PV_OTHER };

typedef struct pval {
    int kind;
    double num;
    bool isint; /* an integral number within 2^53 */
    bool b;
    const char *str;
} pval;

static bool integral(double v) {
    return isfinite(v) && v == floor(v) && fabs(v) <= 9007199254740992.0;
}

static pval pv_json(const cJSON *j) {
    pval v = { .kind = PV_OTHER };

    if (cJSON_IsNumber(j)) {
        v.kind = PV_NUM;
        v.num = j->valuedouble;
        v.isint = integral(v.num);
    } else if (cJSON_IsString(j)) {
        v.kind = PV_STR;
        v.str = j->valuestring;
    } else if (cJSON_IsBool(j)) {
        v.kind = PV_BOOL;
        v.b = cJSON_IsTrue(j);
    } else if (cJSON_IsObject(j)) {
        v.kind = PV_MAP;
    } else if (cJSON_IsArray(j)) {
        v.kind = PV_LIST;
    } else if (cJSON_IsNull(j)) {
        v.kind = PV_NULL;
    }
    return v;
}

static pval pv_lua(lua_State *L, int idx) {
    pval v = { .kind = PV_OTHER };

    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        v.kind = PV_NUM;
        v.num = (double)lua_tonumber(L, idx);
        v.isint = lua_isinteger(L, idx) || integral(v.num);
        break;
    case LUA_TSTRING:
        v.kind = PV_STR;
        v.str = lua_tostring(L, idx);
        break;
    case LUA_TBOOLEAN:
        v.kind = PV_BOOL;
        v.b = lua_toboolean(L, idx);
        break;
    case LUA_TTABLE: v.kind = lua_rawlen(L, idx) > 0 ? PV_LIST : PV_MAP; break;
    case LUA_TNIL: v.kind = PV_NULL; break;
    default: break;
    }
    return v;
}

/* V as a message shows it. */
static const char *pv_show(const pval *v, char *buf, size_t len) {
    switch (v->kind) {
    case PV_NUM: snprintf(buf, len, "%.17g", v->num); break;
    case PV_STR: {
        char clean[96];

        rules_sanitize(clean, sizeof(clean), v->str, strlen(v->str));
        snprintf(buf, len, "\"%.64s%s\"", clean, strlen(v->str) > 64 ? "..." : "");
        break;
    }
    case PV_BOOL: snprintf(buf, len, "%s", v->b ? "true" : "false"); break;
    case PV_MAP: snprintf(buf, len, "a mapping"); break;
    case PV_LIST: snprintf(buf, len, "a list"); break;
    case PV_NULL: snprintf(buf, len, "null"); break;
    default: snprintf(buf, len, "a value of another kind"); break;
    }
    return buf;
}

static bool numeric(rules_ptype t) {
    return t == RULES_P_INTEGER || t == RULES_P_NUMBER;
}

/* 0 when V is a valid scalar of type T within [MIN, MAX]; else -1 with ERR. */
static int check_scalar(rules_ptype t, bool has_min, double min, bool has_max, double max,
                        const pval *v, char *err, size_t errlen) {
    char show[128];
    bool ok;

    switch (t) {
    case RULES_P_INTEGER: ok = v->kind == PV_NUM && v->isint; break;
    case RULES_P_NUMBER: ok = v->kind == PV_NUM && isfinite(v->num); break;
    case RULES_P_STRING: ok = v->kind == PV_STR; break;
    case RULES_P_BOOLEAN: ok = v->kind == PV_BOOL; break;
    default: ok = false; break;
    }
    if (!ok) {
        snprintf(err, errlen, "expected %s, got %s", type_articles[t],
                 pv_show(v, show, sizeof(show)));
        return -1;
    }
    if (numeric(t) && has_min && v->num < min) {
        snprintf(err, errlen, "%.17g is under the minimum %.17g", v->num, min);
        return -1;
    }
    if (numeric(t) && has_max && v->num > max) {
        snprintf(err, errlen, "%.17g is over the maximum %.17g", v->num, max);
        return -1;
    }
    return 0;
}

static int check_param(const rules_param *p, const pval *v, char *err, size_t errlen) {
    if (p->type == RULES_P_MAP) {
        char show[128];

        if (v->kind == PV_MAP) return 0; /* its values are checked one by one */
        snprintf(err, errlen, "expected a mapping of key: %s, got %s", type_names[p->values],
                 pv_show(v, show, sizeof(show)));
        return -1;
    }
    return check_scalar(p->type, p->has_min, p->min, p->has_max, p->max, v, err, errlen);
}

/* ---- declarations ---------------------------------------------------------- */

static int type_of(const char *s, bool map_ok) {
    for (int t = 0; t <= (map_ok ? RULES_P_MAP : RULES_P_BOOLEAN); t++)
        if (strcmp(s, type_names[t]) == 0) return t;
    return -1;
}

static int key_ok(const char *s, size_t len) {
    if (len == 0 || len > RULES_NAME_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c <= 0x20 || c >= 0x7f) return 0;
    }
    return 1;
}

#define DERR(...) rules_eb_add(a->eb, a->file, d->line, __VA_ARGS__)

/* The declaration at the top of the stack, of key D->key. */
static void parse_decl(lua_State *L, int anchor, struct rules_load *a, struct rules_pdecl *d) {
    static const char *const fields[] = { "type",        "default", "min", "max",
                                          "description", "values",  NULL };
    int t = lua_gettop(L), vt;
    char err[RULES_MSG_MAX];

    if (!lua_istable(L, t)) {
        DERR("params.%s must be a table {type = ..., default = ..., min = ..., max = ..., "
             "description = ...}",
             d->key);
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int known = 0;

        lua_pop(L, 1);
        for (int i = 0; lua_type(L, -1) == LUA_TSTRING && fields[i]; i++)
            known |= strcmp(lua_tostring(L, -1), fields[i]) == 0;
        if (!known)
            DERR("params.%s: unknown field %s%.40s%s (expected type, default, min, max, "
                 "description, values)",
                 d->key, lua_type(L, -1) == LUA_TSTRING ? "\"" : "",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1),
                 lua_type(L, -1) == LUA_TSTRING ? "\"" : "");
    }
    d->type = (rules_ptype)-1;
    if (lua_getfield(L, t, "type") != LUA_TSTRING ||
        (int)(d->type = (rules_ptype)type_of(lua_tostring(L, -1), true)) < 0) {
        DERR("params.%s: type must be one of \"integer\", \"number\", \"string\", \"boolean\", "
             "\"map\"",
             d->key);
        lua_settop(L, t);
        return;
    }
    lua_pop(L, 1);
    d->values = RULES_P_NUMBER;
    vt = lua_getfield(L, t, "values");
    if (vt != LUA_TNIL && d->type != RULES_P_MAP) {
        DERR("params.%s: values is for type \"map\" only", d->key);
    } else if (vt != LUA_TNIL &&
               (vt != LUA_TSTRING ||
                (int)(d->values = (rules_ptype)type_of(lua_tostring(L, -1), false)) < 0)) {
        DERR("params.%s: values must be one of \"integer\", \"number\", \"string\", \"boolean\"",
             d->key);
        d->values = RULES_P_NUMBER;
    }
    lua_pop(L, 1);
    for (int m = 0; m < 2; m++) {
        const char *f = m ? "max" : "min";

        vt = lua_getfield(L, t, f);
        if (vt == LUA_TNUMBER && isfinite(lua_tonumber(L, -1)) &&
            (numeric(d->type) || (d->type == RULES_P_MAP && numeric(d->values)))) {
            *(m ? &d->has_max : &d->has_min) = true;
            *(m ? &d->max : &d->min) = (double)lua_tonumber(L, -1);
        } else if (vt != LUA_TNIL) {
            DERR("params.%s: %s must be a number, for a numeric type", d->key, f);
        }
        lua_pop(L, 1);
    }
    if (d->has_min && d->has_max && d->min > d->max)
        DERR("params.%s: min %.17g is over max %.17g", d->key, d->min, d->max);
    vt = lua_getfield(L, t, "description");
    if (vt != LUA_TNIL && (vt != LUA_TSTRING || lua_rawlen(L, -1) > RULES_REASON_MAX))
        DERR("params.%s: description must be a string of at most %d bytes", d->key,
             RULES_REASON_MAX);
    lua_pop(L, 1);
    vt = lua_getfield(L, t, "default");
    if (vt == LUA_TNIL) {
        /* no default: the key is required */
    } else if (d->type == RULES_P_MAP) {
        lua_pushnil(L);
        if (vt != LUA_TTABLE || lua_next(L, -2) != 0)
            DERR("params.%s: the default of a map is {} (its entries come from the config)",
                 d->key);
        else
            d->has_def = true;
    } else {
        pval v = pv_lua(L, -1);

        if (check_scalar(d->type, d->has_min, d->min, d->has_max, d->max, &v, err, sizeof(err)) !=
            0) {
            DERR("params.%s: default: %s", d->key, err);
        } else {
            d->has_def = true;
            d->def_type = vt;
            d->def_num = v.num;
            d->def_int = lua_isinteger(L, -1);
            d->def_bool = v.b;
            if (vt == LUA_TSTRING) d->def_str = rules_anchored(L, anchor);
        }
    }
    lua_settop(L, t);
}

static int decl_cmp(const void *x, const void *y) {
    const struct rules_pdecl *a = x, *b = y;

    return a->line != b->line ? (a->line < b->line ? -1 : 1) : strcmp(a->key, b->key);
}

void rules_params_parse(lua_State *L, int t, int anchor, struct rules_load *a) {
    int vt, p, errors = a->eb->count;
    int sline = rules_key_line(a->src, a->src_len, "params_section", 1, 1);

    lua_pushliteral(L, "params_section");
    vt = lua_rawget(L, t);
    if (vt == LUA_TSTRING && key_ok(lua_tostring(L, -1), lua_rawlen(L, -1))) {
        a->section = rules_anchored(L, anchor);
        a->has_section = true;
    } else if (vt != LUA_TNIL) {
        rules_eb_add(a->eb, a->file, sline,
                     "params_section must be a key of rules.params (1 to %d printable "
                     "characters, no spaces)",
                     RULES_NAME_MAX);
    }
    lua_pop(L, 1);

    lua_pushliteral(L, "params");
    vt = lua_rawget(L, t);
    a->params_line = rules_key_line(a->src, a->src_len, "params", 1, 1);
    if (a->params_line == 0) a->params_line = 1;
    if (vt == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (vt != LUA_TTABLE) {
        rules_eb_add(a->eb, a->file, a->params_line,
                     "params must be a table {key = {type = ..., default = ...}, ...}");
        lua_pop(L, 1);
        return;
    }
    a->has_params = true;
    p = lua_gettop(L);
    /* Keys first, then each declaration in source order: the errors come
     * out in the order of the file, not of Lua's hash table. */
    lua_pushnil(L);
    while (lua_next(L, p)) {
        struct rules_pdecl *d;

        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || !key_ok(lua_tostring(L, -1), lua_rawlen(L, -1))) {
            rules_eb_add(a->eb, a->file, a->params_line,
                         "params: each key must be a parameter name (1 to %d printable "
                         "characters, no spaces)",
                         RULES_NAME_MAX);
            continue;
        }
        if (a->n_decl == RULES_MAX_PARAMS) {
            rules_eb_add(a->eb, a->file, a->params_line, "params: more than %d parameters",
                         RULES_MAX_PARAMS);
            lua_pop(L, 1);
            break;
        }
        d = &a->decl[a->n_decl++];
        memset(d, 0, sizeof(*d));
        lua_pushvalue(L, -1);
        d->key = rules_anchored(L, anchor);
        lua_pop(L, 1);
        d->line = rules_key_line(a->src, a->src_len, d->key, a->params_line, 1);
        if (d->line == 0) d->line = a->params_line;
    }
    qsort(a->decl, a->n_decl, sizeof(a->decl[0]), decl_cmp);
    for (size_t i = 0; i < a->n_decl; i++) {
        lua_pushstring(L, a->decl[i].key);
        lua_rawget(L, p);
        parse_decl(L, anchor, a, &a->decl[i]);
        lua_settop(L, p);
    }
    lua_settop(L, p - 1);
    if (a->eb->count != errors) a->n_decl = 0;
}

int rules_params_build(rules_rule *r, const struct rules_load *a) {
    r->declares = a->has_params;
    if (!a->has_section && !a->has_params) return 0;
    r->params_section = strdup(a->has_section ? a->section : r->name);
    if (r->params_section == NULL) return -1;
    if (a->n_decl == 0) return 0;
    r->params = calloc(a->n_decl, sizeof(*r->params));
    if (r->params == NULL) return -1;
    for (size_t i = 0; i < a->n_decl; i++) {
        const struct rules_pdecl *d = &a->decl[i];
        rules_param *p = &r->params[r->n_params++];

        p->key = strdup(d->key);
        p->type = d->type;
        p->values = d->values;
        p->has_min = d->has_min;
        p->has_max = d->has_max;
        p->min = d->min;
        p->max = d->max;
        p->line = d->line;
        if (d->has_def) {
            if (d->type == RULES_P_MAP)
                p->def = cJSON_CreateObject();
            else if (d->def_type == LUA_TSTRING)
                p->def = cJSON_CreateString(d->def_str);
            else if (d->def_type == LUA_TBOOLEAN)
                p->def = cJSON_CreateBool(d->def_bool);
            else
                p->def = cJSON_CreateNumber(d->def_num);
            if (p->def == NULL) return -1;
        }
        if (p->key == NULL) return -1;
    }
    return 0;
}

/* ---- checking the config ---------------------------------------------------- */

/* Where the value at W (a params_where node) was set; NULL when unknown. */
static const char *where_of(const cJSON *w) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(w, "");

    return cJSON_IsString(s) ? s->valuestring : NULL;
}

/* The params_where node of child KEY of W, else W itself. */
static const cJSON *where_child(const cJSON *w, const char *key) {
    const cJSON *c = w ? cJSON_GetObjectItemCaseSensitive(w, key) : NULL;

    return c ? c : w;
}

/* "critical_threshold, warning_threshold" into BUF. */
static void list_keys(const rules_param *p, size_t n, char *buf, size_t len) {
    size_t off = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < n && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? ", " : "", p[i].key);
}

void rules_params_check(const rules_rule *r, cJSON *params, const cJSON *where, rules_errbuf *eb) {
    const char *secname = r->params_section;
    const cJSON *wsec;
    cJSON *sec;
    char err[RULES_MSG_MAX], show[128];
    int errors = 0;

    if (!r->declares || secname == NULL) return;
    sec = cJSON_GetObjectItemCaseSensitive(params, secname);
    wsec = where ? cJSON_GetObjectItemCaseSensitive(where, secname) : NULL;
    if (sec == NULL) {
        sec = cJSON_AddObjectToObject(params, secname);
        if (sec == NULL) {
            rules_eb_add(eb, r->file, 1, "out of memory");
            return;
        }
    }
    if (!cJSON_IsObject(sec)) {
        pval v = pv_json(sec);

        rules_eb_addat(eb, where_of(wsec),
                       "rules.params.%s: expected a mapping of the parameters rule %s (%s:%d) "
                       "declares, got %s",
                       secname, r->name, r->file, r->params ? r->params[0].line : r->line,
                       pv_show(&v, show, sizeof(show)));
        return;
    }
    for (size_t i = 0; i < r->n_params && errors < MAX_ERRORS_PER_SECTION; i++) {
        const rules_param *p = &r->params[i];
        cJSON *v = cJSON_GetObjectItemCaseSensitive(sec, p->key);
        const cJSON *wv = where_child(wsec, p->key);
        pval pv;

        if (v == NULL) {
            cJSON *def = p->def ? cJSON_Duplicate(p->def, 1) : NULL;

            if (p->def == NULL) {
                errors++;
                rules_eb_addat(eb, where_of(wsec),
                               "rules.params.%s.%s: missing: rule %s (%s:%d) declares it "
                               "without a default",
                               secname, p->key, r->name, r->file, p->line);
            } else if (def == NULL || !cJSON_AddItemToObject(sec, p->key, def)) {
                cJSON_Delete(def);
                rules_eb_add(eb, r->file, 1, "out of memory");
            }
            continue;
        }
        pv = pv_json(v);
        if (check_param(p, &pv, err, sizeof(err)) != 0) {
            errors++;
            rules_eb_addat(eb, where_of(wv), "rules.params.%s.%s: %s (rule %s, %s:%d)", secname,
                           p->key, err, r->name, r->file, p->line);
            continue;
        }
        if (p->type != RULES_P_MAP) continue;
        for (const cJSON *e = v->child; e && errors < MAX_ERRORS_PER_SECTION; e = e->next) {
            pval ev = pv_json(e);

            if (check_scalar(p->values, p->has_min, p->min, p->has_max, p->max, &ev, err,
                             sizeof(err)) == 0)
                continue;
            errors++;
            rules_eb_addat(eb, where_of(where_child(wv, e->string)),
                           "rules.params.%s.%s.%s: %s (rule %s, %s:%d)", secname, p->key, e->string,
                           err, r->name, r->file, p->line);
        }
    }
    if (errors >= MAX_ERRORS_PER_SECTION)
        rules_eb_addat(eb, where_of(wsec), "rules.params.%s: stopping after %d errors", secname,
                       MAX_ERRORS_PER_SECTION);
}

void rules_params_unknown(const rules_rule *rules, size_t n, const cJSON *params,
                          const cJSON *where, rules_errbuf *eb) {
    for (size_t i = 0; i < n; i++) {
        const rules_rule *r = &rules[i];
        const char *secname = r->params_section;
        const char *keys[RULES_MAX_PARAMS * 4];
        const rules_rule *first = r;
        size_t nkeys = 0;
        bool open = false, seen = false;
        const cJSON *sec, *wsec;
        char list[RULES_MSG_MAX / 2];
        int errors = 0;

        if (!r->declares || secname == NULL) continue;
        for (size_t j = 0; j < n && !seen; j++) {
            const rules_rule *o = &rules[j];

            if (o->params_section == NULL || strcmp(o->params_section, secname) != 0) continue;
            if (j < i && o->declares) seen = true; /* done with rule j */
            if (!o->declares) open = true;
        }
        if (seen || open) continue;
        sec = cJSON_GetObjectItemCaseSensitive(params, secname);
        if (!cJSON_IsObject(sec)) continue; /* reported by rules_params_check */
        wsec = where ? cJSON_GetObjectItemCaseSensitive(where, secname) : NULL;
        for (size_t j = i; j < n; j++) {
            const rules_rule *o = &rules[j];

            if (!o->declares || strcmp(o->params_section, secname) != 0) continue;
            for (size_t k = 0; k < o->n_params && nkeys < sizeof(keys) / sizeof(keys[0]); k++)
                keys[nkeys++] = o->params[k].key;
        }
        list_keys(first->params, first->n_params, list, sizeof(list));
        for (const cJSON *e = sec->child; e; e = e->next) {
            const char *hint;
            bool known = false;

            for (size_t k = 0; k < nkeys && !known; k++) known = strcmp(keys[k], e->string) == 0;
            if (known) continue;
            if (++errors > MAX_ERRORS_PER_SECTION) {
                rules_eb_addat(eb, where_of(wsec), "rules.params.%s: stopping after %d errors",
                               secname, MAX_ERRORS_PER_SECTION);
                break;
            }
            hint = rules_suggest(e->string, keys, nkeys);
            rules_eb_addat(
                eb, where_of(where_child(wsec, e->string)),
                "rules.params.%s.%s: unknown parameter: rule %s (%s:%d) declares %s%s%s%s", secname,
                e->string, first->name, first->file,
                first->params ? first->params[0].line : first->line, nkeys ? list : "none",
                hint ? "; did you mean " : "", hint ? hint : "", hint ? "?" : "");
        }
    }
}

/* ---- fixtures ------------------------------------------------------------------ */

/* Inside FN: a shallow copy of the table at IDX, pushed. */
static void shallow_copy(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
}

int rules_params_fixture(lua_State *L, int idx, const struct rules_load *a, char *err,
                         size_t errlen) {
    const char *secname = a->has_section ? a->section : a->name;
    const char *keys[RULES_MAX_PARAMS];
    char msg[RULES_MSG_MAX / 2];
    int t, sec, vt;

    idx = lua_absindex(L, idx);
    shallow_copy(L, idx);
    t = lua_gettop(L);
    if (!a->has_params || secname == NULL) return 0;
    for (size_t i = 0; i < a->n_params; i++) keys[i] = a->params_decl[i].key;
    lua_pushstring(L, secname);
    vt = lua_rawget(L, idx);
    if (vt == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
    } else if (vt != LUA_TTABLE) {
        snprintf(err, errlen, "params.%s must be a table", secname);
        return -1;
    } else {
        shallow_copy(L, -1);
        lua_remove(L, -2);
    }
    sec = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, sec)) {
        const char *hint;
        bool known = false;

        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (size_t i = 0; i < a->n_params && !known; i++)
                known = strcmp(keys[i], lua_tostring(L, -1)) == 0;
        if (known) continue;
        if (lua_type(L, -1) != LUA_TSTRING) {
            snprintf(err, errlen, "params.%s: unexpected %s key", secname, luaL_typename(L, -1));
            return -1;
        }
        hint = rules_suggest(lua_tostring(L, -1), keys, a->n_params);
        snprintf(err, errlen, "params.%s.%.64s: unknown parameter%s%s%s", secname,
                 lua_tostring(L, -1), hint ? "; did you mean " : "", hint ? hint : "",
                 hint ? "?" : "");
        return -1;
    }
    for (size_t i = 0; i < a->n_params; i++) {
        const rules_param *p = &a->params_decl[i];
        pval v;

        lua_pushstring(L, p->key);
        if (lua_rawget(L, sec) == LUA_TNIL) {
            lua_pop(L, 1);
            if (p->def == NULL) {
                snprintf(err, errlen, "params.%s.%s: missing (declared without a default)", secname,
                         p->key);
                return -1;
            }
            lua_pushstring(L, p->key);
            rules_sbx_push_json(L, p->def, NULL, 0);
            lua_rawset(L, sec);
            continue;
        }
        v = pv_lua(L, -1);
        if (check_param(p, &v, msg, sizeof(msg)) != 0) {
            snprintf(err, errlen, "params.%s.%s: %s", secname, p->key, msg);
            return -1;
        }
        if (p->type == RULES_P_MAP) {
            int m = lua_gettop(L);

            lua_pushnil(L);
            while (lua_next(L, m)) {
                pval ev = pv_lua(L, -1);

                if (check_scalar(p->values, p->has_min, p->min, p->has_max, p->max, &ev, msg,
                                 sizeof(msg)) != 0) {
                    snprintf(err, errlen, "params.%s.%s.%.64s: %s", secname, p->key,
                             lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?", msg);
                    return -1;
                }
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    lua_pushstring(L, secname);
    lua_pushvalue(L, sec);
    lua_rawset(L, t);
    lua_settop(L, t);
    return 0;
}

/* ---- channels -------------------------------------------------------------------- */

int rules_channel_known(const cfg *c, const char *channel, char *err, size_t errlen) {
    const char *known[300];
    size_t n = 0, off = 0;
    char list[RULES_MSG_MAX / 2];

    if (c == NULL || c->inventory_channel == NULL) return 0; /* not from cfg_load */
    for (size_t i = 0; i < c->n_bus_channels && n < 256; i++) known[n++] = c->bus_channels[i];
    known[n++] = c->inventory_channel;
    if (c->sales_channel) known[n++] = c->sales_channel;
    known[n++] = RULES_SALE_CHANNEL;
    for (size_t k = 0; k < n; k++)
        if (strcmp(known[k], channel) == 0) return 0;
    list[0] = '\0';
    for (size_t k = 0; k < n && off < sizeof(list); k++) {
        bool dup = false;
        for (size_t j = 0; j < k && !dup; j++) dup = strcmp(known[j], known[k]) == 0;
        if (!dup)
            off += (size_t)snprintf(list + off, sizeof(list) - off, "%s%s", off ? ", " : "",
                                    known[k]);
    }
    const char *hint = rules_suggest(channel, known, n);
    snprintf(err, errlen,
             "unknown channel \"%.128s\": not in bus.channels, bus.inventory_channel or "
             "bus.sales_channel, nor built in (known: %s)%s%s%s",
             channel, list, hint ? "; did you mean " : "", hint ? hint : "", hint ? "?" : "");
    return -1;
}

void rules_channels_check(const struct rules_load *a, const cfg *c, rules_errbuf *eb) {
    int line = rules_key_line(a->src, a->src_len, "on", 1, 1);
    for (size_t i = 0; i < a->n_chan; i++) {
        char msg[RULES_MSG_MAX - 16];
        if (rules_channel_known(c, a->chan[i], msg, sizeof msg) != 0)
            rules_eb_add(eb, a->file, line, "on[%zu]: %s", i + 1, msg);
    }
}
