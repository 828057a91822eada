/* config.c -- typed settings from YAML, the environment and --set.
 *
 * Every command that reads config (serve, check, reload, rules test) and every
 * hot reload goes through cfg_load(), so a value the daemon would choke on is
 * refused the same way everywhere, before anything starts, and the user is
 * told where it is (FILE:LINE:COLUMN) instead of finding out at runtime.
 *
 * How: libyaml's document API (yaml_parser_load) gives a node tree whose
 * nodes keep their start marks. We walk its two fixed levels (section, key)
 * and look each dotted key up in `cfg_opts`, the one table that drives
 * defaults, parsing, range checks, environment and --set overrides and
 * cfg_free() (the shape of Redis' createIntConfig() table). Two keys are trees
 * rather than values: rules.params (any YAML mapping, converted to a cJSON
 * object the Lua rules read) and inventory.seed (SKU -> initial stock).
 *
 * Errors are collected, not returned on the first, so one run of `nerve
 * check` shows everything to fix. Every input is bounded (file size, string
 * length, list and mapping size, nesting depth, number of params nodes), which
 * also defuses YAML alias bombs and self-referencing anchors. Nothing here
 * logs, exits or keeps global state: cfg_load() is safe to call from any
 * thread (the environment must not be modified concurrently, as for any
 * getenv() caller).
 *
 * This file holds the table and its string checks, the error report, YAML
 * documents and the walk of a file, the checks between keys, cfg_load() and
 * cfg_free(): where a key is and what went wrong. What a key's value becomes
 * (scalars, lists, the params tree, the seeds, defaults, environment and --set
 * overrides) is config_values.c; engine/config_int.h is what the two share.
 */
#include "nerve/config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <yaml.h>

#include "config_int.h"
#include "nerve/sentinel.h"
#include "nerve/url.h"

/* ------------------------------------------------------------------------ */
/* The table                                                                */
/* ------------------------------------------------------------------------ */

#define F(f) .off = offsetof(cfg, f)
#define OPT_INT(k, f, lo, hi, d) \
    { .key = k, .type = T_INT, F(f), .min = lo, .max = hi, .idef = d }
#define OPT_LONG(k, f, lo, hi, d) \
    { .key = k, .type = T_LONG, F(f), .min = lo, .max = hi, .idef = d }
#define OPT_LLONG(k, f, lo, hi, d) \
    { .key = k, .type = T_LLONG, F(f), .min = lo, .max = hi, .idef = d }
#define OPT_DOUBLE(k, f, lo, hi, d) \
    { .key = k, .type = T_DOUBLE, F(f), .dmin = lo, .dmax = hi, .ddef = d }
#define OPT_BOOL(k, f, d) \
    { .key = k, .type = T_BOOL, F(f), .idef = d }
#define OPT_STR(k, f, lo, d, chk) \
    { .key = k, .type = T_STR, F(f), .min = lo, .max = MAX_STR, .sdef = d, .check = chk }
#define OPT_ENUM(k, f, d, ch) \
    { .key = k, .type = T_ENUM, F(f), .sdef = d, .choices = ch }
#define OPT_LIST(k, f, n, d) \
    { .key = k, .type = T_LIST, F(f), .off_n = offsetof(cfg, n), .sdef = d }
#define OPT_PARAMS(k, f) \
    { .key = k, .type = T_PARAMS, F(f) }
#define OPT_SEED(k, f, n) \
    { .key = k, .type = T_SEED, F(f), .off_n = offsetof(cfg, n) }

static check_fn check_listen, check_redis_url, check_prefix, check_http_url, check_header,
    check_name, check_master_name, check_ledger_url;

static const char *const redis_modes[] = { "standalone", "cluster", "sentinel", NULL };
static const char *const log_levels[] = { "debug", "info", "warn", "error", NULL };
static const char *const log_formats[] = { "text", "json", NULL };
static const char *const sale_on_error_values[] = { "reject", "allow", NULL };

