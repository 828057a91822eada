/* stress.c -- `nerve stress`: the load test that proves the sale endpoint
 * never oversells (SPEC §9).
 *
 * The command talks to running daemons over HTTP only, like any client:
 * it checks that each --url answers, sets the stock through the admin API,
 * hands the run to stress_load.c, reads the final stock (and with
 * --kill-check the kill switch) back, and lets stress_report.c judge and
 * print. Every failure before the run is a setup error (exit 2) with a
 * message that says what to do; the run itself ends in 0 (all invariants
 * held) or 1 (one failed, named on stderr).
 */
#include "nerve/stress.h"
#include "nerve/sku.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "stress_int.h"

#define SETUP_TIMEOUT_MS 5000
#define FINAL_WAIT_MS    5000  /* final stock: retry a busy/reconnecting daemon */
#define KILL_WAIT_MS     10000 /* the kill switch is engaged asynchronously */
#define REPLAY_WAIT_MS   30000 /* all replays of unanswered sales together */

typedef struct opts {
    httpc_url urls[STRESS_MAX_URLS];
    int nurls;
    const char *sku;
    long long stock, clients, requests, qty, skus, critical, threads, timeout_ms;
    double duration;
    bool have_stock, have_skus, json, kill_check, quiet;
    const char *token;
} opts;

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: nerve stress --url URL [--url URL ...] --sku SKU --stock N --clients C\n"
            "                    (--requests R | --duration SECONDS) [options]\n"
            "\n"
            "Sets the stock of SKU to N, fires sale requests (POST /sale, a unique order_id\n"
            "each) from C concurrent keep-alive connections, then checks that nothing was\n"
            "oversold. Exit 0: every invariant held; 1: one failed (named on stderr);\n"
            "2: usage or setup error.\n"
            "\n"
            "  --url URL           daemon base URL, http://HOST:PORT; repeat it for a fleet\n"
            "                      sharing one Redis (connections go round-robin)\n"
            "  --sku SKU           SKU to sell: 1-128 bytes of A-Z a-z 0-9 . _ : -\n"
            "  --stock N           stock set before the run (PUT /admin/stock/SKU)\n"
            "  --clients C         concurrent keep-alive connections, 1..%d\n"
            "  --requests R        total sale requests, or\n"
            "  --duration SECONDS  send requests for this long (fractions allowed)\n"
            "  --qty Q             units per order (default 1)\n"
            "  --skus K            sell K SKUs named SKU-0..SKU-(K-1), each set to N;\n"
            "                      requests are spread over them evenly\n"
            "  --token T           admin token (default: $NERVE_ADMIN_TOKEN)\n"
            "  --kill-check        also assert that the kill switch sku:SKU is engaged once\n"
            "                      the stock went to --critical or under (a scope left\n"
            "                      engaged by an earlier run is reset first)\n"
            "  --critical N        the critical stock threshold (default 5)\n"
            "  --threads N         worker threads (default: clients or CPUs, the smaller)\n"
            "  --timeout MS        per-request timeout (default 30000)\n"
            "  --json              print the report as one JSON object\n"
            "  --quiet             no progress line (there is none when stderr is not a tty)\n"
            "  -h, --help          this text\n"
            "\n"
            "The report: requests, ok (200), out_of_stock (409), halted (423), rejected\n"
            "(422), unavailable (503), errors (anything else, transport errors included),\n"
            "duration, throughput, latency p50/p90/p99/max of every answered request,\n"
            "units sold (200s without \"duplicate\":true), initial and final stock per SKU,\n"
            "and the invariants:\n"
            "  1. sold == initial - final, for every SKU\n"
            "  2. final stock >= 0\n"
            "  3. every 200 echoes its own order_id (so all are distinct)\n"
            "  4. no 200 reported a negative stock_remaining\n"
            "  5. with --kill-check: GET /killswitch shows sku:SKU engaged\n"
            "     (asserted when the final stock is at or under --critical)\n"
            "Sales left without an answer (broken connection, timeout) or answered 503 are\n"
            "resent after the run with their own order_id; the daemon's idempotency tells\n"
            "whether they had sold, so that the count stays exact under faults.\n"
            "\n"
            "example: NERVE_ADMIN_TOKEN=secret nerve stress --url http://127.0.0.1:8011 \\\n"
            "             --sku ABC --stock 500 --clients 32 --requests 2000\n",
            STRESS_MAX_CLIENTS);
}

