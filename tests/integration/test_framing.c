/* test_framing.c -- the HTTP edge under request smuggling and idle clients
 * (issue 10, items 4 and 5).
 *
 * 1. Framing (RFC 9112 §6). A table of raw requests, each written byte for
 *    byte on its own connection: both Transfer-Encoding and Content-Length,
 *    two different Content-Lengths, Content-Length values that are not
 *    1*DIGIT, transfer codings other than exactly "chunked", and heads
 *    CivetWeb cuts short (an obsolete line folding, more than 64 header
 *    lines) hiding a Content-Length. Behind almost every one hides a second
 *    request, a sale with its own order_id, in the bytes a proxy in front
 *    would read as this request's body: each case says what the answer must
 *    be, whether the connection must then be closed (read until EOF), and
 *    the hidden sale must not have run (its SKU's stock unchanged, no order
 *    key in Redis). Well-framed controls must answer on a connection that
 *    stays open for a second request.
 *
 * 2. Idle connections. With server.threads + 50 connections held open
 *    (sending nothing; idle after one request; sending their head a byte a
 *    second), a new client's sale must be answered within 1 s.
 *
 * 3. Eviction races. Keep-alive clients pausing about evict_idle_ms between
 *    sales: every 200 received is a sale made, and no sale is made unanswered.
 *    Bodies sent a byte at a time by every worker's connection: a new
 *    client is answered within 2 s, and the slow sales never run.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define THREADS 8               /* server.threads: small, so that the idle tests are quick */
#define IDLE (THREADS + 50)
#define SKU "fr-stock"          /* the hidden sales' SKU */
#define STOCK0 100

static h_redis *redis;
static h_daemon *dmn;

/* --- raw connections ---------------------------------------------------- */

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        fail_msg("connect 127.0.0.1:%d: %s", port, strerror(errno));
    return fd;
}

static void raw_send(int fd, const char *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, data + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;             /* the server stopped reading: hear what it said */
        off += (size_t)w;
    }
}

typedef struct answer {
    int status;                 /* -1: closed without an answer; 0: no status line in time */
    char head[4096];
    char body[4096];
    bool json;
} answer;

/* Read one answer (head, and the body its Content-Length says) from FD
 * within MS. */
static void read_answer(int fd, int ms, answer *a)
{
    char buf[16384];
    size_t n = 0;
    memset(a, 0, sizeof *a);
    double dl = h_deadline(ms);
    const char *hend = NULL;
    size_t want = 0;
    while (h_before(dl) && n < sizeof buf - 1) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, (int)((dl - h_now()) * 1000) + 1) <= 0)
            continue;
        ssize_t r = recv(fd, buf + n, sizeof buf - 1 - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        buf[n] = '\0';
        if (!hend && (hend = strstr(buf, "\r\n\r\n")) != NULL) {
            const char *cl = strcasestr(buf, "\r\nContent-Length:");
            want = cl && cl < hend ? strtoul(cl + 17, NULL, 10) : 0;
        }
        if (hend && n - (size_t)(hend + 4 - buf) >= want)
            break;
    }
    buf[n] = '\0';
    if (n == 0) {
        a->status = -1;
        return;
    }
    if (strncmp(buf, "HTTP/1.", 7) == 0 && n > 12)
        a->status = atoi(buf + 9);
    size_t hl = hend ? (size_t)(hend + 4 - buf) : n;
    snprintf(a->head, sizeof a->head, "%.*s", (int)hl, buf);
    snprintf(a->body, sizeof a->body, "%s", buf + hl);
    a->json = strcasestr(a->head, "Content-Type: application/json") != NULL;
}

/* true when the server has closed FD (EOF or reset), now. */
static bool is_closed(int fd)
{
    char b;
    ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* true when the server closes FD (EOF or reset) within MS. */
static bool closed_within(int fd, int ms)
{
    double dl = h_deadline(ms);
    char b[4096];
    while (h_before(dl)) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, (int)((dl - h_now()) * 1000) + 1) <= 0)
            continue;
        ssize_t r = recv(fd, b, sizeof b, 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return true;
        if (r < 0 && errno != EINTR && errno != EAGAIN)
            return true;
    }
    return false;
}

/* --- the framing table -------------------------------------------------- */

/* The hidden sale: a whole request on SKU whose order_id is "smug-NN" (two
 * digits: every body is 47 bytes), after the bytes this request's own
 * framing covers. */
