/* bench_kill_latency.c -- from a stock event on the bus to the kill record.
 *
 *   $(BUILD)/bench/bench_kill_latency HOST PORT [N [PREFIX [DB]]]
 *                                     (defaults: 500, nerve:, 0)
 *
 * Runs against a live nerve and its Redis (HOST:PORT, database DB), with the
 * shipped inventory rule loaded (kill sku:<SKU> at stock <= 5). For i in 1..N
 * it publishes on inventory_events
 *
 *     {"type":"stock_changed","sku":"lat-<pid>-<i>","stock_remaining":0,"ts":<ms>}
 *
 * and measures the time until nerve has created PREFIXkill:sku:lat-<pid>-<i>:
 * bus subscriber -> event queue -> rule evaluation -> kill switch engage (SET
 * NX in Redis). One event at a time: the next one is published only once the
 * previous record exists, so this is the latency of an idle pipeline, not
 * of a backlog. Prints one line:
 *
 *   kill latency: 500 events, p50 0.412 ms, p99 0.981 ms, max 1.532 ms
 *
 * How the record is seen: Redis keyspace notifications. The bench sets
 * notify-keyspace-events to include "K$" (string commands, keyspace
 * channel) -- restored afterwards -- and PSUBSCRIBEs once to
 * __keyspace@DB__:PREFIXkill:sku:lat-<pid>-* on a second connection. Redis
 * publishes the notification from inside the command that created the key, so
 * it is on the subscriber's socket at the moment the record exists: the
 * measurement overshoots by one local socket hop (tens of microseconds) and
 * costs nothing while waiting (a blocking read). A GET/EXISTS polling loop
 * would instead spin a core and load Redis -- on a 2-CPU machine the very
 * CPU and server the measured path needs -- and overshoot by up to one poll
 * round trip. The clock starts right before PUBLISH is written.
 *
 * Afterwards it removes what the events left in Redis so later scenarios see
 * nothing of it: each kill record, its member of the index set PREFIXkills
 * and the alert throttle keys of the inventory rule's critical alert
 * (PREFIXthrottle:{RULE|sku:...|critical}, RULE = inventory_threshold; one
 * throttle per rule, scope and level), after waiting (bounded) for nerve to
 * have written the last of them.
 *
 * Exit status: 0 when every record appeared; 1 when one did not within 2 s;
 * 2 on bad usage or when Redis or nerve's subscription is missing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#include <hiredis/hiredis.h>

#define MAX_EVENTS      100000
#define WARMUP_EVENTS   10          /* not measured: script loading, first connections */
#define WAIT_S          2           /* per event */
#define CHANNEL         "inventory_events"
#define RULE            "inventory_threshold"
#define PREFIX_MAX      64

/* Copy S into OUT (OUTLEN bytes) with the glob characters of a Redis pattern
 * escaped. 0, or -1 when it does not fit. */
static int glob_escape(const char *s, char *out, size_t outlen)
{
    size_t j = 0;

    for (; *s; s++) {
        if (strchr("*?[]\\", *s)) {
            if (j + 1 >= outlen)
                return -1;
            out[j++] = '\\';
        }
        if (j + 1 >= outlen)
            return -1;
        out[j++] = *s;
    }
    out[j] = '\0';
    return 0;
}

/* A command whose reply must not be an error; frees it. 0 or -1. */
static int command_ok(redisContext *c, const char *what, redisReply *r)
{
    int rc = 0;

    if (r == NULL) {
        fprintf(stderr, "bench_kill_latency: %s: %s\n", what, c->errstr);
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "bench_kill_latency: %s: %s\n", what, r->str);
        rc = -1;
    }
    freeReplyObject(r);
    return rc;
}

typedef struct bench {
    redisContext *pub;      /* commands: PUBLISH, CONFIG, cleanup */
    redisContext *sub;      /* the keyspace subscription */
    const char *prefix;
    long db;
    long n;
    char sku_base[64];      /* "lat-<pid>-" */
} bench;

/* Publish the event of SKU and wait for the keyspace notification of its
 * kill record. Returns the latency in ms, or a negative number on failure. */
