/* ledger_sqlite.c -- the ledger's SQLite backend (ledger_int.h).
 *
 * The embedded default: one file, nothing to run. WAL mode, so readers
 * (`nerve ledger verify` while the daemon writes) never block the writer
 * nor it them; synchronous=FULL, because the writer acknowledges the stream
 * entries once COMMIT returns and a commit lost to a power cut would be a
 * sale lost for good. busy_timeout waits a little for another writer's lock
 * before a statement fails; the ledger writer retries after that.
 *
 * Prepared statements are cached by their SQL text, so a batch of inserts
 * compiles each statement once per connection.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>

#include "ledger_int.h"

#define BUSY_TIMEOUT_MS 2000
#define CACHE_MAX       16

typedef struct stmt_cache {
    sqlite3_stmt *st[CACHE_MAX];
    int n;
    sqlite3_stmt *ins[LEDGER_TABLES]; /* the writer's inserts, kept prepared (sq_insert) */
} stmt_cache;

/* L's error: "WHAT: SQLite's message" (WHAT NULL: the message alone). */
static int fail(ledger *l, const char *what) {
    sqlite3 *db = l->db;
    const char *msg = db ? sqlite3_errmsg(db) : "out of memory";
    if (what)
        ledger_seterr(l, "%s: %s", what, msg);
    else
        ledger_seterr(l, "%s", msg);
    return -1;
}

static sqlite3_stmt *prepare(ledger *l, const char *sql, int *cached) {
    stmt_cache *c = l->cache;
    /* By text: a caller's SQL may live in a buffer reused for another. */
    for (int i = 0; i < c->n; i++)
        if (strcmp(sqlite3_sql(c->st[i]), sql) == 0) {
            *cached = 1;
            return c->st[i];
        }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(l->db, sql, -1, &st, NULL) != SQLITE_OK) {
        fail(l, "prepare");
        return NULL;
    }
    *cached = c->n < CACHE_MAX;
    if (*cached) c->st[c->n++] = st;
    return st;
}

static int sq_exec(ledger *l, const char *sql, int n, const char *const *params, ledger_row_fn fn,
                   void *ud, long *changes) {
    sqlite3 *db = l->db;
    if (n == 0 && !fn) {
        char *msg = NULL;
        if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
            ledger_seterr(l, "%s", msg ? msg : sqlite3_errmsg(db));
            sqlite3_free(msg);
            return -1;
        }
        if (changes) *changes = sqlite3_changes(db);
        return 0;
    }
    int cached = 0;
    sqlite3_stmt *st = prepare(l, sql, &cached);
    if (!st) return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char name[16];
        snprintf(name, sizeof name, "$%d", i + 1);
        int idx = sqlite3_bind_parameter_index(st, name);
        int r = idx == 0    ? SQLITE_RANGE
                : params[i] ? sqlite3_bind_text(st, idx, params[i], -1, SQLITE_STATIC)
                            : sqlite3_bind_null(st, idx);
        if (r != SQLITE_OK) rc = fail(l, "bind");
    }
    while (rc == 0) {
        int r = sqlite3_step(st);
        if (r == SQLITE_DONE) break;
        if (r != SQLITE_ROW) {
            rc = fail(l, "step");
            /* The data, not the database (busy, locked, full, I/O): see
             * ledger_refused. */
            l->refused = r == SQLITE_CONSTRAINT || r == SQLITE_MISMATCH || r == SQLITE_TOOBIG ||
                         r == SQLITE_RANGE;
            break;
        }
        int nc = sqlite3_column_count(st);
        const char *vals[32];
        if (nc > 32) nc = 32;
        for (int i = 0; i < nc; i++)
            vals[i] = sqlite3_column_type(st, i) == SQLITE_NULL
                          ? NULL
                          : (const char *)sqlite3_column_text(st, i);
        if (fn && fn(ud, nc, vals) != 0) rc = -1;
    }
    if (rc == 0 && changes) *changes = sqlite3_changes(db);
    if (cached) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    } else {
        sqlite3_finalize(st);
    }
    return rc;
}

/* The writer's insert: the statement prepared once per connection, its
 * values bound by position with their types (no text to convert back, no
 * parameter lookup by name), strings SQLITE_STATIC (they outlive the step). */
