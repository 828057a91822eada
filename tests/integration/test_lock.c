/* test_lock.c -- the distributed lock (lock.h) and the fenced commit
 * (sale_commit) against a real, throwaway redis-server; rds_parse_url.
 *
 * The lock's promise is mutual exclusion for as long as the holder's TTL
 * runs, owner-only release and extend, and, with the commit script's fence,
 * that a holder whose lock expired can no longer write.
 */
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/lock.h"
#include "nerve/rds.h"
#include "nerve/sale.h"

static h_redis *redis;

static void client_opts(rds_opts *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->host, sizeof o->host, "127.0.0.1");
    o->port = redis->port;
    o->db = 0;
    o->connect_timeout_ms = 2000;
    o->command_timeout_ms = 5000;
    o->reconnect_max_ms = 100;
}

static rds_client *new_client(void)
{
    rds_opts o;
    client_opts(&o);
    rds_client *c = rds_client_new(&o);
    assert_non_null(c);
    return c;
}

/* GET KEY as a string into OUT ("" when absent). */
static void get_str(const char *key, char *out, size_t len)
{
    redisReply *rep = h_redis_cmd(redis, "GET %s", key);
    assert_non_null(rep);
    if (rep->type == REDIS_REPLY_STRING)
        snprintf(out, len, "%s", rep->str);
    else
        out[0] = '\0';
    freeReplyObject(rep);
}

static long long pttl(const char *key)
{
    redisReply *rep = h_redis_cmd(redis, "PTTL %s", key);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

/* --- mutual exclusion --------------------------------------------------- */

#define MX_THREADS 16
#define MX_ROUNDS 250

typedef struct mx_shared {
    const char *key;
    const char *inside_key;     /* INCR'd on entry, DECR'd on exit, in Redis */
    volatile long counter;      /* incremented without atomics under the lock */
    atomic_int inside;
    atomic_int overlaps;        /* seen by the in-process check */
    atomic_int redis_overlaps;  /* seen through the Redis key */
    atomic_int errors;
    atomic_int timeouts;
    atomic_int bad_release;
    char first_error[512];
    atomic_flag error_noted;
} mx_shared;

static void mx_error(mx_shared *m, const char *what, const char *detail)
{
    atomic_fetch_add(&m->errors, 1);
    if (!atomic_flag_test_and_set(&m->error_noted))
        snprintf(m->first_error, sizeof m->first_error, "%s: %s", what, detail);
}

static void *mx_worker(void *arg)
{
    mx_shared *m = arg;
    rds_opts o;
    client_opts(&o);
    rds_client *c = rds_client_new(&o);
    if (c == NULL) {
        mx_error(m, "rds_client_new", "NULL");
        return NULL;
    }
    char token[LOCK_TOKEN_LEN + 1];
    char err[256];
    for (int done = 0; done < MX_ROUNDS; ) {
        lock_status st = lock_acquire(c, m->key, 10000, 10000, token, err, sizeof err);
        if (st == LOCK_TIMEOUT) {
            atomic_fetch_add(&m->timeouts, 1);
            continue;
        }
        if (st != LOCK_OK) {
            mx_error(m, "lock_acquire", err);
            break;
        }
        if (atomic_fetch_add(&m->inside, 1) != 0)
            atomic_fetch_add(&m->overlaps, 1);
        redisReply *rep = rds_command(c, "INCR %s", m->inside_key);
        if (rep == NULL || rep->type != REDIS_REPLY_INTEGER)
            mx_error(m, "INCR", rds_errstr(c));
        else if (rep->integer != 1)
            atomic_fetch_add(&m->redis_overlaps, 1);
        if (rep)
            freeReplyObject(rep);

        long v = m->counter;        /* a small, racy critical section */
        sched_yield();
        m->counter = v + 1;

        rep = rds_command(c, "DECR %s", m->inside_key);
        if (rep)
            freeReplyObject(rep);
        atomic_fetch_sub(&m->inside, 1);
        if (lock_release(c, m->key, token) != LOCK_CAS_DONE)
            atomic_fetch_add(&m->bad_release, 1);
        done++;
    }
    rds_client_free(c);
    return NULL;
}

static void test_mutual_exclusion(void **state)
{
    (void)state;
    mx_shared m;
    memset(&m, 0, sizeof m);
    m.key = H_PREFIX "{mx}:lock";
    m.inside_key = H_PREFIX "{mx}:inside";
    atomic_flag_clear(&m.error_noted);

    pthread_t t[MX_THREADS];
    double t0 = h_now();
    for (int i = 0; i < MX_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, mx_worker, &m), 0);
    for (int i = 0; i < MX_THREADS; i++)
        pthread_join(t[i], NULL);
    printf("# %d acquisitions by %d threads in %.2f s (%d waits over max_wait)\n",
           MX_THREADS * MX_ROUNDS, MX_THREADS, h_now() - t0, atomic_load(&m.timeouts));

    if (atomic_load(&m.errors))
        fail_msg("%d errors, first: %s", atomic_load(&m.errors), m.first_error);
    assert_int_equal(atomic_load(&m.overlaps), 0);
    assert_int_equal(atomic_load(&m.redis_overlaps), 0);
    assert_int_equal(atomic_load(&m.bad_release), 0);
    assert_int_equal(m.counter, MX_THREADS * MX_ROUNDS);
    long long inside = -1;
    assert_int_equal(h_redis_get_ll(redis, m.inside_key, &inside), 0);
    assert_int_equal(inside, 0);
    assert_int_equal(pttl(m.key), -2);          /* released: no key */
    h_pass();
}

