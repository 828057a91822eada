/* http.c -- the HTTP API on CivetWeb (see http.h).
 *
 * One CivetWeb request handler receives every request and routes it through
 * one table (routes[]: path, methods, handler, admin, body policy, what it
 * does, which GET / lists), so that
 * unknown paths and wrong methods get the same JSON error bodies as
 * everything else instead of CivetWeb's HTML pages, and OPTIONS, HEAD and
 * 405 with Allow are answered the same way for every route.
 *
 * Before any route runs, the request's framing is checked (RFC 9112 §6):
 * CivetWeb reads a request with both Transfer-Encoding and Content-Length as
 * chunked and takes the first of two Content-Length headers, where a proxy
 * in front may read the other one; the bytes the two disagree on would be
 * read here as a second request (request smuggling). Such a request answers
 * 400 and its connection is closed.
 *
 * CivetWeb gives each open connection a worker thread until it closes, also
 * while it sits idle between requests or sends its head one byte at a time.
 * When every worker holds one, the connections that have waited longest for
 * a request (server.evict_idle_ms) are shut, so that a new client is served
 * within a fraction of a second however many idle ones are held open.
 */
#include "nerve/http.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "nerve/clock.h"
#include "nerve/conns.h"
#include "nerve/framing.h"
#include "nerve/jsonck.h"
#include "nerve/log.h"
#include "nerve/sku.h"
#include "nerve/status.h"
#include "nerve/version.h"
#include "nerve/webui.h"

struct http_server {
    http_deps d;
    struct mg_context *ctx;
    /* Graceful stop: CivetWeb refuses writes once mg_stop has begun, so
     * in-flight requests must finish before it is called. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* Requests in flight and the drain, without the mutex on the way of
     * every request (64 workers taking it twice per sale made it the most
     * contended lock of the process, issue 12): a request counts itself in,
     * then looks at draining; http_stop sets draining, then looks at the
     * count (both sequentially consistent, so at least one of them sees the
     * other). The mutex and cv only serve the drain itself. */
    _Atomic int inflight; /* requests being handled */
    _Atomic int draining; /* http_stop began: take no new request */
    int released;         /* requests held while draining may go (under mu) */
    conns *conns;         /* open connections, idle eviction */
};

/* HEAD: the answer's head is sent as GET would send it, and no body
 * (RFC 9110 §9.3.2). Set by route_request on the worker thread for the
 * time of one request; out_write drops what follows the head. */
static _Thread_local int head_only, head_sent;

/* force_close was called for this request: the answer says so. */
static _Thread_local int closing;

/* Every byte of an answer goes through here. */
static void out_write(struct mg_connection *conn, const char *buf, size_t len) {
    if (head_only) {
        if (head_sent) return;
        const char *end = len >= 4 ? memmem(buf, len, "\r\n\r\n", 4) : NULL;
        if (end) {
            len = (size_t)(end + 4 - buf);
            head_sent = 1;
        }
    }
    mg_write(conn, buf, len);
}

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
    int n = snprintf(buf, cap, "HTTP/1.1 %d %s\r\n%sCache-Control: no-store\r\n", status,
                     mg_get_response_code_text(conn, status),
                     body ? "Content-Type: application/json\r\n" : "");
    size_t len = (size_t)n;
    /* A 204 carries no body and, RFC 9110 §8.6, no Content-Length. */
    if (status != 204) len += (size_t)snprintf(buf + len, cap - len, "Content-Length: %zu\r\n", bl);
    if (s->d.cfg->cors_origin[0])
        len += (size_t)snprintf(buf + len, cap - len,
                                "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n",
                                s->d.cfg->cors_origin);
    for (int i = 0; i < nhdrs; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s: %s\r\n", hdrs[i].name, hdrs[i].value);
    if (closing) len += (size_t)snprintf(buf + len, cap - len, "Connection: close\r\n");
    len += (size_t)snprintf(buf + len, cap - len, "\r\n");
    if (bl) {
        memcpy(buf + len, body, bl);
        len += bl;
    }
    out_write(conn, buf, len);
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

/* Make CivetWeb close the connection once this answer is sent, without
 * reading what is left of the request: it would otherwise read and drop an
 * unread body (Content-Length or chunked) and take the bytes after it as the
 * next request, whatever our answer's Connection header says. */
static void force_close(struct mg_connection *conn) {
    mg_disable_connection_keep_alive(conn);
    closing = 1;
}

/* Refuse ambiguous framing (framing.c) before any body is read: 400 with
 * Connection: close, and the connection closed; a head CivetWeb cut short is
 * answered as usual and its connection closed after the answer. 0, or the
 * status sent. */
static int check_framing(http_server *s, struct mg_connection *conn) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *why = NULL;
    framing_verdict v = framing_check(ri, &why);
    if (v == FRAMING_OK) return 0;
    force_close(conn);
    if (v == FRAMING_CLOSE_AFTER) return 0;
    char msg[160];
    snprintf(msg, sizeof msg, "ambiguous request framing (RFC 9112 section 6): %s", why);
    log_info("http", "framing refused from %s: %s", ri->remote_addr, why);
    return send_json(s, conn, 400, error_obj("bad_request", msg), NULL, 0);
}

