/* ledger_sql.c -- the ledger's schema: its versioned migrations and the
 * column lists the inserts and the export are built from (ledger_int.h).
 *
 * Why one file: the data model is read here, in one place, and every
 * statement is the same SQL text on SQLite (3.40) and PostgreSQL (15):
 * types both accept (TEXT, BIGINT, DOUBLE PRECISION, INTEGER), no backend
 * function. A migration is never edited once released: a change of schema
 * is a new entry at the end of ledger_migrations, applied at the next start
 * or `nerve ledger migrate` and recorded in schema_migrations.
 */
#include "ledger_int.h"

const char ledger_sql_bootstrap[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                    " version INTEGER PRIMARY KEY,"
                                    " name TEXT NOT NULL,"
                                    " applied_at TEXT NOT NULL)";

const ledger_migration ledger_migrations[] = {
    { 1, "sales, stock_changes, kills and alerts",
      "CREATE TABLE sales ("
      " sku TEXT NOT NULL,"
      " order_id TEXT NOT NULL,"
      " qty BIGINT NOT NULL,"
      " unit_price DOUBLE PRECISION,"
      " catalog_price DOUBLE PRECISION,"
      " stock_after BIGINT,"
      " ts DOUBLE PRECISION NOT NULL,"
      " instance TEXT,"
      " event_id TEXT NOT NULL,"
      " PRIMARY KEY (sku, order_id));\n"
      "CREATE INDEX sales_ts ON sales (ts);\n"
      "CREATE TABLE stock_changes ("
      " event_id TEXT PRIMARY KEY,"
      " sku TEXT NOT NULL,"
      " source TEXT NOT NULL,"
      " stock BIGINT NOT NULL,"
      " previous BIGINT NOT NULL,"
      " delta BIGINT NOT NULL,"
      " price DOUBLE PRECISION,"
      " ts DOUBLE PRECISION NOT NULL,"
      " actor TEXT,"
      " instance TEXT);\n"
      "CREATE INDEX stock_changes_sku ON stock_changes (sku);\n"
      "CREATE INDEX stock_changes_ts ON stock_changes (ts);\n"
      "CREATE TABLE kills ("
      " event_id TEXT PRIMARY KEY,"
      " scope TEXT NOT NULL,"
      " action TEXT NOT NULL CHECK (action IN ('engage', 'reset')),"
      " rule TEXT,"
      " reason TEXT,"
      " actor TEXT,"
      " halt_sales INTEGER,"
      " ts DOUBLE PRECISION NOT NULL,"
      " instance TEXT);\n"
      "CREATE INDEX kills_ts ON kills (ts);\n"
      "CREATE TABLE alerts ("
      " event_id TEXT PRIMARY KEY,"
      " level TEXT,"
      " kind TEXT NOT NULL,"
      " rule TEXT,"
      " scope TEXT,"
      " reason TEXT,"
      " ts DOUBLE PRECISION NOT NULL,"
      " instance TEXT);\n"
      "CREATE INDEX alerts_ts ON alerts (ts);\n" },
    { 2, "decisions",
      "CREATE TABLE decisions ("
      " event_id TEXT PRIMARY KEY,"
      " kind TEXT NOT NULL,"
      " action TEXT,"
      " level TEXT,"
      " rule TEXT,"
      " scope TEXT,"
      " reason TEXT,"
      " halt_sales INTEGER,"
      " channel TEXT,"
      " source_event_id TEXT,"
      " generation BIGINT,"
      " error TEXT,"
      " event TEXT,"
      " ts DOUBLE PRECISION NOT NULL,"
      " instance TEXT);\n"
      "CREATE INDEX decisions_ts ON decisions (ts);\n"
      "CREATE INDEX decisions_rule ON decisions (rule);\n" },
};
const size_t ledger_n_migrations = sizeof ledger_migrations / sizeof ledger_migrations[0];

#define T LEDGER_COL_TEXT
#define I LEDGER_COL_INT
#define R LEDGER_COL_REAL

static const ledger_col sales_cols[] = {
    { "sku", T },        { "order_id", T },      { "qty", I },
    { "unit_price", R }, { "catalog_price", R }, { "stock_after", I },
    { "ts", R },         { "instance", T },      { "event_id", T },
};
static const ledger_col stock_cols[] = {
    { "event_id", T }, { "sku", T },   { "source", T }, { "stock", I }, { "previous", I },
    { "delta", I },    { "price", R }, { "ts", R },     { "actor", T }, { "instance", T },
};
static const ledger_col kills_cols[] = {
    { "event_id", T }, { "scope", T },      { "action", T }, { "rule", T },     { "reason", T },
    { "actor", T },    { "halt_sales", I }, { "ts", R },     { "instance", T },
};
static const ledger_col alerts_cols[] = {
    { "event_id", T }, { "level", T },  { "kind", T }, { "rule", T },
    { "scope", T },    { "reason", T }, { "ts", R },   { "instance", T },
};

static const ledger_col decisions_cols[] = {
    { "event_id", T },        { "kind", T },       { "action", T },
    { "level", T },           { "rule", T },       { "scope", T },
    { "reason", T },          { "halt_sales", I }, { "channel", T },
    { "source_event_id", T }, { "generation", I }, { "error", T },
    { "event", T },           { "ts", R },         { "instance", T },
};

#define TDESC(n, c) \
    { n, c, (int)(sizeof c / sizeof c[0]) }
const ledger_tdesc ledger_tables[LEDGER_TABLES] = {
    TDESC("sales", sales_cols),   TDESC("stock_changes", stock_cols), TDESC("kills", kills_cols),
    TDESC("alerts", alerts_cols), TDESC("decisions", decisions_cols),
};
