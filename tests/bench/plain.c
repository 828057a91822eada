/* plain.c -- the bench's plain reference server: the simplest correct sale
 * server a competent user would write instead of nerve (issue 12).
 *
 *     plain PORT THREADS REDIS_HOST REDIS_PORT [KEY_PREFIX]    (prefix "plain:")
 *
 * CivetWeb with nerve's options (those of tests/bench/ceiling.c: keep-alive,
 * TCP_NODELAY, THREADS workers, 127.0.0.1 only) and hiredis. POST /sale with
 * the body {"sku": str, "qty": int >= 1, "order_id": str?}, parsed with cJSON
 * and checked like nerve checks it, runs ONE `EVALSHA` of a check-and-
 * decrement script on the stock key KEY_PREFIX "stock:" SKU (GET; if the
 * stock covers qty, DECRBY; a missing key is stock 0) and answers like nerve:
 *
 *   200 {"status":"ok","sku","qty","stock_remaining","order_id"}
 *   409 {"error":"out_of_stock","message","stock_remaining"}
 *   503 {"error":"unavailable","message"} with Retry-After: 1 (Redis down)
 *   400 bad_request, 405, 413 like nerve.
 *
 * Each CivetWeb worker thread has its own Redis connection (thread-local,
 * connected on the thread's first sale, freed when the thread exits). The
 * script is loaded once at start (SCRIPT LOAD: Redis's script cache is
 * server-wide) and again on the connection where EVALSHA answers NOSCRIPT
 * (Redis restarted or SCRIPT FLUSH), which then retries once. A connection that fails is
 * dropped and the sale answers 503; the next sale on that thread reconnects.
 *
 * No lock, no idempotency (a repeated order_id sells again), no events, no
 * rules: the Redis script is atomic, so stock is never oversold, and that is
 * all this server promises. The bench compares nerve, which does all of
 * those, with it (tests/bench/README.md).
 *
 * Runs until SIGINT or SIGTERM, then stops CivetWeb and exits 0. Exits 2 on a
 * bad argument and 1 when the server cannot start. Thread-safety: the only
 * shared state is the script's SHA1, written once before CivetWeb starts.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <cJSON.h>
#include <civetweb.h>

#include "bench.h"
#include <hiredis.h>

/* nerve's defaults: server.max_body_bytes, the longest sku / order_id,
 * sale.max_qty, redis.connect_timeout_ms and redis.command_timeout_ms. */
#define MAX_BODY           8192
#define MAX_STR            128
#define MAX_QTY            1000
#define CONNECT_TIMEOUT_MS 1000
#define COMMAND_TIMEOUT_MS 1000

/* {1, stock after} when the stock covered qty, else {0, stock}. */
static const char SCRIPT[] = "local s = tonumber(redis.call('GET', KEYS[1])) or 0\n"
                             "local q = tonumber(ARGV[1])\n"
                             "if s < q then return {0, s} end\n"
                             "return {1, redis.call('DECRBY', KEYS[1], q)}\n";

static const char *redis_host;
static int redis_port;
static char key_prefix[65] = "plain:";
static char script_sha[41]; /* from the first SCRIPT LOAD, before mg_start */

/* This worker's Redis connection (NULL until its first sale, or after an
 * error). */
static _Thread_local redisContext *tl_redis;

static struct timeval ms_tv(int ms) {
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return tv;
}

/* SCRIPT LOAD on C; the SHA1 into SHA (41 bytes). 0, or -1 on any error. */
static int load_script(redisContext *c, char *sha) {
    redisReply *r = redisCommand(c, "SCRIPT LOAD %s", SCRIPT);
    int ok = r && r->type == REDIS_REPLY_STRING && r->len == 40;

    if (ok) memcpy(sha, r->str, 41);
    freeReplyObject(r);
    return ok ? 0 : -1;
}

/* A connected context with the command timeout set, or NULL (message in
 * ERR). */
