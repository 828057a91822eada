/* test_cluster_events.c -- the event path on a real 3-primary Redis Cluster
 * (harness_cluster.c):
 *
 *   - the consumer-group reader (sgroup.h) in cluster mode reads the 16
 *     partition streams and the ingest stream of two channels, which live
 *     on all three nodes, creates the group of every stream, hands out
 *     every entry once and acknowledges them all (XPENDING empty on every
 *     node at the end); the same reader in standalone mode (one
 *     XREADGROUP naming every stream, what nerve did before) is refused
 *     with CROSSSLOT;
 *   - entries read and not acknowledged come back to the same consumer
 *     after a reconnect (the pending pass, per slot group), and entries
 *     appended while the reader waits are read within the poll bound;
 *   - `nerve serve` with redis.mode cluster: a sale's stock event for SKUs
 *     on every node reaches the rules (a kill record appears for each, on
 *     the node of its key), GET /killswitch and `nerve killswitch ls` list
 *     kills whose records live on different nodes, the groups of the
 *     evaluator and of the ledger writer end with nothing pending on any
 *     partition stream, `nerve ledger verify` exits 0 after sales over 200
 *     SKUs, and `nerve keys where` names keys that live where it says;
 *   - the slot of a partition's streams migrated to another node under a
 *     running reader: it follows (MOVED), reads the entry it had not
 *     acknowledged again from the new node, and then new entries there;
 *   - a primary SIGKILLed under a running daemon, its replica taking over:
 *     a sale's event on that node's partitions engages its kill again once
 *     the replica serves, and nothing stays pending.
 *
 * The cluster: 3 primaries with a replica each, cluster-node-timeout 1 s.
 */
#include "harness.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/cluster.h"
#include "nerve/keys.h"
#include "nerve/rds.h"
#include "nerve/sgroup.h"

#define NCHAN   2
#define NSTREAM (NCHAN * (H_PARTITIONS + 1))
#define PER     3 /* entries per stream */

static const char *const CHANS[NCHAN] = { "inventory_events", "sales_events" };

static h_cluster *cl;
static cl_map *map;
static char *streams[NSTREAM];

static void ropts(rds_opts *o, const h_redis *r) {
    memset(o, 0, sizeof *o);
    snprintf(o->host, sizeof o->host, "127.0.0.1");
    o->port = r->port;
    o->connect_timeout_ms = 2000;
    o->command_timeout_ms = 5000;
    o->reconnect_max_ms = 200;
}

/* The harness node that serves KEY, by our map (test_redis_cluster checks
 * the map against the server's CLUSTER KEYSLOT). */
static h_redis *node_of(const char *key) {
    const cl_node *n = cl_map_node(map, cl_keyslot(key, strlen(key)));
    assert_non_null(n);
    for (int i = 0; i < cl->n; i++)
        if (cl->nodes[i]->port == n->primary.port) return cl->nodes[i];
    fail_msg("no harness node on port %d", n->primary.port);
    return NULL;
}

static sg *open_reader(const char *group, const char *consumer, bool cluster, int node) {
    sg_opts o = { .streams = (const char *const *)streams,
                  .n_streams = NSTREAM,
                  .group = group,
                  .consumer = consumer,
                  .claim_idle_ms = 0 };
    ropts(&o.redis, cl->nodes[node]);
    o.redis.cluster = cluster;
    char err[256];
    sg *g = sg_open(&o, err, sizeof err);
    if (!g) fail_msg("sg_open: %s", err);
    return g;
}

static void xadd(const char *stream, int i) {
    redisReply *r = h_redis_cmd(node_of(stream), "XADD %s * event {\"n\":%d}", stream, i);
    if (!r || r->type != REDIS_REPLY_STRING)
        fail_msg("XADD %s: %s", stream, r && r->type == REDIS_REPLY_ERROR ? r->str : "no reply");
    freeReplyObject(r);
}

