/* cluster.h -- Redis Cluster routing: key slots, the slot map, redirects.
 *
 * Debian 12's hiredis has no cluster support and Debian packages no cluster
 * client, so the routing every cluster client implements (hiredis-cluster,
 * redis-py's RedisCluster, Lettuce) is here, small and pure where it can be:
 *
 *   - cl_keyslot: CRC16 (XMODEM) of the key, or of its hash tag, mod 16384,
 *     exactly as the Redis Cluster specification says. nerve's keys put every
 *     SKU's keys and its partition's streams under one tag {pN} (keys.h), so
 *     a commit script and a partition's pipeline go to one node.
 *   - cl_map: which primary (and which replicas) serve each of the 16384
 *     slots, built from a CLUSTER SLOTS reply. Immutable once built: a
 *     refresh builds a new map and the user swaps pointers, so readers never
 *     lock.
 *   - cl_parse_redirect: the "MOVED slot host:port" and "ASK slot host:port"
 *     error replies, read as hostile input (a malformed one is an error, never
 *     a crash or a guess).
 *   - cl_refresh: who fetches CLUSTER SLOTS again when MOVED arrives. MOVED
 *     itself names the node to retry on, so the caller retries there at once;
 *     the full map is refetched by one caller at a time, at most once per
 *     interval, as Lettuce's adaptive refresh and hiredis-cluster do. ASK is a
 *     one-off redirect during a slot migration and never refreshes the map.
 *   - cl_info_cluster_enabled / cl_map_fetch: the two round trips (INFO
 *     cluster, CLUSTER SLOTS) on an rds_client.
 *
 * Connections per node, following MOVED/ASK, scripts on every node and
 * pipelines spread over nodes are rds's (engine/rds_cluster.c, redis.mode
 * cluster), built on this module.
 *
 * Ownership: cl_map_* constructors return a map the caller frees with
 * cl_map_free (NULL is fine); nodes returned by cl_map_node belong to the map.
 * Thread-safety: every function is pure or works on the caller's objects;
 * a built cl_map may be read by any number of threads; cl_refresh is safe to
 * share between threads (atomics).
 */
#ifndef NERVE_CLUSTER_H
#define NERVE_CLUSTER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "nerve/rds.h"

#define CL_SLOTS        16384
#define CL_HOST_MAX     256  /* a host name or address, with its NUL */
#define CL_NODES_MAX    1000 /* Redis' own advice for a cluster's size */
#define CL_ID_MAX       41   /* a node id: 40 hex characters and a NUL */
#define CL_REPLICAS_MAX 16

/* CRC16-CCITT (XMODEM: polynomial 0x1021, init 0, no reflection), the
 * checksum Redis Cluster hashes keys with. CRC16("123456789") = 0x31C3. */
uint16_t cl_crc16(const char *buf, size_t len);

/* The part of KEY (LEN bytes) that is hashed: the bytes between the first
 * '{' and the first '}' after it, when there are any; else the whole key
 * (also for "{}", an empty tag). Sets *TAGLEN; returns a pointer into KEY. */
const char *cl_hashtag(const char *key, size_t len, size_t *taglen);

/* The slot of KEY (LEN bytes): CRC16 of its hash tag mod 16384. */
int cl_keyslot(const char *key, size_t len);

/* ---- the slot map ------------------------------------------------------- */

typedef struct cl_addr {
    char host[CL_HOST_MAX];
    int port;           /* 1..65535 */
    char id[CL_ID_MAX]; /* the node id, "" when the reply has none */
} cl_addr;

typedef struct cl_node {
    cl_addr primary;
    cl_addr replicas[CL_REPLICAS_MAX]; /* kept for later (reads, failover) */
    int nreplicas;
} cl_node;

typedef struct cl_map cl_map;

/* Build a map from a CLUSTER SLOTS reply R: an array of
 * [start, end, [host, port, id?, ...], [replica]...] entries. A primary
 * named by several ranges is one node. An empty host (a node that does not
 * know its own address) and "?" (Redis 7's unknown endpoint) mean the node
 * that answered: SELF_HOST replaces them. Refused, with a message in ERR
 * naming the entry: a reply that is not an array, a range out of 0..16383
 * or reversed, a slot claimed twice, a host too long, a port out of
 * 1..65535, more than CL_NODES_MAX primaries. Slots no entry names stay
 * uncovered (cl_map_covered says how many are covered). NULL on error. */
