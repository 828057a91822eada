/* bench_reload.c -- how long a reload of a large rule set takes.
 *
 *   $(BUILD)/bench/bench_reload [--rules N] [--runs R] [--dir DIR] [--config FILE]
 *   $(BUILD)/bench/bench_reload --http URL [--token T] [--runs R]
 *   $(BUILD)/bench/bench_reload --http URL [--token T] --every-ms MS --for-s S
 *
 * In-process (the default): writes N (default 100) small valid rule files,
 * each with a distinct name and one fixture, into DIR (a fresh temporary
 * directory, removed at exit, when --dir is not given; with --dir the
 * directory must exist and the files are kept, so that run.sh can start a
 * daemon on them), builds a cfg with cfg_load(FILE, "rules.dir=DIR") (FILE
 * default config/nerve.yaml) and times rules_set_load() -- read, compile in a
 * fresh sandbox, validate, run the fixtures: everything a reload does before
 * the swap -- R times (default 20) after one untimed load. Prints one line:
 *
 *   rules_set_load: 100 rules, 20 runs: min 11.902 ms, median 12.311 ms, max 14.020 ms
 *
 * --http: POSTs URL (a daemon's /admin/reload) with `Authorization: Bearer T`
 * over one keep-alive connection (libcurl). With --runs, R reloads back to
 * back, timed from the request sent to the answer read:
 *
 *   POST /admin/reload: 10 runs: min 14.100 ms, median 15.000 ms, max 17.900 ms, 0 failed
 *
 * With --every-ms, one reload every MS milliseconds (on a fixed schedule that
 * skips, rather than bunches, ticks missed while a reload was running) for S
 * seconds -- the background load of run.sh's "hot SKU during reloads":
 *
 *   reloads: 98 done, 0 failed; min 9.800 ms, median 15.200 ms, max 40.300 ms
 *
 * A reload "failed" when the answer is not a 200 (or none came). The first
 * failure's status and body go to stderr.
 *
 * Exit status: 0 when everything loaded / every reload answered 200; 1 when a
 * load or a reload failed; 2 on bad usage or a setup error.
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#include <curl/curl.h>

#include "nerve/config.h"
#include "nerve/rules.h"

#define MAX_RULES   10000
#define MAX_RUNS    100000
#define BODY_MAX    1024        /* bytes of an answer kept for the error message */

typedef struct opts {
    long rules;
    long runs;
    const char *dir;
    const char *config;
    const char *url;
    const char *token;
    long every_ms;
    long for_s;
} opts;

/* Sorts V (N > 0) and prints "min A ms, median B ms, max C ms". */
static void print_summary(double *v, size_t n)
{
    double med;

    qsort(v, n, sizeof(*v), bench_cmp_double);
    med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    printf("min %.3f ms, median %.3f ms, max %.3f ms", v[0], med, v[n - 1]);
}

/* strtol with end pointer and range: 0, or -1 when S is not an integer in
 * MIN..MAX. */
static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_reload [--rules N] [--runs R] [--dir DIR] [--config FILE]\n"
            "       bench_reload --http URL [--token T] [--runs R]\n"
            "       bench_reload --http URL [--token T] --every-ms MS --for-s S\n");
}

static int known_option(const char *a)
{
    static const char *const names[] = {
        "--rules", "--runs", "--every-ms", "--for-s", "--dir", "--config", "--http", "--token",
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(a, names[i]) == 0)
            return 1;
    return 0;
}

