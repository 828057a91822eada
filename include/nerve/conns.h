/* conns.h -- the HTTP server's open connections, and shutting idle ones
 * when every worker is held.
 *
 * CivetWeb gives a connection a worker thread from accept to close: while it
 * waits for a request (an idle keep-alive connection, one that sends
 * nothing, or one that sends its head a byte a second) the thread waits with
 * it, up to server.request_timeout_ms. With every worker held so, a new
 * client waited in CivetWeb's queue for whole timeouts (threads + 50 idle
 * connections: 10 s for one sale). So each connection has a slot saying
 * whether it is in a handler or waiting for a request, and since when; when
 * every worker holds a connection, an evictor thread shuts the ones that
 * have waited at least server.evict_idle_ms, longest waiting first. Their
 * worker sees the connection end and takes the next one from the queue. A
 * client shut between two requests reconnects (RFC 9112 §9.3.1 lets a server
 * close an idle connection at any time). Linux only (/proc/self/fd).
 *
 * Thread-safety: conns_open/conns_close are called from CivetWeb's
 * connection callbacks and take the module's mutex; conns_busy is lock-free
 * (the worker owns its slot; the evictor reads it atomically). Ownership:
 * conns_new allocates one slot per worker; conns_free frees them, after
 * conns_stop and after CivetWeb stopped.
 */
#ifndef NERVE_CONNS_H
#define NERVE_CONNS_H

struct mg_connection;

typedef struct conns conns;
typedef struct conns_slot conns_slot;

/* NSLOTS = CivetWeb's worker count; EVICT_IDLE_MS = server.evict_idle_ms.
 * NULL on OOM. */
conns *conns_new(int nslots, int evict_idle_ms);
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
/* The connection's worker enters (BUSY 1) or leaves a handler. SLOT may be
 * NULL. */
void conns_busy(conns_slot *slot, int busy);

/* Connections shut while waiting for a request, since conns_new. */
unsigned long long conns_evicted(conns *c);

#endif
