/* log.c -- the one logging module (see log.h).
 *
 * Lines are formatted into a stack buffer and written with a single write(2)
 * on stderr, so concurrent threads never interleave within a line and no
 * lock is needed. Lines longer than the buffer are truncated, never split.
 */
#include "nerve/log.h"

#include "nerve/jsonck.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int cur_level = LOG_LVL_INFO;
static _Atomic bool json_mode = false;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

int log_set_level_name(const char *name) {
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            atomic_store(&cur_level, i);
            return 0;
        }
    }
    return -1;
}

void log_set_level(log_level lvl) {
    atomic_store(&cur_level, (int)lvl);
}
void log_set_json(bool json) {
    atomic_store(&json_mode, json);
}
bool log_enabled(log_level lvl) {
    return (int)lvl >= atomic_load(&cur_level);
}

/* Append S to BUF as the inside of a JSON string, as much as fits in CAP
 * (a log line is cut, never overrun). */
static size_t json_escape(char *buf, size_t cap, size_t n, const char *s) {
    for (; *s && n + 7 < cap; s++) {
        char one[2] = { *s, 0 };
        n = (size_t)(jsonck_escape(buf + n, one) - buf);
    }
    return n;
}

void log_write(log_level lvl, const char *component, const char *fmt, ...) {
    char msg[3072];
    char line[4096 + 512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tsbuf[40];
    size_t tl = strftime(tsbuf, sizeof tsbuf - 8, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(tsbuf + tl, sizeof tsbuf - tl, ".%03dZ", (int)(ts.tv_nsec / 1000000) % 1000);
    int li = (int)lvl;
    if (li < 0 || li > 3) li = 3;

    size_t n;
    if (atomic_load(&json_mode)) {
        n = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"",
                             tsbuf, level_names[li]);
        n = json_escape(line, sizeof line, n, component);
        n += (size_t)snprintf(line + n, sizeof line - n, "\",\"msg\":\"");
        n = json_escape(line, sizeof line, n, msg);
        n += (size_t)snprintf(line + n, sizeof line - n, "\"}\n");
    } else {
        for (char *p = msg; *p; p++)
            if ((unsigned char)*p < 0x20) *p = ' '; /* one event, one line */
        n = (size_t)snprintf(line, sizeof line, "%s %s %s %s\n", tsbuf, level_names[li], component,
                             msg);
    }
    if (n >= sizeof line) {
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w; /* nowhere to report a failing stderr */
}
