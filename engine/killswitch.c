/* killswitch.c -- kill switch records in Redis and the local halt cache
 * (see killswitch.h).
 */
#include "nerve/killswitch.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/log.h"

#define KEY_MAX 512
#define HALT_MAX 4096           /* halted scopes cached; more are looked up as "global" */

struct ks {
    char *prefix, *control, *instance;
    pthread_rwlock_t rw;        /* guards halted[] */
    char **halted;
    size_t n_halted;
    _Atomic size_t n_fast;      /* == n_halted, read without the lock */
    _Atomic size_t n_engaged;
};

ks *ks_new(const char *prefix, const char *control_channel, const char *instance) {
    ks *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    k->prefix = strdup(prefix);
    k->control = strdup(control_channel);
    k->instance = strdup(instance);
    k->halted = calloc(HALT_MAX, sizeof *k->halted);
    if (!k->prefix || !k->control || !k->instance || !k->halted) {
        ks_free(k);
        return NULL;
    }
    pthread_rwlock_init(&k->rw, NULL);
    return k;
}

void ks_free(ks *k) {
    if (!k) return;
    for (size_t i = 0; i < k->n_halted; i++) free(k->halted[i]);
    free(k->halted);
    free(k->prefix);
    free(k->control);
    free(k->instance);
    if (k->halted) pthread_rwlock_destroy(&k->rw);
    free(k);
}

int ks_scope_valid(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > KS_SCOPE_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == ':' || ch == '-' || ch == '_'))
            return 0;
    }
    return 1;
}

static int kill_key(const ks *k, char *buf, const char *scope) {
    int n = snprintf(buf, KEY_MAX, "%skill:%s", k->prefix, scope);
    return n > 0 && n < KEY_MAX ? 0 : -1;
}

/* ---- the halt cache --------------------------------------------------------- */

static void cache_set(ks *k, const char *scope, bool halted) {
    pthread_rwlock_wrlock(&k->rw);
    size_t i = 0;
    while (i < k->n_halted && strcmp(k->halted[i], scope) != 0) i++;
    if (halted && i == k->n_halted && k->n_halted < HALT_MAX) {
        char *d = strdup(scope);
        if (d) k->halted[k->n_halted++] = d;
    } else if (!halted && i < k->n_halted) {
        free(k->halted[i]);
        k->halted[i] = k->halted[--k->n_halted];
    }
    atomic_store(&k->n_fast, k->n_halted);
    pthread_rwlock_unlock(&k->rw);
}

int ks_halted(ks *k, const char *sku, char *scope_out) {
    if (atomic_load_explicit(&k->n_fast, memory_order_acquire) == 0) return 0;
    char mine[KS_SCOPE_MAX + 8];
    snprintf(mine, sizeof mine, "sku:%s", sku);
    int hit = 0;
    pthread_rwlock_rdlock(&k->rw);
    for (size_t i = 0; i < k->n_halted && !hit; i++) {
        if (strcmp(k->halted[i], "global") == 0 || strcmp(k->halted[i], mine) == 0) {
            snprintf(scope_out, KS_SCOPE_MAX + 1, "%s", k->halted[i]);
            hit = 1;
        }
    }
    pthread_rwlock_unlock(&k->rw);
    return hit;
}

size_t ks_engaged_count(ks *k) { return atomic_load(&k->n_engaged); }

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

void ks_on_control(ks *k, const char *msg, size_t len) {
    cJSON *o = cJSON_ParseWithLength(msg, len);
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(o, "op");
    const cJSON *scope = cJSON_GetObjectItemCaseSensitive(o, "scope");
    const cJSON *halt = cJSON_GetObjectItemCaseSensitive(o, "halt_sales");
    if (cJSON_IsString(op) && cJSON_IsString(scope) && ks_scope_valid(scope->valuestring)) {
        if (strcmp(op->valuestring, "engage") == 0) {
            if (cJSON_IsTrue(halt)) cache_set(k, scope->valuestring, true);
        } else if (strcmp(op->valuestring, "reset") == 0) {
            cache_set(k, scope->valuestring, false);
        }
    }
    cJSON_Delete(o);
}

/* ---- records ------------------------------------------------------------------ */

/* Records are indexed in the set PREFIXkills so that listing them never
 * has to SCAN the keyspace (millions of order keys on a busy shop).
 * KEYS[1] record, KEYS[2] index; ARGV[1] record JSON, ARGV[2] scope.
 * 1 created, 0 already engaged. */
static rds_script engage_script = RDS_SCRIPT_INIT(
    "if redis.call('SET', KEYS[1], ARGV[1], 'NX') then\n"
    "  redis.call('SADD', KEYS[2], ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "redis.call('SADD', KEYS[2], ARGV[2])\n"
    "return 0\n");

static rds_script reset_script = RDS_SCRIPT_INIT(
    "redis.call('SREM', KEYS[2], ARGV[1])\n"
    "return redis.call('DEL', KEYS[1])\n");

