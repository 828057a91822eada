/* http.c -- the HTTP API on CivetWeb (see http.h).
 *
 * One CivetWeb request handler receives every request and routes on method
 * and path, so that unknown paths and wrong methods get the same JSON error
 * bodies as everything else instead of CivetWeb's HTML pages.
 */
#include "nerve/http.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netdb.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "nerve/jsonck.h"
#include "nerve/log.h"
#include "nerve/sku.h"
#include "nerve/status.h"

struct http_server {
    http_deps d;
    struct mg_context *ctx;
    /* Graceful stop: CivetWeb refuses writes once mg_stop has begun, so
     * in-flight requests must finish before it is called. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;               /* requests being handled */
    int draining;               /* http_stop began: take no new request */
    int released;               /* requests held while draining may go */
};

/* ---- responses --------------------------------------------------------------- */

typedef struct extra_hdr {
    const char *name, *value;
} extra_hdr;

/* Send STATUS with BODY (may be NULL) and the extra headers in ONE write:
 * head and body in separate writes cost a second packet and halve the
 * requests per second on loopback (measured with tests/bench). */
static int send_raw(http_server *s, struct mg_connection *conn, int status, const char *body,
                    const extra_hdr *hdrs, int nhdrs) {
    size_t bl = body ? strlen(body) : 0;
    char stackbuf[2048];
    size_t cap = sizeof stackbuf, need = bl + 512;
    for (int i = 0; i < nhdrs; i++) need += strlen(hdrs[i].name) + strlen(hdrs[i].value) + 4;
    need += strlen(s->d.cfg->cors_origin) + 64;
    char *buf = stackbuf;
    if (need > cap) {
        buf = malloc(need);
        if (!buf) return 500;
        cap = need;
    }
    int n = snprintf(buf, cap, "HTTP/1.1 %d %s\r\n%sContent-Length: %zu\r\nCache-Control: no-store\r\n",
                     status, mg_get_response_code_text(conn, status),
                     body ? "Content-Type: application/json\r\n" : "", bl);
    size_t len = (size_t)n;
    if (s->d.cfg->cors_origin[0])
        len += (size_t)snprintf(buf + len, cap - len, "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n",
                                s->d.cfg->cors_origin);
    for (int i = 0; i < nhdrs; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s: %s\r\n", hdrs[i].name, hdrs[i].value);
    len += (size_t)snprintf(buf + len, cap - len, "\r\n");
    if (bl) {
        memcpy(buf + len, body, bl);
        len += bl;
    }
    mg_write(conn, buf, len);
    if (buf != stackbuf) free(buf);
    return status;
}

/* Send a cJSON object (consumed) followed by a newline. */
static int send_json(http_server *s, struct mg_connection *conn, int status, cJSON *obj,
                     const extra_hdr *hdrs, int nhdrs) {
    char stackbuf[1024];
    char *heap = NULL, *text = stackbuf;
    if (!cJSON_PrintPreallocated(obj, stackbuf, (int)sizeof stackbuf - 2, 0)) {
        heap = cJSON_PrintUnformatted(obj);
        text = heap ? heap : "{\"error\":\"internal\",\"message\":\"out of memory\"}";
        status = heap ? status : 500;
    }
    cJSON_Delete(obj);
    int rc;
    if (heap) {
        size_t n = strlen(heap);
        char *t = realloc(heap, n + 2);
        if (t) {
            heap = t;
            heap[n] = '\n';
            heap[n + 1] = 0;
        }
        rc = send_raw(s, conn, status, heap, hdrs, nhdrs);
    } else {
        strcat(text, "\n");
        rc = send_raw(s, conn, status, text, hdrs, nhdrs);
    }
    free(heap);
    return rc;
}

static cJSON *error_obj(const char *code, const char *message) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", code);
    cJSON_AddStringToObject(o, "message", message);
    return o;
}

static int send_error(http_server *s, struct mg_connection *conn, int status, const char *code,
                      const char *message) {
    return send_json(s, conn, status, error_obj(code, message), NULL, 0);
}

static int send_method_not_allowed(http_server *s, struct mg_connection *conn, const char *allow) {
    char msg[128];
    snprintf(msg, sizeof msg, "method not allowed; use %s", allow);
    extra_hdr h = { "Allow", allow };
    return send_json(s, conn, 405, error_obj("method_not_allowed", msg), &h, 1);
}