#define HIDDEN(n)                                                                        \
    "POST /sale HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"              \
    "Content-Length: 47\r\n\r\n{\"sku\":\"" SKU "\",\"qty\":1,\"order_id\":\"smug-" #n "\"}"
/* A sale on SKU fr-zero (stock 0): if this request ran as it claims, 409. */
#define ZERO "{\"sku\":\"fr-zero\",\"qty\":1}"                /* 25 bytes */
#define ZERO_CHUNKED "19\r\n" ZERO "\r\n0\r\n\r\n"
#define SALE_HEAD "POST /sale HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

typedef struct fcase {
    const char *name;
    const char *req;
    int status;                 /* the answer's status */
    bool json;                  /* the daemon's JSON error, not CivetWeb's page */
    bool closed;                /* the connection is closed after it */
    const char *hidden;         /* order_id of the hidden sale, NULL: none */
} fcase;

static const fcase cases[] = {
    /* Both Transfer-Encoding and Content-Length (RFC 9112 §6.3 3). Before
     * issue 10 the first was read as chunked, the connection stayed open
     * and the hidden sale ran. */
    { "CL then TE: chunked",
      SALE_HEAD "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" ZERO_CHUNKED HIDDEN(01),
      400, true, true, "smug-01" },
    { "TE: chunked then CL",
      SALE_HEAD "Transfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n" ZERO_CHUNKED HIDDEN(02),
      400, true, true, "smug-02" },
    { "CL covering the hidden request, TE: chunked",
      SALE_HEAD "Content-Length: 159\r\nTransfer-Encoding: chunked\r\n\r\n" ZERO_CHUNKED HIDDEN(03),
      400, true, true, "smug-03" },
    { "CL and TE: chunked, lower case names",
      SALE_HEAD "content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n" ZERO_CHUNKED HIDDEN(04),
      400, true, true, "smug-04" },
    /* Two Content-Lengths (§6.3 5). */
    { "CL 25 then CL 0",
      SALE_HEAD "Content-Length: 25\r\nContent-Length: 0\r\n\r\n" ZERO HIDDEN(05),
      400, true, true, "smug-05" },
    { "CL 0 then CL 25",
      SALE_HEAD "Content-Length: 0\r\nContent-Length: 25\r\n\r\n" ZERO HIDDEN(06),
      400, true, true, "smug-06" },
    { "CL 25 then CL 159",
      SALE_HEAD "Content-Length: 25\r\nContent-Length: 159\r\n\r\n" ZERO HIDDEN(07),
      400, true, true, "smug-07" },
    /* Content-Length values that are not 1*DIGIT. */
    { "CL +25", SALE_HEAD "Content-Length: +25\r\n\r\n" ZERO HIDDEN(08), 400, true, true, "smug-08" },
    { "CL 25x", SALE_HEAD "Content-Length:  25x\r\n\r\n" ZERO HIDDEN(09), 400, true, true, "smug-09" },
    { "CL 0x19", SALE_HEAD "Content-Length: 0x19\r\n\r\n" ZERO HIDDEN(10), 400, true, true, "smug-10" },
    { "CL list 25, 159", SALE_HEAD "Content-Length: 25, 159\r\n\r\n" ZERO HIDDEN(11), 400, true, true,
      "smug-11" },
    { "CL list 25,25", SALE_HEAD "Content-Length: 25,25\r\n\r\n" ZERO HIDDEN(12), 400, true, true,
      "smug-12" },
    { "CL 2 5", SALE_HEAD "Content-Length: 2 5\r\n\r\n" ZERO HIDDEN(13), 400, true, true, "smug-13" },
    { "CL 25.0", SALE_HEAD "Content-Length: 25.0\r\n\r\n" ZERO HIDDEN(14), 400, true, true, "smug-14" },
    /* Refused by CivetWeb itself (411 Length Required), and closed. */
    { "CL -1", SALE_HEAD "Content-Length: -1\r\n\r\n" ZERO HIDDEN(15), 411, false, true, "smug-15" },
    { "CL empty", SALE_HEAD "Content-Length:\r\n\r\n" ZERO HIDDEN(16), 411, false, true, "smug-16" },
    /* Transfer codings other than exactly "chunked" (§6.1). */
    { "TE: identity with CL",
      SALE_HEAD "Transfer-Encoding: identity\r\nContent-Length: 25\r\n\r\n" ZERO HIDDEN(17),
      400, true, true, "smug-17" },
    { "TE: chunked twice",
      SALE_HEAD "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" ZERO_CHUNKED HIDDEN(18),
      400, true, true, "smug-18" },
    { "TE: chunked then TE: identity",
      SALE_HEAD "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n" ZERO_CHUNKED HIDDEN(19),
      400, true, true, "smug-19" },
    { "TE: chunked in HTTP/1.0",
      "POST /sale HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
      "Transfer-Encoding: chunked\r\n\r\n" ZERO_CHUNKED HIDDEN(20),
      400, true, true, "smug-20" },
    /* CivetWeb's own 400 for codings it does not know. */
    { "TE: chunked, identity",
      SALE_HEAD "Transfer-Encoding: chunked, identity\r\n\r\n" ZERO_CHUNKED HIDDEN(21), 400, false, true,
      "smug-21" },
    { "TE: xchunked", SALE_HEAD "Transfer-Encoding: xchunked\r\n\r\n" ZERO_CHUNKED HIDDEN(22), 400, false,
      true, "smug-22" },
    { "TE: chunked with a trailing space",
      SALE_HEAD "Transfer-Encoding: chunked \r\n\r\n" ZERO_CHUNKED HIDDEN(23), 400, false, true, "smug-23" },
    /* A Content-Length CivetWeb never sees: after an obsolete line folding
     * (a proxy that unfolds reads it), and after the 64th header line. No
     * length, so no body: 400 (the sale needs one), and closed. */
    { "CL hidden by a line folding",
      SALE_HEAD "X-A: a\r\n Content-Length: 159\r\n\r\n" ZERO HIDDEN(24), 400, true, true, "smug-24" },
    /* CivetWeb refuses a folding with a tab itself. */
    { "CL hidden by a line folding (tab)",
      SALE_HEAD "X-A: a\r\n\tContent-Length: 159\r\n\r\n" ZERO HIDDEN(25), 400, false, true, "smug-25" },
    /* White space between a header name and its colon (RFC 9112 §5.1: 400).
     * CivetWeb drops it: before, the first was read as chunked, answered
     * 409 on a connection kept open, and the hidden sale ran. */
    { "TE with a space before the colon",
      SALE_HEAD "Transfer-Encoding : chunked\r\n\r\n" ZERO_CHUNKED HIDDEN(26), 400, true, true, "smug-26" },
    { "CL with spaces before the colon",
      SALE_HEAD "Content-Length  : 159\r\n\r\n" ZERO HIDDEN(27), 400, true, true, "smug-27" },
    { "Host with a space before the colon", "GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n" HIDDEN(28),
      400, true, true, "smug-28" },
    { "empty value, a space before the colon", "GET /healthz HTTP/1.1\r\nX-E :\r\n\r\n", 400, true,
      true, NULL },
    /* CivetWeb refuses a tab there itself. */
    { "CL with a tab before the colon",
      SALE_HEAD "Content-Length\t: 159\r\n\r\n" ZERO HIDDEN(29), 400, false, true, "smug-29" },
    /* A header line ending in a bare LF, then CR LF: CivetWeb ends a head at
     * LF LF or CR LF CR LF only, so it took the next request into this
     * head and never answered it, on a connection kept open. */
    { "bare LF then CR LF, a request after it",
      "GET /healthz HTTP/1.1\r\nHost: x\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400, true,
      true, NULL },
    { "bare LF then CR LF, a sale after it",
      "GET /healthz HTTP/1.1\r\nHost: x\n\r\n" HIDDEN(30), 400, true, true, "smug-30" },
    /* Without headers CivetWeb reads the next request line as a header, and
     * refuses it itself. */
    { "no headers, bare LF then CR LF, a sale after it",
      "GET /healthz HTTP/1.1\n\r\n" HIDDEN(31), 400, false, true, "smug-31" },
    /* After a bare LF, a line CivetWeb does not read as a header stops its
     * headers: what follows (here a Content-Length) was ignored. */
    { "CL after a bare LF and a line starting with a colon",
      SALE_HEAD "X-A: a\n:x\r\nContent-Length: 159\r\n\r\n" ZERO HIDDEN(32), 400, true, true, "smug-32" },
    { "no headers, a bare LF and a line starting with a byte over 126",
      "POST /sale HTTP/1.1\n\xff: x\r\nContent-Length: 159\r\n\r\n" ZERO HIDDEN(33), 400, true, true,
      "smug-33" },
    /* Controls: well framed, answered, the connection kept. */
    { "control: bare LF line ends", "GET /healthz HTTP/1.1\nHost: x\n\n", 200, true, false, NULL },
    { "control: CR LF, then LF", "GET /healthz HTTP/1.1\r\nHost: x\r\n\n", 200, true, false, NULL },
    { "control: no headers", "GET /healthz HTTP/1.1\r\n\r\n", 200, true, false, NULL },
    { "control: no headers, LF LF", "GET /healthz HTTP/1.1\n\n", 200, true, false, NULL },
    { "control: spaces after the colon, empty values",
      "GET /healthz HTTP/1.1\r\nHost:   x\r\nX-E:\r\nX-F: \r\n\r\n", 200, true, false, NULL },
    { "control: CL 2, a body starting with a colon",
      SALE_HEAD "Content-Length: 2\r\n\r\n:x", 400, true, false, NULL },
    { "control: CL 25", SALE_HEAD "Content-Length: 25\r\n\r\n" ZERO, 409, true, false, NULL },
    { "control: CL 25 twice", SALE_HEAD "Content-Length: 25\r\nContent-Length: 25\r\n\r\n" ZERO, 409, true,
      false, NULL },
    { "control: CL 25 with trailing space", SALE_HEAD "Content-Length: 25 \r\n\r\n" ZERO, 409, true, false,
      NULL },
    { "control: chunked", SALE_HEAD "Transfer-Encoding: chunked\r\n\r\n" ZERO_CHUNKED, 409, true, false,
      NULL },
    { "control: TE Chunked (case)", SALE_HEAD "Transfer-Encoding: Chunked\r\n\r\n" ZERO_CHUNKED, 409, true,
      false, NULL },
    { "control: GET, no body", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200, true, false, NULL },
};

