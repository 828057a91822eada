/* rds.h -- Redis connections (hiredis) with timeouts, reconnect and scripts.
 *
 * An rds_client is one hiredis connection (in redis.mode cluster, one per
 * node, routed by key slot: "Redis Cluster" below). It is NOT thread-safe: each thread
 * uses its own, which rds_pool hands out (one per calling thread, created on
 * first use), so the hot path never waits on a shared lock. A client connects
 * lazily; when a command fails with an I/O or protocol error the connection is
 * dropped and the next call reconnects, but not before a capped exponential
 * backoff has passed (1 ms doubling up to redis_reconnect_max_ms, equal
 * jitter: see backoff.h): while it
 * waits, calls fail at once, which is what lets sales answer 503 quickly while
 * Redis is down and recover by themselves when it is back.
 *
 * Ownership: replies returned by rds_* are the caller's, freed with
 * freeReplyObject(). rds_pool_free() frees every client it created.
 */
#ifndef NERVE_RDS_H
#define NERVE_RDS_H

#include <stddef.h>
#include <hiredis/hiredis.h>

/* Room for any key nerve formats (PREFIX + a SKU, scope or rule name + a
 * suffix): redis.prefix is at most 64 bytes, a SKU 128, a scope 200, a rule
 * name 128, with room to spare. Every module that builds keys sizes its
 * buffers with this and treats a longer key as an error (snprintf result
 * checked), never truncates one. */
#define RDS_KEY_MAX 600

typedef struct rds_opts {
    char host[256];
    int port;
    char user[128]; /* "" = AUTH with password only (or none) */
    char pass[256]; /* "" = no AUTH */
    int db;
    int connect_timeout_ms;
    int command_timeout_ms;
    int reconnect_max_ms;
    /* 1 = redis.mode cluster: host:port is a seed node, and every client
     * routes each command to the node serving its key's slot (see "Redis
     * Cluster" below). 0 = one server, exactly as before. */
    int cluster;
    /* redis.mode: sentinel: where the primary is (sentinel.h); HOST and
     * PORT are then unused. NULL: connect to HOST:PORT. Not owned. */
    struct snt *sentinel;
} rds_opts;

/* Parse redis://[user:pass@]host[:port][/db] (also `:pass@`, `pass@`,
 * percent-escapes in user and password, and a [bracketed] IPv6 host) into
 * O, keeping O's timeouts. Returns 0, or -1 with a message in ERR. Curl-free
 * so that the sale path links without libcurl; config validation uses
 * url_parse_redis (url.h), and the unit tests hold the two to the same
 * answers. */
int rds_parse_url(const char *url, rds_opts *o, char *err, size_t errlen);

/* Open a connection to O's server the one way nerve does: connect and
 * command timeouts, TCP keepalive, AUTH (user and password, or password
 * only) and SELECT when O asks for them. Used by rds_client and by the bus's
 * subscriber. With O->sentinel the server is the primary the sentinels name,
 * checked with ROLE (asked again once when it is dead or not a primary:
 * sentinel.h). Returns the context (the caller frees it with redisFree), or
 * NULL with "connect HOST:PORT: ...", "AUTH: ..." or "SELECT: ..." (or the
 * sentinels' answer) in ERR. Thread-safe. */
redisContext *rds_connect(const rds_opts *o, char *err, size_t errlen);

typedef struct rds_client rds_client;

/* A client that connects on first use. Copies O. NULL only on OOM. */
rds_client *rds_client_new(const rds_opts *o);
void rds_client_free(rds_client *c);

/* Run one command (printf-style as redisCommand, or argv form). Returns the
 * reply, or NULL on a connection problem (rds_errstr says which); an error
 * reply from Redis is returned as a REDIS_REPLY_ERROR reply, not NULL. A
 * -READONLY reply (the server was demoted to a replica under this
 * connection) is returned as well, and the connection is replaced before
 * the next command (in sentinel mode, by one to the new primary). */
redisReply *rds_command(rds_client *c, const char *fmt, ...);
redisReply *rds_commandargv(rds_client *c, int argc, const char **argv, const size_t *argvlen);

/* Pipelining: queue commands with rds_append*, then read exactly as many
 * replies with rds_get_reply. On NULL the connection was dropped; every
 * reply still pending is lost. */
int rds_appendargv(rds_client *c, int argc, const char **argv, const size_t *argvlen);
redisReply *rds_get_reply(rds_client *c);

/* Which connection C's next command goes out on (one server or sentinel
 * mode; 0 in cluster mode or when not connected): two equal values mean
 * the commands between them shared one connection. WAIT counts only the
 * writes of its own connection, so a caller that WAITs after a commit
 * checks the commit and the WAIT went out on the same one. */
unsigned long rds_conn_serial(const rds_client *c);

/* The last connection error, "" if none. */
const char *rds_errstr(const rds_client *c);
/* 1 when the last failure happened after a command had been sent (Redis may
 * have run it), 0 when nothing was sent (not connected). */
int rds_outcome_unknown(const rds_client *c);

/* A Lua script run by EVALSHA, loaded again by SCRIPT LOAD when Redis
 * answers NOSCRIPT (after a restart or SCRIPT FLUSH). Define one per script
 * as a static: RDS_SCRIPT(name, "lua source"). The sha is filled on first
 * use; sharing one rds_script across threads is safe. */
typedef struct rds_script {
    const char *src;
    char sha[41];
    _Atomic int loaded; /* sha is set; sha is never written after */
} rds_script;
#define RDS_SCRIPT_INIT(source) \
    { (source), { 0 }, 0 }

