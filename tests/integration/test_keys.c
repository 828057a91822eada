/* test_keys.c -- `nerve keys where` and `nerve keys migrate` (engine/keys_cli.c)
 * against a real redis-server, with the real binary; and a daemon's refusal
 * to start on data laid out with another partition count (keys.h).
 *
 * Each test writes its data with the key names of the layout it starts from
 * (legacy PREFIX{SKU}:stock, or keys.h with a count), runs the command and
 * reads every key back: values, TTLs of the order records, what is left in
 * the old layout, and PREFIXmeta:partitions.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NSKUS 120

/* `nerve keys migrate --set redis.url=R ARGS...` (ARGS NULL-terminated). */
static int migrate(h_redis *r, h_run *out, ...) {
    const char *argv[24];
    char url[128], set[160];
    size_t n = 0;
    snprintf(set, sizeof set, "redis.url=%s", h_redis_url(r, url, sizeof url));
    argv[n++] = "keys";
    argv[n++] = "migrate";
    argv[n++] = "--set";
    argv[n++] = set;
    va_list ap;
    va_start(ap, out);
    for (const char *a; (a = va_arg(ap, const char *)) && n < 23;) argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return h_run_nerve(out, 60000, NULL, argv);
}
#define MIGRATE(r, out, ...) migrate((r), (out), __VA_ARGS__, (const char *)NULL)

/* The SKUs of a test: some with ':' and '.' (a SKU may hold ':', and so
 * may an order id: the {pN} order records must still find their SKU). */
static void sku_name(char *buf, size_t len, int i) {
    if (i % 7 == 3)
        snprintf(buf, len, "cat:%d:item", i);
    else
        snprintf(buf, len, "sku-%d.v", i);
}

/* Key of the layout NPARTS (0: legacy PREFIX{SKU}:KIND or :order:ID). */
static const char *key_of(char *buf, int nparts, const char *kind, const char *sku,
                          const char *order_id) {
    if (nparts == 0) {
        if (order_id)
            snprintf(buf, RDS_KEY_MAX, "%s{%s}:order:%s", H_PREFIX, sku, order_id);
        else
            snprintf(buf, RDS_KEY_MAX, "%s{%s}:%s", H_PREFIX, sku, kind);
    } else if (order_id) {
        keys_order(buf, H_PREFIX, nparts, sku, order_id);
    } else {
        keys_sku(buf, H_PREFIX, nparts, kind, sku);
    }
    return buf;
}

static void set_key(h_redis *r, const char *key, const char *val, int ex) {
    redisReply *rep = ex ? h_redis_cmd(r, "SET %s %s EX %d", key, val, ex)
                         : h_redis_cmd(r, "SET %s %s", key, val);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
}

/* GET KEY into BUF ("" when absent). */
static const char *get_key(h_redis *r, const char *key, char *buf, size_t len) {
    redisReply *rep = h_redis_cmd(r, "GET %s", key);
    assert_non_null(rep);
    snprintf(buf, len, "%s", rep->type == REDIS_REPLY_STRING ? rep->str : "");
    freeReplyObject(rep);
    return buf;
}

