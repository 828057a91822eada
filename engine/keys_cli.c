/* keys_cli.c -- `nerve keys where SKU...` and `nerve keys migrate` (see
 * keys_cli.h; the layout itself is keys.h).
 *
 * Why a command: the partition count is part of every key name, so changing
 * bus.partitions (or upgrading from the {SKU} layout of nerve before issue
 * 11) means renaming every SKU's keys. Doing that by hand with redis-cli is
 * how stock gets lost or doubled; this does it one SKU at a time, each in one
 * script, so it can be stopped and re-run at any point.
 *
 * How a migration goes:
 *   1. refuse on a Redis Cluster (no routing yet: the scale-out issue), while
 *      any client listens on PREFIXcontrol (a running nerve), or while any
 *      sale lock exists (a nerve selling right now);
 *   2. one SCAN (MATCH PREFIX{..., never KEYS) over the tagged keys; each is
 *      parsed as a key of the source layout (others are skipped: the target
 *      layout's own keys, streams); stock and price keys move per SKU in one
 *      script that first checks the SKU's lock in both layouts, order records
 *      move per SCAN page in one script;
 *   3. when nothing was left behind, record the new count in
 *      PREFIXmeta:partitions (until then daemons with either count refuse to
 *      start: one with the old count sees the record, one with the new count
 *      is told to finish the migration).
 *
 * The rule for a key present in both layouts (a daemon with the new count ran
 * and seeded or sold before the migration finished): with equal values the
 * source is deleted (nothing is lost, nothing doubles); with different values
 * neither is touched, the key is named as a conflict, the count is not
 * recorded and the exit status is 1, unless --prefer source|target says which
 * one wins. A move is RENAME, which keeps the TTL (order records expire).
 * A crash between two scripts leaves every key in exactly one layout, so a
 * re-run moves what is left.
 *
 * Why scripts are enough: on a single Redis (all nerve supports until it
 * routes cluster redirections) a script is atomic over any keys, so a SKU's
 * copy and delete cannot be separated by a crash; DUMP/RESTORE across nodes
 * is for the cluster-aware version of this command.
 */
#include "nerve/keys_cli.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/cli.h"
#include "nerve/config.h"
#include "nerve/keys.h"
#include "nerve/rds.h"
#include "nerve/sku.h"

#define SCAN_COUNT     "1000"
#define PROGRESS_EVERY 1000 /* SKUs */
#define SHOW_MAX       20   /* conflicts, ambiguous keys named on stderr */

typedef struct kopts {
    cli_args a; /* -c, --set, --log-format, --help, the positional arguments */
    const char *from, *to, *prefer;
    bool dry_run;
} kopts;

static void usage(FILE *f) {
    fprintf(f, "usage: nerve keys where [-c FILE] [--set K=V] SKU...\n"
               "       nerve keys migrate [-c FILE] [--set K=V] [--from N|legacy] --to M\n"
               "                          [--dry-run] [--prefer source|target]\n"
               "\n"
               "where: one line per SKU, tab-separated: SKU, partition (of bus.partitions),\n"
               "  stock key, price key, lock key, order record pattern, and the inventory and\n"
               "  sales partition streams its events go to. No Redis needed.\n"
               "\n"
               "migrate: move every SKU's stock, price and order records (TTL kept) from the\n"
               "  layout with N partitions (default: the count recorded in PREFIXmeta:partitions;\n"
               "  legacy: the PREFIX{SKU}:stock layout of nerve before the durable log) to the\n"
               "  layout with M partitions, then record M. Stop every nerve first: it refuses\n"
               "  while one listens on PREFIXcontrol or holds a sale lock. Stream entries are\n"
               "  not moved. Safe to interrupt and re-run. A key present in both layouts with\n"
               "  different values is left alone and named (exit 1) unless --prefer says\n"
               "  which wins. --dry-run counts what would move and changes nothing.\n"
               "\n"
               "exit status: 0 done, 1 error or refusal (the message says why), 2 usage.\n");
}

enum { OPT_FROM = CLI_OPT(0), OPT_TO, OPT_PREFER, OPT_DRY_RUN };

static int on_opt(void *ud, int val, const char *arg) {
    kopts *o = ud;
    switch (val) {
    case OPT_FROM: o->from = arg; return 0;
    case OPT_TO: o->to = arg; return 0;
    case OPT_PREFER:
        if (strcmp(arg, "source") && strcmp(arg, "target")) {
            fprintf(stderr, "nerve keys: --prefer must be source or target\n");
            return -1;
        }
        o->prefer = arg;
        return 0;
    case OPT_DRY_RUN: o->dry_run = true; return 0;
    default: return -1;
    }
}

