/* test_hostile.c -- hostile input against the running daemon (SPEC §6, §7).
 *
 * 1. A corpus of malformed and hostile HTTP requests, sent over raw sockets
 *    so that every byte is ours (libcurl would fix most of them up): protocol
 *    garbage, oversized headers and bodies, deep JSON, invalid UTF-8, NUL
 *    bytes, out-of-range numbers, duplicate keys, wrong content types, path
 *    tricks, bad methods, and almost-right admin tokens. Each case says what
 *    must come back:
 *      X_JSON    the daemon's own handler: that 4xx with a JSON error body
 *                {"error": CODE, "message": ...};
 *      X_CIVET   CivetWeb refuses the request before it reaches the daemon:
 *                exactly that status (its plain-text error page);
 *      X_CLOSED  the connection is closed without an answer.
 *    After every case the daemon must be alive (/healthz 200) and Redis
 *    unchanged: the test SKUs' stock, the kill switch records, DBSIZE.
 *    Every case is a cmocka test of its own, named "http/CLASS: case"
 *    (CMOCKA_FILTER='http/header:*' runs one class), between a first test
 *    that sets the state up and a summary that checks no reload went
 *    through. A failed case puts the state back, and a daemon that died is
 *    restarted, so that one failure or crash does not hide the rest.
 *
 *    Every request is sent with `Connection: close` and the sending side is
 *    shut (SHUT_WR) once written, so a request whose body is shorter than its
 *    Content-Length ends at once instead of at server.request_timeout_ms.
 *
 * 2. Hostile messages on the event bus (binary, over bus.max_event_bytes,
 *    deeply nested, not an object, invalid UTF-8) and on the control channel:
 *    the daemon survives, counts them, and still evaluates a valid event.
 *    One test per kind of message, each measuring its own counters.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_BODY 65536          /* server.max_body_bytes: deep JSON reaches the parser */
#define SKU_STOCK "hz-stock"    /* stock 100: a request that sells changes it */
#define SKU_ZERO "hz-zero"      /* stock 0 */
#define KS_SCOPE "sku:hz-ks"    /* engaged before the corpus: a reset changes it */
#define STOCK0 100
#define TOKEN H_ADMIN_TOKEN
#define CHANNELS "bus.channels=[inventory_events,sales_events,financial_events,test_events]"

static h_redis *redis;
static h_daemon *dmn;           /* the group's: restarted by the HTTP test when it dies */
static char rules_set[PATH_MAX + 32];   /* filled in by group_setup */

/* --- the daemon -------------------------------------------------------------- */

static const char *const PROBE_RULE =
    "return {\n"
    "  name = \"hostile_probe\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if type(event.kill) == \"string\" then\n"
    "      return { action = \"kill\", scope = event.kill, reason = \"probe asked\" }\n"
    "    end\n"
    "  end,\n"
    "}\n";

/* The daemon's overrides: the group's start (h_group_use) and restarts. */
static const char *const daemon_sets[] = {
    rules_set, CHANNELS, "server.max_body_bytes=" H_STR(MAX_BODY), "server.request_timeout_ms=3000",
    "panic.dry_run=true", "alerts.throttle_s=0", NULL,
};

static h_daemon *start_daemon(void)
{
    return h_daemon_startv(redis, true, daemon_sets,
                           sizeof daemon_sets / sizeof daemon_sets[0] - 1);
}

/* --- raw HTTP ------------------------------------------------------------------ */

typedef struct raw_res {
    int status;                 /* -1: closed without a byte; 0: no status line */
    bool timed_out;             /* still open, no complete answer at the deadline */
    bool reset;                 /* ECONNRESET while reading */
    char *raw;                  /* everything received, NUL-terminated */
    size_t raw_len;
    const char *body;           /* into raw */
    bool json_ct;
    cJSON *json;
    double secs;
} raw_res;

static void raw_free(raw_res *r)
{
    free(r->raw);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

/* The value of header NAME in the head [HEAD, END), or NULL. */
static const char *head_value(const char *head, const char *end, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    for (const char *p = head; p < end; ) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        if ((size_t)(le - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = le;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = eol ? eol + 1 : end;
    }
    return NULL;
}

/* A complete answer: a head and, when it says Content-Length, that body. */
static bool answer_complete(const char *buf, size_t len)
{
    const char *hend = memmem(buf, len, "\r\n\r\n", 4);
    if (hend == NULL)
        return false;
    size_t vl;
    const char *cl = head_value(buf, hend, "Content-Length", &vl);
    if (cl == NULL)
        return false;           /* ends with the connection */
    size_t want = (size_t)strtoul(cl, NULL, 10);
    return len - (size_t)(hend + 4 - buf) >= want;
}

/* Connect to 127.0.0.1:PORT, send DATA (LEN bytes; shut the sending side once
 * it is all sent), and read until the answer is complete, the peer closes,
 * or TIMEOUT_MS. Sending stops when the peer stops reading (EPIPE/RESET). */
static void raw_exchange(int port, const char *data, size_t len, int timeout_ms, raw_res *o)
{
    memset(o, 0, sizeof *o);
    double t0 = h_now(), dl = h_deadline(timeout_ms);
    size_t cap = 4096, n = 0, off = 0;
    char *in = malloc(cap);
    assert_non_null(in);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool eof = false, wr_done = len == 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
        o->reset = true;
        goto done;
    }
    if (wr_done)
        shutdown(fd, SHUT_WR);
    while (h_before(dl)) {
        struct pollfd p = { fd, (short)(POLLIN | (wr_done ? 0 : POLLOUT)), 0 };
        int ms = (int)((dl - h_now()) * 1000) + 1;
        int pr = poll(&p, 1, ms);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            break;
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (n + 65536 + 1 > cap) {
                cap = n + 65536 + 1;
                in = realloc(in, cap);
                assert_non_null(in);
            }
            ssize_t r = recv(fd, in + n, 65536, 0);
            if (r > 0) {
                n += (size_t)r;
                if (answer_complete(in, n))
                    break;
                continue;
            }
            if (r == 0) {
                eof = true;
                break;
            }
            if (errno == EAGAIN || errno == EINTR)
                continue;
            if (!wr_done && (errno == ECONNRESET || errno == EPIPE) && !(p.revents & POLLIN)) {
                wr_done = true;
                continue;
            }
            o->reset = true;
            break;
        }
        if (!wr_done && (p.revents & POLLOUT)) {
            ssize_t w = send(fd, data + off, len - off, MSG_NOSIGNAL);
            if (w > 0) {
                off += (size_t)w;
                if (off == len) {
                    wr_done = true;
                    shutdown(fd, SHUT_WR);
                }
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                wr_done = true;     /* the server stopped reading: hear what it said */
            }
        }
    }
done:
    close(fd);
    in[n] = '\0';
    o->raw = in;
    o->raw_len = n;
    o->secs = h_now() - t0;
    if (n == 0) {
        o->status = -1;
        o->timed_out = !eof && !o->reset;
        return;
    }
    o->timed_out = !eof && !answer_complete(in, n) && !o->reset;
    const char *sp = memchr(in, ' ', n);
    if (strncmp(in, "HTTP/", 5) == 0 && sp)
        o->status = atoi(sp + 1);
    const char *hend = memmem(in, n, "\r\n\r\n", 4);
    o->body = hend ? hend + 4 : in + n;
    size_t vl;
    const char *ct = hend ? head_value(in, hend, "Content-Type", &vl) : NULL;
    o->json_ct = ct && vl >= 16 && strncasecmp(ct, "application/json", 16) == 0;
    o->json = cJSON_Parse(o->body);
}

/* --- the corpus ------------------------------------------------------------------ */

typedef enum { X_JSON, X_CIVET, X_CLOSED } expect_kind;

typedef struct hcase {
    char *name;
    char *data;
    size_t len;
    expect_kind kind;
    int status;                 /* X_JSON: 0 = any 4xx */
    const char *code;           /* X_JSON: NULL = any */
    bool dupkey;                /* print which duplicate key won */
} hcase;

typedef struct corpus {
    hcase *c;
    size_t n, cap;
} corpus;

static void add_raw(corpus *k, const char *name, const char *data, size_t len, expect_kind kind,
                    int status, const char *code)
{
    if (k->n == k->cap) {
        k->cap = k->cap ? k->cap * 2 : 64;
        k->c = realloc(k->c, k->cap * sizeof *k->c);
        assert_non_null(k->c);
    }
    hcase *c = &k->c[k->n++];
    memset(c, 0, sizeof *c);
    c->name = strdup(name);
    c->data = malloc(len + 1);
    assert_non_null(c->data);
    memcpy(c->data, data, len);
    c->data[len] = '\0';
    c->len = len;
    c->kind = kind;
    c->status = status;
    c->code = code;
}

/* METHOD PATH HTTP/1.1 with Host, Connection: close, the header lines HDRS
 * ("" or lines ending in CRLF), and BODY (BLEN bytes) with its Content-Length
 * when BODY is not NULL. */
static void add_req(corpus *k, const char *name, const char *method, const char *path,
                    const char *hdrs, const char *body, size_t blen, expect_kind kind,
                    int status, const char *code)
{
    size_t cap = strlen(method) + strlen(path) + strlen(hdrs) + blen + 256;
    char *buf = malloc(cap);
    assert_non_null(buf);
    int n = snprintf(buf, cap, "%s %s HTTP/1.1\r\nHost: nerve.test\r\nConnection: close\r\n%s",
                     method, path, hdrs);
    if (body)
        n += snprintf(buf + n, cap - (size_t)n, "Content-Length: %zu\r\n", blen);
    n += snprintf(buf + n, cap - (size_t)n, "\r\n");
    if (body) {
        memcpy(buf + n, body, blen);
        n += (int)blen;
    }
    add_raw(k, name, buf, (size_t)n, kind, status, code);
    free(buf);
}