/* --- ownership ---------------------------------------------------------- */

static void test_release_by_non_owner(void **state)
{
    (void)state;
    rds_client *c = new_client();
    const char *key = H_PREFIX "{own1}:lock";
    char token[LOCK_TOKEN_LEN + 1], other[LOCK_TOKEN_LEN + 1], err[256] = "", held[64];

    assert_int_equal(lock_acquire(c, key, 10000, 0, token, err, sizeof err), LOCK_OK);
    assert_int_equal(strlen(token), LOCK_TOKEN_LEN);
    get_str(key, held, sizeof held);
    assert_string_equal(held, token);

    lock_token_new(other);
    assert_string_not_equal(other, token);
    assert_int_equal(lock_release(c, key, other), LOCK_CAS_NOT_OWNER);
    get_str(key, held, sizeof held);
    assert_string_equal(held, token);           /* still the owner's */

    assert_int_equal(lock_release(c, key, token), LOCK_CAS_DONE);
    assert_int_equal(pttl(key), -2);
    assert_int_equal(lock_release(c, key, token), LOCK_CAS_NOT_OWNER);   /* twice: nothing left */
    rds_client_free(c);
    h_pass();
}

static void test_extend_by_non_owner(void **state)
{
    (void)state;
    rds_client *c = new_client();
    const char *key = H_PREFIX "{own2}:lock";
    char token[LOCK_TOKEN_LEN + 1], other[LOCK_TOKEN_LEN + 1], err[256] = "", held[64];

    assert_int_equal(lock_acquire(c, key, 10000, 0, token, err, sizeof err), LOCK_OK);
    lock_token_new(other);
    assert_int_equal(lock_extend(c, key, other, 60000), LOCK_CAS_NOT_OWNER);
    long long t = pttl(key);
    assert_true(t > 0 && t <= 10000);
    get_str(key, held, sizeof held);
    assert_string_equal(held, token);

    assert_int_equal(lock_extend(c, key, token, 60000), LOCK_CAS_DONE);
    t = pttl(key);
    assert_true(t > 10000 && t <= 60000);

    assert_int_equal(lock_release(c, key, token), LOCK_CAS_DONE);
    assert_int_equal(lock_extend(c, key, token, 60000), LOCK_CAS_NOT_OWNER);    /* gone: not revived */
    assert_int_equal(pttl(key), -2);
    rds_client_free(c);
    h_pass();
}

