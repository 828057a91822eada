/* test_rule_corpus.c -- the hostile rule corpus (tests/hostile_rules/, issue 9)
 * through `nerve check` and through a running daemon.
 *
 * Every tests/hostile_rules/hostile_*.lua is one cmocka test named after the
 * file (CMOCKA_FILTER=hostile_table_move runs one). The corpus README says
 * what each file attacks; the driver reads three header lines of each file:
 *
 *   -- mode: event | sale | load | fixture
 *   -- trigger: CHANNEL JSON     (event mode, one or more: what to publish)
 *   -- error: TEXT | TEXT ...    (one of these must be in `nerve check`'s output)
 *
 * and runs, for every file:
 *
 * 1. `nerve check` on a rules dir of rules/inventory.lua and the file: exit 1
 *    in under 5 s, naming `FILE.lua:LINE:` and the expected error (the
 *    file's fixtures exercise its hostile path; or it is hostile at load).
 * 2. A daemon on the group's redis-server (panic.dry_run, server.threads=8,
 *    the default rules.eval_timeout_ms and rules.sale_on_error):
 *    - event and sale mode: started with the file minus its fixtures (the
 *      lines from `-- fixtures:begin` to `-- fixtures:end` blanked, so line
 *      numbers hold) next to inventory.lua; the triggers published (event)
 *      or three sales sent (sale: each answered 422 policy_rejected naming
 *      the rule within 1 s); then the safety check below; the rule's error
 *      counter in GET /rules went up;
 *    - every mode: the whole file (fixtures included) written into the rules
 *      dir, POST /admin/reload answers 422 naming `FILE.lua:LINE:` within
 *      5 s, twice (a hung reload used to hang every later one); then the
 *      safety check again (the old rules keep working);
 *    - the daemon is alive at the end and exits 0 on SIGTERM.
 *    The safety check: publish {"type":"stock_changed","sku":S,
 *    "stock_remaining":1} on inventory_events and see the kill record
 *    nerve:kill:sku:S within 1 s; GET /healthz answers 200 and a /sale of a
 *    stocked SKU is answered (200; 422 naming the rule for a sale-mode file)
 *    within 1 s each.
 *
 * Every step of a case runs even when an earlier one failed (unless the
 * daemon is gone), and the case fails at its end listing what went wrong, so
 * one run says exactly which promise each file breaks. Requests have their
 * own short timeouts and a failed case's daemon is SIGKILLed, so a rule that
 * still hangs the evaluator costs seconds, not the run.
 */
#include "harness.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CORPUS_DIR "tests/hostile_rules"
#define CORPUS_MIN 30
#define MAX_CASES 256
#define MAX_TRIGGERS 8
#define SALE_SKU "corpus-sku"
#define SALE_STOCK 100000
#define CHECK_MS 5000           /* nerve check must end within */
#define KILL_MS 1000            /* a critical event's kill record within */
#define ANSWER_MS 1000          /* /healthz and /sale answered within */
#define RELOAD_MS 5000          /* a refused reload answered within */
#define AUTH "Authorization: Bearer " H_ADMIN_TOKEN

typedef enum { M_EVENT, M_SALE, M_LOAD, M_FIXTURE } mode;

typedef struct hcase {
    char stem[96];              /* file name minus .lua: also the rule's name */
    char file[128];             /* stem.lua */
    mode m;
    int ntrig;
    char trig_chan[MAX_TRIGGERS][64];
    char trig_msg[MAX_TRIGGERS][600];
    char errors[600];           /* "a | b | c" */
    char *text;                 /* the whole file */
    char *stripped;             /* fixtures blanked; NULL when it has none */
    char shape[512];            /* what is wrong with the file itself, "" if fine */
} hcase;

static h_redis *redis;
static char corpus_dir[PATH_MAX];
static char *inventory_text;
static hcase cases[MAX_CASES];
static int ncases;

static const char *const mode_names[] = { "event", "sale", "load", "fixture" };
static const char *const bus_channels[] = { "inventory_events", "sales_events",
                                            "financial_events", NULL };

