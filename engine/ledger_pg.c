/* ledger_pg.c -- the ledger's PostgreSQL backend over libpq (ledger_int.h).
 *
 * For a fleet: every instance writes into one database. Statements with
 * values go through PQexecParams (text parameters, typed by the server from
 * the column they meet); only the migrations, which have no values, go
 * through PQexec. A connection lost (server restarted) is reset before the
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

typedef struct pg_state {
    char password[256]; /* to scrub from libpq's messages; "" = none */
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

static void pg_close(ledger *l) {
    PQfinish(l->db);
    l->db = NULL;
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
