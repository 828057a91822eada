/* ledger_pg.c -- the ledger's PostgreSQL backend over libpq (ledger_int.h).
 *
 * For a fleet: every instance writes into one database. Statements with
 * values go through PQexecParams (text parameters, typed by the server from
 * the column they meet); only the migrations, which have no values, go
 * through PQexec. The writer's rows of a batch go in one multi-row INSERT
 * per table (pg_insert), not one round trip each. A connection lost (server restarted) is reset before the
 * next statement, so the writer's retries reconnect by themselves.
 *
 * The URL may carry a password: messages name ledger_redact_url's form,
 * and any text libpq hands back has the password cut out as well.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libpq-fe.h>

#include "ledger_int.h"

/* Rows of one table held for one multi-row INSERT: their values as text,
 * one after the other in buf (NUL-terminated each; off[k] == NONE: NULL). */
#define NONE ((size_t)-1)
/* Rows per INSERT: one statement (one round trip, one plan) for what used to
 * be one per row, within PostgreSQL's 65535 parameters (10 columns at most
 * here) and a bounded buffer. */
#define PG_ROWS_MAX 1000

typedef struct pg_rows {
    size_t rows, nvals;
    size_t *off;
    size_t offcap;
    char *buf;
    size_t len, cap;
} pg_rows;

typedef struct pg_state {
    char password[256]; /* to scrub from libpq's messages; "" = none */
    pg_rows pend[LEDGER_TABLES];
} pg_state;

/* Set L's error to "WHAT: MSG" (WHAT NULL: MSG alone), without a trailing
 * newline or the password. */
static int fail(ledger *l, const char *what, const char *msg) {
    pg_state *s = l->cache;
    char text[LEDGER_ERR_MAX];
    snprintf(text, sizeof text, "%s", msg && *msg ? msg : "unknown error");
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == ' ')) text[--n] = 0;
    char *p;
    while (s && s->password[0] && (p = strstr(text, s->password))) {
        size_t pl = strlen(s->password);
        memmove(p + 3, p + pl, strlen(p + pl) + 1);
        memcpy(p, "***", 3);
    }
    if (what)
        ledger_seterr(l, "%s: %s", what, text);
    else
        ledger_seterr(l, "%s", text);
    return -1;
}

static void quiet(void *arg, const char *message) {
    (void)arg, (void)message; /* NOTICEs of IF NOT EXISTS: nothing to act on */
}

static int pg_exec(ledger *l, const char *sql, int n, const char *const *params, ledger_row_fn fn,
                   void *ud, long *changes) {
    PGconn *c = l->db;
    if (PQstatus(c) != CONNECTION_OK) {
        PQreset(c);
        if (PQstatus(c) != CONNECTION_OK) return fail(l, "connection", PQerrorMessage(c));
    }
    PGresult *r = n == 0 && !fn ? PQexec(c, sql)
                                : PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fail(l, "query", r ? PQresultErrorMessage(r) : PQerrorMessage(c));
        /* SQLSTATE class 22 (data exception: an invalid byte sequence, a
         * number out of range) or 23 (integrity): this data, not the
         * database; anything else (connection, locks, disk) is retried. */
        const char *code = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        l->refused = code && (strncmp(code, "22", 2) == 0 || strncmp(code, "23", 2) == 0);
        PQclear(r);
        return -1;
    }
    int rc = 0;
    if (fn && st == PGRES_TUPLES_OK) {
        int nr = PQntuples(r), nc = PQnfields(r);
        const char *vals[32];
        if (nc > 32) nc = 32;
        for (int i = 0; i < nr && rc == 0; i++) {
            for (int j = 0; j < nc; j++)
                vals[j] = PQgetisnull(r, i, j) ? NULL : PQgetvalue(r, i, j);
            if (fn(ud, nc, vals) != 0) rc = -1;
        }
    }
    if (changes) *changes = strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return rc;
}

/* Append S[0..n) and a NUL to P's buffer as the next value. 0 or -1 (OOM). */
static int put_val(pg_rows *p, const char *s, size_t n) {
    if (p->nvals == p->offcap) {
        size_t cap = p->offcap ? p->offcap * 2 : 256;
        size_t *o = realloc(p->off, cap * sizeof *o);
        if (!o) return -1;
        p->off = o;
        p->offcap = cap;
    }
    if (!s) {
        p->off[p->nvals++] = NONE;
        return 0;
    }
    if (p->len + n + 1 > p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 8192;
        while (cap < p->len + n + 1) cap *= 2;
        char *b = realloc(p->buf, cap);
        if (!b) return -1;
        p->buf = b;
        p->cap = cap;
    }
    memcpy(p->buf + p->len, s, n);
    p->buf[p->len + n] = 0;
    p->off[p->nvals++] = p->len;
    p->len += n + 1;
    return 0;
}