static redisContext *connect_redis(char *err, size_t errlen) {
    redisContext *c = redisConnectWithTimeout(redis_host, redis_port, ms_tv(CONNECT_TIMEOUT_MS));

    if (c == NULL || c->err) {
        snprintf(err, errlen, "redis %s:%d: %s", redis_host, redis_port,
                 c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    if (redisSetTimeout(c, ms_tv(COMMAND_TIMEOUT_MS)) != REDIS_OK) {
        snprintf(err, errlen, "redis: cannot set the command timeout");
        redisFree(c);
        return NULL;
    }
    return c;
}

/* The reply to EVALSHA on this thread's connection (connecting first, and
 * loading the script again on NOSCRIPT), or NULL with the connection dropped
 * (message in ERR). */
static redisReply *eval_sale(const char *key, size_t keylen, long qty, char *err, size_t errlen) {
    char qbuf[24];
    const char *argv[5] = { "EVALSHA", script_sha, "1", key, qbuf };
    size_t argl[5] = { 7, 40, 1, keylen, 0 };
    redisReply *r;

    argl[4] = (size_t)snprintf(qbuf, sizeof(qbuf), "%ld", qty);
    if (tl_redis == NULL && (tl_redis = connect_redis(err, errlen)) == NULL) return NULL;
    r = redisCommandArgv(tl_redis, 5, argv, argl);
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        char sha[41];

        freeReplyObject(r);
        r = NULL;
        /* The same script has the same SHA1: reload it and retry once. */
        if (load_script(tl_redis, sha) == 0) r = redisCommandArgv(tl_redis, 5, argv, argl);
    }
    if (r == NULL) {
        snprintf(err, errlen, "redis: %s", tl_redis->err ? tl_redis->errstr : "no reply");
        redisFree(tl_redis);
        tl_redis = NULL;
    }
    return r;
}

/* Answer like nerve (engine/http.c's send_raw): status line, headers and
 * body in one mg_write; the body is OBJ printed (and deleted) plus "\n". */
static int reply(struct mg_connection *conn, int status, cJSON *obj, const char *extra) {
    char body[1024], buf[2048];
    size_t bl;
    int n;

    if (obj == NULL || !cJSON_PrintPreallocated(obj, body, (int)sizeof(body) - 2, 0)) {
        status = 500;
        strcpy(body, "{\"error\":\"internal\",\"message\":\"answer too large\"}");
    }
    cJSON_Delete(obj);
    bl = strlen(body);
    body[bl++] = '\n';
    n = snprintf(buf, sizeof(buf),
                 "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                 "%sContent-Length: %zu\r\n\r\n",
                 status, mg_get_response_code_text(conn, status), extra ? extra : "", bl);
    if (n < 0 || (size_t)n + bl > sizeof(buf)) return 500;
    memcpy(buf + n, body, bl);
    mg_write(conn, buf, (size_t)n + bl);
    return status;
}

static int reply_error(struct mg_connection *conn, int status, const char *code, const char *msg) {
    cJSON *o = cJSON_CreateObject();

    cJSON_AddStringToObject(o, "error", code);
    cJSON_AddStringToObject(o, "message", msg);
    return reply(conn, status, o, status == 503 ? "Retry-After: 1\r\n" : NULL);
}

/* A non-empty string of at most MAX_STR bytes; the sku also only of
 * [A-Za-z0-9._:-] (nerve's rule). */
static int valid_str(const cJSON *s, int is_sku) {
    size_t n;

    if (!cJSON_IsString(s) || (n = strlen(s->valuestring)) == 0 || n > MAX_STR) return 0;
    for (const char *p = s->valuestring; is_sku && *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("._:-", *p)))
            return 0;
    return 1;
}

