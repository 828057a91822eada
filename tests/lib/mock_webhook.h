/* mock_webhook.h -- a tiny programmable HTTP/1.1 server for tests.
 *
 * A test double for the emergency-stop webhook (and any other HTTP peer):
 * it listens on 127.0.0.1, answers each request from a script of statuses
 * (e.g. 500, 500, then 200 forever), can delay its answers (a slow or hanging
 * webhook) or close the connection without answering, and records every
 * request it received: arrival time, method, path, headers, body.
 *
 * Plain sockets: one listener thread (poll + accept) and one thread per
 * connection (keep-alive, Content-Length bodies, "Expect: 100-continue";
 * chunked request bodies are answered 501). Every wait polls a stop pipe too,
 * so mock_stop() returns promptly even while answers are being delayed.
 *
 * Threading: every function is thread-safe. Records are immutable once
 * visible: a pointer from mock_request() stays valid until mock_reset() or
 * mock_stop().
 * Ownership: mock_start() returns a server freed by mock_stop() (NULL fine).
 *
 * Typical use:
 *     int port = 0;
 *     mock_server *m = mock_start(&port);
 *     mock_set_script(m, (int[]){ 500, 500 }, 2, 200);
 *     ... point the code under test at http://127.0.0.1:<port>/hook ...
 *     assert_int_equal(mock_wait_requests(m, 3, 5000), 0);
 *     const mock_req *r = mock_request(m, 0);
 *     mock_stop(m);
 */
#ifndef NERVE_MOCK_WEBHOOK_H
#define NERVE_MOCK_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>

/* A script status: close the connection without answering. */
#define MOCK_CLOSE (-1)

typedef struct mock_server mock_server;

/* One scripted answer. */
typedef struct mock_step {
    int status;         /* HTTP status, or MOCK_CLOSE */
    int delay_ms;       /* wait before answering (or closing); -1 = the server's delay */
} mock_step;

/* One received request, as recorded when its body was complete (before any
 * delay). Strings are NUL-terminated. */
typedef struct mock_req {
    long long t_ns;         /* CLOCK_MONOTONIC ns (see mock_now_ns) when its first byte arrived */
    char method[16];
    const char *path;       /* request target as sent, e.g. "/hook?x=1" */
    const char *head;       /* request line and header lines, CRLF-separated */
    const char *authorization;  /* Authorization value, NULL when absent */
    const char *content_type;   /* Content-Type value, NULL when absent */
    const char *body;       /* body_len bytes (+ NUL) */
    size_t body_len;
    int status;             /* what the server answered: a status or MOCK_CLOSE */
    int delay_ms;           /* how long it waited before that */
} mock_req;

/* Listen on 127.0.0.1:*PORT (0 = any free port; the chosen one is written
 * back). Default behaviour: answer 200 at once. NULL on failure (errno set). */
mock_server *mock_start(int *port);

/* Stop the server, close every connection (delayed answers are abandoned),
 * free all records. NULL is fine. */
void mock_stop(mock_server *m);

int mock_port(const mock_server *m);

/* Write "http://127.0.0.1:<port><path>" into BUF; 0, or -1 when it does not fit. */
int mock_url(const mock_server *m, const char *path, char *buf, size_t len);

/* Answer the next N requests with STATUSES in order (MOCK_CLOSE allowed),
 * every later one with DEFAULT_STATUS; each after the server's delay.
 * Replaces any previous script and restarts it. */
void mock_set_script(mock_server *m, const int *statuses, size_t n, int default_status);

/* Same with a delay per step; DFLT answers the requests after the script. */
void mock_set_steps(mock_server *m, const mock_step *steps, size_t n, mock_step dflt);

/* The delay of steps that say -1 (mock_set_script's): 0 = answer at once. */
void mock_set_delay_ms(mock_server *m, int ms);

/* Answer bodies: 0 (default) = {"status":N}; otherwise N bytes of 'x'. */
void mock_set_body_bytes(mock_server *m, size_t n);

/* Requests recorded so far. */
size_t mock_requests(mock_server *m);

/* The I-th request (0-based, in arrival order), NULL when there is none. */
const mock_req *mock_request(mock_server *m, size_t i);

/* Wait until at least N requests were recorded: 0, or -1 after TIMEOUT_MS. */
int mock_wait_requests(mock_server *m, size_t n, int timeout_ms);

/* Forget every record (invalidating pointers from mock_request) and restart
 * the script. Connections stay open. */
void mock_reset(mock_server *m);

/* Case-insensitive lookup of header NAME in R's head, copied into BUF;
 * BUF, or NULL when absent. */
const char *mock_header(const mock_req *r, const char *name, char *buf, size_t len);

/* CLOCK_MONOTONIC in ns: the clock of mock_req.t_ns. */
long long mock_now_ns(void);

#endif
