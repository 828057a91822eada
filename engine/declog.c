/* declog.c -- the decision log (see declog.h): records formatted by the
 * deciding thread, queued, and appended to PREFIXdecisions by one writer
 * thread in pipelined batches. */
#include "nerve/declog.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nerve/clock.h"
#include "nerve/jsonck.h"
#include "nerve/log.h"

/* XADDs sent in one pipelined round trip: enough to keep up with tens of
 * thousands of records a second, small enough that one batch is a short
 * Redis command burst beside the sales. */
#define BATCH_MAX 256
/* Redis did not take a batch: the writer tries again after this long. */
#define RETRY_MS 100

struct declog {
    declog_opts o;
    char *prefix, *instance;
    char key[RDS_KEY_MAX];
    char maxlen[24];
    rds_client *c; /* the writer thread's */
    pthread_t th;
    pthread_mutex_t mu; /* guards the ring, stopping, waiting */
    pthread_cond_t cv;
    char **ring; /* queue_size records, malloc'd JSON text */
    size_t head, n;
    bool stopping, waiting;
    long long stop_deadline_ms;
    _Atomic uint64_t written, dropped;
};

/* ---- formatting ------------------------------------------------------------------- */

/* A growable string; on OOM it stays failed and the record is dropped. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static char *sb_room(sbuf *b, size_t n) {
    if (b->oom) return NULL;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return NULL;
        }
        b->p = p, b->cap = cap;
    }
    return b->p + b->len;
}

static void sb_raw(sbuf *b, const char *s, size_t n) {
    char *at = sb_room(b, n);
    if (!at) return;
    memcpy(at, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_lit(sbuf *b, const char *s) {
    sb_raw(b, s, strlen(s));
}

/* ,"KEY":"VALUE" (VALUE escaped; KEY is a literal of ours). */
static void sb_str(sbuf *b, const char *key, const char *v) {
    size_t kl = strlen(key), vl = strlen(v);
    char *at = sb_room(b, kl + JSONCK_ESC_MAX(vl) + 8);
    if (!at) return;
    char *p = at;
    *p++ = ',', *p++ = '"';
    memcpy(p, key, kl), p += kl;
    *p++ = '"', *p++ = ':', *p++ = '"';
    p = jsonck_escape(p, v);
    *p++ = '"';
    b->len += (size_t)(p - at);
    b->p[b->len] = 0;
}

/* Strict enough to embed as is: jsonck's checks (number grammar, no NUL,
 * depth) and no raw control character inside a string, which cJSON takes
 * and stricter readers of the stream would not. */
static bool strict_json(const char *s, size_t n) {
    char why[128];
    if (jsonck_check(s, n, RULES_JSON_DEPTH, why, sizeof why) != 0) return false;
    bool in = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (in && ch < 0x20) return false;
        if (ch == '"')
            in = !in;
        else if (in && ch == '\\')
            i++;
    }
    return !in;
}

/* ,"event":{...} or ,"event_truncated":true. */
static void sb_event(sbuf *b, const declog_opts *o, const declog_src *src) {
    if (!src->event || !src->event_len) return;
    if (src->event_len > o->event_max_bytes) {
        sb_lit(b, ",\"event_truncated\":true");
        return;
    }
    if (strict_json(src->event, src->event_len)) {
        sb_lit(b, ",\"event\":");
        sb_raw(b, src->event, src->event_len);
        return;
    }
    /* Lenient JSON cJSON accepted (the rules saw it so): printed again. */
    cJSON *j = cJSON_ParseWithLength(src->event, src->event_len);
    char *t = cJSON_IsObject(j) ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (t && strlen(t) <= o->event_max_bytes) {
        sb_lit(b, ",\"event\":");
        sb_lit(b, t);
    } else {
        sb_lit(b, ",\"event_truncated\":true");
    }
    free(t);
}

static void sb_head(sbuf *b, const char *kind) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char head[96];
    int n = snprintf(head, sizeof head, "{\"ts\":%lld.%03ld,\"kind\":\"%s\"", (long long)ts.tv_sec,
                     ts.tv_nsec / 1000000, kind);
    sb_raw(b, head, (size_t)n);
}

static void sb_tail(sbuf *b, const declog *l, const declog_src *src) {
    char gen[64];
    sb_str(b, "channel", src->channel ? src->channel : "");
    sb_str(b, "event_id", src->event_id ? src->event_id : "");
    int n = snprintf(gen, sizeof gen, ",\"generation\":%llu", (unsigned long long)src->generation);
    sb_raw(b, gen, (size_t)n);
    sb_str(b, "instance", l->instance);
}

