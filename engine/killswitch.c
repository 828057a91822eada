/* killswitch.c -- kill switch records in Redis and the local halt cache
 * (see killswitch.h).
 */
#include "nerve/killswitch.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/log.h"

#define PIPELINE  256    /* GETs in flight per round trip when reading every record */
#define DIRTY_MAX 4096   /* point updates remembered while a refresh reads Redis */
#define LIST_MAX  100000 /* records returned by ks_list */

/* ---- a set of strings ----------------------------------------------------------
 * Open addressing with linear probing, at most half full, deletion by
 * backward shift (no tombstones), so a lookup is one hash and a short probe
 * however many scopes are halted. Not thread-safe: the cache's lock guards it. */

typedef struct sset {
    char **slot;
    size_t cap, n; /* cap: 0 or a power of two */
} sset;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h ^ (h >> 29);
}

static size_t sset_find(const sset *t, const char *s) {
    if (!t->n) return SIZE_MAX;
    for (size_t i = hash_str(s) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        if (!t->slot[i]) return SIZE_MAX;
        if (strcmp(t->slot[i], s) == 0) return i;
    }
}

static int sset_has(const sset *t, const char *s) {
    return sset_find(t, s) != SIZE_MAX;
}

/* Put the owned string D into a slot (D not present, room guaranteed). */
static void sset_place(sset *t, char *d) {
    size_t i = hash_str(d) & (t->cap - 1);
    while (t->slot[i]) i = (i + 1) & (t->cap - 1);
    t->slot[i] = d;
    t->n++;
}

static int sset_grow(sset *t) {
    size_t nc = t->cap ? t->cap * 2 : 16;
    char **ns = calloc(nc, sizeof *ns);
    if (!ns) return -1;
    sset old = *t;
    t->slot = ns, t->cap = nc, t->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.slot[i]) sset_place(t, old.slot[i]);
    free(old.slot);
    return 0;
}

/* 0 (added or already there), -1 out of memory. */
static int sset_add(sset *t, const char *s) {
    if (sset_has(t, s)) return 0;
    if ((t->n + 1) * 2 > t->cap && sset_grow(t)) return -1;
    char *d = strdup(s);
    if (!d) return -1;
    sset_place(t, d);
    return 0;
}

static void sset_del(sset *t, const char *s) {
    size_t i = sset_find(t, s);
    if (i == SIZE_MAX) return;
    free(t->slot[i]);
    t->slot[i] = NULL;
    t->n--;
    /* Backward shift: pull up every entry of the run after I that would
     * otherwise become unreachable from its home slot. */
    size_t mask = t->cap - 1;
    for (size_t j = (i + 1) & mask; t->slot[j]; j = (j + 1) & mask) {
        size_t home = hash_str(t->slot[j]) & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->slot[i] = t->slot[j];
            t->slot[j] = NULL;
            i = j;
        }
    }
}

static void sset_clear(sset *t) {
    for (size_t i = 0; i < t->cap; i++) free(t->slot[i]);
    free(t->slot);
    t->slot = NULL, t->cap = t->n = 0;
}

/* ---- the kill switch ------------------------------------------------------------- */

/* A scope ks_engage has halted in the cache before its record reached Redis;
 * N engagements of it in flight (a rule and the admin API may race). */
struct engaging {
    struct engaging *next;
    int n;
    char scope[];
};

struct ks {
    char *prefix, *control, *instance;
    pthread_rwlock_t rw;        /* guards halted, global, dirty, tracking, overflow, engaging */
    sset halted;                /* "global" and "sku:<SKU>" scopes engaged with halt_sales */
    bool global;                /* == sset_has(&halted, "global") */
    sset dirty;                 /* scopes set by point updates since the running refresh began */
    bool tracking, overflow;    /* a refresh is reading Redis; DIRTY_MAX exceeded meanwhile */
    struct engaging *engaging;  /* halts cached by ks_engage whose SET has not answered yet */
    pthread_mutex_t refresh_mu; /* one refresh at a time */
    _Atomic size_t n_fast;      /* == halted.n, read without the lock */
    _Atomic uint64_t gen;       /* bumped by every change of halted (under the write lock) */
    _Atomic unsigned long long ctl_ok, ctl_invalid, ctl_error;
};

