/* test_status_page.c -- GET /status.json, the status page's files and
 * `nerve status` (issues 13 and 14).
 *
 * The page itself is driven in a real browser by
 * tests/browser/test_status_page.sh; this file pins what the browser
 * relies on: the document's numbers move with the test's own sales and
 * kills, the page's headers (CSP without inline script, nosniff, type,
 * ETag) and size, the same-origin reset the page sends, and the command.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AUTH "Authorization: Bearer " H_ADMIN_TOKEN

static h_redis *redis;
static h_daemon *daemon_;

static cJSON *status_doc(h_resp *r) {
    assert_int_equal(h_http(daemon_, "GET", "/status.json", NULL, r, NULL), 200);
    H_ASSERT_JSON(r);
    return r->json;
}

static double sum_window(const cJSON *sales) {
    double s = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(sales, "per_second")) s += v->valuedouble;
    return s;
}

/* First sales move the per-second series, the last minute and the top
 * SKUs (with their stock from Redis); duplicates and refusals do not. */
static void test_sales_window(void **state) {
    (void)state;
    h_resp r;
    cJSON *st = status_doc(&r);
    assert_true(h_jkeys(st, "version", "instance", "now", "uptime_seconds", "ready", "sales",
                        "killswitch", "rules", "bus", NULL));
    const cJSON *sales = cJSON_GetObjectItem(st, "sales");
    assert_true(h_jkeys(sales, "answers", "window_seconds", "per_second", "last_minute",
                        "top_skus", NULL));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(sales, "per_second")), 300);
    double before = sum_window(sales);
    long long ok_before = 0;
    assert_true(h_jll(cJSON_GetObjectItem(sales, "answers"), "ok", &ok_before));
    assert_int_equal(h_jbool(cJSON_GetObjectItem(st, "ready"), "ready"), 1);
    h_resp_free(&r);

    H_SET_STOCK(daemon_, "sp-hot", 100);
    H_SET_STOCK(daemon_, "sp-cold", 100);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(h_sale(daemon_, "/sale", "sp-hot", 2, NULL, &r), 200);
        h_resp_free(&r);
    }
    assert_int_equal(h_sale(daemon_, "/sale", "sp-cold", 1, "sp-o1", &r), 200);
    h_resp_free(&r);
    assert_int_equal(h_sale(daemon_, "/sale", "sp-cold", 1, "sp-o1", &r), 200); /* duplicate */
    h_resp_free(&r);
    assert_int_equal(h_sale(daemon_, "/sale", "sp-cold", 500, NULL, &r), 409);
    h_resp_free(&r);

    st = status_doc(&r);
    sales = cJSON_GetObjectItem(st, "sales");
    assert_true(sum_window(sales) == before + 7);
    long long v = 0;
    assert_true(h_jll(sales, "last_minute", &v) && v >= 7);
    assert_true(h_jll(cJSON_GetObjectItem(sales, "answers"), "ok", &v) && v == ok_before + 7);
    const cJSON *top = cJSON_GetObjectItem(sales, "top_skus");
    const cJSON *hot = cJSON_GetArrayItem(top, 0), *cold = cJSON_GetArrayItem(top, 1);
    assert_non_null(hot);
    assert_non_null(cold);
    assert_true(h_jkeys(hot, "sku", "units", "sales", "stock", NULL));
    assert_string_equal(h_jstr(hot, "sku"), "sp-hot");
    assert_true(h_jll(hot, "units", &v) && v == 12);
    assert_true(h_jll(hot, "sales", &v) && v == 6);
    assert_true(h_jll(hot, "stock", &v) && v == 88);
    assert_int_equal(v, H_GET_STOCK(daemon_, "sp-hot"));
    assert_string_equal(h_jstr(cold, "sku"), "sp-cold");
    assert_true(h_jll(cold, "units", &v) && v == 1);
    assert_true(h_jll(cold, "stock", &v) && v == 99);
    h_resp_free(&r);
    h_pass();
}

/* An engaged kill is in the document with its record and age; a hostile
 * reason comes back exactly as it went in (JSON-escaped, never altered). */
