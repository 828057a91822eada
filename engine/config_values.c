/* config_values.c -- what a config key's YAML node becomes in struct cfg.
 *
 * The other half of the config module: config.c finds a key (in the file's
 * walk, the environment or a --set) and this file turns its YAML node into
 * the typed field, through cfg_set_node() as the key's row in cfg_opts
 * directs. Integers, numbers and booleans are parsed from the scalar's text
 * and range-checked; strings and enums are checked and copied; string lists;
 * rules.params becomes a cJSON tree, under a node budget and a depth limit
 * that also stop alias bombs; inventory.seed becomes SKU -> stock.
 *
 * The defaults and the environment and --set overrides live here too, because
 * they are the same conversion: override text becomes a one-node YAML
 * document handed to the same cfg_set_node(), so a value is accepted or
 * refused identically wherever it comes from, and the leaf forms
 * (`--set rules.params.A.B=V`, `--set inventory.seed.SKU=N`) reuse the tree
 * converters without exporting them. Like config.c, nothing here logs, exits
 * or keeps global state; errors go into the loader's report (cfg_errf()).
 */
#include "nerve/config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <yaml.h>

#include "config_int.h"
#include "nerve/sku.h"

/* ------------------------------------------------------------------------ */
/* Scalars                                                                  */
/* ------------------------------------------------------------------------ */

/* A whole decimal integer: 0, -1 when S is not one, -2 when out of range. */
int cfg_parse_ll(const char *s, long long *out) {
    const char *p = s + (*s == '+' || *s == '-');
    char *end;
    long long v;

    if (!isdigit((unsigned char)*p)) return -1; /* strtoll skips spaces */
    errno = 0;
    v = strtoll(s, &end, 10);
    if (*end) return -1;
    if (errno == ERANGE) return -2;
    *out = v;
    return 0;
}

/* A YAML 1.2 core-schema number without .inf/.nan, which JSON cannot carry:
 * strtod alone would also take hex, "inf", "nan" and leading spaces. Assumes
 * the "C" LC_NUMERIC locale, which nerve never changes. */
static int parse_num(const char *s, double *out) {
    const char *p = s + (*s == '+' || *s == '-');
    size_t digits = 0;
    char *end;
    double v;

    while (isdigit((unsigned char)*p)) p++, digits++;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++) digits++;
    if (!digits) return -1;
    if (*p == 'e' || *p == 'E') {
        p++;
        p += (*p == '+' || *p == '-');
        if (!isdigit((unsigned char)*p)) return -1;
        while (isdigit((unsigned char)*p)) p++;
    }
    if (*p) return -1;
    errno = 0;
    v = strtod(s, &end);
    if (*end) return -1;
    if (!isfinite(v)) return -2;
    *out = v;
    return 0;
}

/* A typed boolean key knows it wants a boolean, so the YAML 1.1 spellings are
 * safe here (unlike in rules.params, where `no` must stay a string). */
static int parse_bool(const char *s) {
    static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no",
                                                                              "off" };
    size_t i;
    for (i = 0; i < 3; i++) {
        if (!strcasecmp(s, yes[i])) return 1;
        if (!strcasecmp(s, no[i])) return 0;
    }
    return -1;
}

