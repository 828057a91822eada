/* fuzz_config.c -- libFuzzer target: cfg_load() (engine/config.c) on an
 * arbitrary YAML file, with overrides taken from the input.
 *
 * The input is written to a memfd and loaded through /proc/self/fd/N, so no
 * file is written per run. Lines of the input that read
 *     #!set dotted.key=value        (at most 4: --set overrides, in order)
 *     #!env NAME=value              (NAME: one of the variables cfg_load reads)
 * are YAML comments, so the file stays what it is, and they also become
 * --set arguments and environment variables for that one load: the same
 * validation must hold on every path a value can take.
 *
 * Checked: a NULL result comes with a non-empty error text, one message per
 * line, every line ending in '\n' and free of other control characters; a
 * cfg comes with no error text and every value within the ranges the rest of
 * the daemon relies on (a sample of the table's bounds, the cross-key backoff
 * check, and inventory.seed SKUs that the sale endpoint accepts).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "nerve/config.h"
#include "nerve/sku.h"
#include "fuzz.h"

#define CFG_MAX_SETS 4
#define CFG_MAX_LINE 4096

static const char *const cfg_env_names[] = {
    "REDIS_URL", "NERVE_LISTEN", "NERVE_RULES_DIR", "NERVE_PANIC_URL",
    "NERVE_ADMIN_TOKEN", "NERVE_PANIC_TOKEN", NULL
};

static int cfg_fd = -1;
static char cfg_path[64];

static void cfg_teardown(void)
{
    if (cfg_fd >= 0)
        close(cfg_fd);
    cfg_fd = -1;
}

static void cfg_setup(void)
{
    if (cfg_fd >= 0)
        return;
    fuzz_quiet_logs();
    for (int i = 0; cfg_env_names[i]; i++)
        unsetenv(cfg_env_names[i]);
    cfg_fd = memfd_create("nerve-fuzz-config", MFD_CLOEXEC);
    FUZZ_CHECK(cfg_fd >= 0, "memfd_create: %s", strerror(errno));
    snprintf(cfg_path, sizeof(cfg_path), "/proc/self/fd/%d", cfg_fd);
    atexit(cfg_teardown);
}

/* The error text of a failed load: non-empty lines, each ending in '\n',
 * no other control characters. */
static void cfg_check_errors(const char *errs)
{
    const char *p;

    FUZZ_CHECK(errs != NULL && errs[0] != '\0', "cfg_load failed without errors");
    FUZZ_CHECK(errs[strlen(errs) - 1] == '\n', "errors not newline-terminated");
    for (p = errs; *p; p++) {
        FUZZ_CHECK(*p != '\n' || p == errs || p[-1] != '\n', "empty error line");
        FUZZ_CHECK(*p == '\n' || ((unsigned char)*p >= 0x20 && *p != 0x7f),
                   "control character 0x%02x in errors", (unsigned char)*p);
    }
    FUZZ_CHECK(errs[0] != '\n', "empty first error line");
}

#define CFG_RANGE(v, lo, hi) FUZZ_CHECK((v) >= (lo) && (v) <= (hi), #v " = %lld", (long long)(v))