/* XPENDING STREAM GROUP's count on the stream's node, -1 when no group. */
static long long pending(const char *stream, const char *group) {
    redisReply *r = h_redis_cmd(node_of(stream), "XPENDING %s %s", stream, group);
    long long n = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER)
        n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

static size_t index_of(const char *stream) {
    for (size_t i = 0; i < NSTREAM; i++)
        if (strcmp(streams[i], stream) == 0) return i;
    fail_msg("entry of an unknown stream %s", stream);
    return 0;
}

/* Read and acknowledge whatever the group has not read yet. */
static void drain(sg *g) {
    sg_msg m[64];
    int k;
    while ((k = sg_read(g, m, 64, 0)) > 0) {
        assert_int_equal(sg_ack(g, m, (size_t)k), 0);
        sg_msgs_free(m, (size_t)k);
    }
    if (k < 0) fail_msg("sg_read: %s", sg_errstr(g));
}

/* Read until WANT entries arrived (10 s at most), acknowledging them when
 * ACK, counting them per stream into SEEN. */
static size_t read_all(sg *g, size_t want, int *seen, bool ack) {
    size_t got = 0;
    sg_msg m[64];
    double dl = h_deadline(10000);
    while (got < want && h_before(dl)) {
        int k = sg_read(g, m, 64, 100);
        if (k < 0) fail_msg("sg_read: %s", sg_errstr(g));
        for (int i = 0; i < k; i++) {
            assert_string_equal(m[i].stream, streams[m[i].stream_idx]);
            seen[index_of(m[i].stream)]++;
        }
        if (ack && k > 0 && sg_ack(g, m, (size_t)k) != 0) fail_msg("sg_ack: %s", sg_errstr(g));
        sg_msgs_free(m, (size_t)k);
        got += (size_t)(k > 0 ? k : 0);
    }
    return got;
}

static void test_reads_every_node(void **state) {
    (void)state;
    /* The streams span the three nodes, and more slots than one. */
    int per_node[H_CLUSTER_MAX] = { 0 };
    for (size_t i = 0; i < NSTREAM; i++)
        per_node[cl_map_node_index(map, cl_keyslot(streams[i], strlen(streams[i])))]++;
    for (int k = 0; k < 3; k++) assert_true(per_node[k] > 0);

    /* The reader as it was (every command to the one configured node, one
     * XREADGROUP naming every stream) is refused: MOVED for the streams of
     * the other nodes, and CROSSSLOT for the read itself. */
    sg *old = open_reader("g1", "c1", false, 0);
    sg_msg m[8];
    assert_int_equal(sg_read(old, m, 8, 0), -1);
    if (!strstr(sg_errstr(old), "MOVED") && !strstr(sg_errstr(old), "CROSSSLOT"))
        fail_msg("standalone reader: %s", sg_errstr(old));
    printf("# as before: %s\n", sg_errstr(old));
    sg_close(old);

    for (size_t i = 0; i < NSTREAM; i++)
        for (int k = 0; k < PER; k++) xadd(streams[i], k);
    /* Asked of the node that serves few of them: the map finds the rest. */
    sg *g = open_reader("g1", "c1", true, 1);
    int seen[NSTREAM] = { 0 };
    size_t got = read_all(g, NSTREAM * PER, seen, true);
    assert_int_equal(got, NSTREAM * PER);
    for (size_t i = 0; i < NSTREAM; i++)
        if (seen[i] != PER) fail_msg("%s: %d entries of %d", streams[i], seen[i], PER);
    /* Nothing more, and nothing left pending anywhere. */
    assert_int_equal(sg_read(g, m, 8, 20), 0);
    for (size_t i = 0; i < NSTREAM; i++) assert_int_equal(pending(streams[i], "g1"), 0);
    sg_stats st;
    sg_get_stats(g, &st);
    assert_int_equal(st.acked, NSTREAM * PER);
    assert_int_equal(st.connected, 1);
    printf("# %d streams on 3 nodes: %llu reads for %d entries\n", NSTREAM,
           (unsigned long long)st.reads, NSTREAM * PER);
    sg_close(g);
    h_pass();
}