/* --- the corpus ------------------------------------------------------------ */

/* The value of header line "-- KEY: value" starting at P (to the end of the
 * line) into OUT, or false. */
static bool header_value(const char *line, const char *key, char *out, size_t outlen)
{
    char pre[64];
    snprintf(pre, sizeof pre, "-- %s:", key);
    size_t pl = strlen(pre);
    if (strncmp(line, pre, pl) != 0)
        return false;
    const char *v = line + pl;
    while (*v == ' ')
        v++;
    size_t n = strcspn(v, "\n");
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\r'))
        n--;
    snprintf(out, outlen, "%.*s", (int)n, v);
    return true;
}

static void shape_bad(hcase *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void shape_bad(hcase *c, const char *fmt, ...)
{
    size_t have = strlen(c->shape);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->shape + have, sizeof c->shape - have, fmt, ap);
    va_end(ap);
}

/* The file without its fixtures: every line from one that reads
 * `-- fixtures:begin` to one that reads `-- fixtures:end` (both included)
 * emptied, keeping the newlines so that line numbers stay. NULL when there
 * is no complete pair (a shape error for the modes that need one). */
static char *strip_fixtures(const char *text, int *pairs)
{
    char *out = strdup(text);
    assert_non_null(out);
    *pairs = 0;
    bool in = false;
    char *w = out;
    for (const char *p = text; *p; ) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        const char *t = p;
        while (t < p + len && (*t == ' ' || *t == '\t'))
            t++;
        size_t tl = (size_t)(p + len - t);
        while (tl > 0 && (t[tl - 1] == ' ' || t[tl - 1] == '\r'))
            tl--;
        bool begin = tl == strlen("-- fixtures:begin") && strncmp(t, "-- fixtures:begin", tl) == 0;
        bool end = tl == strlen("-- fixtures:end") && strncmp(t, "-- fixtures:end", tl) == 0;
        if (begin) {
            if (in) {
                free(out);
                return NULL;
            }
            in = true;
        }
        if (!in) {
            memcpy(w, p, len);
            w += len;
        }
        if (end) {
            if (!in) {
                free(out);
                return NULL;
            }
            in = false;
            ++*pairs;
        }
        if (eol)
            *w++ = '\n';
        p = eol ? eol + 1 : p + len;
    }
    *w = '\0';
    if (in) {
        free(out);
        return NULL;
    }
    return out;
}

static void parse_case(hcase *c)
{
    char v[600];
    bool have_mode = false;
    const char *next;
    for (const char *p = c->text; *p; p = next) {
        const char *eol = strchr(p, '\n');
        next = eol ? eol + 1 : p + strlen(p);
        if (header_value(p, "mode", v, sizeof v)) {
            have_mode = false;
            for (int i = 0; i < 4; i++)
                if (strcmp(v, mode_names[i]) == 0) {
                    c->m = (mode)i;
                    have_mode = true;
                }
            if (!have_mode)
                shape_bad(c, "unknown mode \"%s\"; ", v);
        } else if (header_value(p, "trigger", v, sizeof v)) {
            size_t cl = strcspn(v, " ");
            if (c->ntrig == MAX_TRIGGERS || v[cl] == '\0' || cl >= sizeof c->trig_chan[0]) {
                shape_bad(c, "bad trigger \"%s\"; ", v);
                continue;
            }
            snprintf(c->trig_chan[c->ntrig], sizeof c->trig_chan[0], "%.*s", (int)cl, v);
            snprintf(c->trig_msg[c->ntrig], sizeof c->trig_msg[0], "%s", v + cl + 1);
            cJSON *j = cJSON_Parse(c->trig_msg[c->ntrig]);
            if (!cJSON_IsObject(j))
                shape_bad(c, "trigger message is not a JSON object: %s; ", v + cl + 1);
            cJSON_Delete(j);
            bool known = false;
            for (int i = 0; bus_channels[i]; i++)
                known |= strcmp(bus_channels[i], c->trig_chan[c->ntrig]) == 0;
            if (!known)
                shape_bad(c, "trigger channel %s is not one the daemon subscribes; ",
                          c->trig_chan[c->ntrig]);
            c->ntrig++;
        } else if (header_value(p, "error", v, sizeof v)) {
            snprintf(c->errors, sizeof c->errors, "%s", v);
        }
    }
    if (!have_mode)
        shape_bad(c, "no \"-- mode:\" line; ");
    if (c->errors[0] == '\0')
        shape_bad(c, "no \"-- error:\" line; ");
    if (c->m == M_EVENT && c->ntrig == 0)
        shape_bad(c, "event mode without a \"-- trigger:\" line; ");
    char want[160];
    snprintf(want, sizeof want, "name = \"%s\"", c->stem);
    if (strstr(c->text, want) == NULL)
        shape_bad(c, "the rule is not named after its file (%s); ", want);
    if (c->m == M_SALE && strstr(c->text, "\"sale_request\"") == NULL)
        shape_bad(c, "sale mode but not on sale_request; ");
    int pairs = 0;
    c->stripped = strip_fixtures(c->text, &pairs);
    if (c->m != M_LOAD && (c->stripped == NULL || pairs != 1))
        shape_bad(c, "needs exactly one -- fixtures:begin / -- fixtures:end pair; ");
    if (c->m != M_LOAD && strstr(c->text, "tests =") == NULL)
        shape_bad(c, "has no fixtures (tests =); ");
}

