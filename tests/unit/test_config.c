/* test_config.c -- unit tests of the configuration module (engine/config.c).
 *
 * The bad-input cases are one table: a fixture under tests/unit/config/ (or
 * --set arguments over an empty file) and the exact, complete error text
 * cfg_load() must produce, FILE:LINE:COLUMN included, since that text is what
 * an operator reads. The good-input tests check that values, defaults, the
 * rules.params tree and the seeds come out typed and where they belong, and
 * that config/nerve.yaml itself loads and documents the true defaults.
 *
 * Run from the repository root (fixture paths are relative to it).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "nerve/config.h"
#include "nerve/sentinel.h"

#define FX "tests/unit/config/"
#define NELEM(a) (sizeof (a) / sizeof (a)[0])

static const char *const env_vars[] = {
    "REDIS_URL", "NERVE_LISTEN", "NERVE_RULES_DIR", "NERVE_PANIC_URL",
    "NERVE_ADMIN_TOKEN", "NERVE_PANIC_TOKEN", "NERVE_ADMIN_TOKENS", "NERVE_RESUME_URL",
    "NERVE_SENTINEL_PASSWORD",
};

/* Every test starts from an environment without nerve's variables. */
static int clear_env(void **state)
{
    size_t i;
    (void)state;
    for (i = 0; i < NELEM(env_vars); i++) unsetenv(env_vars[i]);
    return 0;
}

/* Load PATH with the NULL-terminated --set list SETS; fail the test on any
 * error, showing it. */
static cfg *load_ok(const char *path, const char *const *sets)
{
    size_t n = 0;
    char *err = NULL;
    cfg *c;

    while (sets && sets[n]) n++;
    c = cfg_load(path, (char *const *)sets, n, &err);
    if (!c) fail_msg("%s: unexpected errors:\n%s", path, err ? err : "(none)");
    assert_null(err);
    return c;
}

/* ------------------------------------------------------------------------ */
/* Bad input: the exact error text                                          */
/* ------------------------------------------------------------------------ */

typedef struct bad_case {
    const char *name;
    const char *file;
    const char *sets[4];        /* NULL-terminated */
    const char *want;           /* the complete error text */
} bad_case;

