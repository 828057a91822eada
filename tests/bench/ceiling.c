/* ceiling.c -- the bench's ceiling: nerve's HTTP stack with nothing behind it.
 *
 * A CivetWeb server that answers POST /sale with a fixed 200 JSON body of the
 * same shape as nerve's, after reading the whole request body, with the
 * CivetWeb options nerve uses (engine/http.c: keep-alive on, TCP_NODELAY,
 * worker threads as given) and the same way of writing the answer, on
 * 127.0.0.1 only. Whatever requests/s and latency wrk measures against it is
 * what this machine, this client and this HTTP library can do at most: the
 * bench reports nerve's figures as a ratio to it (tests/bench/README.md).
 *
 *     ceiling PORT [THREADS]      (THREADS default 32, nerve's default)
 *
 * Runs until SIGINT or SIGTERM, then stops CivetWeb and exits 0. Exits 2 on a
 * bad argument and 1 when the server cannot start (port taken, ...).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <civetweb.h>

#include "bench.h"

/* nerve's default server.max_body_bytes: a bigger body gets 413 there too. */
#define MAX_BODY 8192

/* nerve's 200 answer to a sale, newline included. */
#define SALE_BODY \
    "{\"status\":\"ok\",\"sku\":\"bench\",\"qty\":1,\"stock_remaining\":0,\"order_id\":\"x\"}\n"

/* Answer like engine/http.c's send_raw(): the same status line and headers,
 * head and body in one mg_write (two writes cost a second packet each). */
static int reply(struct mg_connection *conn, int status, const char *body, size_t len)
{
    char buf[1024];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n\r\n",
                     status, mg_get_response_code_text(conn, status), len);
    if (n < 0 || (size_t)n + len > sizeof(buf))
        return 500;
    memcpy(buf + n, body, len);
    mg_write(conn, buf, (size_t)n + len);
    return status;
}

#define REPLY_CONST(conn, status, lit) reply((conn), (status), (lit), sizeof(lit) - 1)

/* POST /sale: read and discard the body (a keep-alive connection must be left
 * at the start of the next request), then send the fixed answer. */
static int sale_handler(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    char buf[MAX_BODY + 1];
    size_t got = 0;
    int n;

    (void)cbdata;
    if (strcmp(ri->request_method, "POST") != 0)
        return REPLY_CONST(conn, 405,
                           "{\"error\":\"method_not_allowed\",\"message\":\"use POST\"}\n");
    if (ri->content_length > MAX_BODY)
        return REPLY_CONST(conn, 413,
                           "{\"error\":\"body_too_large\",\"message\":\"body too large\"}\n");
    while ((n = mg_read(conn, buf + got, sizeof(buf) - got)) > 0) {
        got += (size_t)n;
        if (got == sizeof(buf))
            return REPLY_CONST(conn, 413,
                               "{\"error\":\"body_too_large\",\"message\":\"body too large\"}\n");
    }
    if (n < 0)
        return 400;     /* the client went away mid-body: nothing to answer */
    return REPLY_CONST(conn, 200, SALE_BODY);
}

static int log_message(const struct mg_connection *conn, const char *message)
{
    (void)conn;
    fprintf(stderr, "ceiling: civetweb: %s\n", message);
    return 1;
}

/* Parse a decimal in [lo, hi] with strtol and an end pointer; -1 if invalid. */
static long parse_long(const char *s, long lo, long hi)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno == ERANGE || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    return v;
}

int main(int argc, char **argv)
{
    struct mg_callbacks cb;
    long port, nthreads = 32;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: ceiling PORT [THREADS]\n");
        return 2;
    }
    if ((port = parse_long(argv[1], 1, 65535)) < 0) {
        fprintf(stderr, "ceiling: bad port '%s' (1..65535)\n", argv[1]);
        return 2;
    }
    if (argc == 3 && (nthreads = parse_long(argv[2], 1, 1024)) < 0) {
        fprintf(stderr, "ceiling: bad thread count '%s' (1..1024)\n", argv[2]);
        return 2;
    }
    memset(&cb, 0, sizeof(cb));
    cb.log_message = log_message;
    return bench_serve("ceiling", port, nthreads, &cb, sale_handler, "");
}
