/* declog_cli.c -- `nerve decisions`: read the decision log (declog.h) from
 * Redis, the last N records oldest first, then with --follow every new one
 * until SIGINT or SIGTERM.
 *
 * Why a command and not redis-cli: records are JSON in one stream field, a
 * rule's reason and the event are a stranger's text; this prints them as
 * one escaped line each (a reason cannot forge a second line or field) and
 * filters by rule, scope and kind the way GET /decisions does.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nerve/cli.h"
#include "nerve/config.h"
#include "nerve/declog.h"
#include "nerve/jsonck.h"

#define EXIT_FAILED     1
#define EXIT_USAGE      2
#define FOLLOW_BLOCK_MS 500 /* XREAD BLOCK: how soon a signal is noticed */

typedef struct dopts {
    cli_args a;
    declog_filter f;
    bool follow, json;
} dopts;

static void usage(FILE *f) {
    fprintf(
        f, "usage: nerve decisions [-c FILE] [--rule R] [--scope S] [--kind decision|rule_error]\n"
           "                       [--limit N] [--follow] [--json]\n"
           "\n"
           "The decision log: every rule decision (alert, kill, reject) and rule error, read\n"
           "from the stream PREFIXdecisions in the Redis of the config (redis.url). Prints the\n"
           "last N (default 20, at most 1000) records that pass the filters, oldest first, one\n"
           "line each: time, kind, rule, action, level, scope, reason or error, channel, event\n"
           "id, generation (strings escaped, quoted when they hold a space, quote or =).\n"
           "The filters scan back at most max(1000, 10 x N) entries (10000 at most).\n"
           "\n"
           "  --rule R, --scope S, --kind K   only records with that rule, scope, kind\n"
           "  --limit N                       how many to print first (1..1000, default 20)\n"
           "  --follow                        then wait for new records and print each as it\n"
           "                                  comes, until SIGINT or SIGTERM\n"
           "  --json                          one JSON object a line (the record and its \"id\")\n"
           "  -c, --config FILE, --set dotted.key=value, --log-format text|json  (see nerve help)\n"
           "\n"
           "exit status: 0 done (also a --follow ended by SIGINT/SIGTERM), 1 the config does not\n"
           "load or Redis does not answer, 2 usage.\n");
}

enum { OPT_RULE = CLI_OPT(0), OPT_SCOPE, OPT_KIND, OPT_LIMIT, OPT_FOLLOW, OPT_JSON };

static int set_filter(const char **dst, const char *name, const char *arg) {
    if (strlen(arg) > DECLOG_FILTER_MAX) {
        fprintf(stderr, "nerve decisions: --%s must be at most %d bytes\n", name,
                DECLOG_FILTER_MAX);
        return -1;
    }
    *dst = arg;
    return 0;
}

static int on_opt(void *ud, int val, const char *arg) {
    dopts *o = ud;
    switch (val) {
    case OPT_RULE: return set_filter(&o->f.rule, "rule", arg);
    case OPT_SCOPE: return set_filter(&o->f.scope, "scope", arg);
    case OPT_KIND:
        if (strcmp(arg, "decision") && strcmp(arg, "rule_error")) {
            fprintf(stderr, "nerve decisions: --kind must be decision or rule_error\n");
            return -1;
        }
        o->f.kind = arg;
        return 0;
    case OPT_LIMIT:
        if (declog_parse_limit(arg, &o->f.limit)) {
            fprintf(stderr, "nerve decisions: --limit must be an integer from 1 to %d, not '%s'\n",
                    DECLOG_LIMIT_MAX, arg);
            return -1;
        }
        return 0;
    case OPT_FOLLOW: o->follow = true; return 0;
    case OPT_JSON: o->json = true; return 0;
    default: return -1;
    }
}

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

/* " KEY=VALUE", VALUE escaped (control characters as \u00XX) and quoted
 * when it is empty or holds a space, a quote or '='. */