static int by_stem(const void *a, const void *b)
{
    return strcmp(((const hcase *)a)->stem, ((const hcase *)b)->stem);
}

/* Read every *.lua of the corpus; the process exits when it cannot. */
static void load_corpus(void)
{
    const char *root = getenv("NERVE_ROOT");
    snprintf(corpus_dir, sizeof corpus_dir, "%s/" CORPUS_DIR, root && *root ? root : ".");
    char inv[PATH_MAX];
    snprintf(inv, sizeof inv, "%s/rules/inventory.lua", root && *root ? root : ".");
    inventory_text = h_read_file(inv);
    DIR *d = opendir(corpus_dir);
    if (inventory_text == NULL || d == NULL) {
        fprintf(stderr, "test_rule_corpus: cannot read %s or %s (run from the repo root or "
                "set NERVE_ROOT): %s\n", inv, corpus_dir, strerror(errno));
        exit(1);
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".lua") != 0 || e->d_name[0] == '.')
            continue;
        if (ncases == MAX_CASES || n - 4 >= sizeof cases[0].stem) {
            fprintf(stderr, "test_rule_corpus: too many files or name too long: %s\n", e->d_name);
            exit(1);
        }
        hcase *c = &cases[ncases++];
        memset(c, 0, sizeof *c);
        snprintf(c->stem, sizeof c->stem, "%.*s", (int)(n - 4), e->d_name);
        snprintf(c->file, sizeof c->file, "%s", e->d_name);
        char path[PATH_MAX + 256];
        snprintf(path, sizeof path, "%s/%s", corpus_dir, e->d_name);
        c->text = h_read_file(path);
        if (c->text == NULL) {
            fprintf(stderr, "test_rule_corpus: %s: %s\n", path, strerror(errno));
            exit(1);
        }
    }
    closedir(d);
    qsort(cases, (size_t)ncases, sizeof cases[0], by_stem);
}

/* --- requests with their own short timeout ------------------------------------ */

typedef struct tresp {
    long status;                /* 0: no answer (see err) */
    char body[8192];            /* the first bytes of the body */
    size_t len;
    double secs;
    char err[CURL_ERROR_SIZE];
} tresp;

static size_t tsink(char *p, size_t size, size_t n, void *ud)
{
    tresp *r = ud;
    size_t add = size * n, room = sizeof r->body - 1 - r->len;
    memcpy(r->body + r->len, p, add < room ? add : room);
    r->len += add < room ? add : room;
    r->body[r->len] = '\0';
    return size * n;
}

