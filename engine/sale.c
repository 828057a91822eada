/* sale.c -- the atomic sale (see sale.h).
 *
 * Why coalescing: a distributed lock taken per request costs at least two
 * Redis round trips during which every other sale of that SKU waits, so a
 * hot SKU would be capped at a few thousand sales/s however many threads we
 * have. Instead, sales of one SKU queue in this process and the thread at the
 * head of the queue commits everything queued so far under ONE lock
 * acquisition and ONE script call; the others sleep on a condition variable
 * until their result is filled in. The script still checks every sale on its
 * own, in order, against the lock token, its idempotency record and the stock,
 * so batching changes latency and throughput, never the outcome.
 */
#include "nerve/sale.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nerve/clock.h"
#include "nerve/jsonck.h"
#include "nerve/keys.h"
#include "nerve/lock.h"
#include "nerve/log.h"
#include "nerve/mux.h"
#include "nerve/park.h"

/* ---- validation ------------------------------------------------------------ */

/* An order id is printable ASCII without spaces: it becomes part of a key
 * and of logs, and clients use UUIDs or similar. */
static int order_id_valid(const char *s, size_t len) {
    if (len == 0 || len > SALE_STR_MAX) return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return 0;
    return 1;
}

int sale_parse(const char *body, size_t len, long long max_qty, sale_req *req, char *err,
               size_t errlen) {
    memset(req, 0, sizeof *req);
    if (len == 0) {
        snprintf(err, errlen, "request body is empty; expected a JSON object");
        return -1;
    }
    char why[128];
    if (jsonck_check(body, len, JSONCK_MAX_DEPTH, why, sizeof why)) {
        snprintf(err, errlen, "malformed JSON body: %s", why);
        return -1;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    int rc = -1;
    if (!root || (size_t)(end - body) < len) {
        /* Allow only trailing white space after the object. */
        if (root) {
            while ((size_t)(end - body) < len &&
                   (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
                end++;
            if ((size_t)(end - body) == len) goto parsed;
        }
        snprintf(err, errlen, "malformed JSON body");
        goto out;
    }
parsed:
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "body must be a JSON object");
        goto out;
    }
    const cJSON *sku = cJSON_GetObjectItemCaseSensitive(root, "sku");
    if (!sku) {
        snprintf(err, errlen, "sku is required");
        goto out;
    }
    if (!cJSON_IsString(sku)) {
        snprintf(err, errlen, "sku must be a string");
        goto out;
    }
    size_t sl = strlen(sku->valuestring);
    if (sl == 0) {
        snprintf(err, errlen, "sku must not be empty");
        goto out;
    }
    if (sl > SALE_STR_MAX) {
        snprintf(err, errlen, "sku must be at most %d bytes", SALE_STR_MAX);
        goto out;
    }
    if (!sku_valid(sku->valuestring, sl)) {
        snprintf(err, errlen,
                 "sku may only contain A-Z a-z 0-9 . _ : - (and at least one letter or digit)");
        goto out;
    }
    memcpy(req->sku, sku->valuestring, sl + 1);

    const cJSON *qty = cJSON_GetObjectItemCaseSensitive(root, "qty");
    if (!qty) {
        snprintf(err, errlen, "qty is required");
        goto out;
    }
    if (!cJSON_IsNumber(qty) || !isfinite(qty->valuedouble) ||
        qty->valuedouble != floor(qty->valuedouble)) {
        snprintf(err, errlen, "qty must be an integer");
        goto out;
    }
    if (qty->valuedouble < 1 || qty->valuedouble > (double)max_qty) {
        snprintf(err, errlen, "qty must be between 1 and %lld", max_qty);
        goto out;
    }
    req->qty = (long long)qty->valuedouble;

    const cJSON *oid = cJSON_GetObjectItemCaseSensitive(root, "order_id");
    if (oid && !cJSON_IsNull(oid)) {
        if (!cJSON_IsString(oid)) {
            snprintf(err, errlen, "order_id must be a string");
            goto out;
        }
        size_t ol = strlen(oid->valuestring);
        if (ol > SALE_STR_MAX) {
            snprintf(err, errlen, "order_id must be at most %d bytes", SALE_STR_MAX);
            goto out;
        }
        if (!order_id_valid(oid->valuestring, ol)) {
            snprintf(err, errlen,
                     "order_id must be 1 to %d printable ASCII characters without spaces",
                     SALE_STR_MAX);
            goto out;
        }
        memcpy(req->order_id, oid->valuestring, ol + 1);
        req->client_order_id = true;
    } else {
        char tok[LOCK_TOKEN_LEN + 1];
        lock_token_new(tok);
        snprintf(req->order_id, sizeof req->order_id, "ord-%s", tok);
    }

    const cJSON *price = cJSON_GetObjectItemCaseSensitive(root, "unit_price");
    if (price && !cJSON_IsNull(price)) {
        if (!cJSON_IsNumber(price) || !isfinite(price->valuedouble) || price->valuedouble < 0 ||
            price->valuedouble > 1e15) {
            snprintf(err, errlen, "unit_price must be a number between 0 and 1e15");
            goto out;
        }
        req->unit_price = price->valuedouble;
        req->has_price = true;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* ---- keys ------------------------------------------------------------------- */

static int key(char *buf, const sale_opts *o, const char *sku, const char *kind) {
    return keys_sku(buf, o->prefix, o->partitions, kind, sku);
}

/* The partition stream of CHANNEL that SKU's events go to. */
static int stream_key(char *buf, const sale_opts *o, const char *sku, const char *channel) {
    return keys_stream(buf, o->prefix, keys_partition(sku, o->partitions), channel);
}

/* What every event script is told about where its events go: ARGV "maxlen"
 * ("" = streams off), "publish" ("1"/"0"), instance, partition. */
typedef struct emit_args {
    char maxlen[24], part[16];
    const char *publish, *instance;
} emit_args;

static void emit_args_fill(emit_args *e, const sale_opts *o, const char *sku) {
    e->maxlen[0] = 0;
    if (o->streams)
        snprintf(e->maxlen, sizeof e->maxlen, "%ld",
                 o->stream_maxlen > 0 ? o->stream_maxlen : 1000000L);
    snprintf(e->part, sizeof e->part, "%d", keys_partition(sku, o->partitions));
    e->publish = o->publish ? "1" : "0";
    e->instance = o->instance ? o->instance : "";
}

/* The Lua both event scripts share: emit(stream key, channel, event table)
 * appends the event to its partition stream (MAXLEN ~) and/or publishes it,
 * one encoding for both so the two texts are the same. Both scripts take the
 * emit_args at ARGV[8] (maxlen), [9] (publish), [10] (instance), [11]
 * (partition). */
#define EMIT_LUA \
    "local function emit(skey, channel, ev)\n" \
    "  ev.instance = ARGV[10]\n" \
    "  if ARGV[8] ~= '' then ev.partition = tonumber(ARGV[11]) end\n" \
    "  local txt = cjson.encode(ev)\n" \
    "  if ARGV[8] ~= '' then\n" \
    "    redis.call('XADD', skey, 'MAXLEN', '~', ARGV[8], '*', 'event', txt)\n" \
    "  end\n" \
    "  if ARGV[9] == '1' then redis.call('PUBLISH', channel, txt) end\n" \
    "end\n"

/* ---- the commit script --------------------------------------------------------
 * KEYS[1] lock, KEYS[2] stock, KEYS[3] catalog price, KEYS[4] inventory
 * stream, KEYS[5] sales stream, KEYS[5+i] order record of sale i.
 * ARGV[1] token, [2] order ttl s, [3] inventory channel, [4] sales channel,
 * [5] non-empty: the fast path, the lock must be free ("" = the caller
 * holds it: check it is still ours), [6] stream MAXLEN ~ ("" = streams off), [7] "1"
 * to PUBLISH, [8] the stock_changed event's text without its closing brace
 * and without the figures only the script knows (event_head below); then per
 * sale: qty, unit_price ("" = none), the sale event's head.
 * Reply: {"ok", code1, val1, code2, val2, ...} with code "ok" (val = stock
 * remaining), "oos" (val = stock), "none" (no stock record), "dup" (val =
 * "qty:stock_remaining" of the first sale), "price" (val = the catalog
 * price, as stored: the client's unit_price is under it); {"busy"} (ARGV[5]
 * set and the lock held by another: nothing changed); or {"lock_lost"}.
 *
 * The fast path takes the lock for the time of the script: a script runs
 * alone in Redis, so "the lock key does not exist" (EXISTS) and then
 * committing is the same as SET NX PX, commit, DEL, with one command instead
 * of three; a lock held by another instance's slow path (lock.h) answers
 * busy. With the lock already held (the slow path) the token is checked
 * (fencing) and the lock released (DEL) at the end.
 *
 * The catalog price is read in the same script as the stock, so a sale is
 * judged against the price in force when it is decremented, whatever PUT
 * /admin/stock does meanwhile. A stored price that is not a number in
 * 0..1e15 counts as none: an error after the first decrement would leave a
 * sale recorded that was answered as failed (Redis does not roll a script
 * back). The stream appends are in the same script for the same reason: a
 * sale is in the log if and only if it was decremented.
 *
 * Events: C writes each event's text up to the figures only the script
 * knows (stock, prices, units sold) and the script appends those: Lua string
 * concatenation instead of building a table and cjson.encode-ing it, which
 * was the largest part of the script's time. Integers are written with
 * %.0f: Redis's Lua prints numbers with %.14g, which turned a stock of
 * 999999999999999 into "1e+15" (stored back, that sold one unit that did not
 * exist). Prices keep Lua's %.14g, as cjson printed them.
 *
 * One sale event per sale, but ONE stock_changed per call (the stock is SET
 * once, after the batch; "sold" units in "orders" sales): the levels in
 * between were never visible to anyone. */
#define COMMIT_KEYS       5
#define COMMIT_FIXED_ARGS 8
#define COMMIT_SALE_ARGS  3
static rds_script commit_script = RDS_SCRIPT_INIT(
    "local taking = ARGV[5] ~= ''\n"
    "if taking then\n"
    "  if redis.call('EXISTS', KEYS[1]) == 1 then return {'busy'} end\n"
    "else\n" LOCK_FENCE_LUA "end\n"
    "local function int(n) return string.format('%.0f', n) end\n"
    "local streams, publish = ARGV[6] ~= '', ARGV[7] == '1'\n"
    "local function emit(skey, channel, txt)\n"
    "  if streams then redis.call('XADD', skey, 'MAXLEN', '~', ARGV[6], '*', 'event', txt) end\n"
    "  if publish then redis.call('PUBLISH', channel, txt) end\n"
    "end\n"
    "local sp = redis.call('MGET', KEYS[2], KEYS[3])\n"
    "local s, cp = sp[1], sp[2]\n"
    "local stock = s and tonumber(s)\n"
    "local catalog = cp and tonumber(cp)\n"
    "if catalog and not (catalog >= 0 and catalog <= 1e15) then catalog = nil end\n"
    "local ctail, cprice = '}', 'null'\n"
    "if catalog then\n"
    "  cprice = tostring(catalog); ctail = ',\"catalog_price\":' .. cprice .. '}'\n"
    "end\n"
    "local units, orders, n = 0, 0, 1\n"
    "local out = {'ok'}\n"
    "local ttl, sales = ARGV[2], ARGV[4]\n"
    "for i = 1, #KEYS - 5 do\n"
    "  local b = 9 + (i - 1) * 3\n"
    "  local qty = tonumber(ARGV[b])\n"
    "  local client = nil\n"
    "  if ARGV[b + 1] ~= '' then client = tonumber(ARGV[b + 1]) end\n"
    "  local okey = KEYS[5 + i]\n"
    "  local prev = redis.call('GET', okey)\n"
    "  if prev then\n"
    "    out[n + 1] = 'dup'; out[n + 2] = prev\n"
    "  elseif catalog and client and client < catalog then\n"
    "    out[n + 1] = 'price'; out[n + 2] = cp\n"
    "  elseif not stock then\n"
    "    out[n + 1] = 'none'; out[n + 2] = 0\n"
    "  elseif stock < qty then\n"
    "    out[n + 1] = 'oos'; out[n + 2] = stock\n"
    "  else\n"
    "    stock = stock - qty\n"
    "    local st = int(stock)\n"
    "    redis.call('SET', okey, ARGV[b] .. ':' .. st, 'EX', ttl)\n"
    "    out[n + 1] = 'ok'; out[n + 2] = stock\n"
    "    emit(KEYS[5], sales, ARGV[b + 2] .. ',\"stock_remaining\":' .. st .. ',\"unit_price\":' ..\n"
    "      (client and tostring(client) or cprice) .. ctail)\n"
    "    units = units + qty; orders = orders + 1\n"
    "  end\n"
    "  n = n + 2\n"
    "end\n"
    "if orders > 0 then\n"
    "  local st = int(stock)\n"
    "  redis.call('SET', KEYS[2], st, 'KEEPTTL')\n"
    "  emit(KEYS[4], ARGV[3], ARGV[8] .. ',\"stock_remaining\":' .. st .. ',\"sold\":' ..\n"
    "    int(units) .. ',\"orders\":' .. orders .. '}')\n"
    "end\n"
    "if not taking then redis.call('DEL', KEYS[1]) end\n"
    "return out\n");

static void set_unavailable(sale_res *r, const char *msg) {
    r->status = SALE_UNAVAILABLE;
    r->stock_remaining = -1;
    snprintf(r->message, sizeof r->message, "%s", msg);
}

/* A sale whose unit_price is under the catalog price CP (as stored): 422,
 * nothing sold. %.15g prints what the client and the operator typed (9.99,
 * not 9.9900000000000002). */
static void reject_under_catalog(sale_res *r, const sale_req *req, const char *cp) {
    double catalog = strtod(cp, NULL);
    r->status = SALE_REJECTED;
    r->stock_remaining = -1;
    r->catalog_price = catalog;
    r->has_catalog_price = true;
    snprintf(r->rule, sizeof r->rule, "%s", SALE_RULE_CATALOG_PRICE);
    snprintf(r->reason, sizeof r->reason, "unit_price %.15g is under the catalog price %.15g",
             req->unit_price, catalog);
    snprintf(r->message, sizeof r->message,
             "unit_price %.15g is under the catalog price %.15g of SKU %s: send at least the "
             "catalog price, or no unit_price to pay it",
             req->unit_price, catalog, req->sku);
}

/* Where a commit goes: the engine's shared pipelines (mux.h) or one client
 * (sale_commit, the slow path's fallback). */
typedef struct commit_via {
    mux *m;
    rds_client *c;
    int unknown;  /* set when a failure may have run the script */
    int replicas; /* with sale.wait_replicas: what WAIT counted after it (-1: no answer) */
    int short_n;  /* sales answered 503 because fewer replicas acknowledged */
} commit_via;

/* EVALSHA the commit script with ARGV[3..ARGC) already in place (ARGV[0..3)
 * are filled here): one command, through the pipeline (mux_eval) or the
 * client (rds_eval); both load the script again after a NOSCRIPT, which
 * changed nothing (the lock is checked inside the script). NULL on failure
 * with ERR. */
static redisReply *commit_send(commit_via *v, const sale_opts *o, int nkeys, int argc,
                               const char **argv, size_t *argvlen, char *err, size_t errlen) {
    char nk[16];
    snprintf(nk, sizeof nk, "%d", nkeys);
    argv[2] = nk, argvlen[2] = strlen(nk); /* [0] and [1]: mux_eval's */
    v->replicas = -1;
    if (!v->m) {
        redisReply *r = rds_eval(v->c, &commit_script, nkeys, argc - 3, argv + 3, argvlen + 3);
        if (!r) {
            v->unknown = rds_outcome_unknown(v->c);
            snprintf(err, errlen, "redis: %s", rds_errstr(v->c));
        } else if (o->wait_replicas > 0) {
            /* Only a WAIT on the commit's own connection vouches for it: a
             * connection replaced in between (a failover) would count the
             * new primary's replicas for a sale it never saw. */
            unsigned long conn = rds_conn_serial(v->c);
            redisReply *w = rds_command(v->c, "WAIT %d %d", o->wait_replicas, o->wait_timeout_ms);
            if (w && w->type == REDIS_REPLY_INTEGER && conn && rds_conn_serial(v->c) == conn)
                v->replicas = (int)w->integer;
            freeReplyObject(w);
        }
        return r;
    }
    /* The pipeline WAITs after each round trip itself (mux_set_wait). */
    mux_res mr;
    redisReply *r = mux_eval(v->m, &commit_script, argc, argv, argvlen, &mr);
    if (!r) {
        v->unknown = mr.unknown;
        snprintf(err, errlen, "redis: %s", mr.err);
    }
    v->replicas = mr.replicas;
    return r;
}

/* With sale.wait_replicas: the sales of a commit that fewer replicas
 * acknowledged are in the primary, and lost if it fails before they reach a
 * replica. The client is told so rather than told "ok": 503, retry with the
 * same order_id. The commit cannot be undone; the retry settles it (the
 * idempotency record answers it as a duplicate, replicated by then, or a
 * failover lost it and the retry sells it). Every commit writes (at least
 * the lock, taken and released), so WAIT also covers a duplicate's first
 * sale, even when another connection wrote it. */
static void check_replicated(commit_via *v, const sale_opts *o, sale_res *const *res, size_t n) {
    if (o->wait_replicas <= 0 || v->replicas >= o->wait_replicas) return;
    for (size_t i = 0; i < n; i++) {
        sale_res *s = res[i];
        if (s->status != SALE_OK) continue;
        s->status = SALE_UNAVAILABLE;
        s->duplicate = false;
        snprintf(s->message, sizeof s->message,
                 "the sale is recorded on the Redis primary, but %s%d of the %d replicas "
                 "sale.wait_replicas asks for acknowledged it within %d ms: it may not survive a "
                 "failover; retry with the same order_id",
                 v->replicas < 0 ? "no answer from WAIT, so maybe " : "only ",
                 v->replicas < 0 ? 0 : v->replicas, o->wait_replicas, o->wait_timeout_ms);
        v->short_n++;
    }
}

/* The common head of every event of a commit: ,"ts":T,"instance":"I"
 * and, with streams on, ,"partition":N (what tells the Pub/Sub input that
 * the event is in a stream already, bus.c). */
static char *event_tail(char *p, const sale_opts *o, const char *ts, int part) {
    p += sprintf(p, ",\"ts\":%s,\"instance\":\"", ts);
    p = jsonck_escape(p, o->instance ? o->instance : "");
    *p++ = '"';
    if (o->streams) p += sprintf(p, ",\"partition\":%d", part);
    *p = 0;
    return p;
}

/* Commit N sales. With ACQUIRE_TTL_MS > 0 the lock is taken in the same
 * script (SALE_COMMIT_BUSY, nothing changed, when it is held); otherwise the
 * caller already holds it with TOKEN (SALE_COMMIT_LOCK_LOST when it no
 * longer does). Every buffer is sized from the actual lengths: on the stack
 * for a few sales, one allocation for a batch (no allocation per request on
 * a 1,000-SKU load, where nearly every batch is one sale). */
static sale_commit_result commit_ptrs(commit_via *v, const sale_opts *o, const char *sku,
                                      const char *token, const sale_req *const *reqs,
                                      sale_res *const *res, size_t n, int acquire_ttl_ms, char *err,
                                      size_t errlen) {
    size_t nkeys = COMMIT_KEYS + n, argc = 3 + nkeys + COMMIT_FIXED_ARGS + COMMIT_SALE_ARGS * n;
    size_t sl = strlen(sku), il = o->instance ? strlen(o->instance) : 0;
    size_t per_event = 160 + JSONCK_ESC_MAX(sl) + JSONCK_ESC_MAX(il);
    /* A key is PREFIX{pN}:KIND:NAME (keys.h; N < 1024, KIND at most 6
     * characters): KEY_ROOM(NAME length) holds it with room to spare. */
#define KEY_ROOM(len) (strlen(o->prefix) + 32 + (len))
    size_t cl = strlen(o->inventory_channel), sc = strlen(o->sales_channel);
    size_t text = 3 * KEY_ROOM(sl) + 2 * KEY_ROOM(cl > sc ? cl : sc) + per_event + 64;
    for (size_t i = 0; i < n; i++) {
        size_t ol = strlen(reqs[i]->order_id);
        text += KEY_ROOM(sl + 1 + ol) + 64 + per_event + JSONCK_ESC_MAX(ol);
    }
#undef KEY_ROOM
    size_t need = argc * (sizeof(char *) + sizeof(size_t)) + text;
    /* 2 KiB holds a one-sale commit (about 1.5 KiB): the stack pages a
     * worker touches stay resident, on each of 128 workers. */
    _Alignas(max_align_t) char stackbuf[2048];
    char kb[RDS_KEY_MAX]; /* keys.h writes into RDS_KEY_MAX bytes */
    char *mem = need <= sizeof stackbuf ? stackbuf : malloc(need);
    sale_commit_result rc = SALE_COMMIT_ERROR;
    redisReply *r = NULL;
    if (!mem) {
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    const char **argv = (const char **)(void *)mem;
    size_t *argvlen = (size_t *)(void *)(mem + argc * sizeof(char *));
    char *p = mem + argc * (sizeof(char *) + sizeof(size_t)), *end = mem + need;
    int part = keys_partition(sku, o->partitions);
    size_t a = 3;
#define ARG_HERE(fmt_call) \
    do { \
        argv[a++] = p; \
        p += (fmt_call) + 1; \
    } while (0)

    /* Keys: lock, stock, price, streams, then one order record per sale;
     * each written into KB, then copied into its exact room. */
#define KEY_HERE(expr) \
    do { \
        int kl_ = (expr); \
        if (kl_ < 0 || p + kl_ + 1 > end) goto toolong; \
        memcpy(p, kb, (size_t)kl_ + 1); \
        ARG_HERE(kl_); \
    } while (0)
    const char *kinds[] = { "lock", "stock", "price" };
    for (int k = 0; k < 3; k++) KEY_HERE(keys_sku(kb, o->prefix, o->partitions, kinds[k], sku));
    const char *chans[] = { o->inventory_channel, o->sales_channel };
    for (int k = 0; k < 2; k++) KEY_HERE(keys_stream(kb, o->prefix, part, chans[k]));
    for (size_t i = 0; i < n; i++)
        KEY_HERE(keys_order(kb, o->prefix, o->partitions, sku, reqs[i]->order_id));
#undef KEY_HERE
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    char ts[40];
    snprintf(ts, sizeof ts, "%lld.%03ld", (long long)now.tv_sec, now.tv_nsec / 1000000);
    argv[a++] = token;
    ARG_HERE(sprintf(p, "%d", o->idempotency_ttl_s));
    argv[a++] = o->inventory_channel;
    argv[a++] = o->sales_channel;
    if (acquire_ttl_ms > 0)
        ARG_HERE(sprintf(p, "%d", acquire_ttl_ms));
    else
        argv[a++] = "";
    if (o->streams)
        ARG_HERE(sprintf(p, "%ld", o->stream_maxlen > 0 ? o->stream_maxlen : 1000000L));
    else
        argv[a++] = "";
    argv[a++] = o->publish ? "1" : "0";
    {
        char *q = p;
        argv[a++] = q;
        q += sprintf(q, "%s\"sku\":\"", SALE_COMMIT_STOCK_HEAD);
        q = jsonck_escape(q, sku);
        *q++ = '"';
        p = event_tail(q, o, ts, part) + 1;
    }
    for (size_t i = 0; i < n; i++) {
        const sale_req *rq = reqs[i];
        ARG_HERE(sprintf(p, "%lld", rq->qty));
        if (rq->has_price)
            ARG_HERE(sprintf(p, "%.17g", rq->unit_price));
        else
            argv[a++] = "";
        char *q = p;
        argv[a++] = q;
        q += sprintf(q, "{\"type\":\"sale\",\"sku\":\"");
        q = jsonck_escape(q, sku);
        q += sprintf(q, "\",\"qty\":%lld,\"order_id\":\"", rq->qty);
        q = jsonck_escape(q, rq->order_id);
        *q++ = '"';
        p = event_tail(q, o, ts, part) + 1;
    }
#undef ARG_HERE
    if (p > end || a != argc) {
        /* Cannot happen with the sizes above; refuse rather than overrun. */
        snprintf(err, errlen, "internal error: commit arguments do not fit");
        goto out;
    }
    for (size_t i = 3; i < argc; i++) argvlen[i] = strlen(argv[i]);

    r = commit_send(v, o, (int)nkeys, (int)argc, argv, argvlen, err, errlen);
    if (!r) goto out;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %s", r->str);
        goto out;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        snprintf(err, errlen, "redis: unexpected reply to the commit script");
        goto out;
    }
    if (strcmp(r->element[0]->str, "lock_lost") == 0) {
        rc = SALE_COMMIT_LOCK_LOST;
        goto out;
    }
    if (strcmp(r->element[0]->str, "busy") == 0) {
        rc = SALE_COMMIT_BUSY;
        goto out;
    }
    if (r->elements != 1 + 2 * n) {
        snprintf(err, errlen, "redis: commit script answered %zu items for %zu sales", r->elements,
                 n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const redisReply *code = r->element[1 + 2 * i], *val = r->element[2 + 2 * i];
        sale_res *s = res[i];
        s->qty = reqs[i]->qty;
        s->duplicate = false;
        if (strcmp(code->str, "ok") == 0) {
            s->status = SALE_OK;
            s->stock_remaining = val->integer;
        } else if (strcmp(code->str, "dup") == 0) {
            long long q = 0, st = 0;
            if (val->type == REDIS_REPLY_STRING) sscanf(val->str, "%lld:%lld", &q, &st);
            s->status = SALE_OK;
            s->duplicate = true;
            s->qty = q;
            s->stock_remaining = st;
        } else if (strcmp(code->str, "price") == 0) {
            reject_under_catalog(s, reqs[i], val->type == REDIS_REPLY_STRING ? val->str : "");
        } else if (strcmp(code->str, "none") == 0) {
            s->status = SALE_OUT_OF_STOCK;
            s->stock_remaining = 0;
            snprintf(s->message, sizeof s->message, "SKU %s has no stock", sku);
        } else {
            s->status = SALE_OUT_OF_STOCK;
            s->stock_remaining = val->integer;
            snprintf(s->message, sizeof s->message, "only %lld left of SKU %s, %lld requested",
                     val->integer, sku, reqs[i]->qty);
        }
    }
    check_replicated(v, o, res, n);
    rc = SALE_COMMIT_DONE;
    goto out;
toolong:
    snprintf(err, errlen, "key too long");
out:
    freeReplyObject(r);
    if (mem != stackbuf) free(mem);
    return rc;
}

sale_commit_result sale_commit(rds_client *c, const sale_opts *o, const char *sku,
                               const char *token, const sale_req *reqs, sale_res *res, size_t n,
                               char *err, size_t errlen) {
    const sale_req **rp = calloc(n ? n : 1, sizeof *rp);
    sale_res **sp = calloc(n ? n : 1, sizeof *sp);
    sale_commit_result rc = SALE_COMMIT_ERROR;
    if (rp && sp) {
        for (size_t i = 0; i < n; i++) {
            rp[i] = &reqs[i];
            sp[i] = &res[i];
        }
        commit_via v = { .c = c };
        rc = commit_ptrs(&v, o, sku, token, rp, sp, n, 0, err, errlen);
    } else {
        snprintf(err, errlen, "out of memory");
    }
    free(rp);
    free(sp);
    return rc;
}

/* ---- stock helpers ------------------------------------------------------------ */

/* A GET of a stock key: 0 with *STOCK set, 1 nil (no record), -1 else. */
static int stock_reply(const redisReply *r, long long *stock) {
    if (r->type == REDIS_REPLY_NIL) return 1;
    if (r->type != REDIS_REPLY_STRING) return -1;
    char *end;
    long long v = strtoll(r->str, &end, 10);
    if (end == r->str || *end) return -1;
    *stock = v;
    return 0;
}

int sale_stock_get(rds_client *c, const sale_opts *o, const char *sku, long long *stock) {
    char k[RDS_KEY_MAX];
    if (key(k, o, sku, "stock") < 0) return -1;
    redisReply *r = rds_command(c, "GET %s", k);
    if (!r) return -1;
    int rc = stock_reply(r, stock);
    freeReplyObject(r);
    return rc;
}

int sale_stock_get_many(rds_client *c, const sale_opts *o, const char *const *skus, size_t n,
                        long long *stock, int *rc) {
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) rc[i] = -1;
    for (; sent < n; sent++) {
        char k[RDS_KEY_MAX];
        const char *argv[2] = { "GET", k };
        if (key(k, o, skus[sent], "stock") < 0) break;
        if (rds_appendargv(c, 2, argv, NULL) != 0) break;
    }
    int ok = sent == n;
    for (size_t i = 0; i < sent; i++) {
        redisReply *r = rds_get_reply(c);
        if (!r) return -1; /* the connection dropped: the rest of the replies are gone */
        rc[i] = stock_reply(r, &stock[i]);
        freeReplyObject(r);
    }
    return ok ? 0 : -1;
}

static int stock_write(rds_client *c, const sale_opts *o, const char *sku, const sale_put *p,
                       const char *mode, sale_item *now);

int sale_stock_set(rds_client *c, const sale_opts *o, const char *sku, long long stock) {
    sale_put p = { .has_stock = true, .stock = stock, .price_op = SALE_PRICE_KEEP };
    sale_item now;
    return stock_write(c, o, sku, &p, "put", &now) == 0 ? 0 : -1;
}

int sale_stock_seed(rds_client *c, const sale_opts *o, const char *sku, long long stock) {
    sale_put p = { .has_stock = true, .stock = stock, .price_op = SALE_PRICE_KEEP };
    sale_item now;
    int rc = stock_write(c, o, sku, &p, "seed", &now);
    return rc == 0 ? 1 : rc == 2 ? 0 : -1;
}

/* ---- the catalog record ------------------------------------------------------- */

int sale_put_parse(const cJSON *root, sale_put *p, char *err, size_t errlen) {
    static const char shape[] =
        "body must be {\"stock\": integer >= 0, \"price\": number >= 0 or null} with at least one of them";
    memset(p, 0, sizeof *p);
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s", shape);
        return -1;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stock");
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(root, "price");
    if (!v && !pr) {
        snprintf(err, errlen, "%s", shape);
        return -1;
    }
    if (v) {
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 1e15 ||
            v->valuedouble != floor(v->valuedouble)) {
            snprintf(err, errlen,
                     "stock must be an integer between 0 and 1e15; nothing was changed");
            return -1;
        }
        p->has_stock = true;
        p->stock = (long long)v->valuedouble;
    }
    if (pr && cJSON_IsNull(pr)) {
        p->price_op = SALE_PRICE_CLEAR;
    } else if (pr) {
        if (!cJSON_IsNumber(pr) || !isfinite(pr->valuedouble) || pr->valuedouble < 0 ||
            pr->valuedouble > SALE_PRICE_MAX) {
            snprintf(
                err, errlen,
                "price must be a number between 0 and 1e15 (or null to remove the catalog price); "
                "nothing was changed");
            return -1;
        }
        p->price_op = SALE_PRICE_SET;
        p->price = pr->valuedouble;
    }
    return 0;
}

/* The one script that writes a stock record outside a sale (PUT
 * /admin/stock, its stock-only form sale_stock_set, inventory.seed).
 * KEYS[1] stock, KEYS[2] price, KEYS[3] inventory stream. ARGV[1] stock
 * ("" = keep), ARGV[2] "set", "clear" or "keep", ARGV[3] price, ARGV[4]
 * "put" or "seed" (set only when there is no stock record), ARGV[5] sku,
 * ARGV[6] ts, ARGV[7] inventory channel, ARGV[8..11] emit_args. Reply {"ok",
 * stock, price or ""}, {"none"} (price only, and no stock record: nothing
 * changed) or {"exists"} (seed, and a stock record exists: nothing changed).
 * One script so that stock and price change together, a price is never left
 * on a SKU that has no stock record, and a stock change is in the log with
 * the value it replaced (the ledger adds the deltas up against the stock). */
static rds_script put_script = RDS_SCRIPT_INIT(
    EMIT_LUA
    "local s = redis.call('GET', KEYS[1])\n"
    "if ARGV[1] == '' and not s then return {'none'} end\n"
    "if ARGV[4] == 'seed' and s then return {'exists'} end\n"
    "if ARGV[1] ~= '' then\n"
    "  local prev = tonumber(s or '0') or 0\n"
    "  local new = tonumber(ARGV[1])\n"
    "  redis.call('SET', KEYS[1], ARGV[1])\n"
    "  local ev = {type='stock_changed', source=ARGV[4] == 'seed' and 'seed' or 'admin',\n"
    "    actor=ARGV[4] == 'seed' and 'seed' or 'admin', sku=ARGV[5], stock_remaining=new,\n"
    "    previous=prev, delta=new - prev, ts=tonumber(ARGV[6])}\n"
    "  if ARGV[2] == 'set' then ev.price = tonumber(ARGV[3]) end\n"
    "  emit(KEYS[3], ARGV[7], ev)\n"
    "  s = ARGV[1]\n"
    "end\n"
    "if ARGV[2] == 'set' then redis.call('SET', KEYS[2], ARGV[3])\n"
    "elseif ARGV[2] == 'clear' then redis.call('DEL', KEYS[2]) end\n"
    "return {'ok', s, redis.call('GET', KEYS[2]) or ''}\n");

/* A stored price as the commit script reads it: a number in 0..1e15 or none. */
static int price_parse(const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != 0 || !isfinite(v) || v < 0 || v > SALE_PRICE_MAX) return 0;
    *out = v;
    return 1;
}

static void item_fill(sale_item *it, const redisReply *stock, const redisReply *price) {
    memset(it, 0, sizeof *it);
    if (stock->type == REDIS_REPLY_STRING) it->stock = strtoll(stock->str, NULL, 10);
    if (price->type == REDIS_REPLY_STRING && price->str[0])
        it->has_price = price_parse(price->str, &it->price);
}

/* Run put_script: 0 done (*NOW filled), 1 "none", 2 "exists", -1 error. */
static int stock_write(rds_client *c, const sale_opts *o, const char *sku, const sale_put *p,
                       const char *mode, sale_item *now) {
    char ks[RDS_KEY_MAX], kp[RDS_KEY_MAX], kst[RDS_KEY_MAX], st[32] = "", pr[40] = "", ts[40];
    if (key(ks, o, sku, "stock") < 0 || key(kp, o, sku, "price") < 0 ||
        stream_key(kst, o, sku, o->inventory_channel) < 0)
        return -1;
    if (p->has_stock) snprintf(st, sizeof st, "%lld", p->stock);
    if (p->price_op == SALE_PRICE_SET) snprintf(pr, sizeof pr, "%.17g", p->price);
    const char *op = p->price_op == SALE_PRICE_SET     ? "set"
                     : p->price_op == SALE_PRICE_CLEAR ? "clear"
                                                       : "keep";
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    snprintf(ts, sizeof ts, "%lld.%03ld", (long long)t.tv_sec, t.tv_nsec / 1000000);
    emit_args em;
    emit_args_fill(&em, o, sku);
    const char *argv[] = { ks,        kp,         kst,         st,     op,
                           pr,        mode,       sku,         ts,     o->inventory_channel,
                           em.maxlen, em.publish, em.instance, em.part };
    redisReply *r = rds_eval(c, &put_script, 3, 14, argv, NULL);
    int rc = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        if (strcmp(r->element[0]->str, "none") == 0) {
            rc = 1;
        } else if (strcmp(r->element[0]->str, "exists") == 0) {
            rc = 2;
        } else if (r->elements == 3) {
            item_fill(now, r->element[1], r->element[2]);
            rc = 0;
        }
    }
    freeReplyObject(r);
    return rc;
}