static void test_try_with_own_token(void **state)
{
    (void)state;
    rds_client *c = new_client();
    const char *key = H_PREFIX "{own3}:lock";
    char a[LOCK_TOKEN_LEN + 1], b[LOCK_TOKEN_LEN + 1], err[256] = "", held[64];
    lock_token_new(a);
    lock_token_new(b);
    assert_int_equal(lock_try(c, key, a, 10000, err, sizeof err), LOCK_OK);
    assert_int_equal(lock_try(c, key, b, 10000, err, sizeof err), LOCK_TIMEOUT);
    get_str(key, held, sizeof held);
    assert_string_equal(held, a);
    assert_int_equal(lock_release(c, key, a), LOCK_CAS_DONE);
    assert_int_equal(lock_try(c, key, b, 10000, err, sizeof err), LOCK_OK);
    assert_int_equal(lock_release(c, key, b), LOCK_CAS_DONE);
    rds_client_free(c);
    h_pass();
}

/* --- expiry ------------------------------------------------------------- */

static void test_max_wait_zero_is_prompt(void **state)
{
    (void)state;
    rds_client *c = new_client();
    const char *key = H_PREFIX "{mw0}:lock";
    char a[LOCK_TOKEN_LEN + 1], b[LOCK_TOKEN_LEN + 1], err[256] = "";

    assert_int_equal(lock_acquire(c, key, 10000, 0, a, err, sizeof err), LOCK_OK);
    double t0 = h_now();
    assert_int_equal(lock_acquire(c, key, 10000, 0, b, err, sizeof err), LOCK_TIMEOUT);
    double took = h_now() - t0;
    assert_true(took < 0.2);
    /* A bounded wait gives up after about max_wait_ms, not before. */
    t0 = h_now();
    assert_int_equal(lock_acquire(c, key, 10000, 300, b, err, sizeof err), LOCK_TIMEOUT);
    took = h_now() - t0;
    if (took < 0.2 || took > 1.5)
        fail_msg("max_wait_ms 300 gave up after %.3f s", took);
    assert_int_equal(lock_release(c, key, a), LOCK_CAS_DONE);
    rds_client_free(c);
    h_pass();
}

static void test_expiry_lets_next_in(void **state)
{
    (void)state;
    rds_client *c = new_client();
    rds_client *c2 = new_client();
    const char *key = H_PREFIX "{exp}:lock";
    char a[LOCK_TOKEN_LEN + 1], b[LOCK_TOKEN_LEN + 1], err[256] = "", held[64];

    double t0 = h_now();
    assert_int_equal(lock_acquire(c, key, 300, 0, a, err, sizeof err), LOCK_OK);
    assert_int_equal(lock_acquire(c2, key, 10000, 0, b, err, sizeof err), LOCK_TIMEOUT);
    /* The waiter gets in once the TTL ran out, without a release. */
    assert_int_equal(lock_acquire(c2, key, 10000, 5000, b, err, sizeof err), LOCK_OK);
    double took = h_now() - t0;
    if (took < 0.25 || took > 3.0)
        fail_msg("second holder got in after %.3f s (TTL 0.3 s)", took);
    get_str(key, held, sizeof held);
    assert_string_equal(held, b);
    assert_int_equal(lock_release(c, key, a), LOCK_CAS_NOT_OWNER);       /* the expired holder */
    get_str(key, held, sizeof held);
    assert_string_equal(held, b);
    assert_int_equal(lock_release(c2, key, b), LOCK_CAS_DONE);
    rds_client_free(c);
    rds_client_free(c2);
    h_pass();
}

/* --- fencing: an expired holder cannot commit --------------------------- */

static void fence_opts(sale_opts *o)
{
    memset(o, 0, sizeof *o);
    o->prefix = H_PREFIX;
    o->partitions = H_PARTITIONS;
    o->inventory_channel = "inventory_events";
    o->sales_channel = "sales_events";
    o->lock_ttl_ms = 2000;
    o->lock_max_wait_ms = 1000;
    o->idempotency_ttl_s = 600;
    o->max_batch = 16;
    o->max_qty = 1000;
}