/* No key of Redis names ORDER_ID (its idempotency record). */
static bool order_absent(const char *order_id)
{
    redisReply *r = h_redis_cmd(redis, "KEYS *%s*", order_id);
    bool absent = r && r->type == REDIS_REPLY_ARRAY && r->elements == 0;
    freeReplyObject(r);
    return absent;
}

/* One case: its answer, its connection, its hidden sale. Prints what was
 * wrong and returns false. */
static bool run_case(int i, const fcase *c)
{
    char why[512] = "";
    answer a;
    int fd = raw_connect(dmn->port);
    raw_send(fd, c->req, strlen(c->req));
    read_answer(fd, 5000, &a);
    if (a.status != c->status)
        snprintf(why, sizeof why, "answered %d, expected %d", a.status, c->status);
    else if (a.json != c->json)
        snprintf(why, sizeof why, "answered %s, expected %s", a.json ? "JSON" : "CivetWeb's page",
                 c->json ? "the daemon's JSON error" : "CivetWeb's own page");
    else if (c->closed && c->json && !strcasestr(a.head, "\r\nConnection: close"))
        snprintf(why, sizeof why, "no Connection: close in the answer");
    else if (c->closed && !closed_within(fd, 3000))
        snprintf(why, sizeof why, "the connection stayed open");
    else if (!c->closed) {
        answer b;
        const char *again = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        raw_send(fd, again, strlen(again));
        read_answer(fd, 5000, &b);
        if (b.status != 200)
            snprintf(why, sizeof why, "a second request on the connection answered %d", b.status);
    }
    close(fd);
    long long stock = H_GET_STOCK(dmn, SKU);
    if (!why[0] && stock != STOCK0)
        snprintf(why, sizeof why, "the hidden sale ran: stock of %s %lld, was %d", SKU, stock, STOCK0);
    if (!why[0] && c->hidden && !order_absent(c->hidden))
        snprintf(why, sizeof why, "the hidden sale ran: order %s recorded", c->hidden);
    printf("# %2d %-44s -> %d%s%s\n", i + 1, c->name, a.status, a.json ? " JSON" : "",
           c->closed ? ", closed" : ", kept");
    if (why[0]) {
        print_error("framing #%d \"%s\": %s\n    head: %.300s\n    body: %.200s\n", i + 1, c->name, why,
                    a.head, a.body);
        if (stock != STOCK0)
            H_SET_STOCK(dmn, SKU, STOCK0);
        return false;
    }
    return true;
}

