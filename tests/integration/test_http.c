/* test_http.c -- the HTTP API's edges (SPEC §6): every bad input answers its
 * code with a JSON error body and changes nothing; the read-only endpoints;
 * admin authentication; readiness; CORS; the route table (OPTIONS, HEAD and
 * 405 with Allow on every route).
 */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_BODY 4096
#define MAX_QTY 100

static h_redis *redis;
static h_daemon *daemon_;

/* N copies of C, NUL-terminated; the caller frees it. */
static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void expect_stock(const char *sku, long long stock)
{
    assert_int_equal(H_GET_STOCK(daemon_, sku), stock);
    assert_int_equal(H_REDIS_STOCK(redis, sku), stock);
}

/* --- bad sale input ----------------------------------------------------- */

typedef struct bad_case {
    const char *what;
    const char *method, *path, *body;
    long status;
    const char *code;           /* NULL: any non-empty error code */
} bad_case;

static void run_bad_cases(const bad_case *cases, size_t n, const char *sku, long long stock)
{
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        const bad_case *k = &cases[i];
        h_resp r;
        h_http(daemon_, k->method, k->path, k->body, &r, NULL);
        const char *e = h_jstr(r.json, "error"), *m = h_jstr(r.json, "message");
        char ct[128] = "";
        h_header(&r, "Content-Type", ct, sizeof ct);
        bool ok = r.status == k->status && cJSON_IsObject(r.json) &&
                  strncmp(ct, "application/json", 16) == 0 &&
                  e && *e && (k->code == NULL || strcmp(e, k->code) == 0) && m && *m;
        if (!ok) {
            failures++;
            print_error("%s: %s %s: expected %ld {\"error\":\"%s\",\"message\":...}, "
                        "got %ld (Content-Type \"%s\") %s %s\n", k->what, k->method, k->path,
                        k->status, k->code ? k->code : "<any>", r.status, ct, r.body, r.err);
        }
        h_resp_free(&r);
        long long now = H_GET_STOCK(daemon_, sku);
        if (now != stock) {
            failures++;
            print_error("%s: stock of %s changed from %lld to %lld\n", k->what, sku, stock, now);
            stock = now;
        }
    }
    assert_int_equal(failures, 0);
}