/* ---- request helpers ---------------------------------------------------------- */

/* Read the whole body into a malloc'd buffer of at most max bytes.
 * Returns 0 (body in *out, length *len), 413 when larger, 400 on a read error. */
static int read_body(struct mg_connection *conn, long max, char **out, size_t *len) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
    *out = NULL;
    *len = 0;
    if (ri->content_length > max) return 413;
    size_t cap = ri->content_length >= 0 ? (size_t)ri->content_length + 1 : 1024;
    char *buf = malloc(cap);
    if (!buf) return 400;
    size_t n = 0;
    for (;;) {
        if (n + 1 >= cap) {
            if ((long)n >= max + 1) break;
            size_t ncap = cap * 2 > (size_t)max + 2 ? (size_t)max + 2 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                return 400;
            }
            buf = nb;
            cap = ncap;
        }
        int r = mg_read(conn, buf + n, cap - n - 1);
        if (r < 0) {
            free(buf);
            return 400;
        }
        if (r == 0) break;
        n += (size_t)r;
        if ((long)n > max) {
            free(buf);
            return 413;
        }
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

/* Read the body, answering 413 (and closing: the rest of an oversized body
 * is never read) or 400 itself. 0 with *BODY (caller frees), or the status
 * already sent. */
static int take_body(http_server *s, struct mg_connection *conn, char **body, size_t *len) {
    int rc = read_body(conn, s->d.cfg->max_body_bytes, body, len);
    if (rc == 413) {
        char msg[96];
        snprintf(msg, sizeof msg, "request body over %ld bytes", s->d.cfg->max_body_bytes);
        extra_hdr h = { "Connection", "close" };
        return send_json(s, conn, 413, error_obj("payload_too_large", msg), &h, 1);
    }
    if (rc) return send_error(s, conn, 400, "bad_request", "could not read the request body");
    return 0;
}

/* take_body, then parse it as JSON: 0 with *ROOT (NULL when it is not
 * strict JSON (jsonck.h); the caller answers 400 with what it expected), or
 * the status already sent. */
static int take_json(http_server *s, struct mg_connection *conn, cJSON **root) {
    char *body;
    size_t len;
    *root = NULL;
    int st = take_body(s, conn, &body, &len);
    if (st) return st;
    char why[128];
    if (jsonck_check(body, len, JSONCK_MAX_DEPTH, why, sizeof why) == 0)
        *root = cJSON_ParseWithLength(body, len);
    free(body);
    return 0;
}

/* Constant-time comparison of the bearer token with the configured one. */
static int token_ok(const char *given, const char *want) {
    size_t gl = strlen(given), wl = strlen(want);
    unsigned char diff = (unsigned char)(gl != wl);
    for (size_t i = 0; i < wl; i++) diff |= (unsigned char)(want[i] ^ (i < gl ? given[i] : 0));
    return diff == 0;
}

/* 0 when authorised, otherwise the status already sent. */
static int check_admin(http_server *s, struct mg_connection *conn) {
    const char *want = s->d.cfg->admin_token;
    if (!want || !want[0])
        return send_error(s, conn, 403, "forbidden",
                          "admin endpoints are disabled: set NERVE_ADMIN_TOKEN to enable them");
    const char *auth = mg_get_header(conn, "Authorization");
    if (!auth || strncmp(auth, "Bearer ", 7) != 0 || !token_ok(auth + 7, want)) {
        extra_hdr h = { "WWW-Authenticate", "Bearer" };
        return send_json(s, conn, 401,
                         error_obj("unauthorized", "missing or wrong admin token (Authorization: Bearer ...)"),
                         &h, 1);
    }
    return 0;
}

/* ---- handlers -------------------------------------------------------------------- */

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int do_sale(http_server *s, struct mg_connection *conn, sale_res *res);

/* POST /sale: count and time every answer, whatever it is. */
static int handle_sale(http_server *s, struct mg_connection *conn) {
    double t0 = mono_s();
    sale_res res;
    memset(&res, 0, sizeof res);
    res.status = SALE_BAD_REQUEST;
    int status = do_sale(s, conn, &res);
    sale_record(s->d.sale, res.status, res.duplicate, mono_s() - t0);
    return status;
}