static bool is_null_text(const char *s) {
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

bool cfg_is_null(const yaml_node_t *n) {
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           is_null_text((const char *)n->data.scalar.value);
}

const char *cfg_kind(const yaml_node_t *n) {
    return n->type == YAML_MAPPING_NODE    ? "a mapping"
           : n->type == YAML_SEQUENCE_NODE ? "a list"
                                           : "a string";
}

static const char *scalar(const yaml_node_t *n) {
    return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* libyaml allows "\0" escapes; a C string would silently cut there. */
bool cfg_has_nul(const yaml_node_t *n) {
    return strlen((const char *)n->data.scalar.value) != n->data.scalar.length;
}

/* ------------------------------------------------------------------------ */
/* Setting values                                                           */
/* ------------------------------------------------------------------------ */

void cfg_free_list(char **v, size_t n) {
    size_t i;
    if (!v) return;
    for (i = 0; i < n; i++) free(v[i]);
    free(v);
}

void cfg_free_seed(cfg_seed *v, size_t n) {
    size_t i;
    if (!v) return;
    for (i = 0; i < n; i++) free(v[i].sku);
    free(v);
}

static void set_string(loader *L, const opt *o, const char *s) {
    char *dup = strdup(s);
    if (!dup) {
        L->oom = true;
        return;
    }
    free(*FIELD(L->c, o, char *));
    *FIELD(L->c, o, char *) = dup;
}

static void set_integer(const opt *o, cfg *c, long long v) {
    switch (o->type) {
    case T_INT: *FIELD(c, o, int) = (int)v; break;
    case T_LONG: *FIELD(c, o, long) = (long)v; break;
    case T_BOOL: *FIELD(c, o, bool) = v != 0; break;
    default: *FIELD(c, o, long long) = v; break;
    }
}

/* Add the string S of LEN bytes, entry IDX of list KEY, to V[*N]; false
 * after reporting a bad entry. */
static bool list_add(loader *L, char **v, size_t *n, const char *s, size_t len, const char *key,
                     size_t idx, const origin *at) {
    char ek[PATHBUF], q[QBUF];
    size_t i;

    snprintf(ek, sizeof ek, "%s[%zu]", key, idx);
    if (*n >= MAX_LIST) {
        cfg_errf(L, at, key, "more than %d entries", MAX_LIST);
        return false;
    }
    if (!len) {
        cfg_errf(L, at, ek, "must not be empty");
        return false;
    }
    if (len > MAX_STR) {
        cfg_errf(L, at, ek, "longer than %d bytes", MAX_STR);
        return false;
    }
    if (memchr(s, '\0', len)) {
        cfg_errf(L, at, ek, "contains a NUL byte");
        return false;
    }
    for (i = 0; i < *n; i++)
        if (strlen(v[i]) == len && !memcmp(v[i], s, len)) {
            cfg_errf(L, at, ek, "duplicate entry %s", cfg_quote(q, v[i]));
            return false;
        }
    if (!(v[*n] = strndup(s, len))) {
        L->oom = true;
        return false;
    }
    (*n)++;
    return true;
}

/* A YAML list, or (from the environment or --set only) a comma-separated
 * string; null is the empty list. */
static bool set_list(loader *L, const opt *o, const char *key, yaml_document_t *d, yaml_node_t *n,
                     const origin *base) {
    origin at = cfg_at_node(base, n);
    char **v = calloc(MAX_LIST, sizeof *v);
    size_t cnt = 0;
    bool ok = true;

    if (!v) {
        L->oom = true;
        return false;
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        yaml_node_item_t *first = n->data.sequence.items.start, *it;
        if (n->data.sequence.items.top - first > MAX_LIST) {
            cfg_errf(L, &at, key, "more than %d entries", MAX_LIST);
            ok = false;
        }
        for (it = first; cnt < MAX_LIST && it < n->data.sequence.items.top; it++) {
            yaml_node_t *e = cfg_node(d, *it);
            origin eat = cfg_at_node(base, e);
            const char *s = scalar(e);
            if (!s || cfg_is_null(e)) {
                char ek[PATHBUF];
                snprintf(ek, sizeof ek, "%s[%zu]", key, (size_t)(it - first));
                cfg_errf(L, &eat, ek, "expected a string (got %s)", s ? "null" : cfg_kind(e));
                ok = false;
            } else if (!list_add(L, v, &cnt, s, e->data.scalar.length, key, (size_t)(it - first),
                                 &eat)) {
                ok = false;
            }
        }
    } else if (cfg_is_null(n)) {
        /* the empty list */
    } else if (n->type == YAML_SCALAR_NODE && base->kind != AT_FILE) {
        const char *s = scalar(n), *end;
        size_t idx;
        for (idx = 0;; idx++) {
            size_t len;
            while (*s == ' ') s++;
            end = strchr(s, ',');
            len = end ? (size_t)(end - s) : strlen(s);
            while (len && s[len - 1] == ' ') len--;
            if (!(ok = list_add(L, v, &cnt, s, len, key, idx, &at)) || !end) break;
            s = end + 1;
        }
    } else {
        cfg_errf(L, &at, key, "expected a list (got %s)", cfg_kind(n));
        ok = false;
    }
    if (!ok) {
        cfg_free_list(v, cnt);
        return false;
    }
    cfg_free_list(*FIELD(L->c, o, char **), *COUNT(L->c, o));
    *FIELD(L->c, o, char **) = v;
    *COUNT(L->c, o) = cnt;
    return true;
}

/* Append ".NAME" (or "[I]" when NAME is NULL) to the dotted PATH of length
 * LEN in a PATHBUF buffer; returns the new length. */
static size_t path_push(char *path, size_t len, const char *name, size_t i) {
    return cfg_advance(len,
                       name ? snprintf(path + len, PATHBUF - len, ".%s", name)
                            : snprintf(path + len, PATHBUF - len, "[%zu]", i),
                       PATHBUF);
}

/* A rules.params scalar, resolved as YAML 1.2's core schema does: quoted is
 * always a string; plain null/~/empty, true/false, integers and decimal
 * numbers become JSON null, booleans and numbers (integers beyond 2^53 lose
 * precision: cJSON numbers are doubles); anything else is a string. */
static cJSON *scalar_json(const yaml_node_t *n) {
    const char *s = (const char *)n->data.scalar.value;
    long long v;
    double dv;

    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return cJSON_CreateString(s);
    if (is_null_text(s)) return cJSON_CreateNull();
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) return cJSON_CreateTrue();
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE"))
        return cJSON_CreateFalse();
    if (cfg_parse_ll(s, &v) == 0) return cJSON_CreateNumber((double)v);
    if (parse_num(s, &dv) == 0) return cJSON_CreateNumber(dv);
    return cJSON_CreateString(s);
}

/* A params_where node for a value set at AT: {"": "FILE:LINE:COL"} or
 * {"": "--set KEY=VALUE"} (the value cut at MAX_SHOW bytes). NULL when out
 * of memory (L->oom set) or when AT is neither. */
static cJSON *where_node(loader *L, const origin *at) {
    char buf[MAX_KEY + MAX_SHOW + 64];
    cJSON *w;

    if (at->kind == AT_FILE)
        snprintf(buf, sizeof buf, "%s:%d:%d", at->file, at->line, at->col);
    else if (at->kind == AT_SET && L->set_arg)
        snprintf(buf, sizeof buf, "--set %.*s%s", MAX_KEY + MAX_SHOW, L->set_arg,
                 strlen(L->set_arg) > MAX_KEY + MAX_SHOW ? "..." : "");
    else
        return NULL;
    if (!(w = cJSON_CreateObject()) || !cJSON_AddStringToObject(w, "", buf)) {
        cJSON_Delete(w);
        L->oom = true;
        return NULL;
    }
    return w;
}

/* Convert node N at nesting DEPTH (rules.params itself is 0) whose dotted
 * path is PATH[0..LEN). Reports every bad node below N; returns NULL if
 * there was any (or out of memory). Aliases are followed, so L->budget and
 * MAX_DEPTH are what stop alias bombs and self-referencing anchors. */
static cJSON *to_json(loader *L, yaml_document_t *d, yaml_node_t *n, int depth, char *path,
                      size_t len, const origin *base, cJSON **where) {
    origin at = cfg_at_node(base, n);
    cJSON *j = NULL, *child, *cw = NULL;
    bool ok = true;

    *where = NULL;

    if (--L->budget < 0) {
        if (L->budget == -1) cfg_errf(L, &at, "rules.params", "more than %d values", MAX_NODES);
        return NULL;
    }
    if (depth > MAX_DEPTH) {
        cfg_errf(L, &at, path, "nested deeper than %d levels", MAX_DEPTH);
        return NULL;
    }
    if (n->type == YAML_SCALAR_NODE) {
        if (cfg_has_nul(n)) {
            cfg_errf(L, &at, path, "contains a NUL byte");
            return NULL;
        }
        if (n->data.scalar.length > MAX_STR) {
            cfg_errf(L, &at, path, "longer than %d bytes", MAX_STR);
            return NULL;
        }
        if (!(j = scalar_json(n))) L->oom = true;
        *where = where_node(L, &at);
        return j;
    }
    *where = where_node(L, &at);
    if (n->type == YAML_SEQUENCE_NODE) {
        yaml_node_item_t *it;
        if (!(j = cJSON_CreateArray())) {
            L->oom = true;
            return NULL;
        }
        for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
            size_t l = path_push(path, len, NULL, (size_t)(it - n->data.sequence.items.start));
            child = to_json(L, d, cfg_node(d, *it), depth + 1, path, l, base, &cw);
            cJSON_Delete(cw); /* list items are shown at the list's place */
            path[len] = '\0';
            if (!child || !cJSON_AddItemToArray(j, child)) {
                cJSON_Delete(child);
                ok = false;
            }
        }
    } else {
        yaml_node_pair_t *p;
        if (cfg_map_too_big(L, n, base, path)) return NULL;
        if (!(j = cJSON_CreateObject())) {
            L->oom = true;
            return NULL;
        }
        for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            const char *k = cfg_key_text(L, cfg_node(d, p->key), base, path);
            size_t l;
            if (!k) {
                ok = false;
                continue;
            }
            l = path_push(path, len, k, 0);
            if (cfg_duplicate(L, d, n, p, base, path)) {
                ok = false;
            } else {
                child = to_json(L, d, cfg_node(d, p->value), depth + 1, path, l, base, &cw);
                if (!child || !cJSON_AddItemToObject(j, k, child)) {
                    cJSON_Delete(child);
                    ok = false;
                }
                if (cw && (!*where || !cJSON_AddItemToObject(*where, k, cw))) cJSON_Delete(cw);
            }
            path[len] = '\0';
        }
    }
    if (!ok) {
        cJSON_Delete(j);
        cJSON_Delete(*where);
        *where = NULL;
        return NULL;
    }
    return j;
}

