/* status_cli.c -- `nerve status` (see status_cli.h).
 *
 * Why over HTTP and not from Redis: the counters, the rules in force and the
 * queue live in the daemon's memory; /status.json is the one place they are
 * put together, and the page and this command read the same document.
 */
#include "nerve/status_cli.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/cli.h"
#include "nerve/httpc.h"

#define TIMEOUT_MS 5000

static const char help[] =
    "usage: nerve status [-c FILE] [--url URL] [--json]\n"
    "\n"
    "One screen on the running daemon, from its GET /status.json: version, uptime,\n"
    "readiness (and why not), Redis, bus, rules generation and counters, sales, engaged\n"
    "kill switches with reason and age, event queue depth, ledger lag.\n"
    "\n"
    "  --url URL      the daemon, http://HOST:PORT (default: http:// + server.listen of\n"
    "                 the config; 0.0.0.0 and [::] are asked on loopback)\n"
    "  --json         print /status.json as it came instead\n"
    "  -c, --config FILE, --set dotted.key=value  (see nerve help)\n"
    "\n"
    "exit status: 0 the daemon answered and is ready; 1 it is not ready, answered an\n"
    "error, or did not answer; 2 usage.\n";

struct opts {
    const char *url;
    bool json;
};

static int on_opt(void *ud, int val, const char *arg) {
    struct opts *o = ud;
    if (val == CLI_OPT(1))
        o->url = arg;
    else
        o->json = true;
    return 0;
}

/* S with every control character (and DEL) shown as '?', at most MAX
 * bytes, "-" when S is not a string. */
static void put(const cJSON *s, size_t max) {
    if (!cJSON_IsString(s)) {
        fputs("-", stdout);
        return;
    }
    cli_put_safe(stdout, s->valuestring, max);
}