/* ---- options --------------------------------------------------------------------- */

static int parse_ll(const char *name, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (end == v || *end || errno == ERANGE || n < lo || n > hi) {
        fprintf(stderr, "nerve stress: %s: expected an integer in %lld..%lld, got '%s'\n", name, lo,
                hi, v);
        return -1;
    }
    *out = n;
    return 0;
}

/* Parse ARGV (ARGV[0] is "stress") into O with getopt_long. 0, 1 after
 * --help, -1 after printing why. */
static int parse_opts(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->qty = 1;
    o->skus = 1;
    o->critical = 5;
    o->timeout_ms = 30000;
    bool have_clients = false, have_requests = false, have_duration = false;
    /* Every long option returns 0 with its index; "--NAME" is then looked
     * up below, so the table is the only list of names. */
    static const struct option longopts[] = {
        { "json", no_argument, NULL, 0 },
        { "kill-check", no_argument, NULL, 0 },
        { "quiet", no_argument, NULL, 0 },
        { "help", no_argument, NULL, 'h' },
        { "url", required_argument, NULL, 0 },
        { "sku", required_argument, NULL, 0 },
        { "stock", required_argument, NULL, 0 },
        { "clients", required_argument, NULL, 0 },
        { "requests", required_argument, NULL, 0 },
        { "duration", required_argument, NULL, 0 },
        { "qty", required_argument, NULL, 0 },
        { "skus", required_argument, NULL, 0 },
        { "token", required_argument, NULL, 0 },
        { "critical", required_argument, NULL, 0 },
        { "threads", required_argument, NULL, 0 },
        { "timeout", required_argument, NULL, 0 },
        { NULL, 0, NULL, 0 },
    };
    opterr = 0; /* our messages, not getopt's */
    optind = 0; /* GNU: start afresh */
    int ch, idx;
    while ((ch = getopt_long(argc, argv, ":h", longopts, &idx)) != -1) {
        if (ch == 'h') {
            usage(stdout);
            return 1;
        }
        if (ch == ':') {
            fprintf(stderr, "nerve stress: %s needs a value (see nerve stress --help)\n",
                    argv[optind - 1]);
            return -1;
        }
        if (ch != 0) {
            if (optopt)
                fprintf(stderr, "nerve stress: unknown option -%c (see nerve stress --help)\n",
                        optopt);
            else
                fprintf(stderr, "nerve stress: unknown option %s (see nerve stress --help)\n",
                        argv[optind - 1]);
            return -1;
        }
        char name[32];
        snprintf(name, sizeof name, "--%s", longopts[idx].name);
        const char *v = optarg;
        long long n = 0;
        if (strcmp(name, "--json") == 0)
            o->json = true;
        else if (strcmp(name, "--kill-check") == 0)
            o->kill_check = true;
        else if (strcmp(name, "--quiet") == 0)
            o->quiet = true;
        else if (strcmp(name, "--url") == 0) {
            char err[STRESS_ERR_MAX];
            if (o->nurls == STRESS_MAX_URLS) {
                fprintf(stderr, "nerve stress: at most %d --url\n", STRESS_MAX_URLS);
                return -1;
            }
            if (httpc_url_parse(v, &o->urls[o->nurls], err, sizeof err) != 0) {
                fprintf(stderr, "nerve stress: %s\n", err);
                return -1;
            }
            o->nurls++;
        } else if (strcmp(name, "--sku") == 0) {
            if (!sku_valid(v, strlen(v))) {
                fprintf(
                    stderr,
                    "nerve stress: --sku: expected 1-%d bytes of A-Z a-z 0-9 . _ : -, got '%s'\n",
                    STRESS_SKU_MAX, v);
                return -1;
            }
            o->sku = v;
        } else if (strcmp(name, "--token") == 0) {
            o->token = v;
        } else if (strcmp(name, "--duration") == 0) {
            char *end;
            errno = 0;
            double d = strtod(v, &end);
            if (end == v || *end || errno == ERANGE || !(d > 0) || d > 86400 * 7) {
                fprintf(
                    stderr,
                    "nerve stress: --duration: expected seconds > 0 (at most a week), got '%s'\n",
                    v);
                return -1;
            }
            o->duration = d;
            have_duration = true;
        } else {
            struct {
                const char *name;
                long long lo, hi, *dst;
                bool *seen;
            } nums[] = {
                { "--stock", 0, 1000000000000000LL, &o->stock, &o->have_stock },
                { "--clients", 1, STRESS_MAX_CLIENTS, &o->clients, &have_clients },
                { "--requests", 1, 1000000000000LL, &o->requests, &have_requests },
                { "--qty", 1, 1000000000, &o->qty, NULL },
                { "--skus", 1, STRESS_MAX_SKUS, &o->skus, &o->have_skus },
                { "--critical", 0, 1000000000000000LL, &o->critical, NULL },
                { "--threads", 1, STRESS_MAX_THREADS, &o->threads, NULL },
                { "--timeout", 1, 3600000, &o->timeout_ms, NULL },
            };
            for (size_t k = 0; k < sizeof nums / sizeof nums[0]; k++) {
                if (strcmp(name, nums[k].name) != 0) continue;
                if (parse_ll(name, v, nums[k].lo, nums[k].hi, &n) != 0) return -1;
                *nums[k].dst = n;
                if (nums[k].seen) *nums[k].seen = true;
            }
        }
    }
    if (optind < argc) {
        fprintf(stderr, "nerve stress: unexpected argument '%s' (see nerve stress --help)\n",
                argv[optind]);
        return -1;
    }
    const char *missing = !o->nurls        ? "--url"
                          : !o->sku        ? "--sku"
                          : !o->have_stock ? "--stock"
                          : !have_clients  ? "--clients"
                                           : NULL;
    if (missing) {
        fprintf(stderr, "nerve stress: %s is required (see nerve stress --help)\n", missing);
        return -1;
    }
    if (have_requests == have_duration) {
        fprintf(stderr, "nerve stress: give either --requests R or --duration SECONDS\n");
        return -1;
    }
    if (o->have_skus && strlen(o->sku) + 1 + 5 > STRESS_SKU_MAX) {
        fprintf(stderr, "nerve stress: --sku: at most %d bytes with --skus\n", STRESS_SKU_MAX - 6);
        return -1;
    }
    if (!o->token || !*o->token) o->token = getenv("NERVE_ADMIN_TOKEN");
    if (!o->token || !*o->token) {
        fprintf(stderr, "nerve stress: no admin token: set NERVE_ADMIN_TOKEN or pass --token\n");
        return -1;
    }
    return 0;
}

