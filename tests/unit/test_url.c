/* test_url.c -- URL parsing over libcurl's URL API (url.h) and its agreement
 * with the curl-free rds_parse_url the sale path uses: every row goes
 * through both, and they must accept and reject the same URLs and read the
 * same host, port, database, user and password. No network.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "nerve/rds.h"
#include "nerve/url.h"

typedef struct row {
    const char *url;
    int rc;
    const char *host, *user, *pass;
    int port, db;
    const char *why;            /* a word the error must contain (rc -1) */
} row;

#define OK(u, h, p, d, us, pw) { u, 0, h, us, pw, p, d, NULL }
#define BAD(u, w) { u, -1, NULL, NULL, NULL, 0, 0, w }

static const row rows[] = {
    OK("redis://127.0.0.1:6379/0", "127.0.0.1", 6379, 0, "", ""),
    OK("redis://h", "h", 6379, 0, "", ""),
    OK("redis://h/", "h", 6379, 0, "", ""),
    OK("redis://h:7000", "h", 7000, 0, "", ""),
    OK("redis://h/4", "h", 6379, 4, "", ""),
    OK("redis://h:65535/100000", "h", 65535, 100000, "", ""),
    OK("redis://:secret@h:6379/1", "h", 6379, 1, "", "secret"),
    OK("redis://secret@h:6379/1", "h", 6379, 1, "", "secret"),
    OK("redis://nerve:pw@h:6379/3", "h", 6379, 3, "nerve", "pw"),
    OK("redis://us%40er:p%3Aa%2Fss%25@h:1/2", "h", 1, 2, "us@er", "p:a/ss%"),
    OK("redis://[::1]:6380/2", "::1", 6380, 2, "", ""),
    OK("redis://[::1]", "::1", 6379, 0, "", ""),
    BAD("http://h:6379/0", "redis://"),
    BAD("rediss://h/0", "redis://"),
    BAD("", "redis://"),
    BAD("redis://", "host"),
    BAD("redis:///0", "host"),
    BAD("redis://:pw@/0", "host"),
    BAD("redis://h:0/0", "port"),
    BAD("redis://h:65536/0", "port"),
    BAD("redis://h:99999/0", "port"),
    BAD("redis://h:-1/0", "port"),
    BAD("redis://h:+1/0", "port"),
    BAD("redis://h:abc/0", "port"),
    BAD("redis://h:/0", "port"),
    BAD("redis://h:6379x/0", "port"),
    BAD("redis://h:1/x", "database"),
    BAD("redis://h:1/-1", "database"),
    BAD("redis://h:1/+3", "database"),
    BAD("redis://h:1/1x", "database"),
    BAD("redis://h:1/100001", "database"),
    BAD("redis://h:1/99999999999999999999", "database"),
    BAD("redis://h:1/0/junk", "database"),
    BAD("redis://:%zz@h", "password"),
    BAD("redis://:%4@h", "password"),
};

static void test_redis_rows(void **state) {
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const row *r = &rows[i];
        url_redis u;
        rds_opts o;
        memset(&o, 0, sizeof o);
        char e1[256] = "", e2[256] = "";
        int rc1 = url_parse_redis(r->url, &u, e1, sizeof e1);
        int rc2 = rds_parse_url(r->url, &o, e2, sizeof e2);
        int ok = rc1 == r->rc && rc2 == r->rc;
        if (ok && r->rc == 0)
            ok = !strcmp(u.host, r->host) && u.port == r->port && u.db == r->db && !strcmp(u.user, r->user) &&
                 !strcmp(u.pass, r->pass) && !strcmp(o.host, r->host) && o.port == r->port && o.db == r->db &&
                 !strcmp(o.user, r->user) && !strcmp(o.pass, r->pass);
        if (ok && r->rc != 0) ok = strstr(e1, r->why) != NULL && strstr(e2, r->why) != NULL;
        if (!ok) {
            bad++;
            print_error("%s: want rc %d%s%s\n  url_parse_redis: rc %d host \"%s\" port %d db %d user \"%s\" "
                        "pass \"%s\" err \"%s\"\n  rds_parse_url:   rc %d host \"%s\" port %d db %d user \"%s\" "
                        "pass \"%s\" err \"%s\"\n", r->url, r->rc, r->why ? " naming " : "", r->why ? r->why : "",
                        rc1, rc1 ? "" : u.host, u.port, u.db, u.user, u.pass, e1, rc2, rc2 ? "" : o.host, o.port,
                        o.db, o.user, o.pass, e2);
        }
    }
    assert_int_equal(bad, 0);
}

/* The query and fragment are refused by the curl parser with their own
 * message; rds_parse_url refuses them too (as a database that is not a
 * number). */
static void test_redis_junk_after_path(void **state) {
    (void)state;
    const char *urls[] = { "redis://h:1/0?x=1", "redis://h:1/0#f", "redis://h:1/?x" };
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        url_redis u;
        rds_opts o;
        char err[256] = "";
        assert_int_equal(url_parse_redis(urls[i], &u, err, sizeof err), -1);
        if (!strstr(err, "nothing may follow") && !strstr(err, "database")) fail_msg("%s: %s", urls[i], err);
        assert_int_equal(rds_parse_url(urls[i], &o, err, sizeof err), -1);
    }
}

static void test_http(void **state) {
    (void)state;
    const char *good[] = { "http://h", "https://h/", "http://127.0.0.1:8080/hook?x=1", "HTTPS://h:443/p",
                           "http://[::1]:9/p" };
    const char *bad[][2] = {
        { "ftp://h/", "http" }, { "h/hook", "http" }, { "", "http" }, { "http://", "host" },
        { "http://:80/", "host" }, { "http://h:0/", "port" }, { "http://h:65536/", "port" },
        { "http://h:99999/", "port" }, { "https://h:x/", "port" },
    };
    char err[256];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (url_check_http(good[i], err, sizeof err) != 0) fail_msg("%s: refused: %s", good[i], err);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        if (url_check_http(bad[i][0], err, sizeof err) != -1) fail_msg("%s: accepted", bad[i][0]);
        if (!strcasestr(err, bad[i][1])) fail_msg("%s: message \"%s\" should name %s", bad[i][0], err, bad[i][1]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redis_rows),
        cmocka_unit_test(test_redis_junk_after_path),
        cmocka_unit_test(test_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