static void test_framing(void **state)
{
    (void)state;
    H_SET_STOCK(dmn, SKU, STOCK0);
    H_SET_STOCK(dmn, "fr-zero", 0);
    int failures = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        failures += !run_case((int)i, &cases[i]);
    assert_true(h_daemon_alive(dmn));
    assert_int_equal(failures, 0);
    h_pass();
}

/* 64 header lines and more: CivetWeb keeps 64, so a Content-Length after
 * them is not seen here. The answer stands, the connection is closed, the
 * hidden sale does not run. */
static void test_framing_many_headers(void **state)
{
    (void)state;
    H_SET_STOCK(dmn, SKU, STOCK0);
    char req[8192];
    int n = snprintf(req, sizeof req, "%s", SALE_HEAD);
    for (int i = 0; i < 70; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "X-Pad-%d: p\r\n", i);
    snprintf(req + n, sizeof req - (size_t)n, "Content-Length: 159\r\n\r\n" ZERO HIDDEN(40));
    answer a;
    int fd = raw_connect(dmn->port);
    raw_send(fd, req, strlen(req));
    read_answer(fd, 5000, &a);
    printf("# %d header lines, then Content-Length: %d %.100s\n", 70 + 3, a.status, a.body);
    assert_int_equal(a.status, 400);
    assert_true(closed_within(fd, 3000));
    close(fd);
    assert_int_equal(H_GET_STOCK(dmn, SKU), STOCK0);
    assert_true(order_absent("smug-40"));
    h_pass();
}

