/* config.h -- typed settings loaded from YAML (libyaml).
 *
 * cfg_load() reads one YAML file, applies environment overrides and then
 * `--set dotted.key=value` overrides, and validates every key against one
 * table of key, type, range and default (engine/config.c). Unknown keys, wrong
 * types and out-of-range values are errors reported as
 *     FILE:LINE:COLUMN: key: message
 * (1-based line and column; overrides report as `--set key: message` or
 * `env NAME: message`). Every error found is reported, not just the first.
 *
 * Ownership: cfg_load() returns a cfg the caller owns and frees with
 * cfg_free(); every string and array inside it belongs to the cfg. A cfg is
 * immutable after load and may be read from any thread.
 */
#ifndef NERVE_CONFIG_H
#define NERVE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "nerve/rds.h"

struct cJSON;

/* Defaults of the limits a rule set reads, named once: the config table
 * uses them, and so does rules_set_load for a cfg whose field is 0 (one
 * built by hand, as fixtures and fuzzers do). */
#define CFG_MAX_EVENT_BYTES_DEFAULT         65536
#define CFG_RULES_INSTRUCTION_LIMIT_DEFAULT 1000000
#define CFG_RULES_MEMORY_LIMIT_DEFAULT      8388608 /* 8 MiB */
#define CFG_RULES_EVAL_TIMEOUT_MS_DEFAULT   100

typedef struct cfg_seed {
    char *sku;
    long long stock;
} cfg_seed;

/* A named admin token (NERVE_ADMIN_TOKENS). NAME: 1..CFG_TOKEN_NAME_MAX bytes
 * of A-Z a-z 0-9 . _ -; TOKEN: 1..4096 bytes, no control character, no ','. */
#define CFG_TOKEN_NAME_MAX   64
#define CFG_ADMIN_TOKENS_MAX 64
typedef struct cfg_token {
    char *name, *token;
} cfg_token;