/* clang-format off: one row per key reads as a table. */
const opt cfg_opts[] = {
    OPT_STR("server.listen", listen, 1, "127.0.0.1:8011", check_listen),
    OPT_INT("server.threads", threads, 1, 1024, 128),
    OPT_LONG("server.max_body_bytes", max_body_bytes, 64, 1048576, 8192),
    OPT_STR("server.cors_origin", cors_origin, 0, "", check_header),
    OPT_STR("server.pidfile", pidfile, 0, "", NULL),
    OPT_INT("server.request_timeout_ms", request_timeout_ms, 100, 600000, 10000),
    OPT_INT("server.evict_idle_ms", evict_idle_ms, 1, 60000, 50),
    OPT_INT("server.shutdown_grace_ms", shutdown_grace_ms, 0, 600000, 10000),

    OPT_STR("redis.url", redis_url, 1, "redis://127.0.0.1:6379/0", check_redis_url),
    OPT_INT("redis.connect_timeout_ms", redis_connect_timeout_ms, 1, 60000, 1000),
    OPT_INT("redis.command_timeout_ms", redis_command_timeout_ms, 1, 60000, 1000),
    OPT_INT("redis.reconnect_max_ms", redis_reconnect_max_ms, 1, 60000, 2000),
    OPT_STR("redis.prefix", redis_prefix, 0, "nerve:", check_prefix),
    OPT_ENUM("redis.mode", redis_mode, "standalone", redis_modes),
    OPT_LIST("redis.sentinels", redis_sentinels, n_redis_sentinels, ""),
    OPT_STR("redis.master_name", redis_master_name, 0, "", check_master_name),

    OPT_LIST("bus.channels", bus_channels, n_bus_channels,
             "inventory_events,sales_events,financial_events"),
    OPT_STR("bus.alerts_channel", alerts_channel, 1, "system_alerts", NULL),
    OPT_STR("bus.inventory_channel", inventory_channel, 1, "inventory_events", NULL),
    OPT_STR("bus.sales_channel", sales_channel, 1, "sales_events", NULL),
    OPT_INT("bus.queue_size", queue_size, 1, 1000000, 10000),
    OPT_LONG("bus.max_event_bytes", max_event_bytes, 64, 16777216, CFG_MAX_EVENT_BYTES_DEFAULT),
    OPT_INT("bus.stall_ms", stall_ms, 100, 3600000, 5000),
    OPT_INT("bus.partitions", bus_partitions, 1, 1024, 16),
    OPT_BOOL("bus.streams", bus_streams, 1),
    OPT_LONG("bus.stream_maxlen", stream_maxlen, 1000, 1000000000, 1000000),
    OPT_BOOL("bus.publish", bus_publish, 1),
    OPT_BOOL("bus.pubsub_input", bus_pubsub_input, 1),
    OPT_STR("bus.group", bus_group, 1, "nerve", check_name),
    OPT_INT("bus.claim_idle_ms", claim_idle_ms, 100, 3600000, 30000),

    OPT_INT("lock.ttl_ms", lock_ttl_ms, 10, 600000, 2000),
    OPT_INT("lock.max_wait_ms", lock_max_wait_ms, 0, 600000, 1000),

    OPT_LLONG("sale.max_qty", max_qty, 1, 1000000000, 1000),
    OPT_INT("sale.idempotency_ttl_s", idempotency_ttl_s, 1, 31536000, 86400),
    OPT_INT("sale.max_batch", max_batch, 1, 1024, 128),
    OPT_INT("sale.pipelines", sale_pipelines, 1, 64, 2),
    OPT_INT("sale.wait_replicas", sale_wait_replicas, 0, 16, 0),
    OPT_INT("sale.wait_timeout_ms", sale_wait_timeout_ms, 1, 60000, 200),

    OPT_STR("rules.dir", rules_dir, 1, "rules", NULL),
    OPT_LIST("rules.files", rules_files, n_rules_files, ""),
    OPT_LLONG("rules.instruction_limit", rules_instruction_limit, 1000, 1000000000,
              CFG_RULES_INSTRUCTION_LIMIT_DEFAULT),
    OPT_LLONG("rules.memory_limit", rules_memory_limit, 65536, 2147483648LL,
              CFG_RULES_MEMORY_LIMIT_DEFAULT),
    OPT_INT("rules.eval_timeout_ms", rules_eval_timeout_ms, 1, 60000,
            CFG_RULES_EVAL_TIMEOUT_MS_DEFAULT),
    OPT_ENUM("rules.sale_on_error", rules_sale_on_error, "reject", sale_on_error_values),
    OPT_PARAMS("rules.params", params),

    OPT_STR("panic.webhook_url", panic_webhook_url, 0, "", check_http_url),
    OPT_STR("panic.resume_url", panic_resume_url, 0, "", check_http_url),
    OPT_INT("panic.timeout_ms", panic_timeout_ms, 1, 600000, 2000),
    OPT_INT("panic.max_attempts", panic_max_attempts, 1, 100, 5),
    OPT_INT("panic.backoff_initial_ms", panic_backoff_initial_ms, 1, 600000, 100),
    OPT_INT("panic.backoff_max_ms", panic_backoff_max_ms, 1, 3600000, 5000),
    OPT_DOUBLE("panic.backoff_multiplier", panic_backoff_multiplier, 1.0, 10.0, 2.0),
    OPT_BOOL("panic.jitter", panic_jitter, 1),
    OPT_BOOL("panic.dry_run", panic_dry_run, 0),

    OPT_INT("alerts.throttle_s", alerts_throttle_s, 0, 86400, 60),
    OPT_LONG("alerts.audit_maxlen", audit_maxlen, 1, 10000000, 10000),

    OPT_LONG("decisions.maxlen", decisions_maxlen, 1, 10000000, 10000),
    OPT_LONG("decisions.event_max_bytes", decisions_event_max_bytes, 0, 65536, 4096),
    OPT_INT("decisions.queue_size", decisions_queue_size, 1, 1000000, 10000),

    OPT_BOOL("ledger.enabled", ledger_enabled, 1),
    OPT_STR("ledger.path", ledger_path, 1, "nerve-ledger.db", NULL),
    OPT_STR("ledger.url", ledger_url, 0, "", check_ledger_url),
    OPT_STR("ledger.group", ledger_group, 1, "nerve-ledger", check_name),
    OPT_INT("ledger.batch", ledger_batch, 1, 10000, 2000),
    OPT_INT("ledger.lag_ready_ms", ledger_lag_ready_ms, 100, 86400000, 10000),
    OPT_BOOL("ledger.lag_unready", ledger_lag_unready, 0),

    OPT_SEED("inventory.seed", seed, n_seed),

    OPT_ENUM("log.level", log_level, "info", log_levels),
    OPT_ENUM("log.format", log_format, "text", log_formats),
};
/* clang-format on */