static void test_bad_sale_bodies(void **state)
{
    (void)state;
    const char *sku = "http-1";
    H_SET_STOCK(daemon_, sku, 50);

    char *sku129 = repeat('s', 129), *oid129 = repeat('o', 129), *big = repeat(' ', MAX_BODY + 100);
    char long_sku[256], long_oid[256], too_big[MAX_BODY + 256];
    snprintf(long_sku, sizeof long_sku, "{\"sku\":\"%s\",\"qty\":1}", sku129);
    snprintf(long_oid, sizeof long_oid, "{\"sku\":\"http-1\",\"qty\":1,\"order_id\":\"%s\"}", oid129);
    snprintf(too_big, sizeof too_big, "{\"sku\":\"http-1\",\"qty\":1}%s", big);

#define BAD(what, body) { what, "POST", "/sale", body, 400, "bad_request" }
    const bad_case cases[] = {
        BAD("malformed JSON", "{\"sku\":\"http-1\",\"qty\":1"),
        BAD("not JSON", "sku=http-1&qty=1"),
        BAD("trailing garbage", "{\"sku\":\"http-1\",\"qty\":1} x"),
        BAD("empty body", ""),
        BAD("array body", "[{\"sku\":\"http-1\",\"qty\":1}]"),
        BAD("string body", "\"http-1\""),
        BAD("null body", "null"),
        BAD("sku a number", "{\"sku\":123,\"qty\":1}"),
        BAD("sku null", "{\"sku\":null,\"qty\":1}"),
        BAD("sku an object", "{\"sku\":{\"a\":1},\"qty\":1}"),
        BAD("qty a string", "{\"sku\":\"http-1\",\"qty\":\"1\"}"),
        BAD("qty a bool", "{\"sku\":\"http-1\",\"qty\":true}"),
        BAD("qty null", "{\"sku\":\"http-1\",\"qty\":null}"),
        BAD("qty missing", "{\"sku\":\"http-1\"}"),
        BAD("qty 0", "{\"sku\":\"http-1\",\"qty\":0}"),
        BAD("qty -1", "{\"sku\":\"http-1\",\"qty\":-1}"),
        BAD("qty most negative", "{\"sku\":\"http-1\",\"qty\":-9223372036854775808}"),
        BAD("qty over sale.max_qty", "{\"sku\":\"http-1\",\"qty\":101}"),
        BAD("qty huge", "{\"sku\":\"http-1\",\"qty\":1000000000000}"),
        BAD("qty over int64", "{\"sku\":\"http-1\",\"qty\":9223372036854775808}"),
        BAD("qty far over int64", "{\"sku\":\"http-1\",\"qty\":1e300}"),
        BAD("qty 1.5", "{\"sku\":\"http-1\",\"qty\":1.5}"),
        BAD("qty 0.5", "{\"sku\":\"http-1\",\"qty\":0.5}"),
        BAD("sku missing", "{\"qty\":1}"),
        BAD("sku empty", "{\"sku\":\"\",\"qty\":1}"),
        BAD("sku 129 bytes", long_sku),
        BAD("sku with a space", "{\"sku\":\"http 1\",\"qty\":1}"),
        BAD("sku with a slash", "{\"sku\":\"http/1\",\"qty\":1}"),
        BAD("sku with braces", "{\"sku\":\"{http-1}\",\"qty\":1}"),
        BAD("sku with unicode escape", "{\"sku\":\"caf\\u00e9\",\"qty\":1}"),
        BAD("sku with raw UTF-8", "{\"sku\":\"caf\xc3\xa9\",\"qty\":1}"),
        BAD("sku with NUL", "{\"sku\":\"http-1\\u0000x\",\"qty\":1}"),
        BAD("sku with newline", "{\"sku\":\"http-1\\n\",\"qty\":1}"),
        BAD("order_id 129 bytes", long_oid),
        BAD("order_id a number", "{\"sku\":\"http-1\",\"qty\":1,\"order_id\":7}"),
        BAD("unit_price a string", "{\"sku\":\"http-1\",\"qty\":1,\"unit_price\":\"9.99\"}"),
        { "body over server.max_body_bytes", "POST", "/sale", too_big, 413, NULL },
        { "GET /sale", "GET", "/sale", NULL, 405, NULL },
        { "PUT /sale", "PUT", "/sale", "{\"sku\":\"http-1\",\"qty\":1}", 405, NULL },
        { "DELETE /sale", "DELETE", "/sale", NULL, 405, NULL },
        { "GET /test/simulate-sale", "GET", "/test/simulate-sale", NULL, 405, NULL },
        { "unknown path", "GET", "/no/such/path", NULL, 404, NULL },
        { "unknown path, POST", "POST", "/sales", "{\"sku\":\"http-1\",\"qty\":1}", 404, NULL },
        { "bad sku on simulate-sale", "POST", "/test/simulate-sale",
          "{\"sku\":\"a b\",\"qty\":1}", 400, "bad_request" },
        { "qty 0 on simulate-sale", "POST", "/test/simulate-sale",
          "{\"sku\":\"http-1\",\"qty\":0}", 400, "bad_request" },
    };
#undef BAD
    run_bad_cases(cases, sizeof cases / sizeof cases[0], sku, 50);
    expect_stock(sku, 50);
    free(sku129);
    free(oid129);
    free(big);
    h_pass();
}