/* --- idle connections ---------------------------------------------------- */

typedef enum { IDLE_SILENT, IDLE_KEEPALIVE, IDLE_SLOW } idle_kind;

typedef struct slow_sender {
    int *fds;
    int n;
    _Atomic int stop;
} slow_sender;

/* One byte a second to each connection, of a head that never ends. */
static void *slow_main(void *arg)
{
    slow_sender *s = arg;
    const char *head = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    size_t len = strlen(head);
    for (size_t k = 0; !atomic_load(&s->stop); k++) {
        char b = k < len ? head[k] : 'a';
        for (int i = 0; i < s->n; i++)
            if (s->fds[i] >= 0)
                send(s->fds[i], &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        for (int t = 0; t < 20 && !atomic_load(&s->stop); t++)
            h_nap();            /* ~1 s in all, stopping at once */
    }
    return NULL;
}

/* Hold IDLE connections of KIND open, then time sales on new connections. */
static void idle_case(idle_kind kind, const char *what)
{
    int fds[IDLE];
    for (int i = 0; i < IDLE; i++) {
        fds[i] = raw_connect(dmn->port);
        if (kind == IDLE_KEEPALIVE && i < THREADS) {
            /* One request each, answered, then silence: only the first
             * THREADS can be answered before the evictor steps in, and
             * those are the ones that idle in a worker. */
            answer a;
            const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
            raw_send(fds[i], req, strlen(req));
            read_answer(fds[i], 5000, &a);
            assert_int_equal(a.status, 200);
        }
    }
    slow_sender ss = { fds, IDLE, 0 };
    pthread_t th;
    if (kind == IDLE_SLOW)
        assert_int_equal(pthread_create(&th, NULL, slow_main, &ss), 0);
    /* At once: the first sale waits behind all of them (CivetWeb hands
     * connections to workers in the order they came). */
    double worst = 0, first = 0;
    int failures = 0;
    for (int i = 0; i < 5; i++) {
        h_resp r;
        h_sale(dmn, "/sale", SKU, 1, NULL, &r);
        if (r.status != 200) {
            failures++;
            print_error("%s: sale %d answered %ld %s %s\n", what, i + 1, r.status, r.body, r.err);
        }
        if (r.secs > worst)
            worst = r.secs;
        if (i == 0)
            first = r.secs;
        h_resp_free(&r);
    }
    if (kind == IDLE_SLOW) {
        atomic_store(&ss.stop, 1);
        pthread_join(th, NULL);
    }
    int shut = 0;
    for (int i = 0; i < IDLE; i++) {
        shut += is_closed(fds[i]);
        close(fds[i]);
    }
    printf("# %d %s connections held, %d threads: new-client sale %.3f s, slowest of 5 %.3f s; "
           "%d of the held connections closed by the server by then\n", IDLE, what, THREADS, first,
           worst, shut);
    assert_int_equal(failures, 0);
    if (worst >= 1.0)
        fail_msg("with %d %s connections held and %d threads a new client's sale took %.2f s "
                 "(at most 1 s)", IDLE, what, THREADS, worst);
}

static void test_idle_silent(void **state)
{
    (void)state;
    H_SET_STOCK(dmn, SKU, 1000);
    idle_case(IDLE_SILENT, "silent");
    h_pass();
}

static void test_idle_keepalive(void **state)
{
    (void)state;
    H_SET_STOCK(dmn, SKU, 1000);
    idle_case(IDLE_KEEPALIVE, "idle keep-alive");
    h_pass();
}

static void test_idle_slowloris(void **state)
{
    (void)state;
    H_SET_STOCK(dmn, SKU, 1000);
    idle_case(IDLE_SLOW, "1-byte-per-second");
    h_pass();
}

/* --- eviction races ----------------------------------------------------- */

/* Connect to 127.0.0.1:PORT without cmocka (for threads): -1 on failure. */
static int plain_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

#define RACE_SKU "fr-race"
#define RACE_CLIENTS THREADS    /* every worker held: the evictor is at work */
#define RACE_SALES 100          /* per client */
#define RACE_STOCK 100000

typedef struct race_client {
    unsigned seed;
    int ok, closed, other, connect_err;
} race_client;

/* One keep-alive client: RACE_SALES times, wait 45-65 ms (around
 * server.evict_idle_ms, 50) then send a sale; a connection closed without
 * an answer is reopened. */
static void *race_main(void *arg)
{
    race_client *c = arg;
    static const char req[] = SALE_HEAD "Content-Length: 25\r\n\r\n{\"sku\":\"" RACE_SKU "\",\"qty\":1}";
    _Static_assert(sizeof "{\"sku\":\"" RACE_SKU "\",\"qty\":1}" == 26, "Content-Length: 25");
    int fd = -1;
    for (int i = 0; i < RACE_SALES; i++) {
        if (fd < 0 && (fd = plain_connect(dmn->port)) < 0) {
            c->connect_err++;
            continue;
        }
        struct timespec ts = { 0, (45 + (long)(rand_r(&c->seed) % 21)) * 1000000L };
        nanosleep(&ts, NULL);   /* the traffic's pace, not a synchronisation */
        raw_send(fd, req, sizeof req - 1);
        answer a;
        read_answer(fd, 5000, &a);
        if (a.status == 200) {
            c->ok++;
            continue;
        }
        if (a.status == -1)
            c->closed++;
        else
            c->other++;
        close(fd);
        fd = -1;
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

/* Keep-alive clients that pause about server.evict_idle_ms between sales,
 * with every worker held: the evictor shuts some of them as their next
 * sale arrives. Each such sale must either run and be answered, or not run
 * (the client sees the connection close): the 200s received equal the
 * stock sold. Before the slot states were swapped atomically, the evictor
 * could shut a connection whose sale had already been read: 1-21 sales per
 * run were made while their client saw the connection close. */
static void test_evict_race(void **state)
{
    (void)state;
    H_SET_STOCK(dmn, RACE_SKU, RACE_STOCK);
    race_client cl[RACE_CLIENTS];
    pthread_t th[RACE_CLIENTS];
    memset(cl, 0, sizeof cl);
    for (int i = 0; i < RACE_CLIENTS; i++) {
        cl[i].seed = (unsigned)(i * 7919 + (int)getpid());
        assert_int_equal(pthread_create(&th[i], NULL, race_main, &cl[i]), 0);
    }
    int ok = 0, closed = 0, other = 0, cerr = 0;
    for (int i = 0; i < RACE_CLIENTS; i++) {
        pthread_join(th[i], NULL);
        ok += cl[i].ok;
        closed += cl[i].closed;
        other += cl[i].other;
        cerr += cl[i].connect_err;
    }
    long long sold = RACE_STOCK - H_REDIS_STOCK(redis, RACE_SKU);
    printf("# %d clients x %d sales, 45-65 ms apart: %d answered 200, %d closed unanswered, "
           "%d other, %d connect errors; stock sold %lld\n", RACE_CLIENTS, RACE_SALES, ok, closed,
           other, cerr, sold);
    assert_int_equal(other, 0);
    assert_int_equal(cerr, 0);
    if (sold != ok)
        fail_msg("%lld sales made but %d answered 200: %lld made while their client saw the "
                 "connection close", sold, ok, sold - ok);
    h_pass();
}

#define SLOW_SKU "fr-slow"
#define SLOW_TAIL 15            /* body bytes sent one per 200 ms: 3 s */

typedef struct slow_body {
    int fds[THREADS];
    _Atomic int stop;
} slow_body;

/* The last SLOW_TAIL bytes of each body, one byte per 200 ms. */
static void *slow_body_main(void *arg)
{
    slow_body *s = arg;
    for (int k = 0; k < SLOW_TAIL && !atomic_load(&s->stop); k++) {
        char b = k == SLOW_TAIL - 1 ? '}' : ' ';
        for (int i = 0; i < THREADS; i++)
            send(s->fds[i], &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        for (int t = 0; t < 40 && !atomic_load(&s->stop); t++)
            h_nap();            /* ~200 ms, stopping at once */
    }
    return NULL;
}

/* server.threads connections send a sale's head and most of its body at
 * once, then the rest a byte every 200 ms (done in 3 s): every worker waits
 * in CivetWeb's read of the body, which keeps waiting while bytes trickle
 * in. A new client's /healthz and sale must be answered within 2 s (the
 * evictor shuts bodies that take over max(1 s, 20 x evict_idle_ms) when
 * every worker is held); the slow sales must not run, not even once their
 * bodies would have been complete; their connections are closed unanswered.
 * Before, the new client waited for the slow bodies (26 s and more with a
 * byte every 5 s). */
static void test_slow_body(void **state)
{
    (void)state;
    H_SET_STOCK(dmn, SLOW_SKU, 100);
    H_SET_STOCK(dmn, SKU, 100);
    slow_body sb;
    memset(&sb, 0, sizeof sb);
    double t0 = h_now();
    for (int i = 0; i < THREADS; i++) {
        char req[512], body[128];
        int bl = snprintf(body, sizeof body, "{\"sku\":\"" SLOW_SKU "\",\"qty\":1,\"order_id\":\"slow-%02d\"", i);
        snprintf(req, sizeof req, SALE_HEAD "Content-Length: %d\r\n\r\n%s", bl + SLOW_TAIL, body);
        sb.fds[i] = raw_connect(dmn->port);
        raw_send(sb.fds[i], req, strlen(req));
    }
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, slow_body_main, &sb), 0);
    h_resp hz, sale;
    h_http(dmn, "GET", "/healthz", NULL, &hz, NULL);
    double t_hz = h_now() - t0;
    h_sale(dmn, "/sale", SKU, 1, NULL, &sale);
    double t_sale = h_now() - t0;
    /* The slow connections: closed, with nothing said. */
    int unanswered = 0;
    for (int i = 0; i < THREADS; i++) {
        answer a;
        read_answer(sb.fds[i], 5000, &a);
        unanswered += a.status == -1;
    }
    double t_closed = h_now() - t0;
    /* Past the moment the bodies would have been complete. */
    pthread_join(th, NULL);
    long long slow_stock = H_REDIS_STOCK(redis, SLOW_SKU);
    int orders = 0;
    for (int i = 0; i < THREADS; i++) {
        char id[16];
        snprintf(id, sizeof id, "slow-%02d", i);
        orders += !order_absent(id);
        close(sb.fds[i]);
    }
    printf("# %d bodies a byte per 200 ms, %d threads: /healthz %ld after %.2f s, sale %ld after "
           "%.2f s; %d slow connections closed unanswered (by %.2f s); slow sales run: %lld\n",
           THREADS, THREADS, hz.status, t_hz, sale.status, t_sale, unanswered, t_closed,
           100 - slow_stock);
    assert_int_equal(hz.status, 200);
    assert_int_equal(sale.status, 200);
    h_resp_free(&hz);
    h_resp_free(&sale);
    assert_true(t_hz < 2.0);
    assert_true(t_sale < 2.0);
    assert_int_equal(unanswered, THREADS);
    assert_int_equal(slow_stock, 100);
    assert_int_equal(orders, 0);
    h_pass();
}

/* --- main --------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_framing),
        T(test_framing_many_headers),
        T(test_idle_silent),
        T(test_idle_keepalive),
        T(test_idle_slowloris),
        T(test_evict_race),
        T(test_slow_body),
    };
    static const char *const sets[] = { "server.threads=" H_STR(THREADS), NULL };
    h_group_use(&redis, &dmn, sets);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