/* Entries handed out and never acknowledged come back after a reconnect:
 * a new reader of the same consumer name reads its pending list first. */
static void test_pending_after_restart(void **state) {
    (void)state;
    sg *g = open_reader("g2", "c2", true, 0);
    int seen[NSTREAM] = { 0 };
    drain(g); /* the entries of the other tests */
    for (size_t i = 0; i < NSTREAM; i++) xadd(streams[i], 100);
    assert_int_equal(read_all(g, NSTREAM, seen, false), NSTREAM);
    sg_close(g); /* pending entries stay */
    for (size_t i = 0; i < NSTREAM; i++) assert_int_equal(pending(streams[i], "g2"), 1);

    g = open_reader("g2", "c2", true, 2);
    memset(seen, 0, sizeof seen);
    assert_int_equal(read_all(g, NSTREAM, seen, true), NSTREAM);
    for (size_t i = 0; i < NSTREAM; i++) {
        assert_int_equal(seen[i], 1);
        assert_int_equal(pending(streams[i], "g2"), 0);
    }
    sg_close(g);
    h_pass();
}

/* An entry appended while the reader waits, on a stream of another slot
 * than the one its BLOCK names, is read within about SG_CLUSTER_POLL_MS. */
static void *late_append(void *arg) {
    const char *stream = arg;
    /* Not a synchronisation: the reader must already be waiting for the
     * read to measure anything; whether it is or not, the entry arrives. */
    h_nap();
    xadd(stream, 7);
    return NULL;
}

static void test_idle_wakeup(void **state) {
    (void)state;
    sg *g = open_reader("g3", "c3", true, 0);
    sg_msg m[8];
    drain(g);
    /* Every stream in turn, so the entry is often outside the watched group. */
    double worst = 0;
    for (size_t i = 0; i < NSTREAM; i += 3) {
        pthread_t th;
        double t0 = h_now();
        assert_int_equal(pthread_create(&th, NULL, late_append, streams[i]), 0);
        int got = 0;
        double dl = h_deadline(5000), t1 = 0;
        while (!got && h_before(dl)) {
            got = sg_read(g, m, 8, 200);
            if (got < 0) fail_msg("sg_read: %s", sg_errstr(g));
            t1 = h_now();
        }
        pthread_join(th, NULL);
        assert_int_equal(got, 1);
        assert_string_equal(m[0].stream, streams[i]);
        assert_int_equal(sg_ack(g, m, 1), 0);
        sg_msgs_free(m, 1);
        if (t1 - t0 > worst) worst = t1 - t0;
    }
    printf("# slowest append-to-read, with the 5 ms nap: %.1f ms\n", worst * 1000);
    /* The poll bound with room for a loaded machine; a wait that only a
     * read's full BLOCK_MS (200 ms) ends is the bug this catches. */
    if (worst >= 0.15) fail_msg("an idle reader took %.0f ms to read an entry", worst * 1000);
    sg_close(g);
    h_pass();
}

/* ---- the daemon ---------------------------------------------------------------- */

/* Stock at or under 5: kill sku:SKU (test_streams' rule). */
static const char *const KILL_RULE =
    "return {\n"
    "  name = \"low_stock\",\n"
    "  on = { \"inventory_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if event.type == \"stock_changed\" and type(event.stock_remaining) == \"number\"\n"
    "       and event.stock_remaining <= 5 then\n"
    "      return { action = \"kill\", scope = \"sku:\" .. event.sku, reason = \"low stock\" }\n"
    "    end\n"
    "  end,\n"
    "}\n";

#define NKILL   6   /* SKUs killed: two per node */
#define NLEDGER 200 /* SKUs sold for the ledger */

static double metric_of(const h_daemon *d, const char *name) {
    char *m = H_METRICS(d);
    double v = h_metric(m, name, NULL);
    free(m);
    return v;
}

