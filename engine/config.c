/* config.c -- typed settings from YAML, the environment and --set.
 *
 * Every command that reads config (serve, check, reload, rules test) and every
 * hot reload goes through cfg_load(), so a value the daemon would choke on is
 * refused the same way everywhere, before anything starts, and the user is
 * told where it is (FILE:LINE:COLUMN) instead of finding out at runtime.
 *
 * How: libyaml's document API (yaml_parser_load) gives a node tree whose
 * nodes keep their start marks. We walk its two fixed levels (section, key)
 * and look each dotted key up in `opts`, the one table that drives defaults,
 * parsing, range checks, environment and --set overrides and cfg_free() (the
 * shape of Redis' createIntConfig() table). Two keys are trees rather than
 * values: rules.params (any YAML mapping, converted to a cJSON object the Lua
 * rules read) and inventory.seed (SKU -> initial stock).
 *
 * Errors are collected, not returned on the first, so one run of `nerve
 * check` shows everything to fix. Every input is bounded (file size, string
 * length, list and mapping size, nesting depth, number of params nodes), which
 * also defuses YAML alias bombs and self-referencing anchors. Nothing here
 * logs, exits or keeps global state: cfg_load() is safe to call from any
 * thread (the environment must not be modified concurrently, as for any
 * getenv() caller).
 */
#include "nerve/config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <yaml.h>

#define MAX_FILE_BYTES  (4L << 20)  /* a config file */
#define MAX_VALUE_BYTES (1L << 20)  /* one --set value */
#define MAX_STR         4096        /* a string setting or list entry, bytes */
#define MAX_LIST        256         /* entries of a string list */
#define MAX_MAP         10000       /* entries of one YAML mapping */
#define MAX_DEPTH       32          /* rules.params nesting */
#define MAX_NODES       65536       /* values in one rules.params tree */
#define MAX_KEY         256         /* a mapping key or dotted key, bytes */
#define MAX_SKU         128
#define MAX_PREFIX      64          /* redis.prefix, bytes */
#define MAX_ERRORS      100         /* lines reported before giving up */
#define MAX_SHOW        64          /* bytes of a bad value echoed back */
#define QBUF            (MAX_SHOW * 4 + 8)
#define PATHBUF         1024
#define TREE_START      "[{\"'"      /* override values parsed as YAML */

/* ------------------------------------------------------------------------ */
/* The table                                                                */
/* ------------------------------------------------------------------------ */

typedef enum {
    T_INT, T_LONG, T_LLONG, T_DOUBLE, T_BOOL,   /* numbers */
    T_STR, T_ENUM, T_LIST,                      /* strings */
    T_PARAMS, T_SEED                            /* trees */
} otype;

/* An extra syntax check for a string setting: 0 when S is fine, else -1 with
 * a message in MSG. */
typedef int check_fn(const char *s, char *msg, size_t size);

typedef struct opt {
    const char *key;            /* "section.name" */
    otype type;
    size_t off;                 /* the field in struct cfg */
    size_t off_n;               /* T_LIST, T_SEED: its count field */
    long long min, max;         /* integers: value; T_STR: length in bytes */
    long long idef;             /* integers and T_BOOL */
    double dmin, dmax, ddef;    /* T_DOUBLE */
    const char *sdef;           /* T_STR, T_ENUM; T_LIST: comma-separated */
    const char *const *choices; /* T_ENUM, NULL-terminated */
    check_fn *check;            /* T_STR, optional */
} opt;

#define F(f) .off = offsetof(cfg, f)
#define OPT_INT(k, f, lo, hi, d)   { .key = k, .type = T_INT, F(f), .min = lo, .max = hi, .idef = d }
#define OPT_LONG(k, f, lo, hi, d)  { .key = k, .type = T_LONG, F(f), .min = lo, .max = hi, .idef = d }
#define OPT_LLONG(k, f, lo, hi, d) { .key = k, .type = T_LLONG, F(f), .min = lo, .max = hi, .idef = d }
#define OPT_DOUBLE(k, f, lo, hi, d) { .key = k, .type = T_DOUBLE, F(f), .dmin = lo, .dmax = hi, .ddef = d }
#define OPT_BOOL(k, f, d)          { .key = k, .type = T_BOOL, F(f), .idef = d }
#define OPT_STR(k, f, lo, d, chk)  { .key = k, .type = T_STR, F(f), .min = lo, .max = MAX_STR, \
                                     .sdef = d, .check = chk }
#define OPT_ENUM(k, f, d, ch)      { .key = k, .type = T_ENUM, F(f), .sdef = d, .choices = ch }
#define OPT_LIST(k, f, n, d)       { .key = k, .type = T_LIST, F(f), .off_n = offsetof(cfg, n), .sdef = d }
#define OPT_PARAMS(k, f)           { .key = k, .type = T_PARAMS, F(f) }
#define OPT_SEED(k, f, n)          { .key = k, .type = T_SEED, F(f), .off_n = offsetof(cfg, n) }

static check_fn check_listen, check_redis_url, check_prefix, check_http_url, check_header;

static const char *const log_levels[] = { "debug", "info", "warn", "error", NULL };
static const char *const log_formats[] = { "text", "json", NULL };

