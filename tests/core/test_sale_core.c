/* test_sale_core.c -- the sale core (parse, lock, commit) linked alone.
 *
 * This binary is built by its own Makefile rule from exactly the objects the
 * sale path needs (SALE_CORE_OBJ: sale, keys, lock, rds, jsonck, log, sku, hist and
 * the leaves they include) with -lhiredis -lcjson and nothing of Lua,
 * libcurl, libyaml or CivetWeb: that the link succeeds is the proof that the
 * sale path no longer drags the daemon in (issue 10; before, a program
 * calling only sale_parse linked 19 of 28 objects through metrics.c). The
 * tests then run that core against a real redis-server: one sale parsed and
 * committed, its duplicate and an out-of-stock one, the engine's own
 * counters, and the fence that refuses a commit whose lock is held by
 * another token.
 *
 * No harness: tests/integration/harness.c speaks HTTP through libcurl, which
 * is what this binary must not link, so the throwaway redis-server (free
 * port, mkdtemp directory, killed at exit) is started here in a few lines.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <link.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include <cjson/cJSON.h>

#include "nerve/clock.h"
#include "nerve/keys.h"
#include "nerve/lock.h"
#include "nerve/rds.h"
#include "nerve/sale.h"

/* ---- a throwaway redis-server ------------------------------------------------ */

static pid_t redis_pid;
static int redis_port;
static char redis_dir[64];

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

/* Poll PING until it answers or 5 s pass. */
static int redis_wait_up(void) {
    uint64_t deadline = clock_now_ns() + 5000000000ull;
    while (clock_now_ns() < deadline) {
        struct timeval tv = { 0, 200000 };
        redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
        redisReply *r = c && !c->err ? redisCommand(c, "PING") : NULL;
        int up = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
        if (c) redisFree(c);
        if (up) return 0;
        int st;
        if (waitpid(redis_pid, &st, WNOHANG) == redis_pid) return -1;     /* it died (port taken?) */
        struct timespec nap = { 0, 20000000 };
        nanosleep(&nap, NULL);
    }
    return -1;
}

static void redis_stop(void) {
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
    if (redis_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", redis_dir);
        if (system(cmd) != 0) fprintf(stderr, "test_sale_core: could not remove %s\n", redis_dir);
        redis_dir[0] = 0;
    }
}

static int group_setup(void **state) {
    (void)state;
    snprintf(redis_dir, sizeof redis_dir, "%s", "/tmp/nerve-core.XXXXXX");
    if (!mkdtemp(redis_dir)) {
        fprintf(stderr, "test_sale_core: mkdtemp: %s\n", strerror(errno));
        redis_dir[0] = 0;
        return -1;
    }
    const char *server = getenv("REDIS_SERVER") ? getenv("REDIS_SERVER") : "redis-server";
    for (int attempt = 0; attempt < 5; attempt++) {
        redis_port = free_port();
        char port[16];
        snprintf(port, sizeof port, "%d", redis_port);
        pid_t parent = getpid();
        redis_pid = fork();
        if (redis_pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(127);
            execlp(server, server, "--port", port, "--bind", "127.0.0.1", "--dir", redis_dir, "--save", "",
                   "--appendonly", "no", "--logfile", "redis.log", (char *)NULL);
            _exit(127);
        }
        if (redis_pid > 0 && redis_wait_up() == 0) return 0;
        if (redis_pid > 0) {
            kill(redis_pid, SIGKILL);
            waitpid(redis_pid, NULL, 0);
            redis_pid = 0;
        }
    }
    fprintf(stderr, "test_sale_core: could not start %s (is it installed? REDIS_SERVER=path)\n", server);
    redis_stop();
    return -1;
}

static int group_teardown(void **state) {
    (void)state;
    redis_stop();
    return 0;
}

/* ---- the tests ----------------------------------------------------------------- */

static rds_pool *pool_new(void) {
    char url[64], err[256];
    rds_opts o;
    memset(&o, 0, sizeof o);
    o.connect_timeout_ms = 1000;
    o.command_timeout_ms = 1000;
    o.reconnect_max_ms = 1000;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", redis_port);
    if (rds_parse_url(url, &o, err, sizeof err)) fail_msg("%s", err);
    rds_pool *p = rds_pool_new(&o);
    assert_non_null(p);
    return p;
}

