/* lock.h -- a per-key distributed lock in Redis.
 *
 * The lock is a key holding a random token with a TTL (SET key token NX PX).
 * Acquisition retries with jittered exponential backoff (no busy spin) until
 * max_wait_ms has passed. Release and extend are compare-and-delete and
 * compare-and-pexpire scripts, so a holder whose lock already expired and
 * passed to someone else can never release or extend the new holder's lock.
 * The lock alone cannot stop a stalled holder from writing after expiry:
 * writers must check the token inside the same script that writes (see
 * LOCK_FENCE_LUA and sale.c's commit script).
 *
 * All functions take the caller's rds_client (one per thread) and are
 * thread-safe in that sense.
 */
#ifndef NERVE_LOCK_H
#define NERVE_LOCK_H

#include <stddef.h>
#include "nerve/rds.h"

#define LOCK_TOKEN_LEN 32 /* hex characters: 128 random bits (arc4random_buf) */

typedef enum {
    LOCK_ERR = -1,    /* Redis unreachable or replied an error */
    LOCK_OK = 0,      /* acquired */
    LOCK_TIMEOUT = 1, /* still held by someone else after max_wait_ms */
} lock_status;

/* Fill TOKEN (LOCK_TOKEN_LEN hex chars + NUL) with 128 fresh random bits. */
void lock_token_new(char token[LOCK_TOKEN_LEN + 1]);

/* Acquire KEY for TTL_MS with a new token written into TOKEN, waiting up to
 * MAX_WAIT_MS (0 = try once). On LOCK_ERR a message is in ERR. */
lock_status lock_acquire(rds_client *c, const char *key, int ttl_ms, int max_wait_ms,
                         char token[LOCK_TOKEN_LEN + 1], char *err, size_t errlen);

/* Try once to take KEY with the caller's TOKEN. */
lock_status lock_try(rds_client *c, const char *key, const char *token, int ttl_ms, char *err,
                     size_t errlen);

/* What a compare-and-X on the lock did. */
typedef enum {
    LOCK_CAS_ERROR = -1,    /* Redis unreachable or replied an error */
    LOCK_CAS_NOT_OWNER = 0, /* KEY does not hold TOKEN: nothing changed */
    LOCK_CAS_DONE = 1,      /* released / extended */
} lock_cas;

/* Delete KEY only if it still holds TOKEN. */
lock_cas lock_release(rds_client *c, const char *key, const char *token);

/* Reset KEY's TTL to TTL_MS only if it still holds TOKEN. */
lock_cas lock_extend(rds_client *c, const char *key, const char *token, int ttl_ms);

/* Lua fragment for scripts that write under the lock: with KEYS[1] the lock
 * key and ARGV[1] the token, it returns {"lock_lost"} unless the lock is held
 * by that token. Paste at the top of such a script. */
#define LOCK_FENCE_LUA "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lock_lost'} end\n"

#endif