/* ---- the queue -------------------------------------------------------------------- */

static void enqueue(declog *l, sbuf *b) {
    sb_lit(b, "}");
    if (b->oom) {
        free(b->p);
        atomic_fetch_add_explicit(&l->dropped, 1, memory_order_relaxed);
        return;
    }
    pthread_mutex_lock(&l->mu);
    bool full = l->n == l->o.queue_size || l->stopping;
    if (!full) {
        l->ring[(l->head + l->n++) % l->o.queue_size] = b->p;
        b->p = NULL;
        /* A signal only when the writer sleeps: a burst wakes it once. */
        if (l->waiting) pthread_cond_signal(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    if (full) {
        free(b->p);
        atomic_fetch_add_explicit(&l->dropped, 1, memory_order_relaxed);
    }
}

void declog_decision(declog *l, const rules_decision *d, const declog_src *src) {
    if (!l) return;
    sbuf b = { 0 };
    sb_head(&b, "decision");
    sb_str(&b, "action", rules_action_name(d->action));
    if (d->action == RULES_ALERT) sb_str(&b, "level", rules_level_name(d->level));
    if (d->scope) sb_str(&b, "scope", d->scope);
    sb_str(&b, "reason", d->reason);
    if (d->action == RULES_KILL)
        sb_lit(&b, d->halt_sales ? ",\"halt_sales\":true" : ",\"halt_sales\":false");
    sb_str(&b, "rule", d->rule);
    sb_tail(&b, l, src);
    sb_event(&b, &l->o, src);
    enqueue(l, &b);
}

void declog_rule_error(declog *l, const char *rule, const char *msg, const declog_src *src) {
    if (!l) return;
    sbuf b = { 0 };
    sb_head(&b, "rule_error");
    sb_str(&b, "rule", rule);
    sb_tail(&b, l, src);
    sb_str(&b, "error", msg);
    sb_event(&b, &l->o, src);
    enqueue(l, &b);
}

void declog_get_stats(declog *l, declog_stats *out) {
    memset(out, 0, sizeof *out);
    if (!l) return;
    out->written = atomic_load_explicit(&l->written, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&l->dropped, memory_order_relaxed);
    pthread_mutex_lock(&l->mu);
    out->queued = l->n;
    pthread_mutex_unlock(&l->mu);
}

/* ---- the writer ------------------------------------------------------------------- */

/* Append BATCH (N records) in one pipelined round trip and free the ones
 * Redis answered (an error reply counts that record as dropped: it would be
 * refused again). Returns how many are left, moved to the front of BATCH:
 * 0, or those not answered when the connection failed (they may or may not
 * be in: sending them again can write a record twice, never lose one). */
static size_t write_batch(declog *l, char **batch, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *argv[] = { "XADD", l->key, "MAXLEN", "~", l->maxlen, "*", "d", batch[i] };
        size_t lens[8];
        for (int k = 0; k < 8; k++) lens[k] = strlen(argv[k]);
        if (rds_appendargv(l->c, 8, argv, lens) != 0) return n;
    }
    uint64_t ok = 0, refused = 0;
    size_t i = 0;
    for (; i < n; i++) {
        redisReply *r = rds_get_reply(l->c);
        if (!r) break;
        if (r->type == REDIS_REPLY_ERROR) {
            if (refused++ == 0) log_warn("declog", "XADD refused error=\"%s\"", r->str);
        } else {
            ok++;
        }
        freeReplyObject(r);
        free(batch[i]);
    }
    atomic_fetch_add_explicit(&l->written, ok, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->dropped, refused, memory_order_relaxed);
    memmove(batch, batch + i, (n - i) * sizeof *batch);
    return n - i;
}

static void *run(void *arg) {
    pthread_setname_np(pthread_self(), "nerve-declog");
    declog *l = arg;
    char *batch[BATCH_MAX];
    size_t n = 0;
    bool failing = false;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        for (;;) {
            if (l->stopping && (clock_now_ms() >= l->stop_deadline_ms || (!l->n && !n))) break;
            if (!failing && (l->n || n)) break;
            /* While failing, the retry waits its time: records that
             * arrive meanwhile do not hurry it. */
            l->waiting = !failing;
            struct timespec ts = clock_deadline_ms(failing ? RETRY_MS : 1000);
            pthread_cond_timedwait(&l->cv, &l->mu, &ts);
            l->waiting = false;
            if (failing) break;
        }
        bool done = l->stopping && (clock_now_ms() >= l->stop_deadline_ms || (!l->n && !n));
        while (!done && n < BATCH_MAX && l->n) {
            batch[n++] = l->ring[l->head];
            l->head = (l->head + 1) % l->o.queue_size;
            l->n--;
        }
        pthread_mutex_unlock(&l->mu);
        if (done) break;
        if (!n) continue;
        n = write_batch(l, batch, n);
        if (n == 0) {
            if (failing) log_info("declog", "decision log written again");
            failing = false;
        } else {
            if (!failing)
                log_warn("declog", "decision log not written, trying again error=\"%s\"",
                         rds_errstr(l->c));
            failing = true;
        }
    }
    /* Stopped with records unwritten (Redis gone): counted as dropped. */
    pthread_mutex_lock(&l->mu);
    uint64_t lost = n + l->n;
    for (size_t i = 0; i < n; i++) free(batch[i]);
    while (l->n) {
        free(l->ring[l->head]);
        l->head = (l->head + 1) % l->o.queue_size;
        l->n--;
    }
    pthread_mutex_unlock(&l->mu);
    if (lost) {
        atomic_fetch_add_explicit(&l->dropped, lost, memory_order_relaxed);
        log_warn("declog", "stopped with decision records unwritten dropped=%llu",
                 (unsigned long long)lost);
    }
    return NULL;
}