/* EVALSHA SCRIPT NKEYS ARGV... (ARGC strings, the keys first). Returns the
 * reply or NULL as rds_command. */
redisReply *rds_eval(rds_client *c, rds_script *s, int nkeys, int argc, const char **argv,
                     const size_t *argvlen);

/* Make sure S's sha is known (SCRIPT LOAD once), so that a caller can
 * pipeline "EVALSHA s->sha ..." itself. 0, or -1 (rds_errstr says why). A
 * pipelined EVALSHA can still answer NOSCRIPT after a Redis restart: fall
 * back to rds_eval then. */
int rds_script_load(rds_client *c, rds_script *s);

/* Record SHA (40 hex characters, what SCRIPT LOAD answered for S's source)
 * as S's sha, once: for loaders that do not go through an rds_client
 * (mux.h). Thread-safe. */
void rds_script_set_sha(rds_script *s, const char *sha);

/* ---- Redis Cluster (rds_cluster.c) ----------------------------------------
 *
 * With o->cluster set, an rds_client holds one connection per node it has
 * talked to (each connected lazily, with the same timeouts, AUTH and backoff
 * as a standalone client), and every client of the process made from the
 * same seed shares one slot map (cluster.h), fetched by CLUSTER SLOTS on
 * first use and again after MOVED or a node failure (at most once per
 * RDS_CLUSTER_REFRESH_MS). Each command goes to the primary of its key's
 * slot: argv[1] for most commands; the keys of EVAL/EVALSHA/FCALL (none:
 * any node); the streams after STREAMS of XREAD/XREADGROUP; the key after the
 * subcommand of XGROUP/XINFO/OBJECT/MEMORY; every key of DEL/EXISTS/MGET/...
 * Commands without a key (PING, INFO, PUBLISH, CLUSTER, SCAN...) go to one
 * primary (the first that connects: nothing was sent to one that did not);
 * SCRIPT LOAD and SCRIPT FLUSH go to every primary, so that EVALSHA
 * finds its script wherever its keys live.
 *
 *   - keys of one command in different slots: NULL, nothing sent, rds_errstr
 *     says "CROSSSLOT ..." (a caller bug: nerve's key layout is single-slot);
 *   - MOVED: the map is refreshed (policy of cl_refresh) and the command
 *     retried on the node named, at most RDS_CLUSTER_REDIRECTS times;
 *   - ASK: ASKING + the command on the node named, the map unchanged;
 *   - TRYAGAIN, CLUSTERDOWN, a node unreachable: NULL like a connection
 *     failure (rds_outcome_unknown 0: nothing ran; a node lost after the
 *     command was written: 1, it may have run). A redirect means the command
 *     did NOT run, so retrying one never runs a commit twice.
 *
 * Pipelines: each appended command is written to its node; replies come back
 * in the order appended (the first rds_get_reply writes every node's batch,
 * then reads them all). A MOVED or ASK reply inside a pipeline is resolved
 * by sending that one command again, synchronously. A command whose node
 * cannot be reached when it is appended is not sent; its reply, in its
 * place, is the error "UNREACHABLE redis cluster: ... (not sent)", and the
 * pipeline goes on for the other nodes. On NULL, as in
 * standalone mode, every reply still pending is lost (their connections are
 * closed). */
#define RDS_CLUSTER_REDIRECTS  5
#define RDS_CLUSTER_REFRESH_MS 100

/* Where a command goes (ARGC arguments ARGV, lengths ARGVLEN), by the rules
 * above: its keys' slot 0..16383; RDS_SLOT_ANY (no key: any node);
 * RDS_SLOT_ALL (every primary); RDS_SLOT_CROSS when its keys are in
 * different slots, with a message naming two of them in ERR. Pure. */
#define RDS_SLOT_ANY   (-1)
#define RDS_SLOT_CROSS (-2)
#define RDS_SLOT_ALL   (-3)
int rds_cluster_slot(int argc, const char **argv, const size_t *argvlen, char *err, size_t errlen);

/* Process-wide counts, for /metrics. */
typedef struct rds_cluster_stats {
    unsigned long long moved, ask;     /* redirects followed */
    unsigned long long refreshes;      /* slot maps fetched and installed */
    unsigned long long refresh_errors; /* fetches no node answered */
} rds_cluster_stats;
void rds_cluster_get_stats(rds_cluster_stats *out);

/* 1 when C routes by slot (its opts had cluster set), else 0. */
int rds_is_cluster(const rds_client *c);

/* Cluster mode: fetch the slot map now (from the nodes of the current map,
 * then the seed) and report how many of the 16384 slots it covers, and
 * whether the node asked says cluster_state:ok. 0 when both hold; -1 with
 * why in ERR (also when no node answered). Standalone: 0. For /readyz. */
int rds_cluster_check(rds_client *c, char *err, size_t errlen);

/* Cluster mode, for work done per node (SCAN, reading each node's streams):
 * the number of primaries in C's current map (fetched if there is none;
 * 0 when no node answered), and one command sent to the I-th of them
 * (0..n-1; no redirect followed: a MOVED comes back as an error reply). The
 * index is valid until the map changes. Standalone: 1 node, C itself. */
int rds_cluster_nnodes(rds_client *c);
redisReply *rds_commandargv_node(rds_client *c, int node, int argc, const char **argv,
                                 const size_t *argvlen);

/* One client per calling thread. Thread-safe. */
typedef struct rds_pool rds_pool;
rds_pool *rds_pool_new(const rds_opts *o);
rds_client *rds_pool_client(rds_pool *p); /* never NULL except on OOM */
void rds_pool_free(rds_pool *p);

#endif