/* rules.params as a whole: a mapping, or null for an empty one. */
static bool set_params(loader *L, const opt *o, const char *key, yaml_document_t *d, yaml_node_t *n,
                       const origin *base) {
    origin at = cfg_at_node(base, n);
    char path[PATHBUF];
    cJSON *j, *w = NULL;

    if (n->type != YAML_MAPPING_NODE && !cfg_is_null(n)) {
        cfg_errf(L, &at, key, "expected a mapping (got %s)", cfg_kind(n));
        return false;
    }
    snprintf(path, sizeof path, "%s", key);
    L->budget = MAX_NODES;
    j = cfg_is_null(n) ? cJSON_CreateObject() : to_json(L, d, n, 0, path, strlen(path), base, &w);
    if (!j) {
        if (cfg_is_null(n)) L->oom = true;
        return false;
    }
    cJSON_Delete(*FIELD(L->c, o, cJSON *));
    *FIELD(L->c, o, cJSON *) = j;
    cJSON_Delete(L->c->params_where);
    L->c->params_where = w;
    return true;
}

/* The stock of SKU from node N; false after reporting it. */
static bool seed_stock(loader *L, const char *sku, const yaml_node_t *n, const origin *base,
                       long long *out) {
    origin at = cfg_at_node(base, n);
    const char *s = scalar(n);
    char key[PATHBUF], q[QBUF];

    if (s && cfg_parse_ll(s, out) == 0 && *out >= 0) return true;
    snprintf(key, sizeof key, "inventory.seed.%s", sku);
    cfg_errf(L, &at, key, "expected a non-negative integer (got %s)",
             s ? cfg_quote(q, s) : cfg_kind(n));
    return false;
}