ks *ks_new(const char *prefix, const char *control_channel, const char *instance) {
    ks *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    k->prefix = strdup(prefix);
    k->control = strdup(control_channel);
    k->instance = strdup(instance);
    if (!k->prefix || !k->control || !k->instance) {
        free(k->prefix), free(k->control), free(k->instance), free(k);
        return NULL;
    }
    pthread_rwlock_init(&k->rw, NULL);
    pthread_mutex_init(&k->refresh_mu, NULL);
    return k;
}

void ks_free(ks *k) {
    if (!k) return;
    sset_clear(&k->halted);
    sset_clear(&k->dirty);
    for (struct engaging *e = k->engaging, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    free(k->prefix);
    free(k->control);
    free(k->instance);
    pthread_rwlock_destroy(&k->rw);
    pthread_mutex_destroy(&k->refresh_mu);
    free(k);
}

int ks_scope_valid(const char *s) {
    return s && scope_valid(s, strlen(s));
}

static int kill_key(const ks *k, char *buf, const char *scope) {
    int n = snprintf(buf, RDS_KEY_MAX, "%skill:%s", k->prefix, scope);
    return n > 0 && n < RDS_KEY_MAX ? 0 : -1;
}

/* Only these scopes can halt a sale (ks_halted); nothing else is cached. */
static int can_halt(const char *scope) {
    return strcmp(scope, "global") == 0 || strncmp(scope, "sku:", 4) == 0;
}

/* ---- the halt cache --------------------------------------------------------- */

/* Call with the write lock held, after changing halted. */
static void publish_count(ks *k) {
    k->global = sset_has(&k->halted, "global");
    atomic_store_explicit(&k->n_fast, k->halted.n, memory_order_release);
}

/* A point update, with the write lock held: SCOPE is (not) halted. */
static void apply(ks *k, const char *scope, bool halted) {
    if (halted) {
        if (sset_add(&k->halted, scope))
            log_error("killswitch", "out of memory: halt of scope=%s not cached", scope);
    } else {
        sset_del(&k->halted, scope);
    }
    publish_count(k);
    atomic_fetch_add(&k->gen, 1);
    if (k->tracking && !k->overflow) {
        if (k->dirty.n >= DIRTY_MAX || sset_add(&k->dirty, scope)) k->overflow = true;
    }
}

/* With the lock held: is an engagement of SCOPE in flight? */
static struct engaging **engaging_find(ks *k, const char *scope) {
    struct engaging **p = &k->engaging;
    while (*p && strcmp((*p)->scope, scope) != 0) p = &(*p)->next;
    return p;
}

/* ks_engage halts SCOPE before its SET, and until the SET has answered no
 * read of Redis (a control re-read, a refresh) may release it: such a read
 * can land between the two and find no record yet. -1 out of memory. */
static int engaging_begin(ks *k, const char *scope) {
    pthread_rwlock_wrlock(&k->rw);
    apply(k, scope, true);
    struct engaging **p = engaging_find(k, scope);
    int rc = 0;
    if (!*p) {
        size_t len = strlen(scope) + 1;
        struct engaging *e = malloc(sizeof *e + len);
        if (e) {
            e->next = NULL, e->n = 0;
            memcpy(e->scope, scope, len);
            *p = e;
        }
    }
    if (*p)
        (*p)->n++;
    else
        rc = -1;
    pthread_rwlock_unlock(&k->rw);
    return rc;
}

/* The SET answered. A read that began before this is retried (gen), and a
 * refresh running now keeps the cache's word for SCOPE (dirty). */
static void engaging_end(ks *k, const char *scope) {
    pthread_rwlock_wrlock(&k->rw);
    struct engaging **p = engaging_find(k, scope);
    if (*p && --(*p)->n == 0) {
        struct engaging *e = *p;
        *p = e->next;
        free(e);
    }
    atomic_fetch_add(&k->gen, 1);
    if (k->tracking && !k->overflow) {
        if (k->dirty.n >= DIRTY_MAX || sset_add(&k->dirty, scope)) k->overflow = true;
    }
    pthread_rwlock_unlock(&k->rw);
}

/* SCOPE is (not) halted, as this instance just made it in Redis. */
static void cache_set(ks *k, const char *scope, bool halted) {
    if (!can_halt(scope)) return;
    pthread_rwlock_wrlock(&k->rw);
    apply(k, scope, halted);
    pthread_rwlock_unlock(&k->rw);
}

int ks_halted(ks *k, const char *sku, char *scope_out) {
    if (atomic_load_explicit(&k->n_fast, memory_order_acquire) == 0) return 0;
    char mine[KS_SCOPE_MAX + 1];
    size_t sl = strlen(sku), ml = sl + 4;
    if (ml <= KS_SCOPE_MAX) { /* a longer one is no scope: never cached */
        memcpy(mine, "sku:", 4);
        memcpy(mine + 4, sku, sl + 1);
    }
    int hit = 0;
    pthread_rwlock_rdlock(&k->rw);
    if (k->global) {
        memcpy(scope_out, "global", 7);
        hit = 1;
    } else if (ml <= KS_SCOPE_MAX && sset_has(&k->halted, mine)) {
        memcpy(scope_out, mine, ml + 1);
        hit = 1;
    }
    pthread_rwlock_unlock(&k->rw);
    return hit;
}


void ks_get_stats(ks *k, ks_stats *out) {
    out->control_ok = atomic_load(&k->ctl_ok);
    out->control_invalid = atomic_load(&k->ctl_invalid);
    out->control_error = atomic_load(&k->ctl_error);
    out->halting = atomic_load(&k->n_fast);
}

/* Does the record TEXT (LEN bytes) halt sales? */
static bool record_halts(const char *text, size_t len) {
    cJSON *rec = cJSON_ParseWithLength(text, len);
    bool h = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "halt_sales"));
    cJSON_Delete(rec);
    return h;
}

