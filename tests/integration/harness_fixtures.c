/* harness_fixtures.c -- what an integration test sets up besides redis and
 * the daemon: files in the temp dir (rule directories, event files), a mock
 * emergency-stop webhook, and the redis-server (daemon, webhook) a whole
 * group of tests shares.
 *
 * See harness.h for the contract. The file helpers fail the running test at
 * the caller's FILE:LINE (h_fail_at) rather than returning an error: a test
 * cannot go on without its fixtures, and the caller's line says which one it
 * was. Group fixtures run outside any test and return -1 instead.
 *
 * The mock webhook (tests/lib/mock_webhook.c, which the Makefile does not
 * link) is compiled here, once, so that every integration test has it and
 * includes only its header, through harness.h.
 */
#include "harness.h"

#include "../lib/mock_webhook.c"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* --- files in the temp dir ---------------------------------------------- */

void h_write_file_at(const char *dir, const char *name, const char *text,
                     const char *file, int line)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        h_fail_at(file, line, "fopen %s: %s", path, strerror(errno));
    fputs(text, f);
    if (fclose(f) != 0)
        h_fail_at(file, line, "write %s: %s", path, strerror(errno));
}

char *h_read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char *s = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096 + 1) {
            cap = cap ? 2 * cap : 8192;
            char *p = realloc(s, cap);
            if (p == NULL) {
                free(s);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            s = p;
        }
        size_t n = fread(s + len, 1, cap - len - 1, f);
        if (n == 0)
            break;
        len += n;
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        free(s);
        errno = EIO;
        return NULL;
    }
    s[len] = '\0';
    return s;
}

void h_rules_dir_at(const char *name, const char *rule, const char *text, char *dir,
                    size_t dirlen, char *set, size_t setlen, const char *file, int line)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", h_tmpdir(), name);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        h_fail_at(file, line, "mkdir %s: %s", path, strerror(errno));
    if (rule)
        h_write_file_at(path, rule, text, file, line);
    if (dir)
        snprintf(dir, dirlen, "%s", path);
    if (set)
        snprintf(set, setlen, "rules.dir=%s", path);
}

/* --- the mock webhook ------------------------------------------------------ */

mock_server *h_hook_start(char *set, size_t setlen)
{
    int port = 0;
    mock_server *m = mock_start(&port);
    if (m == NULL) {
        printf("harness: mock webhook: %s\n", strerror(errno));
        return NULL;
    }
    char url[128];
    if (mock_url(m, "/hook", url, sizeof url) != 0) {
        printf("harness: mock webhook: URL too long\n");
        mock_stop(m);
        return NULL;
    }
    snprintf(set, setlen, "panic.webhook_url=%s", url);
    return m;
}

void h_hook_reset(mock_server *m)
{
    if (m == NULL)
        return;
    mock_set_script(m, NULL, 0, 200);
    mock_set_delay_ms(m, 0);
    mock_reset(m);
}

/* --- per group ----------------------------------------------------------- */

static struct {
    h_redis **redis;
    h_daemon **daemon;
    const char *const *sets;
    mock_server **hook;
    char *hook_set;
    size_t hook_setlen;
} group;

void h_group_use(h_redis **redis, h_daemon **daemon, const char *const *sets)
{
    group.redis = redis;
    group.daemon = daemon;
    group.sets = sets;
}

void h_group_hook(mock_server **hook, char *set, size_t setlen)
{
    group.hook = hook;
    group.hook_set = set;
    group.hook_setlen = setlen;
}

int h_group_setup(void **state)
{
    (void)state;
    if (group.redis == NULL) {
        printf("harness: h_group_setup: no h_group_use() before the group ran\n");
        return -1;
    }
    *group.redis = h_redis_start(false);
    if (*group.redis == NULL)
        return -1;
    if (group.daemon) {
        size_t n = 0;
        while (group.sets && group.sets[n])
            n++;
        *group.daemon = h_daemon_startv(*group.redis, true, group.sets, n);
        if (*group.daemon == NULL)
            return -1;
    }
    if (group.hook) {
        *group.hook = h_hook_start(group.hook_set, group.hook_setlen);
        if (*group.hook == NULL)
            return -1;
    }
    return 0;
}

int h_group_teardown(void **state)
{
    (void)state;
    int rc = 0;
    if (group.hook) {
        mock_stop(*group.hook);
        *group.hook = NULL;
    }
    if (group.daemon && *group.daemon) {
        rc = h_daemon_stop(*group.daemon);
        *group.daemon = NULL;
    }
    if (group.redis) {
        h_redis_free(*group.redis);
        *group.redis = NULL;
    }
    return rc == 0 ? 0 : -1;
}