/* POST /sale. */
static int sale_handler(struct mg_connection *conn, void *cbdata) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
    char buf[MAX_BODY + 1], key[sizeof(key_prefix) + 6 + MAX_STR], err[256];
    const cJSON *sku, *qty, *oid;
    redisReply *r;
    cJSON *req, *o;
    size_t got = 0;
    long q;
    int n, keylen, status;

    (void)cbdata;
    if (strcmp(ri->request_method, "POST") != 0)
        return reply_error(conn, 405, "method_not_allowed", "use POST");
    if (ri->content_length > MAX_BODY)
        return reply_error(conn, 413, "body_too_large", "body too large");
    while ((n = mg_read(conn, buf + got, sizeof(buf) - got)) > 0) {
        got += (size_t)n;
        if (got == sizeof(buf)) return reply_error(conn, 413, "body_too_large", "body too large");
    }
    if (n < 0) return 400; /* the client went away mid-body: nothing to answer */

    req = cJSON_ParseWithLength(buf, got);
    sku = cJSON_GetObjectItemCaseSensitive(req, "sku");
    qty = cJSON_GetObjectItemCaseSensitive(req, "qty");
    oid = cJSON_GetObjectItemCaseSensitive(req, "order_id");
    if (!cJSON_IsObject(req) || !valid_str(sku, 1) || !cJSON_IsNumber(qty) ||
        !(qty->valuedouble >= 1 && qty->valuedouble <= MAX_QTY) ||
        qty->valuedouble != (double)(long)qty->valuedouble || (oid != NULL && !valid_str(oid, 0))) {
        cJSON_Delete(req);
        return reply_error(conn, 400, "bad_request",
                           "expected {\"sku\": str, \"qty\": int >= 1, \"order_id\": str?}");
    }
    q = (long)qty->valuedouble;
    keylen = snprintf(key, sizeof(key), "%sstock:%s", key_prefix, sku->valuestring);

    r = eval_sale(key, (size_t)keylen, q, err, sizeof(err));
    if (r == NULL) {
        cJSON_Delete(req);
        return reply_error(conn, 503, "unavailable", err);
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER) {
        snprintf(err, sizeof(err), "redis: unexpected reply to EVALSHA%s%s",
                 r->type == REDIS_REPLY_ERROR ? ": " : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
        freeReplyObject(r);
        cJSON_Delete(req);
        return reply_error(conn, 503, "unavailable", err);
    }
    o = cJSON_CreateObject();
    if (r->element[0]->integer == 1) {
        status = 200;
        cJSON_AddStringToObject(o, "status", "ok");
        cJSON_AddStringToObject(o, "sku", sku->valuestring);
        cJSON_AddNumberToObject(o, "qty", (double)q);
        cJSON_AddNumberToObject(o, "stock_remaining", (double)r->element[1]->integer);
        if (oid != NULL)
            cJSON_AddStringToObject(o, "order_id", oid->valuestring);
        else
            cJSON_AddNullToObject(o, "order_id");
    } else {
        status = 409;
        cJSON_AddStringToObject(o, "error", "out_of_stock");
        cJSON_AddStringToObject(o, "message", "not enough stock");
        cJSON_AddNumberToObject(o, "stock_remaining", (double)r->element[1]->integer);
    }
    freeReplyObject(r);
    cJSON_Delete(req);
    return reply(conn, status, o, NULL);
}

/* A worker thread ends (mg_stop): close its Redis connection. */
static void exit_thread(const struct mg_context *ctx, int thread_type, void *thread_pointer) {
    (void)ctx;
    (void)thread_type;
    (void)thread_pointer;
    redisFree(tl_redis);
    tl_redis = NULL;
}

static int log_message(const struct mg_connection *conn, const char *message) {
    (void)conn;
    fprintf(stderr, "plain: civetweb: %s\n", message);
    return 1;
}

/* Parse a decimal in [lo, hi] with strtol and an end pointer; -1 if invalid. */
static long parse_long(const char *s, long lo, long hi) {
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno == ERANGE || end == s || *end != '\0' || v < lo || v > hi) return -1;
    return v;
}

int main(int argc, char **argv) {
    struct mg_callbacks cb;
    redisContext *c;
    char err[256];
    long port, nthreads, rport;

    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: plain PORT THREADS REDIS_HOST REDIS_PORT [KEY_PREFIX]\n");
        return 2;
    }
    if ((port = parse_long(argv[1], 1, 65535)) < 0) {
        fprintf(stderr, "plain: bad port '%s' (1..65535)\n", argv[1]);
        return 2;
    }
    if ((nthreads = parse_long(argv[2], 1, 1024)) < 0) {
        fprintf(stderr, "plain: bad thread count '%s' (1..1024)\n", argv[2]);
        return 2;
    }
    if ((rport = parse_long(argv[4], 1, 65535)) < 0) {
        fprintf(stderr, "plain: bad Redis port '%s' (1..65535)\n", argv[4]);
        return 2;
    }
    if (argc == 6 && strlen(argv[5]) >= sizeof(key_prefix)) {
        fprintf(stderr, "plain: key prefix '%s' longer than %zu bytes\n", argv[5],
                sizeof(key_prefix) - 1);
        return 2;
    }
    if (argc == 6) strcpy(key_prefix, argv[5]);
    redis_host = argv[3];
    redis_port = (int)rport;

    /* Load the script once up front: its SHA1 is shared by every worker, and
     * a Redis that is not there is better said now than as 503s. */
    if ((c = connect_redis(err, sizeof(err))) == NULL || load_script(c, script_sha) != 0) {
        fprintf(stderr, "plain: %s\n", c ? "SCRIPT LOAD failed" : err);
        redisFree(c);
        return 1;
    }
    redisFree(c);

    memset(&cb, 0, sizeof(cb));
    cb.log_message = log_message;
    cb.exit_thread = exit_thread;
    char what[400];
    snprintf(what, sizeof(what), ", Redis %s:%d, keys %sstock:SKU", redis_host, redis_port,
             key_prefix);
    return bench_serve("plain", port, nthreads, &cb, sale_handler, what);
}