/* Read SCOPE's record and make the cache follow it. 0, or -1 when Redis did
 * not answer (the cache is left alone).
 * A read can be overtaken: this instance resets a scope (DEL, then the
 * cache) between our GET and our update, and our older answer would halt it
 * again. So the answer is applied only when the cache did not change while
 * it was read; otherwise it is read again (a few times, then applied: the
 * refresh repairs what a flood of changes could still leave stale). */
static int reread(ks *k, rds_client *c, const char *scope) {
    char key[RDS_KEY_MAX];
    if (!can_halt(scope)) return 0;
    if (kill_key(k, key, scope)) return -1;
    const char *argv[] = { "GET", key };
    for (int attempt = 0;; attempt++) {
        uint64_t before = atomic_load(&k->gen);
        redisReply *r = rds_commandargv(c, 2, argv, NULL);
        if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL)) {
            freeReplyObject(r);
            return -1;
        }
        bool halts = r->type == REDIS_REPLY_STRING && record_halts(r->str, r->len);
        freeReplyObject(r);
        pthread_rwlock_wrlock(&k->rw);
        bool fresh = atomic_load(&k->gen) == before || attempt >= 3;
        /* No record yet may only mean that our own engagement's SET is
         * still on its way: that halt stays (engaging_begin). */
        if (fresh && (halts || !*engaging_find(k, scope))) apply(k, scope, halts);
        pthread_rwlock_unlock(&k->rw);
        if (fresh) return 0;
    }
}

/* Tell the fleet (and our own bus) that SCOPE changed. */
static void announce(ks *k, rds_client *c, const char *op, const char *scope, bool halt) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "op", op);
    cJSON_AddStringToObject(o, "scope", scope);
    cJSON_AddBoolToObject(o, "halt_sales", halt);
    cJSON_AddStringToObject(o, "instance", k->instance);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!txt) return;
    redisReply *r = rds_command(c, "PUBLISH %s %s", k->control, txt);
    freeReplyObject(r);
    free(txt);
}

void ks_on_control(ks *k, rds_client *c, const char *msg, size_t len) {
    cJSON *o = cJSON_ParseWithLength(msg, len);
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(o, "op");
    const cJSON *scope = cJSON_GetObjectItemCaseSensitive(o, "scope");
    if (!cJSON_IsString(op) || !cJSON_IsString(scope) || !ks_scope_valid(scope->valuestring) ||
        (strcmp(op->valuestring, "engage") != 0 && strcmp(op->valuestring, "reset") != 0)) {
        /* Logged for the first and every 1000th: a flood must not flood the log. */
        if (atomic_fetch_add(&k->ctl_invalid, 1) % 1000 == 0)
            log_warn(
                "killswitch",
                "ignoring a control message that is not {\"op\":\"engage\"|\"reset\","
                "\"scope\":...} bytes=%zu (logged 1 in 1000; counted in nerve_control_messages_total)",
                len);
        cJSON_Delete(o);
        return;
    }
    /* Whatever the message claims, the record decides. */
    if (!c || reread(k, c, scope->valuestring)) {
        if (atomic_fetch_add(&k->ctl_error, 1) % 1000 == 0)
            log_warn("killswitch",
                     "control message for scope=%s: record not re-read (%s); the periodic "
                     "refresh will repair the cache (logged 1 in 1000)",
                     scope->valuestring, c ? rds_errstr(c) : "no client");
    } else {
        atomic_fetch_add(&k->ctl_ok, 1);
    }
    cJSON_Delete(o);
}

