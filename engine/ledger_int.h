/* ledger_int.h -- internals shared by the ledger's files (not a public
 * header): the backend interface that ledger_sqlite.c and ledger_pg.c
 * implement, the schema and migrations (ledger_sql.c), and the handle.
 *
 * A backend runs SQL with text parameters ($1, $2... in the SQL text: a
 * PostgreSQL placeholder, and an SQLite named parameter whose index is its
 * order of appearance) and hands result rows back as text, so ledger.c
 * holds every statement once, for both. The ledger writer's inserts, the
 * one statement that runs per stream entry, take typed values instead
 * (ops->insert): the writer's thread competes with the sales for CPU.
 */
#ifndef NERVE_LEDGER_INT_H
#define NERVE_LEDGER_INT_H

#include <stddef.h>

#include "nerve/ledger.h"

#define LEDGER_ERR_MAX    512
#define LEDGER_WHERE_MAX  512
#define LEDGER_MAX_PARAMS 16

/* A result row: NCOLS values as text, NULL for SQL NULL. Return 0 to go
 * on, -1 to stop the query (it then returns -1 with L's error as set). */
typedef int (*ledger_row_fn)(void *ud, int ncols, const char *const *vals);

/* One column value of a row to insert, typed: bound as it is (SQLite) or
 * written as text once (PostgreSQL), never formatted and parsed back. */
typedef enum { LEDGER_V_NULL = 0, LEDGER_V_INT, LEDGER_V_REAL, LEDGER_V_TEXT } ledger_vtype;

typedef struct ledger_val {
    ledger_vtype t;
    long long i;   /* LEDGER_V_INT */
    double d;      /* LEDGER_V_REAL */
    const char *s; /* LEDGER_V_TEXT, NUL-terminated; borrowed until insert returns */
} ledger_val;

typedef struct ledger_ops {
    const char *name;      /* "sqlite" | "postgresql" */
    const char *begin_sql; /* starts a write transaction */
    const char *lock_sql;  /* run after begin_sql by ledger_migrate, or NULL */
    const char *day_expr;  /* SQL: the UTC day "YYYY-MM-DD" of the column ts */
    /* SQL with N text parameters (NULL = SQL NULL); rows (if any) to FN (may
     * be NULL). N == 0 may hold several statements (migrations). *CHANGES
     * (may be NULL): rows changed by an INSERT/UPDATE/DELETE. 0 or -1. */
    int (*exec)(ledger *l, const char *sql, int n, const char *const *params, ledger_row_fn fn,
                void *ud, long *changes);
    /* One row of table T (VALS: its columns in ledger_tables' order),
     * INSERT ... ON CONFLICT DO NOTHING in the open transaction. The backend
     * runs it at once or keeps a copy until flush; either way the rows it
     * inserted are added to L->inserted[T] by the time flush returns. */
    int (*insert)(ledger *l, ledger_table t, const ledger_val *vals);
    /* Run the rows insert kept (DISCARD 0), or drop them (1: the
     * transaction is being rolled back). 0 or -1. */
    int (*flush)(ledger *l, int discard);
    void (*close)(ledger *l);
} ledger_ops;

struct ledger {
    const ledger_ops *ops;
    void *db;    /* sqlite3 * or PGconn * */
    void *cache; /* backend's own (SQLite: prepared statements) */
    char where[LEDGER_WHERE_MAX];
    char err[LEDGER_ERR_MAX];
    int refused; /* the last error was the database refusing the data (not being unavailable) */
    char insert_sql[LEDGER_TABLES][512];
    unsigned long long inserted[LEDGER_TABLES]; /* by ops->insert/flush, per ledger_record */
};

/* Set L's error (printf-style), truncating safely. */
void ledger_seterr(ledger *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Backends: fill L (ops, db, where) or return -1 with L's error set. */
int ledger_sqlite_open(ledger *l, const char *path);
int ledger_pg_open(ledger *l, const char *url);
/* SQLite's online backup of L to FILE (ledger_backup). */
int ledger_sqlite_backup(ledger *l, const char *file);

/* ---- schema (ledger_sql.c) ---- */

typedef enum { LEDGER_COL_TEXT, LEDGER_COL_INT, LEDGER_COL_REAL } ledger_col_type;

typedef struct ledger_col {
    const char *name;
    ledger_col_type type;
} ledger_col;

typedef struct ledger_tdesc {
    const char *name;
    const ledger_col *cols;
    int ncols;
} ledger_tdesc;

extern const ledger_tdesc ledger_tables[LEDGER_TABLES];

typedef struct ledger_migration {
    int version;
    const char *name;
    const char *sql; /* one or more statements, the same on both backends */
} ledger_migration;

extern const ledger_migration ledger_migrations[];
extern const size_t ledger_n_migrations;
/* CREATE TABLE IF NOT EXISTS schema_migrations ... */
extern const char ledger_sql_bootstrap[];

#endif