static bool seed_sku(loader *L, const char *sku, const origin *at) {
    char q[QBUF];
    /* Exactly the sale endpoint's rule: a seed no sale could use is an error. */
    size_t n = strlen(sku);
    if (sku_valid(sku, n)) return true;
    if (n >= 1 && n <= SKU_MAX && strspn(sku, "._:-") == n)
        cfg_errf(L, at, "inventory.seed", "invalid SKU %s (needs a letter or digit)",
                 cfg_quote(q, sku));
    else
        cfg_errf(L, at, "inventory.seed", "invalid SKU %s (want 1 to %d of A-Z a-z 0-9 . _ : -)",
                 cfg_quote(q, sku), SKU_MAX);
    return false;
}

/* inventory.seed as a whole: a mapping SKU -> stock, or null for none. */
static bool set_seed(loader *L, const opt *o, const char *key, yaml_document_t *d, yaml_node_t *n,
                     const origin *base) {
    origin at = cfg_at_node(base, n);
    yaml_node_pair_t *p;
    cfg_seed *v;
    size_t cnt = 0;
    bool ok = true;

    if (cfg_is_null(n)) {
        cfg_free_seed(L->c->seed, L->c->n_seed);
        L->c->seed = NULL;
        L->c->n_seed = 0;
        return true;
    }
    if (n->type != YAML_MAPPING_NODE) {
        cfg_errf(L, &at, key, "expected a mapping of SKU to stock (got %s)", cfg_kind(n));
        return false;
    }
    if (cfg_map_too_big(L, n, base, key)) return false;
    if (!(v = calloc((size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start) + 1,
                     sizeof *v))) {
        L->oom = true;
        return false;
    }
    for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = cfg_node(d, p->key);
        const char *sku = cfg_key_text(L, k, base, key);
        origin kat = cfg_at_node(base, k);
        char dk[PATHBUF];
        long long stock;

        if (!sku || !seed_sku(L, sku, &kat)) {
            ok = false;
            continue;
        }
        snprintf(dk, sizeof dk, "%s.%s", key, sku);
        if (cfg_duplicate(L, d, n, p, base, dk) ||
            !seed_stock(L, sku, cfg_node(d, p->value), base, &stock)) {
            ok = false;
            continue;
        }
        if (!(v[cnt].sku = strdup(sku))) {
            L->oom = true;
            ok = false;
            break;
        }
        v[cnt++].stock = stock;
    }
    if (!ok) {
        cfg_free_seed(v, cnt);
        return false;
    }
    cfg_free_seed(*FIELD(L->c, o, cfg_seed *), *COUNT(L->c, o));
    *FIELD(L->c, o, cfg_seed *) = v;
    *COUNT(L->c, o) = cnt;
    return true;
}

