/* ledger.c -- the ledger's common half (see ledger.h): opening either
 * backend, the migrations, turning stream entries into rows, and the
 * queries of the commands. Every statement is written here once, with $N
 * parameters, and runs on SQLite and PostgreSQL alike (ledger_int.h).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cjson/cJSON.h>

#include "ledger_int.h"
#include "nerve/sale.h"

void ledger_seterr(ledger *l, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->err, sizeof l->err, fmt, ap);
    va_end(ap);
    l->refused = 0; /* the backend says so after, when it is */
}

const char *ledger_table_name(ledger_table t) {
    return (unsigned)t < LEDGER_TABLES ? ledger_tables[t].name : "?";
}

int ledger_table_of(const char *name) {
    for (int t = 0; t < LEDGER_TABLES; t++)
        if (strcmp(name, ledger_tables[t].name) == 0) return t;
    return -1;
}

const char *ledger_backend(const ledger *l) {
    return l->ops->name;
}
const char *ledger_where(const ledger *l) {
    return l->where;
}
int ledger_refused(const ledger *l) {
    return l->refused;
}

const char *ledger_errstr(const ledger *l) {
    return l ? l->err : "";
}

/* ---- URL redaction ------------------------------------------------------------------ */

/* Append S[0..n) to OUT (bounded). */
static void put(char *out, size_t outlen, size_t *j, const char *s, size_t n) {
    for (size_t i = 0; i < n && *j + 1 < outlen; i++) out[(*j)++] = s[i];
    out[*j] = 0;
}

void ledger_redact_url(const char *url, char *out, size_t outlen) {
    if (!outlen) return;
    size_t j = 0;
    out[0] = 0;
    const char *scheme = strstr(url, "://");
    if (scheme &&
        (strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0)) {
        const char *auth = scheme + 3;
        size_t alen = strcspn(auth, "/?");
        const char *at = NULL;
        for (size_t i = 0; i < alen; i++)
            if (auth[i] == '@') at = auth + i;
        const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        if (colon) {
            put(out, outlen, &j, url, (size_t)(colon + 1 - url));
            put(out, outlen, &j, "***", 3);
            url = at;
        }
        /* the query: password=... up to the next & */
        const char *q = strchr(url, '?');
        if (!q) {
            put(out, outlen, &j, url, strlen(url));
            return;
        }
        put(out, outlen, &j, url, (size_t)(q - url));
        for (const char *p = q; *p;) {
            size_t n = strcspn(p + 1, "&") + 1;
            if (strncmp(p + 1, "password=", 9) == 0) {
                put(out, outlen, &j, p, 10);
                put(out, outlen, &j, "***", 3);
            } else {
                put(out, outlen, &j, p, n);
            }
            p += n;
        }
        return;
    }
    /* key=value: password = value | 'quoted value' */
    for (const char *p = url; *p;) {
        if (strncmp(p, "password", 8) == 0 && (p == url || p[-1] == ' ' || p[-1] == '\t')) {
            const char *v = p + 8;
            while (*v == ' ') v++;
            if (*v == '=') {
                v++;
                while (*v == ' ') v++;
                put(out, outlen, &j, p, (size_t)(v - p));
                put(out, outlen, &j, "***", 3);
                if (*v == '\'') {
                    for (v++; *v && *v != '\''; v++)
                        if (*v == '\\' && v[1]) v++;
                    if (*v) v++;
                } else {
                    v += strcspn(v, " \t");
                }
                p = v;
                continue;
            }
        }
        put(out, outlen, &j, p, 1);
        p++;
    }
}

/* ---- open, migrate ------------------------------------------------------------------- */

ledger *ledger_open(const char *url, const char *path, char *err, size_t errlen) {
    ledger *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int rc = url && *url ? ledger_pg_open(l, url) : ledger_sqlite_open(l, path);
    if (rc != 0) {
        snprintf(err, errlen, "cannot open %s: %s", l->where, l->err);
        ledger_close(l);
        return NULL;
    }
    for (int t = 0; t < LEDGER_TABLES; t++) {
        const ledger_tdesc *d = &ledger_tables[t];
        char cols[300] = "", params[200] = "";
        size_t cn = 0, pn = 0;
        for (int i = 0; i < d->ncols; i++) {
            cn += (size_t)snprintf(cols + cn, sizeof cols - cn, "%s%s", i ? ", " : "",
                                   d->cols[i].name);
            pn += (size_t)snprintf(params + pn, sizeof params - pn, "%s$%d", i ? ", " : "", i + 1);
        }
        snprintf(l->insert_sql[t], sizeof l->insert_sql[t],
                 "INSERT INTO %s (%s) VALUES (%s) ON CONFLICT DO NOTHING", d->name, cols, params);
    }
    return l;
}