/* XREADGROUP calls so far, summed over the nodes (INFO commandstats). */
static long long xreadgroups(void) {
    long long sum = 0;
    for (int i = 0; i < cl->n; i++) {
        redisReply *r = h_redis_cmd(cl->nodes[i], "INFO commandstats");
        assert_non_null(r);
        const char *p = r->type == REDIS_REPLY_STRING ? strstr(r->str, "cmdstat_xreadgroup:calls=")
                                                      : NULL;
        if (p) sum += strtoll(p + strlen("cmdstat_xreadgroup:calls="), NULL, 10);
        freeReplyObject(r);
    }
    return sum;
}

static int node_index_of(const char *key) {
    return cl_map_node_index(map, cl_keyslot(key, strlen(key)));
}

/* Poll until GROUP has nothing pending on any stream (the partition
 * streams only when PARTS_ONLY) and has a group on each; fails after MS
 * naming a stream that still has. */
static void wait_drained(const char *group, bool parts_only, int ms) {
    double dl = h_deadline(ms);
    for (;;) {
        size_t bad = NSTREAM;
        long long n = 0;
        for (size_t i = 0; i < NSTREAM && bad == NSTREAM; i++)
            if ((!parts_only || strchr(streams[i], '{')) && (n = pending(streams[i], group)) != 0)
                bad = i;
        if (bad == NSTREAM) return;
        if (!h_before(dl))
            fail_msg("group %s: %lld pending on %s after %d ms (-1: no group)", group, n,
                     streams[bad], ms);
        h_nap();
    }
}