int sale_item_put(rds_client *c, const sale_opts *o, const char *sku, const sale_put *p,
                  sale_item *now) {
    int rc = stock_write(c, o, sku, p, "put", now);
    return rc == 2 ? -1 : rc;
}

int sale_item_get(rds_client *c, const sale_opts *o, const char *sku, sale_item *it) {
    char ks[RDS_KEY_MAX], kp[RDS_KEY_MAX];
    if (key(ks, o, sku, "stock") < 0 || key(kp, o, sku, "price") < 0) return -1;
    redisReply *r = rds_command(c, "MGET %s %s", ks, kp);
    int rc = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
        const redisReply *s = r->element[0];
        if (s->type == REDIS_REPLY_NIL) {
            rc = 1;
        } else if (s->type == REDIS_REPLY_STRING) {
            char *end;
            strtoll(s->str, &end, 10);
            if (end != s->str && *end == 0) {
                item_fill(it, s, r->element[1]);
                rc = 0;
            }
        }
    }
    freeReplyObject(r);
    return rc;
}

/* ---- coalescing engine -------------------------------------------------------- */

/* A sale waiting in its SKU's queue, on its thread's stack. Its thread
 * parks on STATE (park.h): the leader of its batch sets W_DONE when RES is
 * filled, or W_LEAD when it is the head of the queue and must commit the
 * next batch. After W_DONE nothing reads the waiter again. */