/* Set key O (spelled KEY) from node N; reports and returns on a bad value,
 * leaving the previous value. Integers, numbers and booleans are read from
 * the scalar's text whatever its quoting: the table says what the key is. */
void cfg_set_node(loader *L, const opt *o, const char *key, yaml_document_t *d, yaml_node_t *n,
                  const origin *base) {
    origin at = cfg_at_node(base, n);
    const char *s = scalar(n);
    char q[QBUF], msg[512];
    long long v;
    double dv;
    int rc;

    switch (o->type) {
    case T_INT:
    case T_LONG:
    case T_LLONG:
        if (!s) {
            cfg_errf(L, &at, key, "expected an integer (got %s)", cfg_kind(n));
            return;
        }
        if ((rc = cfg_parse_ll(s, &v)) == -1) {
            cfg_errf(L, &at, key, "expected an integer (got %s)", cfg_quote(q, s));
            return;
        }
        if (rc == -2 || v < o->min || v > o->max) {
            cfg_errf(L, &at, key, "must be between %lld and %lld (got %.*s)", o->min, o->max,
                     MAX_SHOW, s);
            return;
        }
        set_integer(o, L->c, v);
        break;
    case T_DOUBLE:
        if (!s) {
            cfg_errf(L, &at, key, "expected a number (got %s)", cfg_kind(n));
            return;
        }
        if ((rc = parse_num(s, &dv)) == -1) {
            cfg_errf(L, &at, key, "expected a number (got %s)", cfg_quote(q, s));
            return;
        }
        if (rc == -2 || dv < o->dmin || dv > o->dmax) {
            cfg_errf(L, &at, key, "must be between %g and %g (got %.*s)", o->dmin, o->dmax,
                     MAX_SHOW, s);
            return;
        }
        *FIELD(L->c, o, double) = dv;
        break;
    case T_BOOL:
        if (!s) {
            cfg_errf(L, &at, key, "expected true or false (got %s)", cfg_kind(n));
            return;
        }
        if ((rc = parse_bool(s)) < 0) {
            cfg_errf(L, &at, key, "expected true or false (got %s)", cfg_quote(q, s));
            return;
        }
        set_integer(o, L->c, rc);
        break;
    case T_STR:
        if (!s) {
            cfg_errf(L, &at, key, "expected a string (got %s)", cfg_kind(n));
            return;
        }
        if (cfg_is_null(n)) s = ""; /* `pidfile:` or `~`: none */
        if (cfg_has_nul(n)) {
            cfg_errf(L, &at, key, "contains a NUL byte");
            return;
        }
        if ((long long)strlen(s) > o->max) {
            cfg_errf(L, &at, key, "longer than %lld bytes", o->max);
            return;
        }
        if ((long long)strlen(s) < o->min) {
            cfg_errf(L, &at, key, "must not be empty");
            return;
        }
        if (o->check && o->check(s, msg, sizeof msg) < 0) {
            cfg_errf(L, &at, key, "%s", msg);
            return;
        }
        set_string(L, o, s);
        break;
    case T_ENUM: {
        const char *const *c;
        size_t off = 0;
        for (c = o->choices; s && *c; c++)
            if (!strcasecmp(s, *c)) break;
        if (s && *c) {
            set_string(L, o, *c);
            break;
        }
        for (c = o->choices; *c && off < sizeof msg; c++)
            off += (size_t)snprintf(msg + off, sizeof msg - off, "%s%s", off ? ", " : "", *c);
        cfg_errf(L, &at, key, "must be one of %s (got %s)", msg, s ? cfg_quote(q, s) : cfg_kind(n));
        return;
    }
    case T_LIST:
        if (!set_list(L, o, key, d, n, base)) return;
        break;
    case T_PARAMS:
        if (!set_params(L, o, key, d, n, base)) return;
        break;
    case T_SEED:
        if (!set_seed(L, o, key, d, n, base)) return;
        break;
    }
    L->at[o - cfg_opts] = at;
}

/* ------------------------------------------------------------------------ */
/* Overrides                                                                */
/* ------------------------------------------------------------------------ */