/* ---- setup ------------------------------------------------------------------------- */

/* "connection refused" from ECONNREFUSED: messages read as one sentence. */
static void lower_first(char *s) {
    if (s[0] && isupper((unsigned char)s[0]) && !isupper((unsigned char)s[1]))
        s[0] = (char)tolower((unsigned char)s[0]);
}

static void say_cannot_connect(const httpc_url *u, const httpc_reply *r) {
    char why[STRESS_ERR_MAX];
    if (r->errnum == ETIMEDOUT)
        snprintf(why, sizeof why, "no answer within %d ms", SETUP_TIMEOUT_MS);
    else if (r->errnum)
        snprintf(why, sizeof why, "%s", strerror(r->errnum));
    else
        snprintf(why, sizeof why, "%s", r->err);
    lower_first(why);
    fprintf(stderr, "nerve stress: cannot connect to %s: %s — is nerve running?\n", u->base, why);
}

/* The "message" of a JSON error body, else the body itself (trimmed). */
static void body_message(const httpc_reply *r, char *out, size_t len) {
    cJSON *o = r->body ? cJSON_Parse(r->body) : NULL;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "message");
    snprintf(out, len, "%s", cJSON_IsString(m) ? m->valuestring : r->body ? r->body : "");
    cJSON_Delete(o);
    size_t n = strlen(out);
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r')) out[--n] = 0;
}