static const bad_case bad_cases[] = {
    { "unknown key", FX "bad_unknown.yaml", { NULL },
      FX "bad_unknown.yaml:3:3: server.thread: unknown key\n" },
    { "wrong type", FX "bad_type.yaml", { NULL },
      FX "bad_type.yaml:4:14: lock.ttl_ms: expected an integer (got \"fast\")\n" },
    { "out of range, every error reported", FX "bad_range.yaml", { NULL },
      FX "bad_range.yaml:2:12: server.threads: must be between 1 and 1024 (got 0)\n"
      FX "bad_range.yaml:3:19: server.max_body_bytes: must be between 64 and 1048576 (got 99999999999999999999999)\n"
      FX "bad_range.yaml:5:23: panic.backoff_multiplier: must be between 1 and 10 (got 0.5)\n" },
    { "bad enum", FX "bad_enum.yaml", { NULL },
      FX "bad_enum.yaml:2:10: log.level: must be one of debug, info, warn, error (got \"verbose\")\n"
      FX "bad_enum.yaml:3:11: log.format: must be one of text, json (got a list)\n" },
    { "bad listen", FX "bad_listen.yaml", { NULL },
      FX "bad_listen.yaml:2:11: server.listen: must be HOST:PORT with a port between 1 and 65535 (got \"localhost\")\n" },
    { "bad urls, not echoed", FX "bad_url.yaml", { NULL },
      FX "bad_url.yaml:2:8: redis.url: must be a redis:// URL (redis://[user:password@]host:port/db)\n"
      FX "bad_url.yaml:4:16: panic.webhook_url: must be an http:// or https:// URL, or empty for none\n" },
    { "URL parts checked as serve will use them", FX "bad_url_parts.yaml", { NULL },
      FX "bad_url_parts.yaml:2:8: redis.url: invalid redis:// URL: port must be 1..65535\n"
      FX "bad_url_parts.yaml:4:16: panic.webhook_url: invalid http(s) URL: port must be 1..65535\n" },
    { "bad seed", FX "bad_sku.yaml", { NULL },
      FX "bad_sku.yaml:4:5: inventory.seed: invalid SKU \"bad sku\" (want 1 to 128 of A-Z a-z 0-9 . _ : -)\n"
      FX "bad_sku.yaml:5:10: inventory.seed.neg: expected a non-negative integer (got \"-1\")\n"
      FX "bad_sku.yaml:6:11: inventory.seed.word: expected a non-negative integer (got \"many\")\n" },
    { "duplicate keys", FX "bad_dup.yaml", { NULL },
      FX "bad_dup.yaml:3:3: server.threads: duplicate key (first at line 2)\n"
      FX "bad_dup.yaml:4:1: server: duplicate key (first at line 1)\n" },
    { "syntax error", FX "bad_syntax.yaml", { NULL },
      FX "bad_syntax.yaml:3:2: did not find expected key (while parsing a block mapping at line 1, column 1)\n" },
    { "invalid UTF-8", FX "bad_utf8.yaml", { NULL },
      FX "bad_utf8.yaml:2:14: invalid leading UTF-8 octet (0xff)\n" },
    { "top level not a mapping", FX "bad_toplevel.yaml", { NULL },
      FX "bad_toplevel.yaml:1:1: expected a mapping at top level\n" },
    { "two documents", FX "bad_multidoc.yaml", { NULL },
      FX "bad_multidoc.yaml:3:1: expected one YAML document, found more\n" },
    { "secrets in yaml", FX "bad_secret.yaml", { NULL },
      FX "bad_secret.yaml:2:3: server.admin_token: secrets come from the environment (NERVE_ADMIN_TOKEN), never from the config file\n"
      FX "bad_secret.yaml:4:3: panic.token: secrets come from the environment (NERVE_PANIC_TOKEN), never from the config file\n"
      FX "bad_secret.yaml:5:1: admin_token: secrets come from the environment (NERVE_ADMIN_TOKEN), never from the config file\n" },
    { "sections and lists", FX "bad_section.yaml", { NULL },
      FX "bad_section.yaml:1:9: server: expected a mapping (got a string)\n"
      FX "bad_section.yaml:2:1: servers: unknown key\n"
      FX "bad_section.yaml:5:13: bus.channels: expected a list (got a string)\n"
      FX "bad_section.yaml:7:18: rules.files[1]: must not be empty\n"
      FX "bad_section.yaml:7:22: rules.files[2]: duplicate entry \"a.lua\"\n" },
    { "backoff initial over max", FX "bad_backoff.yaml", { NULL },
      FX "bad_backoff.yaml:2:23: panic.backoff_initial_ms: must not exceed panic.backoff_max_ms (5000)\n" },
    { "params duplicate and cycle", FX "bad_params.yaml", { NULL },
      FX "bad_params.yaml:4:5: rules.params.a: duplicate key (first at line 3)\n"
      FX "bad_params.yaml:5:11: rules.params.deep.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x: nested deeper than 32 levels\n" },
    { "params alias bomb", FX "bad_bomb.yaml", { NULL },
      FX "bad_bomb.yaml:3:12: rules.params: more than 65536 values\n" },
    { "missing file", FX "missing.yaml", { NULL },
      FX "missing.yaml: cannot open: No such file or directory\n" },
    { "a directory", FX, { NULL },
      FX ": cannot read: Is a directory\n" },

    { "--set out of range", FX "empty.yaml", { "server.threads=0", NULL },
      "--set server.threads: must be between 1 and 1024 (got 0)\n" },
    { "--set wrong type", FX "empty.yaml", { "lock.ttl_ms=fast", NULL },
      "--set lock.ttl_ms: expected an integer (got \"fast\")\n" },
    { "--set unknown key", FX "empty.yaml", { "server.thread=4", NULL },
      "--set server.thread: unknown key\n" },
    { "--set without =", FX "empty.yaml", { "server.threads", NULL },
      "--set server.threads: expected dotted.key=value\n" },
    { "--set secret", FX "empty.yaml", { "server.admin_token=x", NULL },
      "--set server.admin_token: secrets come from the environment (NERVE_ADMIN_TOKEN), never from the config file\n" },
    { "--set empty list entry", FX "empty.yaml", { "bus.channels=a,,b", NULL },
      "--set bus.channels[1]: must not be empty\n" },
    { "--set bad YAML", FX "empty.yaml", { "rules.params={a: [1", NULL },
      "--set rules.params: invalid YAML: did not find expected ',' or ']'\n" },
    { "--set params through a leaf", "config/nerve.yaml",
      { "rules.params.inventory.warning_threshold.x=1", NULL },
      "--set rules.params.inventory.warning_threshold.x: rules.params.inventory.warning_threshold is not a mapping\n" },
    { "--set bad seed", FX "empty.yaml", { "inventory.seed.bad sku=1", "inventory.seed.ok=-3", NULL },
      "--set inventory.seed: invalid SKU \"bad sku\" (want 1 to 128 of A-Z a-z 0-9 . _ : -)\n"
      "--set inventory.seed.ok: expected a non-negative integer (got \"-3\")\n" },
    { "--set redis.url port out of range", FX "empty.yaml", { "redis.url=redis://h:99999/0", NULL },
      "--set redis.url: invalid redis:// URL: port must be 1..65535\n" },
    { "--set redis.url port 0, db not a number", FX "empty.yaml",
      { "redis.url=redis://h:0/0", "redis.url=redis://h:1/x", NULL },
      "--set redis.url: invalid redis:// URL: port must be 1..65535\n"
      "--set redis.url: invalid redis:// URL: database must be a number in 0..100000\n" },
    { "--set redis.url junk after the db", FX "empty.yaml",
      { "redis.url=redis://h:1/0/junk", "redis.url=redis://h:1/0?x=1", "redis.url=redis://:p@h:/0", NULL },
      "--set redis.url: invalid redis:// URL: database must be a number in 0..100000\n"
      "--set redis.url: invalid redis:// URL: nothing may follow the database number\n"
      "--set redis.url: invalid redis:// URL: port must be 1..65535\n" },
    { "--set webhook without host", FX "empty.yaml", { "panic.webhook_url=http://:80/hook", NULL },
      "--set panic.webhook_url: invalid http(s) URL: No host part in the URL\n" },
    { "--set bad listen", FX "empty.yaml", { "server.listen=127.0.0.1:65536", NULL },
      "--set server.listen: must be HOST:PORT with a port between 1 and 65535 (got \"127.0.0.1:65536\")\n" },
    { "--set header injection", FX "empty.yaml", { "server.cors_origin=\"*\\r\\nX-Evil: 1\"", NULL },
      "--set server.cors_origin: must not contain control characters\n" },
    { "--set bad bool", FX "empty.yaml", { "panic.jitter=maybe", NULL },
      "--set panic.jitter: expected true or false (got \"maybe\")\n" },
    { "redis.mode sentinel: addresses and name checked, where they are", FX "bad_redis_mode.yaml", { NULL },
      FX "bad_redis_mode.yaml:4:16: redis.master_name: must be 1 to 64 of A-Z a-z 0-9 . _ : - (got \"my master\")\n"
      FX "bad_redis_mode.yaml:3:14: redis.sentinels[1]: must be host:port (the port is missing) (got \"s2\")\n"
      FX "bad_redis_mode.yaml:3:14: redis.sentinels[2]: an IPv6 address must be in [brackets] (got \"::1:26379\")\n"
      FX "bad_redis_mode.yaml:2:9: redis.mode: sentinel needs redis.master_name (the master they watch), or redis.url as a redis-sentinel://host:port,.../master_name URL\n" },
    { "--set bad redis.mode", FX "empty.yaml", { "redis.mode=shard", NULL },
      "--set redis.mode: must be one of standalone, cluster, sentinel (got \"shard\")\n" },
    { "--set sentinel mode without sentinels", FX "empty.yaml", { "redis.mode=sentinel", NULL },
      "--set redis.mode: sentinel needs redis.sentinels (host:port of each) and redis.master_name (the master they watch), or redis.url as a redis-sentinel://host:port,.../master_name URL\n" },
    { "--set sentinel keys outside sentinel mode", FX "empty.yaml",
      { "redis.sentinels=s1:26379", "redis.master_name=m", "redis.url=redis-sentinel://s1/m", NULL },
      "--set redis.url: a redis-sentinel:// URL needs redis.mode: sentinel\n"
      "--set redis.sentinels: only used with redis.mode: sentinel\n"
      "--set redis.master_name: only used with redis.mode: sentinel\n" },
    { "--set sentinel named twice", FX "empty.yaml",
      { "redis.mode=sentinel", "redis.sentinels=s1:26379", "redis.url=redis-sentinel://s1/m", NULL },
      "--set redis.sentinels: leave empty: redis.url is a redis-sentinel:// URL, which names the sentinels\n" },
    { "--set bad sentinel URL, not echoed", FX "empty.yaml",
      { "redis.mode=sentinel", "redis.url=redis-sentinel://:secret@s1,,s2/m", NULL },
      "--set redis.url: invalid redis-sentinel:// URL: sentinel 2: missing or too long host\n"
      "--set redis.mode: sentinel needs redis.sentinels (host:port of each) and redis.master_name (the master they watch), or redis.url as a redis-sentinel://host:port,.../master_name URL\n" },
    { "--set cluster has database 0 only", FX "empty.yaml",
      { "redis.mode=cluster", "redis.url=redis://n1:7000/3", NULL },
      "--set redis.url: database 3: Redis Cluster has only database 0 (redis.mode: cluster)\n" },
    { "--set cross-key check", FX "empty.yaml", { "panic.backoff_max_ms=50", NULL },
      "--set panic.backoff_max_ms: must not be below panic.backoff_initial_ms (100)\n" },
    { "--set WAIT outlasting the command timeout", FX "empty.yaml",
      { "sale.wait_replicas=1", "sale.wait_timeout_ms=1000", NULL },
      "--set sale.wait_timeout_ms: must be below redis.command_timeout_ms (1000) when sale.wait_replicas is set\n" },
    { "--set wait_replicas out of range", FX "empty.yaml", { "sale.wait_replicas=17", NULL },
      "--set sale.wait_replicas: must be between 0 and 16 (got 17)\n" },
    { "file and --set errors together", FX "bad_unknown.yaml", { "server.threads=0", NULL },
      FX "bad_unknown.yaml:3:3: server.thread: unknown key\n"
      "--set server.threads: must be between 1 and 1024 (got 0)\n" },
};

