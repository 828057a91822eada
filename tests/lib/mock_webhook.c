/* mock_webhook.c -- a tiny programmable HTTP/1.1 server for tests (see
 * mock_webhook.h).
 *
 * One listener thread accepts; each connection gets its own thread so a
 * delayed answer on one connection never holds back the arrival record of
 * the next request on another (a client that timed out and retried must be
 * seen retrying at the time it did). All sockets are non-blocking and every
 * wait is a poll() that also watches a stop pipe: mock_stop() writes one byte
 * that is never read, which wakes and ends every thread for good.
 *
 * Static helpers are prefixed mk_ so that a test may #include this file as a
 * single translation unit without clashing with its own names.
 */
#include "mock_webhook.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MK_HEAD_MAX (16 * 1024)         /* request line + headers */
#define MK_BODY_MAX (8 * 1024 * 1024)   /* request body */

typedef struct mk_conn {
    pthread_t th;
    int fd;
    atomic_bool done;
    mock_server *m;
    struct mk_conn *next;
} mk_conn;

struct mock_server {
    int lfd, port;
    int stop_r, stop_w;         /* readable once stopping, forever */
    pthread_t th;
    mk_conn *conns;             /* listener thread only */

    pthread_mutex_t mu;
    pthread_cond_t cv;          /* a request was recorded */
    /* Guarded by mu. */
    mock_step *steps;
    size_t nsteps, pos;
    mock_step dflt;
    int delay_ms;
    size_t body_bytes;
    mock_req **reqs;
    size_t nreqs, cap;
};

long long mock_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- waiting and socket I/O ------------------------------------------- */

/* Wait until FD (ignored when < 0) is ready for EVENTS: 1 ready, 0 after
 * TIMEOUT_MS (< 0 = never), -1 when the server stops or poll fails. */
static int mk_wait(mock_server *m, int fd, short events, int timeout_ms) {
    long long deadline = timeout_ms < 0 ? 0 : mock_now_ns() + (long long)timeout_ms * 1000000LL;
    for (;;) {
        struct pollfd pf[2] = { { m->stop_r, POLLIN, 0 }, { fd, events, 0 } };
        int left = -1;
        if (timeout_ms >= 0) {
            long long ns = deadline - mock_now_ns();
            if (ns < 0) ns = 0;
            left = (int)((ns + 999999) / 1000000);
        }
        int r = poll(pf, 2, left);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (pf[0].revents) return -1;
        if (pf[1].revents) return 1;
        if (timeout_ms >= 0 && mock_now_ns() >= deadline) return 0;
    }
}

/* Read some bytes: >0, 0 at EOF, -1 on error or stop. */
static ssize_t mk_read(mock_server *m, int fd, char *buf, size_t len) {
    for (;;) {
        ssize_t r = recv(fd, buf, len, 0);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if (mk_wait(m, fd, POLLIN, -1) != 1) return -1;
    }
}

static int mk_write_all(mock_server *m, int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
        if (w > 0) {
            buf += w;
            len -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (mk_wait(m, fd, POLLOUT, -1) != 1) return -1;
        } else {
            return -1;      /* e.g. EPIPE: the client gave up waiting */
        }
    }
    return 0;
}

/* ---- parsing ---------------------------------------------------------- */

/* The value of header NAME in HEAD (request line first, CRLF lines), with
 * surrounding blanks trimmed; its length in *VLEN. NULL when absent. */
static const char *mk_find_header(const char *head, const char *name, size_t *vlen) {
    size_t nlen = strlen(name);
    const char *line = strstr(head, "\r\n");
    while (line) {
        line += 2;
        const char *eol = strstr(line, "\r\n");
        size_t llen = eol ? (size_t)(eol - line) : strlen(line);
        if (llen > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1, *e = line + llen;
            while (v < e && (*v == ' ' || *v == '\t')) v++;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
            *vlen = (size_t)(e - v);
            return v;
        }
        line = eol;
    }
    return NULL;
}

static char *mk_header_dup(const char *head, const char *name) {
    size_t n;
    const char *v = mk_find_header(head, name, &n);
    return v ? strndup(v, n) : NULL;
}

static const char *mk_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
    }
}