static int do_sale(http_server *s, struct mg_connection *conn, sale_res *resp) {
    const cfg *c = s->d.cfg;
    char *body;
    size_t len;
    int st = take_body(s, conn, &body, &len);
    if (st) return st;

    sale_req req;
    char err[256];
    if (sale_parse(body, len, c->max_qty, &req, err, sizeof err)) {
        free(body);
        return send_error(s, conn, 400, "bad_request", err);
    }
    free(body);

    sale_res res;
    sale_execute(s->d.sale, &req, &res);
    *resp = res;
    cJSON *o;
    switch (res.status) {
    case SALE_OK:
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ok");
        cJSON_AddStringToObject(o, "sku", req.sku);
        cJSON_AddNumberToObject(o, "qty", (double)res.qty);
        cJSON_AddNumberToObject(o, "stock_remaining", (double)res.stock_remaining);
        cJSON_AddStringToObject(o, "order_id", req.order_id);
        if (res.duplicate) cJSON_AddTrueToObject(o, "duplicate");
        return send_json(s, conn, 200, o, NULL, 0);
    case SALE_OUT_OF_STOCK:
        o = error_obj("out_of_stock", res.message);
        cJSON_AddStringToObject(o, "sku", req.sku);
        cJSON_AddNumberToObject(o, "stock_remaining", (double)res.stock_remaining);
        return send_json(s, conn, 409, o, NULL, 0);
    case SALE_REJECTED:
        o = error_obj("policy_rejected", res.message[0] ? res.message : res.reason);
        cJSON_AddStringToObject(o, "rule", res.rule);
        cJSON_AddStringToObject(o, "reason", res.reason);
        if (res.has_catalog_price) cJSON_AddNumberToObject(o, "catalog_price", res.catalog_price);
        return send_json(s, conn, 422, o, NULL, 0);
    case SALE_HALTED:
        o = error_obj("sales_halted", res.message[0] ? res.message : "sales are halted by the kill switch");
        cJSON_AddStringToObject(o, "scope", res.scope);
        return send_json(s, conn, 423, o, NULL, 0);
    case SALE_BAD_REQUEST:
        return send_error(s, conn, 400, "bad_request", res.message);
    case SALE_UNAVAILABLE:
    default: {
        extra_hdr h = { "Retry-After", "1" };
        o = error_obj("unavailable", res.message);
        cJSON_AddStringToObject(o, "sku", req.sku);
        cJSON_AddStringToObject(o, "order_id", req.order_id);
        return send_json(s, conn, 503, o, &h, 1);
    }
    }
}

/* 503 for a Redis failure on a stock request. */
static int stock_unavailable(http_server *s, struct mg_connection *conn, rds_client *rc) {
    extra_hdr h = { "Retry-After", "1" };
    char msg[300];
    snprintf(msg, sizeof msg, "redis unavailable: %s", rc ? rds_errstr(rc) : "out of memory");
    return send_json(s, conn, 503, error_obj("unavailable", msg), &h, 1);
}

/* {"sku", "stock", "price"?}: price only when the operator set one. */
static cJSON *item_obj(const char *sku, const sale_item *it) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "sku", sku);
    cJSON_AddNumberToObject(o, "stock", (double)it->stock);
    if (it->has_price) cJSON_AddNumberToObject(o, "price", it->price);
    return o;
}

static int handle_stock_get(http_server *s, struct mg_connection *conn, const char *sku) {
    if (!sku_valid(sku, strlen(sku)))
        return send_error(s, conn, 400, "bad_request", "sku must be 1-128 bytes of A-Z a-z 0-9 . _ : -");
    rds_client *rc = rds_pool_client(s->d.pool);
    sale_item it;
    int r = rc ? sale_item_get(rc, s->d.cfg->redis_prefix, sku, &it) : -1;
    if (r < 0) return stock_unavailable(s, conn, rc);
    if (r == 1) {
        char msg[200];
        snprintf(msg, sizeof msg, "unknown SKU %.140s", sku);
        return send_error(s, conn, 404, "not_found", msg);
    }
    return send_json(s, conn, 200, item_obj(sku, &it), NULL, 0);
}

/* PUT /admin/stock/{sku} {"stock"?, "price"?}: the stock and the catalog
 * price sales are checked against (sale.h), changed together or not at all. */