static void test_kills(void **state) {
    (void)state;
    static const char reason[] = "<script>alert(1)</script> \\\" \\u001b[31m";
    char body[256];
    snprintf(body, sizeof body, "{\"scope\":\"sku:sp-kill\",\"reason\":\"%s\"}", reason);
    h_resp r;
    assert_int_equal(h_http(daemon_, "POST", "/admin/killswitch", body, &r, AUTH, NULL), 200);
    h_resp_free(&r);
    cJSON *st = status_doc(&r);
    const cJSON *k, *found = NULL;
    cJSON_ArrayForEach(k, cJSON_GetObjectItem(cJSON_GetObjectItem(st, "killswitch"), "engaged")) {
        if (strcmp(h_jstr(k, "scope"), "sku:sp-kill") == 0) found = k;
    }
    assert_non_null(found);
    assert_string_equal(h_jstr(found, "reason"), "<script>alert(1)</script> \" \x1b[31m");
    const cJSON *age = cJSON_GetObjectItem(found, "age_seconds");
    assert_true(cJSON_IsNumber(age) && age->valuedouble >= 0 && age->valuedouble < 60);
    assert_non_null(h_jstr(found, "state"));
    h_resp_free(&r);

    /* nerve status shows it, control characters replaced. */
    h_run run;
    const char *const args[] = { "status", "--url", daemon_->base, NULL };
    assert_int_equal(h_run_nerve(&run, 10000, NULL, args), 0);
    if (!strstr(run.out, "sku:sp-kill") ||
        !strstr(run.out, "reason: <script>alert(1)</script> \" ?[31m") || strchr(run.out, 0x1b))
        fail_msg("nerve status output:\n%s", run.out);
    h_run_free(&run);

    assert_int_equal(h_http(daemon_, "DELETE", "/admin/killswitch/sku:sp-kill", NULL, &r, AUTH, NULL),
                     200);
    h_resp_free(&r);
    h_pass();
}

/* The page and its files: types, CSP without inline script or style,
 * nosniff, an ETag answered with 304, under 100 KiB in all; the HTML holds
 * no inline script, style or handler. */
static void test_page_files(void **state) {
    (void)state;
    static const struct {
        const char *path, *type;
    } files[] = {
        { "/status", "text/html; charset=utf-8" },
        { "/status/status.js", "text/javascript; charset=utf-8" },
        { "/status/status.css", "text/css; charset=utf-8" },
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        h_resp r;
        char v[512], etag[64];
        assert_int_equal(h_http(daemon_, "GET", files[i].path, NULL, &r, NULL), 200);
        assert_true(h_header(&r, "Content-Type", v, sizeof v));
        assert_string_equal(v, files[i].type);
        assert_true(h_header(&r, "Content-Security-Policy", v, sizeof v));
        if (!strstr(v, "default-src 'none'") || !strstr(v, "script-src 'self'") ||
            !strstr(v, "style-src 'self'") || strstr(v, "unsafe") || strstr(v, "http"))
            fail_msg("%s: CSP %s", files[i].path, v);
        assert_true(h_header(&r, "X-Content-Type-Options", v, sizeof v));
        assert_string_equal(v, "nosniff");
        assert_true(h_header(&r, "ETag", etag, sizeof etag));
        total += r.len;
        if (i == 0) {
            assert_non_null(strstr(r.body, "<script src=\"/status/status.js\""));
            assert_non_null(strstr(r.body, "href=\"/status/status.css\""));
            /* Every <script> has a src; no style attribute, no handler. */
            for (const char *p = r.body; (p = strstr(p, "<script")); p++)
                assert_true(strncmp(p, "<script src=", 12) == 0);
            assert_null(strstr(r.body, "<style"));
            assert_null(strstr(r.body, " style="));
            assert_null(strstr(r.body, " onclick="));
            assert_null(strstr(r.body, " onload="));
            assert_null(strstr(r.body, "//"));
        }
        h_resp_free(&r);
        char inm[96];
        snprintf(inm, sizeof inm, "If-None-Match: %s", etag);
        assert_int_equal(h_http(daemon_, "GET", files[i].path, NULL, &r, inm, NULL), 304);
        assert_int_equal(r.len, 0);
        h_resp_free(&r);
    }
    if (total >= 100 * 1024) fail_msg("first load %zu bytes, over 100 KiB", total);
    h_resp r;
    assert_int_equal(h_http(daemon_, "GET", "/status/nope.js", NULL, &r, NULL), 404);
    H_ASSERT_ERROR(&r, 404, "not_found");
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "POST", "/status", "{}", &r, NULL), 405);
    h_resp_free(&r);
    h_pass();
}