/* INSERT the rows held for table T in one statement. */
static int run_rows(ledger *l, ledger_table t) {
    pg_state *st = l->cache;
    pg_rows *p = &st->pend[t];
    if (!p->rows) return 0;
    const ledger_tdesc *d = &ledger_tables[t];
    /* "INSERT INTO t (cols) VALUES ($1, ...), (...) ON CONFLICT DO NOTHING" */
    size_t cap = 512 + p->nvals * 12;
    char *sql = malloc(cap);
    const char **vals = malloc(p->nvals * sizeof *vals);
    int rc = -1;
    if (!sql || !vals) {
        fail(l, NULL, "out of memory");
        goto out;
    }
    size_t n = (size_t)snprintf(sql, cap, "INSERT INTO %s (", d->name);
    for (int c = 0; c < d->ncols; c++)
        n += (size_t)snprintf(sql + n, cap - n, "%s%s", c ? ", " : "", d->cols[c].name);
    n += (size_t)snprintf(sql + n, cap - n, ") VALUES ");
    for (size_t k = 0; k < p->nvals; k++) {
        int col = (int)(k % (size_t)d->ncols);
        n += (size_t)snprintf(sql + n, cap - n, "%s$%zu%s",
                              col ? ", "
                              : k ? ", ("
                                  : "(",
                              k + 1, col == d->ncols - 1 ? ")" : "");
        vals[k] = p->off[k] == NONE ? NULL : p->buf + p->off[k];
    }
    snprintf(sql + n, cap - n, " ON CONFLICT DO NOTHING");
    long changed = 0;
    rc = pg_exec(l, sql, (int)p->nvals, vals, NULL, NULL, &changed);
    if (rc == 0) l->inserted[t] += (unsigned long long)changed;
out:
    free(sql);
    free(vals);
    p->rows = p->nvals = p->len = 0;
    return rc;
}

/* The writer's insert: kept as text (each value formatted once: integers
 * as %lld, doubles as %.17g, which reads back as the same double) and
 * written with the other rows of its table in one INSERT at flush, or when
 * PG_ROWS_MAX are held: not one round trip per row. */
static int pg_insert(ledger *l, ledger_table t, const ledger_val *v) {
    pg_state *st = l->cache;
    pg_rows *p = &st->pend[t];
    for (int i = 0; i < ledger_tables[t].ncols; i++) {
        char num[40];
        int r;
        switch (v[i].t) {
        case LEDGER_V_INT:
            r = put_val(p, num, (size_t)snprintf(num, sizeof num, "%lld", v[i].i));
            break;
        case LEDGER_V_REAL:
            r = put_val(p, num, (size_t)snprintf(num, sizeof num, "%.17g", v[i].d));
            break;
        case LEDGER_V_TEXT: r = put_val(p, v[i].s, strlen(v[i].s)); break;
        default: r = put_val(p, NULL, 0); break;
        }
        if (r) {
            p->rows = p->nvals = p->len = 0;
            return fail(l, NULL, "out of memory");
        }
    }
    p->rows++;
    return p->rows >= PG_ROWS_MAX ? run_rows(l, t) : 0;
}

static int pg_flush(ledger *l, int discard) {
    pg_state *st = l->cache;
    int rc = 0;
    for (int t = 0; t < LEDGER_TABLES; t++) {
        if (discard || rc)
            st->pend[t].rows = st->pend[t].nvals = st->pend[t].len = 0;
        else
            rc = run_rows(l, (ledger_table)t);
    }
    return rc;
}

static void pg_close(ledger *l) {
    PQfinish(l->db);
    l->db = NULL;
    pg_state *st = l->cache;
    for (int t = 0; st && t < LEDGER_TABLES; t++) {
        free(st->pend[t].off);
        free(st->pend[t].buf);
    }
    free(l->cache);
    l->cache = NULL;
}

static const ledger_ops pg_ops = {
    .name = "postgresql",
    .begin_sql = "BEGIN",
    /* Two daemons starting at once: the second waits for the first's
     * migration transaction, then finds the version recorded. */
    .lock_sql = "SELECT pg_advisory_xact_lock(7270601)",
    .day_expr = "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    .exec = pg_exec,
    .insert = pg_insert,
    .flush = pg_flush,
    .close = pg_close,
};

int ledger_pg_open(ledger *l, const char *url) {
    ledger_redact_url(url, l->where, sizeof l->where);
    l->ops = &pg_ops;
    pg_state *s = calloc(1, sizeof *s);
    l->cache = s;
    if (!s) return fail(l, NULL, "out of memory");
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (!opts) {
        /* The parser's message quotes the text it stopped at: say less. */
        PQfreemem(perr);
        return fail(l, NULL, "not a valid PostgreSQL URL or connection string");
    }
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val)
            snprintf(s->password, sizeof s->password, "%s", o->val);
    PQconninfoFree(opts);
    /* Keywords before dbname are defaults the URL may override. */
    const char *const keys[] = { "connect_timeout", "application_name", "dbname", NULL };
    const char *const vals[] = { "5", "nerve", url, NULL };
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    l->db = c;
    if (!c) return fail(l, NULL, "out of memory");
    if (PQstatus(c) != CONNECTION_OK) return fail(l, NULL, PQerrorMessage(c));
    PQsetNoticeProcessor(c, quiet, NULL);
    return 0;
}
