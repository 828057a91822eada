/* test_cluster.c -- Redis Cluster routing (cluster.h) without a network: the
 * specification's CRC16 and hash-tag vectors, slot maps built from CLUSTER
 * SLOTS replies (real RESP bytes through hiredis' reader, well-formed and
 * hostile), MOVED/ASK parsing, and the refresh policy. The same routing
 * against a real 3-primary cluster is tests/integration/test_cluster.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "nerve/cluster.h"
#include "nerve/keys.h"
#include "nerve/rds.h"

/* The reply RESP (one whole reply) parses to, through hiredis' own reader. */
static redisReply *resp(const char *text, size_t len) {
    redisReader *rd = redisReaderCreate();
    void *r = NULL;
    assert_non_null(rd);
    assert_int_equal(redisReaderFeed(rd, text, len), REDIS_OK);
    assert_int_equal(redisReaderGetReply(rd, &r), REDIS_OK);
    assert_non_null(r);
    redisReaderFree(rd);
    return r;
}
#define RESP(s) resp((s), sizeof(s) - 1)

static int slot_of(const char *key) {
    return cl_keyslot(key, strlen(key));
}

/* ---- key slots: the Redis Cluster specification's examples ------------- */

static void test_crc16_vector(void **state) {
    (void)state;
    assert_int_equal(cl_crc16("123456789", 9), 0x31C3);
    assert_int_equal(cl_crc16("", 0), 0);
}