/* ---- records ------------------------------------------------------------------ */

/* Records are indexed in the set PREFIXkills so that listing them never
 * has to SCAN the keyspace (millions of order keys on a busy shop, spread
 * over every node of a cluster).
 *
 * The record PREFIXkill:SCOPE and the index are in different hash slots, so
 * on a Redis Cluster no script may touch both (CROSSSLOT): every write below
 * is a command of one key, the same in both modes, ordered so that whatever
 * an engagement, a reset and a stale-member drop (each_record) interleave,
 * a record that exists at the end is a member of the index (an index
 * member without a record is harmless: the next listing drops it):
 *   engage: SADD index; SET record NX; SADD index again once the record is
 *           ours (a reset or a drop between the first two took the member);
 *           the index first, so that a failure never leaves a record that
 *           the event's next delivery would find "already engaged" with no
 *           emergency stop run;
 *   reset:  SREM index; DEL record (the other order would let an engagement
 *           between the two create a record that the SREM then unindexes);
 *   drop:   SREM index; EXISTS record; SADD index back when it exists. */
static int index_op(rds_client *c, const char *op, const char *idx, const char *scope, char *err,
                    size_t errlen) {
    const char *argv[] = { op, idx, scope };
    redisReply *r = rds_commandargv(c, 3, argv, NULL);
    int rc = r && r->type == REDIS_REPLY_INTEGER ? 0 : -1;
    if (rc && err)
        snprintf(err, errlen, "redis: %s %s: %s", op, idx,
                 !r                             ? rds_errstr(c)
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                : "unexpected reply");
    freeReplyObject(r);
    return rc;
}

ks_change ks_engage(ks *k, rds_client *c, const char *scope, const char *reason, const char *rule,
                    bool halt_sales, const char *state, double ts, char *err, size_t errlen) {
    char key[RDS_KEY_MAX];
    if (kill_key(k, key, scope)) {
        snprintf(err, errlen, "scope too long");
        return KS_ERROR;
    }
    /* Halt locally before the record exists anywhere: a sale that sees the
     * record must never slip through our own cache. */
    bool pending = halt_sales && can_halt(scope);
    if (pending && engaging_begin(k, scope)) {
        snprintf(err, errlen, "out of memory");
        return KS_ERROR;
    }

    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "scope", scope);
    cJSON_AddStringToObject(o, "reason", reason);
    cJSON_AddStringToObject(o, "rule", rule);
    cJSON_AddNumberToObject(o, "ts", ts);
    cJSON_AddStringToObject(o, "instance", k->instance);
    cJSON_AddStringToObject(o, "state", state);
    cJSON_AddBoolToObject(o, "halt_sales", halt_sales);
    cJSON_AddNumberToObject(o, "attempts", 0);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!txt) {
        if (pending) engaging_end(k, scope); /* the halt stays (fail closed) until a refresh */
        snprintf(err, errlen, "out of memory");
        return KS_ERROR;
    }
    char idx[RDS_KEY_MAX];
    snprintf(idx, sizeof idx, "%skills", k->prefix);
    ks_change rc = KS_ERROR;
    redisReply *r = NULL;
    if (index_op(c, "SADD", idx, scope, err, errlen) == 0) {
        const char *set[] = { "SET", key, txt, "NX" };
        r = rds_commandargv(c, 4, set, NULL);
        if (!r) {
            snprintf(err, errlen, "redis: %s", rds_errstr(c));
        } else if (r->type == REDIS_REPLY_STATUS) {
            rc = KS_CHANGED;
            char why[256];
            if (index_op(c, "SADD", idx, scope, why, sizeof why))
                log_warn("killswitch",
                         "scope=%s engaged but maybe not indexed (listings and other instances' "
                         "refreshes may miss it until it is engaged again) error=\"%s\"",
                         scope, why);
            announce(k, c, "engage", scope, halt_sales);
        } else if (r->type == REDIS_REPLY_NIL) {
            rc = KS_UNCHANGED;
        } else {
            snprintf(err, errlen, "redis: %s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        }
    }
    free(txt);
    freeReplyObject(r);
    if (pending) engaging_end(k, scope);
    /* Already engaged by someone else, or failed: the cache follows the
     * record. When even that read fails the halt stays (fail closed) until a
     * refresh reads Redis again. */
    if (rc != KS_CHANGED && halt_sales) reread(k, c, scope);
    return rc;
}

static rds_script set_state_script = RDS_SCRIPT_INIT(
    "local v = redis.call('GET', KEYS[1])\n"
    "if not v then return 0 end\n"
    "local ok, rec = pcall(cjson.decode, v)\n"
    "if not ok or type(rec) ~= 'table' then return 0 end\n"
    "rec.state = ARGV[1]\n"
    "rec.attempts = tonumber(ARGV[2])\n"
    "if ARGV[3] ~= '' then rec.last_error = ARGV[3] end\n"
    "redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')\n"
    "return 1\n");

int ks_set_state(ks *k, rds_client *c, const char *scope, const char *state, int attempts,
                 const char *last_error) {
    char key[RDS_KEY_MAX], att[16];
    if (kill_key(k, key, scope)) return -1;
    snprintf(att, sizeof att, "%d", attempts);
    const char *argv[4] = { key, state, att, last_error ? last_error : "" };
    redisReply *r = rds_eval(c, &set_state_script, 1, 4, argv, NULL);
    int rc = r && r->type == REDIS_REPLY_INTEGER ? 0 : -1;
    freeReplyObject(r);
    return rc;
}

ks_change ks_reset(ks *k, rds_client *c, const char *scope) {
    char key[RDS_KEY_MAX], idx[RDS_KEY_MAX];
    if (kill_key(k, key, scope)) return KS_ERROR;
    snprintf(idx, sizeof idx, "%skills", k->prefix);
    if (index_op(c, "SREM", idx, scope, NULL, 0)) return KS_ERROR;
    const char *del[] = { "DEL", key };
    redisReply *r = rds_commandargv(c, 2, del, NULL);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        freeReplyObject(r);
        return KS_ERROR; /* unindexed until the reset is retried, which the error asks for */
    }
    ks_change rc = r->integer > 0 ? KS_CHANGED : KS_UNCHANGED;
    freeReplyObject(r);
    cache_set(k, scope, false);
    announce(k, c, "reset", scope, false);
    return rc;
}

