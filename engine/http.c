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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/log.h"

struct http_server {
    http_deps d;
    struct mg_context *ctx;
};

/* ---- responses --------------------------------------------------------------- */

typedef struct extra_hdr {
    const char *name, *value;
} extra_hdr;

/* Send STATUS with BODY (may be NULL) and the extra headers. */
static int send_raw(http_server *s, struct mg_connection *conn, int status, const char *body,
                    const extra_hdr *hdrs, int nhdrs) {
    char len[24];
    size_t bl = body ? strlen(body) : 0;
    snprintf(len, sizeof len, "%zu", bl);
    mg_response_header_start(conn, status);
    if (body) mg_response_header_add(conn, "Content-Type", "application/json", -1);
    mg_response_header_add(conn, "Content-Length", len, -1);
    mg_response_header_add(conn, "Cache-Control", "no-store", -1);
    if (s->d.cfg->cors_origin[0]) {
        mg_response_header_add(conn, "Access-Control-Allow-Origin", s->d.cfg->cors_origin, -1);
        mg_response_header_add(conn, "Vary", "Origin", -1);
    }
    for (int i = 0; i < nhdrs; i++) mg_response_header_add(conn, hdrs[i].name, hdrs[i].value, -1);
    mg_response_header_send(conn);
    if (bl) mg_write(conn, body, bl);
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

static int handle_sale(http_server *s, struct mg_connection *conn) {
    const cfg *c = s->d.cfg;
    char *body;
    size_t len;
    int rc = read_body(conn, c->max_body_bytes, &body, &len);
    if (rc == 413) {
        char msg[96];
        snprintf(msg, sizeof msg, "request body over %ld bytes", c->max_body_bytes);
        extra_hdr h = { "Connection", "close" };
        return send_json(s, conn, 413, error_obj("payload_too_large", msg), &h, 1);
    }
    if (rc) return send_error(s, conn, 400, "bad_request", "could not read the request body");

    sale_req req;
    char err[256];
    if (sale_parse(body, len, c->max_qty, &req, err, sizeof err)) {
        free(body);
        return send_error(s, conn, 400, "bad_request", err);
    }
    free(body);

    sale_res res;
    sale_execute(s->d.sale, &req, &res);
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
        return send_json(s, conn, 503, error_obj("unavailable", res.message), &h, 1);
    }
    }
}

static int handle_stock_get(http_server *s, struct mg_connection *conn, const char *sku) {
    if (!sale_sku_valid(sku, strlen(sku)))
        return send_error(s, conn, 400, "bad_request", "sku must be 1-128 bytes of A-Z a-z 0-9 . : -");
    rds_client *rc = rds_pool_client(s->d.pool);
    long long stock = 0;
    int r = rc ? sale_stock_get(rc, s->d.cfg->redis_prefix, sku, &stock) : -1;
    if (r < 0) {
        extra_hdr h = { "Retry-After", "1" };
        char msg[300];
        snprintf(msg, sizeof msg, "redis unavailable: %s", rc ? rds_errstr(rc) : "out of memory");
        return send_json(s, conn, 503, error_obj("unavailable", msg), &h, 1);
    }
    if (r == 1) {
        char msg[200];
        snprintf(msg, sizeof msg, "unknown SKU %s", sku);
        return send_error(s, conn, 404, "not_found", msg);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "sku", sku);
    cJSON_AddNumberToObject(o, "stock", (double)stock);
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_stock_put(http_server *s, struct mg_connection *conn, const char *sku) {
    int st = check_admin(s, conn);
    if (st) return st;
    if (!sale_sku_valid(sku, strlen(sku)))
        return send_error(s, conn, 400, "bad_request", "sku must be 1-128 bytes of A-Z a-z 0-9 . : -");
    char *body;
    size_t len;
    int rc = read_body(conn, s->d.cfg->max_body_bytes, &body, &len);
    if (rc == 413) return send_error(s, conn, 413, "payload_too_large", "request body too large");
    if (rc) return send_error(s, conn, 400, "bad_request", "could not read the request body");
    cJSON *root = cJSON_ParseWithLength(body, len);
    free(body);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stock");
    if (!cJSON_IsObject(root) || !cJSON_IsNumber(v) || v->valuedouble < 0 ||
        v->valuedouble > 1e15 || v->valuedouble != (double)(long long)v->valuedouble) {
        cJSON_Delete(root);
        return send_error(s, conn, 400, "bad_request", "body must be {\"stock\": integer >= 0}");
    }
    long long stock = (long long)v->valuedouble;
    cJSON_Delete(root);
    rds_client *c = rds_pool_client(s->d.pool);
    if (!c || sale_stock_set(c, s->d.cfg->redis_prefix, sku, stock)) {
        extra_hdr h = { "Retry-After", "1" };
        return send_json(s, conn, 503, error_obj("unavailable", "redis unavailable"), &h, 1);
    }
    log_info("http", "stock set sku=%s stock=%lld", sku, stock);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "sku", sku);
    cJSON_AddNumberToObject(o, "stock", (double)stock);
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_readyz(http_server *s, struct mg_connection *conn) {
    rds_client *c = rds_pool_client(s->d.pool);
    redisReply *r = c ? rds_command(c, "PING") : NULL;
    int ok = r && r->type == REDIS_REPLY_STATUS;
    char reason[300] = "";
    if (!ok)
        snprintf(reason, sizeof reason, "redis: %s",
                 r && r->type == REDIS_REPLY_ERROR ? r->str : c ? rds_errstr(c) : "out of memory");
    freeReplyObject(r);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", ok ? "ready" : "not_ready");
    cJSON_AddBoolToObject(o, "redis", ok);
    if (!ok) cJSON_AddStringToObject(o, "reason", reason);
    return send_json(s, conn, ok ? 200 : 503, o, NULL, 0);
}

static int handle_preflight(http_server *s, struct mg_connection *conn, const char *allow) {
    extra_hdr h[3] = {
        { "Access-Control-Allow-Methods", allow },
        { "Access-Control-Allow-Headers", "Content-Type, Authorization" },
        { "Access-Control-Max-Age", "600" },
    };
    return send_raw(s, conn, 204, NULL, h, s->d.cfg->cors_origin[0] ? 3 : 0);
}

static int is(const char *m, const char *want) { return strcmp(m, want) == 0; }

static int route(struct mg_connection *conn, void *cbdata) {
    http_server *s = cbdata;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *m = ri->request_method, *p = ri->local_uri ? ri->local_uri : "";

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
        free(s);
        mg_exit_library();
        return NULL;
    }
    mg_set_request_handler(s->ctx, "/", route, s);
    return s;
}

void http_stop(http_server *s) {
    if (!s) return;
    mg_stop(s->ctx);
    mg_exit_library();
    free(s);
}