static void test_keyslot_vectors(void **state) {
    (void)state;
    assert_int_equal(slot_of("foo"), 12182);
    assert_int_equal(slot_of("bar"), 5061);
    assert_int_equal(slot_of(""), 0);
    assert_int_equal(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
    assert_int_equal(slot_of("{user1000}.following"), slot_of("user1000"));
    /* An empty tag: the whole key is hashed. */
    assert_int_equal(slot_of("foo{}{bar}"), cl_crc16("foo{}{bar}", 10) & 16383);
    assert_int_not_equal(slot_of("foo{}{bar}"), slot_of("bar"));
    /* The first '{' and the first '}' after it. */
    assert_int_equal(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_int_equal(slot_of("foo{bar}{zap}"), slot_of("bar"));
    /* No closing brace, or a '}' before the first '{': whole key. */
    assert_int_equal(slot_of("foo{bar"), cl_crc16("foo{bar", 7) & 16383);
    assert_int_equal(slot_of("}foo{bar}"), slot_of("bar"));

    size_t n;
    const char *t = cl_hashtag("a{b}c", 5, &n);
    assert_int_equal(n, 1);
    assert_memory_equal(t, "b", 1);
    /* Bytes past LEN are never read: the tag must close within it. */
    t = cl_hashtag("a{b}c", 3, &n);
    assert_int_equal(n, 3);
    /* Binary keys: a NUL is an ordinary byte. */
    assert_int_equal(cl_keyslot("{a\0b}x", 6), cl_crc16("a\0b", 3) & 16383);
}

/* nerve's own layout: a SKU's keys and its partition's streams share a slot. */
static void test_nerve_keys_share_a_slot(void **state) {
    (void)state;
    char k[RDS_KEY_MAX], s[RDS_KEY_MAX];
    const char *skus[] = { "a", "sku-1", "cat:1:x", "Z.9" };
    for (size_t i = 0; i < sizeof skus / sizeof skus[0]; i++) {
        int p = keys_partition(skus[i], 16);
        int n = keys_sku(k, "nerve:", 16, "stock", skus[i]);
        int slot = cl_keyslot(k, (size_t)n);
        assert_int_equal(keys_sku(k, "nerve:", 16, "price", skus[i]) > 0, 1);
        assert_int_equal(slot_of(k), slot);
        assert_int_equal(keys_order(k, "nerve:", 16, skus[i], "o-1") > 0, 1);
        assert_int_equal(slot_of(k), slot);
        assert_int_equal(keys_stream(s, "nerve:", p, "sales_events") > 0, 1);
        assert_int_equal(slot_of(s), slot);
        char tag[16];
        snprintf(tag, sizeof tag, "p%d", p);
        assert_int_equal(slot, slot_of(tag));
    }
}

/* ---- slot maps ------------------------------------------------------------ */

/* Three primaries, the third with a replica, Redis 7's metadata array after
 * the first id; the last entry claims slots the third already has. */
static const char overlapping_nodes[] =
    "*4\r\n"
    "*3\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$40\r\n"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n*0\r\n"
    "*3\r\n:5461\r\n:10000\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n"
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n"
    "*4\r\n:10001\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7002\r\n$40\r\n"
    "cccccccccccccccccccccccccccccccccccccccc\r\n"
    "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$40\r\ndddddddddddddddddddddddddddddddddddddddd\r\n"
    "*3\r\n:10001\r\n:10922\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n"
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n";

/* The last range overlaps the third entry: refused, naming the slot. */
static void test_map_overlap(void **state) {
    (void)state;
    redisReply *r = RESP(overlapping_nodes);
    char err[256] = "";
    cl_map *m = cl_map_from_reply(r, "127.0.0.1", err, sizeof err);
    assert_null(m);
    assert_non_null(strstr(err, "slot 10001 is claimed twice"));
    assert_non_null(strstr(err, "entry 3"));
    freeReplyObject(r);
}

/* The same cluster after a reshard: node 1 serves two ranges, the second
 * named with an empty host (the answering node's). */
static const char split_nodes[] =
    "*4\r\n"
    "*3\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$40\r\n"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n*0\r\n"
    "*3\r\n:5461\r\n:10000\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n"
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n"
    "*4\r\n:10923\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7002\r\n$40\r\n"
    "cccccccccccccccccccccccccccccccccccccccc\r\n"
    "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$40\r\ndddddddddddddddddddddddddddddddddddddddd\r\n"
    "*3\r\n:10001\r\n:10922\r\n*3\r\n$0\r\n\r\n:7001\r\n$40\r\n"
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n";

static void test_map_split_ranges(void **state) {
    (void)state;
    redisReply *r = RESP(split_nodes);
    char err[256] = "";
    cl_map *m = cl_map_from_reply(r, "127.0.0.1", err, sizeof err);
    if (!m) fail_msg("%s", err);
    assert_int_equal(cl_map_covered(m), CL_SLOTS);
    /* Node 1's two ranges are one node (same id; the empty host is the
     * answering node's). */
    assert_int_equal(cl_map_nnodes(m), 3);
    assert_int_equal(cl_map_node(m, 0)->primary.port, 7000);
    assert_int_equal(cl_map_node(m, 5460)->primary.port, 7000);
    assert_int_equal(cl_map_node(m, 5461)->primary.port, 7001);
    assert_int_equal(cl_map_node(m, 10922)->primary.port, 7001);
    assert_int_equal(cl_map_node_index(m, 10000), cl_map_node_index(m, 10922));
    assert_int_equal(cl_map_node(m, 16383)->primary.port, 7002);
    assert_string_equal(cl_map_node(m, 12182)->primary.host, "127.0.0.1");
    assert_string_equal(cl_map_node(m, 12182)->primary.id, "cccccccccccccccccccccccccccccccccccccccc");
    assert_int_equal(cl_map_node(m, 12182)->nreplicas, 1);
    assert_int_equal(cl_map_node(m, 12182)->replicas[0].port, 7003);
    assert_int_equal(cl_map_node(m, 0)->nreplicas, 0);
    assert_null(cl_map_node(m, -1));
    assert_null(cl_map_node(m, CL_SLOTS));
    assert_non_null(cl_map_node_at(m, 2));
    assert_null(cl_map_node_at(m, 3));
    cl_map_free(m);
    freeReplyObject(r);
}

/* An uncovered range is not an error (a cluster being set up, or failing):
 * the map says which slots have no node. */
static void test_map_partial(void **state) {
    (void)state;
    redisReply *r = RESP("*1\r\n*3\r\n:100\r\n:199\r\n*2\r\n$1\r\nh\r\n:1\r\n");
    char err[256] = "";
    cl_map *m = cl_map_from_reply(r, NULL, err, sizeof err);
    assert_non_null(m);
    assert_int_equal(cl_map_covered(m), 100);
    assert_null(cl_map_node(m, 99));
    assert_string_equal(cl_map_node(m, 150)->primary.host, "h");
    assert_string_equal(cl_map_node(m, 150)->primary.id, "");
    cl_map_free(m);
    freeReplyObject(r);
    r = RESP("*0\r\n");
    m = cl_map_from_reply(r, NULL, err, sizeof err);
    assert_int_equal(cl_map_covered(m), 0);
    cl_map_free(m);
    freeReplyObject(r);
    cl_map_free(NULL);
}

/* Hostile replies: each refused with a message, never a crash. */
static void test_map_hostile(void **state) {
    (void)state;
    static const struct {
        const char *resp, *why;
    } bad[] = {
        { "-ERR This instance has cluster support disabled\r\n", "cluster support disabled" },
        { "+OK\r\n", "not an array" },
        { ":5\r\n", "not an array" },
        { "*1\r\n:5\r\n", "not [start, end" },
        { "*1\r\n*2\r\n:0\r\n:1\r\n", "not [start, end" },
        { "*1\r\n*3\r\n$1\r\n0\r\n:1\r\n*2\r\n$1\r\nh\r\n:1\r\n", "not [start, end" },
        { "*1\r\n*3\r\n:-1\r\n:1\r\n*2\r\n$1\r\nh\r\n:1\r\n", "not within" },
        { "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n", "not within" },
        { "*1\r\n*3\r\n:9\r\n:1\r\n*2\r\n$1\r\nh\r\n:1\r\n", "not within" },
        { "*1\r\n*3\r\n:0\r\n:1\r\n*1\r\n$1\r\nh\r\n", "[host, port" },
        { "*1\r\n*3\r\n:0\r\n:1\r\n$1\r\nh\r\n", "[host, port" },
        { "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n:1\r\n:1\r\n", "[host, port" },
        { "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:0\r\n", "port" },
        { "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:65536\r\n", "port" },
        { "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n$4\r\n6379\r\n", "port" },
        { "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$0\r\n\r\n:1\r\n", "no address" },
        { "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\n?\r\n:1\r\n", "no address" },
        { "*1\r\n*4\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:1\r\n*2\r\n$1\r\nh\r\n:0\r\n", "port" },
        { "*2\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:1\r\n*3\r\n:1\r\n:2\r\n*2\r\n$1\r\nh\r\n:2\r\n",
          "slot 1 is claimed twice" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        redisReply *r = resp(bad[i].resp, strlen(bad[i].resp));
        char err[256] = "";
        cl_map *m = cl_map_from_reply(r, NULL, err, sizeof err);
        if (m) fail_msg("row %zu accepted", i);
        if (!strstr(err, bad[i].why) || strncmp(err, "CLUSTER SLOTS: ", 15))
            fail_msg("row %zu: \"%s\" should name \"%s\"", i, err, bad[i].why);
        freeReplyObject(r);
    }
    /* A host holding a NUL byte (a C string would silently cut there). */
    static const char nul_host[] = "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$3\r\na\0b\r\n:1\r\n";
    char err[256];
    redisReply *r = resp(nul_host, sizeof nul_host - 1);
    assert_null(cl_map_from_reply(r, NULL, err, sizeof err));
    assert_non_null(strstr(err, "NUL"));
    freeReplyObject(r);
    /* A host longer than CL_HOST_MAX - 1 bytes. */
    char buf[600];
    char host[300];
    memset(host, 'h', 256);
    host[256] = 0;
    snprintf(buf, sizeof buf, "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$256\r\n%s\r\n:1\r\n", host);
    r = resp(buf, strlen(buf));
    assert_null(cl_map_from_reply(r, NULL, err, sizeof err));
    assert_non_null(strstr(err, "longer than 255"));
    freeReplyObject(r);
    assert_null(cl_map_from_reply(NULL, NULL, err, sizeof err));
}

/* More primaries than CL_NODES_MAX: refused, not grown without bound. */
static void test_map_too_many_nodes(void **state) {
    (void)state;
    size_t cap = (CL_NODES_MAX + 1) * 64 + 32, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    n += (size_t)snprintf(buf + n, cap - n, "*%d\r\n", CL_NODES_MAX + 1);
    for (int i = 0; i <= CL_NODES_MAX; i++)
        n += (size_t)snprintf(buf + n, cap - n, "*3\r\n:%d\r\n:%d\r\n*2\r\n$1\r\nh\r\n:%d\r\n", i,
                              i, i + 1);
    redisReply *r = resp(buf, n);
    char err[256];
    assert_null(cl_map_from_reply(r, NULL, err, sizeof err));
    assert_non_null(strstr(err, "more than 1000 primaries"));
    freeReplyObject(r);
    free(buf);
}

/* ---- redirects -------------------------------------------------------- */

static void test_redirects(void **state) {
    (void)state;
    cl_redirect rd;
    char err[256];
    memset(&rd, 0, sizeof rd);
#define PARSE(s) cl_parse_redirect((s), strlen(s), &rd, err, sizeof err)
    assert_int_equal(PARSE("MOVED 3999 127.0.0.1:6381"), 0);
    assert_int_equal(rd.kind, CL_MOVED);
    assert_int_equal(rd.slot, 3999);
    assert_string_equal(rd.host, "127.0.0.1");
    assert_int_equal(rd.port, 6381);
    assert_int_equal(PARSE("ASK 0 redis-2.example:7000"), 0);
    assert_int_equal(rd.kind, CL_ASK);
    assert_int_equal(rd.slot, 0);
    assert_string_equal(rd.host, "redis-2.example");
    assert_int_equal(PARSE("MOVED 16383 ::1:7001"), 0);
    assert_string_equal(rd.host, "::1");
    assert_int_equal(rd.port, 7001);
    assert_int_equal(PARSE("MOVED 12 :6380"), 0); /* unknown endpoint: the same host */
    assert_string_equal(rd.host, "");
    assert_int_equal(rd.port, 6380);

    /* Not redirects: left alone. */
    rd.slot = 77;
    assert_int_equal(PARSE("ERR unknown command"), 1);
    assert_int_equal(PARSE("TRYAGAIN Multiple keys request during rehashing of slot"), 1);
    assert_int_equal(PARSE("CLUSTERDOWN The cluster is down"), 1);
    assert_int_equal(PARSE("MOVEDX 1 h:1"), 1);
    assert_int_equal(PARSE("moved 1 h:1"), 1);
    assert_int_equal(PARSE(""), 1);
    assert_int_equal(rd.slot, 77);

    static const struct {
        const char *s, *why;
    } bad[] = {
        { "MOVED ", "slot" },          { "MOVED x h:1", "slot" },
        { "MOVED 16384 h:1", "slot" }, { "MOVED 123456 h:1", "slot" },
        { "MOVED -1 h:1", "slot" },    { "MOVED 1", "slot" },
        { "MOVED 1  h:1", "text" },    { "MOVED 1 h", "host:port" },
        { "MOVED 1 ", "host:port" },   { "MOVED 1 h:", "port" },
        { "MOVED 1 h:0", "port" },     { "MOVED 1 h:65536", "port" },
        { "MOVED 1 h:6x", "port" },    { "MOVED 1 h:000006379", "port" },
        { "MOVED 1 h:1 extra", "text" }, { "ASK 1 h:1\r\n", "text" },
        { "ASK 1 h:-1", "port" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        if (PARSE(bad[i].s) != -1) fail_msg("\"%s\" accepted", bad[i].s);
        if (!strstr(err, bad[i].why) || !strstr(err, "malformed"))
            fail_msg("\"%s\": \"%s\" should name \"%s\"", bad[i].s, err, bad[i].why);
    }
    /* A NUL inside, and the bounds of LEN respected. */
    assert_int_equal(cl_parse_redirect("MOVED 1 h\0x:1", 13, &rd, err, sizeof err), -1);
    assert_int_equal(cl_parse_redirect("MOVED 1 h:12345", 12, &rd, err, sizeof err), 0);
    assert_int_equal(rd.port, 12);
    /* A host of 255 bytes fits; 256 does not. */
    char big[400];
    memset(big, 'h', sizeof big);
    memcpy(big, "MOVED 1 ", 8);
    memcpy(big + 8 + 255, ":1", 2);
    assert_int_equal(cl_parse_redirect(big, 8 + 255 + 2, &rd, err, sizeof err), 0);
    assert_int_equal(strlen(rd.host), 255);
    memcpy(big + 8 + 255, "h:1", 3);
    assert_int_equal(cl_parse_redirect(big, 8 + 256 + 2, &rd, err, sizeof err), -1);
    assert_non_null(strstr(err, "longer than 255"));
#undef PARSE
}

/* ---- refresh policy ------------------------------------------------------ */

static void test_refresh_policy(void **state) {
    (void)state;
    cl_refresh r;
    cl_refresh_init(&r, 100);
    /* The first MOVED fetches at once; while it is in flight nobody else. */
    assert_int_equal(cl_refresh_due(&r, 1000), 1);
    assert_int_equal(cl_refresh_due(&r, 1000), 0);
    assert_int_equal(cl_refresh_due(&r, 5000), 0);
    cl_refresh_done(&r, 1);
    assert_int_equal(atomic_load(&r.stale), 0);
    /* Within the interval of the last fetch's start: follow the MOVED only. */
    assert_int_equal(cl_refresh_due(&r, 1050), 0);
    assert_int_equal(atomic_load(&r.stale), 1);
    assert_int_equal(cl_refresh_due(&r, 1100), 1);
    /* A failed fetch leaves the map stale; the next MOVED after the
     * interval tries again. */
    cl_refresh_done(&r, 0);
    assert_int_equal(atomic_load(&r.stale), 1);
    assert_int_equal(cl_refresh_due(&r, 1150), 0);
    assert_int_equal(cl_refresh_due(&r, 1200), 1);
    cl_refresh_done(&r, 1);
    assert_int_equal(atomic_load(&r.fetches), 3);
    /* Interval 0: every MOVED may fetch, still one at a time. */
    cl_refresh_init(&r, 0);
    assert_int_equal(cl_refresh_due(&r, 0), 1);
    assert_int_equal(cl_refresh_due(&r, 0), 0);
    cl_refresh_done(&r, 1);
    assert_int_equal(cl_refresh_due(&r, 0), 1);
}

/* ---- which node a command goes to (rds_cluster_slot) -------------------- */

/* The slot rds routes the command WORDS (space-separated) to. */
static int route(const char *words, char *err, size_t errlen) {
    char buf[512];
    const char *av[32];
    size_t al[32];
    int n = 0;
    snprintf(buf, sizeof buf, "%s", words);
    for (char *save = NULL, *t = strtok_r(buf, " ", &save); t && n < 32;
         t = strtok_r(NULL, " ", &save)) {
        av[n] = t;
        al[n++] = strlen(t);
    }
    err[0] = 0;
    return rds_cluster_slot(n, av, al, err, errlen);
}

static void test_command_slots(void **state) {
    char err[300];
    (void)state;
    /* argv[1] for most commands, whatever the case of the name. */
    assert_int_equal(route("GET foo", err, sizeof err), slot_of("foo"));
    assert_int_equal(route("set {p7}:stock:x 1", err, sizeof err), slot_of("{p7}"));
    /* No key: any node; SCRIPT LOAD/FLUSH and FLUSHALL: every primary. */
    assert_int_equal(route("PING", err, sizeof err), RDS_SLOT_ANY);
    assert_int_equal(route("INFO cluster", err, sizeof err), RDS_SLOT_ANY);
    assert_int_equal(route("PUBLISH system_alerts hi", err, sizeof err), RDS_SLOT_ANY);
    assert_int_equal(route("CLUSTER SLOTS", err, sizeof err), RDS_SLOT_ANY);
    assert_int_equal(route("SCAN 0 MATCH x*", err, sizeof err), RDS_SLOT_ANY);
    assert_int_equal(route("SCRIPT LOAD return", err, sizeof err), RDS_SLOT_ALL);
    assert_int_equal(route("script flush", err, sizeof err), RDS_SLOT_ALL);
    assert_int_equal(route("SCRIPT EXISTS abc", err, sizeof err), RDS_SLOT_ANY);
    /* Scripts: the keys, none = any node; a bad numkeys is Redis' to refuse. */
    assert_int_equal(route("EVALSHA sha 2 {a}1 {a}2 arg", err, sizeof err), slot_of("a"));
    assert_int_equal(route("EVAL src 0 arg", err, sizeof err), RDS_SLOT_ANY);
    assert_int_equal(route("EVALSHA sha x k", err, sizeof err), RDS_SLOT_ANY);
    assert_int_equal(route("EVALSHA sha 9 {a}1", err, sizeof err), slot_of("a"));
    assert_int_equal(route("EVALSHA sha 2 {a}1 {b}2", err, sizeof err), RDS_SLOT_CROSS);
    assert_non_null(strstr(err, "CROSSSLOT: EVALSHA with keys \"{a}1\""));
    /* Streams: after STREAMS, the first half are the keys. */
    assert_int_equal(
        route("XREADGROUP GROUP g c COUNT 10 STREAMS {p1}s {p1}t > >", err, sizeof err),
        slot_of("p1"));
    assert_int_equal(route("XREAD STREAMS {p1}s {p2}s 0 0", err, sizeof err), RDS_SLOT_CROSS);
    assert_int_equal(route("XREAD STREAMS {p1}s 0", err, sizeof err), slot_of("p1"));
    assert_int_equal(route("XGROUP CREATE {p3}s g 0", err, sizeof err), slot_of("p3"));
    assert_int_equal(route("XINFO STREAM {p3}s", err, sizeof err), slot_of("p3"));
    assert_int_equal(route("XINFO HELP", err, sizeof err), RDS_SLOT_ANY);
    /* Every key of DEL/MGET/...; every other argument of MSET. */
    assert_int_equal(route("MGET {t}a {t}b {t}c", err, sizeof err), slot_of("t"));
    assert_int_equal(route("DEL {t}a b", err, sizeof err), RDS_SLOT_CROSS);
    assert_string_equal(err, "CROSSSLOT: DEL with keys \"{t}a\" (slot 15891) and \"b\" (slot 3300) "
                             "would span nodes of the cluster; nothing sent");
    assert_int_equal(route("MSET {t}a 1 {t}b 2", err, sizeof err), slot_of("t"));
    assert_int_equal(route("MSET {t}a x b y", err, sizeof err), RDS_SLOT_CROSS);
    assert_int_equal(route("RENAME {t}a {t}b", err, sizeof err), slot_of("t"));
    assert_int_equal(route("RENAME a b", err, sizeof err), RDS_SLOT_CROSS);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16_vector),
        cmocka_unit_test(test_keyslot_vectors),
        cmocka_unit_test(test_nerve_keys_share_a_slot),
        cmocka_unit_test(test_map_overlap),
        cmocka_unit_test(test_map_split_ranges),
        cmocka_unit_test(test_map_partial),
        cmocka_unit_test(test_map_hostile),
        cmocka_unit_test(test_map_too_many_nodes),
        cmocka_unit_test(test_redirects),
        cmocka_unit_test(test_refresh_policy),
        cmocka_unit_test(test_command_slots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
