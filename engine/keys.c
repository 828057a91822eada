/* keys.c -- key names and partitions (see keys.h). */
#include "nerve/keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t keys_hash(const char *s, size_t len) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

int keys_partition(const char *sku, int nparts) {
    if (nparts <= 1) return 0;
    return (int)(keys_hash(sku, strlen(sku)) % (uint32_t)nparts);
}

/* snprintf's count checked against RDS_KEY_MAX; BUF emptied on overflow. */
static int fit(char *buf, int n) {
    if (n < 0 || n >= RDS_KEY_MAX) {
        buf[0] = 0;
        return -1;
    }
    return n;
}

int keys_sku(char *buf, const char *prefix, int nparts, const char *kind, const char *sku) {
    return fit(buf, snprintf(buf, RDS_KEY_MAX, "%s{p%d}:%s:%s", prefix, keys_partition(sku, nparts),
                             kind, sku));
}

int keys_order(char *buf, const char *prefix, int nparts, const char *sku, const char *order_id) {
    return fit(buf, snprintf(buf, RDS_KEY_MAX, "%s{p%d}:order:%s:%s", prefix,
                             keys_partition(sku, nparts), sku, order_id));
}

int keys_stream(char *buf, const char *prefix, int part, const char *channel) {
    return fit(buf, snprintf(buf, RDS_KEY_MAX, "%s{p%d}:stream:%s", prefix, part, channel));
}

int keys_ingest(char *buf, const char *prefix, const char *channel) {
    return fit(buf, snprintf(buf, RDS_KEY_MAX, "%sstream:%s", prefix, channel));
}

int keys_meta_partitions(char *buf, const char *prefix) {
    return fit(buf, snprintf(buf, RDS_KEY_MAX, "%smeta:partitions", prefix));
}

void keys_streams_free(char **v, size_t n) {
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

int keys_streams_of(const char *prefix, int nparts, const char *channel, char ***out, size_t *n) {
    size_t total = (size_t)(nparts < 1 ? 1 : nparts) + 1;
    char **v = calloc(total, sizeof *v);
    char k[RDS_KEY_MAX];
    if (!v) return -1;
    for (size_t i = 0; i < total; i++) {
        int len = i + 1 < total ? keys_stream(k, prefix, (int)i, channel)
                                : keys_ingest(k, prefix, channel);
        if (len < 0 || !(v[i] = strdup(k))) {
            keys_streams_free(v, total);
            return -1;
        }
    }
    *out = v;
    *n = total;
    return 0;
}

int keys_check_partitions(rds_client *c, const char *prefix, int nparts, char *err, size_t errlen) {
    char k[RDS_KEY_MAX];
    if (keys_meta_partitions(k, prefix) < 0) {
        snprintf(err, errlen, "redis.prefix is too long");
        return -1;
    }
    /* SET NX then GET in one round trip: whoever starts first records the
     * count; everyone compares against what is recorded. */
    redisReply *r = rds_command(c, "SET %s %d NX GET", k, nparts);
    int rc = -1;
    if (!r) {
        snprintf(err, errlen, "redis: %s", rds_errstr(c));
    } else if (r->type == REDIS_REPLY_NIL) {
        rc = 0; /* recorded now */
    } else if (r->type == REDIS_REPLY_STRING) {
        char *end;
        long have = strtol(r->str, &end, 10);
        if (end != r->str && *end == 0 && have == nparts) {
            rc = 0;
        } else {
            snprintf(err, errlen,
                     "bus.partitions is %d but the data in Redis is laid out in %.32s partitions "
                     "(%s): start with bus.partitions: %.32s, or move the keys with `nerve keys "
                     "migrate --from %.32s --to %d` first",
                     nparts, r->str, k, r->str, r->str, nparts);
        }
    } else {
        snprintf(err, errlen, "redis: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    }
    freeReplyObject(r);
    return rc;
}