static long long int_cmd(h_redis *r, const char *fmt, const char *arg) {
    redisReply *rep = h_redis_cmd(r, fmt, arg);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

static long long dbsize(h_redis *r) {
    redisReply *rep = h_redis_cmd(r, "DBSIZE");
    assert_non_null(rep);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

/* The data set: SKU i has stock 1000+i; every third a price; every fifth
 * two order records with a TTL of 1000 s. Written in layout NPARTS. */
static void write_data(h_redis *r, int nparts) {
    char sku[64], key[RDS_KEY_MAX], val[32];
    for (int i = 0; i < NSKUS; i++) {
        sku_name(sku, sizeof sku, i);
        snprintf(val, sizeof val, "%d", 1000 + i);
        set_key(r, key_of(key, nparts, "stock", sku, NULL), val, 0);
        if (i % 3 == 0) {
            snprintf(val, sizeof val, "%d.5", i);
            set_key(r, key_of(key, nparts, "price", sku, NULL), val, 0);
        }
        if (i % 5 == 0) {
            snprintf(val, sizeof val, "1:%d", 999 + i);
            set_key(r, key_of(key, nparts, "order", sku, "ord-a"), val, 1000);
            set_key(r, key_of(key, nparts, "order", sku, "ord:b:1"), val, 1000);
        }
    }
}

/* Every key of the data set is in layout NPARTS with its value (orders
 * with a TTL), and none is left in layout OLD (-1: do not look). */
static void check_data(h_redis *r, int nparts, int old) {
    char sku[64], key[RDS_KEY_MAX], val[32], got[64];
    for (int i = 0; i < NSKUS; i++) {
        sku_name(sku, sizeof sku, i);
        snprintf(val, sizeof val, "%d", 1000 + i);
        assert_string_equal(get_key(r, key_of(key, nparts, "stock", sku, NULL), got, sizeof got),
                            val);
        if (i % 3 == 0) {
            snprintf(val, sizeof val, "%d.5", i);
            assert_string_equal(
                get_key(r, key_of(key, nparts, "price", sku, NULL), got, sizeof got), val);
        }
        if (i % 5 == 0) {
            snprintf(val, sizeof val, "1:%d", 999 + i);
            const char *ids[] = { "ord-a", "ord:b:1" };
            for (int k = 0; k < 2; k++) {
                key_of(key, nparts, "order", sku, ids[k]);
                if (strcmp(get_key(r, key, got, sizeof got), val) != 0)
                    fail_msg("%s: '%s', want '%s'", key, got, val);
                long long ttl = int_cmd(r, "TTL %s", key);
                if (ttl < 900 || ttl > 1000) fail_msg("%s: TTL %lld, want 900..1000", key, ttl);
            }
        }
        if (old < 0) continue;
        /* Keys whose name is the same in both layouts stay; every other is gone. */
        const char *kinds[] = { "stock", "price" };
        for (int k = 0; k < 2; k++) {
            char nk[RDS_KEY_MAX];
            key_of(key, old, kinds[k], sku, NULL);
            if (strcmp(key, key_of(nk, nparts, kinds[k], sku, NULL)) != 0 &&
                int_cmd(r, "EXISTS %s", key))
                fail_msg("%s is still there after the migration", key);
        }
    }
}

static long long meta(h_redis *r) {
    long long v = -1;
    h_redis_get_ll(r, H_PREFIX "meta:partitions", &v);
    return v;
}

static void expect_run(h_run *x, int status, const char *out_has, const char *err_has) {
    if (x->status != status || (out_has && !strstr(x->out, out_has)) ||
        (err_has && !strstr(x->err, err_has)))
        fail_msg("exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stdout with: %s\nwant stderr "
                 "with: %s",
                 x->status, status, x->out, x->err, out_has ? out_has : "-",
                 err_has ? err_has : "-");
}

/* Legacy {SKU} data moves to 16 partitions with every value and TTL; a
 * daemon started afterwards sells the migrated stock and still knows a
 * migrated order (its idempotency record moved with it). */
static void test_legacy_to_16(void **state) {
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    write_data(r, 0);
    long long keys = dbsize(r);
    h_run x;
    MIGRATE(r, &x, "--from", "legacy", "--to", "16");
    char want[160];
    snprintf(want, sizeof want, "moved %d SKUs from the legacy {SKU} layout to 16 partitions",
             NSKUS);
    expect_run(&x, 0, want, NULL);
    expect_run(&x, 0, "recorded 16 in nerve:meta:partitions", NULL);
    h_run_free(&x);
    check_data(r, 16, 0);
    assert_int_equal(meta(r), 16);
    assert_int_equal(dbsize(r), keys + 1); /* + the meta record */

    h_daemon *d = h_daemon_start(r, NULL);
    assert_non_null(d);
    h_resp s;
    assert_int_equal(h_sale(d, "/sale", "cat:3:item", 3, NULL, &s), 200);
    long long left = -1;
    assert_true(h_jll(s.json, "stock_remaining", &left));
    assert_int_equal(left, 1003 - 3);
    h_resp_free(&s);
    assert_int_equal(H_REDIS_STOCK(r, "cat:3:item"), 1000);
    /* sku-5.v's order ord-a was recorded before the migration: a replay is
     * a duplicate, not a second sale. */
    assert_int_equal(h_sale(d, "/sale", "sku-5.v", 1, "ord-a", &s), 200);
    assert_int_equal(h_jbool(s.json, "duplicate"), 1);
    h_resp_free(&s);
    assert_int_equal(H_REDIS_STOCK(r, "sku-5.v"), 1005);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* 16 -> 8 -> 16 keeps every value and TTL; no key is added or lost. Run
 * without --from: the count recorded in Redis says where the data is. */
static void test_round_trip(void **state) {
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    write_data(r, 16);
    set_key(r, H_PREFIX "meta:partitions", "16", 0);
    long long keys = dbsize(r);
    h_run x;
    MIGRATE(r, &x, "--to", "8");
    expect_run(&x, 0, "from 16 partitions to 8 partitions", NULL);
    h_run_free(&x);
    check_data(r, 8, 16);
    assert_int_equal(meta(r), 8);
    assert_int_equal(dbsize(r), keys);
    MIGRATE(r, &x, "--to", "16");
    expect_run(&x, 0, "from 8 partitions to 16 partitions", NULL);
    h_run_free(&x);
    check_data(r, 16, 8);
    assert_int_equal(meta(r), 16);
    assert_int_equal(dbsize(r), keys);
    /* Once more: nothing to do. */
    MIGRATE(r, &x, "--to", "16");
    expect_run(&x, 0, "already records 16 partitions: nothing to move", NULL);
    h_run_free(&x);
    h_pass();
}

/* A run interrupted half-way leaves some SKUs moved and some not (and a
 * daemon with the new count may have seeded a few with the same value): a
 * re-run moves the rest and drops the equal duplicates, never doubling. */
static void test_rerun_after_partial(void **state) {
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    write_data(r, 0);
    char sku[64], a[RDS_KEY_MAX], b[RDS_KEY_MAX];
    for (int i = 0; i < NSKUS / 2; i++) {
        sku_name(sku, sizeof sku, i);
        key_of(a, 0, "stock", sku, NULL);
        key_of(b, 16, "stock", sku, NULL);
        redisReply *rep = i % 2 ? h_redis_cmd(r, "COPY %s %s", a, b)    /* seeded, same value */
                                : h_redis_cmd(r, "RENAME %s %s", a, b); /* moved already */
        assert_non_null(rep);
        freeReplyObject(rep);
    }
    h_run x;
    MIGRATE(r, &x, "--from", "legacy", "--to", "16");
    expect_run(&x, 0, "0 conflicts", NULL);
    h_run_free(&x);
    check_data(r, 16, 0);
    assert_int_equal(meta(r), 16);
    h_pass();
}

/* A key in both layouts with different values is a conflict: nothing is
 * overwritten, the count is not recorded, exit 1 naming it; --prefer says
 * which wins. */
static void test_conflict(void **state) {
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    char a[RDS_KEY_MAX], b[RDS_KEY_MAX], got[32];
    set_key(r, key_of(a, 0, "stock", "ABC", NULL), "10", 0);
    set_key(r, key_of(b, 16, "stock", "ABC", NULL), "7", 0);
    h_run x;
    MIGRATE(r, &x, "--from", "legacy", "--to", "16");
    char want[RDS_KEY_MAX + 80];
    snprintf(want, sizeof want, "conflict, both layouts hold it with different values: %s", a);
    expect_run(&x, 1, "1 conflicts", want);
    h_run_free(&x);
    assert_string_equal(get_key(r, a, got, sizeof got), "10");
    assert_string_equal(get_key(r, b, got, sizeof got), "7");
    assert_int_equal(meta(r), -1);
    MIGRATE(r, &x, "--from", "legacy", "--to", "16", "--prefer", "source");
    expect_run(&x, 0, "0 conflicts", NULL);
    h_run_free(&x);
    assert_string_equal(get_key(r, b, got, sizeof got), "10");
    assert_int_equal(int_cmd(r, "EXISTS %s", a), 0);
    assert_int_equal(meta(r), 16);
    h_pass();
}

/* A daemon with bus.partitions 8 on data recorded with 16 does not start:
 * exit 1, the message names both counts and the command that moves them. */
static void test_daemon_refuses_other_count(void **state) {
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    set_key(r, H_PREFIX "meta:partitions", "16", 0);
    char url[128], rset[160], listen[64], ledger[256];
    snprintf(rset, sizeof rset, "redis.url=%s", h_redis_url(r, url, sizeof url));
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", h_free_port());
    snprintf(ledger, sizeof ledger, "ledger.path=%s/ledger.db", r->dir);
    h_run x;
    h_run_nerve(&x, 20000, NULL,
                (const char *const[]){ "serve", "-c", "config/nerve.yaml", "--set", rset, "--set",
                                       listen, "--set", "server.pidfile=", "--set", ledger, "--set",
                                       "bus.partitions=8", NULL });
    expect_run(&x, 1, NULL,
               "bus.partitions is 8 but the data in Redis is laid out in 16 partitions");
    expect_run(&x, 1, NULL, "nerve keys migrate --from 16 --to 8");
    h_run_free(&x);
    assert_int_equal(meta(r), 16);
    h_pass();
}

/* A lock of either layout (a nerve selling), or a nerve listening on the
 * control channel, stops the migration before anything moves. */
static void test_refuses_while_locked(void **state) {
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    write_data(r, 0);
    char lock[RDS_KEY_MAX], want[RDS_KEY_MAX + 64];
    set_key(r, key_of(lock, 0, "lock", "sku-1.v", NULL), "token", 0);
    long long keys = dbsize(r);
    h_run x;
    MIGRATE(r, &x, "--from", "legacy", "--to", "16");
    snprintf(want, sizeof want, "%s exists: a nerve is selling: stop every instance", lock);
    expect_run(&x, 1, NULL, want);
    h_run_free(&x);
    assert_int_equal(dbsize(r), keys);
    assert_int_equal(meta(r), -1);
    int_cmd(r, "DEL %s", lock);
    keys--;

    /* A lock of the target layout: a fleet with the new count sells. */
    set_key(r, key_of(lock, 16, "lock", "sku-2.v", NULL), "token", 0);
    MIGRATE(r, &x, "--from", "legacy", "--to", "16");
    snprintf(want, sizeof want, "%s exists", lock);
    expect_run(&x, 1, NULL, want);
    h_run_free(&x);
    int_cmd(r, "DEL %s", lock);
    assert_int_equal(dbsize(r), keys);

    /* A running daemon (idle: it holds no lock) listens on nerve:control. */
    h_daemon *d = h_daemon_start(r, NULL);
    assert_non_null(d);
    MIGRATE(r, &x, "--from", "legacy", "--to", "16");
    expect_run(&x, 1, NULL,
               "1 client listens on nerve:control: a nerve is running on this Redis; stop every "
               "instance first");
    h_run_free(&x);
    check_data(r, 0, -1); /* all still in the legacy layout */
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --dry-run counts what would move and changes nothing. */
static void test_dry_run(void **state) {
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    write_data(r, 0);
    long long keys = dbsize(r);
    h_run x;
    MIGRATE(r, &x, "--from", "legacy", "--to", "16", "--dry-run");
    char want[200];
    /* 120 stock, 40 price, 48 order records */
    snprintf(want, sizeof want,
             "dry run: would move %d SKUs from the legacy {SKU} layout to 16 partitions: 208 keys "
             "(120 stock, 40 price, 48 order records;",
             NSKUS);
    expect_run(&x, 0, want, NULL);
    expect_run(&x, 0, "nothing changed", NULL);
    h_run_free(&x);
    assert_int_equal(dbsize(r), keys);
    check_data(r, 0, -1);
    assert_int_equal(meta(r), -1);
    h_pass();
}

/* `where` prints keys.h's names; misuse is exit 2 with one line. */
static void test_where_and_usage(void **state) {
    (void)state;
    h_run x;
    h_run_nerve(&x, 10000, NULL,
                (const char *const[]){ "keys", "where", "--set", "bus.partitions=8", "hot",
                                       "cat:1:x", NULL });
    char st[RDS_KEY_MAX], pr[RDS_KEY_MAX], lk[RDS_KEY_MAX], od[RDS_KEY_MAX], want[4096];
    size_t n = 0;
    const char *skus[] = { "hot", "cat:1:x" };
    for (int i = 0; i < 2; i++) {
        int p = keys_partition(skus[i], 8);
        n += (size_t)snprintf(
            want + n, sizeof want - n,
            "%s\t%d\t%s\t%s\t%s\t%s\tnerve:{p%d}:stream:inventory_events\tnerve:{p%d}:stream:sales_"
            "events\n",
            skus[i], p, key_of(st, 8, "stock", skus[i], NULL),
            key_of(pr, 8, "price", skus[i], NULL), key_of(lk, 8, "lock", skus[i], NULL),
            key_of(od, 8, "order", skus[i], "*"), p, p);
    }
    expect_run(&x, 0, NULL, NULL);
    assert_string_equal(x.out, want);
    h_run_free(&x);

    static const struct {
        const char *args[8];
        const char *err;
    } bad[] = {
        { { "keys", "where", "no space", NULL },
          "nerve keys where: 'no space' is not a SKU (1..128 of A-Z a-z 0-9 . _ : -, with a letter "
          "or digit)\n" },
        { { "keys", "migrate", "--from", "16", NULL },
          "usage: nerve keys migrate [-c FILE] [--from N|legacy] --to M [--dry-run] [--prefer "
          "source|target]\n" },
        { { "keys", "migrate", "--to", "0", NULL },
          "nerve keys migrate: --to must be a partition count 1..1024, not '0'\n" },
        { { "keys", "migrate", "--from", "x", "--to", "8", NULL },
          "nerve keys migrate: --from must be a partition count 1..1024 or legacy, not 'x'\n" },
        { { "keys", "migrate", "--from", "8", "--to", "8", NULL },
          "nerve keys migrate: --from and --to are both 8: nothing to move\n" },
        { { "keys", "migrate", "--to", "8", "--prefer", "mine", NULL },
          "nerve keys: --prefer must be source or target\n" },
        { { "keys", "frob", NULL }, NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        h_run_nerve(&x, 10000, NULL, bad[i].args);
        if (x.status != 2 || (bad[i].err && strcmp(x.err, bad[i].err) != 0))
            fail_msg("nerve keys %s: exit %d (want 2), stderr: %s", bad[i].args[1], x.status,
                     x.err);
        h_run_free(&x);
    }
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_legacy_to_16),
        T(test_round_trip),
        T(test_rerun_after_partial),
        T(test_conflict),
        T(test_daemon_refuses_other_count),
        T(test_refuses_while_locked),
        T(test_dry_run),
        T(test_where_and_usage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