/* Answer STATUS with BODY_BYTES of 'x' (0 = a small JSON body). */
static int mk_respond(mock_server *m, int fd, int status, size_t body_bytes, bool close_after) {
    char small[64];
    char *body = small;
    size_t blen;
    if (body_bytes) {
        if (!(body = malloc(body_bytes))) return -1;
        memset(body, 'x', body_bytes);
        blen = body_bytes;
    } else {
        blen = (size_t)snprintf(small, sizeof small, "{\"status\":%d}", status);
    }
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: %s\r\n\r\n",
                      status, mk_reason(status), body_bytes ? "text/plain" : "application/json", blen,
                      close_after ? "close" : "keep-alive");
    int rc = mk_write_all(m, fd, head, (size_t)hl);
    if (rc == 0) rc = mk_write_all(m, fd, body, blen);
    if (body != small) free(body);
    return rc;
}

static void mk_req_free(mock_req *r) {
    if (!r) return;
    free((void *)r->path);
    free((void *)r->head);
    free((void *)r->authorization);
    free((void *)r->content_type);
    free((void *)r->body);
    free(r);
}

/* Append R; choose its answer from the script, also returned in *STATUS and
 * *DELAY_MS: once recorded, R belongs to the server and mock_reset may free
 * it at any time, so the connection thread must not read it again.
 * -1 when out of memory. */
static int mk_record(mock_server *m, mock_req *r, int *status, int *delay_ms) {
    pthread_mutex_lock(&m->mu);
    if (m->nreqs == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        mock_req **n = realloc(m->reqs, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&m->mu);
            return -1;
        }
        m->reqs = n;
        m->cap = cap;
    }
    mock_step st = m->pos < m->nsteps ? m->steps[m->pos++] : m->dflt;
    r->status = st.status;
    r->delay_ms = st.delay_ms < 0 ? m->delay_ms : st.delay_ms;
    *status = r->status;
    *delay_ms = r->delay_ms;
    m->reqs[m->nreqs++] = r;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    return 0;
}

/* ---- threads ---------------------------------------------------------- */

