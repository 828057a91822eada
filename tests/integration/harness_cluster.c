/* harness_cluster.c -- a throwaway Redis Cluster for integration tests (see
 * harness.h): N primaries started as ordinary harness redis-servers with
 * cluster support, joined by Debian's own redis-cli, and waited for with a
 * deadline, polling CLUSTER INFO (no sleeps of our own; redis-cli's join
 * waits about a second inside). */
#include "harness.h"

#include "nerve/rds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOIN_TIMEOUT_MS 30000

/* 1 when NODE answers CLUSTER INFO with cluster_state:ok and knows N nodes. */
static int node_ok(h_redis *node, int n)
{
    redisReply *r = h_redis_cmd(node, "CLUSTER INFO");
    char want[64];
    int ok = 0;
    snprintf(want, sizeof want, "cluster_known_nodes:%d\r", n);
    if (r && r->type == REDIS_REPLY_STRING)
        ok = strstr(r->str, "cluster_state:ok\r") && strstr(r->str, want);
    if (r)
        freeReplyObject(r);
    return ok;
}

h_cluster *h_cluster_start(int n)
{
    return h_cluster_start_replicas(n, 0, 0);
}

h_cluster *h_cluster_start_replicas(int n, int replicas, int node_timeout_ms)
{
    static int seq;
    char nrep[16];
    double t0 = h_now();
    h_cluster *c = calloc(1, sizeof *c);
    char addr[H_CLUSTER_MAX][32], log[PATH_MAX];
    char *argv[H_CLUSTER_MAX + 8];
    int k = 0;

    if (c == NULL || n < 1 || replicas < 0 || n * (1 + replicas) > H_CLUSTER_MAX) {
        printf("harness: h_cluster_start(%d, %d replicas each): 1 to %d nodes in all\n", n,
               replicas, H_CLUSTER_MAX);
        free(c);
        return NULL;
    }
    c->primaries = n;
    n *= 1 + replicas;
    for (c->n = 0; c->n < n; c->n++) {
        h_redis *r = h_redis_start_cluster_node();
        if (r == NULL)
            goto err;
        r->owned = false; /* the cluster's: h_cluster_free stops it */
        c->nodes[c->n] = r;
        snprintf(addr[c->n], sizeof addr[0], "127.0.0.1:%d", r->port);
    }
    argv[k++] = "redis-cli";
    argv[k++] = "--cluster";
    argv[k++] = "create";
    for (int i = 0; i < n; i++)
        argv[k++] = addr[i];
    snprintf(nrep, sizeof nrep, "%d", replicas);
    argv[k++] = "--cluster-replicas";
    argv[k++] = nrep;
    argv[k++] = "--cluster-yes";
    argv[k] = NULL;
    snprintf(log, sizeof log, "%s/cluster-create-%d.log", h_tmpdir(), ++seq);
    int rc = h_run_cmd(argv, log, JOIN_TIMEOUT_MS);
    if (rc != 0) {
        char *text = h_read_file(log);
        printf("harness: redis-cli --cluster create: exit %d\n%s\n", rc, text ? text : "");
        free(text);
        goto err;
    }
    double dl = h_deadline(JOIN_TIMEOUT_MS);
    for (int i = 0; i < n; i++) {
        while (!node_ok(c->nodes[i], n)) {
            if (!h_before(dl)) {
                printf("harness: cluster node %s: no cluster_state:ok with %d nodes within %d ms\n",
                       addr[i], n, JOIN_TIMEOUT_MS);
                goto err;
            }
            h_nap();
        }
    }
    /* A small node timeout makes a replica take over a dead primary within
     * seconds instead of the default 15 s (set at run time: the nodes are
     * started the one way every harness redis is). */
    for (int i = 0; node_timeout_ms > 0 && i < n; i++) {
        redisReply *r = h_redis_cmd(c->nodes[i], "CONFIG SET cluster-node-timeout %d",
                                    node_timeout_ms);
        int ok = r && r->type == REDIS_REPLY_STATUS;
        if (r)
            freeReplyObject(r);
        if (!ok) {
            printf("harness: %s: CONFIG SET cluster-node-timeout failed\n", addr[i]);
            goto err;
        }
    }
    /* Replicas: until each has its primary's data (master_link_status:up),
     * a failover test would kill a primary nobody can replace. */
    for (int i = 0; replicas > 0 && i < n; i++) {
        for (;;) {
            redisReply *r = h_redis_cmd(c->nodes[i], "INFO replication");
            int rep = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "role:slave");
            int up = rep && strstr(r->str, "master_link_status:up");
            if (r)
                freeReplyObject(r);
            if (!rep || up)
                break;
            if (!h_before(dl)) {
                printf("harness: replica %s: no master_link_status:up within %d ms\n", addr[i],
                       JOIN_TIMEOUT_MS);
                goto err;
            }
            h_nap();
        }
    }
    c->start_secs = h_now() - t0;
    return c;
err:
    h_cluster_free(c);
    return NULL;
}

void h_cluster_free(h_cluster *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < c->n; i++)
        h_redis_free(c->nodes[i]);
    free(c);
}

h_redis *h_cluster_node_at(const h_cluster *c, int port)
{
    for (int i = 0; i < c->n; i++)
        if (c->nodes[i]->port == port)
            return c->nodes[i];
    return NULL;
}

rds_client *h_rds_client(const h_redis *r, bool routed)
{
    rds_opts o;
    char url[64], err[256];
    memset(&o, 0, sizeof o);
    o.connect_timeout_ms = o.command_timeout_ms = 2000;
    o.reconnect_max_ms = 100;
    o.cluster = routed;
    if (rds_parse_url(h_redis_url(r, url, sizeof url), &o, err, sizeof err))
        fail_msg("%s", err);
    rds_client *c = rds_client_new(&o);
    assert_non_null(c);
    return c;
}