static const opt opts[] = {
    OPT_STR   ("server.listen", listen, 1, "127.0.0.1:8011", check_listen),
    OPT_INT   ("server.threads", threads, 1, 1024, 128),
    OPT_LONG  ("server.max_body_bytes", max_body_bytes, 64, 1048576, 8192),
    OPT_STR   ("server.cors_origin", cors_origin, 0, "", check_header),
    OPT_STR   ("server.pidfile", pidfile, 0, "", NULL),
    OPT_INT   ("server.request_timeout_ms", request_timeout_ms, 100, 600000, 10000),
    OPT_INT   ("server.shutdown_grace_ms", shutdown_grace_ms, 0, 600000, 10000),

    OPT_STR   ("redis.url", redis_url, 1, "redis://127.0.0.1:6379/0", check_redis_url),
    OPT_INT   ("redis.connect_timeout_ms", redis_connect_timeout_ms, 1, 60000, 1000),
    OPT_INT   ("redis.command_timeout_ms", redis_command_timeout_ms, 1, 60000, 1000),
    OPT_INT   ("redis.reconnect_max_ms", redis_reconnect_max_ms, 1, 60000, 2000),
    OPT_STR   ("redis.prefix", redis_prefix, 0, "nerve:", check_prefix),

    OPT_LIST  ("bus.channels", bus_channels, n_bus_channels,
               "inventory_events,sales_events,financial_events"),
    OPT_STR   ("bus.alerts_channel", alerts_channel, 1, "system_alerts", NULL),
    OPT_STR   ("bus.inventory_channel", inventory_channel, 1, "inventory_events", NULL),
    OPT_STR   ("bus.sales_channel", sales_channel, 1, "sales_events", NULL),
    OPT_INT   ("bus.queue_size", queue_size, 1, 1000000, 10000),
    OPT_LONG  ("bus.max_event_bytes", max_event_bytes, 64, 16777216, 65536),

    OPT_INT   ("lock.ttl_ms", lock_ttl_ms, 10, 600000, 2000),
    OPT_INT   ("lock.max_wait_ms", lock_max_wait_ms, 0, 600000, 1000),

    OPT_LLONG ("sale.max_qty", max_qty, 1, 1000000000, 1000),
    OPT_INT   ("sale.idempotency_ttl_s", idempotency_ttl_s, 1, 31536000, 86400),
    OPT_INT   ("sale.max_batch", max_batch, 1, 1024, 128),

    OPT_STR   ("rules.dir", rules_dir, 1, "rules", NULL),
    OPT_LIST  ("rules.files", rules_files, n_rules_files, ""),
    OPT_LLONG ("rules.instruction_limit", rules_instruction_limit, 1000, 1000000000, 1000000),
    OPT_LLONG ("rules.memory_limit", rules_memory_limit, 65536, 2147483648LL, 8388608),
    OPT_PARAMS("rules.params", params),

    OPT_STR   ("panic.webhook_url", panic_webhook_url, 0, "", check_http_url),
    OPT_INT   ("panic.timeout_ms", panic_timeout_ms, 1, 600000, 2000),
    OPT_INT   ("panic.max_attempts", panic_max_attempts, 1, 100, 5),
    OPT_INT   ("panic.backoff_initial_ms", panic_backoff_initial_ms, 1, 600000, 100),
    OPT_INT   ("panic.backoff_max_ms", panic_backoff_max_ms, 1, 3600000, 5000),
    OPT_DOUBLE("panic.backoff_multiplier", panic_backoff_multiplier, 1.0, 10.0, 2.0),
    OPT_BOOL  ("panic.jitter", panic_jitter, 1),
    OPT_BOOL  ("panic.dry_run", panic_dry_run, 0),

    OPT_INT   ("alerts.throttle_s", alerts_throttle_s, 0, 86400, 60),
    OPT_LONG  ("alerts.audit_maxlen", audit_maxlen, 1, 10000000, 10000),

    OPT_SEED  ("inventory.seed", seed, n_seed),

    OPT_ENUM  ("log.level", log_level, "info", log_levels),
    OPT_ENUM  ("log.format", log_format, "text", log_formats),
};
#define NOPTS (sizeof opts / sizeof opts[0])

/* Environment variables that override a key (empty = unset). */
static const struct { const char *env, *key; } env_keys[] = {
    { "REDIS_URL", "redis.url" },
    { "NERVE_LISTEN", "server.listen" },
    { "NERVE_RULES_DIR", "rules.dir" },
    { "NERVE_PANIC_URL", "panic.webhook_url" },
};

/* The field of C that O describes. */
#define FIELD(c, o, T) ((T *)(void *)((char *)(c) + (o)->off))
#define COUNT(c, o)    ((size_t *)(void *)((char *)(c) + (o)->off_n))

/* ------------------------------------------------------------------------ */
/* Error collection                                                         */
/* ------------------------------------------------------------------------ */

/* Where a value came from, which decides an error's prefix. */
typedef enum { AT_DEFAULT = 0, AT_FILE, AT_ENV, AT_SET } at_kind;

typedef struct origin {
    at_kind kind;
    const char *file;   /* AT_FILE */
    const char *name;   /* AT_ENV: the variable */
    int line, col;      /* AT_FILE, 1-based; 0 = the file as a whole */
} origin;

typedef struct loader {
    cfg *c;
    char *err;          /* the report, one error per line */
    size_t len, cap;
    int nerr;
    bool oom;
    long budget;        /* rules.params values left in this conversion */
    origin at[NOPTS];   /* where each key was last set, for cross-key checks */
} loader;

/* N advanced by snprintf's result R in a buffer of SIZE bytes, clamped to
 * the truncated length. */
static size_t advance(size_t n, int r, size_t size)
{
    return r < 0 ? n : n + (size_t)r < size ? n + (size_t)r : size - 1;
}