static void fence_req(sale_req *r, const char *sku, const char *order_id)
{
    memset(r, 0, sizeof *r);
    snprintf(r->sku, sizeof r->sku, "%s", sku);
    r->qty = 1;
    snprintf(r->order_id, sizeof r->order_id, "%s", order_id);
    r->client_order_id = true;
}

static long long order_exists(const char *sku, const char *order_id)
{
    char k[RDS_KEY_MAX];
    redisReply *rep = h_redis_cmd(redis, "EXISTS %s", h_order_key(k, sku, order_id));
    assert_non_null(rep);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

static void test_expired_holder_commit_refused(void **state)
{
    (void)state;
    rds_client *c = new_client();
    const char *sku = "fence-1";
    const char *key = H_PREFIX "{p0}:lock:fence-1";
    char a[LOCK_TOKEN_LEN + 1], b[LOCK_TOKEN_LEN + 1], err[256] = "";
    sale_opts o;
    sale_req req;
    sale_res res;
    fence_opts(&o);
    fence_req(&req, sku, "fence-order-1");

    assert_int_equal(sale_stock_set(c, &o, sku, 10), 0);
    assert_int_equal(lock_acquire(c, key, 100, 0, a, err, sizeof err), LOCK_OK);
    double dl = h_deadline(5000);
    while (pttl(key) != -2 && h_before(dl))
        h_nap();
    assert_int_equal(pttl(key), -2);            /* A's lock expired */

    /* Nobody holds it: A's commit is refused. */
    memset(&res, 0, sizeof res);
    assert_int_equal(sale_commit(c, &o, sku, a, &req, &res, 1, err, sizeof err), SALE_COMMIT_LOCK_LOST);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 10);

    /* B holds it: A's commit is still refused, B's goes through. */
    assert_int_equal(lock_acquire(c, key, 10000, 0, b, err, sizeof err), LOCK_OK);
    assert_int_equal(sale_commit(c, &o, sku, a, &req, &res, 1, err, sizeof err), SALE_COMMIT_LOCK_LOST);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 10);
    assert_int_equal(order_exists(sku, "fence-order-1"), 0);

    memset(&res, 0, sizeof res);
    assert_int_equal(sale_commit(c, &o, sku, b, &req, &res, 1, err, sizeof err), SALE_COMMIT_DONE);
    assert_int_equal(res.status, SALE_OK);
    assert_false(res.duplicate);
    assert_int_equal(res.stock_remaining, 9);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 9);
    assert_int_equal(order_exists(sku, "fence-order-1"), 1);

    /* The same order again under a new lock: a duplicate, no second
     * decrement. (sale_commit may release the lock itself: the engine's does.) */
    lock_release(c, key, b);
    assert_int_equal(lock_acquire(c, key, 10000, 0, b, err, sizeof err), LOCK_OK);
    memset(&res, 0, sizeof res);
    assert_int_equal(sale_commit(c, &o, sku, b, &req, &res, 1, err, sizeof err), SALE_COMMIT_DONE);
    assert_int_equal(res.status, SALE_OK);
    assert_true(res.duplicate);
    assert_int_equal(res.qty, 1);
    assert_int_equal(res.stock_remaining, 9);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 9);
    lock_release(c, key, b);
    rds_client_free(c);
    h_pass();
}