declog *declog_start(const declog_opts *o, char *err, size_t errlen) {
    declog *l = calloc(1, sizeof *l);
    if (!l) goto oom;
    l->o = *o;
    if (!l->o.queue_size) l->o.queue_size = 1;
    l->prefix = strdup(o->prefix ? o->prefix : "");
    l->instance = strdup(o->instance ? o->instance : "");
    l->ring = calloc(l->o.queue_size, sizeof *l->ring);
    l->c = rds_client_new(&o->redis);
    if (!l->prefix || !l->instance || !l->ring || !l->c) goto oom;
    l->o.prefix = l->prefix, l->o.instance = l->instance;
    declog_key(l->key, sizeof l->key, l->prefix);
    snprintf(l->maxlen, sizeof l->maxlen, "%ld", o->maxlen > 0 ? o->maxlen : 1);
    pthread_mutex_init(&l->mu, NULL);
    clock_cond_init(&l->cv);
    if (pthread_create(&l->th, NULL, run, l) != 0) {
        snprintf(err, errlen, "cannot start the decision log thread");
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        goto fail;
    }
    return l;
oom:
    snprintf(err, errlen, "out of memory starting the decision log");
fail:
    if (l) {
        rds_client_free(l->c);
        free(l->ring);
        free(l->prefix);
        free(l->instance);
        free(l);
    }
    return NULL;
}

void declog_stop(declog *l, int grace_ms) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stopping = true;
    l->stop_deadline_ms = clock_now_ms() + (grace_ms > 0 ? grace_ms : 0);
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->th, NULL);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    rds_client_free(l->c);
    free(l->ring);
    free(l->prefix);
    free(l->instance);
    free(l);
}

/* ---- reading ---------------------------------------------------------------------- */

const char *declog_key(char *out, size_t outlen, const char *prefix) {
    snprintf(out, outlen, "%s%s", prefix, DECLOG_STREAM);
    return out;
}

static bool field_is(const cJSON *rec, const char *key, const char *want) {
    if (!want || !want[0]) return true;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rec, key);
    return cJSON_IsString(v) && strcmp(v->valuestring, want) == 0;
}

int declog_match(const cJSON *record, const declog_filter *f) {
    return field_is(record, "rule", f->rule) && field_is(record, "scope", f->scope) &&
           field_is(record, "kind", f->kind);
}

cJSON *declog_entry(const redisReply *e) {
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    const redisReply *fv = e->element[1];
    for (size_t i = 0; i + 1 < fv->elements; i += 2) {
        const redisReply *k = fv->element[i], *v = fv->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            strcmp(k->str, "d") != 0)
            continue;
        cJSON *rec = cJSON_ParseWithLength(v->str, v->len);
        if (!cJSON_IsObject(rec)) {
            cJSON_Delete(rec);
            return NULL;
        }
        cJSON *id = cJSON_CreateString(e->element[0]->str);
        if (!id) {
            cJSON_Delete(rec);
            return NULL;
        }
        /* "id" first, as the contract shows it (a stored "id" is not ours). */
        cJSON_DeleteItemFromObjectCaseSensitive(rec, "id");
        id->string = strdup("id");
        if (!id->string ||
            (!cJSON_InsertItemInArray(rec, 0, id) && !cJSON_AddItemToObject(rec, "id", id))) {
            cJSON_Delete(id);
            cJSON_Delete(rec);
            return NULL;
        }
        return rec;
    }
    return NULL;
}