static void *mk_conn_main(void *arg) {
    mk_conn *c = arg;
    mock_server *m = c->m;
    int fd = c->fd;
    size_t have = 0;
    char *buf = malloc(MK_HEAD_MAX + 1);

    while (buf) {
        /* Request head. A pipelined request already in BUF arrived "now". */
        long long t0 = have ? mock_now_ns() : 0;
        char *end;
        for (;;) {
            buf[have] = 0;
            if ((end = strstr(buf, "\r\n\r\n"))) break;
            if (have == MK_HEAD_MAX) {
                mk_respond(m, fd, 431, 0, true);
                goto out;
            }
            ssize_t r = mk_read(m, fd, buf + have, MK_HEAD_MAX - have);
            if (r <= 0) goto out;
            if (!t0) t0 = mock_now_ns();
            have += (size_t)r;
        }
        size_t head_len = (size_t)(end - buf), consumed = head_len + 4;

        mock_req *r = calloc(1, sizeof *r);
        char *head = r ? strndup(buf, head_len) : NULL;
        if (!head) {
            free(r);
            goto out;
        }
        r->head = head;
        r->t_ns = t0;
        const char *sp1 = strchr(head, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
        const char *eol = strstr(head, "\r\n");
        if (!eol) eol = head + head_len;
        if (!sp1 || !sp2 || sp2 > eol || (size_t)(sp1 - head) >= sizeof r->method) {
            mk_req_free(r);
            mk_respond(m, fd, 400, 0, true);
            goto out;
        }
        memcpy(r->method, head, (size_t)(sp1 - head));
        r->path = strndup(sp1 + 1, (size_t)(sp2 - sp1 - 1));
        bool http10 = strncmp(sp2 + 1, "HTTP/1.0", 8) == 0;
        r->authorization = mk_header_dup(head, "Authorization");
        r->content_type = mk_header_dup(head, "Content-Type");

        char *te = mk_header_dup(head, "Transfer-Encoding");
        char *cl = mk_header_dup(head, "Content-Length");
        char *conn = mk_header_dup(head, "Connection");
        char *expect = mk_header_dup(head, "Expect");
        bool close_after = conn ? strcasecmp(conn, "close") == 0 : false;
        if (http10 && !(conn && strcasecmp(conn, "keep-alive") == 0)) close_after = true;
        bool cont = expect && strcasecmp(expect, "100-continue") == 0;
        long long clen = 0;
        int bad = te ? 501 : 0;
        if (!bad && cl) {
            char *e;
            errno = 0;
            clen = strtoll(cl, &e, 10);
            if (errno || e == cl || *e || clen < 0) bad = 400;
            else if (clen > MK_BODY_MAX) bad = 413;
        }
        free(te);
        free(cl);
        free(conn);
        free(expect);
        if (bad || !r->path) {
            mk_req_free(r);
            mk_respond(m, fd, bad ? bad : 500, 0, true);
            goto out;
        }

        /* Body: what already came with the head, then the rest. */
        char *body = malloc((size_t)clen + 1);
        if (!body) {
            mk_req_free(r);
            goto out;
        }
        r->body = body;
        r->body_len = (size_t)clen;
        size_t take = have - consumed < (size_t)clen ? have - consumed : (size_t)clen;
        memcpy(body, buf + consumed, take);
        memmove(buf, buf + consumed + take, have - consumed - take);
        have -= consumed + take;
        if (take < (size_t)clen && cont &&
            mk_write_all(m, fd, "HTTP/1.1 100 Continue\r\n\r\n", 25) != 0) {
            mk_req_free(r);
            goto out;
        }
        while (take < (size_t)clen) {
            ssize_t n = mk_read(m, fd, body + take, (size_t)clen - take);
            if (n <= 0) {
                mk_req_free(r);
                goto out;
            }
            take += (size_t)n;
        }
        body[clen] = 0;

        size_t body_bytes;
        pthread_mutex_lock(&m->mu);
        body_bytes = m->body_bytes;
        pthread_mutex_unlock(&m->mu);
        int status, delay_ms;
        if (mk_record(m, r, &status, &delay_ms) != 0) {
            mk_req_free(r);
            goto out;
        }
        /* R belongs to the server now (mock_reset may free it): use the copies. */
        if (delay_ms > 0 && mk_wait(m, -1, 0, delay_ms) != 0) goto out;
        if (status == MOCK_CLOSE) goto out;
        if (mk_respond(m, fd, status, body_bytes, close_after) != 0 || close_after) goto out;
    }
out:
    free(buf);
    close(fd);
    atomic_store(&c->done, true);
    return NULL;
}

static void mk_reap(mock_server *m, bool all) {
    mk_conn **pp = &m->conns;
    while (*pp) {
        mk_conn *c = *pp;
        if (all || atomic_load(&c->done)) {
            pthread_join(c->th, NULL);
            *pp = c->next;
            free(c);
        } else {
            pp = &c->next;
        }
    }
}

static void *mk_listen_main(void *arg) {
    mock_server *m = arg;
    for (;;) {
        if (mk_wait(m, m->lfd, POLLIN, -1) != 1) break;
        int fd = accept4(m->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) continue;   /* EAGAIN, ECONNABORTED, EMFILE...: poll again */
        mk_reap(m, false);
        mk_conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->m = m;
        atomic_init(&c->done, false);
        if (pthread_create(&c->th, NULL, mk_conn_main, c) != 0) {
            close(fd);
            free(c);
            continue;
        }
        c->next = m->conns;
        m->conns = c;
    }
    mk_reap(m, true);
    return NULL;
}

/* ---- API -------------------------------------------------------------- */

mock_server *mock_start(int *port) {
    mock_server *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->lfd = m->stop_r = m->stop_w = -1;
    m->dflt = (mock_step){ 200, -1 };
    int made = 0, e;

    m->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (m->lfd < 0) goto err;
    int one = 1;
    setsockopt(m->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)(port ? *port : 0));
    socklen_t sl = sizeof sa;
    if (bind(m->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(m->lfd, 128) != 0 ||
        getsockname(m->lfd, (struct sockaddr *)&sa, &sl) != 0)
        goto err;
    m->port = ntohs(sa.sin_port);

    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) goto err;
    m->stop_r = p[0];
    m->stop_w = p[1];

    pthread_condattr_t ca;
    if ((e = pthread_mutex_init(&m->mu, NULL)) != 0) goto err_e;
    made = 1;
    if ((e = pthread_condattr_init(&ca)) != 0) goto err_e;
    if ((e = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) == 0 &&
        (e = pthread_cond_init(&m->cv, &ca)) == 0)
        made = 2;
    pthread_condattr_destroy(&ca);
    if (e) goto err_e;

    /* Server threads take no signals; the test's main thread does. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    e = pthread_create(&m->th, NULL, mk_listen_main, m);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) goto err_e;
    if (port) *port = m->port;
    return m;

err_e:
    errno = e;
err:
    e = errno;
    if (made >= 2) pthread_cond_destroy(&m->cv);
    if (made >= 1) pthread_mutex_destroy(&m->mu);
    if (m->lfd >= 0) close(m->lfd);
    if (m->stop_r >= 0) close(m->stop_r);
    if (m->stop_w >= 0) close(m->stop_w);
    free(m);
    errno = e;
    return NULL;
}

void mock_reset(mock_server *m) {
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->nreqs; i++) mk_req_free(m->reqs[i]);
    m->nreqs = 0;
    m->pos = 0;
    pthread_mutex_unlock(&m->mu);
}

void mock_stop(mock_server *m) {
    if (!m) return;
    ssize_t w;
    do w = write(m->stop_w, "x", 1);
    while (w < 0 && errno == EINTR);
    pthread_join(m->th, NULL);
    close(m->lfd);
    close(m->stop_r);
    close(m->stop_w);
    mock_reset(m);
    free(m->reqs);
    free(m->steps);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

int mock_port(const mock_server *m) { return m->port; }

int mock_url(const mock_server *m, const char *path, char *buf, size_t len) {
    int n = snprintf(buf, len, "http://127.0.0.1:%d%s", m->port, path ? path : "");
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

void mock_set_steps(mock_server *m, const mock_step *steps, size_t n, mock_step dflt) {
    mock_step *copy = NULL;
    if (n && (copy = malloc(n * sizeof *copy))) memcpy(copy, steps, n * sizeof *copy);
    pthread_mutex_lock(&m->mu);
    free(m->steps);
    m->steps = copy;
    m->nsteps = copy ? n : 0;
    m->pos = 0;
    m->dflt = dflt;
    pthread_mutex_unlock(&m->mu);
}

void mock_set_script(mock_server *m, const int *statuses, size_t n, int default_status) {
    mock_step *steps = n ? calloc(n, sizeof *steps) : NULL;
    for (size_t i = 0; steps && i < n; i++) steps[i] = (mock_step){ statuses[i], -1 };
    mock_set_steps(m, steps, steps ? n : 0, (mock_step){ default_status, -1 });
    free(steps);
}

void mock_set_delay_ms(mock_server *m, int ms) {
    pthread_mutex_lock(&m->mu);
    m->delay_ms = ms < 0 ? 0 : ms;
    pthread_mutex_unlock(&m->mu);
}

void mock_set_body_bytes(mock_server *m, size_t n) {
    pthread_mutex_lock(&m->mu);
    m->body_bytes = n;
    pthread_mutex_unlock(&m->mu);
}

size_t mock_requests(mock_server *m) {
    pthread_mutex_lock(&m->mu);
    size_t n = m->nreqs;
    pthread_mutex_unlock(&m->mu);
    return n;
}

const mock_req *mock_request(mock_server *m, size_t i) {
    pthread_mutex_lock(&m->mu);
    const mock_req *r = i < m->nreqs ? m->reqs[i] : NULL;
    pthread_mutex_unlock(&m->mu);
    return r;
}

int mock_wait_requests(mock_server *m, size_t n, int timeout_ms) {
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&m->mu);
    while (m->nreqs < n) {
        if (pthread_cond_timedwait(&m->cv, &m->mu, &dl) == ETIMEDOUT) break;
    }
    int rc = m->nreqs >= n ? 0 : -1;
    pthread_mutex_unlock(&m->mu);
    return rc;
}

const char *mock_header(const mock_req *r, const char *name, char *buf, size_t len) {
    size_t n;
    const char *v = r && r->head ? mk_find_header(r->head, name, &n) : NULL;
    if (!v || len == 0) return NULL;
    if (n >= len) n = len - 1;
    memcpy(buf, v, n);
    buf[n] = 0;
    return buf;
}