static void test_bad(void **state)
{
    const bad_case *bc = *state;
    size_t n = 0;
    char *err = NULL;
    cfg *c;

    while (bc->sets[n]) n++;
    c = cfg_load(bc->file, (char *const *)bc->sets, n, &err);
    assert_null(c);
    assert_non_null(err);
    assert_string_equal(err, bc->want);
    free(err);
}

/* Environment overrides report as "env NAME: message". */
static void test_env_errors(void **state)
{
    char *err = NULL;
    (void)state;

    setenv("NERVE_LISTEN", "foo", 1);
    setenv("REDIS_URL", "http://user:secret@host/", 1);
    assert_null(cfg_load(FX "empty.yaml", NULL, 0, &err));
    assert_string_equal(err,
        "env REDIS_URL: must be a redis:// URL (redis://[user:password@]host:port/db)\n"
        "env NERVE_LISTEN: must be HOST:PORT with a port between 1 and 65535 (got \"foo\")\n");
    free(err);
}

/* ------------------------------------------------------------------------ */
/* Good input                                                               */
/* ------------------------------------------------------------------------ */

static void assert_list(char **v, size_t n, const char *const *want, size_t nwant)
{
    size_t i;
    assert_int_equal(n, nwant);
    for (i = 0; i < n; i++) assert_string_equal(v[i], want[i]);
}

