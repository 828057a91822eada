/* httpc.h -- a small HTTP/1.1 client over plain sockets: URL parsing and
 * resolution, an incremental response parser, and a blocking one-shot
 * request with one overall deadline.
 *
 * Who uses it: `nerve stress`'s load loop (which owns its epoll loop and
 * feeds the parser whatever recv() returned: a library's event loop would
 * only stand in the way), and the commands that talk to a running daemon
 * (`nerve reload`, `nerve status`, `nerve killswitch`) through
 * httpc_request; one client, so a fix to framing or timeouts reaches all.
 *
 * Ownership: an httpc_reply's body is malloc'd, freed by httpc_reply_free;
 * an httpc_resp points into the caller's buffer.
 */
#ifndef NERVE_HTTPC_H
#define NERVE_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define HTTPC_ERR_MAX  256
#define HTTPC_RESP_MAX (1024 * 1024) /* largest response accepted */

typedef struct httpc_url {
    char base[300];     /* "http://HOST:PORT" as given, no trailing slash */
    char host[256];     /* what to resolve (IPv6 without brackets) */
    char hostport[280]; /* the Host header */
    int port;
    struct sockaddr_storage addr; /* filled by httpc_url_resolve */
    socklen_t addrlen;
} httpc_url;

/* Parse "http://HOST[:PORT][/]" into U (port 80 when absent). 0, or -1 with
 * the reason in ERR. */
int httpc_url_parse(const char *s, httpc_url *u, char *err, size_t errlen);
/* Resolve U's host into U->addr (first address getaddrinfo returns).
 * 0, or -1 with the reason in ERR. */
int httpc_url_resolve(httpc_url *u, char *err, size_t errlen);

/* A parsed response. Pointers point into the caller's buffer. */
typedef struct httpc_resp {
    int status;
    bool close; /* the server will close: Connection: close or HTTP/1.0 */
    const char *body;
    size_t body_len;
    size_t total; /* bytes of the whole message in the buffer */
} httpc_resp;

/* Parse the response at BUF[0..LEN). EOF: the peer closed after LEN bytes
 * (completes a close-delimited body). Returns 1 complete (R filled; a
 * chunked body is decoded in place, so BUF is modified), 0 incomplete, -1
 * malformed (reason in ERR). */
int httpc_parse(char *buf, size_t len, bool eof, httpc_resp *r, char *err, size_t errlen);

/* The answer of one blocking request. */
typedef struct httpc_reply {
    int status; /* 0: transport error, see err/errnum */
    char *body; /* malloc'd, NUL-terminated; NULL on error */
    size_t len;
    int errnum; /* errno of a transport error, 0 otherwise */
    char err[HTTPC_ERR_MAX];
} httpc_reply;

/* METHOD PATH on U with BODY (NULL: none) and, when TOKEN is not NULL,
 * `Authorization: Bearer TOKEN`, on a fresh connection closed afterwards,
 * all within TIMEOUT_MS. Fills OUT (free its body with httpc_reply_free).
 * Returns the status, 0 on a transport error. */
int httpc_request(const httpc_url *u, const char *method, const char *path, const char *token,
                  const char *body, int timeout_ms, httpc_reply *out);
void httpc_reply_free(httpc_reply *r);

#endif
