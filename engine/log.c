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

/* ---- JSON lines -------------------------------------------------------------------
 *
 * Callers write `free text key=value key="quoted value"...` (printf-style, as
 * the text format shows it). In JSON mode the trailing pairs become keys of
 * their own, so a collector can filter on scope, rule, sku... without
 * parsing msg. Values stay JSON strings, numbers included: the text does not
 * say which were numbers ("007" is a SKU, not 7), and a consumer that wants
 * one casts. A quoted value is taken as written -- callers do not escape
 * what they put between the quotes -- and ends at the first quote followed by
 * the end of the line or by ` key=`. */

static bool key_start(char c) {
    return (c >= 'a' && c <= 'z') || c == '_';
}
static bool key_char(char c) {
    return key_start(c) || (c >= '0' && c <= '9') || c == '.';
}

/* Length of the key at S when S is `key=`, else 0. */
static size_t key_len(const char *s) {
    if (!key_start(*s)) return 0;
    size_t n = 1;
    while (key_char(s[n])) n++;
    return s[n] == '=' ? n : 0;
}

typedef struct {
    const char *key, *val, *next; /* next: the following pair, or the end */
    size_t key_len, val_len;
} kv_pair;

/* The pair at P, or false when P is not `key=value` followed by the end or
 * by one space. */
static bool kv_parse(const char *p, kv_pair *kv) {
    size_t kl = key_len(p);
    if (!kl) return false;
    const char *v = p + kl + 1;
    kv->key = p;
    kv->key_len = kl;
    if (*v == '"') {
        for (const char *q = strchr(v + 1, '"'); q; q = strchr(q + 1, '"')) {
            if (q[1] == '\0' || (q[1] == ' ' && key_len(q + 2))) {
                kv->val = v + 1;
                kv->val_len = (size_t)(q - v - 1);
                kv->next = q[1] ? q + 2 : q + 1;
                return true;
            }
        }
        /* never closed: a bare token that starts with a quote */
    }
    size_t vl = strcspn(v, " ");
    kv->val = v;
    kv->val_len = vl;
    kv->next = v + vl + strspn(v + vl, " ");
    return true;
}

/* Where the trailing run of pairs of MSG starts (at MSG or just after a
 * space), or NULL when MSG does not end with one. Linear: a start that fails
 * at a word rules out every start before that word. */
static const char *kv_tail(const char *msg) {
    const char *p = msg;
    while (*p) {
        const char *q = p;
        kv_pair kv;
        while (kv_parse(q, &kv)) {
            if (!*kv.next) return p;
            q = kv.next;
        }
        q += strcspn(q, " "); /* the word that is not a pair */
        p = q + strspn(q, " ");
    }
    return NULL;
}

/* A bounded JSON line: CAP keeps room for the closing "}\n", and a string
 * is cut, never left open, when the line is full. */
typedef struct {
    char *buf;
    size_t n, cap;
} jline;

static void jl_raw(jline *j, const char *s, size_t len) {
    if (j->n + len > j->cap) len = j->cap - j->n;
    memcpy(j->buf + j->n, s, len);
    j->n += len;
}

/* `"S"` for LEN bytes of S, escaped, with as much of S as fits. */
static void jl_str(jline *j, const char *s, size_t len) {
    jl_raw(j, "\"", 1);
    for (size_t i = 0; i < len && j->n + 6 + 1 <= j->cap; i++) {
        char one[2] = { s[i], 0 };
        j->n = (size_t)(jsonck_escape(j->buf + j->n, one) - j->buf);
    }
    if (j->n < j->cap) j->buf[j->n++] = '"';
}

/* `,"key":"value"`, or nothing when not even the key fits. A key the line
 * already has (ts, level, component, msg -- e.g. an alert's level=critical)
 * is written as field_<key> so no key is ever duplicated. */
static void jl_field(jline *j, const char *key, size_t kl, const char *val, size_t vl) {
    static const char *const own[] = { "ts", "level", "component", "msg" };
    const char *prefix = "";
    for (int i = 0; i < 4; i++)
        if (strlen(own[i]) == kl && memcmp(own[i], key, kl) == 0) prefix = "field_";
    size_t pl = strlen(prefix);
    if (j->n + pl + kl + 8 + 6 > j->cap) return;
    jl_raw(j, ",\"", 2);
    jl_raw(j, prefix, pl);
    jl_raw(j, key, kl); /* [a-z_][a-z0-9_.]*: nothing to escape */
    jl_raw(j, "\":", 2);
    jl_str(j, val, vl);
}

static size_t json_line(char *line, size_t size, const char *tsbuf, const char *level,
                        const char *component, const char *msg) {
    jline j = { line, 0, size - 2 };
    j.n = (size_t)snprintf(line, size, "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":", tsbuf,
                           level);
    jl_str(&j, component, strlen(component));
    jl_raw(&j, ",\"msg\":", 7);
    const char *tail = kv_tail(msg);
    size_t ml = tail ? (size_t)(tail - msg) : strlen(msg);
    while (ml > 0 && msg[ml - 1] == ' ') ml--;
    jl_str(&j, msg, ml);
    /* Quoted values are taken as written: a value that holds `" key=` of
     * its own (a rule's reason built from an event a stranger published)
     * splits there. A key already written is therefore never written again:
     * the pairs the caller wrote come first and keep their values, and the
     * JSON object never holds a key twice (a consumer taking the last one
     * would take the forged one). */
    kv_pair kv, seen[64];
    size_t nseen = 0;
    for (const char *p = tail; p && *p && kv_parse(p, &kv); p = kv.next) {
        bool dup = false;
        for (size_t i = 0; i < nseen && !dup; i++)
            dup = seen[i].key_len == kv.key_len && memcmp(seen[i].key, kv.key, kv.key_len) == 0;
        if (dup) continue;
        if (nseen < sizeof seen / sizeof *seen) seen[nseen++] = kv;
        jl_field(&j, kv.key, kv.key_len, kv.val, kv.val_len);
    }
    memcpy(line + j.n, "}\n", 2);
    return j.n + 2;
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
        n = json_line(line, sizeof line, tsbuf, level_names[li], component, msg);
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
