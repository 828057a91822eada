/* conns.h -- the HTTP server's open connections, and shutting idle ones
 * when every worker is held.
 *
 * CivetWeb gives a connection a worker thread from accept to close: while it
 * waits for a request (an idle keep-alive connection, one that sends
 * nothing, or one that sends its head a byte a second) the thread waits with
 * it, up to server.request_timeout_ms. With every worker held so, a new
 * client waited in CivetWeb's queue for whole timeouts (threads + 50 idle
 * connections: 10 s for one sale). So each connection has a slot saying
 * whether it waits for a request, is in a handler, or is reading a body, and
 * since when; when every worker holds a connection, an evictor thread shuts
 * the ones that have waited at least server.evict_idle_ms, longest waiting
 * first, and those whose body has been arriving for longer than
 * max(1000 ms, 20 x evict_idle_ms), capped at request_timeout_ms (a body
 * sent a byte every few seconds would otherwise hold its worker for good:
 * CivetWeb's read keeps waiting while bytes trickle in). Once a pass shut
 * slow bodies, the other slow bodies are shut as they come of age for one
 * more body limit, workers free or not: a flood's connections are taken up
 * over some milliseconds, and those a pass found just too young would
 * otherwise finish and run their sales. Their worker sees
 * the connection end and takes the next one from the queue. A client shut
 * between two requests reconnects (RFC 9112 §9.3.1 lets a server close an
 * idle connection at any time). Linux only (/proc/self/fd).
 *
 * A slot's state (IDLE, BUSY, BODY, EVICTING) changes only by
 * compare-and-swap, so the evictor and the worker never both win: the
 * evictor shuts a connection only after it swapped IDLE (or BODY) for
 * EVICTING, and a worker runs a handler only after it swapped IDLE for BUSY.
 * A request whose head arrived as its connection was being shut is thus
 * never handled (the client sees the connection close with nothing done),
 * and a request being handled is never shut (its answer is never lost).
 *
 * Thread-safety: conns_open/conns_close are called from CivetWeb's
 * connection callbacks and take the module's mutex; conns_enter, conns_leave
 * and conns_body are lock-free (atomic swaps on the worker's slot).
 * Ownership: conns_new allocates one slot per worker; conns_free frees them,
 * after conns_stop and after CivetWeb stopped.
 */
#ifndef NERVE_CONNS_H
#define NERVE_CONNS_H

struct mg_connection;

typedef struct conns conns;
typedef struct conns_slot conns_slot;

/* NSLOTS = CivetWeb's worker count; EVICT_IDLE_MS = server.evict_idle_ms;
 * REQUEST_TIMEOUT_MS = server.request_timeout_ms (bounds the body limit).
 * NULL on OOM. */
conns *conns_new(int nslots, int evict_idle_ms, int request_timeout_ms);
/* Start the evictor thread. 0, or -1 (idle connections then hold workers
 * for request_timeout_ms, as CivetWeb alone does). */
int conns_start(conns *c);
/* Stop and join the evictor: before mg_stop, which frees the connections it
 * reads. Idempotent. */
void conns_stop(conns *c);
void conns_free(conns *c);

/* A connection opened / closed (CivetWeb's init_connection and
 * connection_close). conns_open returns its slot, NULL when none is free. */
conns_slot *conns_open(conns *c, const struct mg_connection *conn);
void conns_close(conns *c, conns_slot *slot);
/* The connection's worker is about to run a handler: 0, or -1 when the
 * evictor is shutting the connection (run nothing: close it unanswered).
 * SLOT may be NULL (0). */
int conns_enter(conns_slot *slot);
/* The handler is done; the connection waits for its next request from now. */
void conns_leave(conns_slot *slot);
/* The handler starts (READING 1) or ends (0) reading the request body.
 * -1 when the evictor shut the connection meanwhile: the body read is cut
 * short, and the request must not be acted on. */
int conns_body(conns_slot *slot, int reading);

/* Connections shut, since conns_new: waiting for a request, and with a
 * body arriving too slowly (of those). */
unsigned long long conns_evicted(conns *c);
unsigned long long conns_evicted_body(conns *c);

#endif