static void assert_defaults(const cfg *c)
{
    static const char *const chans[] = { "inventory_events", "sales_events", "financial_events" };

    assert_string_equal(c->listen, "127.0.0.1:8011");
    assert_int_equal(c->threads, 128);
    assert_int_equal(c->max_body_bytes, 8192);
    assert_string_equal(c->cors_origin, "");
    assert_string_equal(c->pidfile, "");
    assert_int_equal(c->request_timeout_ms, 10000);
    assert_int_equal(c->shutdown_grace_ms, 10000);
    assert_string_equal(c->redis_url, "redis://127.0.0.1:6379/0");
    assert_int_equal(c->redis_connect_timeout_ms, 1000);
    assert_int_equal(c->redis_command_timeout_ms, 1000);
    assert_int_equal(c->redis_reconnect_max_ms, 2000);
    assert_string_equal(c->redis_prefix, "nerve:");
    assert_string_equal(c->redis_mode, "standalone");
    assert_int_equal(c->n_redis_sentinels, 0);
    assert_string_equal(c->redis_master_name, "");
    assert_list(c->bus_channels, c->n_bus_channels, chans, 3);
    assert_string_equal(c->alerts_channel, "system_alerts");
    assert_string_equal(c->inventory_channel, "inventory_events");
    assert_string_equal(c->sales_channel, "sales_events");
    assert_int_equal(c->queue_size, 10000);
    assert_int_equal(c->max_event_bytes, 65536);
    assert_int_equal(c->lock_ttl_ms, 2000);
    assert_int_equal(c->lock_max_wait_ms, 1000);
    assert_int_equal(c->max_qty, 1000);
    assert_int_equal(c->idempotency_ttl_s, 86400);
    assert_int_equal(c->max_batch, 128);
    assert_string_equal(c->rules_dir, "rules");
    assert_int_equal(c->n_rules_files, 0);
    assert_int_equal(c->rules_instruction_limit, 1000000);
    assert_int_equal(c->rules_memory_limit, 8 << 20);
    assert_string_equal(c->panic_webhook_url, "");
    assert_int_equal(c->panic_timeout_ms, 2000);
    assert_int_equal(c->panic_max_attempts, 5);
    assert_int_equal(c->panic_backoff_initial_ms, 100);
    assert_int_equal(c->panic_backoff_max_ms, 5000);
    assert_true(c->panic_backoff_multiplier == 2.0);
    assert_true(c->panic_jitter);
    assert_false(c->panic_dry_run);
    assert_int_equal(c->alerts_throttle_s, 60);
    assert_int_equal(c->audit_maxlen, 10000);
    assert_string_equal(c->log_level, "info");
    assert_string_equal(c->log_format, "text");
    assert_null(c->admin_token);
    assert_null(c->panic_token);
}

static void test_defaults(void **state)
{
    cfg *c = load_ok(FX "empty.yaml", NULL);
    (void)state;
    assert_defaults(c);
    assert_string_equal(c->path, FX "empty.yaml");
    assert_true(cJSON_IsObject(c->params));
    assert_null(c->params->child);
    assert_int_equal(c->n_seed, 0);
    cfg_free(c);
}

/* Sections present but null (`redis:`), and keys not given, take defaults. */
static void test_partial(void **state)
{
    cfg *c = load_ok(FX "partial.yaml", NULL);
    (void)state;
    assert_int_equal(c->threads, 4);
    c->threads = 128;
    assert_defaults(c);
    assert_true(cJSON_IsObject(c->params));
    cfg_free(c);
}