/* Read the whole body into a malloc'd buffer of at most max bytes.
 * Returns 0 (body in *out, length *len), 413 when larger, 400 on a read error
 * or a body shorter than its Content-Length (the client went away). */
static int read_body_all(struct mg_connection *conn, long max, char **out, size_t *len) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
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
    if (ri->content_length >= 0 && (long long)n < ri->content_length) {
        free(buf);
        return 400;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

/* read_body_all, while the evictor (conns.h) may shut a connection whose
 * body arrives too slowly when every worker is held: then 408, and the
 * request must be neither acted on nor answered. */
static int read_body(struct mg_connection *conn, long max, char **out, size_t *len) {
    conns_slot *slot = mg_get_user_connection_data(conn);
    *out = NULL;
    *len = 0;
    int rc = conns_body(slot, 1) == 0 ? read_body_all(conn, max, out, len) : 0;
    if (conns_body(slot, 0) == 0) return rc;
    free(*out);
    *out = NULL;
    *len = 0;
    return 408;
}

/* Read the body, answering 413 (and closing: the rest of an oversized body
 * is never read) or 400 itself. 0 with *BODY (caller frees), or the status
 * already sent (408: none sent, the connection was shut while its body
 * trickled in). */
static int take_body(http_server *s, struct mg_connection *conn, char **body, size_t *len) {
    int rc = read_body(conn, s->d.cfg->max_body_bytes, body, len);
    if (rc == 408) {
        log_info("http",
                 "connection from %s shut: its body arrived too slowly while every "
                 "worker was held; the request was not acted on",
                 mg_get_request_info(conn)->remote_addr);
        force_close(conn);
        return 408;
    }
    if (rc == 413) {
        char msg[96];
        snprintf(msg, sizeof msg, "request body over %ld bytes", s->d.cfg->max_body_bytes);
        force_close(conn);
        return send_json(s, conn, 413, error_obj("payload_too_large", msg), NULL, 0);
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

/* The name of the admin token that authorised this request (check_admin),
 * for the handler to audit; points into the cfg. Set per request on the
 * worker thread, like head_only. */
static _Thread_local const char *admin_name;

/* 0 when authorised (admin_name set), otherwise the status already sent.
 * Every configured token is compared, in constant time each, whichever
 * matches: the time taken tells nothing about which one did. */
static int check_admin(http_server *s, struct mg_connection *conn) {
    const cfg *c = s->d.cfg;
    admin_name = NULL;
    if ((!c->admin_token || !c->admin_token[0]) && c->n_admin_tokens == 0)
        return send_error(s, conn, 403, "forbidden",
                          "admin endpoints are disabled: set NERVE_ADMIN_TOKEN to enable them");
    const char *auth = mg_get_header(conn, "Authorization");
    if (auth && strncmp(auth, "Bearer ", 7) == 0) {
        const char *given = auth + 7, *name = NULL;
        if (c->admin_token && c->admin_token[0] && token_ok(given, c->admin_token)) name = "admin";
        for (size_t i = 0; i < c->n_admin_tokens; i++)
            if (token_ok(given, c->admin_tokens[i].token) && !name) name = c->admin_tokens[i].name;
        admin_name = name;
    }
    if (!admin_name) {
        extra_hdr h = { "WWW-Authenticate", "Bearer" };
        return send_json(
            s, conn, 401,
            error_obj("unauthorized", "missing or wrong admin token (Authorization: Bearer ...)"),
            &h, 1);
    }
    return 0;
}

/* ---- handlers -------------------------------------------------------------------- */


static int do_sale(http_server *s, struct mg_connection *conn, sale_res *res);

/* POST /sale: count and time every answer, whatever it is. */
static int handle_sale(http_server *s, struct mg_connection *conn) {
    uint64_t t0 = clock_now_ns();
    sale_res res;
    memset(&res, 0, sizeof res);
    res.status = SALE_BAD_REQUEST;
    int status = do_sale(s, conn, &res);
    sale_record(s->d.sale, res.status, res.duplicate, (double)(clock_now_ns() - t0) / 1e9);
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
    case SALE_OK: {
        /* The answer of nearly every request, written straight into a
         * buffer: building and printing a cJSON tree was 8 allocations per
         * sale (issue 12). Same keys and order as the other answers'. */
        char ans[160 + JSONCK_ESC_MAX(SALE_STR_MAX) * 2], *p = ans;
        p += sprintf(p, "{\"status\":\"ok\",\"sku\":\"");
        p = jsonck_escape(p, req.sku);
        p += sprintf(p, "\",\"qty\":%lld,\"stock_remaining\":%lld,\"order_id\":\"", res.qty,
                     res.stock_remaining);
        p = jsonck_escape(p, req.order_id);
        p += sprintf(p, "\"%s}\n", res.duplicate ? ",\"duplicate\":true" : "");
        return send_raw(s, conn, 200, ans, NULL, 0);
    }
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
        o = error_obj("sales_halted",
                      res.message[0] ? res.message : "sales are halted by the kill switch");
        cJSON_AddStringToObject(o, "scope", res.scope);
        return send_json(s, conn, 423, o, NULL, 0);
    case SALE_BAD_REQUEST: return send_error(s, conn, 400, "bad_request", res.message);
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
        return send_error(s, conn, 400, "bad_request",
                          "sku must be 1-128 bytes of A-Z a-z 0-9 . _ : -");
    rds_client *rc = rds_pool_client(s->d.pool);
    sale_item it;
    int r = rc ? sale_item_get(rc, sale_engine_opts(s->d.sale), sku, &it) : -1;
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
    if (!sku_valid(sku, strlen(sku)))
        return send_error(s, conn, 400, "bad_request",
                          "sku must be 1-128 bytes of A-Z a-z 0-9 . _ : -");
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
    int r = c ? sale_item_put(c, sale_engine_opts(s->d.sale), sku, &put, &now) : -1;
    if (r < 0) return stock_unavailable(s, conn, c);
    if (r == 1) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "unknown SKU %.140s: set its stock first (a price alone changes nothing)", sku);
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
    status_sources src = { .pool = s->d.pool,
                           .sale = s->d.sale,
                           .policy = s->d.policy,
                           .act = s->d.act,
                           .live = s->d.live,
                           .eval = s->d.eval,
                           .q = s->d.q,
                           .bus = s->d.bus,
                           .panic = s->d.panic,
                           .resume = s->d.resume,
                           .ks = s->d.ks,
                           .ledger = s->d.ledger,
                           .ledger_lag_ready_ms = s->d.cfg ? s->d.cfg->ledger_lag_ready_ms : 0,
                           .ledger_lag_unready = s->d.cfg && s->d.cfg->ledger_lag_unready,
                           .dlog = s->d.dlog,
                           .prefix = s->d.cfg ? s->d.cfg->redis_prefix : NULL };
    return src;
}

static int handle_readyz(http_server *s, struct mg_connection *conn) {
    status_sources src = sources(s);
    bool ready = false;
    cJSON *o = status_readyz(&src, &ready);
    return send_json(s, conn, ready ? 200 : 503, o, NULL, 0); /* NULL: 500 */
}

static int handle_rules(http_server *s, struct mg_connection *conn) {
    status_sources src = sources(s);
    cJSON *o;
    if (status_rules(&src, &o))
        return send_error(s, conn, 404, "not_found", "rules are not enabled");
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_metrics(http_server *s, struct mg_connection *conn) {
    status_sources src = sources(s);
    char *text = status_metrics(&src);
    if (!text) return send_error(s, conn, 500, "internal", "out of memory");
    size_t tl = strlen(text);
    char head[256];
    int hl =
        snprintf(head, sizeof head,
                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                 "Content-Length: %zu\r\nCache-Control: no-store\r\n\r\n",
                 tl);
    out_write(conn, head, (size_t)hl);
    out_write(conn, text, tl);
    free(text);
    return 200;
}

/* GET /status.json: everything the status page shows (status.h). */
static int handle_status_json(http_server *s, struct mg_connection *conn) {
    status_sources src = sources(s);
    cJSON *o = status_json(&src);
    if (!o) return send_error(s, conn, 500, "internal", "out of memory");
    return send_json(s, conn, 200, o, NULL, 0);
}

/* An embedded page file (webui.h) with its type, the page's CSP and
 * nosniff; no-cache with an ETag: the browser asks again each load and gets
 * a 304 while the binary is the same. */
static int send_asset(http_server *s, struct mg_connection *conn, const webui_asset *a) {
    (void)s;
    const char *inm = mg_get_header(conn, "If-None-Match");
    int fresh = inm && strstr(inm, a->etag);
    char head[1024], len[48] = "";
    if (!fresh) snprintf(len, sizeof len, "Content-Length: %zu\r\n", a->len);
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %s\r\nContent-Type: %s\r\n%sCache-Control: no-cache\r\n"
                      "ETag: %s\r\nContent-Security-Policy: " WEBUI_CSP "\r\n"
                      "X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"
                      "Referrer-Policy: no-referrer\r\n%s\r\n",
                      fresh ? "304 Not Modified" : "200 OK", a->type, len, a->etag,
                      closing ? "Connection: close\r\n" : "");
    out_write(conn, head, (size_t)hl);
    if (!fresh) out_write(conn, (const char *)a->data, a->len);
    return fresh ? 304 : 200;
}

/* GET /status: the page; GET /status/FILE: its script and style. */
static int handle_status_page(http_server *s, struct mg_connection *conn) {
    return send_asset(s, conn, webui_find("status.html"));
}

static int handle_status_asset(http_server *s, struct mg_connection *conn, const char *name) {
    const webui_asset *a = webui_find(name);
    if (!a) return send_error(s, conn, 404, "not_found", "no such file of the status page");
    return send_asset(s, conn, a);
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

/* GET /decisions?rule=&scope=&kind=&limit=: the decision log, newest first.
 * A parameter is decoded once; over DECLOG_FILTER_MAX bytes, or a limit
 * outside 1..DECLOG_LIMIT_MAX, answers 400. */
static int handle_decisions(http_server *s, struct mg_connection *conn) {
    const char *qs = mg_get_request_info(conn)->query_string;
    char rule[DECLOG_FILTER_MAX + 1] = "", scope[sizeof rule] = "";
    char kind[sizeof rule] = "", limit[sizeof rule] = "";
    struct {
        const char *name;
        char *buf;
    } params[] = { { "rule", rule }, { "scope", scope }, { "kind", kind }, { "limit", limit } };
    size_t qlen = qs ? strlen(qs) : 0;
    int have_limit = 0;
    for (size_t i = 0; qs && i < sizeof params / sizeof params[0]; i++) {
        /* -1 absent, -2 too long for the buffer (or a bad escape), else its length. */
        int r = mg_get_var(qs, qlen, params[i].name, params[i].buf, sizeof rule);
        if (r < -1 || (r >= 0 && (size_t)r > DECLOG_FILTER_MAX)) {
            char msg[160];
            snprintf(msg, sizeof msg, "%s must be at most %d bytes", params[i].name,
                     DECLOG_FILTER_MAX);
            return send_error(s, conn, 400, "bad_request", msg);
        }
        if (r < 0) params[i].buf[0] = 0;
        if (r >= 0 && params[i].buf == limit) have_limit = 1;
    }
    declog_filter f = { rule, scope, kind, 50 };
    if (have_limit && declog_parse_limit(limit, &f.limit) != 0)
        return send_error(s, conn, 400, "bad_request", "limit must be an integer from 1 to 1000");
    status_sources src = sources(s);
    char err[256];
    cJSON *o = status_decisions(&src, &f, err, sizeof err);
    if (!o) return unavailable(s, conn, err);
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_killswitch_post(http_server *s, struct mg_connection *conn) {
    cJSON *root;
    int rc = take_json(s, conn, &root);
    if (rc) return rc;
    const cJSON *scope = cJSON_GetObjectItemCaseSensitive(root, "scope");
    const cJSON *reason = cJSON_GetObjectItemCaseSensitive(root, "reason");
    const cJSON *halt = cJSON_GetObjectItemCaseSensitive(root, "halt_sales");
    const char *bad = NULL;
    if (!cJSON_IsObject(root))
        bad = "body must be a JSON object {\"scope\", \"reason\", \"halt_sales\"?}";
    else if (!cJSON_IsString(scope) || !ks_scope_valid(scope->valuestring))
        bad = "scope must be " SCOPE_GRAMMAR;
    else if (!cJSON_IsString(reason) || !reason->valuestring[0] ||
             strlen(reason->valuestring) > 1024)
        bad = "reason must be a non-empty string of at most 1024 bytes";
    else if (halt && !cJSON_IsBool(halt))
        bad = "halt_sales must be true or false";
    if (bad) {
        cJSON_Delete(root);
        return send_error(s, conn, 400, "bad_request", bad);
    }
    rds_client *c = rds_pool_client(s->d.pool);
    char err[256] = "redis unavailable";
    act_who who = { .token = admin_name, .remote = mg_get_request_info(conn)->remote_addr };
    ks_change r = c ? act_kill_by(s->d.act, c, &who, scope->valuestring, reason->valuestring,
                                  cJSON_IsTrue(halt), err, sizeof err)
                    : KS_ERROR;
    if (r == KS_ERROR) {
        cJSON_Delete(root);
        return unavailable(s, conn, err);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "scope", scope->valuestring);
    cJSON_AddBoolToObject(o, "engaged", 1);
    cJSON_AddBoolToObject(o, "already_engaged", r == KS_UNCHANGED);
    cJSON_AddBoolToObject(o, "halt_sales", cJSON_IsTrue(halt));
    cJSON_Delete(root);
    return send_json(s, conn, 200, o, NULL, 0);
}

/* Bounds of DELETE /admin/killswitch/{scope}'s optional body. */
#define RESET_REASON_MAX 256 /* bytes */
#define RESET_ACTOR_MAX  64  /* bytes */

/* A string member M of the reset body: NULL when absent, else its text in
 * *OUT; 0, or -1 with BAD set when it is not a string of 0..MAX bytes
 * without control characters (it goes into log lines and the ledger). */
static int reset_str(const cJSON *m, size_t max, const char *what, const char **out, char *bad,
                     size_t badlen) {
    *out = NULL;
    if (!m) return 0;
    if (cJSON_IsString(m) && strlen(m->valuestring) <= max) {
        const unsigned char *p = (const unsigned char *)m->valuestring;
        while (*p && *p >= 0x20 && *p != 0x7f) p++;
        if (!*p) {
            *out = m->valuestring;
            return 0;
        }
    }
    snprintf(bad, badlen, "%s must be a string of at most %zu bytes without control characters",
             what, max);
    return -1;
}

/* DELETE /admin/killswitch/{scope}, with an optional body
 * {"reason": str?, "actor": str?}: who and why go into the audit entry. A
 * body that is there must be valid, or nothing is reset (400). */
static int handle_killswitch_delete(http_server *s, struct mg_connection *conn, const char *scope) {
    /* SCOPE is the whole rest of the path, decoded once: a scope with '/'
     * is reached raw or as %2F. */
    if (!ks_scope_valid(scope))
        return send_error(s, conn, 400, "bad_request",
                          "the path after /admin/killswitch/ must be a scope: " SCOPE_GRAMMAR
                          " (the path is percent-decoded once)");
    const struct mg_request_info *ri = mg_get_request_info(conn);
    cJSON *root = NULL;
    const char *reason = NULL, *actor = NULL;
    if (ri->content_length > 0 || mg_get_header(conn, "Transfer-Encoding")) {
        char *body;
        size_t len;
        int st = take_body(s, conn, &body, &len);
        if (st) return st;
        char bad[200] = "";
        char why[128] = "";
        if (len > 0) {
            if (jsonck_check(body, len, JSONCK_MAX_DEPTH, why, sizeof why) == 0)
                root = cJSON_ParseWithLength(body, len);
            if (!cJSON_IsObject(root))
                snprintf(bad, sizeof bad,
                         "body must be a JSON object {\"reason\": str?, \"actor\": str?}%s%.100s",
                         why[0] ? ": " : "", why);
        }
        free(body);
        const cJSON *m = bad[0] || !root ? NULL : root->child;
        for (; m && !bad[0]; m = m->next)
            if (!m->string || (strcmp(m->string, "reason") && strcmp(m->string, "actor")))
                snprintf(bad, sizeof bad,
                         "unknown member \"%.40s\": the body takes reason and actor",
                         m->string ? m->string : "");
        if (!bad[0] && reset_str(cJSON_GetObjectItemCaseSensitive(root, "reason"), RESET_REASON_MAX,
                                 "reason", &reason, bad, sizeof bad) == 0)
            reset_str(cJSON_GetObjectItemCaseSensitive(root, "actor"), RESET_ACTOR_MAX, "actor",
                      &actor, bad, sizeof bad);
        if (bad[0]) {
            cJSON_Delete(root);
            return send_error(s, conn, 400, "bad_request", bad);
        }
    }
    /* A body-less DELETE, as before this body existed, is audited with
     * reason "" and the token's name as its actor. */
    act_who who = {
        .token = admin_name, .actor = actor, .remote = ri->remote_addr, .reason = reason
    };
    rds_client *c = rds_pool_client(s->d.pool);
    ks_change r = c ? act_reset(s->d.act, c, scope, &who) : KS_ERROR;
    cJSON_Delete(root);
    if (r == KS_ERROR) return unavailable(s, conn, "redis unavailable");
    if (r == KS_UNCHANGED) {
        char msg[256];
        snprintf(msg, sizeof msg, "scope %.200s is not engaged", scope);
        return send_error(s, conn, 404, "not_found", msg);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "scope", scope);
    cJSON_AddBoolToObject(o, "reset", 1);
    cJSON_AddBoolToObject(o, "resume_call", s->d.resume != NULL);
    return send_json(s, conn, 200, o, NULL, 0);
}

static int handle_reload(http_server *s, struct mg_connection *conn) {
    if (!s->d.reload) return send_error(s, conn, 404, "not_found", "reload is not available");
    uint64_t gen = 0;
    char *errors = NULL;
    if (s->d.reload(s->d.reload_ud, &gen, &errors) != 0) {
        cJSON *o = error_obj("reload_failed",
                             "reload refused; the previous rules and config stay in force");
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

static int handle_healthz(http_server *s, struct mg_connection *conn) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    return send_json(s, conn, 200, o, NULL, 0);
}

/* Requests that change state: refuse cross-site browser requests (a page
 * elsewhere making a visitor's browser buy). Browsers send Origin on every
 * cross-origin POST/PUT/DELETE, so an Origin other than server.cors_origin
 * is refused (403); clients without a browser send none. 0, or the status
 * sent. */
static int same_origin(struct mg_connection *conn, const char *origin) {
    const char *host = mg_get_header(conn, "Host");
    if (!host || !host[0]) return 0;
    const char *rest = strncmp(origin, "http://", 7) == 0    ? origin + 7
                       : strncmp(origin, "https://", 8) == 0 ? origin + 8
                                                             : NULL;
    return rest && strcasecmp(rest, host) == 0;
}

/* ADMIN: the route also needs the admin token, which no other site's page
 * can know, so the status page's own requests (Origin equal to this Host)
 * pass too; a route without a token keeps the strict check (a same-origin
 * claim alone could come from a rebound DNS name). */
static int check_origin(http_server *s, struct mg_connection *conn, int admin) {
    const char *origin = mg_get_header(conn, "Origin");
    const char *allowed = s->d.cfg->cors_origin;
    if (origin && !(allowed[0] && (strcmp(allowed, "*") == 0 || strcmp(allowed, origin) == 0)) &&
        !(admin && same_origin(conn, origin)))
        return send_error(
            s, conn, 403, "forbidden_origin",
            "cross-origin request refused: set server.cors_origin to allow this origin");
    return 0;
}

/* A body, when typed, must be application/json;
 * application/x-www-form-urlencoded, which `curl -d` sends by default, is
 * tolerated because the Origin check already stops browsers. 0, or the
 * status sent (415). */
static int check_content_type(http_server *s, struct mg_connection *conn) {
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

/* ---- routes ----------------------------------------------------------------------- */

enum { M_GET = 1, M_POST = 2, M_PUT = 4, M_DELETE = 8 };

/* What a route does with a request body. */
typedef enum {
    BODY_NONE,     /* reads none; Content-Type not looked at */
    BODY_JSON,     /* reads a JSON body, which must be there:
                                 * Content-Type application/json (or form,
                                 * or none), 400 without one, 413 over
                                 * server.max_body_bytes */
    BODY_OPTIONAL, /* reads none, but one may come: when typed,
                                 * as for BODY_JSON (415 otherwise) */
} body_policy;

typedef struct route_def {
    const char *path; /* matched exactly, or as a prefix up to its "{name}"
                       * ("/stock/{sku}") or its trailing '/': the decoded
                       * rest of the path is the handler's ARG */
    unsigned methods; /* M_*: GET brings HEAD; every route answers OPTIONS */
    int admin;        /* needs Authorization: Bearer NERVE_ADMIN_TOKEN */
    body_policy body;
    int (*fn)(http_server *s, struct mg_connection *conn);
    int (*fn_arg)(http_server *s, struct mg_connection *conn, const char *arg);
    const char *does; /* one line for GET /, the API's own index */
} route_def;

static int handle_index(http_server *s, struct mg_connection *conn);

/* The HTTP API (SPEC §6), first match wins. */
static const route_def routes[] = {
    { "/", M_GET, 0, BODY_NONE, handle_index, NULL, "this list of endpoints" },
    { "/sale", M_POST, 0, BODY_JSON, handle_sale, NULL,
      "sell {sku, qty, order_id?, unit_price?}: 200 with stock_remaining" },
    { "/test/simulate-sale", M_POST, 0, BODY_JSON, handle_sale, NULL,
      "the original service's path: same as POST /sale" },
    { "/stock/{sku}", M_GET, 0, BODY_NONE, NULL, handle_stock_get,
      "a SKU's stock and catalog price" },
    { "/healthz", M_GET, 0, BODY_NONE, handle_healthz, NULL, "200 while the process runs" },
    { "/readyz", M_GET, 0, BODY_NONE, handle_readyz, NULL,
      "200 when Redis answers and rules are loaded, else 503 with the reason" },
    { "/metrics", M_GET, 0, BODY_NONE, handle_metrics, NULL, "Prometheus metrics" },
    { "/rules", M_GET, 0, BODY_NONE, handle_rules, NULL,
      "the loaded rules, their counters and the last reload" },
    { "/killswitch", M_GET, 0, BODY_NONE, handle_killswitch_get, NULL,
      "the engaged kill-switch scopes" },
    { "/decisions", M_GET, 0, BODY_NONE, handle_decisions, NULL,
      "the decision log, newest first: ?rule=&scope=&kind=&limit=" },
    { "/status.json", M_GET, 0, BODY_NONE, handle_status_json, NULL,
      "the status page's data: sales, top SKUs, kills, rules, readiness" },
    { "/status", M_GET, 0, BODY_NONE, handle_status_page, NULL,
      "the live status page (HTML; read-only without the token)" },
    { "/status/{asset}", M_GET, 0, BODY_NONE, NULL, handle_status_asset,
      "the status page's script and style" },
    { "/admin/stock/{sku}", M_PUT, 1, BODY_JSON, NULL, handle_stock_put,
      "set {stock?, price?} of a SKU" },
    { "/admin/killswitch", M_POST, 1, BODY_JSON, handle_killswitch_post, NULL,
      "engage {scope, reason, halt_sales?} by hand" },
    { "/admin/killswitch/{scope}", M_DELETE, 1, BODY_OPTIONAL, NULL, handle_killswitch_delete,
      "reset a scope" },
    { "/admin/reload", M_POST, 1, BODY_OPTIONAL, handle_reload, NULL,
      "reload config and rules, like SIGHUP" },
};

/* The length of route R's prefix when it is one ("/stock/{sku}": 7, the
 * rest of the path being its argument; a path ending in '/' other than "/"
 * is a prefix too), 0 when R's path is matched exactly. */
static size_t route_prefix(const route_def *r) {
    const char *brace = strchr(r->path, '{');
    size_t n = strlen(r->path);
    if (brace) return (size_t)(brace - r->path);
    return n > 1 && r->path[n - 1] == '/' ? n : 0;
}

/* GET /: the endpoints, from the route table itself (one entry per method),
 * so that the index cannot drift from what is served. */
static int handle_index(http_server *s, struct mg_connection *conn) {
    static const struct {
        unsigned bit;
        const char *name;
    } methods[] = {
        { M_GET, "GET" }, { M_POST, "POST" }, { M_PUT, "PUT" }, { M_DELETE, "DELETE" }
    };
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", "nerve");
    cJSON_AddStringToObject(o, "version", NERVE_VERSION);
    cJSON *list = cJSON_AddArrayToObject(o, "endpoints");
    for (size_t i = 0; list && i < sizeof routes / sizeof routes[0]; i++)
        for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++) {
            if (!(routes[i].methods & methods[m].bit)) continue;
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "method", methods[m].name);
            cJSON_AddStringToObject(e, "path", routes[i].path);
            cJSON_AddBoolToObject(e, "admin", routes[i].admin != 0);
            cJSON_AddStringToObject(e, "does", routes[i].does ? routes[i].does : "");
            cJSON_AddItemToArray(list, e);
        }
    return send_json(s, conn, 200, o, NULL, 0);
}

/* The route for path P, with *ARG the rest of a prefix route's path; NULL
 * when none. */
static const route_def *route_find(const char *p, const char **arg) {
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const route_def *r = &routes[i];
        size_t n = route_prefix(r);
        if (n ? strncmp(p, r->path, n) == 0 : strcmp(p, r->path) == 0) {
            *arg = p + (n ? n : strlen(p));
            return r;
        }
    }
    return NULL;
}

/* The Allow header of route R: its methods, HEAD with GET, and OPTIONS. */
static const char *route_allow(const route_def *r, char *buf, size_t len) {
    snprintf(buf, len, "%s%s%s%sOPTIONS", r->methods & M_GET ? "GET, HEAD, " : "",
             r->methods & M_POST ? "POST, " : "", r->methods & M_PUT ? "PUT, " : "",
             r->methods & M_DELETE ? "DELETE, " : "");
    return buf;
}

/* M as one of M_*, HEAD as M_GET; 0 for any other method. */
static unsigned method_bit(const char *m) {
    if (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0) return M_GET;
    if (strcmp(m, "POST") == 0) return M_POST;
    if (strcmp(m, "PUT") == 0) return M_PUT;
    if (strcmp(m, "DELETE") == 0) return M_DELETE;
    return 0;
}

/* OPTIONS: 204 with Allow, and the CORS preflight headers when
 * server.cors_origin is set (send_raw adds Access-Control-Allow-Origin). */
static int handle_options(http_server *s, struct mg_connection *conn, const char *allow) {
    extra_hdr h[4] = {
        { "Allow", allow },
        { "Access-Control-Allow-Methods", allow },
        { "Access-Control-Allow-Headers", "Content-Type, Authorization" },
        { "Access-Control-Max-Age", "600" },
    };
    return send_raw(s, conn, 204, NULL, h, s->d.cfg->cors_origin[0] ? 4 : 1);
}

static int route_request(http_server *s, struct mg_connection *conn);

/* Count requests in flight; while stopping, hold new ones unanswered until
 * the server closes their connection (the client sees a request that was
 * never taken, not a half answer or a sale it was not told about). */
/* A request counted in route is over: the last one out while draining wakes
 * http_stop (under the mutex, so the wake cannot fall between its look at
 * the count and its wait). */
static void request_done(http_server *s) {
    if (atomic_fetch_sub(&s->inflight, 1) == 1 && atomic_load(&s->draining)) {
        pthread_mutex_lock(&s->mu);
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
}

static int route(struct mg_connection *conn, void *cbdata) {
    http_server *s = cbdata;
    atomic_fetch_add(&s->inflight, 1);
    if (atomic_load(&s->draining)) {
        request_done(s);
        pthread_mutex_lock(&s->mu);
        while (!s->released) pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
        return 503;
    }
    conns_slot *slot = mg_get_user_connection_data(conn);
    int status;
    if (conns_enter(slot) == 0) {
        status = route_request(s, conn);
        conns_leave(slot);
    } else {
        /* The evictor took this connection for idle as its request
         * arrived: nothing is done and nothing answered; the client sees
         * the connection close, as when it was idle, and may send again. */
        mg_disable_connection_keep_alive(conn);
        status = 503;
    }
    request_done(s);
    return status;
}

/* Framing, path, route, OPTIONS, method (405), Origin and Content-Type of
 * writes, admin token, body presence, then the route's handler. */
static int dispatch(http_server *s, struct mg_connection *conn) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *m = ri->request_method;
    int st = check_framing(s, conn);
    if (st) return st;
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

    const char *arg;
    const route_def *r = route_find(p, &arg);
    if (!r) {
        char msg[200];
        snprintf(msg, sizeof msg, "no such endpoint: %.150s", p);
        return send_error(s, conn, 404, "not_found", msg);
    }
    char allow[64];
    route_allow(r, allow, sizeof allow);
    if (strcmp(m, "OPTIONS") == 0) return handle_options(s, conn, allow);
    unsigned mb = method_bit(m);
    if (!(r->methods & mb)) return send_method_not_allowed(s, conn, allow);
    if (mb != M_GET && (st = check_origin(s, conn, r->admin))) return st;
    if (r->body != BODY_NONE && (st = check_content_type(s, conn))) return st;
    if (r->admin && (st = check_admin(s, conn))) return st;
    if (r->body == BODY_JSON && ri->content_length <= 0 &&
        !mg_get_header(conn, "Transfer-Encoding"))
        return send_error(s, conn, 400, "bad_request",
                          "this endpoint needs a JSON body (Content-Type: application/json)");
    return r->fn ? r->fn(s, conn) : r->fn_arg(s, conn, arg);
}

static int route_request(http_server *s, struct mg_connection *conn) {
    head_only = strcmp(mg_get_request_info(conn)->request_method, "HEAD") == 0;
    head_sent = closing = 0;
    int status = dispatch(s, conn);
    head_only = 0;
    return status;
}

static int allow_all(struct mg_connection *conn, void *cbdata) {
    (void)conn;
    (void)cbdata;
    return 1;
}

/* Open connections and idle eviction live in conns.c. */
static int on_conn_open(const struct mg_connection *conn, void **data) {
    http_server *s = mg_get_user_data(mg_get_context(conn));
    *data = conns_open(s->conns, conn);
    return 0;
}

static void on_conn_close(const struct mg_connection *conn) {
    http_server *s = mg_get_user_data(mg_get_context(conn));
    conns_close(s->conns, mg_get_user_connection_data(conn));
}

/* CivetWeb's own messages go through our log module. */
static int on_log(const struct mg_connection *conn, const char *message) {
    (void)conn;
    log_warn("http", "civetweb: %s", message);
    return 1;
}

/* Why CivetWeb could not listen on LISTEN (HOST:PORT, [V6]:PORT): the errno
 * of binding it ourselves (EADDRINUSE: another process has it), 0 when the
 * bind works now or LISTEN does not parse. Only asked after a failed start,
 * to name the cause; CivetWeb itself only says "Failed to setup server ports". */
static int listen_errno(const char *listen) {
    char host[256], port[16];
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host || strlen(colon + 1) >= sizeof port)
        return 0;
    const char *h = listen;
    size_t hl = (size_t)(colon - listen);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(port, sizeof port, "%s", colon + 1);
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if (getaddrinfo(hl ? host : NULL, port, &hints, &ai) != 0 || !ai) return 0;
    int e = 0, fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int one = 1; /* as CivetWeb does: TIME_WAIT sockets are no conflict */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) e = errno;
        close(fd);
    }
    freeaddrinfo(ai);
    return e;
}