/* The limits themselves are accepted. */
static void test_limits_accepted(void **state)
{
    (void)state;
    h_resp r;
    long long left = -1;
    const char *sku = "http-lim";
    H_SET_STOCK(daemon_, sku, 50);

    /* qty == sale.max_qty is valid: out of stock here, not a bad request. */
    h_sale(daemon_, "/sale", sku, MAX_QTY, NULL, &r);
    H_ASSERT_ERROR(&r, 409, "out_of_stock");
    assert_true(h_jll(r.json, "stock_remaining", &left));
    assert_int_equal(left, 50);
    h_resp_free(&r);

    /* A 128-byte SKU is valid (and unknown). */
    char sku128[129];
    const char *allowed = "AZaz09.:-";
    for (int i = 0; i < 128; i++)
        sku128[i] = allowed[i % 9];
    sku128[128] = '\0';
    h_sale(daemon_, "/sale", sku128, 1, NULL, &r);
    H_ASSERT_ERROR(&r, 409, "out_of_stock");
    h_resp_free(&r);

    /* A 128-byte order_id is valid. */
    char *oid128 = repeat('o', 128);
    h_sale(daemon_, "/sale", sku, 1, oid128, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(h_jstr(r.json, "order_id"), oid128);
    h_resp_free(&r);
    free(oid128);

    /* A body just under server.max_body_bytes is read, not refused. */
    char *pad = repeat(' ', MAX_BODY - 200);
    char body[MAX_BODY];
    snprintf(body, sizeof body, "{\"sku\":\"%s\",%s\"qty\":1}", sku, pad);
    h_http(daemon_, "POST", "/sale", body, &r, NULL);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    free(pad);

    /* unit_price is optional and may be sent. */
    h_http(daemon_, "POST", "/sale", "{\"sku\":\"http-lim\",\"qty\":1,\"unit_price\":9.5}", &r, NULL);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);

    expect_stock(sku, 47);

    /* '_' is one of [A-Za-z0-9._:-] too. */
    h_sale(daemon_, "/sale", "under_score", 1, NULL, &r);
    if (r.status != 409)
        fail_msg("sale of SKU \"under_score\" ('_' is in [A-Za-z0-9._:-]): expected 409 "
                 "out_of_stock, got %ld %s", r.status, r.body);
    H_ASSERT_ERROR(&r, 409, "out_of_stock");
    h_resp_free(&r);
    H_SET_STOCK(daemon_, "under_score", 1);
    assert_int_equal(H_GET_STOCK(daemon_, "under_score"), 1);
    h_pass();
}

static void test_out_of_stock_body(void **state)
{
    (void)state;
    h_resp r;
    long long left = -1;
    H_SET_STOCK(daemon_, "http-3", 2);
    h_sale(daemon_, "/sale", "http-3", 3, "oos-1", &r);
    H_ASSERT_ERROR(&r, 409, "out_of_stock");
    assert_true(h_jll(r.json, "stock_remaining", &left));
    assert_int_equal(left, 2);
    h_resp_free(&r);
    expect_stock("http-3", 2);
    h_pass();
}

static void test_unknown_sku_sale(void **state)
{
    (void)state;
    h_resp r;
    long long left = -1;
    h_sale(daemon_, "/sale", "never-stocked", 1, NULL, &r);
    H_ASSERT_ERROR(&r, 409, "out_of_stock");
    assert_true(h_jll(r.json, "stock_remaining", &left));
    assert_int_equal(left, 0);
    h_resp_free(&r);
    assert_int_equal(H_REDIS_STOCK(redis, "never-stocked"), -1);   /* not created */
    assert_int_equal(H_GET_STOCK(daemon_, "never-stocked"), -1);   /* still 404 */
    h_pass();
}

/* --- read-only endpoints ------------------------------------------------ */

