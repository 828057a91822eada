/* ledger_cli.c -- `nerve ledger migrate|verify|export|backup|sales`: the
 * ledger's commands for operators and analysts (README "Ledger").
 *
 * They read the same config as `nerve serve` (-c, --set, environment:
 * NERVE_LEDGER_URL chooses PostgreSQL), open the ledger it names and do one
 * thing. verify also reads the stock of each SKU from Redis through the
 * keys module, the one definition of where a SKU's stock lives.
 *
 * Exit codes: 0 done (verify: every SKU matches); 1 verify found SKUs that
 * differ (each named on stdout); 2 usage, or backup asked of PostgreSQL;
 * 3 the database, Redis or a file could not be used (why, on stderr).
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nerve/cli.h"
#include "nerve/config.h"
#include "nerve/keys.h"
#include "nerve/ledger.h"
#include "nerve/rds.h"

#define EXIT_DIFFERS 1
#define EXIT_USAGE   2
#define EXIT_FAILED  3
#define PIPELINE     512 /* GETs in flight per round trip */

typedef struct lopts {
    cli_args a; /* -c, --set, --log-format, --help, the positional arguments */
    const char *since;
    ledger_format format;
    ledger_table table;
    int by_day;
} lopts;

static void usage(FILE *f) {
    fprintf(f,
            "usage: nerve ledger COMMAND [-c FILE] [--set key=value ...] [options]\n"
            "\n"
            "commands:\n"
            "  migrate                      apply the schema migrations not yet recorded\n"
            "  verify                       per SKU, stock changes minus sales in the ledger must\n"
            "                               equal the stock in Redis; names each SKU that differs\n"
            "  export [--since T] [--format jsonl|csv] [--table sales|stock_changes|kills|alerts|\n"
            "         decisions]            the rows (default: sales) with ts >= T (RFC 3339 or\n"
            "                               epoch seconds), oldest first, to stdout\n"
            "  backup FILE                  online copy of an SQLite ledger (PostgreSQL: pg_dump)\n"
            "  sales [--by sku|day]         orders, quantity and revenue per SKU or UTC day\n"
            "\n"
            "The ledger is ledger.path (SQLite) or ledger.url / NERVE_LEDGER_URL (PostgreSQL).\n"
            "Exit: 0 done; 1 verify found SKUs that differ; 2 usage (or backup of PostgreSQL);\n"
            "3 the database, Redis or a file could not be used.\n");
}

enum { OPT_SINCE = CLI_OPT(0), OPT_FORMAT, OPT_TABLE, OPT_BY };

static int on_opt(void *ud, int val, const char *arg) {
    lopts *o = ud;
    switch (val) {
    case OPT_SINCE: o->since = arg; return 0;
    case OPT_FORMAT:
        if (strcmp(arg, "jsonl") == 0)
            o->format = LEDGER_JSONL;
        else if (strcmp(arg, "csv") == 0)
            o->format = LEDGER_CSV;
        else {
            fprintf(stderr, "nerve ledger: --format must be jsonl or csv (got %s)\n", arg);
            return -1;
        }
        return 0;
    case OPT_TABLE: {
        int t = ledger_table_of(arg);
        if (t < 0) {
            fprintf(
                stderr,
                "nerve ledger: --table must be sales, stock_changes, kills, alerts or decisions "
                "(got %s)\n",
                arg);
            return -1;
        }
        o->table = (ledger_table)t;
        return 0;
    }
    case OPT_BY:
        if (strcmp(arg, "sku") && strcmp(arg, "day")) {
            fprintf(stderr, "nerve ledger: --by must be sku or day (got %s)\n", arg);
            return -1;
        }
        o->by_day = strcmp(arg, "day") == 0;
        return 0;
    default: return -1;
    }
}

static int parse(int argc, char **argv, lopts *o) {
    static const struct option own[] = {
        { "since", required_argument, NULL, OPT_SINCE },
        { "format", required_argument, NULL, OPT_FORMAT },
        { "table", required_argument, NULL, OPT_TABLE },
        { "by", required_argument, NULL, OPT_BY },
        { NULL, 0, NULL, 0 },
    };
    memset(o, 0, sizeof *o);
    return cli_parse("nerve ledger", "nerve ledger --help", argc, argv, own, on_opt, o, &o->a);
}

/* T as epoch seconds: a number, or RFC 3339 ("2026-12-04T10:00:00Z",
 * fractional seconds and a +hh:mm offset allowed; a date alone is its
 * midnight UTC). 0 or -1. */
