/* counters.c -- fleet-wide rule counters in Redis (see counters.h). */
#include "nerve/counters.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ctr {
    rds_pool *pool;
    char *prefix;
};

/* KEYS[1] the window's counter; ARGV[1] increment, ARGV[2] ttl s. The TTL is
 * set when the key is new (or lost its TTL), so a window's key lives until
 * one window after its end and no longer. */
static rds_script incr_script = RDS_SCRIPT_INIT(
    "local v = redis.call('INCRBY', KEYS[1], ARGV[1])\n"
    "if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end\n"
    "return v\n");

ctr *ctr_new(rds_pool *pool, const char *prefix) {
    ctr *c = calloc(1, sizeof(*c));

    if (c == NULL) return NULL;
    c->pool = pool;
    c->prefix = strdup(prefix ? prefix : "");
    if (c->prefix == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

void ctr_free(ctr *c) {
    if (c == NULL) return;
    free(c->prefix);
    free(c);
}

int ctr_incr(void *ud, const char *rule, const char *key, size_t keylen, long long window_s,
             long long by, long long now, long long *count, char *err, size_t errlen) {
    ctr *c = ud;
    char k[512], by_s[24], ttl_s[24];
    rds_client *cl;
    redisReply *r;
    int n, rc = -1;

    n = snprintf(k, sizeof(k), "%sctr:{%s}:%.*s:%lld:%lld", c->prefix, rule, (int)keylen, key,
                 window_s, window_s > 0 ? now / window_s : 0);
    if (n < 0 || (size_t)n >= sizeof(k)) {
        snprintf(err, errlen, "counter key too long");
        return -1;
    }
    snprintf(by_s, sizeof(by_s), "%lld", by);
    snprintf(ttl_s, sizeof(ttl_s), "%lld", 2 * window_s + 1);
    cl = rds_pool_client(c->pool);
    if (cl == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    {
        const char *argv[] = { k, by_s, ttl_s };

        r = rds_eval(cl, &incr_script, 1, 3, argv, NULL);
    }
    if (r == NULL)
        snprintf(err, errlen, "redis unavailable: %s", rds_errstr(cl));
    else if (r->type == REDIS_REPLY_INTEGER) {
        *count = r->integer;
        rc = 0;
    } else
        snprintf(err, errlen, "redis: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    freeReplyObject(r);
    return rc;
}