/* A member whose record is gone (deleted by hand, or expired) is dropped
 * from the index, but only while its record is still absent: a GET that
 * answered nil may be older than a re-engagement that followed it, and an
 * unconditional SREM would drop that live scope from the index, and with it
 * (the next refresh reads the index) its halt fleet-wide. So: SREM, then
 * EXISTS, and the member back when the record is there after all (see the
 * order of the writes above). Best effort: a failure leaves the member. */
static void drop_stale(rds_client *c, const char *idx, const char *key, const char *scope) {
    if (index_op(c, "SREM", idx, scope, NULL, 0)) return;
    const char *ex[] = { "EXISTS", key };
    redisReply *r = rds_commandargv(c, 2, ex, NULL);
    if (!r || r->type != REDIS_REPLY_INTEGER || r->integer != 0)
        index_op(c, "SADD", idx, scope, NULL, 0); /* there, or unknown: keep it */
    freeReplyObject(r);
}

/* Each record (at most MAX of them) to FN: SMEMBERS of the index, then the
 * records by pipelined GETs, PIPELINE per round trip; the members of a
 * round trip whose GET answered nil are dropped by drop_stale. 0 / -1. */
static int each_record(ks *k, rds_client *c, size_t max,
                       void (*fn)(void *ud, const char *text, size_t len), void *ud) {
    char idx[RDS_KEY_MAX];
    snprintf(idx, sizeof idx, "%skills", k->prefix);
    const char *sm[] = { "SMEMBERS", idx };
    redisReply *m = rds_commandargv(c, 2, sm, NULL);
    if (!m || m->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(m);
        return -1;
    }
    size_t n = m->elements < max ? m->elements : max;
    char(*key)[RDS_KEY_MAX] = malloc(PIPELINE * sizeof *key);
    size_t *which = malloc(PIPELINE * sizeof *which);
    size_t *stale = malloc(PIPELINE * sizeof *stale); /* batch slots whose GET was nil */
    int rc = key && which && stale ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < n;) {
        size_t batch = 0, n_stale = 0;
        for (; i < n && batch < PIPELINE; i++) {
            const redisReply *scope = m->element[i];
            if (scope->type != REDIS_REPLY_STRING || kill_key(k, key[batch], scope->str)) continue;
            const char *get[] = { "GET", key[batch] };
            if (rds_appendargv(c, 2, get, NULL)) {
                rc = -1;
                break;
            }
            which[batch++] = i;
        }
        /* Every queued reply is read, even after an error, so that the
         * connection stays in step. */
        for (size_t j = 0; j < batch; j++) {
            redisReply *v = rds_get_reply(c);
            if (!v) {
                rc = -1; /* the connection dropped: the pending replies are lost */
                break;
            }
            if (v->type == REDIS_REPLY_STRING) {
                if (rc == 0) fn(ud, v->str, v->len);
            } else if (v->type == REDIS_REPLY_NIL) {
                stale[n_stale++] = j;
            } else {
                rc = -1;
            }
            freeReplyObject(v);
        }
        for (size_t j = 0; rc == 0 && j < n_stale; j++)
            drop_stale(c, idx, key[stale[j]], m->element[which[stale[j]]]->str);
    }
    free(key);
    free(which);
    free(stale);
    freeReplyObject(m);
    return rc;
}