/* One filtered scan at a time, process-wide: an anonymous client looping
 * on a filter that matches nothing would otherwise have every HTTP thread
 * pulling DECLOG_SCAN_BYTES out of Redis at once, and Redis serves the
 * sales too. A second one answers 503 at once (Retry-After). */
static atomic_int filtered_busy;

static cJSON *query(rds_client *c, const char *prefix, const declog_filter *f, size_t *scanned,
                    char *err, size_t errlen);

cJSON *declog_query(rds_client *c, const char *prefix, const declog_filter *f, size_t *scanned,
                    char *err, size_t errlen) {
    bool filtered = (f->rule && f->rule[0]) || (f->scope && f->scope[0]) || (f->kind && f->kind[0]);
    if (!filtered) return query(c, prefix, f, scanned, err, errlen);
    int idle = 0;
    if (!atomic_compare_exchange_strong(&filtered_busy, &idle, 1)) {
        *scanned = 0;
        snprintf(err, errlen, "another filtered decision log query is running; try again");
        return NULL;
    }
    cJSON *arr = query(c, prefix, f, scanned, err, errlen);
    atomic_store(&filtered_busy, 0);
    return arr;
}

static cJSON *query(rds_client *c, const char *prefix, const declog_filter *f, size_t *scanned,
                    char *err, size_t errlen) {
    char key[RDS_KEY_MAX];
    declog_key(key, sizeof key, prefix);
    size_t bound = (size_t)f->limit * DECLOG_SCAN_PER_HIT;
    if (bound < DECLOG_SCAN_MIN) bound = DECLOG_SCAN_MIN;
    if (bound > DECLOG_SCAN_MAX) bound = DECLOG_SCAN_MAX;
    cJSON *arr = cJSON_CreateArray();
    if (!arr) goto oom;
    *scanned = 0;
    int found = 0;
    size_t bytes = 0;
    char end[64] = "+";
    while (found < f->limit && *scanned < bound && bytes < DECLOG_SCAN_BYTES) {
        /* Unfiltered, a page is what is still asked for; filtered, 100 a
         * page; never more than 100, so that the byte bound holds within a
         * page of records at most decisions.event_max_bytes each. */
        size_t page = (size_t)(f->limit - found);
        if ((f->rule && f->rule[0]) || (f->scope && f->scope[0]) || (f->kind && f->kind[0]) ||
            page > 100)
            page = 100;
        if (page > bound - *scanned) page = bound - *scanned;
        char count[24];
        snprintf(count, sizeof count, "%zu", page);
        const char *argv[] = { "XREVRANGE", key, end, "-", "COUNT", count };
        size_t lens[6];
        for (int k = 0; k < 6; k++) lens[k] = strlen(argv[k]);
        redisReply *r = rds_commandargv(c, 6, argv, lens);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errlen, "redis: %s",
                     !r                             ? rds_errstr(c)
                     : r->type == REDIS_REPLY_ERROR ? r->str
                                                    : "unexpected reply to XREVRANGE");
            freeReplyObject(r);
            cJSON_Delete(arr);
            return NULL;
        }
        size_t got = r->elements;
        for (size_t i = 0; i < got && found < f->limit; i++) {
            (*scanned)++;
            const redisReply *e = r->element[i];
            if (e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
                e->element[1]->type == REDIS_REPLY_ARRAY)
                for (size_t k = 0; k < e->element[1]->elements; k++)
                    bytes += e->element[1]->element[k]->len;
            cJSON *rec = declog_entry(r->element[i]);
            if (rec && declog_match(rec, f)) {
                cJSON_AddItemToArray(arr, rec);
                found++;
            } else {
                cJSON_Delete(rec);
            }
        }
        /* Next page: strictly before the last id read ("(" = exclusive). */
        if (got) {
            const redisReply *last = r->element[got - 1];
            if (last->type == REDIS_REPLY_ARRAY && last->elements >= 1 &&
                last->element[0]->type == REDIS_REPLY_STRING && last->element[0]->len < 60)
                snprintf(end, sizeof end, "(%s", last->element[0]->str);
            else
                got = 0;
        }
        freeReplyObject(r);
        if (got < page) break; /* the start of the stream */
    }
    return arr;
oom:
    snprintf(err, errlen, "out of memory");
    return NULL;
}

int declog_parse_limit(const char *s, int *out) {
    char *end;
    if (s[0] < '0' || s[0] > '9') return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > DECLOG_LIMIT_MAX) return -1;
    *out = (int)v;
    return 0;
}