/* Environment variables that override a key (empty = unset). */
static const struct {
    const char *env, *key;
} env_keys[] = {
    { "REDIS_URL", "redis.url" },         { "NERVE_LISTEN", "server.listen" },
    { "NERVE_RULES_DIR", "rules.dir" },   { "NERVE_PANIC_URL", "panic.webhook_url" },
    { "NERVE_LEDGER_URL", "ledger.url" }, { "NERVE_RESUME_URL", "panic.resume_url" },
};

/* The YAML node for override text VAL into D, or NULL after reporting it. A
 * value whose first character is in YAML_START (" ' for a quoted string, and
 * also [ { for keys that take a list or mapping) is parsed as YAML; anything
 * else is taken verbatim as a plain scalar, so that `--set
 * server.cors_origin=*`, a URL or `[::1]:8011` need no quoting. D is always
 * safe to yaml_document_delete(). */
static yaml_node_t *value_node(loader *L, yaml_document_t *d, const char *val,
                               const char *yaml_start, const origin *at, const char *key) {
    size_t len = strlen(val);
    int id;

    memset(d, 0, sizeof *d);
    if (len > MAX_VALUE_BYTES) {
        cfg_errf(L, at, key, "longer than %ld bytes", MAX_VALUE_BYTES);
        return NULL;
    }
    if (*val && strchr(yaml_start, *val)) {
        if (cfg_load_doc(L, d, val, len, at, key) < 0) return NULL;
        return yaml_document_get_root_node(d);
    }
    if (!yaml_document_initialize(d, NULL, NULL, NULL, 1, 1)) {
        L->oom = true;
        return NULL;
    }
    if (!(id = yaml_document_add_scalar(d, NULL, (const yaml_char_t *)val, (int)len,
                                        YAML_PLAIN_SCALAR_STYLE))) {
        cfg_errf(L, at, key, "not valid UTF-8");
        return NULL;
    }
    return cfg_node(d, id);
}

/* --set rules.params.A.B=VALUE: set one leaf, creating the mappings on the
 * way. PATH is "A.B". */
static void set_param_leaf(loader *L, const char *key, const char *path, const char *val,
                           const origin *at) {
    char buf[PATHBUF], full[PATHBUF], *name, *dot;
    cJSON *obj = L->c->params, *j, *sub, *wobj, *wsub, *w = NULL;
    yaml_document_t d;
    yaml_node_t *n;
    int depth = 1;

    if (strlen(path) >= sizeof buf) {
        cfg_errf(L, at, key, "key too long");
        return;
    }
    memcpy(buf, path, strlen(path) + 1);
    snprintf(full, sizeof full, "rules.params");
    if (!L->c->params_where && !(L->c->params_where = where_node(L, at))) return;
    wobj = L->c->params_where;
    for (name = buf; (dot = strchr(name, '.')); name = dot + 1, depth++) {
        *dot = '\0';
        if (!*name || depth > MAX_DEPTH) break;
        path_push(full, strlen(full), name, 0);
        if (!(sub = cJSON_GetObjectItemCaseSensitive(obj, name))) {
            if (!(sub = cJSON_AddObjectToObject(obj, name))) {
                L->oom = true;
                return;
            }
        } else if (!cJSON_IsObject(sub)) {
            cfg_errf(L, at, key, "%s is not a mapping", full);
            return;
        }
        obj = sub;
        /* The where tree follows; a mapping created here is the --set's. */
        if (!(wsub = cJSON_GetObjectItemCaseSensitive(wobj, name))) {
            if (!(wsub = where_node(L, at)) || !cJSON_AddItemToObject(wobj, name, wsub)) {
                cJSON_Delete(wsub);
                L->oom = true;
                return;
            }
        }
        wobj = wsub;
    }
    if (!*name || depth > MAX_DEPTH) {
        cfg_errf(L, at, key, "path parts must be non-empty, at most %d of them", MAX_DEPTH);
        return;
    }
    if ((n = value_node(L, &d, val, TREE_START, at, key))) {
        char p[PATHBUF];
        snprintf(p, sizeof p, "%s", key);
        L->budget = MAX_NODES;
        if ((j = to_json(L, &d, n, depth, p, strlen(p), at, &w))) {
            bool ok = cJSON_GetObjectItemCaseSensitive(obj, name)
                          ? cJSON_ReplaceItemInObjectCaseSensitive(obj, name, j)
                          : cJSON_AddItemToObject(obj, name, j);
            if (!ok) {
                cJSON_Delete(j);
                L->oom = true;
            }
            ok = w && (cJSON_GetObjectItemCaseSensitive(wobj, name)
                           ? cJSON_ReplaceItemInObjectCaseSensitive(wobj, name, w)
                           : cJSON_AddItemToObject(wobj, name, w));
            if (!ok) cJSON_Delete(w);
        }
    }
    yaml_document_delete(&d);
}