cl_map *cl_map_from_reply(const redisReply *r, const char *self_host, char *err, size_t errlen);

/* The node serving SLOT (0..16383), or NULL when the slot is uncovered (or
 * out of range). Belongs to M. */
const cl_node *cl_map_node(const cl_map *m, int slot);
/* The index of the node serving SLOT in 0..cl_map_nnodes(M)-1, or -1: a
 * dense index for per-node arrays (connections, pipelines). */
int cl_map_node_index(const cl_map *m, int slot);
int cl_map_nnodes(const cl_map *m);
const cl_node *cl_map_node_at(const cl_map *m, int i);
/* How many of the 16384 slots have a node. */
int cl_map_covered(const cl_map *m);
void cl_map_free(cl_map *m);

/* ---- redirects ---------------------------------------------------------- */

typedef enum { CL_MOVED = 1, CL_ASK = 2 } cl_redirect_kind;

typedef struct cl_redirect {
    cl_redirect_kind kind;
    int slot; /* 0..16383 */
    /* "" = the node that answered (Redis 7's unknown endpoint, ":port"). */
    char host[CL_HOST_MAX];
    int port; /* 1..65535 */
} cl_redirect;

/* Read the error reply text S (LEN bytes, without the leading '-') as
 * "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>" (the host may
 * be an unbracketed IPv6 address: the port is after the last ':'). 0 with
 * OUT filled; 1 when S is another error (not a redirect: OUT untouched);
 * -1 when S starts with MOVED or ASK but is malformed (a slot outside
 * 0..16383, a missing or bad port, a host longer than CL_HOST_MAX - 1 bytes,
 * trailing text), with a message in ERR. */
int cl_parse_redirect(const char *s, size_t len, cl_redirect *out, char *err, size_t errlen);

/* ---- when to fetch the map again --------------------------------------- */

/* Shared by the threads that use one map. After a MOVED, cl_refresh_due
 * says whether the calling thread is the one to fetch CLUSTER SLOTS now:
 * the first to ask after at least min_interval_ms since the previous fetch
 * began, while no fetch is in flight; everyone else just follows the MOVED
 * (retries at the node it names) and goes on with the map it has. The one
 * told yes must call cl_refresh_done when its fetch ends, ok or not; a
 * failed fetch leaves the map stale, so the next MOVED (after the interval)
 * tries again. Times are the caller's monotonic ms (clock.h), which keeps
 * this pure and testable. */
typedef struct cl_refresh {
    int min_interval_ms;
    _Atomic int inflight;      /* a fetch is under way */
    _Atomic int stale;         /* a MOVED arrived since the last good fetch */
    _Atomic long long last_ms; /* when the last fetch began */
    _Atomic long long fetches; /* fetches begun, for metrics and tests */
} cl_refresh;

void cl_refresh_init(cl_refresh *r, int min_interval_ms);
/* A MOVED arrived at NOW_MS: 1 when the caller must fetch now, else 0. */
int cl_refresh_due(cl_refresh *r, long long now_ms);
/* The fetch the caller was told to do ended (OK 1: the new map is in use). */
void cl_refresh_done(cl_refresh *r, int ok);

/* ---- round trips on one node ------------------------------------------- */

/* Whether the server C reaches is a cluster node: INFO cluster
 * (cluster_enabled:1), or CLUSTER INFO when INFO is refused (an ACL user
 * without @dangerous). 1 when it is, 0 when not; -1 with why in ERR when it
 * did not answer (connection); -2 with why in ERR when it answered but
 * refused both commands, so nobody can tell. */
int cl_info_cluster_enabled(rds_client *c, char *err, size_t errlen);

/* CLUSTER SLOTS on C, built into a map (cl_map_from_reply, with C's host as
 * SELF_HOST). NULL with why in ERR. */
cl_map *cl_map_fetch(rds_client *c, const char *self_host, char *err, size_t errlen);

#endif