static int parse_time(const char *s, double *out) {
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (end != s && !*end && !errno && isfinite(d) && d >= 0) {
        *out = d;
        return 0;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int n = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &n) != 3 || n != 10)
        return -1;
    const char *p = s + n;
    double frac = 0;
    long off = 0;
    if (*p) {
        if (*p != 'T' && *p != 't' && *p != ' ') return -1;
        p++;
        if (sscanf(p, "%2d:%2d:%2d%n", &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 3 || n != 8)
            return -1;
        p += n;
        if (*p == '.') {
            char *fe;
            frac = strtod(p, &fe);
            if (fe == p + 1) return -1;
            p = fe;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int hh, mm;
            if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &n) != 2 || n != 5 || hh > 23 || mm > 59)
                return -1;
            off = (hh * 3600L + mm * 60L) * (*p == '-' ? -1 : 1);
            p += 6;
        } else {
            return -1;
        }
        if (*p) return -1;
    }
    if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    if (t == (time_t)-1) return -1;
    *out = (double)t - (double)off + frac;
    return *out >= 0 ? 0 : -1;
}

/* Open the configured ledger; MIGRATE: apply the migrations, else require
 * a schema (and, for SQLite, an existing file: a read never creates one). */
static ledger *open_ledger(const cfg *c, bool migrate) {
    char err[700];
    if (!c->ledger_url[0] && !migrate && access(c->ledger_path, F_OK) != 0) {
        fprintf(stderr,
                "nerve ledger: cannot open %s: %s (run nerve ledger migrate, or start nerve)\n",
                c->ledger_path, strerror(errno));
        return NULL;
    }
    ledger *l = ledger_open(c->ledger_url, c->ledger_path, err, sizeof err);
    if (!l) {
        fprintf(stderr, "nerve ledger: %s\n", err);
        return NULL;
    }
    int v = 0;
    if (migrate) {
        int applied = 0;
        if (ledger_migrate(l, &applied) || ledger_schema_version(l, &v)) {
            fprintf(stderr, "nerve ledger: %s %s: %s\n", ledger_backend(l), ledger_where(l),
                    ledger_errstr(l));
            ledger_close(l);
            return NULL;
        }
        printf("ledger %s %s: schema version %d (%d migration%s applied)\n", ledger_backend(l),
               ledger_where(l), v, applied, applied == 1 ? "" : "s");
        return l;
    }
    if (ledger_schema_version(l, &v)) {
        fprintf(stderr, "nerve ledger: %s %s: %s\n", ledger_backend(l), ledger_where(l),
                ledger_errstr(l));
        ledger_close(l);
        return NULL;
    }
    if (v < ledger_schema_latest()) {
        fprintf(stderr,
                "nerve ledger: %s %s has schema version %d, this nerve needs %d: run nerve "
                "ledger migrate\n",
                ledger_backend(l), ledger_where(l), v, ledger_schema_latest());
        ledger_close(l);
        return NULL;
    }
    return l;
}

/* ---- verify --------------------------------------------------------------------- */

/* GET the stock of B[0..n-1] (pipelined): STOCK[i] = the value, or -1 when
 * Redis has no record. 0, or -1 with ERR. */
static int redis_stocks(rds_client *rc, const cfg *c, const ledger_balance *b, size_t n,
                        long long *stock, char *err, size_t errlen) {
    for (size_t base = 0; base < n; base += PIPELINE) {
        size_t m = n - base < PIPELINE ? n - base : PIPELINE;
        for (size_t i = 0; i < m; i++) {
            char key[RDS_KEY_MAX];
            if (keys_sku(key, c->redis_prefix, c->bus_partitions, "stock", b[base + i].sku) < 0) {
                snprintf(err, errlen, "SKU %s: its key would be too long", b[base + i].sku);
                return -1;
            }
            const char *argv[] = { "GET", key };
            if (rds_appendargv(rc, 2, argv, NULL)) {
                snprintf(err, errlen, "redis: %s", rds_errstr(rc));
                return -1;
            }
        }
        for (size_t i = 0; i < m; i++) {
            redisReply *r = rds_get_reply(rc);
            if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL)) {
                snprintf(err, errlen, "redis: %s",
                         r && r->type == REDIS_REPLY_ERROR ? r->str : rds_errstr(rc));
                freeReplyObject(r);
                return -1;
            }
            char *end = NULL;
            stock[base + i] = r->type == REDIS_REPLY_NIL ? -1 : strtoll(r->str, &end, 10);
            freeReplyObject(r);
        }
    }
    return 0;
}