static sale_opts opts(void) {
    sale_opts o = {
        .prefix = "nerve:", .partitions = 16, .streams = true, .publish = true,
        .inventory_channel = "inventory_events", .sales_channel = "sales_events",
        .lock_ttl_ms = 2000, .lock_max_wait_ms = 1000, .idempotency_ttl_s = 60, .max_batch = 16,
        .max_qty = 1000,
    };
    return o;
}

/* dl_iterate_phdr callback: count loaded objects named like Lua or libcurl. */
static int find_forbidden(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    const char *n = info->dlpi_name ? info->dlpi_name : "";
    if (strstr(n, "liblua") || strstr(n, "libcurl") || strstr(n, "libyaml") || strstr(n, "civetweb")) {
        fprintf(stderr, "loaded: %s\n", n);
        ++*(int *)data;
    }
    return 0;
}

/* The process runs without Lua, libcurl, libyaml and CivetWeb loaded: the
 * link line named none of them, and nothing pulled them in. */
static void test_core_links_no_lua_no_curl(void **state) {
    (void)state;
    int forbidden = 0;
    dl_iterate_phdr(find_forbidden, &forbidden);
    assert_int_equal(forbidden, 0);
}

/* Parse a body, commit it under the SKU's lock, then its duplicate and a sale
 * over the stock; the engine counts what it was told and times its locks. */
static void test_core_parse_lock_commit(void **state) {
    (void)state;
    rds_pool *pool = pool_new();
    rds_client *c = rds_pool_client(pool);
    assert_non_null(c);
    sale_opts o = opts();
    assert_int_equal(sale_stock_set(c, &o, "core-1", 5), 0);

    sale_engine *e = sale_engine_new(&o, pool);
    assert_non_null(e);

    const char *body = "{\"sku\":\"core-1\",\"qty\":2,\"order_id\":\"core-o1\"}";
    sale_req req;
    char err[256];
    assert_int_equal(sale_parse(body, strlen(body), o.max_qty, &req, err, sizeof err), 0);
    assert_string_equal(req.sku, "core-1");
    assert_int_equal(req.qty, 2);

    sale_res res;
    sale_execute(e, &req, &res);
    assert_int_equal(res.status, SALE_OK);
    assert_false(res.duplicate);
    assert_int_equal(res.stock_remaining, 3);
    sale_record(e, res.status, res.duplicate, 0.0002);

    sale_execute(e, &req, &res);            /* the same order_id again */
    assert_int_equal(res.status, SALE_OK);
    assert_true(res.duplicate);
    assert_int_equal(res.stock_remaining, 3);
    sale_record(e, res.status, res.duplicate, 0.0002);

    const char *big = "{\"sku\":\"core-1\",\"qty\":4}";
    assert_int_equal(sale_parse(big, strlen(big), o.max_qty, &req, err, sizeof err), 0);
    sale_execute(e, &req, &res);
    assert_int_equal(res.status, SALE_OUT_OF_STOCK);
    sale_record(e, res.status, res.duplicate, 3.0);

    const char *bad = "{\"sku\":\"..\",\"qty\":1}";
    assert_int_equal(sale_parse(bad, strlen(bad), o.max_qty, &req, err, sizeof err), -1);
    sale_record(e, SALE_BAD_REQUEST, false, 0.00005);

    long long stock = -1;
    assert_int_equal(sale_stock_get(c, &o, "core-1", &stock), 0);
    assert_int_equal(stock, 3);

    sale_stats st;
    sale_get_stats(e, &st);
    assert_int_equal(st.results[SALE_RESULT_OK], 1);
    assert_int_equal(st.results[SALE_RESULT_DUPLICATE], 1);
    assert_int_equal(st.results[SALE_RESULT_OUT_OF_STOCK], 1);
    assert_int_equal(st.results[SALE_RESULT_BAD_REQUEST], 1);
    assert_int_equal(st.results[SALE_RESULT_UNAVAILABLE], 0);
    assert_string_equal(sale_result_name(SALE_RESULT_OUT_OF_STOCK), "out_of_stock");
    assert_int_equal(st.duration.count, 4);
    assert_int_equal(st.duration.counts[0], 1);                 /* 50 us <= 100 us */
    assert_int_equal(st.duration.counts[1], 2);                 /* 200 us <= 250 us */
    assert_int_equal(st.duration.counts[HIST_BUCKETS], 1);      /* 3 s: +Inf */
    assert_true(st.duration.sum > 3.0002 && st.duration.sum < 3.0006);
    /* Three batches, each took the lock on the fast path: waited 0. */
    assert_int_equal(st.lock_wait.count, 3);
    assert_int_equal(st.lock_wait.counts[0], 3);

    sale_engine_free(e);
    rds_pool_free(pool);
}