#define JSON_CT "Content-Type: application/json\r\n"
#define LIT(s) (s), (sizeof(s) - 1)

/* POST /sale with a JSON body given as a literal (NUL bytes allowed). */
#define SALE(k, name, lit, st, code) \
    add_req((k), (name), "POST", "/sale", JSON_CT, LIT(lit), X_JSON, (st), (code))

static char *repeat(const char *unit, size_t times)
{
    size_t ul = strlen(unit);
    char *s = malloc(ul * times + 1);
    assert_non_null(s);
    for (size_t i = 0; i < times; i++)
        memcpy(s + i * ul, unit, ul);
    s[ul * times] = '\0';
    return s;
}

/* {"sku": OPEN*N CLOSE*N, "qty":1} and similar: PREFIX + OPEN*N + MID + CLOSE*N + SUFFIX. */
static char *nest(const char *prefix, const char *open, size_t depth, const char *mid,
                  const char *close, const char *suffix)
{
    char *o = repeat(open, depth), *c = repeat(close, depth);
    size_t len = strlen(prefix) + strlen(o) + strlen(mid) + strlen(c) + strlen(suffix) + 1;
    char *s = malloc(len);
    assert_non_null(s);
    snprintf(s, len, "%s%s%s%s%s", prefix, o, mid, c, suffix);
    free(o);
    free(c);
    return s;
}

