/* stress_load.c -- the load generator of `nerve stress`.
 *
 * R->threads worker threads, each with its own epoll instance and its own
 * share of the R->clients keep-alive connections (nothing on the hot path is
 * shared but three relaxed counters for the progress line and the request
 * index dispenser). Every connection carries at most one request at a time:
 * it takes the next index from R->next, sends POST /sale with the order_id
 * "st-<run_id>-<index>", waits for the whole answer, records it, and takes
 * the next index -- so C connections mean C requests in flight, which is
 * what a sale endpoint sees from C real clients.
 *
 * Bounds: an index is handed out only while it is below R->requests (or
 * before R->deadline_ns in duration mode) and R->stop is clear; a request
 * that gets no answer within R->timeout_ms fails; a failed connection waits
 * BACKOFF_MS before it reconnects, and each failure uses up a request index,
 * so a dead server ends a counted run quickly instead of spinning.
 */
#include "stress_int.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define BACKOFF_MS 20
#define READ_CHUNK 16384
#define REQ_MAX    1024

enum { C_IDLE, C_CONNECTING, C_SENDING, C_READING, C_BACKOFF, C_DONE };

typedef struct conn {
    int fd;  /* -1 when not connected */
    int url; /* index into run->urls */
    int state;
    long long idx; /* request in flight, -1 none */
    int sku;
    uint64_t t0;       /* request start (or connect start before the first) */
    uint64_t retry_at; /* C_BACKOFF: when to go on */
    bool want_out;     /* EPOLLOUT registered */
    char req[REQ_MAX];
    size_t req_len, req_off;
    char *buf;
    size_t len, cap;
} conn;

typedef struct worker {
    stress_run *run;
    stress_stats *st;
    conn *conns;
    int nconns;
    int active;  /* connections not C_DONE */
    int backoff; /* connections in C_BACKOFF */
    int ep;
    pthread_t tid;
    bool started;
} worker;

static worker *workers; /* [run->threads]: one run per process */

/* ---- recording ---------------------------------------------------------------- */

static void push_latency(stress_stats *st, uint64_t ns) {
    uint64_t us = (ns + 500) / 1000;
    st->nlat++;
    if (us < STRESS_HIST_US) {
        st->hist[us]++;
        return;
    }
    if (st->nslow == st->capslow) {
        size_t nc = st->capslow ? st->capslow * 2 : 1024;
        uint32_t *n = realloc(st->slow_us, nc * sizeof *n);
        if (!n) {
            st->nlat--;
            st->lat_dropped++;
            return;
        }
        st->slow_us = n;
        st->capslow = nc;
    }
    st->slow_us[st->nslow++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

void stress_order_id(const stress_run *r, long long idx, char *out, size_t len) {
    snprintf(out, len, "st-%s-%lld", r->run_id, idx);
}

static void add_pending(stress_stats *st, const conn *c) {
    if (st->npending == st->cappending) {
        size_t nc = st->cappending ? st->cappending * 2 : 256;
        stress_pending *n = nc <= (1u << 24) ? realloc(st->pending, nc * sizeof *n) : NULL;
        if (!n) {
            st->pending_lost++;
            return;
        }
        st->pending = n;
        st->cappending = nc;
    }
    st->pending[st->npending++] = (stress_pending){ c->idx, c->url };
}

/* A 200: does it answer its own request, and what did it sell? */
static void check_ok(worker *w, const conn *c, const char *body, size_t len) {
    stress_stats *st = w->st;
    const stress_run *r = w->run;
    char want[64];
    stress_order_id(r, c->idx, want, sizeof want);
    cJSON *o = cJSON_ParseWithLength(body, len);
    const cJSON *oid = cJSON_GetObjectItemCaseSensitive(o, "order_id");
    const cJSON *sku = cJSON_GetObjectItemCaseSensitive(o, "sku");
    const cJSON *qty = cJSON_GetObjectItemCaseSensitive(o, "qty");
    const cJSON *left = cJSON_GetObjectItemCaseSensitive(o, "stock_remaining");
    bool dup = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "duplicate"));
    long long q = cJSON_IsNumber(qty) ? (long long)qty->valuedouble : r->qty;
    if (!cJSON_IsString(oid) || strcmp(oid->valuestring, want) != 0 || !cJSON_IsString(sku) ||
        strcmp(sku->valuestring, r->skus[c->sku]) != 0 || !cJSON_IsNumber(qty) || q != r->qty) {
        if (st->mismatched++ == 0)
            snprintf(st->first_mismatch, sizeof st->first_mismatch,
                     "sent order_id %s sku %s qty %lld, got %.*s", want, r->skus[c->sku], r->qty,
                     (int)(len > 120 ? 120 : len), body);
    }
    if (dup)
        st->duplicates++;
    else
        st->sold[c->sku] += q;
    if (cJSON_IsNumber(left)) {
        long long s = (long long)left->valuedouble;
        if (s < st->min_remaining) st->min_remaining = s;
        if (s < 0) st->negative++;
    }
    cJSON_Delete(o);
}