/* The commit is fenced by the lock: a token that does not hold it commits
 * nothing; the holder's commit goes through and releases the lock. */
static void test_core_commit_fenced_by_lock(void **state) {
    (void)state;
    rds_pool *pool = pool_new();
    rds_client *c = rds_pool_client(pool);
    sale_opts o = opts();
    assert_int_equal(sale_stock_set(c, &o, "core-2", 10), 0);

    char holder[LOCK_TOKEN_LEN + 1], other[LOCK_TOKEN_LEN + 1], err[256];
    assert_int_equal(lock_acquire(c, "nerve:{p1}:lock:core-2", 5000, 0, holder, err, sizeof err), LOCK_OK);
    lock_token_new(other);
    assert_string_not_equal(holder, other);

    sale_req req;
    const char *body = "{\"sku\":\"core-2\",\"qty\":1,\"order_id\":\"core-o2\"}";
    assert_int_equal(sale_parse(body, strlen(body), o.max_qty, &req, err, sizeof err), 0);
    sale_res res;
    memset(&res, 0, sizeof res);
    assert_int_equal(sale_commit(c, &o, "core-2", other, &req, &res, 1, err, sizeof err), 1);
    long long stock = -1;
    assert_int_equal(sale_stock_get(c, &o, "core-2", &stock), 0);
    assert_int_equal(stock, 10);

    assert_int_equal(sale_commit(c, &o, "core-2", holder, &req, &res, 1, err, sizeof err), 0);
    assert_int_equal(res.status, SALE_OK);
    assert_int_equal(res.stock_remaining, 9);
    /* Released by the script: another token takes it at once. */
    assert_int_equal(lock_try(c, "nerve:{p1}:lock:core-2", other, 1000, err, sizeof err), LOCK_OK);
    assert_int_equal(lock_release(c, "nerve:{p1}:lock:core-2", other), LOCK_CAS_DONE);
    rds_pool_free(pool);
}

/* ---- the durable log (issue 11) ------------------------------------------------- */

/* The JSON events of STREAM's entries, oldest first (at most MAX); each entry
 * must have exactly one field, "event". Returns how many. */
static size_t stream_events(rds_client *c, const char *stream, cJSON **out, size_t max) {
    redisReply *r = rds_command(c, "XRANGE %s - +", stream);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    size_t n = 0;
    for (size_t i = 0; i < r->elements && n < max; i++) {
        const redisReply *fields = r->element[i]->element[1];
        assert_int_equal(fields->elements, 2);
        assert_string_equal(fields->element[0]->str, "event");
        out[n] = cJSON_Parse(fields->element[1]->str);
        assert_non_null(out[n]);
        n++;
    }
    freeReplyObject(r);
    return n;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -1e300;
}

/* A sale is in its partition's streams, appended by the commit script: the
 * sale event in the sales stream, its stock_changed in the inventory stream,
 * both naming the partition and the instance; a stock set through the helper
 * (the PUT /admin/stock path) appends its previous value and delta; a refused
 * sale (out of stock, duplicate) appends nothing. */