static int parse_args(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof(*o));
    o->rules = 100;
    o->runs = -1;
    o->config = "config/nerve.yaml";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (!known_option(a)) {
            fprintf(stderr, "bench_reload: unknown option %s\n", a);
            usage(stderr);
            return -1;
        }
        if (v == NULL) {
            fprintf(stderr, "bench_reload: %s: missing value\n", a);
            return -1;
        }
        if (strcmp(a, "--rules") == 0)
            bad = bench_parse_long(v, 1, MAX_RULES, &o->rules);
        else if (strcmp(a, "--runs") == 0)
            bad = bench_parse_long(v, 1, MAX_RUNS, &o->runs);
        else if (strcmp(a, "--every-ms") == 0)
            bad = bench_parse_long(v, 1, 3600000, &o->every_ms);
        else if (strcmp(a, "--for-s") == 0)
            bad = bench_parse_long(v, 1, 86400, &o->for_s);
        else if (strcmp(a, "--dir") == 0)
            o->dir = v;
        else if (strcmp(a, "--config") == 0)
            o->config = v;
        else if (strcmp(a, "--http") == 0)
            o->url = v;
        else
            o->token = v;               /* --token: known_option() let nothing else through */
        if (bad) {
            fprintf(stderr, "bench_reload: %s: bad value '%s'\n", a, v);
            return -1;
        }
        i++;
    }
    if ((o->every_ms > 0) != (o->for_s > 0)) {
        fprintf(stderr, "bench_reload: --every-ms and --for-s go together\n");
        return -1;
    }
    if (o->every_ms > 0 && (o->url == NULL || o->runs > 0)) {
        fprintf(stderr, "bench_reload: --every-ms needs --http and excludes --runs\n");
        return -1;
    }
    if (o->runs < 0)
        o->runs = o->url ? 10 : 20;
    return 0;
}

/* ---- in-process: rules_set_load ------------------------------------------ */

/* Rule I of the generated set: a stock threshold of its own, like the
 * inventory rule an analyst would copy, with one fixture that fires it. */
static int write_rule(const char *dir, long i)
{
    char path[4096];
    FILE *f;
    int rc;

    if (snprintf(path, sizeof(path), "%s/bench_%05ld.lua", dir, i) >= (int)sizeof(path))
        return -1;
    f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f,
            "-- generated by bench_reload: rule %ld\n"
            "local THRESHOLD = %ld\n"
            "\n"
            "return {\n"
            "  name = \"bench_rule_%05ld\",\n"
            "  description = \"alert when a stock falls to %ld\",\n"
            "  on = { \"inventory_events\" },\n"
            "  evaluate = function(event, ctx)\n"
            "    if event.type ~= \"stock_changed\" or type(event.stock_remaining) ~= \"number\" then\n"
            "      return nil\n"
            "    end\n"
            "    if event.stock_remaining == THRESHOLD then\n"
            "      return { action = \"alert\", level = \"info\", scope = \"sku:\" .. tostring(event.sku),\n"
            "               reason = string.format(\"stock of %%s is %%d\", tostring(event.sku), THRESHOLD) }\n"
            "    end\n"
            "    return nil\n"
            "  end,\n"
            "  tests = {\n"
            "    { channel = \"inventory_events\",\n"
            "      event = { type = \"stock_changed\", sku = \"A\", stock_remaining = THRESHOLD },\n"
            "      expect = { { action = \"alert\", level = \"info\", scope = \"sku:A\" } } },\n"
            "  },\n"
            "}\n",
            i, 1000000 + i, i, 1000000 + i);
    rc = ferror(f) ? -1 : 0;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int bench_load(const opts *o)
{
    char tmpl[] = "/tmp/bench_reload.XXXXXX";
    const char *dir = o->dir;
    char set[4200];
    char *sets[1] = { set };
    char *errs = NULL;
    double *ms = NULL;
    cfg *c = NULL;
    int rc = 2;

    if (dir == NULL && (dir = mkdtemp(tmpl)) == NULL) {
        fprintf(stderr, "bench_reload: mkdtemp: %s\n", strerror(errno));
        return 2;
    }
    for (long i = 0; i < o->rules; i++) {
        if (write_rule(dir, i) != 0) {
            fprintf(stderr, "bench_reload: cannot write rule %ld into %s: %s\n", i, dir,
                    strerror(errno));
            goto out;
        }
    }
    if (snprintf(set, sizeof(set), "rules.dir=%s", dir) >= (int)sizeof(set)) {
        fprintf(stderr, "bench_reload: directory name too long\n");
        goto out;
    }
    c = cfg_load(o->config, sets, 1, &errs);
    if (c == NULL) {
        fprintf(stderr, "bench_reload: %s", errs ? errs : "cannot load the config\n");
        goto out;
    }
    ms = calloc((size_t)o->runs, sizeof(*ms));
    if (ms == NULL) {
        fprintf(stderr, "bench_reload: out of memory\n");
        goto out;
    }
    rc = 1;
    for (long i = -1; i < o->runs; i++) {       /* run -1 warms the page cache */
        double t0 = bench_now_ms();
        rules_set *s = rules_set_load(c, &errs);
        double t1 = bench_now_ms();

        if (s == NULL) {
            fprintf(stderr, "bench_reload: rules_set_load failed:\n%s",
                    errs ? errs : "(no message)\n");
            goto out;
        }
        if (rules_set_count(s) != (size_t)o->rules) {
            fprintf(stderr, "bench_reload: loaded %zu rules, expected %ld\n", rules_set_count(s),
                    o->rules);
            rules_set_unref(s);
            goto out;
        }
        rules_set_unref(s);
        if (i >= 0)
            ms[i] = t1 - t0;
    }
    printf("rules_set_load: %ld rules, %ld runs: ", o->rules, o->runs);
    print_summary(ms, (size_t)o->runs);
    printf("\n");
    rc = 0;
out:
    free(ms);
    free(errs);
    cfg_free(c);
    if (o->dir == NULL)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}