static void record_answer(worker *w, conn *c, const httpc_resp *resp) {
    stress_stats *st = w->st;
    push_latency(st, clock_now_ns() - c->t0);
    st->requests++;
    st->by_status[resp->status < 600 ? resp->status : 599]++;
    int s = resp->status;
    if (s == 200) check_ok(w, c, resp->body, resp->body_len);
    if (s == 503) add_pending(st, c);
    if (s != 200 && s != 409 && s != 422 && s != 423 && s != 503) {
        if (!st->first_error[0])
            snprintf(st->first_error, sizeof st->first_error, "HTTP %d: %.*s", s,
                     (int)(resp->body_len > 160 ? 160 : resp->body_len), resp->body);
        atomic_fetch_add_explicit(&w->run->failed, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&w->run->done, 1, memory_order_relaxed);
    c->idx = -1;
}

static void record_transport(worker *w, conn *c, const char *why, bool sent) {
    stress_stats *st = w->st;
    if (sent) add_pending(st, c);
    st->requests++;
    st->transport++;
    if (!st->first_error[0])
        snprintf(st->first_error, sizeof st->first_error, "%.180s (%.64s)", why,
                 w->run->urls[c->url].base);
    atomic_fetch_add_explicit(&w->run->failed, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->run->done, 1, memory_order_relaxed);
    c->idx = -1;
}

/* ---- connections ------------------------------------------------------------------ */

static void set_events(worker *w, conn *c, bool out) {
    if (c->want_out == out) return;
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c };
    epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static void close_conn(worker *w, conn *c) {
    if (c->fd >= 0) {
        epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->len = 0;
    c->want_out = false;
}

static void finish(worker *w, conn *c) {
    close_conn(w, c);
    c->state = C_DONE;
    w->active--;
}

/* Take the next request index for C and build its request. false: the run
 * is over for this connection. */
static bool claim(worker *w, conn *c) {
    stress_run *r = w->run;
    if (atomic_load_explicit(&r->stop, memory_order_relaxed)) return false;
    if (r->requests == 0 && clock_now_ns() >= r->deadline_ns) return false;
    long long i = atomic_fetch_add_explicit(&r->next, 1, memory_order_relaxed);
    if (r->requests > 0 && i >= r->requests) return false;
    c->idx = i;
    c->sku = (int)(i % r->nskus);
    char oid[64], body[STRESS_SKU_MAX + 128];
    stress_order_id(r, i, oid, sizeof oid);
    int bl = snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":%lld,\"order_id\":\"%s\"}",
                      r->skus[c->sku], r->qty, oid);
    int n = snprintf(c->req, sizeof c->req,
                     "POST /sale HTTP/1.1\r\nHost: %s\r\nUser-Agent: nerve-stress\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                     r->urls[c->url].hostport, bl, body);
    c->req_len = n > 0 && (size_t)n < sizeof c->req ? (size_t)n : 0;
    c->req_off = 0;
    c->t0 = clock_now_ns();
    w->st->per_url[c->url]++;
    return true;
}

static void fail(worker *w, conn *c, const char *what, int errnum);
static void send_req(worker *w, conn *c);

/* Open a non-blocking connection for C. 0 (connected or in progress), -1
 * with errno set. */
static int open_conn(worker *w, conn *c) {
    const httpc_url *u = &w->run->urls[c->url];
    int fd = socket(u->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)&u->addr, u->addrlen) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    c->fd = fd;
    c->want_out = true;
    c->len = 0;
    c->state = C_CONNECTING;
    if (c->idx < 0) c->t0 = clock_now_ns();
    return 0;
}

/* C is free: start its next request, or retire it. */
static void next(worker *w, conn *c) {
    if (!claim(w, c)) {
        finish(w, c);
        return;
    }
    if (c->fd < 0) {
        if (open_conn(w, c) != 0) fail(w, c, "connect", errno);
        return; /* sent once connected */
    }
    send_req(w, c);
}

/* The request in flight on C failed without an answer: count it, drop the
 * connection, and go on after a pause. */
static void fail(worker *w, conn *c, const char *what, int errnum) {
    char why[STRESS_ERR_MAX];
    if (errnum) {
        const char *m = errnum == ETIMEDOUT ? "timed out" : strerror(errnum);
        snprintf(why, sizeof why, "%s: %s", what, m);
    } else {
        snprintf(why, sizeof why, "%s", what);
    }
    /* Whether the server may have seen the request: then it may have sold. */
    bool sent = c->idx >= 0 && (c->req_off > 0 || c->state == C_READING);
    if (c->idx < 0 && !claim(w, c)) { /* a connection failing before its first request */
        finish(w, c);
        return;
    }
    record_transport(w, c, why, sent);
    close_conn(w, c);
    c->state = C_BACKOFF;
    c->retry_at = clock_now_ns() + BACKOFF_MS * 1000000ull;
    w->backoff++;
}

static void send_req(worker *w, conn *c) {
    if (c->req_len == 0) {
        fail(w, c, "request too large", 0);
        return;
    }
    while (c->req_off < c->req_len) {
        ssize_t n = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->req_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->state = C_SENDING;
            set_events(w, c, true);
            return;
        } else {
            fail(w, c, "send", errno);
            return;
        }
    }
    c->state = C_READING;
    set_events(w, c, false);
}