static void test_full(void **state)
{
    static const char *const chans[] = { "a_events", "b_events" };
    static const char *const files[] = { "inventory.lua", "financial.lua" };
    cfg *c = load_ok(FX "full.yaml", NULL);
    (void)state;

    assert_string_equal(c->listen, "0.0.0.0:9001");
    assert_int_equal(c->threads, 8);
    assert_int_equal(c->max_body_bytes, 4096);
    assert_string_equal(c->cors_origin, "*");
    assert_string_equal(c->pidfile, "/tmp/nerve.pid");
    assert_int_equal(c->request_timeout_ms, 5000);
    assert_int_equal(c->shutdown_grace_ms, 0);
    assert_string_equal(c->redis_url, "redis://user:pw@10.0.0.1:6380/2");
    assert_int_equal(c->redis_connect_timeout_ms, 250);
    assert_int_equal(c->redis_command_timeout_ms, 500);
    assert_int_equal(c->redis_reconnect_max_ms, 4000);
    assert_string_equal(c->redis_prefix, "shop:");
    assert_list(c->bus_channels, c->n_bus_channels, chans, 2);
    assert_string_equal(c->alerts_channel, "alerts");
    assert_string_equal(c->inventory_channel, "inv");
    assert_string_equal(c->sales_channel, "sales");
    assert_int_equal(c->queue_size, 42);
    assert_int_equal(c->max_event_bytes, 1024);
    assert_int_equal(c->lock_ttl_ms, 3000);
    assert_int_equal(c->lock_max_wait_ms, 0);
    assert_int_equal(c->max_qty, 1000000000);
    assert_int_equal(c->idempotency_ttl_s, 60);
    assert_int_equal(c->max_batch, 1);
    assert_string_equal(c->rules_dir, "/etc/nerve/rules");
    assert_list(c->rules_files, c->n_rules_files, files, 2);
    assert_int_equal(c->rules_instruction_limit, 5000);
    assert_true(c->rules_memory_limit == 2147483648LL);
    assert_string_equal(c->panic_webhook_url, "https://ads.example.com/pause");
    assert_int_equal(c->panic_timeout_ms, 1500);
    assert_int_equal(c->panic_max_attempts, 3);
    assert_int_equal(c->panic_backoff_initial_ms, 50);
    assert_int_equal(c->panic_backoff_max_ms, 800);
    assert_true(c->panic_backoff_multiplier == 1.5);
    assert_false(c->panic_jitter);
    assert_true(c->panic_dry_run);
    assert_int_equal(c->alerts_throttle_s, 0);
    assert_int_equal(c->audit_maxlen, 500);
    assert_int_equal(c->n_seed, 2);
    assert_string_equal(c->seed[0].sku, "demo-sku");
    assert_int_equal(c->seed[0].stock, 100);
    assert_string_equal(c->seed[1].sku, "A.b_c:9-z");
    assert_int_equal(c->seed[1].stock, 0);
    assert_string_equal(c->log_level, "debug");     /* canonical case */
    assert_string_equal(c->log_format, "json");
    cfg_free(c);
}

static const cJSON *get(const cJSON *o, const char *name)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!j) fail_msg("params: no %s", name);
    return j;
}

static void assert_num(const cJSON *o, const char *name, double want)
{
    const cJSON *j = get(o, name);
    assert_true(cJSON_IsNumber(j));
    assert_true(j->valuedouble == want);
}

static void assert_str(const cJSON *o, const char *name, const char *want)
{
    const cJSON *j = get(o, name);
    assert_true(cJSON_IsString(j));
    assert_string_equal(j->valuestring, want);
}

static void test_params_types(void **state)
{
    cfg *c = load_ok(FX "params.yaml", NULL);
    const cJSON *p = c->params, *l, *fin;
    (void)state;

    assert_true(cJSON_IsNull(get(p, "null_plain")));
    assert_true(cJSON_IsNull(get(p, "null_tilde")));
    assert_true(cJSON_IsNull(get(p, "null_empty")));
    assert_true(cJSON_IsTrue(get(p, "yes_bool")));
    assert_true(cJSON_IsFalse(get(p, "no_bool")));
    assert_num(p, "int", 42);
    assert_num(p, "neg", -7);
    assert_num(p, "float", 0.25);
    assert_num(p, "exp", 1000);
    assert_num(p, "huge", 123456789012345678901234567890.0);
    assert_str(p, "quoted_int", "42");
    assert_str(p, "quoted_true", "true");
    assert_str(p, "word", "yes");           /* not a YAML 1.1 boolean */
    assert_str(p, "text", "hello world");
    l = get(p, "list");
    assert_true(cJSON_IsArray(l));
    assert_int_equal(cJSON_GetArraySize(l), 4);
    assert_true(cJSON_GetArrayItem(l, 0)->valuedouble == 1);
    assert_string_equal(cJSON_GetArrayItem(l, 1)->valuestring, "two");
    assert_true(cJSON_GetArrayItem(l, 2)->valuedouble == 3.5);
    assert_true(cJSON_IsArray(cJSON_GetArrayItem(l, 3)));
    assert_num(get(p, "inventory"), "warning_threshold", 20);
    assert_num(get(p, "inventory"), "critical_threshold", 5);
    fin = get(p, "financial");
    assert_true(cJSON_IsObject(get(fin, "min_unit_price_by_sku")));
    assert_null(get(fin, "min_unit_price_by_sku")->child);
    assert_num(get(fin, "aliased"), "x", 1);
    cfg_free(c);
}