static int check_up(const httpc_url *u) {
    httpc_reply r;
    int st = httpc_request(u, "GET", "/healthz", NULL, NULL, SETUP_TIMEOUT_MS, &r);
    if (st == 0)
        say_cannot_connect(u, &r);
    else if (st != 200)
        fprintf(stderr, "nerve stress: %s/healthz answered HTTP %d: is it a nerve daemon?\n",
                u->base, st);
    httpc_reply_free(&r);
    return st == 200 ? 0 : -1;
}

static int set_stock(const httpc_url *u, const char *sku, long long stock, const char *token) {
    char path[STRESS_SKU_MAX + 32], body[64], msg[200];
    snprintf(path, sizeof path, "/admin/stock/%s", sku);
    snprintf(body, sizeof body, "{\"stock\": %lld}", stock);
    httpc_reply r;
    int st = httpc_request(u, "PUT", path, token, body, SETUP_TIMEOUT_MS, &r);
    body_message(&r, msg, sizeof msg);
    if (st == 0)
        say_cannot_connect(u, &r);
    else if (st == 401 || st == 403)
        fprintf(stderr, "nerve stress: admin token rejected by %s (HTTP %d: %s)\n", u->base, st,
                msg);
    else if (st != 200)
        fprintf(stderr, "nerve stress: PUT %s%s answered HTTP %d: %s\n", u->base, path, st, msg);
    httpc_reply_free(&r);
    return st == 200 ? 0 : -1;
}

/* GET /stock/SKU on U, retrying 503s and transport errors until WAIT_MS is
 * up. 0 with *STOCK, or -1 with the reason in ERR. */
static int get_stock(const httpc_url *u, const char *sku, int wait_ms, long long *stock, char *err,
                     size_t errlen) {
    char path[STRESS_SKU_MAX + 16];
    snprintf(path, sizeof path, "/stock/%s", sku);
    uint64_t deadline = clock_now_ns() + (uint64_t)wait_ms * 1000000u;
    for (;;) {
        httpc_reply r;
        int st = httpc_request(u, "GET", path, NULL, NULL, SETUP_TIMEOUT_MS, &r);
        cJSON *o = st == 200 ? cJSON_Parse(r.body) : NULL;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "stock");
        int rc = -1;
        if (cJSON_IsNumber(v)) {
            *stock = (long long)v->valuedouble;
            rc = 0;
        } else if (st == 0) {
            snprintf(err, errlen, "GET %.80s%.60s: %.100s", u->base, path, r.err);
        } else {
            char msg[160];
            body_message(&r, msg, sizeof msg);
            snprintf(err, errlen, "GET %.80s%.60s answered HTTP %d: %.80s", u->base, path, st, msg);
        }
        cJSON_Delete(o);
        httpc_reply_free(&r);
        if (rc == 0 || (st != 0 && st != 503) || clock_now_ns() >= deadline) return rc;
        struct timespec ts = { 0, 100 * 1000000 };
        nanosleep(&ts, NULL);
    }
}

/* The engaged kill scopes from GET /killswitch: a cJSON array of scope
 * strings (caller frees), NULL on error. */
