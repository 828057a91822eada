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

/* redis-sentinel:// (url.h): the sentinels, the master name, and the
 * primary's user, password and db read with url_parse_redis' own rules. */
static void test_sentinel(void **state) {
    (void)state;
    url_sentinel u;
    char err[256] = "";
    if (url_parse_sentinel("redis-sentinel://nerve:p%40w@s1,s2:26380,[::1]:1,10.0.0.4/my-master.1/3",
                           &u, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(u.n, 4);
    assert_string_equal(u.sentinels[0].host, "s1");
    assert_int_equal(u.sentinels[0].port, 26379);
    assert_string_equal(u.sentinels[1].host, "s2");
    assert_int_equal(u.sentinels[1].port, 26380);
    assert_string_equal(u.sentinels[2].host, "::1");
    assert_int_equal(u.sentinels[2].port, 1);
    assert_string_equal(u.sentinels[3].host, "10.0.0.4");
    assert_string_equal(u.master, "my-master.1");
    assert_string_equal(u.user, "nerve");
    assert_string_equal(u.pass, "p@w");
    assert_int_equal(u.db, 3);
    assert_int_equal(url_parse_sentinel("redis-sentinel://:pw@h/m", &u, err, sizeof err), 0);
    assert_string_equal(u.pass, "pw");
    assert_int_equal(u.db, 0);
    assert_int_equal(u.n, 1);

    const char *bad[][2] = {
        { "redis://h/m", "redis-sentinel://" },
        { "redis-sentinel://h", "master_name" },
        { "redis-sentinel:///m", "sentinel 1: missing" },
        { "redis-sentinel://h,/m", "sentinel 2: missing" },
        { "redis-sentinel://,h/m", "sentinel 1: missing" },
        { "redis-sentinel://h:0/m", "port" },
        { "redis-sentinel://h:65536/m", "port" },
        { "redis-sentinel://h:x/m", "port" },
        { "redis-sentinel://::1/m", "brackets" },
        { "redis-sentinel://h/", "master name" },
        { "redis-sentinel://h/bad name", "master name" },
        { "redis-sentinel://h/m/x", "database" },
        { "redis-sentinel://h/m/1/2", "database" },
        { "redis-sentinel://h/m?x=1", "master name" },
        { "redis-sentinel://:%zz@h/m", "password" },
        { "redis-sentinel://a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q/m", "more than 16" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        if (url_parse_sentinel(bad[i][0], &u, err, sizeof err) != -1) fail_msg("%s: accepted", bad[i][0]);
        if (!strstr(err, bad[i][1])) fail_msg("%s: message \"%s\" should name %s", bad[i][0], err, bad[i][1]);
        if (strstr(err, "zz")) fail_msg("%s: message echoes the URL: %s", bad[i][0], err);
    }
    /* A password, however long, is never echoed; an over-long one is refused. */
    char big[1200];
    snprintf(big, sizeof big, "redis-sentinel://:%0900d@h/m", 7);
    assert_int_equal(url_parse_sentinel(big, &u, err, sizeof err), -1);
    assert_null(strstr(err, "0000"));
}

/* A sentinel's host:port (redis.sentinels entries). */
static void test_hostport(void **state) {
    (void)state;
    char host[256], err[256];
    int port;
    assert_int_equal(url_parse_hostport("s1:26379", 0, host, sizeof host, &port, err, sizeof err), 0);
    assert_string_equal(host, "s1");
    assert_int_equal(port, 26379);
    assert_int_equal(url_parse_hostport("[::1]:7", 0, host, sizeof host, &port, err, sizeof err), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 7);
    assert_int_equal(url_parse_hostport("s1", 26379, host, sizeof host, &port, err, sizeof err), 0);
    assert_int_equal(port, 26379);
    const char *bad[] = { "s1", "", "s1:", "s1:0", ":1", "s1:1/x", "u@s1:1", "a b:1", "::1:5", "s1:1,s2:2" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (url_parse_hostport(bad[i], 0, host, sizeof host, &port, err, sizeof err) != -1)
            fail_msg("\"%s\": accepted", bad[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redis_rows),
        cmocka_unit_test(test_redis_junk_after_path),
        cmocka_unit_test(test_http),
        cmocka_unit_test(test_sentinel),
        cmocka_unit_test(test_hostport),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