static int handle_stock_put(http_server *s, struct mg_connection *conn, const char *sku) {
    int st = check_admin(s, conn);
    if (st) return st;
    if (!sku_valid(sku, strlen(sku)))
        return send_error(s, conn, 400, "bad_request", "sku must be 1-128 bytes of A-Z a-z 0-9 . _ : -");
    cJSON *root;
    int rc = take_json(s, conn, &root);
    if (rc) return rc;
    sale_put put;
    char err[256];
    int bad = sale_put_parse(root, &put, err, sizeof err);
    cJSON_Delete(root);
    if (bad) return send_error(s, conn, 400, "bad_request", err);
    rds_client *c = rds_pool_client(s->d.pool);
    sale_item now;
    int r = c ? sale_item_put(c, s->d.cfg->redis_prefix, sku, &put, &now) : -1;
    if (r < 0) return stock_unavailable(s, conn, c);
    if (r == 1) {
        char msg[256];
        snprintf(msg, sizeof msg, "unknown SKU %.140s: set its stock first (a price alone changes nothing)", sku);
        return send_error(s, conn, 404, "not_found", msg);
    }
    if (now.has_price)
        log_info("http", "stock set sku=%s stock=%lld price=%.15g", sku, now.stock, now.price);
    else
        log_info("http", "stock set sku=%s stock=%lld", sku, now.stock);
    return send_json(s, conn, 200, item_obj(sku, &now), NULL, 0);
}

/* The read side's view of the daemon: status.c builds every answer below. */
static status_sources sources(http_server *s) {
    status_sources src = { .pool = s->d.pool, .sale = s->d.sale, .policy = s->d.policy, .act = s->d.act,
                           .live = s->d.live, .eval = s->d.eval, .q = s->d.q, .bus = s->d.bus,
                           .panic = s->d.panic, .ks = s->d.ks };
    return src;
}

static int handle_readyz(http_server *s, struct mg_connection *conn) {
    status_sources src = sources(s);
    bool ready = false;
    cJSON *o = status_readyz(&src, &ready);
    return send_json(s, conn, ready ? 200 : 503, o, NULL, 0);    /* NULL: 500 */
}

static int handle_rules(http_server *s, struct mg_connection *conn) {
    status_sources src = sources(s);
    cJSON *o;
    if (status_rules(&src, &o)) return send_error(s, conn, 404, "not_found", "rules are not enabled");
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_metrics(http_server *s, struct mg_connection *conn) {
    status_sources src = sources(s);
    char *text = status_metrics(&src);
    if (!text) return send_error(s, conn, 500, "internal", "out of memory");
    size_t tl = strlen(text);
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                      "Content-Length: %zu\r\nCache-Control: no-store\r\n\r\n", tl);
    mg_write(conn, head, (size_t)hl);
    mg_write(conn, text, tl);
    free(text);
    return 200;
}

static int unavailable(http_server *s, struct mg_connection *conn, const char *msg) {
    extra_hdr h = { "Retry-After", "1" };
    return send_json(s, conn, 503, error_obj("unavailable", msg), &h, 1);
}

