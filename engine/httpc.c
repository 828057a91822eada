/* httpc.c -- the HTTP/1.1 client of `nerve stress` and of the commands that
 * talk to a running daemon (see httpc.h).
 *
 * Three pieces: URL parsing and resolution; an incremental response parser
 * shared by the load loop (which feeds it whatever recv() returned so far)
 * and the blocking client; and that blocking client, a one-shot request on a
 * fresh connection with one overall deadline, for the handful of setup and
 * verification calls around a run. Plain sockets: the load generator owns
 * its event loop and a library's would only stand in the way.
 */
#include "nerve/httpc.h"

#include "nerve/clock.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <stdint.h>
#include <unistd.h>

#define HEAD_MAX (64 * 1024) /* status line + headers */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- URLs ------------------------------------------------------------------------ */

int httpc_url_parse(const char *s, httpc_url *u, char *err, size_t errlen) {
    memset(u, 0, sizeof *u);
    if (strncasecmp(s, "https://", 8) == 0) {
        set_err(err, errlen,
                "--url: https is not supported; expected http://HOST:PORT, got '%.200s'", s);
        return -1;
    }
    if (strncasecmp(s, "http://", 7) != 0) goto bad;
    const char *h = s + 7, *hend, *p;
    if (*h == '[') {
        hend = strchr(h, ']');
        if (!hend || hend == h + 1) goto bad;
        p = hend + 1;
        h++;
    } else {
        hend = h + strcspn(h, ":/");
        p = hend;
    }
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl >= sizeof u->host) goto bad;
    for (size_t i = 0; i < hl; i++)
        if (!isalnum((unsigned char)h[i]) && !strchr(".-_:%", h[i])) goto bad;
    memcpy(u->host, h, hl);
    u->port = 80;
    if (*p == ':') {
        char *end;
        errno = 0;
        long long port = strtoll(p + 1, &end, 10);
        if (end == p + 1 || !isdigit((unsigned char)p[1]) || errno == ERANGE || port < 1 ||
            port > 65535) {
            set_err(err, errlen,
                    "--url: port must be 1..65535 in '%.200s'; expected http://HOST:PORT", s);
            return -1;
        }
        u->port = (int)port;
        p = end;
    }
    if (*p && *p != '/') goto bad;
    if (*p == '/') p++;
    if (*p) {
        set_err(err, errlen, "--url: expected http://HOST:PORT without a path, got '%.200s'", s);
        return -1;
    }
    size_t bl = (size_t)(p - s);
    while (bl > 0 && s[bl - 1] == '/') bl--;
    if (bl >= sizeof u->base) goto bad;
    memcpy(u->base, s, bl);
    if (strchr(u->host, ':'))
        snprintf(u->hostport, sizeof u->hostport, "[%s]:%d", u->host, u->port);
    else
        snprintf(u->hostport, sizeof u->hostport, "%s:%d", u->host, u->port);
    return 0;
bad:
    set_err(err, errlen, "--url: expected http://HOST:PORT, got '%.200s'", s);
    return -1;
}

int httpc_url_resolve(httpc_url *u, char *err, size_t errlen) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof port, "%d", u->port);
    int rc = getaddrinfo(u->host, port, &hints, &res);
    if (rc != 0 || !res) {
        set_err(err, errlen, "cannot resolve %s: %s", u->host,
                rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        if (res) freeaddrinfo(res);
        return -1;
    }
    memcpy(&u->addr, res->ai_addr, res->ai_addrlen);
    u->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* ---- the response parser --------------------------------------------------------- */

/* Does header line [L, E) have name NAME? Then *V points at its value. */
static bool header_is(const char *l, const char *e, const char *name, const char **v) {
    size_t n = strlen(name);
    if ((size_t)(e - l) <= n || l[n] != ':' || strncasecmp(l, name, n) != 0) return false;
    const char *p = l + n + 1;
    while (p < e && (*p == ' ' || *p == '\t')) p++;
    *v = p;
    return true;
}

/* Whether the comma-separated value [V, E) holds TOKEN (case-insensitive). */
static bool value_has(const char *v, const char *e, const char *token) {
    size_t n = strlen(token);
    for (const char *p = v; p + n <= e; p++)
        if (strncasecmp(p, token, n) == 0) return true;
    return false;
}

/* Walk the chunked body at [P, END). Returns 1 when complete (*TOTAL: bytes
 * of the encoded body incl. the trailer, *DECODED: the payload size), 0
 * incomplete, -1 malformed. DECODE: also compact the payload to P. */
static int chunked(char *p, const char *end, bool decode, size_t *total, size_t *decoded, char *err,
                   size_t errlen) {
    char *start = p, *w = p;
    size_t out = 0;
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) return (end - p) > 64 ? (set_err(err, errlen, "bad chunk size line"), -1) : 0;
        char *e;
        errno = 0;
        unsigned long long sz = strtoull(p, &e, 16);
        if (e == p || errno == ERANGE || sz > HTTPC_RESP_MAX ||
            (*e != '\r' && *e != ';' && *e != '\n')) {
            set_err(err, errlen, "bad chunk size");
            return -1;
        }
        p = (char *)nl + 1;
        if (sz == 0) {
            /* Trailer: lines until an empty one. */
            for (;;) {
                const char *t = memchr(p, '\n', (size_t)(end - p));
                if (!t) return 0;
                bool empty = t == p || (t == p + 1 && *p == '\r');
                p = (char *)t + 1;
                if (empty) break;
            }
            *total = (size_t)(p - start);
            *decoded = out;
            return 1;
        }
        if ((size_t)(end - p) < sz + 2) return 0;
        if (decode) memmove(w, p, sz);
        w += sz;
        out += sz;
        p += sz;
        if (*p == '\r') p++;
        if (*p != '\n') {
            set_err(err, errlen, "chunk not followed by CRLF");
            return -1;
        }
        p++;
    }
}