/* The shipped config loads, states the true defaults, and carries the params
 * and seeds the shipped rules and the demo rely on. */
static void test_shipped_config(void **state)
{
    cfg *c = load_ok("config/nerve.yaml", NULL);
    const cJSON *fin;
    int i;
    (void)state;

    assert_defaults(c);
    assert_num(get(c->params, "inventory"), "warning_threshold", 20);
    assert_num(get(c->params, "inventory"), "critical_threshold", 5);
    fin = get(c->params, "financial");
    assert_true(cJSON_IsNumber(get(fin, "daily_budget")));
    assert_num(fin, "refund_ratio_max", 0.3);
    assert_true(cJSON_IsNumber(get(fin, "min_revenue_for_ratio")));
    assert_num(fin, "min_unit_price", 1.0);
    assert_true(cJSON_IsObject(get(fin, "min_unit_price_by_sku")));
    for (i = 0; i < (int)c->n_seed && strcmp(c->seed[i].sku, "demo-sku"); i++)
        ;
    assert_true(i < (int)c->n_seed);
    assert_int_equal(c->seed[i].stock, 100);
    cfg_free(c);
}

/* The three deployments, each described one way, each with connection
 * options from cfg_redis_opts: standalone; cluster (a seed node, routed);
 * sentinel (the primary's credentials and db, and a resolver for the
 * sentinels). */
static void test_redis_modes(void **state)
{
    static const char *const cluster[] = { "redis.mode=cluster", "redis.url=redis://n1:7000", NULL };
    static const char *const by_url[] = {
        "redis.mode=Sentinel",
        "redis.url=redis-sentinel://nerve:pw@s1,s2:26380,[::1]/mymaster/2", NULL,
    };
    static const char *const by_keys[] = {
        "redis.mode=sentinel", "redis.sentinels=s1:26379, [::1]:26380", "redis.master_name=mymaster",
        NULL,
    };
    static const char *const sents[] = { "s1:26379", "[::1]:26380" };
    rds_opts ro;
    char err[256];
    cfg *c;
    (void)state;

    c = load_ok("config/nerve.yaml", NULL);
    assert_int_equal(cfg_redis_opts(c, &ro, err, sizeof err), 0);
    assert_string_equal(ro.host, "127.0.0.1");
    cfg_free(c);

    c = load_ok(FX "empty.yaml", cluster);
    assert_string_equal(c->redis_mode, "cluster");
    assert_int_equal(cfg_redis_opts(c, &ro, err, sizeof err), 0);
    assert_string_equal(ro.host, "n1");
    assert_int_equal(ro.port, 7000);
    assert_int_equal(ro.cluster, 1); /* the seed; every client routes by slot */
    cfg_free(c);
    c = load_ok("config/nerve.yaml", NULL);
    assert_int_equal(cfg_redis_opts(c, &ro, err, sizeof err), 0);
    assert_int_equal(ro.cluster, 0);
    cfg_free(c);

    c = load_ok(FX "empty.yaml", by_url);
    assert_string_equal(c->redis_mode, "sentinel");
    assert_int_equal(c->n_redis_sentinels, 0);
    assert_int_equal(cfg_redis_opts(c, &ro, err, sizeof err), 0);
    assert_non_null(ro.sentinel);
    assert_string_equal(ro.user, "nerve");
    assert_string_equal(ro.pass, "pw");
    assert_int_equal(ro.db, 2);
    snt *by_url_snt = ro.sentinel;
    /* The same configuration again (another command, another module):
     * the same resolver, whose cache they share. */
    assert_int_equal(cfg_redis_opts(c, &ro, err, sizeof err), 0);
    assert_ptr_equal(ro.sentinel, by_url_snt);
    cfg_free(c);

    c = load_ok(FX "empty.yaml", by_keys);
    assert_list(c->redis_sentinels, c->n_redis_sentinels, sents, 2);
    assert_string_equal(c->redis_master_name, "mymaster");
    assert_int_equal(cfg_redis_opts(c, &ro, err, sizeof err), 0);
    assert_non_null(ro.sentinel);
    assert_true(ro.sentinel != by_url_snt);
    assert_string_equal(ro.pass, "");
    cfg_free(c);

    /* WAIT vouches for its own connection's writes: with a cluster's
     * batches spread over primaries it would vouch for the wrong ones. */
    static const char *const cl_wait[] = { "redis.mode=cluster", "redis.url=redis://n1:7000",
                                           "sale.wait_replicas=1", NULL };
    char *errs = NULL;
    assert_null(cfg_load(FX "empty.yaml", (char *const *)cl_wait, 3, &errs));
    assert_non_null(errs);
    assert_non_null(
        strstr(errs, "--set sale.wait_replicas: is not supported with redis.mode cluster"));
    free(errs);
}