static void test_core_sale_in_partition_streams(void **state) {
    (void)state;
    rds_pool *pool = pool_new();
    rds_client *c = rds_pool_client(pool);
    sale_opts o = opts();
    o.instance = "core-host:1";
    const char *sku = "core-log";
    int part = keys_partition(sku, o.partitions);
    char inv[RDS_KEY_MAX], sales[RDS_KEY_MAX], stock_key[RDS_KEY_MAX];
    keys_stream(inv, o.prefix, part, o.inventory_channel);
    keys_stream(sales, o.prefix, part, o.sales_channel);
    keys_sku(stock_key, o.prefix, o.partitions, "stock", sku);

    assert_int_equal(sale_stock_set(c, &o, sku, 4), 0);
    assert_int_equal(sale_stock_set(c, &o, sku, 3), 0);
    redisReply *r = rds_command(c, "GET %s", stock_key);
    assert_true(r && r->type == REDIS_REPLY_STRING && strcmp(r->str, "3") == 0);
    freeReplyObject(r);

    sale_engine *e = sale_engine_new(&o, pool);
    assert_non_null(e);
    const char *body = "{\"sku\":\"core-log\",\"qty\":2,\"order_id\":\"log-1\"}";
    sale_req req;
    sale_res res;
    char err[256];
    assert_int_equal(sale_parse(body, strlen(body), o.max_qty, &req, err, sizeof err), 0);
    sale_execute(e, &req, &res);
    assert_int_equal(res.status, SALE_OK);
    sale_execute(e, &req, &res); /* duplicate: nothing appended */
    assert_true(res.duplicate);
    const char *big = "{\"sku\":\"core-log\",\"qty\":5}";
    assert_int_equal(sale_parse(big, strlen(big), o.max_qty, &req, err, sizeof err), 0);
    sale_execute(e, &req, &res);
    assert_int_equal(res.status, SALE_OUT_OF_STOCK);

    cJSON *ev[8];
    size_t n = stream_events(c, sales, ev, 8);
    assert_int_equal(n, 1);
    assert_string_equal(jstr(ev[0], "type"), "sale");
    assert_string_equal(jstr(ev[0], "sku"), sku);
    assert_string_equal(jstr(ev[0], "order_id"), "log-1");
    assert_string_equal(jstr(ev[0], "instance"), "core-host:1");
    assert_true(jnum(ev[0], "qty") == 2 && jnum(ev[0], "stock_remaining") == 1);
    assert_true(jnum(ev[0], "partition") == part);
    cJSON_Delete(ev[0]);

    n = stream_events(c, inv, ev, 8);
    assert_int_equal(n, 3); /* set 4, set 3 (delta -1), the sale */
    assert_string_equal(jstr(ev[0], "source"), "admin");
    assert_true(jnum(ev[0], "previous") == 0 && jnum(ev[0], "delta") == 4);
    assert_string_equal(jstr(ev[1], "actor"), "admin");
    assert_true(jnum(ev[1], "previous") == 4 && jnum(ev[1], "delta") == -1 &&
                jnum(ev[1], "stock_remaining") == 3);
    assert_string_equal(jstr(ev[2], "source"), "sale");
    assert_true(jnum(ev[2], "sold") == 2 && jnum(ev[2], "orders") == 1);
    assert_true(jnum(ev[2], "stock_remaining") == 1 && jnum(ev[2], "partition") == part);
    for (size_t i = 0; i < n; i++) cJSON_Delete(ev[i]);

    /* The seed appends only when it sets; a second seed changes nothing. */
    assert_int_equal(sale_stock_seed(c, &o, "core-seeded", 9), 1);
    assert_int_equal(sale_stock_seed(c, &o, "core-seeded", 5), 0);
    char seeded[RDS_KEY_MAX];
    keys_stream(seeded, o.prefix, keys_partition("core-seeded", o.partitions), o.inventory_channel);
    n = stream_events(c, seeded, ev, 8);
    size_t mine = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(jstr(ev[i], "sku"), "core-seeded") == 0) {
            mine++;
            assert_string_equal(jstr(ev[i], "source"), "seed");
            assert_true(jnum(ev[i], "delta") == 9);
        }
        cJSON_Delete(ev[i]);
    }
    assert_int_equal(mine, 1);
    sale_engine_free(e);
    rds_pool_free(pool);
}

/* The first daemon records the partition count; another count is refused
 * with a message naming both. */
static void test_core_partition_record(void **state) {
    (void)state;
    rds_pool *pool = pool_new();
    rds_client *c = rds_pool_client(pool);
    char err[512];
    assert_int_equal(keys_check_partitions(c, "pt:", 16, err, sizeof err), 0);
    assert_int_equal(keys_check_partitions(c, "pt:", 16, err, sizeof err), 0);
    assert_int_equal(keys_check_partitions(c, "pt:", 8, err, sizeof err), -1);
    assert_non_null(strstr(err, "bus.partitions is 8"));
    assert_non_null(strstr(err, "16 partitions"));
    redisReply *r = rds_command(c, "GET pt:meta:partitions");
    assert_true(r && r->type == REDIS_REPLY_STRING && strcmp(r->str, "16") == 0);
    freeReplyObject(r);
    rds_pool_free(pool);
}