/* METHOD PATH on D (BODY NULL: none; ADMIN: with the token), given up after
 * TIMEOUT_MS. Returns the status, 0 when there was no answer. */
static long timed_http(const h_daemon *d, const char *method, const char *path,
                       const char *body, bool admin, int timeout_ms, tresp *r)
{
    memset(r, 0, sizeof *r);
    CURL *h = curl_easy_init();
    if (h == NULL) {
        snprintf(r->err, sizeof r->err, "curl_easy_init failed");
        return 0;
    }
    struct curl_slist *hd = curl_slist_append(NULL, "Expect:");
    if (body)
        hd = curl_slist_append(hd, "Content-Type: application/json");
    if (admin)
        hd = curl_slist_append(hd, AUTH);
    char url[512];
    snprintf(url, sizeof url, "%s%s", d->base, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, tsink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, r->err);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    double t0 = h_now();
    CURLcode cc = curl_easy_perform(h);
    r->secs = h_now() - t0;
    if (cc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    else if (r->err[0] == '\0')
        snprintf(r->err, sizeof r->err, "%s", curl_easy_strerror(cc));
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    return r->status;
}

/* --- one case ----------------------------------------------------------------- */

static char problems[16384];    /* the running case's failures, one a line */
static h_daemon *cur;           /* the running case's daemon */

static void bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void bad(const char *fmt, ...)
{
    size_t have = strlen(problems);
    if (have + 2 >= sizeof problems)
        return;
    problems[have++] = ' ';
    problems[have++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problems + have, sizeof problems - have, fmt, ap);
    va_end(ap);
    have = strlen(problems);
    if (have + 1 < sizeof problems) {
        problems[have] = '\n';
        problems[have + 1] = '\0';
    }
}

/* TEXT mentions FILE followed by ":<digits>:". */
static bool names_file_line(const char *text, const char *file)
{
    size_t fl = strlen(file);
    for (const char *p = strstr(text, file); p; p = strstr(p + 1, file)) {
        const char *q = p + fl;
        if (*q != ':' || q[1] < '0' || q[1] > '9')
            continue;
        q++;
        while (*q >= '0' && *q <= '9')
            q++;
        if (*q == ':')
            return true;
    }
    return false;
}

/* TEXT contains one of the " | "-separated alternatives of ALTS. */
static bool has_alternative(const char *text, const char *alts)
{
    char buf[600];
    snprintf(buf, sizeof buf, "%s", alts);
    char *save = NULL;
    for (char *t = strtok_r(buf, "|", &save); t; t = strtok_r(NULL, "|", &save)) {
        while (*t == ' ')
            t++;
        size_t n = strlen(t);
        while (n > 0 && t[n - 1] == ' ')
            t[--n] = '\0';
        if (n > 0 && strstr(text, t))
            return true;
    }
    return false;
}

/* One line of at most 300 bytes of TEXT, for a message. */
static const char *excerpt(const char *text, char *buf, size_t len)
{
    snprintf(buf, len, "%.300s", text);
    for (char *p = buf; *p; p++)
        if (*p == '\n')
            *p = ' ';
    return buf;
}

/* 1. nerve check names the file within 5 s. */
static void step_check(const hcase *c, double *secs)
{
    char dir[PATH_MAX], set[PATH_MAX + 16], name[160];
    snprintf(name, sizeof name, "check-%s", c->stem);
    h_rules_dir_at(name, "inventory.lua", inventory_text, dir, sizeof dir, set, sizeof set,
                   __FILE__, __LINE__);
    H_WRITE_FILE(dir, c->file, c->text);
    h_run r;
    double t0 = h_now();
    h_run_nerve(&r, CHECK_MS + 2000, NULL,
                (const char *const[]){ "check", "-c", "config/nerve.yaml", "--set", set, NULL });
    *secs = h_now() - t0;
    char all[65536], ex[320];
    snprintf(all, sizeof all, "%s\n%s", r.out, r.err);
    if (r.timed_out)
        bad("nerve check: still running after %d ms (killed)", CHECK_MS + 2000);
    else if (*secs >= CHECK_MS / 1000.0)
        bad("nerve check: took %.2f s (limit %d ms)", *secs, CHECK_MS);
    if (!r.timed_out && r.status != 1)
        bad("nerve check: exit %d, expected 1: %s", r.status, excerpt(all, ex, sizeof ex));
    if (!r.timed_out && !names_file_line(all, c->file))
        bad("nerve check: output does not name %s:LINE: : %s", c->file,
            excerpt(all, ex, sizeof ex));
    else if (!r.timed_out && !has_alternative(all, c->errors))
        bad("nerve check: output has none of \"%s\": %s", c->errors, excerpt(all, ex, sizeof ex));
    h_run_free(&r);
}

/* The rule's error counter in GET /rules, -1 when not listed or no answer. */
static long long rule_errors(const h_daemon *d, const char *rule)
{
    tresp r;
    if (timed_http(d, "GET", "/rules", NULL, false, ANSWER_MS, &r) != 200)
        return -1;
    cJSON *j = cJSON_Parse(r.body);
    long long v = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "rules")) {
        const char *n = h_jstr(it, "name");
        if (n && strcmp(n, rule) == 0 && !h_jll(it, "errors", &v))
            v = -1;
    }
    cJSON_Delete(j);
    return v;
}