/* ---- over HTTP: POST /admin/reload --------------------------------------- */

typedef struct answer {
    char body[BODY_MAX];
    size_t len;
} answer;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    answer *a = ud;
    size_t len = size * n, room = sizeof(a->body) - 1 - a->len;

    if (len < room)
        room = len;
    memcpy(a->body + a->len, p, room);
    a->len += room;
    a->body[a->len] = '\0';
    return len;
}

/* One POST; returns the HTTP status (0 when no answer) and reports the first
 * failure on stderr. */
static long post_reload(CURL *h, answer *a, long *failures)
{
    long status = 0;
    CURLcode cc;

    a->len = 0;
    a->body[0] = '\0';
    cc = curl_easy_perform(h);
    if (cc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        if ((*failures)++ == 0)
            fprintf(stderr, "bench_reload: reload failed: %s %ld %s\n",
                    cc == CURLE_OK ? "HTTP" : curl_easy_strerror(cc), status, a->body);
    }
    return status;
}

static int bench_http(const opts *o)
{
    struct curl_slist *hdrs = NULL;
    char auth[512];
    answer a;
    double *ms;
    long failures = 0, done = 0, cap;
    CURL *h;
    int rc = 2;

    /* With --every-ms at most one reload per tick fits. */
    cap = o->every_ms > 0 ? o->for_s * 1000 / o->every_ms + 2 : o->runs;
    ms = calloc((size_t)cap, sizeof(*ms));
    if (ms == NULL || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "bench_reload: cannot initialise\n");
        free(ms);
        return 2;
    }
    h = curl_easy_init();
    if (h == NULL)
        goto out;
    if (o->token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o->token);
        hdrs = curl_slist_append(hdrs, auth);
    }
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, o->url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &a);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);

    if (o->every_ms > 0) {
        double start = bench_now_ms(), end = start + (double)o->for_s * 1000, next = start;

        while (done < cap) {
            double t0 = bench_now_ms(), t1;
            struct timespec ts;

            if (t0 >= end)
                break;
            if (t0 < next) {
                double wait = next - t0;

                ts.tv_sec = (time_t)(wait / 1000);
                ts.tv_nsec = (long)((wait - (double)ts.tv_sec * 1000) * 1e6);
                nanosleep(&ts, NULL);
                continue;
            }
            post_reload(h, &a, &failures);
            t1 = bench_now_ms();
            ms[done++] = t1 - t0;
            /* The next tick after now: late ticks are skipped, not bunched. */
            while (next <= t1)
                next += (double)o->every_ms;
        }
        printf("reloads: %ld done, %ld failed", done, failures);
        if (done > 0) {
            printf("; ");
            print_summary(ms, (size_t)done);
        }
        printf("\n");
    } else {
        for (; done < o->runs; done++) {
            double t0 = bench_now_ms();

            post_reload(h, &a, &failures);
            ms[done] = bench_now_ms() - t0;
        }
        printf("POST /admin/reload: %ld runs: ", done);
        print_summary(ms, (size_t)done);
        printf(", %ld failed\n", failures);
    }
    rc = failures ? 1 : 0;
out:
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    curl_global_cleanup();
    free(ms);
    return rc;
}

int main(int argc, char **argv)
{
    opts o;

    if (parse_args(argc, argv, &o) != 0)
        return 2;
    return o.url ? bench_http(&o) : bench_load(&o);
}