/* --set inventory.seed.SKU=N: add or replace one SKU (which may contain
 * dots, so the rest of the key is the SKU). */
static void set_seed_leaf(loader *L, const char *key, const char *sku, const char *val,
                          const origin *at) {
    cfg *c = L->c;
    yaml_document_t d;
    yaml_node_t *n;
    long long stock;
    size_t i;

    if (!seed_sku(L, sku, at)) return;
    if ((n = value_node(L, &d, val, "", at, key)) && seed_stock(L, sku, n, at, &stock)) {
        for (i = 0; i < c->n_seed && strcmp(c->seed[i].sku, sku); i++)
            ;
        if (i < c->n_seed) {
            c->seed[i].stock = stock;
        } else if (c->n_seed >= MAX_MAP) {
            cfg_errf(L, at, "inventory.seed", "more than %d entries", MAX_MAP);
        } else {
            cfg_seed *v = realloc(c->seed, (c->n_seed + 1) * sizeof *v);
            if (!v) {
                L->oom = true;
                goto err;
            }
            c->seed = v;
            if (!(v[c->n_seed].sku = strdup(sku))) {
                L->oom = true;
                goto err;
            }
            v[c->n_seed++].stock = stock;
        }
    }
err:
    yaml_document_delete(&d);
}

void cfg_apply_set(loader *L, const char *arg) {
    origin at = { .kind = AT_SET };
    L->set_arg = arg;
    const char *eq = strchr(arg, '=');
    char key[MAX_KEY + 1];
    size_t klen = eq ? (size_t)(eq - arg) : strlen(arg);
    const opt *o;

    snprintf(key, sizeof key, "%.*s", (int)(klen < MAX_KEY ? klen : MAX_KEY), arg);
    if (!eq || !klen) {
        cfg_errf(L, &at, key, "expected dotted.key=value");
        return;
    }
    if (klen > MAX_KEY) {
        cfg_errf(L, &at, key, "key longer than %d bytes", MAX_KEY);
        return;
    }
    if ((o = cfg_find_opt(key))) {
        yaml_document_t d;
        bool tree = o->type == T_LIST || o->type == T_PARAMS || o->type == T_SEED;
        yaml_node_t *n = value_node(L, &d, eq + 1, tree ? TREE_START : "\"'", &at, key);
        if (n) cfg_set_node(L, o, key, &d, n, &at);
        yaml_document_delete(&d);
    } else if (!strncmp(key, "rules.params.", 13)) {
        set_param_leaf(L, key, key + 13, eq + 1, &at);
    } else if (!strncmp(key, "inventory.seed.", 15)) {
        set_seed_leaf(L, key, key + 15, eq + 1, &at);
    } else {
        cfg_unknown_key(L, &at, key);
    }
}

/* NERVE_ADMIN_TOKENS=name:token,...: the named admin tokens. Messages name
 * the entry (1-based) and the name, never a token. */