typedef struct cfg {
    char *path; /* the file it was read from */

    /* server */
    char *listen; /* "HOST:PORT", default 127.0.0.1:8011 */
    int threads; /* CivetWeb worker threads, 1..1024, default 128: one per open keep-alive connection */
    long max_body_bytes;    /* 64..1048576, default 8192 */
    char *cors_origin;      /* "" = no CORS headers */
    char *pidfile;          /* "" = none */
    int request_timeout_ms; /* 100..600000, default 10000 */
    int evict_idle_ms; /* 1..60000, default 50: with every worker busy, shut connections idle this long */
    int shutdown_grace_ms; /* 0..600000, default 10000 */

    /* redis */
    char *redis_url; /* redis://[user:pass@]host:port/db, or redis-sentinel://... (url.h) */
    int redis_connect_timeout_ms; /* 1..60000, default 1000 */
    int redis_command_timeout_ms; /* 1..60000, default 1000 */
    int redis_reconnect_max_ms;   /* 1..60000, default 2000 */
    char *redis_prefix;           /* default "nerve:" */
    char *redis_mode;             /* standalone|cluster|sentinel, default standalone */
    char **redis_sentinels;       /* sentinel mode: host:port of each sentinel */
    size_t n_redis_sentinels;
    char *redis_master_name; /* sentinel mode: the primary's name at the sentinels; "" = none */

    /* bus */
    char **bus_channels; /* subscribed channels */
    size_t n_bus_channels;
    char *alerts_channel;    /* default system_alerts */
    char *inventory_channel; /* default inventory_events */
    char *sales_channel;     /* default sales_events */
    int queue_size;          /* bounded event queue, 1..1000000, default 10000 */
    long max_event_bytes;    /* 64..16777216, default 65536 */
    int stall_ms; /* /readyz: evaluator stalled when events wait and none finished for this long, 100..3600000, default 5000 */
    int bus_partitions; /* SKU partitions (hash tags of keys and streams), 1..1024, default 16 */
    bool bus_streams;   /* append events to streams and read them through a group, default true */
    long stream_maxlen; /* XADD MAXLEN ~ of each stream, 1000..1000000000, default 1000000 */
    bool bus_publish;   /* also PUBLISH nerve's events (seed compatibility), default true */
    bool bus_pubsub_input; /* evaluate Pub/Sub messages too (best effort), default true */
    char *bus_group;       /* the evaluators' consumer group, default "nerve" */
    int claim_idle_ms; /* claim a dead consumer's entries idle this long, 100..3600000, default 30000 */

    /* lock */
    int lock_ttl_ms;      /* 10..600000, default 2000 */
    int lock_max_wait_ms; /* 0..600000, default 1000 */

    /* sale */
    long long max_qty;     /* 1..1000000000, default 1000 */
    int idempotency_ttl_s; /* 1..31536000, default 86400 */
    int max_batch;         /* sales of one SKU committed per lock, 1..1024, default 128 */
    int sale_pipelines;    /* Redis connections the commits share (mux.h), 1..64, default 2 */
    /* sale.wait_replicas (0..16, 0 = off): WAIT for this many replicas after
     * each commit, at most sale.wait_timeout_ms (1..60000, default 200,
     * below redis.command_timeout_ms). */
    int sale_wait_replicas;
    int sale_wait_timeout_ms;

    /* rules */
    char *rules_dir;    /* default "rules" */
    char **rules_files; /* optional explicit list; empty = every *.lua in rules_dir */
    size_t n_rules_files;
    long long rules_instruction_limit; /* 1000..1e9, default 1000000 */
    long long rules_memory_limit;      /* bytes per Lua state, 65536..1<<31, default 8 MiB */
    int rules_eval_timeout_ms; /* wall-clock deadline of one rule evaluation, 1..60000, default 100 */
    char *
        rules_sale_on_error; /* reject|allow: a failing sale_request rule fails the sale closed (422) or open */
    struct cJSON *params; /* rules.params as a JSON tree (object), never NULL */
    /* Where each rules.params value was set, so that a rule's parameter
     * declarations can point at the value they refuse: a tree of the shape of
     * params whose every node is an object holding, under the empty key "",
     * "FILE:LINE:COL" or "--set KEY=VALUE", and under each mapping key the
     * node of that child (a YAML key is never empty). NULL when nothing was
     * set. */
    struct cJSON *params_where;

    /* panic (emergency stop) */
    char *panic_webhook_url;         /* "" = none */
    char *panic_resume_url;          /* POSTed after a reset; "" = none */
    int panic_timeout_ms;            /* per attempt, 1..600000, default 2000 */
    int panic_max_attempts;          /* 1..100, default 5 */
    int panic_backoff_initial_ms;    /* 1..600000, default 100 */
    int panic_backoff_max_ms;        /* 1..3600000, default 5000 */
    double panic_backoff_multiplier; /* 1.0..10.0, default 2.0 */
    bool panic_jitter;               /* full jitter, default true */
    bool panic_dry_run;              /* default false */

    /* alerts */
    int alerts_throttle_s; /* 0..86400, default 60 */
    long audit_maxlen;     /* nerve:audit cap, 1..10000000, default 10000 */

    /* decisions (the decision log, declog.h) */
    long decisions_maxlen;          /* nerve:decisions cap, 1..10000000, default 10000 */
    long decisions_event_max_bytes; /* an event over this is left out, 0..1048576, default 4096 */
    int decisions_queue_size;       /* records waiting for Redis, 1..1000000, default 10000 */

    /* ledger */
    bool ledger_enabled;     /* default true */
    char *ledger_path;       /* SQLite file, default "nerve-ledger.db" */
    char *ledger_url;        /* "" = SQLite; postgresql://... (NERVE_LEDGER_URL overrides) */
    char *ledger_group;      /* the ledger writers' consumer group, default "nerve-ledger" */
    int ledger_batch;        /* entries per transaction, 1..10000, default 256 */
    int ledger_lag_ready_ms; /* /readyz warning past this lag, 100..86400000, default 10000 */
    bool ledger_lag_unready; /* ... and 503 not ready (a reason), default false */

    /* inventory.seed */
    cfg_seed *seed;
    size_t n_seed;

    /* log */
    char *log_level;  /* debug|info|warn|error, default info */
    char *log_format; /* text|json, default text */

    /* secrets: environment only (NERVE_ADMIN_TOKEN, NERVE_PANIC_TOKEN); NULL when unset */
    char *admin_token; /* the admin token named "admin" */
    char *panic_token;
    char *sentinel_password; /* NERVE_SENTINEL_PASSWORD: AUTH to the sentinels (sentinel.h) */
    /* More admin tokens, each with a name the audit records:
     * NERVE_ADMIN_TOKENS=name:token,... (environment only). */
    cfg_token *admin_tokens;
    size_t n_admin_tokens;
} cfg;

/* Load and validate PATH, then the environment overrides (REDIS_URL,
 * NERVE_LISTEN, NERVE_RULES_DIR, NERVE_PANIC_URL, secrets), then SETS (each
 * "dotted.key=value", NSETS of them) in order. On success returns a new cfg and
 * sets *errors to NULL. On failure returns NULL and sets *errors to a
 * malloc'd text, one message per line, that the caller frees. */
cfg *cfg_load(const char *path, char *const *sets, size_t nsets, char **errors);

/* The dotted keys whose values differ between A and B (secrets excluded),
 * in table order: up to MAX of them in KEYS (static strings); returns how
 * many differ. */
size_t cfg_diff(const cfg *a, const cfg *b, const char **keys, size_t max);

/* The Redis connection options C describes (redis.url, its timeouts; for
 * redis.mode cluster, cluster routing from the seed node; in sentinel mode
 * the sentinels and master too: RO->sentinel is then the process' shared
 * resolver, sentinel.h): 0, or -1 with why in ERR (a redis.url that does
 * not parse, a sentinel set that cannot be built). One place, so that the
 * daemon and every command reach Redis the same way. */
int cfg_redis_opts(const cfg *c, rds_opts *ro, char *err, size_t errlen);

/* Free a cfg; NULL is fine. */
void cfg_free(cfg *c);

#endif