void ledger_close(ledger *l) {
    if (!l) return;
    if (l->ops) l->ops->close(l);
    free(l);
}

static int exec0(ledger *l, const char *sql) {
    return l->ops->exec(l, sql, 0, NULL, NULL, NULL, NULL);
}

static void rollback(ledger *l) {
    char keep[LEDGER_ERR_MAX];
    memcpy(keep, l->err, sizeof keep);
    exec0(l, "ROLLBACK");
    memcpy(l->err, keep, sizeof keep); /* the cause, not the rollback's */
}

static int found_row(void *ud, int ncols, const char *const *vals) {
    (void)ncols, (void)vals;
    *(int *)ud = 1;
    return 0;
}

static int max_version(void *ud, int ncols, const char *const *vals) {
    if (ncols > 0 && vals[0]) *(int *)ud = (int)strtol(vals[0], NULL, 10);
    return 0;
}

int ledger_schema_latest(void) {
    return ledger_migrations[ledger_n_migrations - 1].version;
}

int ledger_schema_version(ledger *l, int *version) {
    *version = 0;
    int exists = 0;
    /* No schema_migrations table yet: version 0, not an error. Asked in a
     * way both catalogs answer (information_schema is PostgreSQL's,
     * sqlite_master SQLite's). */
    const char *probe = strcmp(l->ops->name, "sqlite") == 0
                            ? "SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'"
                            : "SELECT 1 FROM information_schema.tables WHERE table_schema = "
                              "current_schema() AND table_name = 'schema_migrations'";
    if (l->ops->exec(l, probe, 0, NULL, found_row, &exists, NULL)) return -1;
    if (!exists) return 0;
    return l->ops->exec(l, "SELECT MAX(version) FROM schema_migrations", 0, NULL, max_version,
                        version, NULL);
}

int ledger_migrate(ledger *l, int *applied) {
    int n = 0;
    for (size_t i = 0; i < ledger_n_migrations; i++) {
        const ledger_migration *m = &ledger_migrations[i];
        char ver[16], when[32];
        snprintf(ver, sizeof ver, "%d", m->version);
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        const char *ins[] = { ver, m->name, when };
        const char *one[] = { ver };
        int done = 0;
        if (exec0(l, l->ops->begin_sql)) goto fail;
        if ((l->ops->lock_sql && exec0(l, l->ops->lock_sql)) || exec0(l, ledger_sql_bootstrap) ||
            l->ops->exec(l, "SELECT 1 FROM schema_migrations WHERE version = $1", 1, one, found_row,
                         &done, NULL))
            goto fail_tx;
        if (!done) {
            if (exec0(l, m->sql) ||
                l->ops->exec(l,
                             "INSERT INTO schema_migrations (version, name, applied_at) "
                             "VALUES ($1, $2, $3)",
                             3, ins, NULL, NULL, NULL))
                goto fail_tx;
        }
        if (exec0(l, "COMMIT")) goto fail_tx;
        n += !done;
        continue;
    fail_tx:
        rollback(l);
    fail : {
        char cause[LEDGER_ERR_MAX];
        memcpy(cause, l->err, sizeof cause);
        ledger_seterr(l, "migration %d (%s): %s", m->version, m->name, cause);
    }
        if (applied) *applied = n;
        return -1;
    }
    if (applied) *applied = n;
    return 0;
}

/* ---- entries into rows ------------------------------------------------------------------ */

typedef struct row {
    ledger_val v[LEDGER_MAX_PARAMS];
    char *owned; /* a value printed for this row, freed once it is inserted */
} row;

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool jnum(const cJSON *o, const char *k, double *d) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return false;
    *d = v->valuedouble;
    return true;
}

/* An integral number at K within +-2^53 (what a JSON double holds exactly). */
static bool jint(const cJSON *o, const char *k, long long *x) {
    double d;
    if (!jnum(o, k, &d) || d != floor(d) || fabs(d) > 9007199254740992.0) return false;
    *x = (long long)d;
    return true;
}

/* Typed values: bound as they are (ledger_int.h, ops->insert). A NULL
 * string is SQL NULL. */