static void on_connected(worker *w, conn *c) {
    int e = 0;
    socklen_t sl = sizeof e;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &sl) != 0) e = errno;
    if (e) {
        fail(w, c, "connect", e);
        return;
    }
    if (c->idx < 0 && !claim(w, c)) {
        finish(w, c);
        return;
    }
    send_req(w, c);
}

static void on_readable(worker *w, conn *c) {
    if (c->cap - c->len < READ_CHUNK) {
        size_t nc = c->cap ? c->cap * 2 : 2 * READ_CHUNK;
        char *nb = nc <= HTTPC_RESP_MAX + 2 * READ_CHUNK ? realloc(c->buf, nc) : NULL;
        if (!nb) {
            fail(w, c, nc > HTTPC_RESP_MAX ? "response too large" : "out of memory", 0);
            return;
        }
        c->buf = nb;
        c->cap = nc;
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        fail(w, c, "receive", errno);
        return;
    }
    if (c->state != C_READING) {
        /* Bytes (or a close) before the request was sent: the server gave
         * up on this connection. */
        fail(w, c, n == 0 ? "connection closed by the server" : "unexpected data from the server",
             0);
        return;
    }
    c->len += (size_t)n;
    httpc_resp resp;
    char err[128];
    int pr = httpc_parse(c->buf, c->len, n == 0, &resp, err, sizeof err);
    if (pr == 0) return;
    if (pr < 0) {
        fail(w, c, err, 0);
        return;
    }
    record_answer(w, c, &resp);
    /* Anything after the answer was never asked for: start afresh. */
    if (resp.close || n == 0 || resp.total != c->len) close_conn(w, c);
    c->len = 0;
    c->state = C_IDLE;
    next(w, c);
}