/* A /sale of SALE_SKU: answered within 1 s, 200 or (EXPECT_REJECT) 422
 * policy_rejected naming RULE. Returns the seconds it took. */
static double sale_once(const h_daemon *d, const char *what, bool expect_reject, const char *rule)
{
    tresp r;
    char ex[320];
    timed_http(d, "POST", "/sale", "{\"sku\":\"" SALE_SKU "\",\"qty\":1}", false, ANSWER_MS * 3,
               &r);
    if (r.status == 0) {
        bad("%s: /sale got no answer within %d ms (%s)", what, ANSWER_MS * 3, r.err);
        return r.secs;
    }
    if (r.secs >= ANSWER_MS / 1000.0)
        bad("%s: /sale answered after %.2f s (limit %d ms)", what, r.secs, ANSWER_MS);
    if (!expect_reject) {
        if (r.status != 200)
            bad("%s: /sale answered %ld, expected 200: %s", what, r.status,
                excerpt(r.body, ex, sizeof ex));
        return r.secs;
    }
    cJSON *j = cJSON_Parse(r.body);
    const char *err = h_jstr(j, "error"), *jr = h_jstr(j, "rule");
    if (r.status != 422 || !err || strcmp(err, "policy_rejected") != 0 || !jr ||
        strcmp(jr, rule) != 0)
        bad("%s: /sale answered %ld %s, expected 422 policy_rejected with \"rule\":\"%s\" "
            "(rules.sale_on_error: reject)", what, r.status, excerpt(r.body, ex, sizeof ex), rule);
    cJSON_Delete(j);
    return r.secs;
}

typedef struct figures {
    double check, kill, sale, reload;
} figures;

/* The safety core still works: a critical stock event for SKU engages its
 * kill within 1 s, /healthz and /sale answer within 1 s. */
static void safety_check(const hcase *c, const h_daemon *d, const char *sku, const char *when,
                         figures *f)
{
    char scope[64], msg[160];
    snprintf(scope, sizeof scope, "sku:%s", sku);
    snprintf(msg, sizeof msg, "{\"type\":\"stock_changed\",\"sku\":\"%s\",\"stock_remaining\":1}",
             sku);
    redisReply *rr = h_redis_cmd(redis, "DEL " H_PREFIX "kill:%s", scope);
    if (rr)
        freeReplyObject(rr);
    double t0 = h_now();
    if (h_publish(redis, "inventory_events", msg) < 1)
        bad("%s: PUBLISH inventory_events reached no subscriber", when);
    double dl = h_deadline(KILL_MS), seen = -1;
    while (h_before(dl)) {
        cJSON *k = h_kill_record(redis, scope);
        if (k) {
            seen = h_now() - t0;
            cJSON_Delete(k);
            break;
        }
        h_nap();
    }
    if (seen < 0)
        bad("%s: no kill record %s%s within %d ms of a critical stock event", when,
            H_PREFIX "kill:", scope, KILL_MS);
    else if (seen > f->kill)
        f->kill = seen;
    tresp r;
    timed_http(d, "GET", "/healthz", NULL, false, ANSWER_MS, &r);
    if (r.status != 200)
        bad("%s: /healthz answered %ld within %d ms (%s)", when, r.status, ANSWER_MS, r.err);
    double s = sale_once(d, when, c->m == M_SALE, c->stem);
    if (s > f->sale)
        f->sale = s;
}