static void set_str(row *r, int i, const char *s) {
    r->v[i].t = s ? LEDGER_V_TEXT : LEDGER_V_NULL;
    r->v[i].s = s;
}

static void set_int(row *r, int i, long long v) {
    r->v[i].t = LEDGER_V_INT;
    r->v[i].i = v;
}

static void set_real(row *r, int i, double v) {
    r->v[i].t = LEDGER_V_REAL;
    r->v[i].d = v;
}

/* ts of the event, else the entry id's time. */
static double event_ts(const cJSON *o, const ledger_entry *e) {
    double ts;
    return jnum(o, "ts", &ts) ? ts : (double)e->id_ms / 1000.0;
}

/* Column indexes follow ledger_sql.c's lists. */
static int sale_row(const cJSON *o, const ledger_entry *e, row *r) {
    const char *sku = jstr(o, "sku"), *order = jstr(o, "order_id");
    long long qty, stock;
    double price;
    if (!sku || !order || !jint(o, "qty", &qty)) return -1;
    set_str(r, 0, sku);
    set_str(r, 1, order);
    set_int(r, 2, qty);
    if (jnum(o, "unit_price", &price)) set_real(r, 3, price);
    if (jnum(o, "catalog_price", &price)) set_real(r, 4, price);
    if (jint(o, "stock_remaining", &stock)) set_int(r, 5, stock);
    set_real(r, 6, event_ts(o, e));
    set_str(r, 7, jstr(o, "instance"));
    set_str(r, 8, e->event_id);
    return LEDGER_SALES;
}

static int stock_row(const cJSON *o, const ledger_entry *e, row *r) {
    const char *sku = jstr(o, "sku"), *source = jstr(o, "source");
    long long stock, prev = 0, delta;
    double price;
    if (!sku || !jint(o, "stock_remaining", &stock)) return -1;
    jint(o, "previous", &prev);
    if (!jint(o, "delta", &delta)) delta = stock - prev;
    set_str(r, 0, e->event_id);
    set_str(r, 1, sku);
    set_str(r, 2, source ? source : "admin");
    set_int(r, 3, stock);
    set_int(r, 4, prev);
    set_int(r, 5, delta);
    if (jnum(o, "price", &price)) set_real(r, 6, price);
    set_real(r, 7, event_ts(o, e));
    set_str(r, 8, jstr(o, "actor"));
    set_str(r, 9, jstr(o, "instance"));
    return LEDGER_STOCK_CHANGES;
}

static int kill_row(const cJSON *o, const ledger_entry *e, const char *action, row *r) {
    const char *scope = jstr(o, "scope");
    if (!scope) return -1;
    set_str(r, 0, e->event_id);
    set_str(r, 1, scope);
    set_str(r, 2, action);
    set_str(r, 3, jstr(o, "rule"));
    set_str(r, 4, jstr(o, "reason"));
    set_str(r, 5, jstr(o, "actor"));
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "halt_sales");
    if (cJSON_IsBool(h)) set_int(r, 6, cJSON_IsTrue(h));
    set_real(r, 7, event_ts(o, e));
    set_str(r, 8, jstr(o, "instance"));
    return LEDGER_KILLS;
}

static int alert_row(const cJSON *o, const ledger_entry *e, const char *kind, row *r) {
    set_str(r, 0, e->event_id);
    set_str(r, 1, jstr(o, "level"));
    set_str(r, 2, kind);
    set_str(r, 3, jstr(o, "rule"));
    set_str(r, 4, jstr(o, "scope"));
    set_str(r, 5, jstr(o, "reason"));
    set_real(r, 6, event_ts(o, e));
    set_str(r, 7, jstr(o, "instance"));
    return LEDGER_ALERTS;
}

/* A decision log record (declog.h): its fields as they are, the event as
 * JSON text. */
static int decision_row(const cJSON *o, const ledger_entry *e, row *r) {
    const char *kind = jstr(o, "kind");
    if (!kind) return -1;
    set_str(r, 0, e->event_id);
    set_str(r, 1, kind);
    set_str(r, 2, jstr(o, "action"));
    set_str(r, 3, jstr(o, "level"));
    set_str(r, 4, jstr(o, "rule"));
    set_str(r, 5, jstr(o, "scope"));
    set_str(r, 6, jstr(o, "reason"));
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "halt_sales");
    if (cJSON_IsBool(h)) set_int(r, 7, cJSON_IsTrue(h));
    set_str(r, 8, jstr(o, "channel"));
    set_str(r, 9, jstr(o, "event_id"));
    long long gen;
    if (jint(o, "generation", &gen)) set_int(r, 10, gen);
    set_str(r, 11, jstr(o, "error"));
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "event");
    if (cJSON_IsObject(ev) && (r->owned = cJSON_PrintUnformatted(ev))) set_str(r, 12, r->owned);
    set_real(r, 13, event_ts(o, e));
    set_str(r, 14, jstr(o, "instance"));
    return LEDGER_DECISIONS;
}