static void test_daemon_on_cluster(void **state) {
    (void)state;
    char rules[PATH_MAX + 16];
    H_RULES_DIR("cluster-kill", "kill.lua", KILL_RULE, NULL, 0, rules, sizeof rules);
    h_daemon *d = h_daemon_start(cl->nodes[0], rules, "redis.mode=cluster",
                                 "redis.reconnect_max_ms=200",
                                 "bus.channels=[inventory_events,sales_events]", NULL);
    assert_non_null(d);

    /* Two SKUs whose keys live on each node. */
    char skus[NKILL][32];
    int per_node[H_CLUSTER_MAX] = { 0 }, n = 0;
    for (int i = 0; n < NKILL && i < 1000; i++) {
        char sku[32], k[RDS_KEY_MAX];
        snprintf(sku, sizeof sku, "KILL-%d", i);
        assert_true(keys_sku(k, H_PREFIX, H_PARTITIONS, "stock", sku) > 0);
        int node = node_index_of(k);
        if (per_node[node] >= NKILL / 3) continue;
        per_node[node]++;
        snprintf(skus[n++], sizeof skus[0], "%s", sku);
    }
    assert_int_equal(n, NKILL);
    /* A sale to 5 left: the commit appends stock_changed to the SKU's
     * partition stream on its node, which the rule turns into a kill. */
    for (int i = 0; i < NKILL; i++) {
        H_SET_STOCK(d, skus[i], 6);
        h_resp r;
        long st = h_sale(d, "/sale", skus[i], 1, NULL, &r);
        if (st != 200) fail_msg("sale of %s: %ld %s %s", skus[i], st, r.body, r.err);
        h_resp_free(&r);
    }
    int kill_nodes[H_CLUSTER_MAX] = { 0 };
    for (int i = 0; i < NKILL; i++) {
        char scope[RDS_KEY_MAX], key[RDS_KEY_MAX + 16];
        snprintf(scope, sizeof scope, "sku:%s", skus[i]);
        snprintf(key, sizeof key, H_PREFIX "kill:%s", scope);
        cJSON *rec = H_WAIT_KILL(node_of(key), scope, NULL, 15000);
        cJSON_Delete(rec);
        kill_nodes[node_index_of(key)]++;
    }
    int spread = 0;
    for (int k = 0; k < 3; k++) spread += kill_nodes[k] > 0;
    assert_true(spread >= 2); /* the records are on different nodes */

    /* Listed, over HTTP and by the CLI, wherever the records live. */
    h_resp r;
    assert_int_equal(h_http(d, "GET", "/killswitch", NULL, &r, NULL), 200);
    for (int i = 0; i < NKILL; i++)
        if (!strstr(r.body, skus[i])) fail_msg("GET /killswitch misses %s: %s", skus[i], r.body);
    h_resp_free(&r);
    h_run run;
    const char *ls[] = { "killswitch", "ls", "--url", d->base, NULL };
    if (h_run_nerve(&run, 15000, NULL, ls) != 0)
        fail_msg("nerve killswitch ls: %s%s", run.out, run.err);
    for (int i = 0; i < NKILL; i++)
        if (!strstr(run.out, skus[i])) fail_msg("killswitch ls misses %s:\n%s", skus[i], run.out);
    h_run_free(&run);

    /* Sales over 200 SKUs, then every group has read and acknowledged all. */
    for (int i = 0; i < NLEDGER; i++) {
        char sku[32];
        snprintf(sku, sizeof sku, "LEDGER-%d", i);
        H_SET_STOCK(d, sku, 100);
        long st = h_sale(d, "/sale", sku, 2, NULL, &r);
        if (st != 200) fail_msg("sale of %s: %ld %s %s", sku, st, r.body, r.err);
        h_resp_free(&r);
    }
    wait_drained("nerve", false, 15000);
    /* The ledger reads the partition streams only (not the ingest ones). */
    wait_drained("nerve-ledger", true, 15000);

    /* What an idle reader costs the cluster: its reads over one second
     * (a measurement, printed; the bound only catches a busy loop). */
    double r0 = metric_of(d, "nerve_stream_reads_total"), t0 = h_now();
    long long x0 = xreadgroups();
    while (h_now() - t0 < 1.0) h_nap();
    double secs = h_now() - t0;
    double ev = (metric_of(d, "nerve_stream_reads_total") - r0) / secs;
    double all = (double)(xreadgroups() - x0) / secs;
    printf("# idle daemon on 3 nodes: %.0f reads/s, %.0f of them the evaluator's\n", all, ev);
    assert_true(all < 20000);

    /* The ledger agrees with Redis. */
    char lpath[600], url[96], rurl[64];
    snprintf(lpath, sizeof lpath, "ledger.path=%s/ledger.db", cl->nodes[0]->dir);
    snprintf(url, sizeof url, "redis.url=%s", h_redis_url(cl->nodes[0], rurl, sizeof rurl));
    const char *verify[] = { "ledger", "verify", "-c",    "config/nerve.yaml",  "--set", lpath,
                             "--set",  url,      "--set", "redis.mode=cluster", NULL };
    int st = h_run_nerve(&run, 60000, NULL, verify);
    if (st != 0) fail_msg("nerve ledger verify: exit %d\n%s%s", st, run.out, run.err);
    printf("# ledger verify: %s", run.out);
    h_run_free(&run);

    /* `nerve keys where` names the keys that hold the stock, on their node. */
    const char *where[] = { "keys",     "where",    "-c",    "config/nerve.yaml",
                            "LEDGER-7", "LEDGER-8", skus[0], NULL };
    assert_int_equal(h_run_nerve(&run, 15000, NULL, where), 0);
    char *line = run.out;
    for (int i = 0; i < 3; i++) {
        char sku[32], stock[RDS_KEY_MAX];
        int part;
        if (sscanf(line, "%31s\t%d\t%599s", sku, &part, stock) != 3)
            fail_msg("keys where: %s", run.out);
        assert_int_equal(part, keys_partition(sku, H_PARTITIONS));
        redisReply *g = h_redis_cmd(node_of(stock), "GET %s", stock);
        assert_non_null(g);
        if (g->type != REDIS_REPLY_STRING)
            fail_msg("GET %s on its node: %s", stock,
                     g->type == REDIS_REPLY_ERROR ? g->str : "nil");
        assert_string_equal(g->str, strncmp(sku, "LEDGER", 6) == 0 ? "98" : "5");
        freeReplyObject(g);
        line = strchr(line, '\n');
        assert_non_null(line);
        line++;
    }
    h_run_free(&run);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* ---- a slot migration under the reader ---------------------------------------------- */

static redisReply *ok_reply(const char *what, redisReply *r) {
    if (!r || r->type == REDIS_REPLY_ERROR) fail_msg("%s: %s", what, r ? r->str : "no reply");
    return r;
}

/* Move SLOT from SRC to DST as redis-cli --cluster reshard does. */
static void migrate_slot(int slot, h_redis *src, const char *src_id, h_redis *dst,
                         const char *dst_id) {
    freeReplyObject(
        ok_reply("IMPORTING", h_redis_cmd(dst, "CLUSTER SETSLOT %d IMPORTING %s", slot, src_id)));
    freeReplyObject(
        ok_reply("MIGRATING", h_redis_cmd(src, "CLUSTER SETSLOT %d MIGRATING %s", slot, dst_id)));
    for (;;) {
        redisReply *ks = ok_reply("GETKEYSINSLOT",
                                  h_redis_cmd(src, "CLUSTER GETKEYSINSLOT %d 1", slot));
        if (ks->elements == 0) {
            freeReplyObject(ks);
            break;
        }
        freeReplyObject(ok_reply("MIGRATE", h_redis_cmd(src, "MIGRATE 127.0.0.1 %d %s 0 5000",
                                                        dst->port, ks->element[0]->str)));
        freeReplyObject(ks);
    }
    freeReplyObject(ok_reply("NODE", h_redis_cmd(dst, "CLUSTER SETSLOT %d NODE %s", slot, dst_id)));
    freeReplyObject(ok_reply("NODE", h_redis_cmd(src, "CLUSTER SETSLOT %d NODE %s", slot, dst_id)));
    for (int i = 0; i < cl->n; i++)
        if (cl->nodes[i] != dst && cl->nodes[i] != src)
            freeReplyObject(h_redis_cmd(cl->nodes[i], "CLUSTER SETSLOT %d NODE %s", slot,
                                        dst_id)); /* a replica refuses: it follows its primary */
}

/* The map as a live node sees it now, into MAP. */
static void refresh_map(void) {
    char err[256] = "";
    for (int i = 0; i < cl->n; i++) {
        if (!cl->nodes[i]->pid) continue;
        rds_opts o;
        ropts(&o, cl->nodes[i]);
        rds_client *c = rds_client_new(&o);
        cl_map *m = c ? cl_map_fetch(c, "127.0.0.1", err, sizeof err) : NULL;
        rds_client_free(c);
        if (m) {
            cl_map_free(map);
            map = m;
            return;
        }
    }
    fail_msg("no node answered CLUSTER SLOTS: %s", err);
}

static void test_reader_follows_migration(void **state) {
    (void)state;
    const char *s0 = streams[0];
    int slot = cl_keyslot(s0, strlen(s0));
    sg *g = open_reader("g5", "c5", true, 0);
    drain(g);
    xadd(s0, 1);
    sg_msg m[8], a;
    int k = 0;
    double dl = h_deadline(5000);
    while ((k = sg_read(g, m, 8, 100)) == 0 && h_before(dl)) continue;
    assert_int_equal(k, 1);
    a = m[0]; /* read, never acknowledged: pending for c5 */

    int from = cl_map_node_index(map, slot), to = (from + 1) % 3;
    const cl_node *fn = cl_map_node_at(map, from), *tn = cl_map_node_at(map, to);
    h_redis *src = node_of(s0), *dst = NULL;
    for (int i = 0; i < cl->n; i++)
        if (cl->nodes[i]->port == tn->primary.port) dst = cl->nodes[i];
    assert_non_null(dst);
    migrate_slot(slot, src, fn->primary.id, dst, tn->primary.id);
    refresh_map();
    assert_ptr_equal(node_of(s0), dst);

    /* The next read meets MOVED, reconnects with the new map, hands out the
     * pending entry again (from the new node) and then the new one. */
    xadd(s0, 2);
    bool again = false, fresh = false;
    dl = h_deadline(10000);
    while (!(again && fresh) && h_before(dl)) {
        k = sg_read(g, m, 8, 100);
        for (int i = 0; i < k; i++) {
            assert_string_equal(m[i].stream, s0);
            if (strcmp(m[i].id, a.id) == 0)
                again = true;
            else if (strstr(m[i].event, "\"n\":2"))
                fresh = true;
        }
        if (k > 0) assert_int_equal(sg_ack(g, m, (size_t)k), 0);
        sg_msgs_free(m, k > 0 ? (size_t)k : 0);
    }
    sg_msgs_free(&a, 1);
    assert_true(again);
    assert_true(fresh);
    assert_int_equal(pending(s0, "g5"), 0);
    sg_stats st;
    sg_get_stats(g, &st);
    assert_true(st.reconnects >= 1);
    printf("# slot %d moved from port %d to %d: the reader followed after %llu reconnects\n", slot,
           src->port, dst->port, (unsigned long long)st.reconnects);
    sg_close(g);
    h_pass();
}

/* ---- a primary lost ------------------------------------------------------------------ */

static long long info_ll(h_redis *r, const char *field) {
    redisReply *rep = h_redis_cmd(r, "INFO replication");
    assert_true(rep && rep->type == REDIS_REPLY_STRING);
    const char *p = strstr(rep->str, field);
    long long v = p ? strtoll(p + strlen(field), NULL, 10) : -1;
    freeReplyObject(rep);
    return v;
}

/* A SKU whose keys (and partition streams) live on the primary at map
 * index NODE, not yet used: FO-<i>. */
static void sku_on(int node, int *next, char *sku, size_t len) {
    for (; *next < 10000; (*next)++) {
        char k[RDS_KEY_MAX];
        snprintf(sku, len, "FO-%d", *next);
        assert_true(keys_sku(k, H_PREFIX, H_PARTITIONS, "stock", sku) > 0);
        if (node_index_of(k) == node) {
            (*next)++;
            return;
        }
    }
    fail_msg("no SKU on node %d", node);
}

/* A sale leaving SKU at 5 (retried with its order_id through 503s); its
 * event engages sku:SKU. */
static void sell_to_five(h_daemon *d, const char *sku, int ms) {
    char oid[64], path[64];
    snprintf(oid, sizeof oid, "o-%s", sku);
    snprintf(path, sizeof path, "/admin/stock/%s", sku);
    double dl = h_deadline(ms);
    for (bool stocked = false;;) {
        h_resp r;
        long st = stocked ? h_sale(d, "/sale", sku, 1, oid, &r)
                          : h_http(d, "PUT", path, "{\"stock\":6}", &r,
                                   "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
        if (st != 200 && (st != 503 || !h_before(dl)))
            fail_msg("%s of %s: %ld %s %s", stocked ? "sale" : "PUT", sku, st, r.body, r.err);
        h_resp_free(&r);
        if (st == 200 && stocked) return;
        if (st == 200)
            stocked = true;
        else
            h_nap();
    }
}

static cJSON *wait_kill(const char *sku, int ms) {
    char scope[64], key[RDS_KEY_MAX];
    snprintf(scope, sizeof scope, "sku:%s", sku);
    snprintf(key, sizeof key, H_PREFIX "kill:%s", scope);
    return H_WAIT_KILL(node_of(key), scope, NULL, ms);
}

static void test_events_after_failover(void **state) {
    (void)state;
    char rules[PATH_MAX + 16];
    H_RULES_DIR("cluster-kill-fo", "kill.lua", KILL_RULE, NULL, 0, rules, sizeof rules);
    refresh_map();
    /* The victim: a primary that is not the daemon's seed (nodes[0]), so
     * that the loss is the stream reader's to survive, not the subscriber's. */
    int victim = -1;
    for (int k = 0; k < cl_map_nnodes(map) && victim < 0; k++)
        if (cl_map_node_at(map, k)->primary.port != cl->nodes[0]->port &&
            cl_map_node_at(map, k)->nreplicas >= 1)
            victim = k;
    assert_true(victim >= 0);
    h_redis *primary = NULL, *replica = NULL;
    for (int i = 0; i < cl->n; i++) {
        if (cl->nodes[i]->port == cl_map_node_at(map, victim)->primary.port) primary = cl->nodes[i];
        if (cl->nodes[i]->port == cl_map_node_at(map, victim)->replicas[0].port)
            replica = cl->nodes[i];
    }
    assert_non_null(primary);
    assert_non_null(replica);

    /* An XACK sent to the primary after the replica's last sync, or one that
     * failed while the cluster was down, leaves its entry pending: claimed
     * again after bus.claim_idle_ms (at least once). 1 s, not 30, so that the
     * end of the test sees it done. */
    h_daemon *d = h_daemon_start(cl->nodes[0], rules, "redis.mode=cluster",
                                 "redis.reconnect_max_ms=200", "redis.command_timeout_ms=1000",
                                 "bus.channels=[inventory_events,sales_events]",
                                 "bus.claim_idle_ms=1000", NULL);
    assert_non_null(d);
    int next = 0;
    char before[32], after[32];
    sku_on(victim, &next, before, sizeof before);
    sell_to_five(d, before, 5000);
    cJSON_Delete(wait_kill(before, 15000));

    double dl = h_deadline(10000);
    while (info_ll(replica, "slave_repl_offset:") < info_ll(primary, "master_repl_offset:")) {
        if (!h_before(dl)) fail_msg("the replica on port %d did not catch up", replica->port);
        h_nap();
    }
    pid_t pid = primary->pid;
    assert_int_equal(kill(pid, SIGKILL), 0);
    waitpid(pid, NULL, 0);
    primary->pid = 0;
    if (primary->ctx) {
        redisFree(primary->ctx);
        primary->ctx = NULL;
    }
    double t0 = h_now();
    /* A SKU of the lost primary's slots: its sale is answered once the
     * replica serves, and its event must reach the rules through the
     * reader, which lost a connection and a node of its map. */
    sku_on(victim, &next, after, sizeof after);
    sell_to_five(d, after, 30000);
    double sold = h_now() - t0;
    refresh_map(); /* the kill record's node may be the replica now */
    cJSON_Delete(wait_kill(after, 20000));
    printf("# primary on port %d killed: a sale answered after %.2f s, its kill engaged %.2f s "
           "after the kill\n",
           primary->port, sold, h_now() - t0);
    wait_drained("nerve", false, 20000);
    wait_drained("nerve-ledger", true, 20000);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

static int setup(void **state) {
    (void)state;
    char err[256];
    if (!(cl = h_cluster_start_replicas(3, 1, 1000))) return -1;
    rds_opts o;
    ropts(&o, cl->nodes[0]);
    rds_client *c = rds_client_new(&o);
    map = c ? cl_map_fetch(c, "127.0.0.1", err, sizeof err) : NULL;
    rds_client_free(c);
    if (!map) {
        printf("cl_map_fetch: %s\n", err);
        return -1;
    }
    size_t n = 0;
    for (int ch = 0; ch < NCHAN; ch++) {
        char **v = NULL;
        size_t nv = 0;
        if (keys_streams_of(H_PREFIX, H_PARTITIONS, CHANS[ch], &v, &nv) != 0) return -1;
        for (size_t i = 0; i < nv; i++) streams[n++] = v[i];
        free(v);
    }
    return n == NSTREAM ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    for (size_t i = 0; i < NSTREAM; i++) free(streams[i]);
    cl_map_free(map);
    h_cluster_free(cl);
    return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_reads_every_node),  T(test_pending_after_restart),    T(test_idle_wakeup),
        T(test_daemon_on_cluster), T(test_reader_follows_migration), T(test_events_after_failover),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