/* config_int.h sizes loader.at[] with CFG_NOPTS. */
_Static_assert(sizeof cfg_opts / sizeof cfg_opts[0] == CFG_NOPTS,
               "CFG_NOPTS must count the rows of cfg_opts");

/* ------------------------------------------------------------------------ */
/* Error collection                                                         */
/* ------------------------------------------------------------------------ */

/* N advanced by snprintf's result R in a buffer of SIZE bytes, clamped to
 * the truncated length. */
size_t cfg_advance(size_t n, int r, size_t size) {
    return r < 0 ? n : n + (size_t)r < size ? n + (size_t)r : size - 1;
}

static void append(loader *L, const char *s, size_t n) {
    if (L->len + n + 1 > L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        char *p;
        while (cap < L->len + n + 1) cap *= 2;
        if (!(p = realloc(L->err, cap))) {
            L->oom = true;
            return;
        }
        L->err = p;
        L->cap = cap;
    }
    memcpy(L->err + L->len, s, n);
    L->len += n;
    L->err[L->len] = '\0';
}

/* Add one error line: "FILE:LINE:COL: KEY: message", "env NAME: message" or
 * "--set KEY: message" (KEY may be NULL). Control characters that a key or
 * path may carry are replaced so that one error stays one line. */
__attribute__((format(printf, 4, 5))) void cfg_errf(loader *L, const origin *at, const char *key,
                                                    const char *fmt, ...) {
    static const char enough[] = "too many errors; stopping here\n";
    char line[2048];
    size_t n, i;
    int r = 0;
    va_list ap;

    if (L->nerr++ >= MAX_ERRORS) {
        if (L->nerr == MAX_ERRORS + 1) append(L, enough, sizeof enough - 1);
        return;
    }
    switch (at->kind) {
    case AT_FILE:
        r = at->line ? snprintf(line, sizeof line, "%s:%d:%d: ", at->file, at->line, at->col)
                     : snprintf(line, sizeof line, "%s: ", at->file);
        break;
    case AT_ENV:
        r = snprintf(line, sizeof line, "env %s: ", at->name);
        key = NULL;
        break;
    case AT_SET: r = snprintf(line, sizeof line, "--set "); break;
    case AT_DEFAULT: break;
    }
    n = cfg_advance(0, r, sizeof line);
    if (key) n = cfg_advance(n, snprintf(line + n, sizeof line - n, "%s: ", key), sizeof line);
    va_start(ap, fmt);
    n = cfg_advance(n, vsnprintf(line + n, sizeof line - n, fmt, ap), sizeof line);
    va_end(ap);
    for (i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f) line[i] = '?';
    line[n++] = '\n'; /* vsnprintf left room: n <= sizeof line - 1 */
    append(L, line, n);
}

/* S as it appears in a message: quoted, escaped, at most MAX_SHOW bytes (cut
 * on a UTF-8 boundary). BUF holds QBUF bytes. */