int ks_engage(ks *k, rds_client *c, const char *scope, const char *reason, const char *rule,
              bool halt_sales, const char *state, double ts, char *err, size_t errlen) {
    char key[KEY_MAX];
    if (kill_key(k, key, scope)) {
        snprintf(err, errlen, "scope too long");
        return -1;
    }
    /* Halt locally before the record exists anywhere: a sale that sees the
     * record must never slip through our own cache. */
    if (halt_sales) cache_set(k, scope, true);

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
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char idx[KEY_MAX];
    snprintf(idx, sizeof idx, "%skills", k->prefix);
    const char *argv[] = { key, idx, txt, scope };
    redisReply *r = rds_eval(c, &engage_script, 2, 4, argv, NULL);
    free(txt);
    int rc;
    if (!r) {
        snprintf(err, errlen, "redis: %s", rds_errstr(c));
        rc = -1;
    } else if (r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        rc = 1;
        atomic_fetch_add(&k->n_engaged, 1);
        announce(k, c, "engage", scope, halt_sales);
    } else if (r->type == REDIS_REPLY_INTEGER) {
        rc = 0;
    } else {
        snprintf(err, errlen, "redis: %s", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        rc = -1;
    }
    freeReplyObject(r);
    /* Already engaged by someone else, or failed: the cache follows Redis. */
    if (rc != 1 && halt_sales) ks_refresh(k, c);
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
    char key[KEY_MAX], att[16];
    if (kill_key(k, key, scope)) return -1;
    snprintf(att, sizeof att, "%d", attempts);
    const char *argv[4] = { key, state, att, last_error ? last_error : "" };
    redisReply *r = rds_eval(c, &set_state_script, 1, 4, argv, NULL);
    int rc = r && r->type == REDIS_REPLY_INTEGER ? 0 : -1;
    freeReplyObject(r);
    return rc;
}

int ks_reset(ks *k, rds_client *c, const char *scope) {
    char key[KEY_MAX], idx[KEY_MAX];
    if (kill_key(k, key, scope)) return -1;
    snprintf(idx, sizeof idx, "%skills", k->prefix);
    const char *argv[] = { key, idx, scope };
    redisReply *r = rds_eval(c, &reset_script, 2, 3, argv, NULL);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        freeReplyObject(r);
        return -1;
    }
    int rc = r->integer > 0;
    freeReplyObject(r);
    cache_set(k, scope, false);
    if (rc) {
        size_t n = atomic_load(&k->n_engaged);
        if (n) atomic_store(&k->n_engaged, n - 1);
    }
    announce(k, c, "reset", scope, false);
    return rc;
}

/* SMEMBERS of the index, then each record; members whose record is gone
 * (deleted by hand, or expired) are dropped from the index. */
cJSON *ks_list(ks *k, rds_client *c) {
    char idx[KEY_MAX], key[KEY_MAX];
    snprintf(idx, sizeof idx, "%skills", k->prefix);
    redisReply *m = rds_command(c, "SMEMBERS %s", idx);
    if (!m || m->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(m);
        return NULL;
    }
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < m->elements && i < 100000; i++) {
        const redisReply *scope = m->element[i];
        if (scope->type != REDIS_REPLY_STRING || kill_key(k, key, scope->str)) continue;
        redisReply *v = rds_command(c, "GET %s", key);
        if (!v) {
            cJSON_Delete(arr);
            freeReplyObject(m);
            return NULL;
        }
        if (v->type == REDIS_REPLY_STRING) {
            cJSON *rec = cJSON_ParseWithLength(v->str, v->len);
            if (cJSON_IsObject(rec)) cJSON_AddItemToArray(arr, rec);
            else cJSON_Delete(rec);
        } else if (v->type == REDIS_REPLY_NIL) {
            freeReplyObject(rds_command(c, "SREM %s %s", idx, scope->str));
        }
        freeReplyObject(v);
    }
    freeReplyObject(m);
    return arr;
}

int ks_refresh(ks *k, rds_client *c) {
    cJSON *arr = ks_list(k, c);
    if (!arr) return -1;
    /* Build the new set, then swap it in under the write lock. */
    char **fresh = calloc(HALT_MAX, sizeof *fresh);
    size_t n = 0, engaged = 0;
    const cJSON *rec;
    cJSON_ArrayForEach(rec, arr) {
        engaged++;
        const cJSON *scope = cJSON_GetObjectItemCaseSensitive(rec, "scope");
        if (fresh && n < HALT_MAX && cJSON_IsString(scope) &&
            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "halt_sales")))
            if ((fresh[n] = strdup(scope->valuestring))) n++;
    }
    cJSON_Delete(arr);
    if (!fresh) return -1;
    pthread_rwlock_wrlock(&k->rw);
    char **old = k->halted;
    size_t old_n = k->n_halted;
    k->halted = fresh;
    k->n_halted = n;
    atomic_store(&k->n_fast, n);
    pthread_rwlock_unlock(&k->rw);
    atomic_store(&k->n_engaged, engaged);
    for (size_t i = 0; i < old_n; i++) free(old[i]);
    free(old);
    return 0;
}