static cJSON *engaged_scopes(const httpc_url *u) {
    httpc_reply r;
    int st = httpc_request(u, "GET", "/killswitch", NULL, NULL, SETUP_TIMEOUT_MS, &r);
    cJSON *o = st == 200 ? cJSON_Parse(r.body) : NULL;
    httpc_reply_free(&r);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "engaged"), *rec;
    if (!cJSON_IsArray(arr)) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON *out = cJSON_CreateArray();
    cJSON_ArrayForEach(rec, arr) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(rec, "scope");
        if (cJSON_IsString(s)) cJSON_AddItemToArray(out, cJSON_CreateString(s->valuestring));
    }
    cJSON_Delete(o);
    return out;
}

static bool has_scope(const cJSON *scopes, const char *sku) {
    const cJSON *s;
    cJSON_ArrayForEach(s, scopes) {
        if (strncmp(s->valuestring, "sku:", 4) == 0 && strcmp(s->valuestring + 4, sku) == 0)
            return true;
    }
    return false;
}

/* --kill-check: a scope engaged before the run proves nothing, so reset it. */
static int reset_kill(const opts *o, char (*skus)[STRESS_SKU_MAX + 1], int n) {
    cJSON *scopes = engaged_scopes(&o->urls[0]);
    if (!scopes) {
        fprintf(stderr, "nerve stress: GET %s/killswitch failed; cannot run --kill-check\n",
                o->urls[0].base);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!has_scope(scopes, skus[i])) continue;
        char path[STRESS_SKU_MAX + 40], msg[160];
        snprintf(path, sizeof path, "/admin/killswitch/sku:%s", skus[i]);
        httpc_reply r;
        int st = httpc_request(&o->urls[0], "DELETE", path, o->token, NULL, SETUP_TIMEOUT_MS, &r);
        body_message(&r, msg, sizeof msg);
        if (st == 200 || st == 404) {
            if (!o->quiet)
                fprintf(stderr,
                        "nerve stress: reset kill switch sku:%s left engaged by an earlier run\n",
                        skus[i]);
        } else {
            fprintf(stderr, "nerve stress: DELETE %s%s answered HTTP %d: %s\n", o->urls[0].base,
                    path, st, st ? msg : r.err);
            rc = -1;
        }
        httpc_reply_free(&r);
    }
    cJSON_Delete(scopes);
    return rc;
}

/* Room for every connection plus a few descriptors. */
static int ensure_fds(long long clients) {
    struct rlimit rl;
    rlim_t need = (rlim_t)clients + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need) return 0;
    if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need) {
        rl.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0) return 0;
    }
    fprintf(stderr,
            "nerve stress: --clients %lld needs %llu open files; the limit is %llu (ulimit -n)\n",
            clients, (unsigned long long)need, (unsigned long long)rl.rlim_max);
    return -1;
}

static void make_run_id(char *out, size_t len) {
    unsigned char b[8];
    arc4random_buf(b, sizeof b);
    snprintf(out, len, "%02x%02x%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5], b[6],
             b[7]);
}

/* Replay every sale whose outcome the run did not learn, with its own
 * order_id, until the answer says (or REPLAY_WAIT_MS is up): idempotency
 * answers a sale that went through as a duplicate and runs one that did not,
 * so that "sold" stays exact when connections broke or 503s came back. A
 * 409 means not sold; anything else (422, 423, ...) leaves it unresolved.
 * Adds the units to RES[].sold. */
