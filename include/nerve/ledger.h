/* ledger.h -- the order ledger: every sale, stock change, kill and alert,
 * and the decision log, kept for good in SQL.
 *
 * Why: Redis is the system of record for stock, but it forgets a sale once
 * its idempotency record expires, and its streams are capped. The ledger is
 * what a commerce team asks "what did we sell yesterday, at what price, and
 * does it match the stock?" of. It is written from the streams (so a sale
 * never waits for it) by a writer thread with its own consumer group, and
 * read by the `nerve ledger ...` commands.
 *
 * Two backends behind one API: SQLite (the embedded default, a file at
 * ledger.path, WAL mode) and PostgreSQL through libpq (ledger.url or
 * NERVE_LEDGER_URL, for a fleet). The schema is the same SQL text on both
 * (ledger_sql.c), applied by versioned migrations recorded in the table
 * schema_migrations(version, name, applied_at).
 *
 * Tables (the data model, README "Ledger"):
 *   sales(sku, order_id, qty, unit_price, catalog_price, stock_after, ts,
 *         instance, event_id)            PRIMARY KEY (sku, order_id)
 *   stock_changes(event_id, sku, source, stock, previous, delta, price, ts,
 *         actor, instance)               PRIMARY KEY event_id
 *   kills(event_id, scope, action, rule, reason, actor, halt_sales, ts,
 *         instance)                      PRIMARY KEY event_id
 *   alerts(event_id, level, kind, rule, scope, reason, ts, instance)
 *                                        PRIMARY KEY event_id
 *   decisions(event_id, kind, action, level, rule, scope, reason,
 *         halt_sales, channel, source_event_id, generation, error, event,
 *         ts, instance)                  PRIMARY KEY event_id
 *         (the decision log, declog.h; source_event_id is the record's
 *         event_id, the entry the decided event came from; event its JSON)
 * ts is epoch seconds (a double); event_id is "<stream key>/<entry id>".
 * Every insert is INSERT ... ON CONFLICT DO NOTHING, so recording an entry
 * twice (at-least-once delivery) leaves one row.
 *
 * Values are always bound as parameters (sqlite3_bind_*, PQexecParams),
 * never formatted into SQL. A PostgreSQL URL's password never appears in a
 * message (ledger_where, ledger_redact_url).
 *
 * Thread-safety: a ledger handle is NOT thread-safe (one connection): one
 * thread at a time. The writer's functions are: ledger_writer_start/stop
 * from the owner, ledger_writer_get_stats from any thread.
 * Ownership: ledger_open returns a handle freed by ledger_close (NULL fine).
 */
#ifndef NERVE_LEDGER_H
#define NERVE_LEDGER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "nerve/config.h"
#include "nerve/rds.h"

typedef struct ledger ledger;

typedef enum {
    LEDGER_SALES = 0,
    LEDGER_STOCK_CHANGES,
    LEDGER_KILLS,
    LEDGER_ALERTS,
    LEDGER_DECISIONS,
    LEDGER_TABLES
} ledger_table;

/* "sales", "stock_changes", "kills", "alerts", "decisions". */
const char *ledger_table_name(ledger_table t);
/* The table named NAME, or -1. */
int ledger_table_of(const char *name);

/* ---- storage ---------------------------------------------------------------------- */

/* Open the ledger: PostgreSQL when URL is non-empty (a libpq connection
 * string or postgresql:// URI), else SQLite at PATH (created when missing).
 * Applies nothing: call ledger_migrate. NULL with "cannot open WHERE: why"
 * in ERR when the database cannot be reached. */
ledger *ledger_open(const char *url, const char *path, char *err, size_t errlen);
void ledger_close(ledger *l);

/* "sqlite" or "postgresql". */
const char *ledger_backend(const ledger *l);
/* The file, or the URL without its password: what messages name. */
const char *ledger_where(const ledger *l);
/* The last error of L, "" if none. */
const char *ledger_errstr(const ledger *l);
/* 1 when L's last error was the database refusing the data itself (a
 * constraint, an invalid byte sequence, a value out of range), which a retry
 * will not change; 0 when it was unavailable (down, locked, busy, full). */
int ledger_refused(const ledger *l);

/* URL with any password replaced by "***" (user:PASS@ in a URI,
 * password=... in a URI query or a key=value string) into OUT. */
void ledger_redact_url(const char *url, char *out, size_t outlen);

/* Apply the migrations the database has not recorded, each in its own
 * transaction (on PostgreSQL under an advisory lock, so two daemons
 * starting at once apply each one once). *APPLIED (may be NULL): how many
 * were applied now, 0 when the schema was current. 0, or -1 (errstr). */
int ledger_migrate(ledger *l, int *applied);
/* The highest version recorded (0: none), and the newest this build has. */
int ledger_schema_version(ledger *l, int *version);
int ledger_schema_latest(void);