/* The table E goes to with its values in R: a table, LEDGER_TABLES when it
 * makes no row, -1 when it is invalid. */
static int entry_row(const cJSON *o, const ledger_entry *e, row *r) {
    memset(r->v, 0, sizeof r->v); /* LEDGER_V_NULL */
    r->owned = NULL;
    if (!cJSON_IsObject(o) || !e->event_id) return -1;
    if (e->decision) return decision_row(o, e, r);
    if (e->kind) { /* the audit stream */
        const char *kind = *e->kind ? e->kind : jstr(o, "kind");
        if (!kind) return -1;
        if (strcmp(kind, "kill_switch") == 0) return kill_row(o, e, "engage", r);
        if (strcmp(kind, "kill_reset") == 0) return kill_row(o, e, "reset", r);
        return alert_row(o, e, kind, r);
    }
    const char *type = jstr(o, "type");
    if (!type) return -1;
    if (strcmp(type, "sale") == 0) return sale_row(o, e, r);
    if (strcmp(type, "stock_changed") == 0) {
        /* A sale's stock change is the sale's row already (verify counts it
         * once, from sales.qty). */
        const char *source = jstr(o, "source");
        if (source && strcmp(source, "sale") == 0) return LEDGER_TABLES;
        return stock_row(o, e, r);
    }
    return LEDGER_TABLES;
}

/* A commit's own stock_changed (source "sale"), as sale.c's commit script
 * writes it: ignored like any stock change of a sale (entry_row), without
 * parsing it first. It is half the entries of a load over many SKUs (one
 * per commit), and the parse was most of their cost. Any other text is
 * parsed and judged by entry_row. */
static bool own_sale_stock(const ledger_entry *e) {
    static const char head[] = SALE_COMMIT_STOCK_HEAD;
    return e->json && e->len > sizeof head && memcmp(e->json, head, sizeof head - 1) == 0;
}

int ledger_record(ledger *l, const ledger_entry *e, size_t n, ledger_result *res) {
    ledger_result got;
    memset(&got, 0, sizeof got);
    memset(l->inserted, 0, sizeof l->inserted);
    if (exec0(l, l->ops->begin_sql)) return -1;
    uint64_t tried[LEDGER_TABLES] = { 0 };
    row r;
    for (size_t i = 0; i < n; i++) {
        if (own_sale_stock(&e[i])) {
            got.ignored++;
            continue;
        }
        cJSON *o = e[i].json ? cJSON_ParseWithLength(e[i].json, e[i].len) : NULL;
        int t = entry_row(o, &e[i], &r);
        int rc = 0;
        if (t < 0)
            got.invalid++;
        else if (t == LEDGER_TABLES)
            got.ignored++;
        else if ((rc = l->ops->insert(l, (ledger_table)t, r.v)) == 0)
            tried[t]++;
        free(r.owned);
        cJSON_Delete(o);
        if (rc) goto fail;
    }
    if (l->ops->flush(l, 0) || exec0(l, "COMMIT")) goto fail;
    /* A row not inserted was there already (ON CONFLICT DO NOTHING). */
    for (int t = 0; t < LEDGER_TABLES; t++) {
        uint64_t ins = l->inserted[t] < tried[t] ? l->inserted[t] : tried[t];
        got.rows[t] = ins;
        got.duplicates += tried[t] - ins;
    }
    if (res) {
        for (int t = 0; t < LEDGER_TABLES; t++) res->rows[t] += got.rows[t];
        res->duplicates += got.duplicates;
        res->ignored += got.ignored;
        res->invalid += got.invalid;
    }
    return 0;
fail:
    l->ops->flush(l, 1);
    rollback(l);
    return -1;
}

/* The shortest of %.15g / %.17g that reads back as D. */
static const char *fmt_real(char *buf, size_t len, double d) {
    snprintf(buf, len, "%.15g", d);
    if (strtod(buf, NULL) != d) snprintf(buf, len, "%.17g", d);
    return buf;
}