enum { W_WAIT, W_LEAD, W_DONE };

typedef struct waiter {
    const sale_req *req;
    sale_res *res;
    struct waiter *next;
    _Atomic int state;
} waiter;

/* Per-SKU queue; lives while anyone is queued on it (refs > 0). The leader
 * of a batch drops the refs of every sale of its batch, so a waiter that is
 * done never touches the queue again. */
typedef struct skuq {
    struct skuq *hnext;
    waiter *head, *tail;
    int leader; /* a batch is in flight or a leader is designated */
    int refs;
    char sku[SALE_STR_MAX + 1];
} skuq;

#define NSTRIPES 256

/* A stripe keeps up to SPARE_MAX queues that emptied for the next SKU to
 * come: on a 1,000-SKU load nearly every sale creates its SKU's queue and
 * drops it again, and a calloc plus a free per sale showed in the profile. */
#define SPARE_MAX 4

typedef struct stripe {
    pthread_mutex_t mu;
    skuq *chain;
    skuq *spare; /* linked by hnext */
    int nspare;
} stripe;

struct sale_engine {
    sale_opts o;
    char *prefix, *inv_ch, *sales_ch, *instance;
    rds_pool *pool;
    mux *mux; /* NULL: commits on each thread's pooled client */
    stripe stripes[NSTRIPES];
    _Atomic uint64_t results[SALE_RESULT_COUNT];
    _Atomic uint64_t repl_short;
    hist duration, lock_wait;
    salewin win; /* the last five minutes' sales, for /status.json */
};