static int handle_killswitch_get(http_server *s, struct mg_connection *conn) {
    status_sources src = sources(s);
    cJSON *o = status_killswitch(&src);
    if (!o) return unavailable(s, conn, "redis unavailable");
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_killswitch_post(http_server *s, struct mg_connection *conn) {
    int st = check_admin(s, conn);
    if (st) return st;
    cJSON *root;
    int rc = take_json(s, conn, &root);
    if (rc) return rc;
    const cJSON *scope = cJSON_GetObjectItemCaseSensitive(root, "scope");
    const cJSON *reason = cJSON_GetObjectItemCaseSensitive(root, "reason");
    const cJSON *halt = cJSON_GetObjectItemCaseSensitive(root, "halt_sales");
    const char *bad = NULL;
    if (!cJSON_IsObject(root)) bad = "body must be a JSON object {\"scope\", \"reason\", \"halt_sales\"?}";
    else if (!cJSON_IsString(scope) || !ks_scope_valid(scope->valuestring))
        bad = "scope must be " SCOPE_GRAMMAR;
    else if (!cJSON_IsString(reason) || !reason->valuestring[0] || strlen(reason->valuestring) > 1024)
        bad = "reason must be a non-empty string of at most 1024 bytes";
    else if (halt && !cJSON_IsBool(halt)) bad = "halt_sales must be true or false";
    if (bad) {
        cJSON_Delete(root);
        return send_error(s, conn, 400, "bad_request", bad);
    }
    rds_client *c = rds_pool_client(s->d.pool);
    char err[256] = "redis unavailable";
    int r = c ? act_kill(s->d.act, c, "admin", scope->valuestring, reason->valuestring, cJSON_IsTrue(halt),
                         err, sizeof err) : -1;
    if (r < 0) {
        cJSON_Delete(root);
        return unavailable(s, conn, err);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "scope", scope->valuestring);
    cJSON_AddBoolToObject(o, "engaged", 1);
    cJSON_AddBoolToObject(o, "already_engaged", r == 0);
    cJSON_AddBoolToObject(o, "halt_sales", cJSON_IsTrue(halt));
    cJSON_Delete(root);
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_killswitch_delete(http_server *s, struct mg_connection *conn, const char *scope) {
    int st = check_admin(s, conn);
    if (st) return st;
    /* SCOPE is the whole rest of the path, decoded once: a scope with '/'
     * is reached raw or as %2F. */
    if (!ks_scope_valid(scope))
        return send_error(s, conn, 400, "bad_request",
                          "the path after /admin/killswitch/ must be a scope: " SCOPE_GRAMMAR
                          " (the path is percent-decoded once)");
    rds_client *c = rds_pool_client(s->d.pool);
    int r = c ? ks_reset(s->d.ks, c, scope) : -1;
    if (r < 0) return unavailable(s, conn, "redis unavailable");
    if (r == 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "scope %.200s is not engaged", scope);
        return send_error(s, conn, 404, "not_found", msg);
    }
    log_warn("http", "kill switch reset scope=%s", scope);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "scope", scope);
    cJSON_AddBoolToObject(o, "reset", 1);
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_reload(http_server *s, struct mg_connection *conn) {
    int st = check_admin(s, conn);
    if (st) return st;
    if (!s->d.reload) return send_error(s, conn, 404, "not_found", "reload is not available");
    uint64_t gen = 0;
    char *errors = NULL;
    if (s->d.reload(s->d.reload_ud, &gen, &errors) != 0) {
        cJSON *o = error_obj("reload_failed", "reload refused; the previous rules and config stay in force");
        cJSON_AddItemToObject(o, "errors", status_error_lines(errors));
        free(errors);
        return send_json(s, conn, 422, o, NULL, 0);
    }
    free(errors);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    cJSON_AddNumberToObject(o, "generation", (double)gen);
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_preflight(http_server *s, struct mg_connection *conn, const char *allow) {
    extra_hdr h[3] = {
        { "Access-Control-Allow-Methods", allow },
        { "Access-Control-Allow-Headers", "Content-Type, Authorization" },
        { "Access-Control-Max-Age", "600" },
    };
    return send_raw(s, conn, 204, NULL, h, s->d.cfg->cors_origin[0] ? 3 : 0);
}

/* Requests that change state: refuse cross-site browser requests (a page
 * elsewhere making a visitor's browser buy) and bodies that are not JSON.
 * Browsers send Origin on every cross-origin POST/PUT/DELETE, so an Origin
 * other than server.cors_origin is refused (403); clients without a browser
 * send none. Content-Type must be application/json or absent;
 * application/x-www-form-urlencoded, which `curl -d` sends by default, is
 * tolerated because the Origin check already stops browsers. 0, or the
 * status sent. */
static int check_write_request(http_server *s, struct mg_connection *conn) {
    const char *origin = mg_get_header(conn, "Origin");
    const char *allowed = s->d.cfg->cors_origin;
    if (origin && !(allowed[0] && (strcmp(allowed, "*") == 0 || strcmp(allowed, origin) == 0)))
        return send_error(s, conn, 403, "forbidden_origin",
                          "cross-origin request refused: set server.cors_origin to allow this origin");
    const char *ct = mg_get_header(conn, "Content-Type");
    if (ct) {
        size_t n = strcspn(ct, ";");
        while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t')) n--;
        if (!((n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
              (n == 33 && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0)))
            return send_error(s, conn, 415, "unsupported_media_type",
                              "send the body as Content-Type: application/json");
    }
    return 0;
}

static int is(const char *m, const char *want) { return strcmp(m, want) == 0; }

static int route_request(http_server *s, struct mg_connection *conn);

/* Count requests in flight; while stopping, hold new ones unanswered until
 * the server closes their connection (the client sees a request that was
 * never taken, not a half answer or a sale it was not told about). */
static int route(struct mg_connection *conn, void *cbdata) {
    http_server *s = cbdata;
    pthread_mutex_lock(&s->mu);
    if (s->draining) {
        while (!s->released) pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
        return 503;
    }
    s->inflight++;
    pthread_mutex_unlock(&s->mu);
    int status = route_request(s, conn);
    pthread_mutex_lock(&s->mu);
    if (--s->inflight == 0 && s->draining) pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return status;
}

static int route_request(http_server *s, struct mg_connection *conn) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *m = ri->request_method;
    /* CivetWeb is told not to decode the path (decode_url=no) because its
     * decoded form is a C string: "%00" would cut it short, and
     * /stock/A%00junk would act on SKU A. We decode here and refuse NUL. */
    char p[2048];
    const char *raw = ri->local_uri ? ri->local_uri : "";
    int pl = mg_url_decode(raw, (int)strlen(raw), p, (int)sizeof p, 0);
    if (pl < 0 || (size_t)pl >= sizeof p - 1)
        return send_error(s, conn, 414, "uri_too_long", "request path too long");
    if (memchr(p, 0, (size_t)pl))
        return send_error(s, conn, 400, "bad_request", "request path must not contain NUL (%00)");

    if (is(m, "POST") || is(m, "PUT") || is(m, "DELETE")) {
        int st = check_write_request(s, conn);
        if (st) return st;
    }
    if (is(p, "/sale") || is(p, "/test/simulate-sale")) {
        if (is(m, "POST")) return handle_sale(s, conn);
        if (is(m, "OPTIONS")) return handle_preflight(s, conn, "POST, OPTIONS");
        return send_method_not_allowed(s, conn, "POST");
    }
    if (strncmp(p, "/stock/", 7) == 0) {
        if (is(m, "GET")) return handle_stock_get(s, conn, p + 7);
        if (is(m, "OPTIONS")) return handle_preflight(s, conn, "GET, OPTIONS");
        return send_method_not_allowed(s, conn, "GET");
    }
    if (strncmp(p, "/admin/stock/", 13) == 0) {
        if (is(m, "PUT")) return handle_stock_put(s, conn, p + 13);
        if (is(m, "OPTIONS")) return handle_preflight(s, conn, "PUT, OPTIONS");
        return send_method_not_allowed(s, conn, "PUT");
    }
    if (is(p, "/healthz")) {
        if (!is(m, "GET") && !is(m, "HEAD")) return send_method_not_allowed(s, conn, "GET");
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ok");
        return send_json(s, conn, 200, o, NULL, 0);
    }
    if (is(p, "/metrics")) {
        if (!is(m, "GET")) return send_method_not_allowed(s, conn, "GET");
        return handle_metrics(s, conn);
    }
    if (is(p, "/rules")) {
        if (!is(m, "GET")) return send_method_not_allowed(s, conn, "GET");
        return handle_rules(s, conn);
    }
    if (is(p, "/killswitch")) {
        if (!is(m, "GET")) return send_method_not_allowed(s, conn, "GET");
        return handle_killswitch_get(s, conn);
    }
    if (is(p, "/admin/killswitch")) {
        if (!is(m, "POST")) return send_method_not_allowed(s, conn, "POST");
        return handle_killswitch_post(s, conn);
    }
    if (strncmp(p, "/admin/killswitch/", 18) == 0) {
        if (!is(m, "DELETE")) return send_method_not_allowed(s, conn, "DELETE");
        return handle_killswitch_delete(s, conn, p + 18);
    }
    if (is(p, "/admin/reload")) {
        if (!is(m, "POST")) return send_method_not_allowed(s, conn, "POST");
        return handle_reload(s, conn);
    }
    if (is(p, "/readyz")) {
        if (!is(m, "GET") && !is(m, "HEAD")) return send_method_not_allowed(s, conn, "GET");
        return handle_readyz(s, conn);
    }
    char msg[200];
    snprintf(msg, sizeof msg, "no such endpoint: %.150s", p);
    return send_error(s, conn, 404, "not_found", msg);
}

/* CivetWeb's own messages go through our log module. */
static int on_log(const struct mg_connection *conn, const char *message) {
    (void)conn;
    log_warn("http", "civetweb: %s", message);
    return 1;
}

http_server *http_start(const http_deps *d, char *err, size_t errlen) {
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->d = *d;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    char threads[16], timeout[16];
    snprintf(threads, sizeof threads, "%d", d->cfg->threads);
    snprintf(timeout, sizeof timeout, "%d", d->cfg->request_timeout_ms);
    const char *opts[] = {
        "listening_ports", d->cfg->listen,
        "num_threads", threads,
        "enable_keep_alive", "yes",
        "keep_alive_timeout_ms", timeout,
        "request_timeout_ms", timeout,
        "tcp_nodelay", "1",
        "max_request_size", "16384",
        "decode_url", "no",
        /* CORS is ours (server.cors_origin); CivetWeb's defaults would
         * answer every preflight with "*". */
        "access_control_allow_origin", "",
        "access_control_allow_methods", "",
        "access_control_allow_headers", "",
        NULL,
    };
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.log_message = on_log;
    mg_init_library(0);
    struct mg_init_data init = { &cb, s, opts };
    struct mg_error_data ed;
    char ebuf[256] = "";
    unsigned ecode = 0;
    memset(&ed, 0, sizeof ed);
    ed.code = &ecode;
    ed.text = ebuf;
    ed.text_buffer_size = sizeof ebuf;
    s->ctx = mg_start2(&init, &ed);
    if (!s->ctx) {
        snprintf(err, errlen, "cannot listen on %s: %s", d->cfg->listen, ebuf[0] ? ebuf : "start failed");
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        free(s);
        mg_exit_library();
        return NULL;
    }
    mg_set_request_handler(s->ctx, "/", route, s);
    return s;
}

/* CivetWeb's master thread polls its listening socket with a 2 s timeout
 * and only then sees the stop flag; a connection to ourselves wakes it at
 * once, which makes every shutdown (and every test) 2 s shorter. */
typedef struct waker {
    char host[128], port[16];
    _Atomic int done;
} waker;

static void *wake_listener(void *arg) {
    waker *w = arg;
    for (int i = 0; i < 40 && !atomic_load(&w->done); i++) {
        struct timespec ts = { 0, 50 * 1000000L };
        nanosleep(&ts, NULL);
        struct addrinfo hints, *ai = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo(w->host, w->port, &hints, &ai) != 0) return NULL;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            connect(fd, ai->ai_addr, ai->ai_addrlen);
            close(fd);
        }
        freeaddrinfo(ai);
    }
    return NULL;
}