static void replay(const opts *o, const stress_run *r, stress_sku_result *res, stress_replay *rp) {
    uint64_t deadline = clock_now_ns() + REPLAY_WAIT_MS * 1000000ull;
    for (int t = 0; t < r->threads; t++) {
        const stress_stats *st = &r->stats[t];
        rp->unresolved += st->pending_lost;
        for (size_t i = 0; i < st->npending; i++) {
            const stress_pending *p = &st->pending[i];
            int sku = (int)(p->idx % r->nskus), u = p->url;
            char oid[64], body[STRESS_SKU_MAX + 128];
            stress_order_id(r, p->idx, oid, sizeof oid);
            snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":%lld,\"order_id\":\"%s\"}",
                     r->skus[sku], r->qty, oid);
            rp->replayed++;
            for (int attempt = 1;; attempt++) {
                httpc_reply rep;
                int code = httpc_request(&o->urls[u], "POST", "/sale", NULL, body, SETUP_TIMEOUT_MS,
                                         &rep);
                cJSON *j = code == 200 ? cJSON_Parse(rep.body) : NULL;
                httpc_reply_free(&rep);
                if (code == 200) {
                    const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "qty");
                    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "duplicate")))
                        rp->had_sold++;
                    else
                        rp->sold_now++;
                    res[sku].sold += cJSON_IsNumber(q) ? (long long)q->valuedouble : r->qty;
                }
                cJSON_Delete(j);
                if (code == 200) break;
                if (code == 409) {
                    rp->not_sold++;
                    break;
                }
                if ((code != 0 && code != 503) || clock_now_ns() >= deadline) {
                    rp->unresolved++;
                    break;
                }
                u = (u + 1) % o->nurls; /* another instance may answer */
                if (attempt % o->nurls == 0) {
                    struct timespec ts = { 0, 100 * 1000000 };
                    nanosleep(&ts, NULL);
                }
            }
        }
    }
}

/* ---- the run --------------------------------------------------------------------------- */

/* One progress line: totals, and the rate since the previous line. */
static void progress(const stress_run *r, FILE *f, long long *prev, uint64_t *prev_ns) {
    long long done = atomic_load(&r->done), failed = atomic_load(&r->failed);
    uint64_t now = clock_now_ns();
    double secs = (double)(now - r->started_ns) / 1e9, dt = (double)(now - *prev_ns) / 1e9;
    double rate = dt > 0 ? (double)(done - *prev) / dt : 0;
    *prev = done;
    *prev_ns = now;
    if (r->requests > 0)
        fprintf(f, "\r  %lld/%lld requests (%d%%)  %.0f req/s  errors %lld  %.1fs\033[K", done,
                r->requests, (int)(100 * done / r->requests), rate, failed, secs);
    else
        fprintf(f, "\r  %lld requests  %.0f req/s  errors %lld  %.1f/%.1fs\033[K", done, rate,
                failed, secs, r->duration_s);
    fflush(f);
}

/* Run the load, showing progress on a terminal and stopping early on the
 * first SIGINT. 0, or -1 when the workers could not start. */
static int run_load(stress_run *r, bool show) {
    char err[STRESS_ERR_MAX];
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND; /* a second ^C ends the process */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    int rc = stress_load_start(r, err, sizeof err);
    if (rc != 0) fprintf(stderr, "nerve stress: %s\n", err);
    uint64_t last = r->started_ns;
    long long prev = 0;
    while (atomic_load(&r->threads_done) < r->threads && rc == 0) {
        struct timespec ts = { 0, 20 * 1000000 };
        nanosleep(&ts, NULL);
        if (interrupted) atomic_store(&r->stop, 1);
        if (show && clock_now_ns() - last >= 250000000u) progress(r, stderr, &prev, &last);
    }
    stress_load_wait(r);
    if (show) fprintf(stderr, "\r\033[K");
    sigaction(SIGINT, &old, NULL);
    return rc;
}