/* The page's reset: a browser sends Origin on a DELETE, its own. An admin
 * route takes it with the token; another origin is still refused, and a
 * route without a token (a sale) keeps the strict check. */
static void test_same_origin_reset(void **state) {
    (void)state;
    char origin[96], evil[] = "Origin: http://evil.example";
    snprintf(origin, sizeof origin, "Origin: %s", daemon_->base);
    h_resp r;
    assert_int_equal(h_http(daemon_, "POST", "/admin/killswitch",
                            "{\"scope\":\"sku:sp-origin\",\"reason\":\"r\"}", &r, AUTH, NULL),
                     200);
    h_resp_free(&r);
    const char *del = "/admin/killswitch/sku%3Asp-origin";
    const char *body = "{\"reason\":\"from the page\",\"actor\":\"status page\"}";
    assert_int_equal(h_http(daemon_, "DELETE", del, body, &r, evil, AUTH, NULL), 403);
    H_ASSERT_ERROR(&r, 403, "forbidden_origin");
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "DELETE", del, body, &r, origin,
                            "Authorization: Bearer wrong", NULL),
                     401);
    H_ASSERT_ERROR(&r, 401, "unauthorized");
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "GET", "/killswitch", NULL, &r, NULL), 200);
    assert_non_null(strstr(r.body, "sku:sp-origin"));
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "DELETE", del, body, &r, origin, AUTH, NULL), 200);
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "GET", "/killswitch", NULL, &r, NULL), 200);
    assert_null(strstr(r.body, "sku:sp-origin"));
    h_resp_free(&r);
    H_SET_STOCK(daemon_, "sp-origin", 5);
    assert_int_equal(h_http(daemon_, "POST", "/sale", "{\"sku\":\"sp-origin\",\"qty\":1}", &r,
                            origin, NULL),
                     403);
    H_ASSERT_ERROR(&r, 403, "forbidden_origin");
    h_resp_free(&r);
    h_pass();
}

/* nerve status: one screen (exit 0 when ready), --json, the URL from the
 * config's server.listen, and its errors. */
static void test_status_command(void **state) {
    (void)state;
    h_run run;
    const char *const text[] = { "status", "--url", daemon_->base, NULL };
    assert_int_equal(h_run_nerve(&run, 10000, NULL, text), 0);
    static const char *const lines[] = { "nerve       ", "redis       up", "bus         ",
                                         "rules       generation ", "sales       ",
                                         "kills       ", "queue       ", "ledger      lag " };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        if (!strstr(run.out, lines[i])) fail_msg("no '%s' in:\n%s", lines[i], run.out);
    assert_non_null(strstr(run.out, ", ready\n"));
    h_run_free(&run);

    const char *const json[] = { "status", "--url", daemon_->base, "--json", NULL };
    assert_int_equal(h_run_nerve(&run, 10000, NULL, json), 0);
    assert_non_null(run.json);
    assert_non_null(cJSON_GetObjectItem(run.json, "sales"));
    h_run_free(&run);

    char listen[64];
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", daemon_->port);
    const char *const cfg[] = { "status", "-c", "config/nerve.yaml", "--set", listen, NULL };
    assert_int_equal(h_run_nerve(&run, 10000, NULL, cfg), 0);
    assert_non_null(strstr(run.out, "redis       up"));
    h_run_free(&run);

    char gone[64];
    snprintf(gone, sizeof gone, "http://127.0.0.1:%d", h_free_port());
    const char *const down[] = { "status", "--url", gone, NULL };
    assert_int_equal(h_run_nerve(&run, 10000, NULL, down), 1);
    if (!strstr(run.err, "nerve status: no answer from ")) fail_msg("stderr: %s", run.err);
    h_run_free(&run);

    const char *const bad[] = { "status", "--url", "ftp://x", NULL };
    assert_int_equal(h_run_nerve(&run, 10000, NULL, bad), 2);
    h_run_free(&run);
    const char *const extra[] = { "status", "--bogus", NULL };
    assert_int_equal(h_run_nerve(&run, 10000, NULL, extra), 2);
    h_run_free(&run);
    const char *const help[] = { "status", "--help", NULL };
    assert_int_equal(h_run_nerve(&run, 10000, NULL, help), 0);
    assert_non_null(strstr(run.out, "usage: nerve status"));
    h_run_free(&run);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_sales_window), T(test_kills),          T(test_page_files),
        T(test_same_origin_reset), T(test_status_command),
    };
    h_group_use(&redis, &daemon_, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