static void test_stock_endpoint(void **state)
{
    (void)state;
    h_resp r;
    long long v = -1;
    H_SET_STOCK(daemon_, "http-2", 7);
    h_http(daemon_, "GET", "/stock/http-2", NULL, &r, NULL);
    assert_int_equal(r.status, 200);
    H_ASSERT_JSON(&r);
    assert_true(h_jkeys(r.json, "sku", "stock", NULL));
    assert_string_equal(h_jstr(r.json, "sku"), "http-2");
    assert_true(h_jll(r.json, "stock", &v));
    assert_int_equal(v, 7);
    h_resp_free(&r);

    H_SET_STOCK(daemon_, "http-2", 0);
    assert_int_equal(H_GET_STOCK(daemon_, "http-2"), 0);   /* 0 is known, not 404 */

    h_http(daemon_, "GET", "/stock/no-such-sku", NULL, &r, NULL);
    H_ASSERT_ERROR(&r, 404, NULL);
    h_resp_free(&r);
    h_pass();
}

static void test_healthz(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_http(daemon_, "GET", "/healthz", NULL, &r, NULL), 200);
    h_resp_free(&r);
    h_pass();
}

static long readyz(h_daemon *d, h_resp *r)
{
    h_resp_free(r);
    return h_http(d, "GET", "/readyz", NULL, r, NULL);
}

/* Poll /readyz until it answers WANT (deadline 10 s). */
static void ready_becomes(h_daemon *d, long want, const char *when)
{
    h_resp r = { 0 };
    double dl = h_deadline(10000);
    while (readyz(d, &r) != want && h_before(dl))
        h_nap();
    if (r.status != want)
        fail_msg("/readyz %s: expected %ld within 10 s, got %ld %s %s", when, want,
                 r.status, r.body, r.err);
    if (want == 503 && r.len == 0)
        fail_msg("/readyz %s: 503 without a reason", when);
    if (want == 503)
        printf("# /readyz %s: %.*s\n", when, (int)strcspn(r.body, "\n"), r.body);
    h_resp_free(&r);
}

static void test_readyz(void **state)
{
    (void)state;
    h_redis *r = h_redis_start(false);
    assert_non_null(r);
    h_daemon *d = h_daemon_start(r, "redis.command_timeout_ms=500", NULL);
    assert_non_null(d);

    ready_becomes(d, 200, "with Redis up");
    assert_int_equal(h_redis_pause(r), 0);
    ready_becomes(d, 503, "with Redis frozen");
    assert_int_equal(h_redis_resume(r), 0);
    ready_becomes(d, 200, "with Redis resumed");
    assert_int_equal(h_redis_stop(r), 0);
    ready_becomes(d, 503, "with Redis stopped");
    h_resp hz;
    assert_int_equal(h_http(d, "GET", "/healthz", NULL, &hz, NULL), 200);  /* still alive */
    h_resp_free(&hz);
    assert_int_equal(h_redis_restart(r), 0);
    ready_becomes(d, 200, "with Redis restarted");
    assert_int_equal(h_daemon_stop(d), 0);
    h_redis_free(r);
    h_pass();
}

/* --- admin -------------------------------------------------------------- */