/* Write the whole file into DIR and ask for a reload, twice: 422 naming it
 * within 5 s each. */
static void step_reload(const hcase *c, const h_daemon *d, const char *dir, figures *f)
{
    char ex[320];
    H_WRITE_FILE(dir, c->file, c->text);
    for (int i = 1; i <= 2; i++) {
        tresp r;
        timed_http(d, "POST", "/admin/reload", "{}", true, RELOAD_MS + 1000, &r);
        if (r.status == 0) {
            bad("reload %d: no answer within %d ms (%s)", i, RELOAD_MS + 1000, r.err);
            continue;
        }
        if (r.secs > f->reload)
            f->reload = r.secs;
        if (r.secs >= RELOAD_MS / 1000.0)
            bad("reload %d: answered after %.2f s (limit %d ms)", i, r.secs, RELOAD_MS);
        if (r.status != 422 || !names_file_line(r.body, c->file))
            bad("reload %d: answered %ld, expected 422 naming %s:LINE: : %s", i, r.status,
                c->file, excerpt(r.body, ex, sizeof ex));
    }
}

/* 2. The daemon with the rule: see the file's header. */
static void step_daemon(const hcase *c, figures *f)
{
    char dir[PATH_MAX], set[PATH_MAX + 16], name[160];
    snprintf(name, sizeof name, "daemon-%s", c->stem);
    h_rules_dir_at(name, "inventory.lua", inventory_text, dir, sizeof dir, set, sizeof set,
                   __FILE__, __LINE__);
    bool live_rule = c->m == M_EVENT || c->m == M_SALE;
    if (live_rule)
        H_WRITE_FILE(dir, c->file, c->stripped);
    const char *sets[] = { set, "panic.dry_run=true", "server.threads=8",
                           "server.shutdown_grace_ms=2000", NULL };
    cur = h_daemon_startv(redis, true, sets, sizeof sets / sizeof sets[0] - 1);
    if (cur == NULL) {
        bad("the daemon did not start with %s%s (see its log above)", c->file,
            live_rule ? " minus its fixtures" : "");
        return;
    }
    h_daemon *d = cur;
    H_WAIT_SUBSCRIBERS(redis, "inventory_events", 1);
    H_SET_STOCK(d, SALE_SKU, SALE_STOCK);

    if (live_rule) {
        if (c->m == M_EVENT) {
            for (int i = 0; i < c->ntrig; i++) {
                H_WAIT_SUBSCRIBERS(redis, c->trig_chan[i], 1);
                for (int k = 0; k < 2; k++)
                    if (h_publish(redis, c->trig_chan[i], c->trig_msg[i]) < 1)
                        bad("trigger: PUBLISH %s reached no subscriber", c->trig_chan[i]);
            }
        } else {
            for (int k = 0; k < 3; k++) {
                double s = sale_once(d, "hostile sale", true, c->stem);
                if (s > f->sale)
                    f->sale = s;
            }
        }
        safety_check(c, d, "OTHER", "after the triggers", f);
        double dl = h_deadline(2000);
        long long errs = -1;
        while (h_before(dl) && (errs = rule_errors(d, c->stem)) <= 0)
            h_nap();
        if (errs <= 0)
            bad("GET /rules: errors of rule %s is %lld, expected > 0", c->stem, errs);
    }
    step_reload(c, d, dir, f);
    safety_check(c, d, live_rule ? "OTHER-2" : "OTHER", "after the refused reloads", f);
    if (!h_daemon_alive(d)) {
        bad("the daemon died");
        return;
    }
}