/* ---- queries ------------------------------------------------------------------------- */

typedef struct bal_acc {
    ledger_balance *v;
    size_t n, cap;
} bal_acc;

static int bal_row(void *ud, int ncols, const char *const *vals) {
    bal_acc *a = ud;
    if (ncols < 2 || !vals[0]) return 0;
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        ledger_balance *nv = realloc(a->v, nc * sizeof *nv);
        if (!nv) return -1;
        a->v = nv, a->cap = nc;
    }
    char *sku = strdup(vals[0]);
    if (!sku) return -1;
    /* SUM(bigint) is numeric on PostgreSQL: "123" either way. */
    a->v[a->n].sku = sku;
    a->v[a->n++].net = vals[1] ? strtoll(vals[1], NULL, 10) : 0;
    return 0;
}

static int bal_cmp(const void *x, const void *y) {
    return strcmp(((const ledger_balance *)x)->sku, ((const ledger_balance *)y)->sku);
}

int ledger_balances(ledger *l, ledger_balance **out, size_t *n) {
    bal_acc a = { NULL, 0, 0 };
    int rc = l->ops->exec(l,
                          "SELECT sku, SUM(n) FROM (SELECT sku, delta AS n FROM stock_changes"
                          " UNION ALL SELECT sku, -qty AS n FROM sales) AS t GROUP BY sku",
                          0, NULL, bal_row, &a, NULL);
    if (rc) {
        if (!l->err[0]) ledger_seterr(l, "out of memory");
        ledger_balances_free(a.v, a.n);
        return -1;
    }
    /* Byte order, the same on both backends whatever their collation. */
    if (a.n) qsort(a.v, a.n, sizeof *a.v, bal_cmp);
    *out = a.v;
    *n = a.n;
    return 0;
}

void ledger_balances_free(ledger_balance *b, size_t n) {
    for (size_t i = 0; b && i < n; i++) free(b[i].sku);
    free(b);
}

/* -- export -- */

typedef struct export_ctx {
    const ledger_tdesc *d;
    ledger_format f;
    FILE *out;
    long long rows;
} export_ctx;

static void json_str(FILE *out, const char *s) {
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (*p == '\r')
            fputs("\\r", out);
        else if (*p == '\t')
            fputs("\\t", out);
        else if (*p < 0x20)
            fprintf(out, "\\u%04x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

static void csv_field(FILE *out, const char *s) {
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '"') fputc('"', out);
        fputc(*s, out);
    }
    fputc('"', out);
}

/* A numeric value as the one text both backends agree on ("5" and "5.0"
 * are the same REAL): NULL when V is not a number. */
static const char *norm_num(const char *v, ledger_col_type t, char *buf, size_t len) {
    char *end;
    errno = 0;
    if (t == LEDGER_COL_INT) {
        long long x = strtoll(v, &end, 10);
        if (end == v || *end || errno) return NULL;
        snprintf(buf, len, "%lld", x);
        return buf;
    }
    double d = strtod(v, &end);
    if (end == v || *end || !isfinite(d)) return NULL;
    return fmt_real(buf, len, d);
}

static int export_row(void *ud, int ncols, const char *const *vals) {
    export_ctx *x = ud;
    const ledger_tdesc *d = x->d;
    if (x->f == LEDGER_JSONL) fputc('{', x->out);
    for (int i = 0; i < d->ncols && i < ncols; i++) {
        char buf[48];
        const char *v = vals[i];
        const char *num = v && d->cols[i].type != LEDGER_COL_TEXT
                              ? norm_num(v, d->cols[i].type, buf, sizeof buf)
                              : NULL;
        if (x->f == LEDGER_JSONL) {
            fprintf(x->out, "%s\"%s\":", i ? "," : "", d->cols[i].name);
            if (!v)
                fputs("null", x->out);
            else if (num)
                fputs(num, x->out);
            else
                json_str(x->out, v);
        } else {
            if (i) fputc(',', x->out);
            if (v) csv_field(x->out, num ? num : v);
        }
    }
    fputs(x->f == LEDGER_JSONL ? "}\n" : "\r\n", x->out);
    x->rows++;
    return ferror(x->out) ? -1 : 0;
}