/* One stream entry to record. */
typedef struct ledger_entry {
    const char *event_id; /* "<stream key>/<entry id>" */
    const char *kind;     /* NULL: an `event` of a channel stream (its "type" says what it
                           * is); else an audit entry's kind, "" = its data's "kind" */
    const char *json;     /* the event, the audit entry's `data`, or a decision record `d` */
    size_t len;
    uint64_t id_ms; /* the entry id's time: ts when the JSON has none */
    int decision;   /* 1: a decision log record (PREFIXdecisions, declog.h); kind is NULL */
} ledger_entry;

typedef struct ledger_result {
    uint64_t rows[LEDGER_TABLES]; /* rows inserted, by table */
    uint64_t duplicates;          /* entries whose row was there already */
    uint64_t ignored;             /* entries that make no row (a sale's stock_changed) */
    uint64_t invalid;             /* not JSON, or a field missing: no row, never retried */
} ledger_result;

/* Record E[0..n-1] in ONE transaction: all of them or, on -1 (a database
 * error: down, locked, full...; errstr), none, so the caller keeps the
 * entries and retries. RES (may be NULL) is added to. */
int ledger_record(ledger *l, const ledger_entry *e, size_t n, ledger_result *res);

/* ---- reading ----------------------------------------------------------------------- */

/* Per SKU: sum(stock_changes.delta) - sum(sales.qty), sorted by SKU. */
typedef struct ledger_balance {
    char *sku;
    long long net;
} ledger_balance;
int ledger_balances(ledger *l, ledger_balance **out, size_t *n);
void ledger_balances_free(ledger_balance *b, size_t n);

typedef enum { LEDGER_JSONL = 0, LEDGER_CSV } ledger_format;

/* The rows of table T with ts >= SINCE (epoch seconds), oldest first, to OUT:
 * one JSON object a line, or CSV with a header line (RFC 4180: fields with
 * a comma, quote, CR or LF are quoted, quotes doubled; CRLF line ends).
 * *ROWS (may be NULL): how many. 0, or -1 (errstr). */
int ledger_export(ledger *l, ledger_table t, double since, ledger_format f, FILE *out,
                  long long *rows);

/* The sales summary: orders, quantity and revenue (sum of qty x unit_price)
 * per SKU (BY_DAY 0) or per UTC day (1), as an aligned text table with a
 * total line. 0, or -1 (errstr). */
int ledger_sales_report(ledger *l, int by_day, FILE *out);

/* SQLite only: an online copy of the database to FILE (sqlite3_backup_*,
 * consistent while writers run; written to FILE.tmp and renamed). -1 with
 * the reason in errstr, on PostgreSQL too (pg_dump is the tool there). */
int ledger_backup(ledger *l, const char *file);

/* ---- the writer ---------------------------------------------------------------------- */

typedef struct ledger_writer ledger_writer;

typedef struct ledger_writer_opts {
    const cfg *cfg;       /* ledger.*, bus.partitions, channels, prefix (borrowed) */
    rds_opts redis;       /* the streams' Redis */
    const char *instance; /* consumer name (copied) */
    const char *url;      /* the effective ledger URL ("" = SQLite; copied) */
} ledger_writer_opts;

typedef struct ledger_writer_stats {
    uint64_t rows[LEDGER_TABLES]; /* rows inserted, by table */
    uint64_t duplicates, ignored, invalid;
    uint64_t batches; /* transactions committed */
    uint64_t errors;  /* database or Redis errors (each retried) */
    uint64_t lag_ms;  /* age of the oldest entry read and not yet committed, 0 when none */
    int db_up;        /* 1 after a commit or a successful open, 0 after an error */
    uint64_t missed;  /* times entries were found trimmed from a stream before the writer
                       * read them (sgroup.h "Gaps"): the ledger lacks them */
} ledger_writer_stats;

/* Start the writer thread: it opens the database (retrying while it is
 * down), migrates, then reads the sales and inventory partition streams and
 * the audit stream as consumer INSTANCE of group ledger.group, records each
 * batch in one transaction and acknowledges it after COMMIT. A database
 * that is down or locked keeps the entries pending (retried with capped
 * backoff); sales never wait for it. NULL with ERR on OOM or bad options. */
ledger_writer *ledger_writer_start(const ledger_writer_opts *o, char *err, size_t errlen);
/* Stop: finish the batch in hand (or give up its retry), join, free. NULL
 * is fine. Entries read and not committed stay pending in Redis. */
void ledger_writer_stop(ledger_writer *w);
/* Thread-safe snapshot. W may be NULL (zeros). */
void ledger_writer_get_stats(ledger_writer *w, ledger_writer_stats *out);

/* ---- the command line ----------------------------------------------------------------- */

/* `nerve ledger SUBCOMMAND ...` (ARGV[0] = "ledger"): migrate, verify,
 * export, backup, sales. Returns the exit code (README "Ledger"). */
int ledger_cli_main(int argc, char **argv);

#endif
