/* harness_sentinel.c -- a throwaway Redis Sentinel deployment for
 * integration tests (see harness.h): a primary, a replica and three Debian
 * redis-sentinel processes, each an ordinary harness server on a free port,
 * waited for with a deadline by polling what the sentinels know (no sleeps
 * of our own). */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READY_TIMEOUT_MS 30000

/* 1 when R says INFO replication master_link_status:up. */
static int link_up(h_redis *r)
{
    redisReply *rep = h_redis_cmd(r, "INFO replication");
    int ok = rep && rep->type == REDIS_REPLY_STRING &&
             strstr(rep->str, "master_link_status:up\r") != NULL;
    if (rep)
        freeReplyObject(rep);
    return ok;
}

/* The integer field NAME of the flat key/value array REP, -1 if absent. */
static long long field(const redisReply *rep, const char *name)
{
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t i = 0; i + 1 < rep->elements; i += 2)
        if (rep->element[i]->type == REDIS_REPLY_STRING && !strcmp(rep->element[i]->str, name) &&
            rep->element[i + 1]->type == REDIS_REPLY_STRING)
            return strtoll(rep->element[i + 1]->str, NULL, 10);
    return -1;
}

/* 1 when sentinel S knows one replica and the other sentinels. */
static int sentinel_ready(h_redis *s)
{
    redisReply *rep = h_redis_cmd(s, "SENTINEL master %s", H_SENTINEL_MASTER);
    int ok = field(rep, "num-slaves") == 1 && field(rep, "num-other-sentinels") == H_SENTINELS - 1;
    if (rep)
        freeReplyObject(rep);
    return ok;
}

h_sentinel_set *h_sentinel_start(int down_after_ms, int failover_timeout_ms)
{
    double t0 = h_now();
    h_sentinel_set *s = calloc(1, sizeof *s);
    char conf[512];
    if (s == NULL || (s->primary = h_redis_start(false)) == NULL ||
        (s->replica = h_redis_start(false)) == NULL)
        goto err;
    s->primary->owned = s->replica->owned = false; /* the set's: h_sentinel_free */
    redisReply *rep = h_redis_cmd(s->replica, "REPLICAOF 127.0.0.1 %d", s->primary->port);
    if (rep == NULL || rep->type != REDIS_REPLY_STATUS) {
        printf("harness: REPLICAOF: %s\n", rep ? rep->str : "no answer");
        if (rep)
            freeReplyObject(rep);
        goto err;
    }
    freeReplyObject(rep);
    double dl = h_deadline(READY_TIMEOUT_MS);
    while (!link_up(s->replica)) {
        if (!h_before(dl)) {
            printf("harness: replica on port %d: no master_link_status:up within %d ms\n",
                   s->replica->port, READY_TIMEOUT_MS);
            goto err;
        }
        h_nap();
    }
    snprintf(conf, sizeof conf,
             "sentinel monitor %s 127.0.0.1 %d 2\n"
             "sentinel down-after-milliseconds %s %d\n"
             "sentinel failover-timeout %s %d\n"
             "sentinel parallel-syncs %s 1\n",
             H_SENTINEL_MASTER, s->primary->port, H_SENTINEL_MASTER, down_after_ms,
             H_SENTINEL_MASTER, failover_timeout_ms, H_SENTINEL_MASTER);
    size_t n = (size_t)snprintf(s->url, sizeof s->url, "redis-sentinel://");
    for (int i = 0; i < H_SENTINELS; i++) {
        if ((s->sentinels[i] = h_redis_start_sentinel(conf)) == NULL)
            goto err;
        s->sentinels[i]->owned = false;
        n += (size_t)snprintf(s->url + n, sizeof s->url - n, "%s127.0.0.1:%d", i ? "," : "",
                              s->sentinels[i]->port);
    }
    snprintf(s->url + n, sizeof s->url - n, "/%s", H_SENTINEL_MASTER);
    for (int i = 0; i < H_SENTINELS; i++) {
        while (!sentinel_ready(s->sentinels[i])) {
            if (!h_before(dl)) {
                printf("harness: sentinel on port %d does not know the replica and %d other "
                       "sentinels within %d ms\n",
                       s->sentinels[i]->port, H_SENTINELS - 1, READY_TIMEOUT_MS);
                goto err;
            }
            h_nap();
        }
    }
    s->start_secs = h_now() - t0;
    return s;
err:
    h_sentinel_free(s);
    return NULL;
}

void h_sentinel_free(h_sentinel_set *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < H_SENTINELS; i++)
        h_redis_free(s->sentinels[i]);
    h_redis_free(s->replica);
    h_redis_free(s->primary);
    free(s);
}

int h_sentinel_primary_port(h_sentinel_set *s)
{
    for (int i = 0; i < H_SENTINELS; i++) {
        if (s->sentinels[i]->pid == 0)
            continue;
        redisReply *rep =
            h_redis_cmd(s->sentinels[i], "SENTINEL get-master-addr-by-name %s", H_SENTINEL_MASTER);
        int port = -1;
        if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
            rep->element[1]->type == REDIS_REPLY_STRING)
            port = (int)strtol(rep->element[1]->str, NULL, 10);
        if (rep)
            freeReplyObject(rep);
        if (port > 0)
            return port;
    }
    return -1;
}

h_redis *h_sentinel_server(h_sentinel_set *s, int port)
{
    if (s->primary && s->primary->port == port)
        return s->primary;
    if (s->replica && s->replica->port == port)
        return s->replica;
    return NULL;
}