http_server *http_start(const http_deps *d, char *err, size_t errlen) {
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->d = *d;
    pthread_mutex_init(&s->mu, NULL);
    clock_cond_init(&s->cv);
    s->conns = conns_new(d->cfg->threads, d->cfg->evict_idle_ms, d->cfg->request_timeout_ms);
    if (!s->conns) {
        snprintf(err, errlen, "out of memory");
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        free(s);
        return NULL;
    }
    char threads[16], timeout[16];
    snprintf(threads, sizeof threads, "%d", d->cfg->threads);
    snprintf(timeout, sizeof timeout, "%d", d->cfg->request_timeout_ms);
    const char *opts[] = {
        "listening_ports",
        d->cfg->listen,
        "num_threads",
        threads,
        "enable_keep_alive",
        "yes",
        "keep_alive_timeout_ms",
        timeout,
        "request_timeout_ms",
        timeout,
        "tcp_nodelay",
        "1",
        "max_request_size",
        "16384",
        "decode_url",
        "no",
        /* CORS is ours (server.cors_origin); CivetWeb's defaults would
         * answer every preflight with "*". */
        "access_control_allow_origin",
        "",
        "access_control_allow_methods",
        "",
        "access_control_allow_headers",
        "",
        NULL,
    };
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.log_message = on_log;
    cb.init_connection = on_conn_open;
    cb.connection_close = on_conn_close;
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
        int e = listen_errno(d->cfg->listen);
        if (e == EADDRINUSE)
            snprintf(err, errlen,
                     "server.listen %s: address already in use (another nerve? set NERVE_LISTEN "
                     "or --set server.listen=...)",
                     d->cfg->listen);
        else if (e)
            snprintf(err, errlen, "server.listen %s: cannot listen: %s", d->cfg->listen,
                     strerror(e));
        else
            snprintf(err, errlen, "cannot listen on %s: %s", d->cfg->listen,
                     ebuf[0] ? ebuf : "start failed");
        conns_free(s->conns);
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        free(s);
        mg_exit_library();
        return NULL;
    }
    mg_set_request_handler(s->ctx, "/", route, s);
    /* Authorization is the handlers' own (check_admin). Without a handler
     * here CivetWeb looks for a /.htpasswd file on every request: a
     * newfstatat system call per sale (strace, issue 12). */
    mg_set_auth_handler(s->ctx, "/", allow_all, NULL);
    /* Without it idle connections hold workers for request_timeout_ms, as
     * before: worth a warning, not a refusal to serve. */
    if (conns_start(s->conns) != 0) log_warn("http", "cannot start the idle connection evictor");
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
    struct timespec dl = clock_deadline_ms(s->d.cfg->shutdown_grace_ms);
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->draining, 1);
    while (atomic_load(&s->inflight) > 0)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) != 0) break;
    if (s->inflight > 0)
        log_warn("http", "grace period over with %d requests in flight", atomic_load(&s->inflight));
    s->released = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    waker w;
    pthread_t wt;
    int waking = start_waker(s->d.cfg->listen, &w, &wt) == 0;
    /* The evictor reads CivetWeb's connections, which mg_stop frees. */
    conns_stop(s->conns);
    mg_stop(s->ctx);
    if (waking) {
        atomic_store(&w.done, 1);
        pthread_join(wt, NULL);
    }
    mg_exit_library();
    conns_free(s->conns);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