int httpc_parse(char *buf, size_t len, bool eof, httpc_resp *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    const char *hend = NULL;
    for (size_t i = 3; i < len; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r') {
            hend = buf + i + 1;
            break;
        }
    if (!hend) {
        if (len > HEAD_MAX) return set_err(err, errlen, "response headers too large"), -1;
        if (eof)
            return set_err(err, errlen,
                           len ? "connection closed in the middle of the response headers"
                               : "connection closed by the server before an answer"),
                   -1;
        return 0;
    }
    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)buf[7]) ||
        buf[8] != ' ' || !isdigit((unsigned char)buf[9]) || !isdigit((unsigned char)buf[10]) ||
        !isdigit((unsigned char)buf[11]))
        return set_err(err, errlen, "not an HTTP/1.x response"), -1;
    r->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    bool http10 = buf[7] == '0', keep_alive = false, is_chunked = false;
    long long clen = -1;
    const char *l = memchr(buf, '\n', (size_t)(hend - buf)) + 1;
    while (l < hend) {
        const char *e = memchr(l, '\n', (size_t)(hend - l));
        const char *le = e > l && e[-1] == '\r' ? e - 1 : e;
        const char *v;
        if (header_is(l, le, "Content-Length", &v)) {
            char *end;
            errno = 0;
            clen = strtoll(v, &end, 10);
            if (end == v || errno == ERANGE || clen < 0 || clen > HTTPC_RESP_MAX)
                return set_err(err, errlen, "bad Content-Length"), -1;
        } else if (header_is(l, le, "Transfer-Encoding", &v)) {
            is_chunked = value_has(v, le, "chunked");
        } else if (header_is(l, le, "Connection", &v)) {
            if (value_has(v, le, "close")) r->close = true;
            if (value_has(v, le, "keep-alive")) keep_alive = true;
        }
        l = e + 1;
    }
    if (http10 && !keep_alive) r->close = true;
    char *body = (char *)hend;
    size_t head = (size_t)(hend - buf), avail = len - head;
    if (r->status < 200 || r->status == 204 || r->status == 304) {
        r->body = body;
        r->total = head;
        return 1;
    }
    if (is_chunked) {
        size_t total, decoded;
        int c = chunked(body, buf + len, false, &total, &decoded, err, errlen);
        if (c == 0 && eof)
            return set_err(err, errlen, "connection closed in the middle of the body"), -1;
        if (c <= 0) return c;
        chunked(body, buf + len, true, &total, &decoded, err, errlen);
        r->body = body;
        r->body_len = decoded;
        r->total = head + total;
        return 1;
    }
    if (clen >= 0) {
        if (avail < (size_t)clen) {
            if (eof) return set_err(err, errlen, "connection closed in the middle of the body"), -1;
            return 0;
        }
        r->body = body;
        r->body_len = (size_t)clen;
        r->total = head + (size_t)clen;
        return 1;
    }
    /* Neither: the body runs until the server closes. */
    r->close = true;
    if (!eof) return 0;
    r->body = body;
    r->body_len = avail;
    r->total = len;
    return 1;
}

/* ---- the blocking client ------------------------------------------------------------- */