/* A batch of sales committed by one script: one sale event each, but ONE
 * stock_changed for the batch (the stock after it, units sold, orders). */
static void test_core_batch_one_stock_event(void **state) {
    (void)state;
    rds_pool *pool = pool_new();
    rds_client *c = rds_pool_client(pool);
    sale_opts o = opts();
    const char *sku = "core-batch";
    char lk[RDS_KEY_MAX], inv[RDS_KEY_MAX], sales[RDS_KEY_MAX], err[256];
    keys_sku(lk, o.prefix, o.partitions, "lock", sku);
    keys_stream(inv, o.prefix, keys_partition(sku, o.partitions), o.inventory_channel);
    keys_stream(sales, o.prefix, keys_partition(sku, o.partitions), o.sales_channel);
    assert_int_equal(sale_stock_set(c, &o, sku, 10), 0);
    char tok[LOCK_TOKEN_LEN + 1];
    assert_int_equal(lock_acquire(c, lk, 5000, 0, tok, err, sizeof err), LOCK_OK);
    sale_req reqs[3];
    sale_res res[3];
    for (int i = 0; i < 3; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"sku\":\"core-batch\",\"qty\":%d,\"order_id\":\"b-%d\"}",
                 i + 1, i);
        assert_int_equal(sale_parse(body, strlen(body), o.max_qty, &reqs[i], err, sizeof err), 0);
    }
    assert_int_equal(sale_commit(c, &o, sku, tok, reqs, res, 3, err, sizeof err), SALE_COMMIT_DONE);
    assert_int_equal(res[2].stock_remaining, 4);
    cJSON *ev[8];
    size_t n = stream_events(c, sales, ev, 8);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        assert_true(jnum(ev[i], "qty") == (double)i + 1);
        cJSON_Delete(ev[i]);
    }
    n = stream_events(c, inv, ev, 8);
    assert_int_equal(n, 2); /* the admin set, then the batch's one */
    assert_string_equal(jstr(ev[1], "source"), "sale");
    assert_true(jnum(ev[1], "stock_remaining") == 4 && jnum(ev[1], "sold") == 6 &&
                jnum(ev[1], "orders") == 3);
    for (size_t i = 0; i < n; i++) cJSON_Delete(ev[i]);
    rds_pool_free(pool);
}

/* bus.streams false: the sale is made, nothing is appended. */
static void test_core_streams_off(void **state) {
    (void)state;
    rds_pool *pool = pool_new();
    rds_client *c = rds_pool_client(pool);
    sale_opts o = opts();
    o.streams = false;
    const char *sku = "core-nolog";
    char sales[RDS_KEY_MAX], inv[RDS_KEY_MAX];
    keys_stream(sales, o.prefix, keys_partition(sku, o.partitions), o.sales_channel);
    keys_stream(inv, o.prefix, keys_partition(sku, o.partitions), o.inventory_channel);
    redisReply *r = rds_command(c, "DEL %s %s", sales, inv);
    freeReplyObject(r);
    assert_int_equal(sale_stock_set(c, &o, sku, 2), 0);
    sale_engine *e = sale_engine_new(&o, pool);
    const char *body = "{\"sku\":\"core-nolog\",\"qty\":1}";
    sale_req req;
    sale_res res;
    char err[256];
    assert_int_equal(sale_parse(body, strlen(body), o.max_qty, &req, err, sizeof err), 0);
    sale_execute(e, &req, &res);
    assert_int_equal(res.status, SALE_OK);
    r = rds_command(c, "EXISTS %s %s", sales, inv);
    assert_true(r && r->type == REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    sale_engine_free(e);
    rds_pool_free(pool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_links_no_lua_no_curl),
        cmocka_unit_test(test_core_parse_lock_commit),
        cmocka_unit_test(test_core_commit_fenced_by_lock),
        cmocka_unit_test(test_core_sale_in_partition_streams),
        cmocka_unit_test(test_core_streams_off),
        cmocka_unit_test(test_core_batch_one_stock_event),
        cmocka_unit_test(test_core_partition_record),
    };
    return cmocka_run_group_tests_name("sale_core", tests, group_setup, group_teardown);
}