/* Time-driven work: timeouts and the end of back-offs. */
static void sweep(worker *w, uint64_t now) {
    uint64_t limit = (uint64_t)w->run->timeout_ms * 1000000ull;
    for (int i = 0; i < w->nconns; i++) {
        conn *c = &w->conns[i];
        switch (c->state) {
        case C_CONNECTING:
        case C_SENDING:
        case C_READING:
            if (now - c->t0 > limit) {
                char what[64];
                snprintf(what, sizeof what, "no answer within %d ms", w->run->timeout_ms);
                fail(w, c, what, 0);
            }
            break;
        case C_BACKOFF:
            if (now >= c->retry_at) {
                w->backoff--;
                c->state = C_IDLE;
                next(w, c);
            }
            break;
        default: break;
        }
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    struct epoll_event evs[256];
    for (int i = 0; i < w->nconns; i++) {
        conn *c = &w->conns[i];
        if (open_conn(w, c) != 0) fail(w, c, "connect", errno);
    }
    uint64_t last_sweep = clock_now_ns();
    while (w->active > 0) {
        int timeout = w->backoff > 0 ? BACKOFF_MS / 2 : 50;
        int n = epoll_wait(w->ep, evs, 256, timeout);
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (c->state == C_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(w, c);
            } else if (c->state == C_SENDING && (e & EPOLLOUT) && !(e & (EPOLLERR | EPOLLHUP))) {
                send_req(w, c);
            } else if (c->fd >= 0 && (e & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
                on_readable(w, c);
            }
        }
        uint64_t now = clock_now_ns();
        if (now - last_sweep >= (w->backoff > 0 ? BACKOFF_MS / 2 : 50) * 1000000ull ||
            (w->run->requests == 0 && now >= w->run->deadline_ns)) {
            sweep(w, now);
            last_sweep = now;
        }
    }
    for (int i = 0; i < w->nconns; i++) close_conn(w, &w->conns[i]);
    atomic_fetch_add(&w->run->threads_done, 1);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

int stress_load_start(stress_run *r, char *err, size_t errlen) {
    r->stats = calloc((size_t)r->threads, sizeof *r->stats);
    workers = calloc((size_t)r->threads, sizeof *workers);
    if (!r->stats || !workers) goto oom;
    for (int t = 0; t < r->threads; t++) {
        stress_stats *st = &r->stats[t];
        st->min_remaining = LLONG_MAX;
        st->sold = calloc((size_t)r->nskus, sizeof *st->sold);
        st->per_url = calloc((size_t)r->nurls, sizeof *st->per_url);
        st->hist = calloc(STRESS_HIST_US, sizeof *st->hist);
        if (!st->sold || !st->per_url || !st->hist) goto oom;

        worker *w = &workers[t];
        w->run = r;
        w->st = st;
        int lo = (int)((long long)r->clients * t / r->threads);
        int hi = (int)((long long)r->clients * (t + 1) / r->threads);
        w->nconns = w->active = hi - lo;
        w->ep = -1;
        w->conns = calloc((size_t)(hi - lo), sizeof *w->conns);
        if (!w->conns) goto oom;
        for (int i = 0; i < hi - lo; i++) {
            w->conns[i].fd = -1;
            w->conns[i].idx = -1;
            w->conns[i].url = (lo + i) % r->nurls;
        }
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->ep < 0) {
            snprintf(err, errlen, "epoll_create1: %s", strerror(errno));
            return -1;
        }
    }
    if (r->requests == 0) r->deadline_ns = clock_now_ns() + (uint64_t)(r->duration_s * 1e9);
    uint64_t t0 = clock_now_ns();
    for (int t = 0; t < r->threads; t++) {
        int rc = pthread_create(&workers[t].tid, NULL, worker_main, &workers[t]);
        if (rc != 0) {
            /* Stop what started; the caller joins it with stress_load_wait. */
            atomic_store(&r->stop, 1);
            snprintf(err, errlen, "cannot start worker thread %d: %s", t + 1, strerror(rc));
            r->started_ns = t0;
            return -1;
        }
        workers[t].started = true;
    }
    r->started_ns = t0;
    return 0;
oom:
    snprintf(err, errlen, "out of memory for %d clients", r->clients);
    return -1;
}

void stress_load_wait(stress_run *r) {
    if (!workers) return;
    for (int t = 0; t < r->threads; t++)
        if (workers[t].started) pthread_join(workers[t].tid, NULL);
    r->secs = (double)(clock_now_ns() - r->started_ns) / 1e9;
}

void stress_load_free(stress_run *r) {
    if (!r) return;
    for (int t = 0; workers && t < r->threads; t++) {
        for (int i = 0; i < workers[t].nconns; i++) free(workers[t].conns[i].buf);
        free(workers[t].conns);
        if (workers[t].ep >= 0) close(workers[t].ep);
    }
    free(workers);
    workers = NULL;
    for (int t = 0; r->stats && t < r->threads; t++) {
        free(r->stats[t].sold);
        free(r->stats[t].per_url);
        free(r->stats[t].hist);
        free(r->stats[t].slow_us);
        free(r->stats[t].pending);
    }
    free(r->stats);
    r->stats = NULL;
}