static int remaining_ms(uint64_t deadline) {
    uint64_t now = clock_now_ns();
    return now >= deadline ? 0 : (int)((deadline - now) / 1000000u) + 1;
}

/* Wait for EVENTS on FD until DEADLINE. 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, uint64_t deadline) {
    for (;;) {
        int ms = remaining_ms(deadline);
        if (ms == 0) return 0;
        struct pollfd p = { .fd = fd, .events = events, .revents = 0 };
        int n = poll(&p, 1, ms);
        if (n < 0 && errno == EINTR) continue;
        return n < 0 ? -1 : n > 0;
    }
}

static int transport_error(httpc_reply *out, int errnum, const char *what) {
    out->status = 0;
    out->errnum = errnum;
    if (errnum == ETIMEDOUT)
        snprintf(out->err, sizeof out->err, "%s: timed out", what);
    else if (errnum)
        snprintf(out->err, sizeof out->err, "%s: %s", what, strerror(errnum));
    else
        snprintf(out->err, sizeof out->err, "%s", what);
    return 0;
}

int httpc_request(const httpc_url *u, const char *method, const char *path, const char *token,
                  const char *body, int timeout_ms, httpc_reply *out) {
    memset(out, 0, sizeof *out);
    uint64_t deadline = clock_now_ns() + (uint64_t)timeout_ms * 1000000u;
    size_t bl = body ? strlen(body) : 0;
    size_t cap = strlen(method) + strlen(path) + strlen(u->hostport) + (token ? strlen(token) : 0) +
                 bl + 256;
    char *req = malloc(cap);
    if (!req) return transport_error(out, ENOMEM, "request");
    int n = snprintf(req, cap,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: nerve-stress\r\n"
                     "Accept: application/json\r\nConnection: close\r\n%s%s%s%s"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, path, u->hostport, token ? "Authorization: Bearer " : "",
                     token ? token : "", token ? "\r\n" : "",
                     body ? "Content-Type: application/json\r\n" : "", bl, body ? body : "");
    int fd = socket(u->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        free(req);
        return transport_error(out, e, "socket");
    }
    char *buf = NULL;
    size_t len = 0, bcap = 0;
    int e = 0;
    const char *what = "connect";
    if (connect(fd, (const struct sockaddr *)&u->addr, u->addrlen) != 0) {
        if (errno != EINPROGRESS) {
            e = errno;
            goto fail;
        }
        int w = wait_fd(fd, POLLOUT, deadline);
        socklen_t sl = sizeof e;
        if (w <= 0) {
            e = w == 0 ? ETIMEDOUT : errno;
            goto fail;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) != 0) e = errno;
        if (e) goto fail;
    }
    what = "send";
    for (size_t off = 0; off < (size_t)n;) {
        ssize_t w = send(fd, req + off, (size_t)n - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int ready = wait_fd(fd, POLLOUT, deadline);
            if (ready > 0) continue;
            e = ready == 0 ? ETIMEDOUT : errno;
        } else {
            e = errno;
        }
        goto fail;
    }
    what = "receive";
    for (;;) {
        if (len + 4096 + 1 > bcap) {
            size_t nc = bcap ? bcap * 2 : 8192;
            if (nc > HTTPC_RESP_MAX + HEAD_MAX) {
                what = "response too large";
                goto fail;
            }
            char *nb = realloc(buf, nc);
            if (!nb) {
                e = ENOMEM;
                goto fail;
            }
            buf = nb;
            bcap = nc;
        }
        ssize_t got = recv(fd, buf + len, bcap - len - 1, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int ready = wait_fd(fd, POLLIN, deadline);
            if (ready > 0) continue;
            e = ready == 0 ? ETIMEDOUT : errno;
            goto fail;
        }
        if (got < 0) {
            e = errno;
            goto fail;
        }
        len += (size_t)got;
        httpc_resp r;
        char perr[128];
        int pr = httpc_parse(buf, len, got == 0, &r, perr, sizeof perr);
        if (pr < 0) {
            transport_error(out, 0, perr);
            goto done;
        }
        if (pr == 1) {
            out->status = r.status;
            out->body = malloc(r.body_len + 1);
            if (!out->body) {
                e = ENOMEM;
                goto fail;
            }
            memcpy(out->body, r.body, r.body_len);
            out->body[r.body_len] = 0;
            out->len = r.body_len;
            goto done;
        }
    }
fail:
    transport_error(out, e, what);
done:
    close(fd);
    free(buf);
    free(req);
    return out->status;
}

void httpc_reply_free(httpc_reply *r) {
    if (!r) return;
    free(r->body);
    r->body = NULL;
    r->len = 0;
}