static void test_admin_auth(void **state)
{
    (void)state;
    h_resp r;
    const char *sku = "http-adm";
    const char *body = "{\"stock\":99}";
    H_SET_STOCK(daemon_, sku, 5);

    h_http(daemon_, "PUT", "/admin/stock/http-adm", body, &r, NULL);
    H_ASSERT_ERROR(&r, 401, NULL);
    h_resp_free(&r);
    h_http(daemon_, "PUT", "/admin/stock/http-adm", body, &r,
           "Authorization: Bearer wrong-token", NULL);
    H_ASSERT_ERROR(&r, 401, NULL);
    h_resp_free(&r);
    h_http(daemon_, "PUT", "/admin/stock/http-adm", body, &r,
           "Authorization: Bearer " H_ADMIN_TOKEN "x", NULL);
    H_ASSERT_ERROR(&r, 401, NULL);
    h_resp_free(&r);
    h_http(daemon_, "PUT", "/admin/stock/http-adm", body, &r,
           "Authorization: Bearer test-toke", NULL);
    H_ASSERT_ERROR(&r, 401, NULL);
    h_resp_free(&r);
    h_http(daemon_, "PUT", "/admin/stock/http-adm", body, &r,
           "Authorization: Basic " H_ADMIN_TOKEN, NULL);
    H_ASSERT_ERROR(&r, 401, NULL);
    h_resp_free(&r);
    h_http(daemon_, "PUT", "/admin/stock/http-adm", body, &r, "Authorization: Bearer ", NULL);
    H_ASSERT_ERROR(&r, 401, NULL);
    h_resp_free(&r);
    expect_stock(sku, 5);

    static const char *const bad[] = {
        "{\"stock\":-1}", "{\"stock\":\"5\"}", "{\"stock\":1.5}", "{\"stock\":null}",
        "{}", "{\"stock\":5", "", "[5]", "{\"stock\":99999999999999999999}",
    };
    int failures = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        h_http(daemon_, "PUT", "/admin/stock/http-adm", bad[i], &r,
               "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
        const char *e = h_jstr(r.json, "error");
        if (r.status != 400 || !e || strcmp(e, "bad_request") != 0 || !h_jstr(r.json, "message")) {
            failures++;
            print_error("PUT /admin/stock %s: expected 400 bad_request, got %ld %s\n",
                        bad[i], r.status, r.body);
        }
        h_resp_free(&r);
    }
    assert_int_equal(failures, 0);
    expect_stock(sku, 5);

    h_http(daemon_, "PUT", "/admin/stock/bad%20sku", "{\"stock\":1}", &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    H_ASSERT_ERROR(&r, 400, "bad_request");
    h_resp_free(&r);

    h_http(daemon_, "PUT", "/admin/stock/http-adm", body, &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    expect_stock(sku, 99);
    h_pass();
}

static void test_admin_without_token_configured(void **state)
{
    (void)state;
    h_resp r;
    H_SET_STOCK(daemon_, "http-notoken", 3);
    h_daemon *d = h_daemon_startv(redis, false, NULL, 0);
    assert_non_null(d);
    h_http(d, "PUT", "/admin/stock/http-notoken", "{\"stock\":9}", &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    H_ASSERT_ERROR(&r, 403, NULL);
    h_resp_free(&r);
    h_http(d, "PUT", "/admin/stock/http-notoken", "{\"stock\":9}", &r, NULL);
    H_ASSERT_ERROR(&r, 403, NULL);
    h_resp_free(&r);
    h_http(d, "PUT", "/admin/stock/http-notoken", "{\"stock\":9}", &r,
           "Authorization: Bearer ", NULL);
    H_ASSERT_ERROR(&r, 403, NULL);
    h_resp_free(&r);
    assert_int_equal(H_GET_STOCK(d, "http-notoken"), 3);    /* reads need no token */
    expect_stock("http-notoken", 3);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- CORS --------------------------------------------------------------- */

static void expect_origin(const h_resp *r, const char *what)
{
    char v[256] = "";
    if (!h_header(r, "Access-Control-Allow-Origin", v, sizeof v) ||
        strcmp(v, "https://x.example") != 0)
        fail_msg("%s: expected Access-Control-Allow-Origin: https://x.example, got \"%s\"; "
                 "headers:\n%s", what, v, r->headers);
}

static void test_cors(void **state)
{
    (void)state;
    h_resp r;
    char v[256];
    h_daemon *d = h_daemon_start(redis, "server.cors_origin=https://x.example", NULL);
    assert_non_null(d);
    H_SET_STOCK(d, "http-cors", 1);

    h_http(d, "GET", "/healthz", NULL, &r, "Origin: https://x.example", NULL);
    assert_int_equal(r.status, 200);
    expect_origin(&r, "GET /healthz");
    h_resp_free(&r);
    h_sale(d, "/sale", "http-cors", 1, NULL, &r);
    assert_int_equal(r.status, 200);
    expect_origin(&r, "POST /sale 200");
    h_resp_free(&r);
    h_sale(d, "/sale", "http-cors", 1, NULL, &r);
    assert_int_equal(r.status, 409);
    expect_origin(&r, "POST /sale 409");
    h_resp_free(&r);
    h_http(d, "POST", "/sale", "{", &r, NULL);
    assert_int_equal(r.status, 400);
    expect_origin(&r, "POST /sale 400");
    h_resp_free(&r);
    h_http(d, "GET", "/stock/http-cors", NULL, &r, NULL);
    expect_origin(&r, "GET /stock");
    h_resp_free(&r);

    h_http(d, "OPTIONS", "/sale", NULL, &r, "Origin: https://x.example",
           "Access-Control-Request-Method: POST",
           "Access-Control-Request-Headers: content-type", NULL);
    if (r.status != 204)
        fail_msg("OPTIONS /sale preflight: expected 204, got %ld; headers:\n%s", r.status,
                 r.headers);
    expect_origin(&r, "OPTIONS /sale");
    assert_true(h_header(&r, "Access-Control-Allow-Methods", v, sizeof v));
    if (strstr(v, "POST") == NULL)
        fail_msg("Access-Control-Allow-Methods: %s (no POST)", v);
    h_resp_free(&r);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* Without server.cors_origin (the default) no CORS header is sent, not even
 * to a preflight. */
static void test_cors_off(void **state)
{
    (void)state;
    h_resp r;
    char v[256];
    h_http(daemon_, "GET", "/healthz", NULL, &r, "Origin: https://x.example", NULL);
    assert_false(h_header(&r, "Access-Control-Allow-Origin", NULL, 0));
    h_resp_free(&r);
    h_sale(daemon_, "/sale", "http-cors", 1, NULL, &r);
    assert_false(h_header(&r, "Access-Control-Allow-Origin", NULL, 0));
    h_resp_free(&r);
    h_http(daemon_, "OPTIONS", "/sale", NULL, &r, "Origin: https://x.example",
           "Access-Control-Request-Method: POST", NULL);
    if (h_header(&r, "Access-Control-Allow-Origin", v, sizeof v))
        fail_msg("preflight with server.cors_origin \"\" answered %ld with "
                 "Access-Control-Allow-Origin: %s", r.status, v);
    h_resp_free(&r);
    h_pass();
}

/* --- the route table ------------------------------------------------------ */

/* Every route of the table (engine/http.c), its Allow header and a method it
 * does not take. */
typedef struct route_case {
    const char *path, *allow, *wrong;
} route_case;

static const route_case route_cases[] = {
    { "/sale", "POST, OPTIONS", "GET" },
    { "/test/simulate-sale", "POST, OPTIONS", "PUT" },
    { "/stock/http-rt", "GET, HEAD, OPTIONS", "POST" },
    { "/healthz", "GET, HEAD, OPTIONS", "DELETE" },
    { "/readyz", "GET, HEAD, OPTIONS", "POST" },
    { "/metrics", "GET, HEAD, OPTIONS", "PUT" },
    { "/rules", "GET, HEAD, OPTIONS", "POST" },
    { "/killswitch", "GET, HEAD, OPTIONS", "DELETE" },
    { "/admin/stock/http-rt", "PUT, OPTIONS", "GET" },
    { "/admin/killswitch", "POST, OPTIONS", "GET" },
    { "/admin/killswitch/sku:http-rt", "DELETE, OPTIONS", "POST" },
    { "/admin/reload", "POST, OPTIONS", "GET" },
};
#define N_ROUTES (sizeof route_cases / sizeof route_cases[0])

/* Header NAME of R is exactly WANT (false with a message otherwise). */
static bool header_is(const h_resp *r, const char *name, const char *want, const char *what)
{
    char v[256] = "";
    if (h_header(r, name, v, sizeof v) && strcmp(v, want) == 0)
        return true;
    print_error("%s: expected %s: %s, got \"%s\"; headers:\n%s\n", what, name, want, v, r->headers);
    return false;
}

/* OPTIONS answers 204 with Allow on every route, with no body; with
 * server.cors_origin the preflight headers come too, and only then. */
static void test_routes_options(void **state)
{
    (void)state;
    h_daemon *cors = h_daemon_start(redis, "server.cors_origin=https://x.example", NULL);
    assert_non_null(cors);
    int failures = 0;
    for (size_t i = 0; i < N_ROUTES; i++) {
        const route_case *c = &route_cases[i];
        char what[128];
        h_resp r;
        snprintf(what, sizeof what, "OPTIONS %s", c->path);
        h_http(daemon_, "OPTIONS", c->path, NULL, &r, NULL);
        bool ok = r.status == 204 && r.len == 0 && header_is(&r, "Allow", c->allow, what) &&
                  !h_header(&r, "Access-Control-Allow-Methods", NULL, 0) &&
                  !h_header(&r, "Content-Length", NULL, 0);
        if (!ok)
            print_error("%s: expected 204, Allow, no body, no CORS, no Content-Length; got %ld "
                        "(%zu bytes)\n%s\n", what, r.status, r.len, r.headers);
        failures += !ok;
        h_resp_free(&r);

        snprintf(what, sizeof what, "OPTIONS %s with server.cors_origin", c->path);
        h_http(cors, "OPTIONS", c->path, NULL, &r, "Origin: https://x.example",
               "Access-Control-Request-Method: POST", NULL);
        ok = r.status == 204 && header_is(&r, "Allow", c->allow, what) &&
             header_is(&r, "Access-Control-Allow-Methods", c->allow, what) &&
             header_is(&r, "Access-Control-Allow-Origin", "https://x.example", what) &&
             header_is(&r, "Access-Control-Allow-Headers", "Content-Type, Authorization", what);
        if (!ok)
            print_error("%s: got %ld\n", what, r.status);
        failures += !ok;
        h_resp_free(&r);
    }
    assert_int_equal(h_daemon_stop(cors), 0);
    assert_int_equal(failures, 0);
    h_pass();
}

/* A method a route does not take: 405 method_not_allowed, Allow as the
 * table says; no token needed to hear it, and nothing changes. */
static void test_routes_wrong_method(void **state)
{
    (void)state;
    H_SET_STOCK(daemon_, "http-rt", 4);
    int failures = 0;
    for (size_t i = 0; i < N_ROUTES; i++) {
        const route_case *c = &route_cases[i];
        char what[128];
        h_resp r;
        snprintf(what, sizeof what, "%s %s", c->wrong, c->path);
        h_http(daemon_, c->wrong, c->path, NULL, &r, NULL);
        const char *e = h_jstr(r.json, "error");
        bool ok = r.status == 405 && e && strcmp(e, "method_not_allowed") == 0 &&
                  header_is(&r, "Allow", c->allow, what);
        if (!ok)
            print_error("%s: expected 405 method_not_allowed, got %ld %s\n", what, r.status, r.body);
        failures += !ok;
        h_resp_free(&r);
    }
    assert_int_equal(failures, 0);
    expect_stock("http-rt", 4);
    h_pass();
}

/* Read one answer's head from FD (and its body only when WITH_BODY) into
 * BUF; the status, -1 on timeout or close. *CLEN: its Content-Length, -1
 * when none. */
static int read_head(int fd, bool with_body, char *buf, size_t len, long *clen)
{
    size_t n = 0;
    double dl = h_deadline(5000);
    char *hend = NULL;
    *clen = -1;
    while (h_before(dl) && n < len - 1) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 100) <= 0)
            continue;
        /* One byte at a time up to the head's end: what follows must still
         * be in the socket for the next read. */
        ssize_t r = recv(fd, buf + n, hend ? len - 1 - n : 1, 0);
        if (r <= 0)
            return -1;
        n += (size_t)r;
        buf[n] = '\0';
        if (!hend && (hend = strstr(buf, "\r\n\r\n")) != NULL) {
            const char *cl = strcasestr(buf, "\r\nContent-Length:");
            *clen = cl ? strtol(cl + 17, NULL, 10) : -1;
            if (!with_body || *clen <= 0)
                break;
        }
        if (hend && (long)(n - (size_t)(hend + 4 - buf)) >= *clen)
            break;
    }
    if (!hend || strncmp(buf, "HTTP/1.1 ", 9) != 0)
        return -1;
    return atoi(buf + 9);
}

/* HEAD on every GET route, all on one keep-alive connection, each followed
 * by a GET on it: the same status and head as GET, a Content-Length, and
 * no body (a body would be read as the next answer's status line). */
static void test_routes_head(void **state)
{
    (void)state;
    H_SET_STOCK(daemon_, "http-rt", 4);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)daemon_->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    int failures = 0;
    for (size_t i = 0; i < N_ROUTES; i++) {
        const route_case *c = &route_cases[i];
        if (strncmp(c->allow, "GET", 3) != 0)
            continue;
        h_resp g;
        h_http(daemon_, "GET", c->path, NULL, &g, NULL);
        char req[256], head[8192], next[65536];
        long clen, nlen;
        snprintf(req, sizeof req, "HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n", c->path);
        assert_int_equal(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
        int st = read_head(fd, false, head, sizeof head, &clen);
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", c->path);
        assert_int_equal(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
        int st2 = read_head(fd, true, next, sizeof next, &nlen);
        /* /healthz and /stock/{sku} do not change between the two: same length. */
        bool stable = strcmp(c->path, "/healthz") == 0 || strncmp(c->path, "/stock/", 7) == 0;
        bool ok = st == g.status && clen >= 0 && st2 == g.status &&
                  (!stable || (clen == (long)g.len && nlen == clen));
        printf("# HEAD %-16s -> %d, Content-Length %ld; then GET on the connection -> %d (%ld bytes)\n",
               c->path, st, clen, st2, nlen);
        if (!ok)
            print_error("HEAD %s: expected %ld with a Content-Length (%zu for GET) and no body, "
                        "then GET %ld on the same connection; got %d (Content-Length %ld), then %d\n"
                        "HEAD answered:\n%s\nthen:\n%.300s\n", c->path, g.status, g.len, g.status,
                        st, clen, st2, head, next);
        failures += !ok;
        h_resp_free(&g);
    }
    /* HEAD is GET's: refused where GET is, still without a body. */
    char head[4096], next[4096];
    long clen, nlen;
    const char *req = "HEAD /admin/reload HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    int st = read_head(fd, false, head, sizeof head, &clen);
    int st2 = read_head(fd, true, next, sizeof next, &nlen);
    printf("# HEAD /admin/reload -> %d, then GET /healthz on the connection -> %d\n", st, st2);
    if (st != 405 || !strstr(head, "\r\nAllow: POST, OPTIONS\r\n") || st2 != 200)
        failures++, print_error("HEAD /admin/reload: expected 405 with Allow: POST, OPTIONS and no "
                                "body, then 200; got %d, then %d:\n%s\n%s\n", st, st2, head, next);
    close(fd);
    assert_int_equal(failures, 0);
    h_pass();
}

/* --- main --------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_healthz),
        T(test_stock_endpoint),
        T(test_bad_sale_bodies),
        T(test_limits_accepted),
        T(test_out_of_stock_body),
        T(test_unknown_sku_sale),
        T(test_admin_auth),
        T(test_admin_without_token_configured),
        T(test_cors),
        T(test_cors_off),
        T(test_readyz),
        T(test_routes_options),
        T(test_routes_wrong_method),
        T(test_routes_head),
    };
    static const char *const sets[] = { "server.max_body_bytes=" H_STR(MAX_BODY),
                                        "sale.max_qty=" H_STR(MAX_QTY), NULL };
    h_group_use(&redis, &daemon_, sets);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