static void test_set(void **state)
{
    static const char *const sets[] = {
        "server.threads=2",
        "server.threads=3",                     /* later wins */
        "server.listen=[::1]:9001",             /* verbatim, not a YAML list */
        "server.cors_origin=*",                 /* verbatim, not an alias */
        "server.pidfile=",                      /* empty = none */
        "redis.prefix=\"x:\"",                  /* quoted YAML */
        "bus.channels=[x, y]",
        "rules.files=a.lua, b.lua",
        "panic.jitter=off",
        "panic.backoff_multiplier=3",
        "log.level=WARN",
        "rules.params.inventory.warning_threshold=50",
        "rules.params.financial.daily_budget=250.5",
        "rules.params.new.deep.leaf=\"7\"",
        "rules.params.list=[1, {a: b}]",
        "inventory.seed.sku.with.dots=7",
        "inventory.seed.demo-sku=1",
        NULL,
    };
    static const char *const chans[] = { "x", "y" };
    static const char *const files[] = { "a.lua", "b.lua" };
    cfg *c = load_ok("config/nerve.yaml", sets);
    const cJSON *l;
    size_t i;
    (void)state;

    assert_int_equal(c->threads, 3);
    assert_string_equal(c->listen, "[::1]:9001");
    assert_string_equal(c->cors_origin, "*");
    assert_string_equal(c->pidfile, "");
    assert_string_equal(c->redis_prefix, "x:");
    assert_list(c->bus_channels, c->n_bus_channels, chans, 2);
    assert_list(c->rules_files, c->n_rules_files, files, 2);
    assert_false(c->panic_jitter);
    assert_true(c->panic_backoff_multiplier == 3.0);
    assert_string_equal(c->log_level, "warn");
    assert_num(get(c->params, "inventory"), "warning_threshold", 50);
    assert_num(get(c->params, "inventory"), "critical_threshold", 5);  /* sibling kept */
    assert_num(get(c->params, "financial"), "daily_budget", 250.5);
    assert_str(get(get(c->params, "new"), "deep"), "leaf", "7");
    l = get(c->params, "list");
    assert_int_equal(cJSON_GetArraySize(l), 2);
    assert_str(cJSON_GetArrayItem(l, 1), "a", "b");
    for (i = 0; i < c->n_seed && strcmp(c->seed[i].sku, "sku.with.dots"); i++)
        ;
    assert_true(i < c->n_seed);
    assert_int_equal(c->seed[i].stock, 7);
    for (i = 0; i < c->n_seed && strcmp(c->seed[i].sku, "demo-sku"); i++)
        ;
    assert_true(i < c->n_seed);
    assert_int_equal(c->seed[i].stock, 1);
    cfg_free(c);
}

/* File < environment < --set; an empty variable is unset. */
static void test_env_overrides(void **state)
{
    static const char *const sets[] = { "rules.dir=/from/set", NULL };
    cfg *c;
    (void)state;

    setenv("REDIS_URL", "redis://10.1.1.1:7000/1", 1);
    setenv("NERVE_LISTEN", "0.0.0.0:9100", 1);
    setenv("NERVE_RULES_DIR", "/from/env", 1);
    setenv("NERVE_PANIC_URL", "", 1);
    setenv("NERVE_ADMIN_TOKEN", "s3cret", 1);
    setenv("NERVE_PANIC_TOKEN", "", 1);
    c = load_ok(FX "full.yaml", sets);
    assert_string_equal(c->redis_url, "redis://10.1.1.1:7000/1");
    assert_string_equal(c->listen, "0.0.0.0:9100");
    assert_string_equal(c->rules_dir, "/from/set");
    assert_string_equal(c->panic_webhook_url, "https://ads.example.com/pause");
    assert_string_equal(c->admin_token, "s3cret");
    assert_null(c->panic_token);
    cfg_free(c);

    setenv("NERVE_PANIC_URL", "http://127.0.0.1:9/stop", 1);
    setenv("NERVE_PANIC_TOKEN", "tok", 1);
    c = load_ok(FX "empty.yaml", NULL);
    assert_string_equal(c->panic_webhook_url, "http://127.0.0.1:9/stop");
    assert_string_equal(c->rules_dir, "/from/env");
    assert_string_equal(c->panic_token, "tok");
    assert_null(c->sentinel_password);
    cfg_free(c);

    setenv("NERVE_SENTINEL_PASSWORD", "sentinel-pw", 1);
    c = load_ok(FX "empty.yaml", NULL);
    assert_string_equal(c->sentinel_password, "sentinel-pw");
    cfg_free(c);
}

/* NERVE_ADMIN_TOKENS=name:token,...: named admin tokens; NERVE_RESUME_URL
 * sets panic.resume_url. A bad entry is named by position and (valid) name,
 * never by its token. */