static double one_event(bench *b, const char *sku)
{
    char json[256], want[256];
    struct timeval tv;
    double t0;
    redisReply *r;

    gettimeofday(&tv, NULL);
    snprintf(json, sizeof(json),
             "{\"type\":\"stock_changed\",\"sku\":\"%s\",\"stock_remaining\":0,\"ts\":%lld}",
             sku, (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000);
    snprintf(want, sizeof(want), "__keyspace@%ld__:%skill:sku:%s", b->db, b->prefix, sku);

    t0 = bench_now_ms();
    r = redisCommand(b->pub, "PUBLISH %s %s", CHANNEL, json);
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        fprintf(stderr, "bench_kill_latency: PUBLISH: %s\n",
                r ? (r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply") : b->pub->errstr);
        freeReplyObject(r);
        return -2;
    }
    if (r->integer < 1) {
        fprintf(stderr, "bench_kill_latency: nobody is subscribed to %s: is nerve running on "
                "this Redis?\n", CHANNEL);
        freeReplyObject(r);
        return -2;
    }
    freeReplyObject(r);

    /* Other records' notifications (nerve updating the state of an earlier
     * kill) may come first: skip them. Bounded by the socket timeout. */
    for (int skipped = 0; skipped < 100000; skipped++) {
        void *v = NULL;
        int match;

        if (redisGetReply(b->sub, &v) != REDIS_OK) {
            fprintf(stderr, "bench_kill_latency: no kill record for sku:%s within %d s (%s)\n",
                    sku, WAIT_S, b->sub->errstr);
            return -1;
        }
        r = v;
        /* pmessage PATTERN CHANNEL EVENT */
        match = r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
                r->element[2]->type == REDIS_REPLY_STRING &&
                strcmp(r->element[2]->str, want) == 0;
        freeReplyObject(r);
        if (match)
            return bench_now_ms() - t0;
    }
    fprintf(stderr, "bench_kill_latency: too many unrelated notifications\n");
    return -1;
}

/* Wait (bounded) until nerve has written the throttle key of the last event's
 * alert, then delete every key the events left. Events are evaluated in
 * order, so the last alert means all earlier ones are written too. */
static void cleanup(bench *b, long count)
{
    char last[256];
    double deadline = bench_now_ms() + 2000;
    long pending = 0;

    snprintf(last, sizeof(last), "%sthrottle:{" RULE "|sku:%s%ld|critical}", b->prefix, b->sku_base,
             count - 1);
    while (bench_now_ms() < deadline) {
        redisReply *r = redisCommand(b->pub, "EXISTS %s", last);
        int there = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;

        freeReplyObject(r);
        if (there || r == NULL)
            break;
        usleep(1000);
    }
    for (long i = 0; i < count; i++) {
        char scope[96], k1[256], k2[256], k3[256], idx[128];

        snprintf(scope, sizeof(scope), "sku:%s%ld", b->sku_base, i);
        snprintf(k1, sizeof(k1), "%skill:%s", b->prefix, scope);
        snprintf(k2, sizeof(k2), "%sthrottle:{" RULE "|%s|critical}", b->prefix, scope);
        snprintf(k3, sizeof(k3), "%sthrottle:{" RULE "|%s|critical}:suppressed", b->prefix, scope);
        snprintf(idx, sizeof(idx), "%skills", b->prefix);
        redisAppendCommand(b->pub, "DEL %s", k1);
        redisAppendCommand(b->pub, "DEL %s", k2);
        redisAppendCommand(b->pub, "DEL %s", k3);
        redisAppendCommand(b->pub, "SREM %s %s", idx, scope);
        pending += 4;
        /* Drain in chunks: the pipeline stays small. */
        if (pending >= 400 || i == count - 1) {
            for (; pending > 0; pending--) {
                void *v = NULL;

                if (redisGetReply(b->pub, &v) != REDIS_OK) {
                    fprintf(stderr, "bench_kill_latency: cleanup: %s\n", b->pub->errstr);
                    return;
                }
                freeReplyObject(v);
            }
        }
    }
}

int main(int argc, char **argv)
{
    const char *host;
    long port, n = 500, db = 0;
    char pattern[256], prefix_glob[2 * PREFIX_MAX + 1], oldflags[64] = "";
    struct timeval tmo = { WAIT_S, 0 };
    bench b;
    double *lat = NULL;
    long measured = 0, total = 0;
    int rc = 2, flags_set = 0;
    redisReply *r;

    memset(&b, 0, sizeof(b));
    b.prefix = "nerve:";
    if (argc < 3 || argc > 6 || bench_parse_long(argv[2], 1, 65535, &port) != 0 ||
        (argc > 3 && bench_parse_long(argv[3], 1, MAX_EVENTS, &n) != 0) ||
        (argc > 5 && bench_parse_long(argv[5], 0, 15, &db) != 0)) {
        fprintf(stderr, "usage: bench_kill_latency HOST PORT [N [PREFIX [DB]]]  "
                "(N 1..%d, default 500; PREFIX default nerve:; DB default 0)\n", MAX_EVENTS);
        return 2;
    }
    host = argv[1];
    if (argc > 4)
        b.prefix = argv[4];
    if (strlen(b.prefix) > PREFIX_MAX || glob_escape(b.prefix, prefix_glob, sizeof(prefix_glob))) {
        fprintf(stderr, "bench_kill_latency: prefix longer than %d bytes\n", PREFIX_MAX);
        return 2;
    }
    b.n = n;
    b.db = db;
    snprintf(b.sku_base, sizeof(b.sku_base), "lat-%ld-", (long)getpid());

    b.pub = redisConnectWithTimeout(host, (int)port, tmo);
    b.sub = redisConnectWithTimeout(host, (int)port, tmo);
    if (b.pub == NULL || b.pub->err || b.sub == NULL || b.sub->err) {
        fprintf(stderr, "bench_kill_latency: cannot connect to %s:%ld: %s\n", host, port,
                b.pub && b.pub->err ? b.pub->errstr : b.sub ? b.sub->errstr : "out of memory");
        goto out;
    }
    redisSetTimeout(b.pub, tmo);
    redisSetTimeout(b.sub, tmo);
    if (db != 0 && command_ok(b.pub, "SELECT", redisCommand(b.pub, "SELECT %ld", db)) != 0)
        goto out;

    /* Keyspace notifications for string commands, on top of what was set. */
    r = redisCommand(b.pub, "CONFIG GET notify-keyspace-events");
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len < sizeof(oldflags) - 3)
        snprintf(oldflags, sizeof(oldflags), "%s", r->element[1]->str);
    else {
        fprintf(stderr, "bench_kill_latency: CONFIG GET notify-keyspace-events: %s\n",
                r && r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        goto out;
    }
    freeReplyObject(r);
    if (command_ok(b.pub, "CONFIG SET notify-keyspace-events",
                   redisCommand(b.pub, "CONFIG SET notify-keyspace-events %sK$", oldflags)) != 0)
        goto out;
    flags_set = 1;

    snprintf(pattern, sizeof(pattern), "__keyspace@%ld__:%skill:sku:%s*", db, prefix_glob,
             b.sku_base);
    if (command_ok(b.sub, "PSUBSCRIBE", redisCommand(b.sub, "PSUBSCRIBE %s", pattern)) != 0)
        goto out;

    lat = calloc((size_t)n, sizeof(*lat));
    if (lat == NULL)
        goto out;
    rc = 1;
    for (long i = 0; i < WARMUP_EVENTS + n; i++, total++) {
        char sku[96];
        double ms;

        snprintf(sku, sizeof(sku), "%s%ld", b.sku_base, i);
        ms = one_event(&b, sku);
        if (ms < 0) {
            if (ms < -1)
                rc = 2;
            total++;
            goto out;
        }
        if (i >= WARMUP_EVENTS)
            lat[measured++] = ms;
    }
    qsort(lat, (size_t)measured, sizeof(*lat), bench_cmp_double);
    printf("kill latency: %ld events, p50 %.3f ms, p99 %.3f ms, max %.3f ms\n", measured,
           lat[(measured - 1) / 2], lat[(measured * 99 + 99) / 100 - 1], lat[measured - 1]);
    rc = 0;
out:
    if (flags_set) {
        if (total > 0)
            cleanup(&b, total);
        command_ok(b.pub, "CONFIG SET notify-keyspace-events (restore)",
                   redisCommand(b.pub, "CONFIG SET notify-keyspace-events %s", oldflags));
    }
    free(lat);
    redisFree(b.pub);
    redisFree(b.sub);
    return rc;
}