const char *cfg_quote(char *buf, const char *s) {
    size_t o = 0, i;

    buf[o++] = '"';
    for (i = 0; s[i] && i < MAX_SHOW; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            o += (size_t)snprintf(buf + o, 5, "\\x%02x", ch);
        } else {
            buf[o++] = (char)ch;
        }
    }
    if (s[i]) {
        while (o > 1 && ((unsigned char)buf[o - 1] & 0xc0) == 0x80) o--;
        if (o > 1 && ((unsigned char)buf[o - 1] & 0xc0) == 0xc0) o--;
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* ------------------------------------------------------------------------ */
/* String checks                                                            */
/* ------------------------------------------------------------------------ */

static int check_listen(const char *s, char *msg, size_t size) {
    const char *colon = strrchr(s, ':'), *host_chars = "abcdefghijklmnopqrstuvwxyz"
                                                       "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_";
    size_t hlen = colon ? (size_t)(colon - s) : 0;
    long long port = 0;
    bool ok = hlen > 0 && isdigit((unsigned char)colon[1]) && cfg_parse_ll(colon + 1, &port) == 0 &&
              port >= 1 && port <= 65535;
    char q[QBUF];

    if (ok && s[0] == '[') /* IPv6: [::1]:8011 */
        ok = hlen > 2 && s[hlen - 1] == ']' &&
             strspn(s + 1, "0123456789abcdefABCDEF:.%") == hlen - 2;
    else if (ok)
        ok = strspn(s, host_chars) == hlen;
    if (ok) return 0;
    snprintf(msg, size, "must be HOST:PORT with a port between 1 and 65535 (got %s)",
             cfg_quote(q, s));
    return -1;
}

/* URLs are parsed as the daemon will use them (url.h, over libcurl), so a
 * bad port or database is a FILE:LINE error here, not a failure in serve.
 * They are not echoed back: they may carry a password or token. */
static int check_redis_url(const char *s, char *msg, size_t size) {
    url_redis u;
    url_sentinel us;
    char err[200];
    int rc = 0;
    if (!strncmp(s, URL_SENTINEL_SCHEME, sizeof URL_SENTINEL_SCHEME - 1)) {
        if (url_parse_sentinel(s, &us, err, sizeof err) != 0) {
            snprintf(msg, size, "invalid redis-sentinel:// URL: %s", err);
            rc = -1;
        }
    } else if (url_parse_redis(s, &u, err, sizeof err) != 0) {
        if (strncmp(s, "redis://", 8) != 0)
            snprintf(msg, size, "%s", err);
        else
            snprintf(msg, size, "invalid redis:// URL: %s", err);
        rc = -1;
    }
    /* The parsed copies hold the password: not left on the stack. */
    explicit_bzero(&u, sizeof u);
    explicit_bzero(&us, sizeof us);
    return rc;
}

static int check_http_url(const char *s, char *msg, size_t size) {
    char err[200];
    if (!*s || url_check_http(s, err, sizeof err) == 0) return 0;
    if (strncasecmp(s, "http://", 7) != 0 && strncasecmp(s, "https://", 8) != 0)
        snprintf(msg, size, "must be an http:// or https:// URL, or empty for none");
    else
        snprintf(msg, size, "invalid http(s) URL: %s", err);
    return -1;
}

/* The value goes into a response header: a CR or LF would inject headers. */
static int check_header(const char *s, char *msg, size_t size) {
    const char *p;
    for (p = s; *p; p++)
        if (iscntrl((unsigned char)*p)) {
            snprintf(msg, size, "must not contain control characters");
            return -1;
        }
    return 0;
}

/* Keys are PREFIX{SKU}:stock: a brace in the prefix would move the hash tag
 * and break the one-slot-per-SKU layout. */
static int check_prefix(const char *s, char *msg, size_t size) {
    const char *p;
    char q[QBUF];

    for (p = s; *p; p++)
        if (*p == '{' || *p == '}' || isspace((unsigned char)*p) || iscntrl((unsigned char)*p))
            break;
    if (!*p && p - s <= MAX_PREFIX) return 0;
    snprintf(msg, size, "must be at most %d bytes without spaces, { or } (got %s)", MAX_PREFIX,
             cfg_quote(q, s));
    return -1;
}

/* Consumer group names: they appear in XINFO and in logs. */
static int check_name(const char *s, char *msg, size_t size) {
    char q[QBUF];
    size_t n = strlen(s);
    int ok = n >= 1 && n <= 64;
    for (const char *p = s; ok && *p; p++) ok = isalnum((unsigned char)*p) || strchr("._:-", *p);
    if (ok) return 0;
    snprintf(msg, size, "must be 1 to 64 of A-Z a-z 0-9 . _ : - (got %s)", cfg_quote(q, s));
    return -1;
}

/* A Sentinel master name (SENTINEL GET-MASTER-ADDR-BY-NAME); "" = none. */
static int check_master_name(const char *s, char *msg, size_t size) {
    return *s ? check_name(s, msg, size) : 0;
}

/* The URL is passed to libpq as it is; only its scheme is checked here, and it
 * is never echoed back: it may carry a password. */
static int check_ledger_url(const char *s, char *msg, size_t size) {
    if (!*s || !strncmp(s, "postgresql://", 13) || !strncmp(s, "postgres://", 11)) return 0;
    snprintf(msg, size, "must be empty (SQLite at ledger.path) or a postgresql:// URL");
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Lookups                                                                  */
/* ------------------------------------------------------------------------ */

const opt *cfg_find_opt(const char *key) {
    size_t i;
    for (i = 0; i < CFG_NOPTS; i++)
        if (!strcmp(cfg_opts[i].key, key)) return &cfg_opts[i];
    return NULL;
}

static bool is_section(const char *name) {
    size_t i, n = strlen(name);
    for (i = 0; i < CFG_NOPTS; i++)
        if (!strncmp(cfg_opts[i].key, name, n) && cfg_opts[i].key[n] == '.') return true;
    return false;
}

/* The environment variable a secret-looking KEY should have been, or NULL.
 * Only called for keys that are not in the table. */
static const char *secret_env(const char *key) {
    const char *last = strrchr(key, '.');
    last = last ? last + 1 : key;
    if (strstr(last, "token") || strstr(last, "password") || strstr(last, "secret")) {
        if (strstr(key, "admin")) return "NERVE_ADMIN_TOKEN";
        if (strstr(key, "redis")) return "REDIS_URL";
        if (strstr(key, "panic") || strstr(key, "webhook")) return "NERVE_PANIC_TOKEN";
        return "NERVE_ADMIN_TOKEN or NERVE_PANIC_TOKEN";
    }
    return NULL;
}

void cfg_unknown_key(loader *L, const origin *at, const char *key) {
    const char *env = secret_env(key);
    if (env)
        cfg_errf(L, at, key, "secrets come from the environment (%s), never from the config file",
                 env);
    else
        cfg_errf(L, at, key, "unknown key");
}

origin cfg_at_node(const origin *base, const yaml_node_t *n) {
    origin o = *base;
    if (o.kind == AT_FILE) {
        o.line = (int)n->start_mark.line + 1;
        o.col = (int)n->start_mark.column + 1;
    }
    return o;
}

yaml_node_t *cfg_node(yaml_document_t *d, int id) {
    return yaml_document_get_node(d, id);
}

/* The text of mapping key K, or NULL after reporting it (under PARENT) when
 * it is not a usable string. */
const char *cfg_key_text(loader *L, const yaml_node_t *k, const origin *base, const char *parent) {
    origin at = cfg_at_node(base, k);
    if (k->type == YAML_SCALAR_NODE && !cfg_has_nul(k) && k->data.scalar.length >= 1 &&
        k->data.scalar.length <= MAX_KEY)
        return (const char *)k->data.scalar.value;
    cfg_errf(L, &at, parent, "keys must be strings of 1 to %d bytes", MAX_KEY);
    return NULL;
}

/* Report PAIR's key (under KEY) if an earlier key of mapping M has the same
 * text; true if it was a duplicate. O(n^2), which MAX_MAP bounds. */
bool cfg_duplicate(loader *L, yaml_document_t *d, yaml_node_t *m, yaml_node_pair_t *pair,
                   const origin *base, const char *key) {
    yaml_node_t *k = cfg_node(d, pair->key), *q;
    yaml_node_pair_t *p;

    for (p = m->data.mapping.pairs.start; p < pair; p++) {
        q = cfg_node(d, p->key);
        if (q->type == YAML_SCALAR_NODE && q->data.scalar.length == k->data.scalar.length &&
            !memcmp(q->data.scalar.value, k->data.scalar.value, k->data.scalar.length)) {
            origin at = cfg_at_node(base, k);
            cfg_errf(L, &at, key, "duplicate key (first at line %d)", (int)q->start_mark.line + 1);
            return true;
        }
    }
    return false;
}

bool cfg_map_too_big(loader *L, yaml_node_t *m, const origin *base, const char *key) {
    origin at = cfg_at_node(base, m);
    if (m->data.mapping.pairs.top - m->data.mapping.pairs.start <= MAX_MAP) return false;
    cfg_errf(L, &at, key, "more than %d entries", MAX_MAP);
    return true;
}

/* ------------------------------------------------------------------------ */
/* Documents                                                                */
/* ------------------------------------------------------------------------ */

/* Report the syntax error of parser P under origin BASE (and KEY for an
 * override). BUF[0..LEN) is the input, to locate reader (encoding) errors,
 * which libyaml reports as a byte offset. */
static void yaml_problem(loader *L, const yaml_parser_t *p, const origin *base, const char *key,
                         const char *buf, size_t len) {
    origin at = *base;
    char ctx[128] = "", val[16] = "";
    const char *what = p->problem ? p->problem : "unknown problem";

    if (p->error == YAML_MEMORY_ERROR) {
        L->oom = true;
        return;
    }
    if (at.kind == AT_FILE && p->error == YAML_READER_ERROR) {
        size_t i;
        at.line = at.col = 1;
        for (i = 0; i < p->problem_offset && i < len; i++) {
            if (buf[i] == '\n')
                at.line++, at.col = 1;
            else if (((unsigned char)buf[i] & 0xc0) != 0x80)
                at.col++;
        }
    } else if (at.kind == AT_FILE) {
        at.line = (int)p->problem_mark.line + 1;
        at.col = (int)p->problem_mark.column + 1;
    }
    if (p->error == YAML_READER_ERROR && p->problem_value != -1)
        snprintf(val, sizeof val, " (0x%02x)", (unsigned)p->problem_value);
    if (p->context && at.kind == AT_FILE)
        snprintf(ctx, sizeof ctx, " (%s at line %d, column %d)", p->context,
                 (int)p->context_mark.line + 1, (int)p->context_mark.column + 1);
    cfg_errf(L, &at, key, "%s%s%s%s", at.kind == AT_FILE ? "" : "invalid YAML: ", what, val, ctx);
}

/* Load the one document of BUF[0..LEN) into D; -1 after reporting a syntax
 * error or a second document. D is always safe to yaml_document_delete(). */
int cfg_load_doc(loader *L, yaml_document_t *d, const char *buf, size_t len, const origin *base,
                 const char *key) {
    yaml_parser_t p;
    yaml_document_t extra;
    int rc = -1;

    memset(d, 0, sizeof *d);
    if (!yaml_parser_initialize(&p)) {
        L->oom = true;
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    if (!yaml_parser_load(&p, d)) {
        yaml_problem(L, &p, base, key, buf, len);
        goto err;
    }
    if (yaml_document_get_root_node(d)) {
        if (!yaml_parser_load(&p, &extra)) {
            yaml_problem(L, &p, base, key, buf, len);
            goto err;
        }
        if (yaml_document_get_root_node(&extra)) {
            origin at = *base;
            if (at.kind == AT_FILE) {
                at.line = (int)extra.start_mark.line + 1;
                at.col = (int)extra.start_mark.column + 1;
            }
            cfg_errf(L, &at, key, "expected one YAML document, found more");
            yaml_document_delete(&extra);
            goto err;
        }
        yaml_document_delete(&extra);
    }
    rc = 0;
err:
    if (rc) yaml_document_delete(d);
    yaml_parser_delete(&p);
    return rc;
}

static void walk_section(loader *L, yaml_document_t *d, const char *section, yaml_node_t *m,
                         const origin *base) {
    yaml_node_pair_t *p;
    char key[2 * MAX_KEY + 2];

    if (cfg_map_too_big(L, m, base, section)) return;
    for (p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *k = cfg_node(d, p->key);
        const char *name = cfg_key_text(L, k, base, section);
        origin kat = cfg_at_node(base, k);
        const opt *o;

        if (!name) continue;
        snprintf(key, sizeof key, "%s.%s", section, name);
        if (cfg_duplicate(L, d, m, p, base, key)) continue;
        if (!(o = cfg_find_opt(key)))
            cfg_unknown_key(L, &kat, key);
        else
            cfg_set_node(L, o, key, d, cfg_node(d, p->value), base);
    }
}

static void walk_top(loader *L, yaml_document_t *d, yaml_node_t *root, const origin *base) {
    yaml_node_pair_t *p;

    if (root->type != YAML_MAPPING_NODE) {
        origin at = cfg_at_node(base, root);
        if (!cfg_is_null(root)) cfg_errf(L, &at, NULL, "expected a mapping at top level");
        return;
    }
    if (cfg_map_too_big(L, root, base, NULL)) return;
    for (p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = cfg_node(d, p->key), *v = cfg_node(d, p->value);
        const char *name = cfg_key_text(L, k, base, NULL);
        origin kat = cfg_at_node(base, k), vat = cfg_at_node(base, v);

        if (!name || cfg_duplicate(L, d, root, p, base, name)) continue;
        if (!is_section(name))
            cfg_unknown_key(L, &kat, name);
        else if (v->type == YAML_MAPPING_NODE)
            walk_section(L, d, name, v, base);
        else if (!cfg_is_null(v)) /* `log:` alone: all defaults */
            cfg_errf(L, &vat, name, "expected a mapping (got %s)", cfg_kind(v));
    }
}

static void load_file(loader *L, const char *path) {
    origin at = { .kind = AT_FILE, .file = path };
    yaml_document_t d;
    char *buf = NULL, ebuf[128];
    size_t len = 0, n;
    FILE *f;
    int e;

    if (!(f = fopen(path, "rb"))) {
        e = errno;
        cfg_errf(L, &at, NULL, "cannot open: %s", strerror_r(e, ebuf, sizeof ebuf));
        return;
    }
    if (!(buf = malloc(MAX_FILE_BYTES + 1))) {
        L->oom = true;
        goto err;
    }
    while ((n = fread(buf + len, 1, MAX_FILE_BYTES + 1 - len, f)) > 0 && len + n <= MAX_FILE_BYTES)
        len += n;
    if (ferror(f)) {
        e = errno;
        cfg_errf(L, &at, NULL, "cannot read: %s", strerror_r(e, ebuf, sizeof ebuf));
        goto err;
    }
    if (n > 0) {
        cfg_errf(L, &at, NULL, "larger than %ld bytes", MAX_FILE_BYTES);
        goto err;
    }
    if (cfg_load_doc(L, &d, buf, len, &at, NULL) == 0) {
        yaml_node_t *root = yaml_document_get_root_node(&d);
        if (root) walk_top(L, &d, root, &at);
        yaml_document_delete(&d);
    }
err:
    free(buf);
    fclose(f);
}

/* ------------------------------------------------------------------------ */
/* Checks between keys                                                      */
/* ------------------------------------------------------------------------ */

/* Where KEY was last set (the file's line, the environment, --set). */
static const origin *key_at(const loader *L, const char *key) {
    return &L->at[cfg_find_opt(key) - cfg_opts];
}

/* redis.mode against redis.url, redis.sentinels and redis.master_name: each
 * deployment is described one way, and a key that would be ignored is an
 * error rather than a surprise. */
static void check_redis_mode(loader *L) {
    cfg *c = L->c;
    bool sentinel_url = !strncmp(c->redis_url, URL_SENTINEL_SCHEME, sizeof URL_SENTINEL_SCHEME - 1);
    bool sentinel = !strcmp(c->redis_mode, "sentinel");
    const origin *url_at = key_at(L, "redis.url"), *list_at = key_at(L, "redis.sentinels"),
                 *name_at = key_at(L, "redis.master_name");
    char msg[256];

    for (size_t i = 0; i < c->n_redis_sentinels; i++) {
        char host[256], e[200], k[64], q[QBUF];
        int port;
        if (url_parse_hostport(c->redis_sentinels[i], 0, host, sizeof host, &port, e, sizeof e)) {
            snprintf(k, sizeof k, "redis.sentinels[%zu]", i);
            cfg_errf(L, list_at, k, "%s (got %s)", e, cfg_quote(q, c->redis_sentinels[i]));
        }
    }
    if (!sentinel) {
        if (sentinel_url)
            cfg_errf(L, url_at, "redis.url", "a redis-sentinel:// URL needs redis.mode: sentinel");
        if (c->n_redis_sentinels)
            cfg_errf(L, list_at, "redis.sentinels", "only used with redis.mode: sentinel");
        if (c->redis_master_name[0])
            cfg_errf(L, name_at, "redis.master_name", "only used with redis.mode: sentinel");
    } else if (sentinel_url) {
        if (c->n_redis_sentinels)
            cfg_errf(L, list_at, "redis.sentinels",
                     "leave empty: redis.url is a redis-sentinel:// URL, which names the "
                     "sentinels");
        if (c->redis_master_name[0])
            cfg_errf(L, name_at, "redis.master_name",
                     "leave empty: redis.url is a redis-sentinel:// URL, which names the master");
    } else if (!c->n_redis_sentinels || !c->redis_master_name[0]) {
        /* Reported where the mode was chosen: the missing key has no line. */
        cfg_errf(L, key_at(L, "redis.mode"), "redis.mode",
                 "sentinel needs %s%s%s, or redis.url as a "
                 "redis-sentinel://host:port,.../master_name URL",
                 c->n_redis_sentinels ? "" : "redis.sentinels (host:port of each)",
                 !c->n_redis_sentinels && !c->redis_master_name[0] ? " and " : "",
                 c->redis_master_name[0] ? "" : "redis.master_name (the master they watch)");
    }
    if (!strcmp(c->redis_mode, "cluster") && !sentinel_url) {
        url_redis u;
        if (url_parse_redis(c->redis_url, &u, msg, sizeof msg) == 0 && u.db != 0)
            cfg_errf(L, url_at, "redis.url",
                     "database %d: Redis Cluster has only database 0 (redis.mode: cluster)", u.db);
    }
}

/* Checks between keys, after every override, reported where the key was
 * last set. */
static void cross_check(loader *L) {
    const opt *lo = cfg_find_opt("panic.backoff_initial_ms"),
              *hi = cfg_find_opt("panic.backoff_max_ms");
    const origin *alo = &L->at[lo - cfg_opts], *ahi = &L->at[hi - cfg_opts];
    cfg *c = L->c;

    check_redis_mode(L);
    /* WAIT blocks the commit connection up to its timeout: past the command
     * timeout, the read of its reply would fail and drop the connection. */
    if (c->sale_wait_replicas > 0 && c->sale_wait_timeout_ms >= c->redis_command_timeout_ms)
        cfg_errf(L, key_at(L, "sale.wait_timeout_ms"), "sale.wait_timeout_ms",
                 "must be below redis.command_timeout_ms (%d) when sale.wait_replicas is set",
                 c->redis_command_timeout_ms);
    /* WAIT counts the replicas of the writes made on its own connection: in
     * a cluster the commits of one batch go to several primaries, and a WAIT
     * (no key) to one of them would vouch for the others' sales. */
    if (c->sale_wait_replicas > 0 && c->redis_mode && !strcmp(c->redis_mode, "cluster"))
        cfg_errf(L, key_at(L, "sale.wait_replicas"), "sale.wait_replicas",
                 "is not supported with redis.mode cluster in this build (WAIT would have to "
                 "follow each primary's commits); use 0, or redis.mode sentinel");
    if (c->panic_backoff_initial_ms <= c->panic_backoff_max_ms) return;
    if (alo->kind != AT_DEFAULT)
        cfg_errf(L, alo, lo->key, "must not exceed panic.backoff_max_ms (%d)",
                 c->panic_backoff_max_ms);
    else
        cfg_errf(L, ahi, hi->key, "must not be below panic.backoff_initial_ms (%d)",
                 c->panic_backoff_initial_ms);
}

/* ------------------------------------------------------------------------ */
/* API                                                                      */
/* ------------------------------------------------------------------------ */

cfg *cfg_load(const char *path, char *const *sets, size_t nsets, char **errors) {
    loader L;
    size_t i;

    assert(path);
    memset(&L, 0, sizeof L);
    if (errors) *errors = NULL;
    if (!(L.c = calloc(1, sizeof *L.c)) || !(L.c->path = strdup(path))) {
        L.oom = true;
        goto err;
    }
    cfg_set_defaults(&L);
    if (L.oom) goto err;
    load_file(&L, path);
    cfg_apply_env(&L);
    for (i = 0; i < nsets; i++) cfg_apply_set(&L, sets[i]);
    cross_check(&L);
    if (L.oom || L.nerr) goto err;
    free(L.err);
    return L.c;

err:
    cfg_free(L.c);
    if (L.oom) {
        free(L.err);
        L.err = strdup("out of memory\n");
    }
    if (errors)
        *errors = L.err;
    else
        free(L.err);
    return NULL;
}

/* Sentinel mode: the primary's user, password and db, and the process'
 * resolver for the sentinels and master (sentinel.h), from a
 * redis-sentinel:// URL or from redis.url + redis.sentinels +
 * redis.master_name (cfg_load checked that exactly one is given). */
static int sentinel_opts(const cfg *c, rds_opts *ro, char *err, size_t errlen) {
    snt_addr *addrs = NULL;
    const char *master;
    int n = 0, rc = -1;
    char e[256];
    url_sentinel *us = calloc(1, sizeof *us);
    if (!us) goto oom;
    if (!strncmp(c->redis_url, URL_SENTINEL_SCHEME, sizeof URL_SENTINEL_SCHEME - 1)) {
        if (url_parse_sentinel(c->redis_url, us, e, sizeof e)) {
            snprintf(err, errlen, "redis.url: %s", e);
            goto out;
        }
        if (!(addrs = calloc((size_t)us->n, sizeof *addrs))) goto oom;
        for (n = 0; n < us->n; n++) {
            snprintf(addrs[n].host, sizeof addrs[n].host, "%s", us->sentinels[n].host);
            addrs[n].port = us->sentinels[n].port;
        }
        snprintf(ro->user, sizeof ro->user, "%s", us->user);
        snprintf(ro->pass, sizeof ro->pass, "%s", us->pass);
        ro->db = us->db;
        master = us->master;
    } else {
        if (rds_parse_url(c->redis_url, ro, err, errlen)) goto out;
        if (c->n_redis_sentinels > SNT_MAX) {
            snprintf(err, errlen, "redis.sentinels: at most %d", SNT_MAX);
            goto out;
        }
        if (!(addrs = calloc(c->n_redis_sentinels ? c->n_redis_sentinels : 1, sizeof *addrs)))
            goto oom;
        for (; (size_t)n < c->n_redis_sentinels; n++)
            if (url_parse_hostport(c->redis_sentinels[n], 0, addrs[n].host, sizeof addrs[n].host,
                                   &addrs[n].port, e, sizeof e)) {
                snprintf(err, errlen, "redis.sentinels[%d]: %s", n, e);
                goto out;
            }
        master = c->redis_master_name;
    }
    snprintf(ro->host, sizeof ro->host, "sentinel:%s", master);
    ro->port = 0;
    ro->sentinel = snt_shared(addrs, n, master, c->sentinel_password, c->redis_connect_timeout_ms,
                              c->redis_command_timeout_ms, err, errlen);
    rc = ro->sentinel ? 0 : -1;
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
out:
    free(addrs);
    free(us);
    return rc;
}

int cfg_redis_opts(const cfg *c, rds_opts *ro, char *err, size_t errlen) {
    memset(ro, 0, sizeof *ro);
    ro->connect_timeout_ms = c->redis_connect_timeout_ms;
    ro->command_timeout_ms = c->redis_command_timeout_ms;
    ro->reconnect_max_ms = c->redis_reconnect_max_ms;
    /* A cfg built by hand (NULL mode) is standalone. Sentinel: the primary
     * the sentinels name. Cluster: redis.url names one node, the seed the
     * slot map is asked of. */
    if (c->redis_mode && !strcmp(c->redis_mode, "sentinel"))
        return sentinel_opts(c, ro, err, errlen);
    ro->cluster = c->redis_mode && !strcmp(c->redis_mode, "cluster");
    if (c->redis_mode && !ro->cluster && strcmp(c->redis_mode, "standalone") != 0) {
        snprintf(err, errlen, "redis.mode %s is not known (standalone, cluster or sentinel)",
                 c->redis_mode);
        return -1;
    }
    return rds_parse_url(c->redis_url, ro, err, errlen);
}

void cfg_free(cfg *c) {
    size_t i;

    if (!c) return;
    for (i = 0; i < CFG_NOPTS; i++) {
        const opt *o = &cfg_opts[i];
        switch (o->type) {
        case T_STR:
        case T_ENUM: free(*FIELD(c, o, char *)); break;
        case T_LIST: cfg_free_list(*FIELD(c, o, char **), *COUNT(c, o)); break;
        case T_PARAMS: cJSON_Delete(*FIELD(c, o, cJSON *)); break;
        case T_SEED: cfg_free_seed(*FIELD(c, o, cfg_seed *), *COUNT(c, o)); break;
        default: break;
        }
    }
    cJSON_Delete(c->params_where);
    if (c->admin_token) explicit_bzero(c->admin_token, strlen(c->admin_token));
    if (c->panic_token) explicit_bzero(c->panic_token, strlen(c->panic_token));
    if (c->sentinel_password) explicit_bzero(c->sentinel_password, strlen(c->sentinel_password));
    free(c->admin_token);
    free(c->panic_token);
    free(c->sentinel_password);
    for (i = 0; i < c->n_admin_tokens; i++) {
        cfg_token *t = &c->admin_tokens[i];
        if (t->token) explicit_bzero(t->token, strlen(t->token));
        free(t->token);
        free(t->name);
    }
    free(c->admin_tokens);
    free(c->path);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* Comparing two configs                                                     */
/* ------------------------------------------------------------------------ */

static bool same_list(char *const *a, size_t na, char *const *b, size_t nb) {
    if (na != nb) return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0) return false;
    return true;
}

static bool same_value(const cfg *a, const cfg *b, const opt *o) {
    switch (o->type) {
    case T_INT: return *FIELD(a, o, int) == *FIELD(b, o, int);
    case T_LONG: return *FIELD(a, o, long) == *FIELD(b, o, long);
    case T_LLONG: return *FIELD(a, o, long long) == *FIELD(b, o, long long);
    case T_DOUBLE: return *FIELD(a, o, double) == *FIELD(b, o, double);
    case T_BOOL: return *FIELD(a, o, bool) == *FIELD(b, o, bool);
    case T_STR:
    case T_ENUM: return strcmp(*FIELD(a, o, char *), *FIELD(b, o, char *)) == 0;
    case T_LIST:
        return same_list(*FIELD(a, o, char **), *COUNT(a, o), *FIELD(b, o, char **), *COUNT(b, o));
    case T_PARAMS: return cJSON_Compare(a->params, b->params, 1);
    case T_SEED:
        if (a->n_seed != b->n_seed) return false;
        for (size_t i = 0; i < a->n_seed; i++)
            if (strcmp(a->seed[i].sku, b->seed[i].sku) || a->seed[i].stock != b->seed[i].stock)
                return false;
        return true;
    }
    return false;
}

size_t cfg_diff(const cfg *a, const cfg *b, const char **keys, size_t max) {
    size_t n = 0;
    for (size_t i = 0; i < CFG_NOPTS; i++)
        if (!same_value(a, b, &cfg_opts[i])) {
            if (n < max) keys[n] = cfg_opts[i].key;
            n++;
        }
    return n;
}