static void test_admin_tokens(void **state)
{
    char *err = NULL;
    cfg *c;
    (void)state;

    setenv("NERVE_ADMIN_TOKEN", "root-tok", 1);
    setenv("NERVE_ADMIN_TOKENS", "alice:tok-a,bob.ops:tok:b", 1);
    setenv("NERVE_RESUME_URL", "http://127.0.0.1:9/resume", 1);
    c = load_ok(FX "empty.yaml", NULL);
    assert_string_equal(c->admin_token, "root-tok");
    assert_int_equal(c->n_admin_tokens, 2);
    assert_string_equal(c->admin_tokens[0].name, "alice");
    assert_string_equal(c->admin_tokens[0].token, "tok-a");
    assert_string_equal(c->admin_tokens[1].name, "bob.ops");
    assert_string_equal(c->admin_tokens[1].token, "tok:b");
    assert_string_equal(c->panic_resume_url, "http://127.0.0.1:9/resume");
    cfg_free(c);

    setenv("NERVE_ADMIN_TOKENS",
           "SECRET1,:SECRET2,a b:SECRET3,ok:,admin:SECRET4,x:SECRET5,x:SECRET6,y:SECRET5,"
           "z:root-tok,w:SEC\tRET7",
           1);
    setenv("NERVE_RESUME_URL", "ftp://x/", 1);
    assert_null(cfg_load(FX "empty.yaml", NULL, 0, &err));
    assert_non_null(err);
    assert_null(strstr(err, "SECRET"));
    assert_null(strstr(err, "root-tok"));
    assert_string_equal(err,
        "env NERVE_RESUME_URL: must be an http:// or https:// URL, or empty for none\n"
        "env NERVE_ADMIN_TOKENS: entry 1: expected NAME:TOKEN\n"
        "env NERVE_ADMIN_TOKENS: entry 2: expected NAME:TOKEN\n"
        "env NERVE_ADMIN_TOKENS: entry 3: the name must be 1-64 bytes of A-Z a-z 0-9 . _ -\n"
        "env NERVE_ADMIN_TOKENS: entry 4 (ok): expected NAME:TOKEN\n"
        "env NERVE_ADMIN_TOKENS: entry 5 (admin): the name admin is NERVE_ADMIN_TOKEN's\n"
        "env NERVE_ADMIN_TOKENS: entry 7 (x): duplicate name\n"
        "env NERVE_ADMIN_TOKENS: entry 8 (y): the same token as an earlier entry (who used it "
        "could not be told)\n"
        "env NERVE_ADMIN_TOKENS: entry 9 (z): the same token as NERVE_ADMIN_TOKEN\n"
        "env NERVE_ADMIN_TOKENS: entry 10 (w): the token contains a control character\n");
    free(err);
}

typedef struct listen_case { const char *addr; bool ok; } listen_case;

static void test_listen_forms(void **state)
{
    static const listen_case cases[] = {
        { "127.0.0.1:8011", true }, { "0.0.0.0:1", true }, { "localhost:65535", true },
        { "[::1]:8011", true }, { "[::]:80", true },
        { "8011", false }, { ":8011", false }, { "host:", false }, { "host:0", false },
        { "host:65536", false }, { "host:+80", false }, { "host:80x", false },
        { "::1:8011", false }, { "[::1]8011", false }, { "ho st:80", false },
    };
    size_t i;
    (void)state;

    for (i = 0; i < NELEM(cases); i++) {
        char set[64], *err = NULL;
        char *sets[] = { set };
        cfg *c;
        snprintf(set, sizeof set, "server.listen=%s", cases[i].addr);
        c = cfg_load(FX "empty.yaml", sets, 1, &err);
        if ((c != NULL) != cases[i].ok)
            fail_msg("%s: expected %s, got %s", cases[i].addr, cases[i].ok ? "ok" : "an error",
                     err ? err : "ok");
        cfg_free(c);
        free(err);
    }
}

static void test_free_and_null_errors(void **state)
{
    (void)state;
    cfg_free(NULL);
    assert_null(cfg_load(FX "bad_type.yaml", NULL, 0, NULL));  /* errors may be NULL */
}

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test_setup(test_env_errors, clear_env),
        cmocka_unit_test_setup(test_admin_tokens, clear_env),
        cmocka_unit_test_setup(test_defaults, clear_env),
        cmocka_unit_test_setup(test_partial, clear_env),
        cmocka_unit_test_setup(test_full, clear_env),
        cmocka_unit_test_setup(test_params_types, clear_env),
        cmocka_unit_test_setup(test_shipped_config, clear_env),
        cmocka_unit_test_setup(test_set, clear_env),
        cmocka_unit_test_setup(test_redis_modes, clear_env),
        cmocka_unit_test_setup(test_env_overrides, clear_env),
        cmocka_unit_test_setup(test_listen_forms, clear_env),
        cmocka_unit_test_setup(test_free_and_null_errors, clear_env),
    };
    struct CMUnitTest tests[NELEM(fixed) + NELEM(bad_cases)];
    size_t i;

    for (i = 0; i < NELEM(fixed); i++) tests[i] = fixed[i];
    for (i = 0; i < NELEM(bad_cases); i++) {
        struct CMUnitTest t = cmocka_unit_test_prestate_setup_teardown(test_bad, clear_env, NULL, NULL);
        t.name = bad_cases[i].name;
        t.initial_state = (void *)&bad_cases[i];
        tests[NELEM(fixed) + i] = t;
    }
    clear_env(NULL);
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