sale_engine *sale_engine_new(const sale_opts *o, rds_pool *pool) {
    sale_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    salewin_init(&e->win);
    e->o = *o;
    e->prefix = strdup(o->prefix);
    e->inv_ch = strdup(o->inventory_channel);
    e->sales_ch = strdup(o->sales_channel);
    e->instance = strdup(o->instance ? o->instance : "");
    if (!e->prefix || !e->inv_ch || !e->sales_ch || !e->instance) goto err;
    e->o.instance = e->instance;
    e->o.prefix = e->prefix;
    e->o.inventory_channel = e->inv_ch;
    e->o.sales_channel = e->sales_ch;
    if (e->o.max_batch < 1) e->o.max_batch = 1;
    e->pool = pool;
    e->o.redis = NULL;
    if (o->redis && !(e->mux = mux_new(o->redis, o->pipelines, 1024))) goto err;
    if (e->mux) mux_set_wait(e->mux, o->wait_replicas, o->wait_timeout_ms);
    for (int i = 0; i < NSTRIPES; i++) pthread_mutex_init(&e->stripes[i].mu, NULL);
    return e;
err:
    sale_engine_free(e);
    return NULL;
}

void sale_engine_free(sale_engine *e) {
    if (!e) return;
    mux_free(e->mux);
    for (int i = 0; i < NSTRIPES; i++) {
        for (skuq *q = e->stripes[i].spare, *nx; q; q = nx) {
            nx = q->hnext;
            free(q);
        }
    }
    free(e->prefix);
    free(e->inv_ch);
    free(e->sales_ch);
    free(e->instance);
    salewin_destroy(&e->win);
    free(e);
}