static void print_pair(const char *key, const char *v) {
    size_t n = strlen(v);
    char *e = malloc(JSONCK_ESC_MAX(n) + 1);
    if (!e) return;
    *jsonck_escape(e, v) = 0;
    bool quote = !n || strpbrk(v, " \"=\\") || strcmp(e, v) != 0;
    printf(quote ? " %s=\"%s\"" : " %s=%s", key, e);
    free(e);
}

static void print_field(const cJSON *rec, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rec, key);
    if (cJSON_IsString(v)) {
        print_pair(key, v->valuestring);
    } else if (cJSON_IsBool(v)) {
        printf(" %s=%s", key, cJSON_IsTrue(v) ? "true" : "false");
    } else if (cJSON_IsNumber(v)) {
        printf(" %s=%.0f", key, v->valuedouble);
    }
}

static void print_record(const cJSON *rec, bool json) {
    if (json) {
        char *t = cJSON_PrintUnformatted(rec);
        if (t) puts(t);
        free(t);
        fflush(stdout);
        return;
    }
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(rec, "ts");
    char when[64] = "-";
    if (cJSON_IsNumber(ts) && ts->valuedouble > 0 && ts->valuedouble < 1e11) {
        time_t sec = (time_t)ts->valuedouble;
        struct tm tm;
        gmtime_r(&sec, &tm);
        size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when + n, sizeof when - n, ".%03dZ",
                 (int)((ts->valuedouble - (double)sec) * 1000.0 + 0.5) % 1000);
    }
    fputs(when, stdout);
    static const char *const keys[] = { "kind",    "rule",     "action",     "level",
                                        "scope",   "reason",   "halt_sales", "error",
                                        "channel", "event_id", "generation" };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) print_field(rec, keys[i]);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "event_truncated")))
        fputs(" event_truncated=true", stdout);
    putchar('\n');
    fflush(stdout);
}

/* Stream ids "MS-SEQ" in order: <0, 0, >0. */
static int id_cmp(const char *a, const char *b) {
    unsigned long long am = 0, as = 0, bm = 0, bs = 0;
    sscanf(a, "%llu-%llu", &am, &as);
    sscanf(b, "%llu-%llu", &bm, &bs);
    return am != bm ? (am < bm ? -1 : 1) : as != bs ? (as < bs ? -1 : 1) : 0;
}

static int redis_fail(rds_client *c, const redisReply *r, const char *what) {
    fprintf(stderr, "nerve decisions: redis: %s: %s\n", what,
            !r                             ? rds_errstr(c)
            : r->type == REDIS_REPLY_ERROR ? r->str
                                           : "unexpected reply");
    return EXIT_FAILED;
}

/* Print every new record after LAST (a stream id) until a signal. */
static int follow(rds_client *c, const char *key, char *last, size_t lastlen, const dopts *o) {
    char block[16];
    snprintf(block, sizeof block, "%d", FOLLOW_BLOCK_MS);
    while (!stop) {
        const char *argv[] = { "XREAD", "COUNT", "100", "BLOCK", block, "STREAMS", key, last };
        size_t lens[8];
        for (int k = 0; k < 8; k++) lens[k] = strlen(argv[k]);
        redisReply *r = rds_commandargv(c, 8, argv, lens);
        if (stop) {
            freeReplyObject(r);
            break;
        }
        if (!r || (r->type != REDIS_REPLY_ARRAY && r->type != REDIS_REPLY_NIL)) {
            int rc = redis_fail(c, r, "XREAD");
            freeReplyObject(r);
            return rc;
        }
        /* [[key, [entry...]]] or nil after the block. */
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
            r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2) {
            const redisReply *entries = r->element[0]->element[1];
            for (size_t i = 0; entries->type == REDIS_REPLY_ARRAY && i < entries->elements; i++) {
                const redisReply *e = entries->element[i];
                if (e->type == REDIS_REPLY_ARRAY && e->elements >= 1 &&
                    e->element[0]->type == REDIS_REPLY_STRING)
                    snprintf(last, lastlen, "%s", e->element[0]->str);
                cJSON *rec = declog_entry(e);
                if (rec && declog_match(rec, &o->f)) print_record(rec, o->json);
                cJSON_Delete(rec);
            }
        }
        freeReplyObject(r);
    }
    return 0;
}