static void add_protocol_cases(corpus *k)
{
    /* Request lines CivetWeb cannot parse: answered by its own 400 page. */
    add_raw(k, "HTTP/0.9 request line", LIT("GET /healthz\r\n\r\n"), X_CIVET, 400, NULL);
    add_raw(k, "HTTP/0.9, no blank line", LIT("GET /healthz\r\n"), X_CIVET, 400, NULL);
    add_raw(k, "HTTP/0.9 POST", LIT("POST /sale\r\n\r\n{\"sku\":\"hz-stock\",\"qty\":1}"),
            X_CIVET, 400, NULL);
    add_raw(k, "garbage line", LIT("HELLO WORLD\r\n\r\n"), X_CIVET, 400, NULL);
    add_raw(k, "blank lines only", LIT("\r\n\r\n\r\n"), X_CIVET, 400, NULL);
    add_raw(k, "spaces only", LIT("        \r\n\r\n"), X_CIVET, 400, NULL);
    add_raw(k, "TLS ClientHello",
            LIT("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
                "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"
                "\x00\x00\x02\x13\x01\x01\x00"), X_CIVET, 400, NULL);
    add_raw(k, "HTTP/2 preface", LIT("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), X_CIVET, 400, NULL);
    add_raw(k, "NUL in the method", LIT("G\0ET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            X_CIVET, 400, NULL);
    add_raw(k, "lowercase method", LIT("get /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    add_raw(k, "unknown method FOO", LIT("FOO /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    add_raw(k, "TRACE", LIT("TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    add_raw(k, "CONNECT to Redis' port",
            LIT("CONNECT 127.0.0.1:6379 HTTP/1.1\r\nHost: 127.0.0.1:6379\r\n\r\n"), X_CIVET, 400, NULL);
    add_raw(k, "version FOO/1.1", LIT("GET /healthz FOO/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    /* Unsupported versions: CivetWeb answers 505, the status RFC 9110 names
     * for it (the one documented exception to "4xx"). */
    add_raw(k, "HTTP/1.2", LIT("GET /healthz HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CIVET, 505, NULL);
    add_raw(k, "HTTP/9.9", LIT("GET /healthz HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CIVET, 505, NULL);
    add_raw(k, "HTTP/1.1.1", LIT("GET /healthz HTTP/1.1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CIVET, 505, NULL);
    /* Request targets CivetWeb does not serve: it closes without a word. */
    add_raw(k, "asterisk-form OPTIONS *", LIT("OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CLOSED, 0, NULL);
    add_raw(k, "absolute-form target",
            LIT("GET http://evil.example/admin/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CLOSED, 0, NULL);
    add_raw(k, "empty connection", "", 0, X_CLOSED, 0, NULL);

    /* Binary noise. */
    char noise[512];
    unsigned x = 2463534242u;
    for (size_t i = 0; i < sizeof noise; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        noise[i] = (char)(x & 0xff);
    }
    add_raw(k, "512 bytes of binary noise", noise, sizeof noise, X_CIVET, 400, NULL);

    /* Methods the daemon's router refuses with its own 405. */
    add_req(k, "PATCH /sale", "PATCH", "/sale", JSON_CT, LIT("{\"sku\":\"hz-stock\",\"qty\":1}"),
            X_JSON, 405, "method_not_allowed");
    add_req(k, "PUT /sale", "PUT", "/sale", JSON_CT, LIT("{\"sku\":\"hz-stock\",\"qty\":1}"),
            X_JSON, 405, "method_not_allowed");
    add_req(k, "DELETE /stock/hz-stock", "DELETE", "/stock/hz-stock", "", NULL, 0, X_JSON, 405,
            "method_not_allowed");
    add_req(k, "GET /admin/reload", "GET", "/admin/reload", "Authorization: Bearer " TOKEN "\r\n",
            NULL, 0, X_JSON, 405, "method_not_allowed");
    add_req(k, "PUT /admin/killswitch/<scope>", "PUT", "/admin/killswitch/" KS_SCOPE,
            "Authorization: Bearer " TOKEN "\r\n", NULL, 0, X_JSON, 405, "method_not_allowed");
    /* / is GET's (the endpoint list): any other method there is a 405. */
    add_req(k, "PROPFIND /", "PROPFIND", "/", "", NULL, 0, X_JSON, 405, "method_not_allowed");
    add_req(k, "PROPFIND /nowhere", "PROPFIND", "/nowhere", "", NULL, 0, X_JSON, 404, "not_found");
    add_req(k, "MKCOL /stock/x", "MKCOL", "/stock/x", "", NULL, 0, X_JSON, 405,
            "method_not_allowed");
    add_raw(k, "double space after the method",
            LIT("POST  /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 25\r\n\r\n"
                "{\"sku\":\"hz-zero\",\"qty\":1}"), X_JSON, 409, "out_of_stock");
}

static void add_header_cases(corpus *k)
{
    char *v = repeat("a", 17 * 1024);
    char *hdr = malloc(strlen(v) + 64);
    sprintf(hdr, "X-Big: %s\r\n", v);
    add_req(k, "one 17 KiB header", "GET", "/healthz", hdr, NULL, 0, X_CIVET, 400, NULL);
    free(hdr);
    free(v);
    v = repeat("b", 100 * 1024);
    hdr = malloc(strlen(v) + 64);
    sprintf(hdr, "X-Huge: %s\r\n", v);
    add_req(k, "one 100 KiB header, POST /sale", "POST", "/sale", hdr,
            LIT("{\"sku\":\"hz-stock\",\"qty\":1}"), X_CIVET, 400, NULL);
    free(hdr);
    free(v);
    v = repeat("X-Many: ccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\r\n", 300);
    add_req(k, "300 headers, 18 KiB in all", "GET", "/healthz", v, NULL, 0, X_CIVET, 400, NULL);
    free(v);
    v = repeat("h", 20 * 1024);
    hdr = malloc(strlen(v) + 64);
    sprintf(hdr, "X-Host: %s\r\n", v);
    add_req(k, "20 KiB header before Authorization", "PUT", "/admin/stock/" SKU_STOCK, hdr,
            LIT("{\"stock\":777}"), X_CIVET, 400, NULL);
    free(hdr);
    free(v);
    /* Authorization past CivetWeb's 64-header table: ignored, so 401. */
    v = repeat("X-Pad: p\r\n", 100);
    hdr = malloc(strlen(v) + 64);
    sprintf(hdr, "%sAuthorization: Bearer " TOKEN "\r\n", v);
    add_req(k, "Authorization after 100 headers", "PUT", "/admin/stock/" SKU_STOCK, hdr,
            LIT("{\"stock\":777}"), X_JSON, 401, "unauthorized");
    free(hdr);
    free(v);

    add_raw(k, "NUL in a header value",
            LIT("GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    add_raw(k, "header line without a colon",
            LIT("GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    add_raw(k, "space in a header name",
            LIT("GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: b\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    add_raw(k, "bare CR inside the head",
            LIT("GET /healthz HTTP/1.1\r\nHost: x\rX-A: b\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    add_raw(k, "Content-Length: -5",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: -5\r\n\r\n{}"),
            X_CIVET, 411, NULL);
    add_raw(k, "Content-Length: 12abc",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 12abc\r\n\r\n{}"),
            X_JSON, 400, "bad_request");
    add_raw(k, "Content-Length: 10^23",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                "Content-Length: 99999999999999999999999\r\n\r\n{}"), X_JSON, 413, "payload_too_large");
    add_raw(k, "two Content-Length headers (5 and 50)",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n"
                "Content-Length: 50\r\n\r\n{\"sku\":\"hz-stock\",\"qty\":1}"), X_JSON, 400, "bad_request");
    /* RFC 9112 6.3: Transfer-Encoding overrides Content-Length (or 400). */
    add_raw(k, "Content-Length and chunked",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n"
                "Transfer-Encoding: chunked\r\n\r\n19\r\n{\"sku\":\"hz-zero\",\"qty\":1}\r\n0\r\n\r\n"),
            X_JSON, 0, NULL);
    add_raw(k, "Transfer-Encoding: gzip",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: gzip\r\n\r\n"
                "{\"sku\":\"hz-stock\",\"qty\":1}"), X_CIVET, 400, NULL);
    add_raw(k, "chunk size not hex",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                "ZZ\r\nab\r\n0\r\n\r\n"), X_JSON, 400, "bad_request");
    add_raw(k, "chunk size overflowing 64 bits",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                "FFFFFFFFFFFFFFFFFFFF\r\nab\r\n0\r\n\r\n"), X_JSON, 400, "bad_request");
    add_raw(k, "chunked, truncated mid-chunk",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                "40\r\n{\"sku\":\"hz-stock\",\"qty\":1}"), X_JSON, 400, "bad_request");
    add_raw(k, "Expect: 100-continue with a 1 MB Content-Length",
            LIT("POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n"
                "Content-Length: 1000000\r\n\r\n"), X_JSON, 413, "payload_too_large");
}

static void add_body_cases(corpus *k)
{
    /* Oversized bodies: with Content-Length, chunked, and neither. */
    char *pad = repeat(" ", MAX_BODY + 10);
    char *body = malloc(strlen(pad) + 64);
    sprintf(body, "{\"sku\":\"hz-stock\",\"qty\":1}%s", pad);
    add_req(k, "body over max_body_bytes", "POST", "/sale", JSON_CT, body, strlen(body), X_JSON,
            413, "payload_too_large");
    free(body);
    free(pad);
    pad = repeat(" ", 1 << 20);
    body = malloc(strlen(pad) + 64);
    sprintf(body, "{\"sku\":\"hz-stock\",%s\"qty\":1}", pad);
    add_req(k, "1 MiB body", "POST", "/sale", JSON_CT, body, strlen(body), X_JSON, 413,
            "payload_too_large");
    /* No Content-Length and no chunking: HTTP/1.1 says no body at all. */
    {
        size_t cap = strlen(body) + 256;
        char *req = malloc(cap);
        int n = snprintf(req, cap, "POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         JSON_CT "\r\n%s", body);
        add_raw(k, "1 MiB body without Content-Length", req, (size_t)n, X_JSON, 400, "bad_request");
        free(req);
    }
    free(body);
    free(pad);
    {
        /* 80 chunks of 1 KiB: over the limit only in total. */
        char *chunk = repeat(" ", 1024);
        size_t cap = 90 * 1100 + 256;
        char *req = malloc(cap);
        int n = snprintf(req, cap, "POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         JSON_CT "Transfer-Encoding: chunked\r\n\r\n1a\r\n{\"sku\":\"hz-stock\",\"qty\":1}"
                         "\r\n");
        for (int i = 0; i < 80; i++)
            n += snprintf(req + n, cap - (size_t)n, "400\r\n%s\r\n", chunk);
        n += snprintf(req + n, cap - (size_t)n, "0\r\n\r\n");
        add_raw(k, "chunked body over max_body_bytes", req, (size_t)n, X_JSON, 413,
                "payload_too_large");
        free(req);
        free(chunk);
    }
    {
        /* Declares 10 bytes, sends 70,000: the rest is not a request. */
        char *tail = repeat("Z", 70000);
        size_t cap = strlen(tail) + 256;
        char *req = malloc(cap);
        int n = snprintf(req, cap, "POST /sale HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         JSON_CT "Content-Length: 10\r\n\r\n{\"sku\":\"hz%s", tail);
        add_raw(k, "Content-Length 10, 70 KB sent", req, (size_t)n, X_JSON, 400, "bad_request");
        free(req);
        free(tail);
    }

    /* Deep nesting: 10,000 levels, and just over what a worker's stack holds. */
    char *s;
    s = nest("{\"sku\":", "[", 10000, "", "]", ",\"qty\":1}");
    add_req(k, "10,000 nested arrays in sku", "POST", "/sale", JSON_CT, s, strlen(s), X_JSON, 400,
            "bad_request");
    free(s);
    s = nest("{\"sku\":\"hz-stock\",\"qty\":1,\"x\":", "{\"a\":", 10000, "1", "}", "}");
    add_req(k, "10,000 nested objects", "POST", "/sale", JSON_CT, s, strlen(s), X_JSON, 400,
            "bad_request");
    free(s);
    s = nest("{\"sku\":\"hz-stock\",\"qty\":", "[", 10000, "1", "]", "}");
    add_req(k, "10,000 nested arrays in qty, /test/simulate-sale", "POST", "/test/simulate-sale",
            JSON_CT, s, strlen(s), X_JSON, 400, "bad_request");
    free(s);
    s = nest("", "[", 800, "", "]", "");
    add_req(k, "800 nested arrays (2 KB body)", "POST", "/sale", JSON_CT, s, strlen(s), X_JSON, 400,
            "bad_request");
    free(s);
    s = nest("", "[", 10000, "", "]", "");
    add_req(k, "10,000 nested arrays without a token, PUT /admin/stock", "PUT",
            "/admin/stock/" SKU_STOCK, JSON_CT, s, strlen(s), X_JSON, 401, "unauthorized");
    add_req(k, "10,000 nested arrays with the token, PUT /admin/stock", "PUT",
            "/admin/stock/" SKU_STOCK, JSON_CT "Authorization: Bearer " TOKEN "\r\n", s, strlen(s),
            X_JSON, 400, "bad_request");
    add_req(k, "10,000 nested arrays with the token, POST /admin/killswitch", "POST",
            "/admin/killswitch", JSON_CT "Authorization: Bearer " TOKEN "\r\n", s, strlen(s),
            X_JSON, 400, "bad_request");
    free(s);

    /* Invalid UTF-8 and NUL bytes in sku and order_id (sellable SKU). */
    SALE(k, "sku: invalid UTF-8 \\xff\\xfe", "{\"sku\":\"\xff\xfe\",\"qty\":1}", 400, "bad_request");
    SALE(k, "sku: overlong '/' \\xc0\\xaf", "{\"sku\":\"hz\xc0\xaf" "x\",\"qty\":1}", 400, "bad_request");
    SALE(k, "sku: truncated sequence", "{\"sku\":\"hz-stock\xe2\x82\",\"qty\":1}", 400, "bad_request");
    SALE(k, "sku: lone surrogate \\ud800", "{\"sku\":\"\\ud800\",\"qty\":1}", 400, "bad_request");
    SALE(k, "sku: escaped surrogate pair", "{\"sku\":\"\\ud83d\\ude00\",\"qty\":1}", 400, "bad_request");
    SALE(k, "sku: raw NUL then junk", "{\"sku\":\"hz-stock\0junk\",\"qty\":1}", 400, "bad_request");
    SALE(k, "sku: \\u0000 then junk", "{\"sku\":\"hz-stock\\u0000junk\",\"qty\":1}", 400, "bad_request");
    SALE(k, "sku: only \\u0000", "{\"sku\":\"\\u0000\",\"qty\":1}", 400, "bad_request");
    SALE(k, "sku: escaped slash", "{\"sku\":\"hz\\/stock\",\"qty\":1}", 400, "bad_request");
    SALE(k, "sku: hash tag braces", "{\"sku\":\"hz}:x{\",\"qty\":1}", 400, "bad_request");
    SALE(k, "order_id: invalid UTF-8", "{\"sku\":\"hz-stock\",\"qty\":1,\"order_id\":\"o-\xc3\x28\"}",
         400, "bad_request");
    SALE(k, "order_id: \\u00e9", "{\"sku\":\"hz-stock\",\"qty\":1,\"order_id\":\"caf\\u00e9\"}",
         400, "bad_request");
    SALE(k, "order_id: raw NUL", "{\"sku\":\"hz-stock\",\"qty\":1,\"order_id\":\"o\0x\"}",
         400, "bad_request");
    SALE(k, "order_id: \\u0000", "{\"sku\":\"hz-stock\",\"qty\":1,\"order_id\":\"o\\u0000x\"}",
         400, "bad_request");
    SALE(k, "order_id: CRLF injection",
         "{\"sku\":\"hz-stock\",\"qty\":1,\"order_id\":\"o\\r\\nSET x 1\"}", 400, "bad_request");
    SALE(k, "order_id: empty", "{\"sku\":\"hz-stock\",\"qty\":1,\"order_id\":\"\"}", 400, "bad_request");
    SALE(k, "order_id: an object", "{\"sku\":\"hz-stock\",\"qty\":1,\"order_id\":{}}", 400,
         "bad_request");

    /* Numbers out of range. */
    SALE(k, "qty 1e400", "{\"sku\":\"hz-stock\",\"qty\":1e400}", 400, "bad_request");
    SALE(k, "qty -1e400", "{\"sku\":\"hz-stock\",\"qty\":-1e400}", 400, "bad_request");
    SALE(k, "qty -0", "{\"sku\":\"hz-stock\",\"qty\":-0}", 400, "bad_request");
    SALE(k, "qty 9223372036854775808", "{\"sku\":\"hz-stock\",\"qty\":9223372036854775808}", 400,
         "bad_request");
    SALE(k, "qty 18446744073709551617", "{\"sku\":\"hz-stock\",\"qty\":18446744073709551617}", 400,
         "bad_request");
    SALE(k, "qty 1e-400", "{\"sku\":\"hz-stock\",\"qty\":1e-400}", 400, "bad_request");
    SALE(k, "qty NaN", "{\"sku\":\"hz-stock\",\"qty\":NaN}", 400, "bad_request");
    SALE(k, "qty Infinity", "{\"sku\":\"hz-stock\",\"qty\":Infinity}", 400, "bad_request");
    SALE(k, "qty +1", "{\"sku\":\"hz-stock\",\"qty\":+1}", 400, "bad_request");
    SALE(k, "qty 0x1", "{\"sku\":\"hz-stock\",\"qty\":0x1}", 400, "bad_request");
    SALE(k, "qty .5", "{\"sku\":\"hz-stock\",\"qty\":.5}", 400, "bad_request");
    SALE(k, "qty 01 (leading zero: not JSON)", "{\"sku\":\"hz-stock\",\"qty\":01}", 400, "bad_request");
    SALE(k, "qty 1. (no fraction digits: not JSON)", "{\"sku\":\"hz-stock\",\"qty\":1.}", 400,
         "bad_request");
    {
        char *zeros = repeat("0", 60000);
        char *b = malloc(strlen(zeros) + 64);
        sprintf(b, "{\"sku\":\"hz-stock\",\"qty\":1%s}", zeros);
        add_req(k, "qty with 60,000 digits", "POST", "/sale", JSON_CT, b, strlen(b), X_JSON, 400,
                "bad_request");
        free(b);
        free(zeros);
    }
    SALE(k, "unit_price 1e400", "{\"sku\":\"hz-stock\",\"qty\":1,\"unit_price\":1e400}", 400,
         "bad_request");
    SALE(k, "unit_price -1e400", "{\"sku\":\"hz-stock\",\"qty\":1,\"unit_price\":-1e400}", 400,
         "bad_request");
    SALE(k, "unit_price -1", "{\"sku\":\"hz-stock\",\"qty\":1,\"unit_price\":-1}", 400, "bad_request");
    SALE(k, "unit_price 1e16", "{\"sku\":\"hz-stock\",\"qty\":1,\"unit_price\":1e16}", 400,
         "bad_request");
    SALE(k, "unit_price -0 (stock 0 SKU)", "{\"sku\":\"hz-zero\",\"qty\":1,\"unit_price\":-0}", 0,
         NULL);
    SALE(k, "unit_price 1e-400 (stock 0 SKU)", "{\"sku\":\"hz-zero\",\"qty\":1,\"unit_price\":1e-400}",
         0, NULL);

    /* Duplicate keys (against the stock-0 SKU: the answer says which won). */
    add_req(k, "duplicate sku: hz-zero then hz-zero-b", "POST", "/sale", JSON_CT,
            LIT("{\"sku\":\"hz-zero\",\"sku\":\"hz-zero-b\",\"qty\":1}"), X_JSON, 0, NULL);
    k->c[k->n - 1].dupkey = true;
    add_req(k, "duplicate qty: 0 then 1", "POST", "/sale", JSON_CT,
            LIT("{\"sku\":\"hz-zero\",\"qty\":0,\"qty\":1}"), X_JSON, 0, NULL);
    k->c[k->n - 1].dupkey = true;
    add_req(k, "duplicate sku: invalid then valid (sellable)", "POST", "/sale", JSON_CT,
            LIT("{\"sku\":\"no way\",\"sku\":\"hz-stock\",\"qty\":1}"), X_JSON, 400, "bad_request");
    add_req(k, "duplicate qty: 0 then 1 (sellable)", "POST", "/sale", JSON_CT,
            LIT("{\"sku\":\"hz-stock\",\"qty\":0,\"qty\":1}"), X_JSON, 400, "bad_request");

    /* Not the shape of a sale. */
    SALE(k, "body null", "null", 400, "bad_request");
    SALE(k, "body []", "[]", 400, "bad_request");
    SALE(k, "body a number", "1", 400, "bad_request");
    SALE(k, "body an array of sales", "[{\"sku\":\"hz-stock\",\"qty\":1}]", 400, "bad_request");
    SALE(k, "body with a comment", "/* c */{\"sku\":\"hz-stock\",\"qty\":1}", 400, "bad_request");
    SALE(k, "body with a trailing NUL", "{\"sku\":\"hz-stock\",\"qty\":1}\0", 400, "bad_request");
    SALE(k, "two objects", "{\"sku\":\"hz-stock\",\"qty\":1}{\"sku\":\"hz-stock\",\"qty\":1}", 400,
         "bad_request");
    SALE(k, "unterminated string", "{\"sku\":\"hz-stock,\"qty\":1}", 400, "bad_request");
    SALE(k, "single quotes", "{'sku':'hz-stock','qty':1}", 400, "bad_request");
    SALE(k, "UTF-16 body", "{\0\"\0s\0k\0u\0\"\0:\0\"\0h\0z\0\"\0}\0", 400, "bad_request");
    SALE(k, "sku in a wrong-case key", "{\"SKU\":\"hz-stock\",\"qty\":1}", 400, "bad_request");
    {
        char *big = repeat("s", 60000);
        char *b = malloc(strlen(big) + 64);
        sprintf(b, "{\"sku\":\"%s\",\"qty\":1}", big);
        add_req(k, "sku of 60,000 bytes", "POST", "/sale", JSON_CT, b, strlen(b), X_JSON, 400,
                "bad_request");
        free(b);
        free(big);
        char *keys = repeat("\"k\":1,", 9000);
        b = malloc(strlen(keys) + 64);
        sprintf(b, "{%s\"qty\":1}", keys);
        add_req(k, "9,000 keys, no sku", "POST", "/sale", JSON_CT, b, strlen(b), X_JSON, 400,
                "bad_request");
        free(b);
        free(keys);
    }

    /* Wrong content types, with a body that would sell. */
    add_req(k, "Content-Type: text/plain", "POST", "/sale", "Content-Type: text/plain\r\n",
            LIT("{\"sku\":\"hz-stock\",\"qty\":1}"), X_JSON, 415, NULL);
    /* form-urlencoded is what `curl -d` sends: tolerated, but never from a
     * browser on another origin (CSRF): that answers 403. */
    add_req(k, "form-urlencoded JSON from a foreign Origin", "POST", "/sale",
            "Content-Type: application/x-www-form-urlencoded\r\nOrigin: https://evil.example\r\n",
            LIT("{\"sku\":\"hz-stock\",\"qty\":1}"), X_JSON, 403, "forbidden_origin");
    add_req(k, "application/json from a foreign Origin", "POST", "/sale",
            JSON_CT "Origin: https://evil.example\r\n",
            LIT("{\"sku\":\"hz-stock\",\"qty\":1}"), X_JSON, 403, "forbidden_origin");
    add_req(k, "Content-Type: multipart/form-data", "POST", "/sale",
            "Content-Type: multipart/form-data; boundary=xyz\r\n",
            LIT("{\"sku\":\"hz-stock\",\"qty\":1}"), X_JSON, 415, NULL);
    add_req(k, "form body sku=...&qty=1", "POST", "/sale",
            "Content-Type: application/x-www-form-urlencoded\r\n", LIT("sku=hz-stock&qty=1"),
            X_JSON, 0, NULL);
    add_req(k, "Content-Type: application/xml", "POST", "/sale", "Content-Type: application/xml\r\n",
            LIT("<sale><sku>hz-stock</sku><qty>1</qty></sale>"), X_JSON, 0, NULL);
    add_req(k, "PUT /admin/stock, text/plain, no token", "PUT", "/admin/stock/" SKU_STOCK,
            "Content-Type: text/plain\r\n", LIT("{\"stock\":777}"), X_JSON, 415, "unsupported_media_type");
}

static void add_path_cases(corpus *k)
{
    add_req(k, "/stock/../admin", "GET", "/stock/../admin", "", NULL, 0, X_JSON, 404, "not_found");
    /* The daemon decodes the path itself (CivetWeb's decoding stops at %00),
     * so an encoded traversal stays inside {sku} and fails its validation. */
    add_req(k, "/stock/%2e%2e%2f", "GET", "/stock/%2e%2e%2f", "", NULL, 0, X_JSON, 400, "bad_request");
    add_req(k, "/stock/%2e%2e/admin/stock/<sku>", "GET", "/stock/%2e%2e/admin/stock/" SKU_STOCK, "",
            NULL, 0, X_JSON, 400, "bad_request");
    add_req(k, "/../../../../etc/passwd", "GET", "/../../../../etc/passwd", "", NULL, 0, X_JSON, 404,
            "not_found");
    add_req(k, "/%2e%2e/%2e%2e/etc/passwd", "GET", "/%2e%2e/%2e%2e/etc/passwd", "", NULL, 0, X_JSON,
            404, "not_found");
    add_req(k, "/stock/..%5c..%5cwin.ini", "GET", "/stock/..%5c..%5cwin.ini", "", NULL, 0, X_JSON,
            0, NULL);
    add_req(k, "PUT /admin/stock/..%2fx, no token", "PUT", "/admin/stock/..%2fx", JSON_CT,
            LIT("{\"stock\":777}"), X_JSON, 0, NULL);
    add_req(k, "PUT /admin/stock/..%2f<sku> with the token", "PUT", "/admin/stock/..%2f" SKU_STOCK,
            JSON_CT "Authorization: Bearer " TOKEN "\r\n", LIT("{\"stock\":777}"), X_JSON, 0, NULL);
    add_req(k, "PUT /admin/stock/%2e%2e with the token", "PUT", "/admin/stock/%2e%2e",
            JSON_CT "Authorization: Bearer " TOKEN "\r\n", LIT("{\"stock\":777}"), X_JSON, 0, NULL);
    add_req(k, "GET /stock/<sku>%00junk", "GET", "/stock/" SKU_STOCK "%00junk", "", NULL, 0, X_JSON,
            0, NULL);
    add_req(k, "GET /stock/%00", "GET", "/stock/%00", "", NULL, 0, X_JSON, 0, NULL);
    add_req(k, "PUT /admin/stock/<sku>%00junk with the token", "PUT",
            "/admin/stock/" SKU_STOCK "%00junk", JSON_CT "Authorization: Bearer " TOKEN "\r\n",
            LIT("{\"stock\":777}"), X_JSON, 0, NULL);
    add_req(k, "DELETE /admin/killswitch/<scope>%00junk with the token", "DELETE",
            "/admin/killswitch/" KS_SCOPE "%00junk", "Authorization: Bearer " TOKEN "\r\n", NULL, 0,
            X_JSON, 0, NULL);
    add_req(k, "POST /sale%00junk", "POST", "/sale%00junk", JSON_CT,
            LIT("{\"sku\":\"hz-stock\",\"qty\":1}"), X_JSON, 400, "bad_request");
    add_req(k, "DELETE /admin/killswitch/..%2f..%2fx with the token", "DELETE",
            "/admin/killswitch/..%2f..%2fx", "Authorization: Bearer " TOKEN "\r\n", NULL, 0, X_JSON,
            0, NULL);
    add_req(k, "GET /stock/ (empty sku)", "GET", "/stock/", "", NULL, 0, X_JSON, 400, "bad_request");
    add_req(k, "GET /stock/<sku>/extra", "GET", "/stock/" SKU_STOCK "/extra", "", NULL, 0, X_JSON,
            400, "bad_request");
    add_req(k, "GET /stock/%zz", "GET", "/stock/%zz", "", NULL, 0, X_JSON, 400, "bad_request");
    add_req(k, "GET /stock/%ff%fe", "GET", "/stock/%ff%fe", "", NULL, 0, X_JSON, 400, "bad_request");
    add_req(k, "GET /stock/%7bx%7d (hash tag)", "GET", "/stock/%7bx%7d", "", NULL, 0, X_JSON, 400,
            "bad_request");
    add_req(k, "GET /stock/* (pattern)", "GET", "/stock/*", "", NULL, 0, X_JSON, 400, "bad_request");
    add_raw(k, "raw UTF-8 in the path",
            LIT("GET /stock/caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    add_raw(k, "control byte in the path",
            LIT("GET /stock/a\x01" "b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            X_CIVET, 400, NULL);
    char *p = repeat("A", 10000), path[10100];
    snprintf(path, sizeof path, "/stock/%s", p);
    add_req(k, "10,000-byte sku in the path", "GET", path, "", NULL, 0, X_JSON, 414, "uri_too_long");
    snprintf(path, sizeof path, "/%s", p);
    add_req(k, "10,000-byte unknown path", "GET", path, "", NULL, 0, X_JSON, 414, "uri_too_long");
    free(p);
    p = repeat("B", 20000);
    char *lp = malloc(20100);
    snprintf(lp, 20100, "/stock/%s", p);
    add_req(k, "20,000-byte path (over 16 KiB)", "GET", lp, "", NULL, 0, X_CIVET, 400, NULL);
    free(lp);
    free(p);
    p = repeat("/..", 3000);
    lp = malloc(9100);
    snprintf(lp, 9100, "/stock%s/admin/reload", p);
    add_req(k, "3,000 dot segments", "POST", lp, "Authorization: Bearer wrong\r\n", NULL, 0, X_JSON,
            401, "unauthorized");
    free(lp);
    free(p);
}

/* Almost-right tokens, against every admin endpoint. */
static void add_auth_cases(corpus *k)
{
    char *long_tok = repeat("t", 10 * 1024);
    char *long_hdr = malloc(strlen(long_tok) + 64);
    sprintf(long_hdr, "Authorization: Bearer %s\r\n", long_tok);
    const struct { const char *what, *hdr; } variants[] = {
        { "no Authorization", "" },
        { "empty Authorization", "Authorization:\r\n" },
        { "'Bearer' alone", "Authorization: Bearer\r\n" },
        { "'Bearer ' and nothing", "Authorization: Bearer \r\n" },
        { "wrong token", "Authorization: Bearer nope\r\n" },
        { "prefix of the token", "Authorization: Bearer test-toke\r\n" },
        { "token + 1 char", "Authorization: Bearer test-tokenx\r\n" },
        { "last char off", "Authorization: Bearer test-tokem\r\n" },
        { "first char off", "Authorization: Bearer uest-token\r\n" },
        { "token upper case", "Authorization: Bearer TEST-TOKEN\r\n" },
        { "scheme 'bearer'", "Authorization: bearer test-token\r\n" },
        { "scheme 'BEARER'", "Authorization: BEARER test-token\r\n" },
        { "two spaces after Bearer", "Authorization: Bearer  test-token\r\n" },
        { "Basic scheme", "Authorization: Basic dGVzdC10b2tlbg==\r\n" },
        { "Token scheme", "Authorization: Token test-token\r\n" },
        { "bare token", "Authorization: test-token\r\n" },
        { "token twice", "Authorization: Bearer test-token test-token\r\n" },
        { "token doubled", "Authorization: Bearer test-tokentest-token\r\n" },
        { "token base64", "Authorization: Bearer dGVzdC10b2tlbg==\r\n" },
        { "token percent-encoded", "Authorization: Bearer test%2Dtoken\r\n" },
        { "token with a comma", "Authorization: Bearer test-token,\r\n" },
        { "comma before the token", "Authorization: Bearer ,test-token\r\n" },
        { "wrong header first, right second",
          "Authorization: Bearer nope\r\nAuthorization: Bearer test-token\r\n" },
        { "X-Authorization", "X-Authorization: Bearer test-token\r\n" },
        { "Proxy-Authorization", "Proxy-Authorization: Bearer test-token\r\n" },
        { "10 KiB token", long_hdr },
    };
    const struct { const char *what, *method, *path, *body; } ends[] = {
        { "PUT /admin/stock", "PUT", "/admin/stock/" SKU_STOCK, "{\"stock\":777}" },
        { "DELETE /admin/killswitch", "DELETE", "/admin/killswitch/" KS_SCOPE, NULL },
        { "POST /admin/killswitch", "POST", "/admin/killswitch",
          "{\"scope\":\"sku:hz-stock\",\"reason\":\"hostile\",\"halt_sales\":true}" },
        { "POST /admin/reload", "POST", "/admin/reload", NULL },
    };
    for (size_t e = 0; e < sizeof ends / sizeof ends[0]; e++) {
        for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
            /* The reload and engage endpoints get a subset (state is the same code). */
            if (e >= 2 && v % 3 != 0)
                continue;
            char name[160], hdrs[11 * 1024];
            snprintf(name, sizeof name, "%s: %s", ends[e].what, variants[v].what);
            snprintf(hdrs, sizeof hdrs, "%s%s", variants[v].hdr, ends[e].body ? JSON_CT : "");
            add_req(k, name, ends[e].method, ends[e].path, hdrs, ends[e].body,
                    ends[e].body ? strlen(ends[e].body) : 0, X_JSON, 401, "unauthorized");
        }
    }
    add_req(k, "PUT /admin/stock: token in the query string", "PUT",
            "/admin/stock/" SKU_STOCK "?token=test-token&access_token=test-token", JSON_CT,
            LIT("{\"stock\":777}"), X_JSON, 401, "unauthorized");
    add_raw(k, "PUT /admin/stock: raw NUL after the token",
            LIT("PUT /admin/stock/hz-stock HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                "Authorization: Bearer test-token\0x\r\nContent-Length: 13\r\n\r\n{\"stock\":777}"),
            X_CIVET, 400, NULL);
    add_raw(k, "PUT /admin/stock: tab after Bearer",
            LIT("PUT /admin/stock/hz-stock HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                "Authorization: Bearer\ttest-token\r\nContent-Length: 13\r\n\r\n{\"stock\":777}"),
            X_CIVET, 400, NULL);
    add_raw(k, "PUT /admin/stock: token folded onto a second line",
            LIT("PUT /admin/stock/hz-stock HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                "Authorization: Bearer\r\n test-token\r\nContent-Length: 13\r\n\r\n{\"stock\":777}"),
            X_JSON, 401, "unauthorized");
    free(long_hdr);
    free(long_tok);
}

static void corpus_free(corpus *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->c[i].name);
        free(k->c[i].data);
    }
    free(k->c);
}

/* --- state ------------------------------------------------------------------------ */

typedef struct snap {
    long long stock, zero, dbsize;
    char kills[1024];           /* the kill records' keys, sorted, with their states */
    char keys[16384];           /* every key, "\nKEY\n" each (to name a new one) */
} snap;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void take_snap(snap *s)
{
    memset(s, 0, sizeof *s);
    s->stock = H_REDIS_STOCK(redis, SKU_STOCK);
    s->zero = H_REDIS_STOCK(redis, SKU_ZERO);
    redisReply *r = h_redis_cmd(redis, "DBSIZE");
    assert_non_null(r);
    s->dbsize = r->integer;
    freeReplyObject(r);
    r = h_redis_cmd(redis, "KEYS *");
    assert_non_null(r);
    for (size_t i = 0; i < r->elements; i++) {
        size_t l = strlen(s->keys);
        snprintf(s->keys + l, sizeof s->keys - l, "\n%s\n", r->element[i]->str);
    }
    freeReplyObject(r);
    r = h_redis_cmd(redis, "KEYS " H_PREFIX "kill*");
    assert_non_null(r);
    char *keys[64];
    size_t n = 0;
    for (size_t i = 0; i < r->elements && n < 64; i++)
        keys[n++] = r->element[i]->str;
    qsort(keys, n, sizeof *keys, cmp_str);
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(s->kills);
        snprintf(s->kills + l, sizeof s->kills - l, "%s ", keys[i]);
    }
    freeReplyObject(r);
}

static bool snap_same(const snap *a, const snap *b, char *why, size_t len)
{
    if (a->stock != b->stock)
        snprintf(why, len, "stock of " SKU_STOCK " changed %lld -> %lld", a->stock, b->stock);
    else if (a->zero != b->zero)
        snprintf(why, len, "stock of " SKU_ZERO " changed %lld -> %lld", a->zero, b->zero);
    else if (strcmp(a->kills, b->kills) != 0)
        snprintf(why, len, "kill switch keys changed [%.200s] -> [%.200s]", a->kills, b->kills);
    else if (a->dbsize != b->dbsize) {
        /* Name the new keys: an asynchronous writer is told from the
         * request's. */
        char added[400] = "";
        redisReply *r = h_redis_cmd(redis, "KEYS *");
        for (size_t i = 0; r && i < r->elements; i++) {
            char k[300];
            snprintf(k, sizeof k, "\n%s\n", r->element[i]->str);
            if (!strstr(a->keys, k) && strlen(added) + strlen(k) < sizeof added)
                snprintf(added + strlen(added), sizeof added - strlen(added), "%s ", k + 1);
        }
        freeReplyObject(r);
        snprintf(why, len, "DBSIZE changed %lld -> %lld (a key was written: %s)", a->dbsize,
                 b->dbsize, added);
    }
    else
        return true;
    return false;
}

/* Put the state back as the corpus expects it after a case changed it. */
static void restore_state(void)
{
    char k[RDS_KEY_MAX];
    redisReply *r = h_redis_cmd(redis, "SET %s %d", h_key(k, "stock", SKU_STOCK), STOCK0);
    freeReplyObject(r);
    r = h_redis_cmd(redis, "SET %s 0", h_key(k, "stock", SKU_ZERO));
    freeReplyObject(r);
}

/* --- running the corpus -------------------------------------------------------------- */

/* A printable excerpt of S (LEN bytes) into OUT. */
static const char *excerpt(const char *s, size_t len, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < outlen; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\r') {
            out[o++] = '\\', out[o++] = 'r';
        } else if (ch == '\n') {
            out[o++] = '\\', out[o++] = 'n';
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    if (o >= outlen)
        o = outlen - 1;
    out[o] = '\0';
    return out;
}

static const char *kind_name(expect_kind k)
{
    return k == X_JSON ? "JSON error from the daemon" : k == X_CIVET ? "CivetWeb's own answer"
                                                                      : "closed without an answer";
}

/* Does R match C's expectation? WHY says what was wrong. */
static bool judge(const hcase *c, const raw_res *r, char *why, size_t len)
{
    switch (c->kind) {
    case X_CLOSED:
        if (r->status == -1 && !r->timed_out)
            return true;
        snprintf(why, len, "expected the connection closed without an answer");
        return false;
    case X_CIVET:
        if (r->status == c->status && !r->json_ct)
            return true;
        snprintf(why, len, "expected CivetWeb's %d", c->status);
        return false;
    case X_JSON: {
        bool st = c->status ? r->status == c->status : (r->status >= 400 && r->status < 500);
        const char *e = h_jstr(r->json, "error"), *m = h_jstr(r->json, "message");
        if (st && r->json_ct && cJSON_IsObject(r->json) && e && *e && m && *m &&
            (c->code == NULL || strcmp(e, c->code) == 0))
            return true;
        if (c->status)
            snprintf(why, len, "expected %d {\"error\":\"%s\",\"message\":...}", c->status,
                     c->code ? c->code : "<any>");
        else
            snprintf(why, len, "expected a 4xx {\"error\":\"%s\",...}", c->code ? c->code : "<any>");
        return false;
    }
    }
    return false;
}

/* GET /healthz answers 200 (a few tries: the daemon may be busy). */
static bool healthy(const h_daemon *d)
{
    for (int i = 0; i < 3; i++) {
        h_resp r;
        long st = h_http(d, "GET", "/healthz", NULL, &r, NULL);
        h_resp_free(&r);
        if (st == 200)
            return true;
        h_nap();
    }
    return false;
}

/* The corpus, built once in main() (every case becomes a cmocka test of its
 * own, named "http/CLASS: case", so a failure names its case), and what the
 * cases found, for the summary. */
static corpus hk;
static struct {
    bool ready;                 /* stock set, kill switch engaged, generation read */
    long long gen0;
    int ran, failures, restarts, by_json, by_civet, closed;
    size_t bytes;
} hs;

/* The state every case starts from: SKU_STOCK at STOCK0, SKU_ZERO at 0 and
 * KS_SCOPE engaged. Done by the first test that needs it (the corpus' first,
 * or a case run alone with CMOCKA_FILTER). */
static void http_prepare(void)
{
    if (hs.ready)
        return;
    H_SET_STOCK(dmn, SKU_STOCK, STOCK0);
    H_SET_STOCK(dmn, SKU_ZERO, 0);
    h_resp r0;
    h_http(dmn, "POST", "/admin/killswitch",
           "{\"scope\":\"" KS_SCOPE "\",\"reason\":\"hostile corpus target\"}", &r0,
           "Authorization: Bearer " TOKEN, NULL);
    assert_int_equal(r0.status, 200);
    h_resp_free(&r0);
    hs.gen0 = H_GENERATION(dmn);
    /* The ledger's reader of the decision log makes its consumer group
     * (XGROUP CREATE ... MKSTREAM) on its own schedule: once the stream
     * exists, the corpus counts keys that only requests write. */
    double dl = h_deadline(10000);
    for (;;) {
        redisReply *r = h_redis_cmd(redis, "EXISTS " H_PREFIX "decisions");
        bool there = r && r->integer == 1;
        freeReplyObject(r);
        if (there)
            break;
        if (!h_before(dl))
            fail_msg("the ledger's group on " H_PREFIX "decisions was not made within 10 s");
        h_nap();
    }
    hs.ready = true;
}

static void test_http_prepare(void **state)
{
    (void)state;
    http_prepare();
    h_pass();
}

/* One hostile request: the answer it must get, the daemon alive afterwards
 * and Redis unchanged. A case that fails puts the state back (and restarts a
 * dead daemon) before failing, so that the next case starts clean. */
static void test_http_case(void **state)
{
    const hcase *c = *state;
    http_prepare();
    size_t i = (size_t)(c - hk.c);
    snap before, after;
    take_snap(&before);
    raw_res r;
    raw_exchange(dmn->port, c->data, c->len, 10000, &r);
    hs.ran++;
    hs.bytes += c->len;
    if (r.status == -1)
        hs.closed++;
    else if (r.json_ct)
        hs.by_json++;
    else
        hs.by_civet++;

    char why[512] = "";
    bool ok = judge(c, &r, why, sizeof why);
    if (ok && c->dupkey) {
        const char *sku = h_jstr(r.json, "sku"), *msg = h_jstr(r.json, "message");
        printf("# duplicate keys, %s: %d %s (%s)\n", c->name, r.status,
               sku ? sku : "", msg ? msg : "");
    }
    if (getenv("NERVE_HOSTILE_VERBOSE")) {
        char got[120];
        excerpt(r.body ? r.body : "", r.body ? strlen(r.body) : 0, got, sizeof got);
        printf("# %3zu %-58.58s -> %s %d %s\n", i + 1, c->name,
               r.status == -1 ? "closed" : r.json_ct ? "json" : "civet", r.status, got);
    }
    bool alive = healthy(dmn);
    char sw[512] = "";
    take_snap(&after);
    bool same = snap_same(&before, &after, sw, sizeof sw);
    if (!ok || !alive || !same) {
        char req[200], got[300];
        excerpt(c->data, c->len < 120 ? c->len : 120, req, sizeof req);
        excerpt(r.raw, r.raw_len < 260 ? r.raw_len : 260, got, sizeof got);
        print_error("hostile #%zu \"%s\": %s%s%s%s%s\n"
                    "    sent %zu bytes: %s%s\n"
                    "    got (%s, %.2f s%s%s): %s\n",
                    i + 1, c->name, ok ? "" : why, !ok && !same ? "; " : "", same ? "" : sw,
                    (!ok || !same) && !alive ? "; " : "",
                    alive ? "" : "THE DAEMON DIED (no /healthz)", c->len, req,
                    c->len > 120 ? "..." : "", r.status == -1 ? "closed" : "answered", r.secs,
                    r.timed_out ? ", timed out" : "", r.reset ? ", reset" : "", got);
        printf("    expected: %s\n", kind_name(c->kind));
    }
    raw_free(&r);
    if (!alive) {
        h_daemon_stop(dmn);     /* reaps it and prints its log tail */
        dmn = start_daemon();
        assert_non_null(dmn);
        dmn->owned = false;     /* the group's daemon: it outlives this test */
        hs.restarts++;
    }
    if (!same) {
        restore_state();
        h_resp rr;
        h_http(dmn, "GET", "/killswitch", NULL, &rr, NULL);
        h_resp_free(&rr);
        if (strstr(after.kills, KS_SCOPE) == NULL) {
            h_http(dmn, "POST", "/admin/killswitch",
                   "{\"scope\":\"" KS_SCOPE "\",\"reason\":\"hostile corpus target\"}", &rr,
                   "Authorization: Bearer " TOKEN, NULL);
            h_resp_free(&rr);
        }
    }
    if (!ok || !alive || !same) {
        hs.failures++;
        fail_msg("hostile #%zu \"%s\": %s%s%s%s%s (details above)", i + 1, c->name,
                 ok ? "" : why, !ok && !same ? "; " : "", same ? "" : sw,
                 (!ok || !same) && !alive ? "; " : "", alive ? "" : "the daemon died");
    }
    h_pass();
}

/* After the corpus: no reload went through, the corpus is big enough, the
 * daemon is alive, and the figures. */
static void test_http_summary(void **state)
{
    (void)state;
    http_prepare();
    long long gen1 = H_GENERATION(dmn);
    printf("# hostile HTTP: %d of %zu requests sent (%zu bytes): %d answered by the daemon "
           "(JSON), %d by CivetWeb itself, %d closed without an answer; %d failed; daemon "
           "restarted %d times\n", hs.ran, hk.n, hs.bytes, hs.by_json, hs.by_civet, hs.closed,
           hs.failures, hs.restarts);
    if (gen1 != hs.gen0 && hs.restarts == 0)
        fail_msg("the rules generation moved from %lld to %lld: a reload went through",
                 hs.gen0, gen1);
    assert_true(hk.n >= 100);
    assert_true(healthy(dmn));
    if (hs.failures)
        fail_msg("%d hostile requests failed (each is its own test above)", hs.failures);
    h_pass();
}

/* --- the bus ------------------------------------------------------------------------------ */

/* The sum of every counter whose name speaks of dropped, oversized or invalid events. */
static double drop_counters(const char *text)
{
    double sum = 0;
    for (const char *p = text; p && *p; ) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (*p != '#' && len > 0) {
            char name[256];
            size_t n = strcspn(p, "{ ");
            snprintf(name, sizeof name, "%.*s", (int)(n < len ? n : len), p);
            if ((strstr(name, "drop") || strstr(name, "oversize") || strstr(name, "too_large") ||
                 strstr(name, "invalid") || strstr(name, "reject")) && strstr(name, "event")) {
                const char *v = memchr(p, '}', len);
                v = v ? v + 1 : p + n;
                sum += strtod(v, NULL);
            }
        }
        p = eol ? eol + 1 : NULL;
    }
    return sum;
}

static long long probe_evaluations(const h_daemon *d)
{
    return h_rule_stat(d, "hostile_probe", "evaluations");
}

static void publish_bin(const char *channel, const char *data, size_t len)
{
    redisReply *r = h_redis_cmd(redis, "PUBLISH %s %b", channel, data, len);
    if (r == NULL || r->type != REDIS_REPLY_INTEGER)
        fail_msg("PUBLISH %s (%zu bytes) failed", channel, len);
    if (r->integer < 1)
        fail_msg("PUBLISH %s (%zu bytes): nobody subscribed", channel, len);
    freeReplyObject(r);
}

/* Publish a valid marker and wait until the probe rule evaluated WANT events:
 * everything published before has then been through the bus. */
static void sync_bus(const h_daemon *d, long long want)
{
    publish_bin("test_events", "{\"marker\":true}", 15);
    double dl = h_deadline(10000);
    long long v = -1;
    while (h_before(dl) && (v = probe_evaluations(d)) < want)
        h_nap();
    if (v != want)
        fail_msg("hostile_probe evaluations: expected %lld, got %lld", want, v);
}

typedef struct bus_case {
    const char *what;
    const char *data;
    size_t len;
} bus_case;

/* A bus case from a literal (NUL bytes allowed). */
#define BC(what, lit) ((bus_case){ (what), (lit), sizeof(lit) - 1 })

/* Messages published by the bus tests, for the last one's summary line. */
static struct {
    int sent;
    size_t invalid, odd;
} bs;

/* LEN bytes of xorshift noise from SEED into OUT. */
static void noise_fill(char *out, size_t len, unsigned x)
{
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        out[i] = (char)(x & 0xff);
    }
}

#define OBJ_BIG (2 << 20)

/* A 2 MiB - 1 byte JSON object {"kill":"hostile:oversized","pad":"ppp..."},
 * malloc'd, OBJ_BIG - 1 bytes (and its NUL). */
static char *big_kill_object(void)
{
    char *obj = malloc(OBJ_BIG);
    assert_non_null(obj);
    size_t ol = (size_t)snprintf(obj, 64, "{\"kill\":\"hostile:oversized\",\"pad\":\"");
    memset(obj + ol, 'p', OBJ_BIG - ol - 3);
    memcpy(obj + OBJ_BIG - 3, "\"}", 3);
    return obj;
}

/* 1. Over bus.max_event_bytes (64 KiB by default): dropped, and counted. */
static void test_bus_oversized(void **state)
{
    (void)state;
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    const h_daemon *d = dmn;
    long long ev0 = probe_evaluations(d);
    assert_true(ev0 >= 0);
    char *m0 = H_METRICS(d);
    double inv0 = h_metric(m0, "nerve_events_invalid_total", NULL), drop0 = drop_counters(m0);
    if (inv0 < 0)
        fail_msg("/metrics has no nerve_events_invalid_total");

    size_t big = (1 << 20) + 1;
    char *junk = malloc(big);
    assert_non_null(junk);
    memset(junk, 'x', big);
    publish_bin("test_events", junk, big);
    char *obj = big_kill_object();
    publish_bin("test_events", obj, OBJ_BIG - 1);
    bs.sent += 2;
    sync_bus(d, ev0 + 1);
    char *m1 = H_METRICS(d);
    double drop1 = drop_counters(m1), inv1 = h_metric(m1, "nerve_events_invalid_total", NULL);
    bool oversized_counted = drop1 - drop0 >= 2;
    if (!oversized_counted)
        print_error("2 events over bus.max_event_bytes (1 MiB + 1 and 2 MiB) were dropped but no "
                    "counter in /metrics moved (dropped/oversized/invalid event counters: "
                    "%.0f -> %.0f, nerve_events_invalid_total %.0f -> %.0f)\n",
                    drop0, drop1, inv0, inv1);
    free(junk);
    free(obj);
    free(m0);
    free(m1);
    if (!oversized_counted)
        fail_msg("oversized bus events are not counted in /metrics (see above)");
    h_pass();
}

/* 2. Events that are not one JSON object: each counted as invalid. */
static void test_bus_invalid(void **state)
{
    (void)state;
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    const h_daemon *d = dmn;
    long long ev0 = probe_evaluations(d);
    assert_true(ev0 >= 0);
    char *m1 = H_METRICS(d);
    double inv1 = h_metric(m1, "nerve_events_invalid_total", NULL);
    if (inv1 < 0)
        fail_msg("/metrics has no nerve_events_invalid_total");

    bus_case bad[32];
    size_t nb = 0;
    char noise[300];
    noise_fill(noise, sizeof noise, 88172645u);
    bad[nb++] = (bus_case){ "binary noise", noise, sizeof noise };
    char *deep_a = nest("{\"a\":", "[", 10000, "", "]", "}");
    bad[nb++] = (bus_case){ "10,000 nested arrays", deep_a, strlen(deep_a) };
    char *deep_o = nest("", "{\"a\":", 10000, "1", "}", "");
    bad[nb++] = (bus_case){ "10,000 nested objects", deep_o, strlen(deep_o) };
    char *deep_33 = nest("{\"kill\":\"hostile:deep33\",\"a\":", "[", 40, "", "]", "}");
    bad[nb++] = (bus_case){ "40 nested arrays (over the rules' depth limit)", deep_33,
                            strlen(deep_33) };
    bad[nb++] = BC("an array", "[{\"kill\":\"hostile:array\"}]");
    bad[nb++] = BC("a number", "42");
    bad[nb++] = BC("a string", "\"kill\"");
    bad[nb++] = BC("null", "null");
    bad[nb++] = BC("true", "true");
    bad[nb++] = BC("empty message", "");
    bad[nb++] = BC("object + NUL + junk", "{\"a\":1}\0junk");
    bad[nb++] = BC("object + junk", "{\"a\":1}junk");
    bad[nb++] = BC("two objects", "{\"a\":1}{\"b\":2}");
    bad[nb++] = BC("unterminated", "{\"kill\":\"hostile:unterminated\"");
    bad[nb++] = BC("single quotes", "{'kill':'hostile:quotes'}");
    bad[nb++] = BC("NaN", "{\"n\":NaN}");
    bad[nb++] = BC("lone surrogate escape", "{\"s\":\"\\udc00\"}");
    bad[nb++] = BC("UTF-16", "{\0\"\0a\0\"\0:\0\x31\0}\0");
    for (size_t i = 0; i < nb; i++)
        publish_bin("test_events", bad[i].data, bad[i].len);
    bs.sent += (int)nb;
    bs.invalid = nb;
    sync_bus(d, ev0 + 1);
    char *m2 = H_METRICS(d);
    double inv2 = h_metric(m2, "nerve_events_invalid_total", NULL);
    int inv_fail = inv2 - inv1 != (double)nb;
    if (inv_fail)
        print_error("%zu invalid events published: nerve_events_invalid_total %.0f -> %.0f "
                    "(expected +%zu)\n", nb, inv1, inv2, nb);
    free(m1);
    free(m2);
    free(deep_a);
    free(deep_o);
    free(deep_33);
    assert_int_equal(inv_fail, 0);
    h_pass();
}

/* 3. Odd but valid objects: evaluated, not counted as invalid. */
static void test_bus_odd_valid(void **state)
{
    (void)state;
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    const h_daemon *d = dmn;
    long long ev0 = probe_evaluations(d);
    assert_true(ev0 >= 0);
    char *m2 = H_METRICS(d);
    double inv2 = h_metric(m2, "nerve_events_invalid_total", NULL);
    if (inv2 < 0)
        fail_msg("/metrics has no nerve_events_invalid_total");

    bus_case odd[16];
    size_t no = 0;
    odd[no++] = BC("invalid UTF-8 in a string", "{\"s\":\"\xff\xfe\xc0\xaf\"}");
    odd[no++] = BC("invalid UTF-8 in a key", "{\"\xff\":1}");
    odd[no++] = BC("\\u0000 in a string", "{\"s\":\"a\\u0000b\"}");
    odd[no++] = BC("1e400", "{\"n\":1e400}");
    odd[no++] = BC("-1e400 and 1e-400", "{\"n\":-1e400,\"m\":1e-400}");
    odd[no++] = BC("2^64", "{\"n\":18446744073709551616}");
    odd[no++] = BC("duplicate keys", "{\"kill\":1,\"kill\":\"hostile:dup\"}");
    odd[no++] = BC("kill scope with invalid UTF-8", "{\"kill\":\"hostile:\xff\xfe\"}");
    odd[no++] = BC("empty kill scope", "{\"kill\":\"\"}");
    char *keys = repeat("\"k\":1,", 9000);
    char *many = malloc(strlen(keys) + 16);
    assert_non_null(many);
    sprintf(many, "{%s\"z\":0}", keys);
    odd[no++] = (bus_case){ "9,000 keys", many, strlen(many) };
    char *longs = repeat("s", 60000);
    char *ls = malloc(strlen(longs) + 16);
    assert_non_null(ls);
    sprintf(ls, "{\"s\":\"%s\"}", longs);
    odd[no++] = (bus_case){ "a 60 KB string", ls, strlen(ls) };
    for (size_t i = 0; i < no; i++)
        publish_bin("test_events", odd[i].data, odd[i].len);
    bs.sent += (int)no;
    bs.odd = no;
    sync_bus(d, ev0 + 1 + (long long)no);
    char *m3 = H_METRICS(d);
    double inv3 = h_metric(m3, "nerve_events_invalid_total", NULL);
    free(m2);
    free(m3);
    free(keys);
    free(many);
    free(longs);
    free(ls);
    if (inv3 != inv2)
        fail_msg("odd but valid events counted as invalid: %.0f -> %.0f", inv2, inv3);
    h_pass();
}

/* 4. Garbage on the fleet control channel: the daemon lives on. */
static void test_bus_control_garbage(void **state)
{
    (void)state;
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    const char *ctl = H_PREFIX "control";
    char noise[300];
    noise_fill(noise, sizeof noise, 88172645u);
    char *deep_o = nest("", "{\"a\":", 10000, "1", "}", "");
    char *obj = big_kill_object();
    publish_bin(ctl, noise, sizeof noise);
    publish_bin(ctl, deep_o, strlen(deep_o));
    publish_bin(ctl, obj, OBJ_BIG - 1);
    publish_bin(ctl, "{\"op\":\"engage\",\"scope\":\"\xff\xfe\",\"halt_sales\":true}", 45);
    publish_bin(ctl, "{\"op\":\"reset\"}", 14);
    publish_bin(ctl, "[]", 2);
    bs.sent += 6;
    free(deep_o);
    free(obj);
    /* The control messages are read by the bus thread that also reads
     * test_events: once an event published after them is evaluated, they
     * have all been handled. */
    sync_bus(dmn, probe_evaluations(dmn) + 1);
    assert_int_equal(h_daemon_alive(dmn), 1);
    assert_true(healthy(dmn));
    h_pass();
}

/* 5. Still alive, still evaluating, still deciding, still selling. */
static void test_bus_after(void **state)
{
    (void)state;
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    publish_bin("test_events", "{\"kill\":\"hostile:after\"}", 24);
    bs.sent++;
    double dl = h_deadline(10000);
    bool engaged = false;
    while (!engaged && h_before(dl)) {
        redisReply *r = h_redis_cmd(redis, "EXISTS " H_PREFIX "kill:hostile:after");
        engaged = r && r->integer == 1;
        freeReplyObject(r);
        if (!engaged)
            h_nap();
    }
    printf("# hostile bus: %d messages published (%zu invalid, %zu odd but valid, 2 oversized, "
           "6 on the control channel)\n", bs.sent, bs.invalid, bs.odd);
    assert_int_equal(h_daemon_alive(dmn), 1);
    assert_true(healthy(dmn));
    h_resp r;
    h_http(dmn, "GET", "/killswitch", NULL, &r, NULL);
    if (r.status != 200 || !cJSON_IsObject(r.json))
        fail_msg("GET /killswitch after the hostile events: %ld %.200s", r.status, r.body);
    h_resp_free(&r);
    /* The oversized event's kill must not have been acted on. */
    redisReply *rr = h_redis_cmd(redis, "EXISTS " H_PREFIX "kill:hostile:oversized");
    assert_non_null(rr);
    assert_int_equal(rr->integer, 0);
    freeReplyObject(rr);
    rr = h_redis_cmd(redis, "EXISTS " H_PREFIX "kill:hostile:array");
    assert_int_equal(rr->integer, 0);
    freeReplyObject(rr);
    if (!engaged)
        fail_msg("a valid kill event after the hostile ones was not acted on within 10 s");
    /* ...and its decision is in the decision log. One writer thread writes
     * the log in order, so every earlier event's record is there too, and
     * nothing of the bus tests is left to write while the HTTP corpus
     * counts Redis' keys. */
    bool logged = false;
    while (!logged && h_before(dl)) {
        h_resp d;
        logged = h_http(dmn, "GET", "/decisions?scope=hostile:after&limit=1", NULL, &d, NULL) ==
                     200 &&
                 cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(d.json, "decisions")) == 1;
        h_resp_free(&d);
        if (!logged)
            h_nap();
    }
    if (!logged)
        fail_msg("the kill of hostile:after is not in GET /decisions within 10 s");
    /* Sales still work. */
    H_SET_STOCK(dmn, "hz-bus", 1);
    assert_int_equal(h_sale(dmn, "/sale", "hz-bus", 1, NULL, &r), 200);
    h_resp_free(&r);
    h_pass();
}

/* --- main ------------------------------------------------------------------------------------ */

/* The group's redis and daemon (h_group_use in main), once the rules are
 * there for it. */
static int group_setup(void **state)
{
    H_RULES_DIR("hostile-rules", "probe.lua", PROBE_RULE, NULL, 0, rules_set, sizeof rules_set);
    return h_group_setup(state);
}

static int group_teardown(void **state)
{
    int rc = h_group_teardown(state);
    corpus_free(&hk);
    return rc;
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

/* Add the cases of one class, their names prefixed "http/CLASS: ". */
static void add_class(corpus *k, const char *cls, void (*add)(corpus *))
{
    size_t from = k->n;
    add(k);
    for (size_t i = from; i < k->n; i++) {
        char *name = malloc(strlen(cls) + strlen(k->c[i].name) + 16);
        assert_non_null(name);
        sprintf(name, "http/%s: %s", cls, k->c[i].name);
        free(k->c[i].name);
        k->c[i].name = name;
    }
}

int main(void)
{
    add_class(&hk, "protocol", add_protocol_cases);
    add_class(&hk, "header", add_header_cases);
    add_class(&hk, "body", add_body_cases);
    add_class(&hk, "path", add_path_cases);
    add_class(&hk, "auth", add_auth_cases);
    const struct CMUnitTest bus[] = {
        T(test_bus_oversized),
        T(test_bus_invalid),
        T(test_bus_odd_valid),
        T(test_bus_control_garbage),
        T(test_bus_after),
    };
    size_t nbus = sizeof bus / sizeof bus[0], n = 0;
    struct CMUnitTest *tests = calloc(hk.n + nbus + 2, sizeof *tests);
    assert_non_null(tests);
    tests[n++] = (struct CMUnitTest)T(test_http_prepare);
    for (size_t i = 0; i < hk.n; i++)
        tests[n++] = (struct CMUnitTest){
            .name = hk.c[i].name, .test_func = test_http_case, .setup_func = h_test_setup,
            .teardown_func = h_test_teardown, .initial_state = &hk.c[i],
        };
    tests[n++] = (struct CMUnitTest)T(test_http_summary);
    for (size_t i = 0; i < nbus; i++)
        tests[n++] = bus[i];
    const char *filter = getenv("CMOCKA_FILTER");     /* this cmocka does not read it */
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    h_group_use(&redis, &dmn, daemon_sets);
    int rc = _cmocka_run_group_tests("hostile", tests, n, group_setup, group_teardown);
    free(tests);
    return rc;
}