static int start_waker(const char *listen, waker *w, pthread_t *th) {
    const char *colon = strrchr(listen, ':');
    if (!colon) return -1;
    const char *h = listen;
    size_t hl = (size_t)(colon - listen);
    if (hl >= 2 && h[0] == '[') h++, hl -= 2;
    if (hl == 0 || hl >= sizeof w->host) return -1;
    memcpy(w->host, h, hl);
    w->host[hl] = 0;
    if (strcmp(w->host, "0.0.0.0") == 0) strcpy(w->host, "127.0.0.1");
    if (strcmp(w->host, "::") == 0) strcpy(w->host, "::1");
    snprintf(w->port, sizeof w->port, "%s", colon + 1);
    atomic_store(&w->done, 0);
    return pthread_create(th, NULL, wake_listener, w) == 0 ? 0 : -1;
}

void http_stop(http_server *s) {
    if (!s) return;
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += s->d.cfg->shutdown_grace_ms / 1000;
    dl.tv_nsec += (long)(s->d.cfg->shutdown_grace_ms % 1000) * 1000000;
    if (dl.tv_nsec >= 1000000000) dl.tv_sec++, dl.tv_nsec -= 1000000000;
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    while (s->inflight > 0)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) != 0) break;
    if (s->inflight > 0) log_warn("http", "grace period over with %d requests in flight", s->inflight);
    s->released = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    waker w;
    pthread_t wt;
    int waking = start_waker(s->d.cfg->listen, &w, &wt) == 0;
    mg_stop(s->ctx);
    if (waking) {
        atomic_store(&w.done, 1);
        pthread_join(wt, NULL);
    }
    mg_exit_library();
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