int ledger_export(ledger *l, ledger_table t, double since, ledger_format f, FILE *out,
                  long long *rows) {
    const ledger_tdesc *d = &ledger_tables[t];
    char sql[600], cols[300] = "", sincebuf[40];
    size_t cn = 0;
    for (int i = 0; i < d->ncols; i++)
        cn += (size_t)snprintf(cols + cn, sizeof cols - cn, "%s%s", i ? ", " : "", d->cols[i].name);
    /* Oldest first; ties in a stable order (a sale's key, else the event id). */
    snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE ts >= $1 ORDER BY ts, %s", cols, d->name,
             t == LEDGER_SALES ? "sku, order_id" : "event_id");
    const char *p[] = { fmt_real(sincebuf, sizeof sincebuf, since) };
    export_ctx x = { d, f, out, 0 };
    if (f == LEDGER_CSV) {
        for (int i = 0; i < d->ncols; i++) fprintf(out, "%s%s", i ? "," : "", d->cols[i].name);
        fputs("\r\n", out);
    }
    int rc = l->ops->exec(l, sql, 1, p, export_row, &x, NULL);
    if (rc && !l->err[0]) ledger_seterr(l, "write: %s", strerror(errno ? errno : EIO));
    if (rows) *rows = x.rows;
    return rc;
}

/* -- sales report -- */

typedef struct rep_line {
    char *key;
    long long orders, qty;
    double revenue;
    bool priced;
} rep_line;

typedef struct rep_acc {
    rep_line *v;
    size_t n, cap;
} rep_acc;

static int rep_row(void *ud, int ncols, const char *const *vals) {
    rep_acc *a = ud;
    if (ncols < 4) return 0;
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        rep_line *nv = realloc(a->v, nc * sizeof *nv);
        if (!nv) return -1;
        a->v = nv, a->cap = nc;
    }
    rep_line *r = &a->v[a->n];
    r->key = strdup(vals[0] ? vals[0] : "");
    if (!r->key) return -1;
    r->orders = vals[1] ? strtoll(vals[1], NULL, 10) : 0;
    r->qty = vals[2] ? strtoll(vals[2], NULL, 10) : 0;
    r->priced = vals[3] != NULL;
    r->revenue = vals[3] ? strtod(vals[3], NULL) : 0;
    a->n++;
    return 0;
}

static int rep_cmp(const void *x, const void *y) {
    return strcmp(((const rep_line *)x)->key, ((const rep_line *)y)->key);
}

int ledger_sales_report(ledger *l, int by_day, FILE *out) {
    char sql[400];
    snprintf(sql, sizeof sql,
             "SELECT %s, COUNT(*), SUM(qty), SUM(qty * unit_price) FROM sales GROUP BY 1",
             by_day ? l->ops->day_expr : "sku");
    rep_acc a = { NULL, 0, 0 };
    int rc = l->ops->exec(l, sql, 0, NULL, rep_row, &a, NULL);
    if (rc == 0) {
        if (a.n) qsort(a.v, a.n, sizeof *a.v, rep_cmp);
        const char *head = by_day ? "DAY (UTC)" : "SKU";
        int w = (int)strlen(head);
        if (w < 10) w = 10;
        rep_line total = { (char *)"TOTAL", 0, 0, 0, false };
        for (size_t i = 0; i < a.n; i++) {
            if ((int)strlen(a.v[i].key) > w) w = (int)strlen(a.v[i].key);
            total.orders += a.v[i].orders, total.qty += a.v[i].qty;
            total.revenue += a.v[i].revenue, total.priced |= a.v[i].priced;
        }
        fprintf(out, "%-*s %10s %12s %16s\n", w, head, "ORDERS", "QTY", "REVENUE");
        for (size_t i = 0; i <= a.n; i++) {
            const rep_line *r = i < a.n ? &a.v[i] : &total;
            char rev[40] = "-";
            if (r->priced) snprintf(rev, sizeof rev, "%.2f", r->revenue);
            fprintf(out, "%-*s %10lld %12lld %16s\n", w, r->key, r->orders, r->qty, rev);
        }
    } else if (!l->err[0]) {
        ledger_seterr(l, "out of memory");
    }
    for (size_t i = 0; i < a.n; i++) free(a.v[i].key);
    free(a.v);
    return rc;
}

int ledger_backup(ledger *l, const char *file) {
    if (strcmp(l->ops->name, "sqlite") != 0) {
        ledger_seterr(l, "backup copies an SQLite ledger; for PostgreSQL use pg_dump "
                         "(pg_dump -Fc -f FILE URL, restored with pg_restore)");
        return -1;
    }
    return ledger_sqlite_backup(l, file);
}