static void test_deleted_lock_commit_refused(void **state)
{
    (void)state;
    rds_client *c = new_client();
    const char *sku = "fence-2";
    const char *key = H_PREFIX "{p9}:lock:fence-2";
    char a[LOCK_TOKEN_LEN + 1], b[LOCK_TOKEN_LEN + 1], err[256] = "";
    sale_opts o;
    sale_req reqs[2];
    sale_res res[2];
    fence_opts(&o);
    fence_req(&reqs[0], sku, "fence-order-2a");
    fence_req(&reqs[1], sku, "fence-order-2b");

    assert_int_equal(sale_stock_set(c, &o, sku, 5), 0);
    assert_int_equal(lock_acquire(c, key, 10000, 0, a, err, sizeof err), LOCK_OK);
    redisReply *rep = h_redis_cmd(redis, "DEL %s", key);
    assert_non_null(rep);
    freeReplyObject(rep);
    assert_int_equal(lock_acquire(c, key, 10000, 0, b, err, sizeof err), LOCK_OK);

    memset(res, 0, sizeof res);
    assert_int_equal(sale_commit(c, &o, sku, a, reqs, res, 2, err, sizeof err), SALE_COMMIT_LOCK_LOST);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 5);
    assert_int_equal(order_exists(sku, "fence-order-2a"), 0);
    assert_int_equal(order_exists(sku, "fence-order-2b"), 0);
    assert_int_equal(lock_release(c, key, b), LOCK_CAS_DONE);
    rds_client_free(c);
    h_pass();
}

static void test_commit_checks_each_sale(void **state)
{
    (void)state;
    rds_client *c = new_client();
    const char *sku = "batch-1";
    const char *key = H_PREFIX "{p9}:lock:batch-1";
    char t[LOCK_TOKEN_LEN + 1], err[256] = "";
    sale_opts o;
    sale_req reqs[3];
    sale_res res[3];
    fence_opts(&o);
    fence_req(&reqs[0], sku, "b-1");
    fence_req(&reqs[1], sku, "b-2");
    fence_req(&reqs[2], sku, "b-3");
    reqs[0].qty = 2;
    reqs[1].qty = 2;        /* only 1 left after the first */
    reqs[2].qty = 1;

    assert_int_equal(sale_stock_set(c, &o, sku, 3), 0);
    assert_int_equal(lock_acquire(c, key, 10000, 0, t, err, sizeof err), LOCK_OK);
    memset(res, 0, sizeof res);
    assert_int_equal(sale_commit(c, &o, sku, t, reqs, res, 3, err, sizeof err), SALE_COMMIT_DONE);
    assert_int_equal(res[0].status, SALE_OK);
    assert_int_equal(res[0].stock_remaining, 1);
    assert_int_equal(res[1].status, SALE_OUT_OF_STOCK);
    assert_int_equal(res[1].stock_remaining, 1);
    assert_int_equal(res[2].status, SALE_OK);
    assert_int_equal(res[2].stock_remaining, 0);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
    assert_int_equal(order_exists(sku, "b-2"), 0);
    lock_release(c, key, t);
    rds_client_free(c);
    h_pass();
}

/* --- rds_parse_url ------------------------------------------------------ */

typedef struct url_case {
    const char *url;
    int rc;
    const char *host, *user, *pass;
    int port, db;
} url_case;