static int cmd_verify(const cfg *c) {
    ledger *l = open_ledger(c, false);
    if (!l) return EXIT_FAILED;
    ledger_balance *b = NULL;
    size_t n = 0;
    if (ledger_balances(l, &b, &n)) {
        fprintf(stderr, "nerve ledger: %s %s: %s\n", ledger_backend(l), ledger_where(l),
                ledger_errstr(l));
        ledger_close(l);
        return EXIT_FAILED;
    }
    rds_opts ro;
    char err[600] = "";
    int rc = EXIT_FAILED;
    rds_client *r = NULL;
    long long *stock = calloc(n + 1, sizeof *stock);
    if (!stock) {
        snprintf(err, sizeof err, "out of memory");
    } else if (cfg_redis_opts(c, &ro, err, sizeof err) == 0 && (r = rds_client_new(&ro)) != NULL &&
               redis_stocks(r, c, b, n, stock, err, sizeof err) == 0) {
        size_t differ = 0;
        for (size_t i = 0; i < n; i++) {
            /* No record in Redis is a stock of 0. */
            if ((stock[i] < 0 ? 0 : stock[i]) == b[i].net) continue;
            differ++;
            if (stock[i] < 0)
                printf("%s: ledger says %lld, Redis has no stock record\n", b[i].sku, b[i].net);
            else
                printf("%s: ledger says %lld, Redis has %lld (Redis - ledger = %+lld)\n", b[i].sku,
                       b[i].net, stock[i], stock[i] - b[i].net);
        }
        if (differ) {
            fprintf(stderr, "nerve ledger verify: %zu of %zu SKUs differ from Redis\n", differ, n);
            rc = EXIT_DIFFERS;
        } else {
            printf("ledger verify: ok: %zu SKUs, stock changes minus sales equal the stock in "
                   "Redis (%s %s)\n",
                   n, ledger_backend(l), ledger_where(l));
            rc = 0;
        }
    } else if (!r && stock && !err[0]) {
        snprintf(err, sizeof err, "redis: out of memory");
    }
    if (rc == EXIT_FAILED) fprintf(stderr, "nerve ledger verify: %s\n", err);
    rds_client_free(r);
    free(stock);
    ledger_balances_free(b, n);
    ledger_close(l);
    return rc;
}

/* ---- the others -------------------------------------------------------------------- */

static int fail(ledger *l) {
    fprintf(stderr, "nerve ledger: %s %s: %s\n", ledger_backend(l), ledger_where(l),
            ledger_errstr(l));
    ledger_close(l);
    return EXIT_FAILED;
}

static int cmd_export(const cfg *c, const lopts *o) {
    double since = 0;
    if (o->since && parse_time(o->since, &since)) {
        fprintf(stderr,
                "nerve ledger: --since must be RFC 3339 (2026-12-04T10:00:00Z) or epoch seconds "
                "(got %s)\n",
                o->since);
        return EXIT_USAGE;
    }
    ledger *l = open_ledger(c, false);
    if (!l) return EXIT_FAILED;
    if (ledger_export(l, o->table, since, o->format, stdout, NULL) || fflush(stdout))
        return fail(l);
    ledger_close(l);
    return 0;
}

static int cmd_backup(const cfg *c, const lopts *o) {
    if (o->a.nrest != 2) {
        fprintf(stderr, "usage: nerve ledger backup FILE\n");
        return EXIT_USAGE;
    }
    if (c->ledger_url[0]) {
        fprintf(stderr, "nerve ledger backup: the ledger is PostgreSQL: use pg_dump (pg_dump -Fc "
                        "-f FILE URL; restore with pg_restore)\n");
        return EXIT_USAGE;
    }
    ledger *l = open_ledger(c, false);
    if (!l) return EXIT_FAILED;
    if (ledger_backup(l, o->a.rest[1])) return fail(l);
    printf("ledger backup: %s copied to %s\n", ledger_where(l), o->a.rest[1]);
    ledger_close(l);
    return 0;
}

int ledger_cli_main(int argc, char **argv) {
    lopts o;
    if (parse(argc, argv, &o)) {
        cli_args_free(&o.a);
        return EXIT_USAGE;
    }
    if (o.a.help) {
        usage(stdout);
        cli_args_free(&o.a);
        return 0;
    }
    const char *sub = o.a.nrest > 0 ? o.a.rest[0] : NULL;
    static const char *const subs[] = { "migrate", "verify", "export", "backup", "sales" };
    int which = -1;
    for (int i = 0; sub && i < 5; i++)
        if (strcmp(sub, subs[i]) == 0) which = i;
    if (which < 0) {
        if (sub)
            fprintf(stderr, "nerve ledger: unknown command '%s' (see nerve ledger --help)\n", sub);
        else
            usage(stderr);
        cli_args_free(&o.a);
        return EXIT_USAGE;
    }
    if (which != 3 && o.a.nrest > 1) {
        fprintf(stderr, "nerve ledger %s: unexpected argument '%s'\n", sub, o.a.rest[1]);
        cli_args_free(&o.a);
        return EXIT_USAGE;
    }
    cfg *c = cli_load_config(&o.a);
    int rc = EXIT_FAILED;
    if (c) {
        ledger *l;
        switch (which) {
        case 0:
            l = open_ledger(c, true);
            rc = l ? 0 : EXIT_FAILED;
            ledger_close(l);
            break;
        case 1: rc = cmd_verify(c); break;
        case 2: rc = cmd_export(c, &o); break;
        case 3: rc = cmd_backup(c, &o); break;
        default:
            l = open_ledger(c, false);
            if (!l) break;
            rc = ledger_sales_report(l, o.by_day, stdout) ? fail(l) : 0;
            if (rc == 0) ledger_close(l);
            break;
        }
    }
    cfg_free(c);
    cli_args_free(&o.a);
    return rc;
}