static void cfg_check(const cfg *c)
{
    FUZZ_CHECK(c->path && strcmp(c->path, cfg_path) == 0, "path");
    FUZZ_CHECK(c->listen && c->listen[0], "listen");
    CFG_RANGE(c->threads, 1, 1024);
    CFG_RANGE(c->max_body_bytes, 64, 1048576);
    CFG_RANGE(c->request_timeout_ms, 100, 600000);
    FUZZ_CHECK(c->cors_origin && c->pidfile, "strings");
    for (const char *p = c->cors_origin; *p; p++)
        FUZZ_CHECK((unsigned char)*p >= 0x20 && *p != 0x7f, "control character in cors_origin");
    FUZZ_CHECK(c->redis_url && strncmp(c->redis_url, "redis://", 8) == 0, "redis.url");
    FUZZ_CHECK(c->redis_prefix && strlen(c->redis_prefix) <= 64 &&
               !strpbrk(c->redis_prefix, "{} \t\r\n"), "redis.prefix \"%.40s\"", c->redis_prefix);
    FUZZ_CHECK(c->n_bus_channels <= 256, "%zu bus.channels", c->n_bus_channels);
    for (size_t i = 0; i < c->n_bus_channels; i++)
        FUZZ_CHECK(c->bus_channels[i] && c->bus_channels[i][0], "bus.channels[%zu]", i);
    CFG_RANGE(c->queue_size, 1, 1000000);
    CFG_RANGE(c->max_event_bytes, 64, 16777216);
    CFG_RANGE(c->lock_ttl_ms, 10, 600000);
    CFG_RANGE(c->max_qty, 1, 1000000000);
    CFG_RANGE(c->max_batch, 1, 1024);
    FUZZ_CHECK(c->rules_dir && c->rules_dir[0], "rules.dir");
    FUZZ_CHECK(c->n_rules_files <= 256, "%zu rules.files", c->n_rules_files);
    for (size_t i = 0; i < c->n_rules_files; i++)
        FUZZ_CHECK(c->rules_files[i] && c->rules_files[i][0], "rules.files[%zu]", i);
    CFG_RANGE(c->rules_instruction_limit, 1000, 1000000000);
    CFG_RANGE(c->rules_memory_limit, 65536, 2147483648LL);
    FUZZ_CHECK(cJSON_IsObject(c->params), "rules.params is not an object");
    CFG_RANGE(c->panic_max_attempts, 1, 100);
    FUZZ_CHECK(c->panic_backoff_initial_ms <= c->panic_backoff_max_ms, "backoff %d > %d",
               c->panic_backoff_initial_ms, c->panic_backoff_max_ms);
    FUZZ_CHECK(c->panic_backoff_multiplier >= 1.0 && c->panic_backoff_multiplier <= 10.0,
               "backoff multiplier %g", c->panic_backoff_multiplier);
    FUZZ_CHECK(c->panic_webhook_url, "panic.webhook_url");
    CFG_RANGE(c->alerts_throttle_s, 0, 86400);
    for (size_t i = 0; i < c->n_seed; i++) {
        FUZZ_CHECK(c->seed[i].sku && sku_valid(c->seed[i].sku, strlen(c->seed[i].sku)),
                   "inventory.seed SKU \"%.40s\"", c->seed[i].sku ? c->seed[i].sku : "(null)");
        FUZZ_CHECK(c->seed[i].stock >= 0, "inventory.seed stock %lld", c->seed[i].stock);
    }
    FUZZ_CHECK(c->log_level && (!strcmp(c->log_level, "debug") || !strcmp(c->log_level, "info") ||
                                !strcmp(c->log_level, "warn") || !strcmp(c->log_level, "error")),
               "log.level");
    FUZZ_CHECK(c->log_format && (!strcmp(c->log_format, "text") || !strcmp(c->log_format, "json")),
               "log.format");
}

/* The text of the line at P (up to '\n', NUL or END) after PREFIX, as a new
 * string; NULL when the line does not start with PREFIX. */
static char *cfg_directive(const char *p, const char *end, const char *prefix)
{
    size_t plen = strlen(prefix), n = 0;
    char *s;

    if ((size_t)(end - p) < plen || memcmp(p, prefix, plen) != 0)
        return NULL;
    p += plen;
    while (p + n < end && p[n] != '\n' && p[n] != '\0' && n < CFG_MAX_LINE)
        n++;
    s = malloc(n + 1);
    FUZZ_CHECK(s != NULL, "out of memory");
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static int fuzz_config_one(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data, *end = text + size, *p;
    char *sets[CFG_MAX_SETS], *envs[8], *errs = NULL;
    size_t nsets = 0, nenvs = 0;
    cfg *c;

    cfg_setup();
    FUZZ_CHECK(ftruncate(cfg_fd, 0) == 0, "ftruncate: %s", strerror(errno));
    FUZZ_CHECK(pwrite(cfg_fd, data, size, 0) == (ssize_t)size, "pwrite: %s", strerror(errno));

    for (p = text; p < end; p++) {
        char *d;

        if (p != text && p[-1] != '\n')
            continue;
        if (nsets < CFG_MAX_SETS && (d = cfg_directive(p, end, "#!set ")) != NULL) {
            sets[nsets++] = d;
        } else if (nenvs < 8 && (d = cfg_directive(p, end, "#!env ")) != NULL) {
            char *eq = strchr(d, '=');
            int known = 0;

            if (eq) {
                *eq = '\0';
                for (int i = 0; cfg_env_names[i]; i++)
                    known |= strcmp(d, cfg_env_names[i]) == 0;
            }
            if (known && setenv(d, eq + 1, 1) == 0)
                envs[nenvs++] = d;
            else
                free(d);
        }
    }

    c = cfg_load(cfg_path, sets, nsets, &errs);
    if (c == NULL) {
        cfg_check_errors(errs);
    } else {
        FUZZ_CHECK(errs == NULL, "errors with a cfg: %s", errs);
        cfg_check(c);
    }
    cfg_free(c);
    free(errs);
    for (size_t i = 0; i < nsets; i++)
        free(sets[i]);
    for (size_t i = 0; i < nenvs; i++) {
        unsetenv(envs[i]);
        free(envs[i]);
    }
    return 0;
}

FUZZ_ENTRY(fuzz_config_one)