const sale_opts *sale_engine_opts(const sale_engine *e) {
    return &e->o;
}

static const char *const result_names[SALE_RESULT_COUNT] = {
    "ok", "duplicate", "out_of_stock", "rejected", "halted", "unavailable", "bad_request",
};

const char *sale_result_name(sale_result r) {
    return (unsigned)r < SALE_RESULT_COUNT ? result_names[r] : NULL;
}

void sale_record(sale_engine *e, sale_status status, bool duplicate, double seconds) {
    sale_result r;
    switch (status) {
    case SALE_OK: r = duplicate ? SALE_RESULT_DUPLICATE : SALE_RESULT_OK; break;
    case SALE_OUT_OF_STOCK: r = SALE_RESULT_OUT_OF_STOCK; break;
    case SALE_REJECTED: r = SALE_RESULT_REJECTED; break;
    case SALE_HALTED: r = SALE_RESULT_HALTED; break;
    case SALE_BAD_REQUEST: r = SALE_RESULT_BAD_REQUEST; break;
    default: r = SALE_RESULT_UNAVAILABLE; break;
    }
    atomic_fetch_add_explicit(&e->results[r], 1, memory_order_relaxed);
    hist_observe(&e->duration, seconds);
}

void sale_get_stats(sale_engine *e, sale_stats *out) {
    for (int i = 0; i < SALE_RESULT_COUNT; i++)
        out->results[i] = atomic_load_explicit(&e->results[i], memory_order_relaxed);
    hist_read(&e->duration, &out->duration);
    hist_read(&e->lock_wait, &out->lock_wait);
    mux_stats ms = { 0, 0 };
    if (e->mux) mux_get_stats(e->mux, &ms);
    out->pipeline_commands = ms.commands;
    out->pipeline_flushes = ms.flushes;
    out->replication_short = atomic_load_explicit(&e->repl_short, memory_order_relaxed);
}