static void list_add(void *ud, const char *text, size_t len) {
    cJSON *rec = cJSON_ParseWithLength(text, len);
    if (cJSON_IsObject(rec))
        cJSON_AddItemToArray(ud, rec);
    else
        cJSON_Delete(rec);
}

cJSON *ks_list(ks *k, rds_client *c) {
    cJSON *arr = cJSON_CreateArray();
    if (arr && each_record(k, c, LIST_MAX, list_add, arr) == 0) return arr;
    cJSON_Delete(arr);
    return NULL;
}

typedef struct fresh {
    sset halted;
    int oom;
} fresh;

static void fresh_add(void *ud, const char *text, size_t len) {
    fresh *f = ud;
    cJSON *rec = cJSON_ParseWithLength(text, len);
    const cJSON *scope = cJSON_GetObjectItemCaseSensitive(rec, "scope");
    if (cJSON_IsString(scope) && can_halt(scope->valuestring) &&
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "halt_sales")) &&
        sset_add(&f->halted, scope->valuestring))
        f->oom = 1;
    cJSON_Delete(rec);
}

int ks_refresh(ks *k, rds_client *c) {
    pthread_mutex_lock(&k->refresh_mu);
    /* Point updates made while Redis is read are newer than what the read
     * returns for their scopes: remember which scopes they touched. */
    pthread_rwlock_wrlock(&k->rw);
    k->tracking = true;
    k->overflow = false;
    pthread_rwlock_unlock(&k->rw);

    fresh f = { { NULL, 0, 0 }, 0 };
    int rc = each_record(k, c, SIZE_MAX, fresh_add, &f);
    if (f.oom) {
        log_error("killswitch", "out of memory rebuilding the halt cache; keeping the old one");
        rc = -1;
    }

    pthread_rwlock_wrlock(&k->rw);
    if (rc == 0) {
        /* The cache's own word for every scope a point update touched; when
         * there were too many to remember, keep every halt either side knows
         * (fail closed: a stale halt lasts until the next refresh). */
        sset *keep = k->overflow ? &k->halted : &k->dirty;
        for (size_t i = 0; i < keep->cap && !f.oom; i++) {
            const char *s = keep->slot[i];
            if (!s) continue;
            if (sset_has(&k->halted, s))
                f.oom |= sset_add(&f.halted, s) != 0;
            else
                sset_del(&f.halted, s);
        }
        /* An engagement in flight may have halted before the read began and
         * its record may not have been there yet: it stays halted. */
        for (const struct engaging *e = k->engaging; e && !f.oom; e = e->next)
            if (sset_has(&k->halted, e->scope)) f.oom |= sset_add(&f.halted, e->scope) != 0;
        if (f.oom) {
            log_error("killswitch", "out of memory rebuilding the halt cache; keeping the old one");
            rc = -1;
        } else {
            sset old = k->halted;
            k->halted = f.halted;
            f.halted = old;
            publish_count(k);
            atomic_fetch_add(&k->gen, 1);
        }
    }
    k->tracking = false;
    sset_clear(&k->dirty);
    pthread_rwlock_unlock(&k->rw);
    pthread_mutex_unlock(&k->refresh_mu);
    sset_clear(&f.halted);
    return rc;
}