static int sq_insert(ledger *l, ledger_table t, const ledger_val *v) {
    stmt_cache *c = l->cache;
    sqlite3_stmt *st = c->ins[t];
    if (!st) {
        if (sqlite3_prepare_v3(l->db, l->insert_sql[t], -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) !=
            SQLITE_OK)
            return fail(l, "prepare");
        c->ins[t] = st;
    }
    int r = SQLITE_OK;
    for (int i = 0; i < ledger_tables[t].ncols && r == SQLITE_OK; i++) {
        switch (v[i].t) {
        case LEDGER_V_INT: r = sqlite3_bind_int64(st, i + 1, v[i].i); break;
        case LEDGER_V_REAL: r = sqlite3_bind_double(st, i + 1, v[i].d); break;
        case LEDGER_V_TEXT: r = sqlite3_bind_text(st, i + 1, v[i].s, -1, SQLITE_STATIC); break;
        default: r = sqlite3_bind_null(st, i + 1); break;
        }
    }
    if (r != SQLITE_OK) {
        sqlite3_reset(st);
        return fail(l, "bind");
    }
    r = sqlite3_step(st);
    int rc = 0;
    if (r == SQLITE_DONE) {
        l->inserted[t] += (unsigned long long)sqlite3_changes(l->db);
    } else {
        rc = fail(l, "step");
        l->refused = r == SQLITE_CONSTRAINT || r == SQLITE_MISMATCH || r == SQLITE_TOOBIG ||
                     r == SQLITE_RANGE; /* see sq_exec */
    }
    sqlite3_reset(st);
    return rc;
}

static int sq_flush(ledger *l, int discard) {
    (void)l, (void)discard; /* every row ran in sq_insert */
    return 0;
}

static void sq_close(ledger *l) {
    stmt_cache *c = l->cache;
    for (int t = 0; c && t < LEDGER_TABLES; t++) sqlite3_finalize(c->ins[t]);
    for (int i = 0; c && i < c->n; i++) sqlite3_finalize(c->st[i]);
    free(c);
    l->cache = NULL;
    sqlite3_close_v2(l->db);
    l->db = NULL;
}

static const ledger_ops sqlite_ops = {
    .name = "sqlite",
    /* IMMEDIATE takes the write lock at BEGIN: two writers never both hold a
     * read lock and then deadlock upgrading it. */
    .begin_sql = "BEGIN IMMEDIATE",
    .lock_sql = NULL,
    .day_expr = "strftime('%Y-%m-%d', ts, 'unixepoch')",
    .exec = sq_exec,
    .insert = sq_insert,
    .flush = sq_flush,
    .close = sq_close,
};

int ledger_sqlite_open(ledger *l, const char *path) {
    snprintf(l->where, sizeof l->where, "%s", path);
    l->ops = &sqlite_ops;
    l->cache = calloc(1, sizeof(stmt_cache));
    sqlite3 *db = NULL;
    int r = sqlite3_open_v2(path, &db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    l->db = db;
    if (r != SQLITE_OK || !l->cache) return fail(l, NULL);
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    char *msg = NULL;
    /* cache_size: the page cache is per connection, 2 MiB by default; the
     * writer appends (rowid order, ts order, mostly increasing keys), so a
     * small cache serves it, and the daemon's peak RSS counts every page. */
    if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-512",
                     NULL, NULL, &msg) != SQLITE_OK) {
        ledger_seterr(l, "%s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int ledger_sqlite_backup(ledger *l, const char *file) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", file) >= (int)sizeof tmp) {
        ledger_seterr(l, "%s: name too long", file);
        return -1;
    }
    unlink(tmp);
    sqlite3 *dst = NULL;
    if (sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        ledger_seterr(l, "cannot create %s: %s", tmp, dst ? sqlite3_errmsg(dst) : "out of memory");
        sqlite3_close_v2(dst);
        return -1;
    }
    sqlite3_backup *b = sqlite3_backup_init(dst, "main", l->db, "main");
    int r = SQLITE_ERROR;
    if (b) {
        /* All pages in one step: a writer that commits meanwhile would
         * otherwise restart the copy (the source is not this connection). */
        for (int tries = 0; tries < 200; tries++) { /* 10 s of a busy source */
            r = sqlite3_backup_step(b, -1);
            if (r != SQLITE_OK && r != SQLITE_BUSY && r != SQLITE_LOCKED) break;
            sqlite3_sleep(50);
        }
        sqlite3_backup_finish(b);
    }
    if (r != SQLITE_DONE) {
        ledger_seterr(l, "backup to %s: %s", file, sqlite3_errmsg(dst));
        sqlite3_close_v2(dst);
        unlink(tmp);
        return -1;
    }
    /* One file: the copy keeps no -wal beside it. */
    char *msg = NULL;
    if (sqlite3_exec(dst, "PRAGMA journal_mode=DELETE", NULL, NULL, &msg) != SQLITE_OK) {
        ledger_seterr(l, "backup to %s: %s", file, msg ? msg : sqlite3_errmsg(dst));
        sqlite3_free(msg);
        sqlite3_close_v2(dst);
        unlink(tmp);
        return -1;
    }
    errno = 0;
    if (sqlite3_close(dst) != SQLITE_OK || rename(tmp, file) != 0) {
        ledger_seterr(l, "cannot write %s: %s", file, strerror(errno ? errno : EIO));
        unlink(tmp);
        return -1;
    }
    return 0;
}