static int parse(int argc, char **argv, kopts *o) {
    static const struct option own[] = {
        { "from", required_argument, NULL, OPT_FROM },
        { "to", required_argument, NULL, OPT_TO },
        { "prefer", required_argument, NULL, OPT_PREFER },
        { "dry-run", no_argument, NULL, OPT_DRY_RUN },
        { NULL, 0, NULL, 0 },
    };
    memset(o, 0, sizeof *o);
    return cli_parse("nerve keys", "nerve keys --help", argc, argv, own, on_opt, o, &o->a);
}

/* A partition count given on the command line: 1..KEYS_PARTITIONS_MAX. */
static int parse_count(const char *what, const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > KEYS_PARTITIONS_MAX) {
        fprintf(stderr, "nerve keys migrate: %s must be a partition count 1..%d%s, not '%s'\n",
                what, KEYS_PARTITIONS_MAX, strcmp(what, "--from") == 0 ? " or legacy" : "", s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* ---- where ------------------------------------------------------------------ */

static int cmd_where(const kopts *o) {
    if (o->a.nrest < 2) {
        fprintf(stderr, "usage: nerve keys where [-c FILE] [--set K=V] SKU...\n");
        return 2;
    }
    for (int i = 1; i < o->a.nrest; i++) {
        if (!sku_valid(o->a.rest[i], strlen(o->a.rest[i]))) {
            fprintf(stderr,
                    "nerve keys where: '%s' is not a SKU (1..%d of A-Z a-z 0-9 . _ : -, with a "
                    "letter or digit)\n",
                    o->a.rest[i], SKU_MAX);
            return 2;
        }
    }
    cfg *c = cli_load_config(&o->a);
    if (!c) return 1;
    int rc = 0;
    const char *p = c->redis_prefix;
    int n = c->bus_partitions;
    for (int i = 1; i < o->a.nrest && rc == 0; i++) {
        const char *sku = o->a.rest[i];
        int part = keys_partition(sku, n);
        char st[RDS_KEY_MAX], pr[RDS_KEY_MAX], lk[RDS_KEY_MAX], od[RDS_KEY_MAX], inv[RDS_KEY_MAX],
            sal[RDS_KEY_MAX];
        if (keys_sku(st, p, n, "stock", sku) < 0 || keys_sku(pr, p, n, "price", sku) < 0 ||
            keys_sku(lk, p, n, "lock", sku) < 0 || keys_order(od, p, n, sku, "*") < 0 ||
            keys_stream(inv, p, part, c->inventory_channel) < 0 ||
            keys_stream(sal, p, part, c->sales_channel) < 0) {
            fprintf(stderr, "nerve keys where: the keys of '%s' would be too long\n", sku);
            rc = 1;
            break;
        }
        printf("%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", sku, part, st, pr, lk, od, inv, sal);
    }
    cfg_free(c);
    return rc;
}

/* ---- migrate: the script ---------------------------------------------------- */

/* Move KEYS[NL+1..] as (source, target) pairs, unless one of the first NL =
 * ARGV[3] keys (the SKU's lock in both layouts) exists. ARGV[1] "1" = dry run
 * (read only), ARGV[2] = "" | "source" | "target" (who wins a conflict).
 * Reply {"locked", i} (KEYS[i] exists) or {"ok", code...}, one code per pair:
 *   0 nothing to do: the source is gone (moved by an earlier run) or absent
 *   1 moved (RENAME: the value and its TTL)
 *   2 the target already held the same value (or --prefer target): the
 *     source was deleted
 *   3 conflict: both hold different values; neither touched
 *   4 in place: the source is its own target (same partition in both). */
static rds_script move_script = RDS_SCRIPT_INIT(
    "local dry, prefer, nl = ARGV[1] == '1', ARGV[2], tonumber(ARGV[3])\n"
    "for i = 1, nl do\n"
    "  if redis.call('EXISTS', KEYS[i]) == 1 then return {'locked', i} end\n"
    "end\n"
    "local out = {'ok'}\n"
    "for i = nl + 1, #KEYS, 2 do\n"
    "  local s, d = KEYS[i], KEYS[i + 1]\n"
    "  local code = 0\n"
    "  if redis.call('EXISTS', s) == 0 then code = 0\n"
    "  elseif s == d then code = 4\n"
    "  elseif prefer == 'source' or redis.call('EXISTS', d) == 0 then\n"
    "    if not dry then redis.call('RENAME', s, d) end\n"
    "    code = 1\n"
    "  elseif prefer == 'target' or redis.call('GET', s) == redis.call('GET', d) then\n"
    "    if not dry then redis.call('DEL', s) end\n"
    "    code = 2\n"
    "  else code = 3 end\n"
    "  out[#out + 1] = code\n"
    "end\n"
    "return out\n");

enum { MV_NONE = 0, MV_MOVED, MV_MERGED, MV_CONFLICT, MV_IN_PLACE };

/* What a key of a layout is. */
enum { K_NONE, K_STOCK, K_PRICE, K_LOCK, K_ORDER, K_STREAM };

/* ---- migrate: state ----------------------------------------------------------- */

typedef struct mig {
    rds_client *c;
    const char *prefix;
    size_t plen;
    int from; /* 0 = legacy */
    int to;
    bool dry;
    const char *prefer;
    unsigned long long skus, k_stock, k_price, k_order, merged, in_place, conflicts, ambiguous,
        streams;
    unsigned long long next_progress;
    /* the order records of one SCAN page, (source, target) pairs, moved by
     * one script at the end of the page */
    char **okeys;
    size_t nokeys, capokeys;
} mig;

static const char *layout_name(int n, char *buf, size_t len) {
    if (n == 0)
        snprintf(buf, len, "the legacy {SKU} layout");
    else
        snprintf(buf, len, "%d partition%s", n, n == 1 ? "" : "s");
    return buf;
}

/* PREFIX with the glob characters of SCAN MATCH escaped, then TAIL. */
static int pattern(char *buf, size_t len, const char *prefix, const char *tail) {
    size_t j = 0;
    for (const char *s = prefix; *s; s++) {
        if (j + 2 >= len) return -1;
        if (strchr("*?[]\\", *s)) buf[j++] = '\\';
        buf[j++] = *s;
    }
    int n = snprintf(buf + j, len - j, "%s", tail);
    return n < 0 || (size_t)n >= len - j ? -1 : 0;
}

/* The key of the legacy layout: PREFIX{SKU}:SUFFIX. */
static int legacy_key(char *buf, const char *prefix, const char *sku, const char *suffix) {
    int n = snprintf(buf, RDS_KEY_MAX, "%s{%s}:%s", prefix, sku, suffix);
    if (n < 0 || n >= RDS_KEY_MAX) {
        buf[0] = 0;
        return -1;
    }
    return n;
}

/* The source layout's key of SKU's KIND ("stock", "price", "lock"). */
static int src_key(const mig *m, char *buf, const char *kind, const char *sku) {
    return m->from ? keys_sku(buf, m->prefix, m->from, kind, sku)
                   : legacy_key(buf, m->prefix, sku, kind);
}

/* Name the N-th (0-based) key of a kind on stderr, up to SHOW_MAX of them. */
static void show(const char *what, const char *key, unsigned long long n) {
    if (n < SHOW_MAX) fprintf(stderr, "nerve keys migrate: %s: %s\n", what, key);
    if (n == SHOW_MAX) fprintf(stderr, "nerve keys migrate: (more of these are not named)\n");
}

static void progress(mig *m) {
    if (m->skus < m->next_progress) return;
    m->next_progress += PROGRESS_EVERY;
    fprintf(stderr, "nerve keys migrate: %llu SKUs, %llu keys %s so far\n", m->skus,
            m->k_stock + m->k_price + m->k_order, m->dry ? "to move" : "moved");
}

static const char *lock_advice =
    "a nerve is selling: stop every instance (nerve keys migrate needs the fleet stopped), then "
    "re-run; what moved so far stays moved";

/* Run the move script over KEYS (NKEYS of them, the first NLOCKS locks).
 * Returns the reply (the caller frees it), or NULL after printing why. */
static redisReply *run_move(mig *m, size_t nkeys, int nlocks, const char *const *keys) {
    size_t argc = nkeys + 3;
    const char **argv = malloc(argc * sizeof *argv);
    size_t *lens = malloc(argc * sizeof *lens);
    char nl[16];
    redisReply *r = NULL;
    if (!argv || !lens) {
        fprintf(stderr, "nerve keys migrate: out of memory\n");
        goto out;
    }
    snprintf(nl, sizeof nl, "%d", nlocks);
    for (size_t i = 0; i < nkeys; i++) argv[i] = keys[i];
    argv[nkeys] = m->dry ? "1" : "0";
    argv[nkeys + 1] = m->prefer ? m->prefer : "";
    argv[nkeys + 2] = nl;
    for (size_t i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    r = rds_eval(m->c, &move_script, (int)nkeys, (int)argc, argv, lens);
    if (!r) {
        fprintf(stderr,
                "nerve keys migrate: redis: %s (re-run to finish: what moved stays moved)\n",
                rds_errstr(m->c));
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
               r->element[0]->type != REDIS_REPLY_STRING) {
        fprintf(stderr, "nerve keys migrate: redis answered %s (moving %s)\n",
                r->type == REDIS_REPLY_ERROR ? r->str : "an unexpected reply", keys[nlocks]);
        freeReplyObject(r);
        r = NULL;
    }
out:
    free(argv);
    free(lens);
    return r;
}

static long long elem_ll(const redisReply *r, size_t i) {
    return i < r->elements && r->element[i]->type == REDIS_REPLY_INTEGER ? r->element[i]->integer
                                                                         : -1;
}

/* Count one pair's outcome CODE into *MOVED (a key of that kind); 1 when
 * the key moved (or its duplicate was dropped). Conflicts and keys in place
 * are counted only when VISITED (the SCAN returned this key: it returns the
 * SKU's other key too, which stays where it is). */
static int tally(mig *m, long long code, unsigned long long *moved, const char *src, int visited) {
    switch (code) {
    case MV_MOVED: (*moved)++; return 1;
    case MV_MERGED:
        (*moved)++;
        m->merged++;
        return 1;
    case MV_CONFLICT:
        if (visited)
            show("conflict, both layouts hold it with different values", src, m->conflicts++);
        return 0;
    case MV_IN_PLACE: m->in_place += visited ? 1 : 0; return 0;
    default: return 0;
    }
}

/* Move SKU's stock and price in one script that first checks its lock in
 * both layouts; the SCAN returned its key of KIND. 0, 1 when a lock stopped
 * it (said why), -1 on an error. */
static int move_sku(mig *m, const char *sku, int kind) {
    char k[6][RDS_KEY_MAX];
    if (src_key(m, k[0], "lock", sku) < 0 || keys_sku(k[1], m->prefix, m->to, "lock", sku) < 0 ||
        src_key(m, k[2], "stock", sku) < 0 || keys_sku(k[3], m->prefix, m->to, "stock", sku) < 0 ||
        src_key(m, k[4], "price", sku) < 0 || keys_sku(k[5], m->prefix, m->to, "price", sku) < 0) {
        fprintf(stderr, "nerve keys migrate: the keys of SKU '%s' would be too long\n", sku);
        return -1;
    }
    const char *keys[6] = { k[0], k[1], k[2], k[3], k[4], k[5] };
    redisReply *r = run_move(m, 6, 2, keys);
    if (!r) return -1;
    int rc = 0;
    if (strcmp(r->element[0]->str, "locked") == 0) {
        long long i = elem_ll(r, 1);
        fprintf(stderr, "nerve keys migrate: %s exists: %s\n", i >= 1 && i <= 2 ? keys[i - 1] : sku,
                lock_advice);
        rc = 1;
    } else {
        long long cs = elem_ll(r, 1), cp = elem_ll(r, 2);
        int st = kind == K_STOCK, any;
        if (m->dry) {
            /* Nothing moves, so the SCAN visits both keys: each counts
             * itself, and the SKU counts at its stock key (or at its price
             * key when it has no stock). */
            any = st ? tally(m, cs, &m->k_stock, keys[2], 1)
                     : tally(m, cp, &m->k_price, keys[4], 1) && cs == MV_NONE;
        } else {
            any = tally(m, cs, &m->k_stock, keys[2], st);
            any |= tally(m, cp, &m->k_price, keys[4], !st);
        }
        if (any) {
            m->skus++;
            progress(m);
        }
    }
    freeReplyObject(r);
    return rc;
}

/* Queue the order record SRC to move to DST at the end of the page. */
static int add_order(mig *m, const char *src, const char *dst) {
    if (m->nokeys + 2 > m->capokeys) {
        size_t cap = m->capokeys ? m->capokeys * 2 : 256;
        char **v = realloc(m->okeys, cap * sizeof *v);
        if (!v) return -1;
        m->okeys = v;
        m->capokeys = cap;
    }
    char *a = strdup(src), *b = strdup(dst);
    if (!a || !b) {
        free(a);
        free(b);
        return -1;
    }
    m->okeys[m->nokeys++] = a;
    m->okeys[m->nokeys++] = b;
    return 0;
}

static int flush_orders(mig *m) {
    if (!m->nokeys) return 0;
    int rc = 0;
    redisReply *r = run_move(m, m->nokeys, 0, (const char *const *)m->okeys);
    if (!r) {
        rc = -1;
    } else {
        for (size_t i = 0; i < m->nokeys / 2; i++)
            tally(m, elem_ll(r, i + 1), &m->k_order, m->okeys[2 * i], 1);
        freeReplyObject(r);
    }
    for (size_t i = 0; i < m->nokeys; i++) free(m->okeys[i]);
    m->nokeys = 0;
    return rc;
}

/* ---- migrate: reading key names ---------------------------------------------- */

typedef struct parsed {
    int kind;
    int part;              /* {pN} layouts: N */
    char sku[SKU_MAX + 1]; /* stock, price, lock; legacy orders */
    const char *rest;      /* orders: "ID" (legacy) or "SKU:ID" ({pN}); points into the key */
} parsed;

/* KEY (after the prefix) as a key of the legacy layout: {SKU}:stock|price|lock
 * or {SKU}:order:ID. */
static void parse_legacy(const char *key, parsed *p) {
    p->kind = K_NONE;
    if (key[0] != '{') return;
    const char *close = strchr(key, '}');
    size_t n = close ? (size_t)(close - key - 1) : 0;
    if (!close || close[1] != ':' || !sku_valid(key + 1, n)) return;
    memcpy(p->sku, key + 1, n);
    p->sku[n] = 0;
    const char *t = close + 2;
    if (strcmp(t, "stock") == 0)
        p->kind = K_STOCK;
    else if (strcmp(t, "price") == 0)
        p->kind = K_PRICE;
    else if (strcmp(t, "lock") == 0)
        p->kind = K_LOCK;
    else if (strncmp(t, "order:", 6) == 0 && t[6]) {
        p->kind = K_ORDER;
        p->rest = t + 6;
    }
}

/* KEY (after the prefix) as a key of a {pN} layout: {pN}:stock|price|lock:SKU,
 * {pN}:order:SKU:ID or {pN}:stream:CHANNEL. The SKU is not checked against a
 * partition count here. */
static void parse_part(const char *key, parsed *p) {
    p->kind = K_NONE;
    if (strncmp(key, "{p", 2) != 0 || !isdigit((unsigned char)key[2])) return;
    char *end;
    errno = 0;
    long n = strtol(key + 2, &end, 10);
    if (errno || n < 0 || n >= KEYS_PARTITIONS_MAX || end[0] != '}' || end[1] != ':') return;
    p->part = (int)n;
    const char *t = end + 2;
    static const struct {
        const char *name;
        int kind;
    } kinds[] = { { "stock:", K_STOCK },
                  { "price:", K_PRICE },
                  { "lock:", K_LOCK },
                  { "order:", K_ORDER },
                  { "stream:", K_STREAM } };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        size_t kl = strlen(kinds[i].name);
        if (strncmp(t, kinds[i].name, kl) != 0) continue;
        const char *r = t + kl;
        if (kinds[i].kind == K_ORDER || kinds[i].kind == K_STREAM) {
            p->kind = kinds[i].kind;
            p->rest = r;
        } else if (sku_valid(r, strlen(r))) {
            p->kind = kinds[i].kind;
            memcpy(p->sku, r, strlen(r) + 1);
        }
        return;
    }
}

/* The ways "SKU:ID" (REST) splits into a SKU of partition PART among NPARTS
 * and a non-empty ID (a SKU may hold ':', and so may an order id): up to MAX
 * split points into AT (the length of the SKU). */
static int order_splits(const char *rest, int part, int nparts, size_t *at, int max) {
    int n = 0;
    for (const char *c = strchr(rest, ':'); c && n < max; c = strchr(c + 1, ':')) {
        size_t len = (size_t)(c - rest);
        char sku[SKU_MAX + 1];
        if (!c[1] || len > SKU_MAX || !sku_valid(rest, len)) continue;
        memcpy(sku, rest, len);
        sku[len] = 0;
        if (keys_partition(sku, nparts) == part) at[n++] = len;
    }
    return n;
}

/* 1 when SKU has a stock or price key in either layout. */
static int sku_known(mig *m, const char *sku) {
    char k[4][RDS_KEY_MAX];
    if (src_key(m, k[0], "stock", sku) < 0 || src_key(m, k[1], "price", sku) < 0 ||
        keys_sku(k[2], m->prefix, m->to, "stock", sku) < 0 ||
        keys_sku(k[3], m->prefix, m->to, "price", sku) < 0)
        return 0;
    redisReply *r = rds_command(m->c, "EXISTS %s %s %s %s", k[0], k[1], k[2], k[3]);
    int known = r && r->type == REDIS_REPLY_INTEGER && r->integer > 0;
    freeReplyObject(r);
    return known;
}

/* An order record {pN}:order:SKU:ID of the source layout: its target into
 * DST, or -1 when it is not one, or when its SKU is ambiguous (counted and
 * named: left in place, it expires with its TTL). Only a SKU with a stock or
 * price record in either layout can own the order; splits of such SKUs
 * must agree on the target. A key that is already the target of a known
 * SKU's split is left alone. */
static int order_target(mig *m, const char *key, const parsed *p, char *dst) {
    enum { MAXSPLIT = 8 };
    size_t at[MAXSPLIT];
    char t[MAXSPLIT][RDS_KEY_MAX], sku[SKU_MAX + 1];
    /* Already a key of the target layout (SCAN returns keys moved earlier in
     * this run or a previous one): a wrong split of "SKU:ID" could read it
     * as a source key of another SKU and move it away from where the daemon
     * will look for it. */
    if (m->to != m->from) {
        int nt = order_splits(p->rest, p->part, m->to, at, MAXSPLIT);
        for (int i = 0; i < nt; i++) {
            memcpy(sku, p->rest, at[i]);
            sku[at[i]] = 0;
            if (keys_order(t[0], m->prefix, m->to, sku, p->rest + at[i] + 1) >= 0 &&
                strcmp(t[0], key) == 0 && sku_known(m, sku))
                return -1;
        }
    }
    int n = order_splits(p->rest, p->part, m->from, at, MAXSPLIT);
    for (int i = 0; i < n; i++) {
        memcpy(sku, p->rest, at[i]);
        sku[at[i]] = 0;
        if (keys_order(t[i], m->prefix, m->to, sku, p->rest + at[i] + 1) < 0) {
            fprintf(stderr, "nerve keys migrate: the target of %s would be too long\n", key);
            return -1;
        }
    }
    if (n == 0) return -1;
    int pick = -1;
    /* Only a SKU with a stock or price record can own an order, even when
     * one split fits: a key that fits by chance is not moved. */
    for (int i = 0; i < n; i++) {
        memcpy(sku, p->rest, at[i]);
        sku[at[i]] = 0;
        if (!sku_known(m, sku)) continue;
        if (pick >= 0 && strcmp(t[pick], t[i]) != 0) {
            pick = -1;
            break;
        }
        pick = i;
    }
    if (pick < 0) {
        show("order record left in place, its SKU is ambiguous", key, m->ambiguous++);
        return -1;
    }
    memcpy(dst, t[pick], strlen(t[pick]) + 1);
    return 0;
}

/* One key the main SCAN returned. 0, 1 stop (a lock: said why), -1 error. */
static int on_key(mig *m, const char *key) {
    const char *k = key + m->plen;
    parsed p;
    char dst[RDS_KEY_MAX];
    if (m->from == 0) {
        parse_legacy(k, &p);
        /* A {pN} layout's order record reads as a legacy order of a SKU
         * "pN": it is one only when that SKU has a stock or price record
         * (a sale needs one; in either layout: the SCAN may have moved it
         * already); else it is a key of a daemon with a partition count,
         * and stays where it is. */
        if (p.kind == K_ORDER && p.sku[0] == 'p' && strspn(p.sku + 1, "0123456789") > 0 &&
            p.sku[1 + strspn(p.sku + 1, "0123456789")] == 0 && !sku_known(m, p.sku))
            return 0;
    } else {
        parse_part(k, &p);
        if (p.kind == K_STREAM) {
            m->streams++;
            return 0;
        }
        if ((p.kind == K_STOCK || p.kind == K_PRICE || p.kind == K_LOCK) &&
            keys_partition(p.sku, m->from) != p.part)
            return 0; /* a key of another count: the target's own */
    }
    switch (p.kind) {
    case K_STOCK:
    case K_PRICE: return move_sku(m, p.sku, p.kind);
    case K_LOCK:
        if (m->dry) return 0;
        fprintf(stderr, "nerve keys migrate: %s exists: %s\n", key, lock_advice);
        return 1;
    case K_ORDER:
        if (m->from == 0) {
            if (keys_order(dst, m->prefix, m->to, p.sku, p.rest) < 0) {
                fprintf(stderr, "nerve keys migrate: the target of %s would be too long\n", key);
                return -1;
            }
        } else if (order_target(m, key, &p, dst) < 0) {
            return 0;
        }
        if (add_order(m, key, dst)) {
            fprintf(stderr, "nerve keys migrate: out of memory\n");
            return -1;
        }
        return 0;
    default: return 0;
    }
}

/* SCAN every key matching MATCH, calling EACH on each and FLUSH (may be
 * NULL) after each page. 0, or the first non-zero EACH/FLUSH result, or -1
 * on a Redis error. */
static int scan(mig *m, const char *match, int (*each)(mig *, const char *), int (*flush)(mig *)) {
    char cursor[32] = "0";
    do {
        const char *argv[6] = { "SCAN", cursor, "MATCH", match, "COUNT", SCAN_COUNT };
        size_t lens[6];
        for (int i = 0; i < 6; i++) lens[i] = strlen(argv[i]);
        redisReply *r = rds_commandargv(m->c, 6, argv, lens);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "nerve keys migrate: SCAN: %s\n",
                    !r                             ? rds_errstr(m->c)
                    : r->type == REDIS_REPLY_ERROR ? r->str
                                                   : "unexpected reply");
            freeReplyObject(r);
            return -1;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        int rc = 0;
        for (size_t i = 0; i < r->element[1]->elements && rc == 0; i++) {
            const redisReply *e = r->element[1]->element[i];
            if (e->type == REDIS_REPLY_STRING && e->len == strlen(e->str) && e->len < RDS_KEY_MAX &&
                e->len > m->plen)
                rc = each(m, e->str);
        }
        freeReplyObject(r);
        if (rc == 0 && flush) rc = flush(m);
        if (rc) return rc;
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

/* Any sale lock of either layout (the preflight SCAN). */
static int on_lock(mig *m, const char *key) {
    parsed p;
    parse_legacy(key + m->plen, &p);
    if (p.kind != K_LOCK) parse_part(key + m->plen, &p);
    if (p.kind != K_LOCK) return 0;
    fprintf(stderr, "nerve keys migrate: %s exists: %s\n", key, lock_advice);
    return 1;
}

/* ---- migrate: the command ------------------------------------------------------ */

static long long get_count(mig *m, const char *key, int *err) {
    redisReply *r = rds_command(m->c, "GET %s", key);
    long long v = -1;
    *err = 0;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "nerve keys migrate: redis: %s\n", r ? r->str : rds_errstr(m->c));
        *err = 1;
    } else if (r->type == REDIS_REPLY_STRING) {
        char *end;
        v = strtoll(r->str, &end, 10);
        if (end == r->str || *end || v < 1 || v > KEYS_PARTITIONS_MAX) {
            fprintf(stderr, "nerve keys migrate: %s holds '%s', not a partition count\n", key,
                    r->str);
            *err = 1;
        }
    }
    freeReplyObject(r);
    return v;
}

/* Refusals before anything moves: a cluster, a running nerve, a lock. 0 go
 * on, 1 refused (said why), -1 Redis error. */
static int preflight(mig *m, const cfg *c) {
    redisReply *r = rds_command(m->c, "INFO cluster");
    if (!r || r->type != REDIS_REPLY_STRING) {
        fprintf(stderr, "nerve keys migrate: redis at %s: %s\n", c->redis_url,
                !r                             ? rds_errstr(m->c)
                : r->type == REDIS_REPLY_ERROR ? r->str
                                               : "bad INFO reply");
        freeReplyObject(r);
        return -1;
    }
    int cluster = strstr(r->str, "cluster_enabled:1") != NULL;
    freeReplyObject(r);
    if (cluster) {
        fprintf(stderr,
                "nerve keys migrate: %s is a Redis Cluster node: nerve does not route "
                "cluster redirections yet, so it cannot move keys between slots; migrate "
                "on a single Redis (then load it into the cluster)\n",
                c->redis_url);
        return 1;
    }
    char control[RDS_KEY_MAX];
    snprintf(control, sizeof control, "%scontrol", m->prefix);
    r = rds_command(m->c, "PUBSUB NUMSUB %s", control);
    long long subs = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                             r->element[1]->type == REDIS_REPLY_INTEGER
                         ? r->element[1]->integer
                         : -1;
    freeReplyObject(r);
    if (subs < 0) {
        fprintf(stderr, "nerve keys migrate: redis: PUBSUB NUMSUB failed: %s\n", rds_errstr(m->c));
        return -1;
    }
    if (subs > 0) {
        fprintf(stderr,
                "nerve keys migrate: %lld client%s listen%s on %s: a nerve is running on this "
                "Redis; stop every instance first%s\n",
                subs, subs == 1 ? "" : "s", subs == 1 ? "s" : "", control,
                m->dry ? " (dry run: going on)" : "");
        if (!m->dry) return 1;
    }
    char match[RDS_KEY_MAX];
    if (pattern(match, sizeof match, m->prefix, "{*}:lock*")) return -1;
    if (m->dry) return 0;
    return scan(m, match, on_lock, NULL);
}

static int cmd_migrate(const kopts *o) {
    int to = 0, from = -1; /* -1: the recorded count */
    if (o->a.nrest != 1 || !o->to) {
        fprintf(stderr, "usage: nerve keys migrate [-c FILE] [--from N|legacy] --to M "
                        "[--dry-run] [--prefer source|target]\n");
        return 2;
    }
    if (parse_count("--to", o->to, &to)) return 2;
    if (o->from && strcmp(o->from, "legacy") == 0)
        from = 0;
    else if (o->from && parse_count("--from", o->from, &from))
        return 2;
    if (from == to) {
        fprintf(stderr, "nerve keys migrate: --from and --to are both %d: nothing to move\n", to);
        return 2;
    }
    cfg *c = cli_load_config(&o->a);
    if (!c) return 1;
    int rc = 1;
    char err[512], meta[RDS_KEY_MAX], a[64], b[64];
    mig m = { 0 };
    m.prefix = c->redis_prefix;
    m.plen = strlen(m.prefix);
    m.to = to;
    m.dry = o->dry_run;
    m.prefer = o->prefer;
    m.next_progress = PROGRESS_EVERY;
    rds_opts ro;
    if (cfg_redis_opts(c, &ro, err, sizeof err)) {
        fprintf(stderr, "nerve keys migrate: %s\n", err);
        goto out;
    }
    /* A SCAN page or a script of a thousand keys takes longer than a sale. */
    if (ro.command_timeout_ms < 10000) ro.command_timeout_ms = 10000;
    if (!(m.c = rds_client_new(&ro)) || keys_meta_partitions(meta, m.prefix) < 0) {
        fprintf(stderr, "nerve keys migrate: out of memory or redis.prefix too long\n");
        goto out;
    }
    int e;
    long long rec = get_count(&m, meta, &e);
    if (e) goto out;
    if (from < 0) {
        if (rec < 0) {
            fprintf(stderr,
                    "nerve keys migrate: no partition count is recorded in %s: say which layout "
                    "the data is in, --from N, or --from legacy for data of nerve before the "
                    "durable log (PREFIX{SKU}:stock)\n",
                    meta);
            rc = 2;
            goto out;
        }
        from = (int)rec;
        if (from == to) {
            printf("%s already records %d partitions: nothing to move\n", meta, to);
            rc = 0;
            goto out;
        }
    } else if (rec > 0 && rec != to && rec != from) {
        fprintf(stderr,
                "nerve keys migrate: %s records %lld partitions, so the data is not laid out in "
                "%s: run with --from %lld\n",
                meta, rec, layout_name(from, a, sizeof a), rec);
        goto out;
    }
    m.from = from;
    int pf = preflight(&m, c);
    if (pf) goto out;

    char match[RDS_KEY_MAX];
    if (pattern(match, sizeof match, m.prefix, from ? "{p*}:*" : "{*}:*")) {
        fprintf(stderr, "nerve keys migrate: redis.prefix is too long\n");
        goto out;
    }
    int sr = scan(&m, match, on_key, flush_orders);
    if (sr == 0) sr = flush_orders(&m);
    layout_name(from, a, sizeof a);
    layout_name(to, b, sizeof b);
    printf("%s %llu SKUs from %s to %s: %llu keys (%llu stock, %llu price, %llu order records; "
           "%llu of them were already in the target with the same value); %llu keys already in "
           "place; %llu conflicts; %llu order records left (ambiguous SKU)%s\n",
           m.dry ? "dry run: would move"
           : sr  ? "stopped after moving"
                 : "moved",
           m.skus, a, b, m.k_stock + m.k_price + m.k_order, m.k_stock, m.k_price, m.k_order,
           m.merged, m.in_place, m.conflicts, m.ambiguous, m.dry ? "; nothing changed" : "");
    if (m.streams)
        printf("stream keys (events) are not moved: %llu partition streams stay as they are\n",
               m.streams);
    if (sr) goto out;
    if (m.conflicts) {
        fprintf(stderr,
                "nerve keys migrate: %llu keys exist in both layouts with different values (named "
                "above); nothing was overwritten and %s is left as it was: decide which "
                "is right and re-run with --prefer source or --prefer target\n",
                m.conflicts, meta);
        goto out;
    }
    if (!m.dry) {
        redisReply *r = rds_command(m.c, "SET %s %d", meta, to);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "nerve keys migrate: recording the count in %s: %s (re-run)\n", meta,
                    r ? r->str : rds_errstr(m.c));
            freeReplyObject(r);
            goto out;
        }
        freeReplyObject(r);
        printf("recorded %d in %s: start the fleet with bus.partitions: %d\n", to, meta, to);
    }
    rc = 0;
out:
    for (size_t i = 0; i < m.nokeys; i++) free(m.okeys[i]);
    free(m.okeys);
    rds_client_free(m.c);
    cfg_free(c);
    return rc;
}

int keys_cli_main(int argc, char **argv) {
    kopts o;
    int rc = 2;
    if (parse(argc, argv, &o)) goto out;
    if (o.a.help) {
        usage(stdout);
        rc = 0;
    } else if (o.a.nrest >= 1 && strcmp(o.a.rest[0], "where") == 0) {
        rc = cmd_where(&o);
    } else if (o.a.nrest >= 1 && strcmp(o.a.rest[0], "migrate") == 0) {
        rc = cmd_migrate(&o);
    } else {
        if (o.a.nrest >= 1) fprintf(stderr, "nerve keys: unknown subcommand '%s'\n", o.a.rest[0]);
        usage(stderr);
    }
out:
    cli_args_free(&o.a);
    return rc;
}