static void append(loader *L, const char *s, size_t n)
{
    if (L->len + n + 1 > L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        char *p;
        while (cap < L->len + n + 1) cap *= 2;
        if (!(p = realloc(L->err, cap))) { L->oom = true; return; }
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
__attribute__((format(printf, 4, 5)))
static void errf(loader *L, const origin *at, const char *key, const char *fmt, ...)
{
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
    case AT_ENV: r = snprintf(line, sizeof line, "env %s: ", at->name); key = NULL; break;
    case AT_SET: r = snprintf(line, sizeof line, "--set "); break;
    case AT_DEFAULT: break;
    }
    n = advance(0, r, sizeof line);
    if (key) n = advance(n, snprintf(line + n, sizeof line - n, "%s: ", key), sizeof line);
    va_start(ap, fmt);
    n = advance(n, vsnprintf(line + n, sizeof line - n, fmt, ap), sizeof line);
    va_end(ap);
    for (i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f) line[i] = '?';
    line[n++] = '\n';   /* vsnprintf left room: n <= sizeof line - 1 */
    append(L, line, n);
}

/* S as it appears in a message: quoted, escaped, at most MAX_SHOW bytes (cut
 * on a UTF-8 boundary). BUF holds QBUF bytes. */
static const char *quote(char *buf, const char *s)
{
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
/* Scalars                                                                  */
/* ------------------------------------------------------------------------ */

/* A whole decimal integer: 0, -1 when S is not one, -2 when out of range. */
static int parse_ll(const char *s, long long *out)
{
    const char *p = s + (*s == '+' || *s == '-');
    char *end;
    long long v;

    if (!isdigit((unsigned char)*p)) return -1;     /* strtoll skips spaces */
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
static int parse_num(const char *s, double *out)
{
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
static int parse_bool(const char *s)
{
    static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no", "off" };
    size_t i;
    for (i = 0; i < 3; i++) {
        if (!strcasecmp(s, yes[i])) return 1;
        if (!strcasecmp(s, no[i])) return 0;
    }
    return -1;
}

static bool is_null_text(const char *s)
{
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static bool is_null(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           is_null_text((const char *)n->data.scalar.value);
}

static const char *kind(const yaml_node_t *n)
{
    return n->type == YAML_MAPPING_NODE ? "a mapping" : n->type == YAML_SEQUENCE_NODE ? "a list" : "a string";
}

static const char *scalar(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* libyaml allows "\0" escapes; a C string would silently cut there. */
static bool has_nul(const yaml_node_t *n)
{
    return strlen((const char *)n->data.scalar.value) != n->data.scalar.length;
}

static bool sku_ok(const char *s)
{
    size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-");
    return n >= 1 && n <= MAX_SKU && !s[n];
}

/* ------------------------------------------------------------------------ */
/* String checks                                                            */
/* ------------------------------------------------------------------------ */

static int check_listen(const char *s, char *msg, size_t size)
{
    const char *colon = strrchr(s, ':'), *host_chars = "abcdefghijklmnopqrstuvwxyz"
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_";
    size_t hlen = colon ? (size_t)(colon - s) : 0;
    long long port = 0;
    bool ok = hlen > 0 && isdigit((unsigned char)colon[1]) && parse_ll(colon + 1, &port) == 0 &&
              port >= 1 && port <= 65535;
    char q[QBUF];

    if (ok && s[0] == '[')      /* IPv6: [::1]:8011 */
        ok = hlen > 2 && s[hlen - 1] == ']' &&
             strspn(s + 1, "0123456789abcdefABCDEF:.%") == hlen - 2;
    else if (ok)
        ok = strspn(s, host_chars) == hlen;
    if (ok) return 0;
    snprintf(msg, size, "must be HOST:PORT with a port between 1 and 65535 (got %s)", quote(q, s));
    return -1;
}

/* URLs are not echoed back: they may carry a password or token. */
static int check_redis_url(const char *s, char *msg, size_t size)
{
    if (!strncmp(s, "redis://", 8) && s[8]) return 0;
    snprintf(msg, size, "must be a redis:// URL (redis://[user:password@]host:port/db)");
    return -1;
}

static int check_http_url(const char *s, char *msg, size_t size)
{
    if (!*s || (!strncmp(s, "http://", 7) && s[7]) || (!strncmp(s, "https://", 8) && s[8])) return 0;
    snprintf(msg, size, "must be an http:// or https:// URL, or empty for none");
    return -1;
}

/* The value goes into a response header: a CR or LF would inject headers. */
static int check_header(const char *s, char *msg, size_t size)
{
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
static int check_prefix(const char *s, char *msg, size_t size)
{
    const char *p;
    char q[QBUF];

    for (p = s; *p; p++)
        if (*p == '{' || *p == '}' || isspace((unsigned char)*p) || iscntrl((unsigned char)*p)) break;
    if (!*p && p - s <= MAX_PREFIX) return 0;
    snprintf(msg, size, "must be at most %d bytes without spaces, { or } (got %s)", MAX_PREFIX, quote(q, s));
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Lookups                                                                  */
/* ------------------------------------------------------------------------ */

static const opt *find_opt(const char *key)
{
    size_t i;
    for (i = 0; i < NOPTS; i++)
        if (!strcmp(opts[i].key, key)) return &opts[i];
    return NULL;
}

static bool is_section(const char *name)
{
    size_t i, n = strlen(name);
    for (i = 0; i < NOPTS; i++)
        if (!strncmp(opts[i].key, name, n) && opts[i].key[n] == '.') return true;
    return false;
}

/* The environment variable a secret-looking KEY should have been, or NULL.
 * Only called for keys that are not in the table. */
static const char *secret_env(const char *key)
{
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

static void unknown_key(loader *L, const origin *at, const char *key)
{
    const char *env = secret_env(key);
    if (env)
        errf(L, at, key, "secrets come from the environment (%s), never from the config file", env);
    else
        errf(L, at, key, "unknown key");
}

static origin at_node(const origin *base, const yaml_node_t *n)
{
    origin o = *base;
    if (o.kind == AT_FILE) {
        o.line = (int)n->start_mark.line + 1;
        o.col = (int)n->start_mark.column + 1;
    }
    return o;
}

static yaml_node_t *node(yaml_document_t *d, int id)
{
    return yaml_document_get_node(d, id);
}

/* The text of mapping key K, or NULL after reporting it (under PARENT) when
 * it is not a usable string. */
static const char *key_text(loader *L, const yaml_node_t *k, const origin *base, const char *parent)
{
    origin at = at_node(base, k);
    if (k->type == YAML_SCALAR_NODE && !has_nul(k) && k->data.scalar.length >= 1 &&
        k->data.scalar.length <= MAX_KEY)
        return (const char *)k->data.scalar.value;
    errf(L, &at, parent, "keys must be strings of 1 to %d bytes", MAX_KEY);
    return NULL;
}

/* Report PAIR's key (under KEY) if an earlier key of mapping M has the same
 * text; true if it was a duplicate. O(n^2), which MAX_MAP bounds. */
static bool duplicate(loader *L, yaml_document_t *d, yaml_node_t *m, yaml_node_pair_t *pair,
                      const origin *base, const char *key)
{
    yaml_node_t *k = node(d, pair->key), *q;
    yaml_node_pair_t *p;

    for (p = m->data.mapping.pairs.start; p < pair; p++) {
        q = node(d, p->key);
        if (q->type == YAML_SCALAR_NODE && q->data.scalar.length == k->data.scalar.length &&
            !memcmp(q->data.scalar.value, k->data.scalar.value, k->data.scalar.length)) {
            origin at = at_node(base, k);
            errf(L, &at, key, "duplicate key (first at line %d)", (int)q->start_mark.line + 1);
            return true;
        }
    }
    return false;
}

static bool map_too_big(loader *L, yaml_node_t *m, const origin *base, const char *key)
{
    origin at = at_node(base, m);
    if (m->data.mapping.pairs.top - m->data.mapping.pairs.start <= MAX_MAP) return false;
    errf(L, &at, key, "more than %d entries", MAX_MAP);
    return true;
}

/* Append ".NAME" (or "[I]" when NAME is NULL) to the dotted PATH of length
 * LEN in a PATHBUF buffer; returns the new length. */
static size_t path_push(char *path, size_t len, const char *name, size_t i)
{
    return advance(len, name ? snprintf(path + len, PATHBUF - len, ".%s", name)
                             : snprintf(path + len, PATHBUF - len, "[%zu]", i), PATHBUF);
}

/* ------------------------------------------------------------------------ */
/* Setting values                                                           */
/* ------------------------------------------------------------------------ */

static void free_list(char **v, size_t n)
{
    size_t i;
    if (!v) return;
    for (i = 0; i < n; i++) free(v[i]);
    free(v);
}

static void free_seed(cfg_seed *v, size_t n)
{
    size_t i;
    if (!v) return;
    for (i = 0; i < n; i++) free(v[i].sku);
    free(v);
}

static void set_string(loader *L, const opt *o, const char *s)
{
    char *dup = strdup(s);
    if (!dup) { L->oom = true; return; }
    free(*FIELD(L->c, o, char *));
    *FIELD(L->c, o, char *) = dup;
}

static void set_integer(const opt *o, cfg *c, long long v)
{
    switch (o->type) {
    case T_INT: *FIELD(c, o, int) = (int)v; break;
    case T_LONG: *FIELD(c, o, long) = (long)v; break;
    case T_BOOL: *FIELD(c, o, bool) = v != 0; break;
    default: *FIELD(c, o, long long) = v; break;
    }
}

/* Add the string S of LEN bytes, entry IDX of list KEY, to V[*N]; false
 * after reporting a bad entry. */
static bool list_add(loader *L, char **v, size_t *n, const char *s, size_t len,
                     const char *key, size_t idx, const origin *at)
{
    char ek[PATHBUF], q[QBUF];
    size_t i;

    snprintf(ek, sizeof ek, "%s[%zu]", key, idx);
    if (*n >= MAX_LIST) { errf(L, at, key, "more than %d entries", MAX_LIST); return false; }
    if (!len) { errf(L, at, ek, "must not be empty"); return false; }
    if (len > MAX_STR) { errf(L, at, ek, "longer than %d bytes", MAX_STR); return false; }
    if (memchr(s, '\0', len)) { errf(L, at, ek, "contains a NUL byte"); return false; }
    for (i = 0; i < *n; i++)
        if (strlen(v[i]) == len && !memcmp(v[i], s, len)) {
            errf(L, at, ek, "duplicate entry %s", quote(q, v[i]));
            return false;
        }
    if (!(v[*n] = strndup(s, len))) { L->oom = true; return false; }
    (*n)++;
    return true;
}

/* A YAML list, or (from the environment or --set only) a comma-separated
 * string; null is the empty list. */
static bool set_list(loader *L, const opt *o, const char *key, yaml_document_t *d,
                     yaml_node_t *n, const origin *base)
{
    origin at = at_node(base, n);
    char **v = calloc(MAX_LIST, sizeof *v);
    size_t cnt = 0;
    bool ok = true;

    if (!v) { L->oom = true; return false; }
    if (n->type == YAML_SEQUENCE_NODE) {
        yaml_node_item_t *first = n->data.sequence.items.start, *it;
        if (n->data.sequence.items.top - first > MAX_LIST) {
            errf(L, &at, key, "more than %d entries", MAX_LIST);
            ok = false;
        }
        for (it = first; cnt < MAX_LIST && it < n->data.sequence.items.top; it++) {
            yaml_node_t *e = node(d, *it);
            origin eat = at_node(base, e);
            const char *s = scalar(e);
            if (!s || is_null(e)) {
                char ek[PATHBUF];
                snprintf(ek, sizeof ek, "%s[%zu]", key, (size_t)(it - first));
                errf(L, &eat, ek, "expected a string (got %s)", s ? "null" : kind(e));
                ok = false;
            } else if (!list_add(L, v, &cnt, s, e->data.scalar.length, key, (size_t)(it - first), &eat)) {
                ok = false;
            }
        }
    } else if (is_null(n)) {
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
        errf(L, &at, key, "expected a list (got %s)", kind(n));
        ok = false;
    }
    if (!ok) {
        free_list(v, cnt);
        return false;
    }
    free_list(*FIELD(L->c, o, char **), *COUNT(L->c, o));
    *FIELD(L->c, o, char **) = v;
    *COUNT(L->c, o) = cnt;
    return true;
}

/* A rules.params scalar, resolved as YAML 1.2's core schema does: quoted is
 * always a string; plain null/~/empty, true/false, integers and decimal
 * numbers become JSON null, booleans and numbers (integers beyond 2^53 lose
 * precision: cJSON numbers are doubles); anything else is a string. */
static cJSON *scalar_json(const yaml_node_t *n)
{
    const char *s = (const char *)n->data.scalar.value;
    long long v;
    double dv;

    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return cJSON_CreateString(s);
    if (is_null_text(s)) return cJSON_CreateNull();
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) return cJSON_CreateTrue();
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) return cJSON_CreateFalse();
    if (parse_ll(s, &v) == 0) return cJSON_CreateNumber((double)v);
    if (parse_num(s, &dv) == 0) return cJSON_CreateNumber(dv);
    return cJSON_CreateString(s);
}

/* Convert node N at nesting DEPTH (rules.params itself is 0) whose dotted
 * path is PATH[0..LEN). Reports every bad node below N; returns NULL if
 * there was any (or out of memory). Aliases are followed, so L->budget and
 * MAX_DEPTH are what stop alias bombs and self-referencing anchors. */
static cJSON *to_json(loader *L, yaml_document_t *d, yaml_node_t *n, int depth,
                      char *path, size_t len, const origin *base)
{
    origin at = at_node(base, n);
    cJSON *j = NULL, *child;
    bool ok = true;

    if (--L->budget < 0) {
        if (L->budget == -1) errf(L, &at, "rules.params", "more than %d values", MAX_NODES);
        return NULL;
    }
    if (depth > MAX_DEPTH) {
        errf(L, &at, path, "nested deeper than %d levels", MAX_DEPTH);
        return NULL;
    }
    if (n->type == YAML_SCALAR_NODE) {
        if (has_nul(n)) { errf(L, &at, path, "contains a NUL byte"); return NULL; }
        if (n->data.scalar.length > MAX_STR) {
            errf(L, &at, path, "longer than %d bytes", MAX_STR);
            return NULL;
        }
        if (!(j = scalar_json(n))) L->oom = true;
        return j;
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        yaml_node_item_t *it;
        if (!(j = cJSON_CreateArray())) { L->oom = true; return NULL; }
        for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
            size_t l = path_push(path, len, NULL, (size_t)(it - n->data.sequence.items.start));
            child = to_json(L, d, node(d, *it), depth + 1, path, l, base);
            path[len] = '\0';
            if (!child || !cJSON_AddItemToArray(j, child)) { cJSON_Delete(child); ok = false; }
        }
    } else {
        yaml_node_pair_t *p;
        if (map_too_big(L, n, base, path)) return NULL;
        if (!(j = cJSON_CreateObject())) { L->oom = true; return NULL; }
        for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            const char *k = key_text(L, node(d, p->key), base, path);
            size_t l;
            if (!k) { ok = false; continue; }
            l = path_push(path, len, k, 0);
            if (duplicate(L, d, n, p, base, path)) {
                ok = false;
            } else {
                child = to_json(L, d, node(d, p->value), depth + 1, path, l, base);
                if (!child || !cJSON_AddItemToObject(j, k, child)) { cJSON_Delete(child); ok = false; }
            }
            path[len] = '\0';
        }
    }
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* rules.params as a whole: a mapping, or null for an empty one. */
static bool set_params(loader *L, const opt *o, const char *key, yaml_document_t *d,
                       yaml_node_t *n, const origin *base)
{
    origin at = at_node(base, n);
    char path[PATHBUF];
    cJSON *j;

    if (n->type != YAML_MAPPING_NODE && !is_null(n)) {
        errf(L, &at, key, "expected a mapping (got %s)", kind(n));
        return false;
    }
    snprintf(path, sizeof path, "%s", key);
    L->budget = MAX_NODES;
    j = is_null(n) ? cJSON_CreateObject() : to_json(L, d, n, 0, path, strlen(path), base);
    if (!j) {
        if (is_null(n)) L->oom = true;
        return false;
    }
    cJSON_Delete(*FIELD(L->c, o, cJSON *));
    *FIELD(L->c, o, cJSON *) = j;
    return true;
}

/* The stock of SKU from node N; false after reporting it. */
static bool seed_stock(loader *L, const char *sku, const yaml_node_t *n, const origin *base,
                       long long *out)
{
    origin at = at_node(base, n);
    const char *s = scalar(n);
    char key[PATHBUF], q[QBUF];

    if (s && parse_ll(s, out) == 0 && *out >= 0) return true;
    snprintf(key, sizeof key, "inventory.seed.%s", sku);
    errf(L, &at, key, "expected a non-negative integer (got %s)", s ? quote(q, s) : kind(n));
    return false;
}

static bool seed_sku(loader *L, const char *sku, const origin *at)
{
    char q[QBUF];
    if (sku_ok(sku)) return true;
    errf(L, at, "inventory.seed", "invalid SKU %s (want 1 to %d of A-Z a-z 0-9 . _ : -)",
         quote(q, sku), MAX_SKU);
    return false;
}

/* inventory.seed as a whole: a mapping SKU -> stock, or null for none. */
static bool set_seed(loader *L, const opt *o, const char *key, yaml_document_t *d,
                     yaml_node_t *n, const origin *base)
{
    origin at = at_node(base, n);
    yaml_node_pair_t *p;
    cfg_seed *v;
    size_t cnt = 0;
    bool ok = true;

    if (is_null(n)) {
        free_seed(L->c->seed, L->c->n_seed);
        L->c->seed = NULL;
        L->c->n_seed = 0;
        return true;
    }
    if (n->type != YAML_MAPPING_NODE) {
        errf(L, &at, key, "expected a mapping of SKU to stock (got %s)", kind(n));
        return false;
    }
    if (map_too_big(L, n, base, key)) return false;
    if (!(v = calloc((size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start) + 1, sizeof *v))) {
        L->oom = true;
        return false;
    }
    for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(d, p->key);
        const char *sku = key_text(L, k, base, key);
        origin kat = at_node(base, k);
        char dk[PATHBUF];
        long long stock;

        if (!sku || !seed_sku(L, sku, &kat)) { ok = false; continue; }
        snprintf(dk, sizeof dk, "%s.%s", key, sku);
        if (duplicate(L, d, n, p, base, dk) || !seed_stock(L, sku, node(d, p->value), base, &stock)) {
            ok = false;
            continue;
        }
        if (!(v[cnt].sku = strdup(sku))) { L->oom = true; ok = false; break; }
        v[cnt++].stock = stock;
    }
    if (!ok) {
        free_seed(v, cnt);
        return false;
    }
    free_seed(*FIELD(L->c, o, cfg_seed *), *COUNT(L->c, o));
    *FIELD(L->c, o, cfg_seed *) = v;
    *COUNT(L->c, o) = cnt;
    return true;
}

/* Set key O (spelled KEY) from node N; reports and returns on a bad value,
 * leaving the previous value. Integers, numbers and booleans are read from
 * the scalar's text whatever its quoting: the table says what the key is. */
static void set_node(loader *L, const opt *o, const char *key, yaml_document_t *d,
                     yaml_node_t *n, const origin *base)
{
    origin at = at_node(base, n);
    const char *s = scalar(n);
    char q[QBUF], msg[512];
    long long v;
    double dv;
    int rc;

    switch (o->type) {
    case T_INT: case T_LONG: case T_LLONG:
        if (!s) { errf(L, &at, key, "expected an integer (got %s)", kind(n)); return; }
        if ((rc = parse_ll(s, &v)) == -1) {
            errf(L, &at, key, "expected an integer (got %s)", quote(q, s));
            return;
        }
        if (rc == -2 || v < o->min || v > o->max) {
            errf(L, &at, key, "must be between %lld and %lld (got %.*s)", o->min, o->max, MAX_SHOW, s);
            return;
        }
        set_integer(o, L->c, v);
        break;
    case T_DOUBLE:
        if (!s) { errf(L, &at, key, "expected a number (got %s)", kind(n)); return; }
        if ((rc = parse_num(s, &dv)) == -1) {
            errf(L, &at, key, "expected a number (got %s)", quote(q, s));
            return;
        }
        if (rc == -2 || dv < o->dmin || dv > o->dmax) {
            errf(L, &at, key, "must be between %g and %g (got %.*s)", o->dmin, o->dmax, MAX_SHOW, s);
            return;
        }
        *FIELD(L->c, o, double) = dv;
        break;
    case T_BOOL:
        if (!s) { errf(L, &at, key, "expected true or false (got %s)", kind(n)); return; }
        if ((rc = parse_bool(s)) < 0) {
            errf(L, &at, key, "expected true or false (got %s)", quote(q, s));
            return;
        }
        set_integer(o, L->c, rc);
        break;
    case T_STR:
        if (!s) { errf(L, &at, key, "expected a string (got %s)", kind(n)); return; }
        if (is_null(n)) s = "";     /* `pidfile:` or `~`: none */
        if (has_nul(n)) { errf(L, &at, key, "contains a NUL byte"); return; }
        if ((long long)strlen(s) > o->max) { errf(L, &at, key, "longer than %lld bytes", o->max); return; }
        if ((long long)strlen(s) < o->min) { errf(L, &at, key, "must not be empty"); return; }
        if (o->check && o->check(s, msg, sizeof msg) < 0) { errf(L, &at, key, "%s", msg); return; }
        set_string(L, o, s);
        break;
    case T_ENUM: {
        const char *const *c;
        size_t off = 0;
        for (c = o->choices; s && *c; c++)
            if (!strcasecmp(s, *c)) break;
        if (s && *c) { set_string(L, o, *c); break; }
        for (c = o->choices; *c && off < sizeof msg; c++)
            off += (size_t)snprintf(msg + off, sizeof msg - off, "%s%s", off ? ", " : "", *c);
        errf(L, &at, key, "must be one of %s (got %s)", msg, s ? quote(q, s) : kind(n));
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
    L->at[o - opts] = at;
}

/* ------------------------------------------------------------------------ */
/* Documents                                                                */
/* ------------------------------------------------------------------------ */

/* Report the syntax error of parser P under origin BASE (and KEY for an
 * override). BUF[0..LEN) is the input, to locate reader (encoding) errors,
 * which libyaml reports as a byte offset. */
static void yaml_problem(loader *L, const yaml_parser_t *p, const origin *base, const char *key,
                         const char *buf, size_t len)
{
    origin at = *base;
    char ctx[128] = "", val[16] = "";
    const char *what = p->problem ? p->problem : "unknown problem";

    if (p->error == YAML_MEMORY_ERROR) { L->oom = true; return; }
    if (at.kind == AT_FILE && p->error == YAML_READER_ERROR) {
        size_t i;
        at.line = at.col = 1;
        for (i = 0; i < p->problem_offset && i < len; i++) {
            if (buf[i] == '\n') at.line++, at.col = 1;
            else if (((unsigned char)buf[i] & 0xc0) != 0x80) at.col++;
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
    errf(L, &at, key, "%s%s%s%s", at.kind == AT_FILE ? "" : "invalid YAML: ", what, val, ctx);
}

/* Load the one document of BUF[0..LEN) into D; -1 after reporting a syntax
 * error or a second document. D is always safe to yaml_document_delete(). */
static int load_doc(loader *L, yaml_document_t *d, const char *buf, size_t len,
                    const origin *base, const char *key)
{
    yaml_parser_t p;
    yaml_document_t extra;
    int rc = -1;

    memset(d, 0, sizeof *d);
    if (!yaml_parser_initialize(&p)) { L->oom = true; return -1; }
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
            errf(L, &at, key, "expected one YAML document, found more");
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
                         const origin *base)
{
    yaml_node_pair_t *p;
    char key[2 * MAX_KEY + 2];

    if (map_too_big(L, m, base, section)) return;
    for (p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(d, p->key);
        const char *name = key_text(L, k, base, section);
        origin kat = at_node(base, k);
        const opt *o;

        if (!name) continue;
        snprintf(key, sizeof key, "%s.%s", section, name);
        if (duplicate(L, d, m, p, base, key)) continue;
        if (!(o = find_opt(key)))
            unknown_key(L, &kat, key);
        else
            set_node(L, o, key, d, node(d, p->value), base);
    }
}

static void walk_top(loader *L, yaml_document_t *d, yaml_node_t *root, const origin *base)
{
    yaml_node_pair_t *p;

    if (root->type != YAML_MAPPING_NODE) {
        origin at = at_node(base, root);
        if (!is_null(root)) errf(L, &at, NULL, "expected a mapping at top level");
        return;
    }
    if (map_too_big(L, root, base, NULL)) return;
    for (p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(d, p->key), *v = node(d, p->value);
        const char *name = key_text(L, k, base, NULL);
        origin kat = at_node(base, k), vat = at_node(base, v);

        if (!name || duplicate(L, d, root, p, base, name)) continue;
        if (!is_section(name))
            unknown_key(L, &kat, name);
        else if (v->type == YAML_MAPPING_NODE)
            walk_section(L, d, name, v, base);
        else if (!is_null(v))       /* `log:` alone: all defaults */
            errf(L, &vat, name, "expected a mapping (got %s)", kind(v));
    }
}

static void load_file(loader *L, const char *path)
{
    origin at = { .kind = AT_FILE, .file = path };
    yaml_document_t d;
    char *buf = NULL, ebuf[128];
    size_t len = 0, n;
    FILE *f;
    int e;

    if (!(f = fopen(path, "rb"))) {
        e = errno;
        errf(L, &at, NULL, "cannot open: %s", strerror_r(e, ebuf, sizeof ebuf));
        return;
    }
    if (!(buf = malloc(MAX_FILE_BYTES + 1))) { L->oom = true; goto err; }
    while ((n = fread(buf + len, 1, MAX_FILE_BYTES + 1 - len, f)) > 0 && len + n <= MAX_FILE_BYTES)
        len += n;
    if (ferror(f)) {
        e = errno;
        errf(L, &at, NULL, "cannot read: %s", strerror_r(e, ebuf, sizeof ebuf));
        goto err;
    }
    if (n > 0) {
        errf(L, &at, NULL, "larger than %ld bytes", MAX_FILE_BYTES);
        goto err;
    }
    if (load_doc(L, &d, buf, len, &at, NULL) == 0) {
        yaml_node_t *root = yaml_document_get_root_node(&d);
        if (root) walk_top(L, &d, root, &at);
        yaml_document_delete(&d);
    }
err:
    free(buf);
    fclose(f);
}

/* ------------------------------------------------------------------------ */
/* Overrides                                                                */
/* ------------------------------------------------------------------------ */

/* The YAML node for override text VAL into D, or NULL after reporting it. A
 * value whose first character is in YAML_START (" ' for a quoted string, and
 * also [ { for keys that take a list or mapping) is parsed as YAML; anything
 * else is taken verbatim as a plain scalar, so that `--set
 * server.cors_origin=*`, a URL or `[::1]:8011` need no quoting. D is always
 * safe to yaml_document_delete(). */
static yaml_node_t *value_node(loader *L, yaml_document_t *d, const char *val,
                               const char *yaml_start, const origin *at, const char *key)
{
    size_t len = strlen(val);
    int id;

    memset(d, 0, sizeof *d);
    if (len > MAX_VALUE_BYTES) {
        errf(L, at, key, "longer than %ld bytes", MAX_VALUE_BYTES);
        return NULL;
    }
    if (*val && strchr(yaml_start, *val)) {
        if (load_doc(L, d, val, len, at, key) < 0) return NULL;
        return yaml_document_get_root_node(d);
    }
    if (!yaml_document_initialize(d, NULL, NULL, NULL, 1, 1)) { L->oom = true; return NULL; }
    if (!(id = yaml_document_add_scalar(d, NULL, (const yaml_char_t *)val, (int)len,
                                        YAML_PLAIN_SCALAR_STYLE))) {
        errf(L, at, key, "not valid UTF-8");
        return NULL;
    }
    return node(d, id);
}

/* --set rules.params.A.B=VALUE: set one leaf, creating the mappings on the
 * way. PATH is "A.B". */
static void set_param_leaf(loader *L, const char *key, const char *path, const char *val,
                           const origin *at)
{
    char buf[PATHBUF], full[PATHBUF], *name, *dot;
    cJSON *obj = L->c->params, *j, *sub;
    yaml_document_t d;
    yaml_node_t *n;
    int depth = 1;

    if (strlen(path) >= sizeof buf) { errf(L, at, key, "key too long"); return; }
    memcpy(buf, path, strlen(path) + 1);
    snprintf(full, sizeof full, "rules.params");
    for (name = buf; (dot = strchr(name, '.')); name = dot + 1, depth++) {
        *dot = '\0';
        if (!*name || depth > MAX_DEPTH) break;
        path_push(full, strlen(full), name, 0);
        if (!(sub = cJSON_GetObjectItemCaseSensitive(obj, name))) {
            if (!(sub = cJSON_AddObjectToObject(obj, name))) { L->oom = true; return; }
        } else if (!cJSON_IsObject(sub)) {
            errf(L, at, key, "%s is not a mapping", full);
            return;
        }
        obj = sub;
    }
    if (!*name || depth > MAX_DEPTH) {
        errf(L, at, key, "path parts must be non-empty, at most %d of them", MAX_DEPTH);
        return;
    }
    if ((n = value_node(L, &d, val, TREE_START, at, key))) {
        char p[PATHBUF];
        snprintf(p, sizeof p, "%s", key);
        L->budget = MAX_NODES;
        if ((j = to_json(L, &d, n, depth, p, strlen(p), at))) {
            bool ok = cJSON_GetObjectItemCaseSensitive(obj, name)
                ? cJSON_ReplaceItemInObjectCaseSensitive(obj, name, j)
                : cJSON_AddItemToObject(obj, name, j);
            if (!ok) { cJSON_Delete(j); L->oom = true; }
        }
    }
    yaml_document_delete(&d);
}

/* --set inventory.seed.SKU=N: add or replace one SKU (which may contain
 * dots, so the rest of the key is the SKU). */
static void set_seed_leaf(loader *L, const char *key, const char *sku, const char *val,
                          const origin *at)
{
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
            errf(L, at, "inventory.seed", "more than %d entries", MAX_MAP);
        } else {
            cfg_seed *v = realloc(c->seed, (c->n_seed + 1) * sizeof *v);
            if (!v) { L->oom = true; goto err; }
            c->seed = v;
            if (!(v[c->n_seed].sku = strdup(sku))) { L->oom = true; goto err; }
            v[c->n_seed++].stock = stock;
        }
    }
err:
    yaml_document_delete(&d);
}

static void apply_set(loader *L, const char *arg)
{
    origin at = { .kind = AT_SET };
    const char *eq = strchr(arg, '=');
    char key[MAX_KEY + 1];
    size_t klen = eq ? (size_t)(eq - arg) : strlen(arg);
    const opt *o;

    snprintf(key, sizeof key, "%.*s", (int)(klen < MAX_KEY ? klen : MAX_KEY), arg);
    if (!eq || !klen) { errf(L, &at, key, "expected dotted.key=value"); return; }
    if (klen > MAX_KEY) { errf(L, &at, key, "key longer than %d bytes", MAX_KEY); return; }
    if ((o = find_opt(key))) {
        yaml_document_t d;
        bool tree = o->type == T_LIST || o->type == T_PARAMS || o->type == T_SEED;
        yaml_node_t *n = value_node(L, &d, eq + 1, tree ? TREE_START : "\"'", &at, key);
        if (n) set_node(L, o, key, &d, n, &at);
        yaml_document_delete(&d);
    } else if (!strncmp(key, "rules.params.", 13)) {
        set_param_leaf(L, key, key + 13, eq + 1, &at);
    } else if (!strncmp(key, "inventory.seed.", 15)) {
        set_seed_leaf(L, key, key + 15, eq + 1, &at);
    } else {
        unknown_key(L, &at, key);
    }
}

static void apply_env(loader *L)
{
    static const char *const secrets[] = { "NERVE_ADMIN_TOKEN", "NERVE_PANIC_TOKEN" };
    char **dst[] = { &L->c->admin_token, &L->c->panic_token };
    size_t i;

    for (i = 0; i < sizeof env_keys / sizeof env_keys[0]; i++) {
        const char *v = getenv(env_keys[i].env);
        origin at = { .kind = AT_ENV, .name = env_keys[i].env };
        yaml_document_t d;
        yaml_node_t *n;
        if (!v || !*v) continue;
        if ((n = value_node(L, &d, v, "", &at, env_keys[i].key)))
            set_node(L, find_opt(env_keys[i].key), env_keys[i].key, &d, n, &at);
        yaml_document_delete(&d);
    }
    for (i = 0; i < 2; i++) {
        const char *v = getenv(secrets[i]);
        origin at = { .kind = AT_ENV, .name = secrets[i] };
        if (!v || !*v) continue;
        if (strlen(v) > MAX_STR) { errf(L, &at, NULL, "longer than %d bytes", MAX_STR); continue; }
        if (!(*dst[i] = strdup(v))) L->oom = true;
    }
}

/* Checks between keys, after every override, reported where the key was
 * last set. */
static void cross_check(loader *L)
{
    const opt *lo = find_opt("panic.backoff_initial_ms"), *hi = find_opt("panic.backoff_max_ms");
    const origin *alo = &L->at[lo - opts], *ahi = &L->at[hi - opts];
    cfg *c = L->c;

    if (c->panic_backoff_initial_ms <= c->panic_backoff_max_ms) return;
    if (alo->kind != AT_DEFAULT)
        errf(L, alo, lo->key, "must not exceed panic.backoff_max_ms (%d)", c->panic_backoff_max_ms);
    else
        errf(L, ahi, hi->key, "must not be below panic.backoff_initial_ms (%d)", c->panic_backoff_initial_ms);
}

static void set_defaults(loader *L)
{
    cfg *c = L->c;
    size_t i;

    for (i = 0; i < NOPTS; i++) {
        const opt *o = &opts[i];
        switch (o->type) {
        case T_INT:
            assert(o->min >= INT_MIN && o->max <= INT_MAX);
            /* fall through */
        case T_LONG: case T_LLONG: case T_BOOL:
            set_integer(o, c, o->idef);
            break;
        case T_DOUBLE: *FIELD(c, o, double) = o->ddef; break;
        case T_STR: case T_ENUM: set_string(L, o, o->sdef); break;
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

/* ------------------------------------------------------------------------ */
/* API                                                                      */
/* ------------------------------------------------------------------------ */

cfg *cfg_load(const char *path, char *const *sets, size_t nsets, char **errors)
{
    loader L;
    size_t i;

    assert(path);
    memset(&L, 0, sizeof L);
    if (errors) *errors = NULL;
    if (!(L.c = calloc(1, sizeof *L.c)) || !(L.c->path = strdup(path))) {
        L.oom = true;
        goto err;
    }
    set_defaults(&L);
    if (L.oom) goto err;
    load_file(&L, path);
    apply_env(&L);
    for (i = 0; i < nsets; i++) apply_set(&L, sets[i]);
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
    if (errors) *errors = L.err;
    else free(L.err);
    return NULL;
}

void cfg_free(cfg *c)
{
    size_t i;

    if (!c) return;
    for (i = 0; i < NOPTS; i++) {
        const opt *o = &opts[i];
        switch (o->type) {
        case T_STR: case T_ENUM: free(*FIELD(c, o, char *)); break;
        case T_LIST: free_list(*FIELD(c, o, char **), *COUNT(c, o)); break;
        case T_PARAMS: cJSON_Delete(*FIELD(c, o, cJSON *)); break;
        case T_SEED: free_seed(*FIELD(c, o, cfg_seed *), *COUNT(c, o)); break;
        default: break;
        }
    }
    if (c->admin_token) explicit_bzero(c->admin_token, strlen(c->admin_token));
    if (c->panic_token) explicit_bzero(c->panic_token, strlen(c->panic_token));
    free(c->admin_token);
    free(c->panic_token);
    free(c->path);
    free(c);
}