static void test_case(void **state)
{
    hcase *c = *state;
    problems[0] = '\0';
    cur = NULL;
    figures f = { 0 };
    if (c->shape[0])
        fail_msg("%s: %s", c->file, c->shape);
    step_check(c, &f.check);
    redisReply *rr = h_redis_cmd(redis, "DEL " H_PREFIX "kill:sku:OTHER " H_PREFIX
                                 "kill:sku:OTHER-2");
    if (rr)
        freeReplyObject(rr);
    step_daemon(c, &f);
    if (cur && problems[0] == '\0') {
        int rc = h_daemon_stop(cur);
        cur = NULL;
        if (rc != 0)
            bad("the daemon exited %d after SIGTERM, expected 0", rc);
    }
    printf("[ corpus ] %-34s %-7s check %.2f s, kill <= %.3f s, sale <= %.3f s, "
           "reload <= %.3f s%s\n", c->stem, mode_names[c->m], f.check, f.kill, f.sale, f.reload,
           problems[0] ? ", FAILED" : "");
    if (problems[0]) {
        /* cmocka truncates long messages: the list goes to stdout whole. */
        printf("%s (mode %s) broke these promises:\n%s", c->file, mode_names[c->m], problems);
        fail_msg("%s: see the list above", c->file);
    }
    h_pass();
}

/* A failed case's daemon may have an evaluator that never returns: kill it
 * rather than wait 20 s for a clean exit. */
static int case_teardown(void **state)
{
    if (cur && cur->pid > 0) {
        kill(-cur->pid, SIGKILL);
        kill(cur->pid, SIGKILL);
    }
    cur = NULL;
    return h_test_teardown(state);
}

/* The corpus itself: big enough, and every file in the shape the driver
 * reads (otherwise a case could pass by testing nothing). */
static void test_corpus_shape(void **state)
{
    (void)state;
    int counts[4] = { 0 };
    char all[8192] = "";
    for (int i = 0; i < ncases; i++) {
        counts[cases[i].m]++;
        if (cases[i].shape[0]) {
            size_t have = strlen(all);
            snprintf(all + have, sizeof all - have, "  %s: %s\n", cases[i].file, cases[i].shape);
        }
    }
    printf("[ corpus ] %d files in %s: %d event, %d sale, %d load, %d fixture\n", ncases,
           corpus_dir, counts[M_EVENT], counts[M_SALE], counts[M_LOAD], counts[M_FIXTURE]);
    if (ncases < CORPUS_MIN)
        fail_msg("%d hostile rules in %s, expected at least %d", ncases, corpus_dir, CORPUS_MIN);
    if (all[0])
        fail_msg("corpus files not in the driver's shape:\n%s", all);
    if (counts[M_EVENT] == 0 || counts[M_SALE] == 0 || counts[M_LOAD] == 0 ||
        counts[M_FIXTURE] == 0)
        fail_msg("every mode needs at least one file");
    h_pass();
}

int main(void)
{
    load_corpus();
    for (int i = 0; i < ncases; i++)
        parse_case(&cases[i]);
    static struct CMUnitTest tests[MAX_CASES + 1];
    tests[0] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(test_corpus_shape,
                                                                  h_test_setup, h_test_teardown);
    for (int i = 0; i < ncases; i++)
        tests[i + 1] = (struct CMUnitTest){
            .name = cases[i].stem, .test_func = test_case, .setup_func = h_test_setup,
            .teardown_func = case_teardown, .initial_state = &cases[i],
        };
    const char *filter = getenv("CMOCKA_FILTER");     /* this cmocka does not read it */
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    h_group_use(&redis, NULL, NULL);
    return _cmocka_run_group_tests("rule_corpus", tests, (size_t)ncases + 1, h_group_setup,
                                   h_group_teardown);
}