static const cJSON *get(const cJSON *o, const char *k) {
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = get(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void age(double s) {
    long long t = s > 0 ? (long long)s : 0;
    if (t < 60)
        printf("%llds", t);
    else if (t < 3600)
        printf("%lldm%02llds", t / 60, t % 60);
    else if (t < 86400)
        printf("%lldh%02lldm", t / 3600, t % 3600 / 60);
    else
        printf("%lldd%02lldh", t / 86400, t % 86400 / 3600);
}

static void print_rules(const cJSON *rules) {
    if (!cJSON_IsObject(rules)) {
        printf("rules       not enabled\n");
        return;
    }
    const cJSON *last = get(rules, "last_reload"), *list = get(rules, "rules"), *r;
    printf("rules       generation %.0f, %d loaded, sha256 ", num(rules, "generation"),
           cJSON_GetArraySize(list));
    put(get(rules, "sha256"), 16);
    printf(", last reload ");
    put(get(last, "result"), 16);
    putchar('\n');
    const cJSON *e;
    cJSON_ArrayForEach(e, get(last, "errors")) {
        printf("  error     ");
        put(e, 300);
        putchar('\n');
    }
    cJSON_ArrayForEach(r, list) {
        double ev = num(r, "evaluations");
        printf("  ");
        put(get(r, "name"), 40);
        printf("  evaluations %.0f, errors %.0f, mean %.3f ms\n", ev, num(r, "errors"),
               ev > 0 ? num(r, "duration_seconds") / ev * 1e3 : 0.0);
    }
}

static void print_sales(const cJSON *sales) {
    const cJSON *ps = get(sales, "per_second"), *a;
    int n = cJSON_GetArraySize(ps);
    const cJSON *prev = n > 1 ? cJSON_GetArrayItem(ps, n - 2) : NULL;
    printf("sales       %.0f/s now, %.0f in the last minute; answers:",
           cJSON_IsNumber(prev) ? prev->valuedouble : 0.0, num(sales, "last_minute"));
    cJSON_ArrayForEach(a, get(sales, "answers")) printf(" %s %.0f", a->string, a->valuedouble);
    putchar('\n');
    cJSON_ArrayForEach(a, get(sales, "top_skus")) {
        printf("  ");
        put(get(a, "sku"), 40);
        const cJSON *st = get(a, "stock");
        printf("  %.0f units in 5 min, stock ", num(a, "units"));
        if (cJSON_IsNumber(st))
            printf("%.0f\n", st->valuedouble);
        else
            printf("unknown\n");
    }
}

static void print_kills(const cJSON *ks) {
    if (!cJSON_IsObject(ks)) {
        printf("kills       unknown (Redis did not answer)\n");
        return;
    }
    const cJSON *list = get(ks, "engaged"), *k;
    printf("kills       %d engaged\n", cJSON_GetArraySize(list));
    cJSON_ArrayForEach(k, list) {
        printf("  ");
        put(get(k, "scope"), 140);
        printf("  age ");
        age(num(k, "age_seconds"));
        printf(", rule ");
        put(get(k, "rule"), 64);
        printf(", stop ");
        put(get(k, "state"), 16);
        printf(", halt_sales %s\n    reason: ", cJSON_IsTrue(get(k, "halt_sales")) ? "yes" : "no");
        put(get(k, "reason"), 300);
        putchar('\n');
    }
}

/* The screen; 0 ready, 1 not. */
static int print_status(const cJSON *st) {
    const cJSON *rd = get(st, "ready"), *q = get(rd, "event_queue"), *ld = get(rd, "ledger");
    bool ready = cJSON_IsTrue(get(rd, "ready"));
    printf("nerve       ");
    put(get(st, "version"), 32);
    printf(", instance ");
    put(get(st, "instance"), 80);
    printf(", up ");
    age(num(st, "uptime_seconds"));
    printf(", %s\n", ready ? "ready" : "NOT READY");
    const cJSON *r;
    cJSON_ArrayForEach(r, get(rd, "reasons")) {
        printf("  reason    ");
        put(r, 300);
        putchar('\n');
    }
    cJSON_ArrayForEach(r, get(rd, "warnings")) {
        printf("  warning   ");
        put(r, 300);
        putchar('\n');
    }
    printf("redis       %s\n", cJSON_IsTrue(get(rd, "redis")) ? "up" : "DOWN");
    const cJSON *bus = get(st, "bus");
    if (cJSON_IsObject(bus)) {
        printf("bus         %s",
               cJSON_IsTrue(get(bus, "connected")) ? "connected" : "DISCONNECTED");
        if (cJSON_IsTrue(get(bus, "streams")))
            printf(", streams %s, %.0f entries pending",
                   cJSON_IsTrue(get(bus, "stream_connected")) ? "connected" : "DISCONNECTED",
                   num(bus, "pending"));
        putchar('\n');
    }
    print_rules(get(st, "rules"));
    print_sales(get(st, "sales"));
    print_kills(get(st, "killswitch"));
    if (cJSON_IsObject(q))
        printf("queue       %.0f / %.0f events, %.0f dropped, oldest %.3f s\n", num(q, "depth"),
               num(q, "capacity"), num(q, "dropped"), num(q, "oldest_age_seconds"));
    if (cJSON_IsObject(ld))
        printf("ledger      lag %.3f s, database %s\n", num(ld, "lag_seconds"),
               cJSON_IsTrue(get(ld, "up")) ? "up" : "DOWN");
    return ready ? 0 : 1;
}

/* BASE gets "http://" + the config's server.listen, a wildcard host made
 * loopback. 0, or -1 after printing why. */
static int url_from_config(const cli_args *a, char *base, size_t len) {
    cfg *c = cli_load_config(a);
    if (!c) return -1;
    cli_daemon_url(c, base, len);
    cfg_free(c);
    return 0;
}

int status_cli_main(int argc, char **argv) {
    static const struct option own[] = { { "url", required_argument, NULL, CLI_OPT(1) },
                                         { "json", no_argument, NULL, CLI_OPT(2) },
                                         { 0, 0, 0, 0 } };
    struct opts o = { 0 };
    cli_args a;
    if (cli_parse("nerve status", "nerve status --help", argc, argv, own, on_opt, &o, &a)) {
        cli_args_free(&a);
        return 2;
    }
    int rc = 1;
    char base[320], err[HTTPC_ERR_MAX];
    httpc_url u;
    httpc_reply rep = { 0 };
    if (a.help) {
        fputs(help, stdout);
        rc = 0;
        goto out;
    }
    if (a.nrest > 0) {
        fprintf(stderr, "nerve status: unexpected argument '%s' (see nerve status --help)\n",
                a.rest[0]);
        rc = 2;
        goto out;
    }
    if (o.url)
        snprintf(base, sizeof base, "%s", o.url);
    else if (url_from_config(&a, base, sizeof base))
        goto out;
    if (httpc_url_parse(base, &u, err, sizeof err)) {
        fprintf(stderr, "nerve status: %s\n", err);
        rc = o.url ? 2 : 1;
        goto out;
    }
    if (httpc_url_resolve(&u, err, sizeof err) ||
        httpc_request(&u, "GET", "/status.json", NULL, NULL, TIMEOUT_MS, &rep) == 0) {
        fprintf(stderr, "nerve status: no answer from %s: %s\n", u.base,
                rep.err[0] ? rep.err : err);
        goto out;
    }
    if (rep.status != 200) {
        fprintf(stderr, "nerve status: %s/status.json answered %d: %.300s\n", u.base, rep.status,
                rep.body ? rep.body : "");
        goto out;
    }
    cJSON *st = cJSON_ParseWithLength(rep.body, rep.len);
    if (!cJSON_IsObject(st)) {
        fprintf(stderr, "nerve status: %s/status.json is not a JSON object\n", u.base);
        cJSON_Delete(st);
        goto out;
    }
    if (o.json) {
        fwrite(rep.body, 1, rep.len, stdout);
        rc = cJSON_IsTrue(get(get(st, "ready"), "ready")) ? 0 : 1;
    } else {
        rc = print_status(st);
    }
    cJSON_Delete(st);
out:
    httpc_reply_free(&rep);
    cli_args_free(&a);
    return rc;
}