static void apply_admin_tokens(loader *L) {
    const char *v = getenv("NERVE_ADMIN_TOKENS");
    origin at = { .kind = AT_ENV, .name = "NERVE_ADMIN_TOKENS" };
    if (!v || !*v) return;
    if (strlen(v) > (size_t)CFG_ADMIN_TOKENS_MAX * (MAX_STR + CFG_TOKEN_NAME_MAX + 2)) {
        cfg_errf(L, &at, NULL, "too long");
        return;
    }
    cfg *c = L->c;
    size_t n = 1;
    for (const char *p = v; *p; p++) n += *p == ',';
    if (n > CFG_ADMIN_TOKENS_MAX) {
        cfg_errf(L, &at, NULL, "at most %d tokens (got %zu)", CFG_ADMIN_TOKENS_MAX, n);
        return;
    }
    if (!(c->admin_tokens = calloc(n, sizeof *c->admin_tokens))) {
        L->oom = true;
        return;
    }
    const char *p = v;
    for (size_t i = 0; i < n; i++) {
        const char *end = strchr(p, ','), *colon;
        size_t len = end ? (size_t)(end - p) : strlen(p);
        colon = memchr(p, ':', len);
        size_t nl = colon ? (size_t)(colon - p) : 0, tl = colon ? len - nl - 1 : 0;
        const char *why = NULL;
        /* Only a valid name is shown: a token mistyped without its name
         * could otherwise show up in a message. */
        bool name_ok = colon && nl > 0 && nl <= CFG_TOKEN_NAME_MAX &&
                       strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789._-") >= nl;
        if (!colon || nl == 0 || tl == 0)
            why = "expected NAME:TOKEN";
        else if (!name_ok)
            why = "the name must be 1-64 bytes of A-Z a-z 0-9 . _ -";
        else if (tl > MAX_STR)
            why = "the token is longer than 4096 bytes";
        for (size_t k = 0; !why && k < tl; k++)
            if ((unsigned char)colon[1 + k] < 0x20 || colon[1 + k] == 0x7f)
                why = "the token contains a control character";
        for (size_t k = 0; !why && k < c->n_admin_tokens; k++) {
            const cfg_token *t = &c->admin_tokens[k];
            if (strlen(t->name) == nl && memcmp(t->name, p, nl) == 0)
                why = "duplicate name";
            else if (strlen(t->token) == tl && memcmp(t->token, colon + 1, tl) == 0)
                why = "the same token as an earlier entry (who used it could not be told)";
        }
        if (!why && nl == 5 && memcmp(p, "admin", 5) == 0 && c->admin_token)
            why = "the name admin is NERVE_ADMIN_TOKEN's";
        if (!why && c->admin_token && strlen(c->admin_token) == tl &&
            memcmp(c->admin_token, colon + 1, tl) == 0)
            why = "the same token as NERVE_ADMIN_TOKEN";
        if (why) {
            cfg_errf(L, &at, NULL, "entry %zu%s%.*s%s: %s", i + 1, name_ok ? " (" : "",
                     name_ok ? (int)nl : 0, p, name_ok ? ")" : "", why);
        } else {
            cfg_token *t = &c->admin_tokens[c->n_admin_tokens];
            t->name = strndup(p, nl);
            t->token = strndup(colon + 1, tl);
            if (!t->name || !t->token) L->oom = true;
            c->n_admin_tokens++;
        }
        p = end ? end + 1 : p + len;
    }
}

void cfg_apply_env(loader *L) {
    static const char *const secrets[] = { "NERVE_ADMIN_TOKEN", "NERVE_PANIC_TOKEN",
                                           "NERVE_SENTINEL_PASSWORD" };
    char **dst[] = { &L->c->admin_token, &L->c->panic_token, &L->c->sentinel_password };
    size_t i;

    for (i = 0; i < sizeof env_keys / sizeof env_keys[0]; i++) {
        const char *v = getenv(env_keys[i].env);
        origin at = { .kind = AT_ENV, .name = env_keys[i].env };
        yaml_document_t d;
        yaml_node_t *n;
        if (!v || !*v) continue;
        if ((n = value_node(L, &d, v, "", &at, env_keys[i].key)))
            cfg_set_node(L, cfg_find_opt(env_keys[i].key), env_keys[i].key, &d, n, &at);
        yaml_document_delete(&d);
    }
    for (i = 0; i < sizeof secrets / sizeof secrets[0]; i++) {
        const char *v = getenv(secrets[i]);
        origin at = { .kind = AT_ENV, .name = secrets[i] };
        if (!v || !*v) continue;
        if (strlen(v) > MAX_STR) {
            cfg_errf(L, &at, NULL, "longer than %d bytes", MAX_STR);
            continue;
        }
        if (!(*dst[i] = strdup(v))) L->oom = true;
    }
    apply_admin_tokens(L);
}

void cfg_set_defaults(loader *L) {
    cfg *c = L->c;
    size_t i;

    for (i = 0; i < CFG_NOPTS; i++) {
        const opt *o = &cfg_opts[i];
        switch (o->type) {
        case T_INT:
            assert(o->min >= INT_MIN && o->max <= INT_MAX);
            /* fall through */
        case T_LONG:
        case T_LLONG:
        case T_BOOL: set_integer(o, c, o->idef); break;
        case T_DOUBLE: *FIELD(c, o, double) = o->ddef; break;
        case T_STR:
        case T_ENUM: set_string(L, o, o->sdef); break;
        case T_LIST: {
            origin at = { .kind = AT_DEFAULT };
            yaml_document_t d;
            yaml_node_t *n = value_node(L, &d, o->sdef, "", &at, o->key);
            if (n) set_list(L, o, o->key, &d, n, &at);
            yaml_document_delete(&d);
            break;
        }
        case T_PARAMS:
            if (!(*FIELD(c, o, cJSON *) = cJSON_CreateObject())) L->oom = true;
            break;
        case T_SEED: break;
        }
    }
}