int stress_main(int argc, char **argv) {
    static opts o; /* large (URLs); one run per process */
    int prc = parse_opts(argc, argv, &o);
    if (prc) return prc > 0 ? 0 : 2;
    if (ensure_fds(o.clients) != 0) return 2;

    char err[STRESS_ERR_MAX];
    for (int i = 0; i < o.nurls; i++) {
        if (httpc_url_resolve(&o.urls[i], err, sizeof err) != 0) {
            fprintf(stderr, "nerve stress: %s\n", err);
            return 2;
        }
        if (check_up(&o.urls[i]) != 0) return 2;
    }

    int nskus = (int)o.skus, rc = 2;
    char(*skus)[STRESS_SKU_MAX + 1] = calloc((size_t)nskus, sizeof *skus);
    stress_sku_result *res = calloc((size_t)nskus, sizeof *res);
    if (!skus || !res) {
        fprintf(stderr, "nerve stress: out of memory\n");
        goto out;
    }
    for (int i = 0; i < nskus; i++) {
        if (o.have_skus)
            snprintf(skus[i], sizeof skus[i], "%s-%d", o.sku, i);
        else
            snprintf(skus[i], sizeof skus[i], "%s", o.sku);
    }

    /* Stock set through the first instance, read back through every one:
     * a fleet that does not share one Redis is a setup error, not a result. */
    for (int i = 0; i < nskus; i++) {
        if (set_stock(&o.urls[0], skus[i], o.stock, o.token) != 0) goto out;
        for (int u = 1; u < o.nurls; u++) {
            long long s;
            if (get_stock(&o.urls[u], skus[i], 0, &s, err, sizeof err) != 0) {
                fprintf(stderr, "nerve stress: %s\n", err);
                goto out;
            }
            if (s != o.stock) {
                fprintf(stderr,
                        "nerve stress: %s reports stock %lld for %s after %s set it to %lld: "
                        "do the instances share one Redis?\n",
                        o.urls[u].base, s, skus[i], o.urls[0].base, o.stock);
                goto out;
            }
        }
    }
    if (o.kill_check && reset_kill(&o, skus, nskus) != 0) goto out;

    static stress_run run;
    run.urls = o.urls;
    run.nurls = o.nurls;
    run.skus = skus;
    run.nskus = nskus;
    run.qty = o.qty;
    run.clients = (int)o.clients;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    run.threads = (int)(o.threads ? o.threads : ncpu > 0 ? ncpu : 1);
    if (run.threads > run.clients) run.threads = run.clients;
    if (run.threads > STRESS_MAX_THREADS) run.threads = STRESS_MAX_THREADS;
    run.requests = o.requests;
    run.duration_s = o.duration;
    run.timeout_ms = (int)o.timeout_ms;
    make_run_id(run.run_id, sizeof run.run_id);
    bool show = !o.quiet && isatty(STDERR_FILENO);
    if (run_load(&run, show) != 0) goto out_run;

    /* What the servers say now. */
    stress_replay rp = { 0, 0, 0, 0, 0 };
    for (int i = 0; i < nskus; i++)
        for (int t = 0; t < run.threads; t++) res[i].sold += run.stats[t].sold[i];
    replay(&o, &run, res, &rp);
    for (int i = 0; i < nskus; i++) {
        res[i].initial = o.stock;
        res[i].final_ok = get_stock(&o.urls[0], skus[i], FINAL_WAIT_MS, &res[i].final,
                                    res[i].final_err, sizeof res[i].final_err) == 0;
        res[i].kill = -1;
        if (o.kill_check && res[i].final_ok && res[i].final <= o.critical && res[i].sold > 0)
            res[i].kill = 0;
    }
    if (o.kill_check) {
        uint64_t deadline = clock_now_ns() + KILL_WAIT_MS * 1000000ull;
        for (;;) {
            cJSON *scopes = engaged_scopes(&o.urls[0]);
            int pending = 0;
            for (int i = 0; i < nskus; i++) {
                if (res[i].kill == 0 && scopes && has_scope(scopes, skus[i])) res[i].kill = 1;
                pending += res[i].kill == 0;
            }
            cJSON_Delete(scopes);
            if (!pending || clock_now_ns() >= deadline) break;
            struct timespec ts = { 0, 100 * 1000000 };
            nanosleep(&ts, NULL);
        }
    }

    stress_report_in in = { &run,  res, &rp, o.stock, o.kill_check, o.critical, interrupted != 0,
                            o.json };
    rc = stress_report(&in, stdout, stderr);
out_run:
    stress_load_free(&run);
out:
    free(skus);
    free(res);
    return rc;
}