static int run(const cfg *c, const dopts *o) {
    rds_opts ro;
    char err[512];
    if (cfg_redis_opts(c, &ro, err, sizeof err)) {
        fprintf(stderr, "nerve decisions: %s\n", err);
        return EXIT_FAILED;
    }
    /* A blocked XREAD answers after FOLLOW_BLOCK_MS: the command timeout
     * must outlast it. */
    if (ro.command_timeout_ms < FOLLOW_BLOCK_MS + 1000)
        ro.command_timeout_ms = FOLLOW_BLOCK_MS + 1000;
    rds_client *rc = rds_client_new(&ro);
    if (!rc) {
        fprintf(stderr, "nerve decisions: out of memory\n");
        return EXIT_FAILED;
    }
    char key[RDS_KEY_MAX], last[64] = "0-0";
    declog_key(key, sizeof key, c->redis_prefix);
    int status = 0;
    /* The newest id before reading: --follow starts after it (or after the
     * newest record printed), so nothing is printed twice or skipped. */
    if (o->follow) {
        redisReply *r = rds_command(rc, "XREVRANGE %s + - COUNT 1", key);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            status = redis_fail(rc, r, "XREVRANGE");
            freeReplyObject(r);
            rds_client_free(rc);
            return status;
        }
        if (r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
            r->element[0]->elements >= 1 && r->element[0]->element[0]->type == REDIS_REPLY_STRING)
            snprintf(last, sizeof last, "%s", r->element[0]->element[0]->str);
        freeReplyObject(r);
    }
    size_t scanned = 0;
    cJSON *arr = declog_query(rc, c->redis_prefix, &o->f, &scanned, err, sizeof err);
    if (!arr) {
        fprintf(stderr, "nerve decisions: %s\n", err);
        rds_client_free(rc);
        return EXIT_FAILED;
    }
    for (int i = cJSON_GetArraySize(arr) - 1; i >= 0; i--) {
        const cJSON *rec = cJSON_GetArrayItem(arr, i);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(rec, "id");
        if (cJSON_IsString(id) && id_cmp(id->valuestring, last) > 0 && strlen(id->valuestring) < 60)
            snprintf(last, sizeof last, "%s", id->valuestring);
        print_record(rec, o->json);
    }
    cJSON_Delete(arr);
    if (o->follow) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        status = follow(rc, key, last, sizeof last, o);
    }
    rds_client_free(rc);
    return status;
}

int declog_cli_main(int argc, char **argv) {
    static const struct option own[] = {
        { "rule", required_argument, NULL, OPT_RULE },
        { "scope", required_argument, NULL, OPT_SCOPE },
        { "kind", required_argument, NULL, OPT_KIND },
        { "limit", required_argument, NULL, OPT_LIMIT },
        { "follow", no_argument, NULL, OPT_FOLLOW },
        { "json", no_argument, NULL, OPT_JSON },
        { NULL, 0, NULL, 0 },
    };
    dopts o;
    memset(&o, 0, sizeof o);
    o.f.limit = 20;
    if (cli_parse("nerve decisions", "nerve decisions --help", argc, argv, own, on_opt, &o, &o.a)) {
        cli_args_free(&o.a);
        return EXIT_USAGE;
    }
    if (o.a.help) {
        usage(stdout);
        cli_args_free(&o.a);
        return 0;
    }
    if (o.a.nrest > 0) {
        fprintf(stderr, "nerve decisions: unexpected argument '%s' (see nerve decisions --help)\n",
                o.a.rest[0]);
        cli_args_free(&o.a);
        return EXIT_USAGE;
    }
    cfg *c = cli_load_config(&o.a);
    int rc = c ? run(c, &o) : EXIT_FAILED;
    cfg_free(c);
    cli_args_free(&o.a);
    return rc;
}