static void test_parse_url(void **state)
{
    (void)state;
    static const url_case cases[] = {
        { "redis://h:1/2", 0, "h", "", "", 1, 2 },
        { "redis://127.0.0.1:6380/0", 0, "127.0.0.1", "", "", 6380, 0 },
        { "redis://user:pass@h:6379/3", 0, "h", "user", "pass", 6379, 3 },
        { "redis://:secret@h:7000/1", 0, "h", "", "secret", 7000, 1 },
        { "redis://u%40x:p%3Aw%2F@h:1/0", 0, "h", "u@x", "p:w/", 1, 0 },
        { "redis://h", 0, "h", "", "", 6379, 0 },
        { "redis://h:6390", 0, "h", "", "", 6390, 0 },
        { "redis://h/4", 0, "h", "", "", 6379, 4 },
        { "http://h:1/0", -1, NULL, NULL, NULL, 0, 0 },
        { "h:1/0", -1, NULL, NULL, NULL, 0, 0 },
        { "", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://h:0/0", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://h:65536/0", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://h:-1/0", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://h:abc/0", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://h:/0", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://h:1/x", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://h:1/-1", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://h:1/1x", -1, NULL, NULL, NULL, 0, 0 },
        { "redis://h:1/99999999999999999999", -1, NULL, NULL, NULL, 0, 0 },
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const url_case *k = &cases[i];
        rds_opts o;
        memset(&o, 0, sizeof o);
        o.connect_timeout_ms = 123;
        o.command_timeout_ms = 456;
        o.reconnect_max_ms = 789;
        char err[256] = "";
        int rc = rds_parse_url(k->url, &o, err, sizeof err);
        bool ok = rc == k->rc;
        if (ok && rc == 0)
            ok = strcmp(o.host, k->host) == 0 && strcmp(o.user, k->user) == 0 &&
                 strcmp(o.pass, k->pass) == 0 && o.port == k->port && o.db == k->db &&
                 o.connect_timeout_ms == 123 && o.command_timeout_ms == 456 &&
                 o.reconnect_max_ms == 789;
        if (ok && rc != 0)
            ok = err[0] != '\0';
        if (!ok) {
            bad++;
            print_error("rds_parse_url(\"%s\"): rc %d (want %d), host \"%s\" port %d db %d "
                        "user \"%s\" pass \"%s\", timeouts %d/%d/%d, err \"%s\"\n",
                        k->url, rc, k->rc, o.host, o.port, o.db, o.user, o.pass,
                        o.connect_timeout_ms, o.command_timeout_ms, o.reconnect_max_ms, err);
        }
    }
    assert_int_equal(bad, 0);
    h_pass();
}

/* --- main --------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

/* A pipeline (commands appended, replies not read yet) is never moved to a
 * new connection halfway: the commands appended before would be dropped
 * unsent and each later reply handed to the wrong command (the sale
 * pipelines of mux.c read one reply per queued commit). Here the
 * connection dies, idle past the 50 ms staleness check, between two
 * appends: the replies are the right ones or failures, never the second
 * command's reply for the first. */
static void test_pipeline_not_reconnected_midway(void **state)
{
    (void)state;
    rds_client *c = new_client();
    redisReply *r = rds_command(c, "CLIENT ID");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long id = r->integer;
    freeReplyObject(r);
    double idle = h_deadline(80); /* past rds.c's 50 ms staleness check */

    const char *one[] = { "ECHO", "one" }, *two[] = { "ECHO", "two" };
    assert_int_equal(rds_appendargv(c, 2, one, NULL), 0);
    r = h_redis_cmd(redis, "CLIENT KILL ID %lld", id);
    assert_non_null(r);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    while (h_before(idle)) h_nap();

    int appended = rds_appendargv(c, 2, two, NULL) == 0;
    redisReply *r1 = rds_get_reply(c);
    if (r1) {
        if (r1->type != REDIS_REPLY_STRING || strcmp(r1->str, "one") != 0)
            fail_msg("the first command got the reply %s", r1->str ? r1->str : "(not a string)");
        redisReply *r2 = appended ? rds_get_reply(c) : NULL;
        if (appended && (!r2 || r2->type != REDIS_REPLY_STRING || strcmp(r2->str, "two") != 0))
            fail_msg("the second command got a wrong reply");
        freeReplyObject(r2);
    }
    freeReplyObject(r1);

    /* The client comes back for the next command (after its backoff). */
    double dl = h_deadline(3000);
    redisReply *p = NULL;
    while (h_before(dl) && !(p = rds_command(c, "PING"))) h_nap();
    assert_non_null(p);
    assert_string_equal(p->str, "PONG");
    freeReplyObject(p);
    rds_client_free(c);
    h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_parse_url),
        T(test_release_by_non_owner),
        T(test_extend_by_non_owner),
        T(test_try_with_own_token),
        T(test_max_wait_zero_is_prompt),
        T(test_expiry_lets_next_in),
        T(test_expired_holder_commit_refused),
        T(test_deleted_lock_commit_refused),
        T(test_commit_checks_each_sale),
        T(test_mutual_exclusion),
        T(test_pipeline_not_reconnected_midway),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
