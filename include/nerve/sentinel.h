/* sentinel.h -- the current Redis primary, as Redis Sentinel names it.
 *
 * In redis.mode: sentinel every connection nerve opens (rds_connect: the
 * per-thread clients, the commit pipelines, the bus subscriber, the
 * consumer group, the ledger and decision writers, the CLIs) goes to the
 * primary the sentinels name, following the protocol Redis documents for
 * Sentinel clients ("Sentinel clients guidelines"):
 *
 *   1. ask the sentinels in order, `SENTINEL get-master-addr-by-name NAME`,
 *      each with the connect and command timeouts; the first that answers
 *      moves to the front of the list (it is the one to ask next time);
 *   2. connect to the address it names and check with `ROLE` that it is a
 *      primary (a sentinel can lag; a demoted primary comes back as a
 *      replica): when it is not, forget it and ask again;
 *   3. keep the answer (the cache) until a connection to it fails, `ROLE`
 *      says it is not a primary, or it answers -READONLY (it was demoted
 *      under an open connection): then ask again;
 *   4. (the daemon) stay subscribed on every sentinel (snt_watch_start)
 *      to `+failover-state-send-slaveof-noone` (the sentinel running a
 *      failover promotes a replica now) and `+switch-master` (it is done):
 *      from the first to the second no connection goes to any primary
 *      (snt_primary answers SNT_DOWN, sales 503), and at the second the
 *      cached address is replaced; each time, every rds_client connection
 *      opened before is replaced before its next command (snt_generation,
 *      rds.c). The bus subscriber and the stream readers (their own
 *      rds_connect) move when their connection fails, or when the sentinels
 *      demote the old primary, which closes its clients' connections.
 *      Without this, a primary that is still up (SENTINEL FAILOVER, a
 *      network split) keeps taking writes over open connections after a
 *      replica was promoted, until the sentinels demote it about 10 s
 *      later, and those writes are lost (measured: 9,234 of 12,186 sales
 *      answered 200 in test_sentinel's manual failover; 0 with the watch).
 *
 * So after a failover, connections to the dead primary fail, their clients
 * reconnect (rds.h's backoff), the first reconnect asks the sentinels, and
 * once they have promoted a replica every connection goes there.
 *
 * Authentication: the primary's user and password are redis.url's (or the
 * redis-sentinel:// URL's). The sentinels are asked without AUTH unless
 * NERVE_SENTINEL_PASSWORD is set (environment only, a secret); then every
 * sentinel gets `AUTH <password>` (Sentinel's own `requirepass`, one
 * password for all of them, as Redis' own clients assume).
 *
 * Ownership: snt_shared returns a resolver that lives until the process
 * exits (there is one per distinct configuration, normally one: every
 * rds_opts copy of a process points at it, so none of them may free it).
 * Thread-safety: every function. The cache is behind a mutex; a resolution
 * holds it, so that a reconnect storm asks the sentinels once, not once per
 * connection.
 */
#ifndef NERVE_SENTINEL_H
#define NERVE_SENTINEL_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#define SNT_MAX      256 /* sentinels per configuration (redis.sentinels) */
#define SNT_HOST_MAX 256

typedef struct snt snt;

typedef struct snt_addr {
    char host[SNT_HOST_MAX];
    int port;
} snt_addr;

/* The resolver for master MASTER watched by the N sentinels ADDRS (in the
 * order to ask them), asked with the given timeouts and, when PASS is not
 * "" or NULL, AUTH PASS. The same configuration gives the same resolver
 * (its cache shared). NULL on OOM or a bad argument (N outside 1..SNT_MAX,
 * an empty master), with why in ERR. */
snt *snt_shared(const snt_addr *addrs, int n, const char *master, const char *pass,
                int connect_timeout_ms, int command_timeout_ms, char *err, size_t errlen);

/* What snt_primary answered. */
enum {
    SNT_OK = 0,
    SNT_DOWN = -1,    /* no sentinel answered (or none has the master's address) */
    SNT_UNKNOWN = -2, /* every sentinel that answered does not know MASTER */
};

/* The current primary's address into HOST (HOSTLEN bytes) and *PORT: the
 * cached one, or the sentinels' answer. SNT_OK, or SNT_DOWN / SNT_UNKNOWN
 * with a message naming the sentinels and the master in ERR. After a failed
 * resolution the sentinels are not asked again for 100 ms (the same error is
 * returned), so that a fleet of reconnecting clients does not hammer them. */
int snt_primary(snt *s, char *host, size_t hostlen, int *port, char *err, size_t errlen);

/* HOST:PORT, which snt_primary named, is not the primary (a connection to
 * it failed, ROLE or -READONLY said so): the next snt_primary asks the
 * sentinels. A stale report (the cache names another address by now) is
 * ignored. */
void snt_forget(snt *s, const char *host, int port);

/* Ask CTX (a fresh connection, AUTH done) `ROLE`: 0 when it is a primary
 * (or ROLE is not allowed to this user: nothing to tell, -READONLY will),
 * -1 with "HOST:PORT is a replica, not the primary" (or the I/O error) in
 * ERR. */
int snt_check_role(redisContext *ctx, char *err, size_t errlen);

/* 1 when R is a -READONLY error reply (a write sent to a replica: a
 * demoted primary), 0 otherwise. R may be NULL. */
int snt_readonly_reply(const redisReply *r);

/* How many times the primary changed address since the start (the first
 * answer is not a change): a connection opened at another generation may
 * be to a former primary, and is replaced (rds.c). */
unsigned long snt_generation(const snt *s);

/* Start (once; later calls do nothing) the thread that stays subscribed to
 * `+switch-master` on the sentinels, one at a time, reconnecting to the
 * next when it fails. 0, or -1 with why in ERR. snt_watch_stop stops and
 * joins it (a no-op when not started). */
int snt_watch_start(snt *s, char *err, size_t errlen);
void snt_watch_stop(snt *s);

#endif