static unsigned hash(const char *s) {
    unsigned h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* Take the lock for SKU, commit the N sales, release. Fills every result. */
static void run_batch(sale_engine *e, const char *sku, const sale_req **reqs, sale_res **res,
                      size_t n) {
    char err[256] = "";
    char lk[RDS_KEY_MAX], token[LOCK_TOKEN_LEN + 1];
    const char *fail = NULL;
    /* The commit goes through the shared pipelines; this thread's own
     * client is only for the slow path (another instance holds the lock),
     * so that a worker that never meets contention never opens one. */
    commit_via v = { .m = e->mux };
    rds_client *c = NULL;
    int held = 0; /* the slow path took the lock: release it on an error */
    if (!e->mux && !(v.c = c = rds_pool_client(e->pool))) {
        fail = "out of memory";
    } else if (key(lk, &e->o, sku, "lock") < 0) {
        fail = "key too long";
    } else {
        /* Fast path: take the lock and commit in one script call. */
        lock_token_new(token);
        sale_commit_result rc = commit_ptrs(&v, &e->o, sku, token, reqs, res, n, e->o.lock_ttl_ms,
                                            err, sizeof err);
        if (rc == SALE_COMMIT_BUSY && !c && !(c = rds_pool_client(e->pool))) {
            snprintf(err, sizeof err, "out of memory");
            fail = err;
        } else if (rc == SALE_COMMIT_BUSY) {
            /* Another instance holds the SKU: wait for it, then commit. */
            uint64_t t0 = clock_now_ns();
            lock_status st = lock_acquire(c, lk, e->o.lock_ttl_ms, e->o.lock_max_wait_ms, token,
                                          err, sizeof err);
            hist_observe(&e->lock_wait, (double)(clock_now_ns() - t0) / 1e9);
            if (st == LOCK_TIMEOUT) {
                snprintf(err, sizeof err, "SKU %s is busy: lock wait over %d ms", sku,
                         e->o.lock_max_wait_ms);
                fail = err;
            } else if (st == LOCK_ERR) {
                fail = err;
            } else {
                held = 1;
                rc = commit_ptrs(&v, &e->o, sku, token, reqs, res, n, 0, err, sizeof err);
            }
        } else {
            hist_observe(&e->lock_wait, 0);
        }
        if (!fail && rc == SALE_COMMIT_LOCK_LOST) {
            snprintf(err, sizeof err, "lock on SKU %s expired before the commit; retry", sku);
            fail = err;
        } else if (!fail && rc == SALE_COMMIT_ERROR) {
            /* Best effort: free the SKU for others now rather than at TTL
             * (the fast path never wrote the lock: nothing to free). */
            if (held) lock_release(c, lk, token);
            /* The script may have run before the connection broke: say
             * so, so that clients retry with the same order_id (which
             * then answers the recorded result instead of selling twice). */
            if (v.unknown) {
                char why[160];
                snprintf(why, sizeof why, "%.159s", err);
                snprintf(
                    err, sizeof err,
                    "%.159s; the sale may or may not have been recorded: retry with the same order_id",
                    why);
            }
            fail = err;
        }
    }
    if (v.short_n) {
        atomic_fetch_add_explicit(&e->repl_short, (uint64_t)v.short_n, memory_order_relaxed);
        log_warn("sale", "commit not replicated in time sku=%s sales=%d replicas=%d wanted=%d", sku,
                 v.short_n, v.replicas, e->o.wait_replicas);
    }
    if (fail) {
        log_warn("sale", "batch failed sku=%s n=%zu error=\"%s\"", sku, n, fail);
        for (size_t i = 0; i < n; i++) set_unavailable(res[i], fail);
    }
}

/* With the stripe's mutex held: drop N refs of Q, and when none is left
 * unlink it (kept as a spare, or freed). */
static void skuq_unref(stripe *s, skuq *q, int n) {
    q->refs -= n;
    if (q->refs > 0) return;
    skuq **pp = &s->chain;
    while (*pp != q) pp = &(*pp)->hnext;
    *pp = q->hnext;
    if (s->nspare < SPARE_MAX) {
        q->hnext = s->spare;
        s->spare = q;
        s->nspare++;
    } else {
        free(q);
    }
}

/* Batches up to this many sales keep their arrays on the stack. */
#define BATCH_STACK 16

static void execute(sale_engine *e, const sale_req *req, sale_res *res);

void sale_execute(sale_engine *e, const sale_req *req, sale_res *res) {
    execute(e, req, res);
    if (res->status == SALE_OK && !res->duplicate) salewin_add(&e->win, req->sku, res->qty);
}

void sale_read_window(sale_engine *e, salewin_snap *out) {
    salewin_read(&e->win, out);
}

static void execute(sale_engine *e, const sale_req *req, sale_res *res) {
    memset(res, 0, sizeof *res);
    res->stock_remaining = -1;
    if (e->o.gate && e->o.gate(e->o.gate_ud, req, res) != SALE_OK) return;

    stripe *s = &e->stripes[hash(req->sku) % NSTRIPES];
    waiter w = { .req = req, .res = res };
    atomic_init(&w.state, W_WAIT);

    pthread_mutex_lock(&s->mu);
    skuq *q = s->chain;
    while (q && strcmp(q->sku, req->sku) != 0) q = q->hnext;
    if (!q) {
        if (s->spare) {
            q = s->spare;
            s->spare = q->hnext;
            s->nspare--;
        } else if (!(q = malloc(sizeof *q))) {
            pthread_mutex_unlock(&s->mu);
            set_unavailable(res, "out of memory");
            return;
        }
        q->head = q->tail = NULL;
        q->leader = q->refs = 0;
        strcpy(q->sku, req->sku);
        q->hnext = s->chain;
        s->chain = q;
    }
    q->refs++;
    if (q->tail)
        q->tail->next = &w;
    else
        q->head = &w;
    q->tail = &w;
    if (q->leader) {
        /* A batch is in flight: its leader (or the one after it) will
         * either fill in our result or hand us the next batch. */
        pthread_mutex_unlock(&s->mu);
        if (park_while(&w.state, W_WAIT) == W_DONE) return;
        pthread_mutex_lock(&s->mu);
    }
    /* No batch in flight and we are at the head: detach up to max_batch
     * sales (ours first) and commit them. */
    q->leader = 1;
    size_t n = 0, max = (size_t)e->o.max_batch;
    for (waiter *x = q->head; x && n < max; x = x->next) n++;
    waiter *bs[BATCH_STACK];
    const sale_req *rs[BATCH_STACK];
    sale_res *ss[BATCH_STACK];
    waiter **batch = bs;
    const sale_req **reqs = rs;
    sale_res **resv = ss;
    if (n > BATCH_STACK) {
        /* CivetWeb workers have small stacks: a large batch's arrays go on
         * the heap (one allocation per batch, shared by its sales). */
        batch = malloc(n * sizeof *batch);
        reqs = malloc(n * sizeof *reqs);
        resv = malloc(n * sizeof *resv);
        if (!batch || !reqs || !resv) {
            /* Out of memory: commit just our own sale, at the head. */
            free(batch), free(reqs), free(resv);
            batch = bs, reqs = rs, resv = ss, n = 1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        waiter *x = q->head;
        q->head = x->next;
        batch[i] = x;
        reqs[i] = x->req;
        resv[i] = x->res;
    }
    if (!q->head) q->tail = NULL;
    pthread_mutex_unlock(&s->mu);

    run_batch(e, q->sku, reqs, resv, n);

    pthread_mutex_lock(&s->mu);
    waiter *next = q->head;
    if (!next) q->leader = 0;
    skuq_unref(s, q, (int)n);
    pthread_mutex_unlock(&s->mu);
    /* Wake the sales of the batch (ours excepted), then the next leader:
     * after park_set a waiter may return at once, so nothing of it is read
     * afterwards. NEXT is still parked on W_WAIT until we set it. */
    for (size_t i = 0; i < n; i++)
        if (batch[i] != &w) park_set(&batch[i]->state, W_DONE);
    if (next) park_set(&next->state, W_LEAD);
    if (batch != bs) {
        free(batch);
        free(reqs);
        free(resv);
    }
}
