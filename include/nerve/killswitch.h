/* killswitch.h -- fleet-wide kill switch records and the local halt cache.
 *
 * A scope S ("global", "sku:<SKU>", "campaign:<id>", ...) is engaged by
 * creating PREFIXkill:S only if absent (SET NX), so exactly one instance of a
 * fleet wins and runs the emergency stop. The record is JSON:
 * {"scope","reason","rule","ts","instance","state","halt_sales","attempts"}
 * with state "stopping", "stopped", "stop_failed" or "dry_run". Engaged scopes
 * are also members of the set PREFIXkills, so that listing them costs
 * O(engaged), not a SCAN of the keyspace; a record deleted by hand is dropped
 * from that index at the next listing. Record and index hash to different
 * slots (on a Redis Cluster, different nodes), so each write is a command of
 * one key, in an order that leaves no record unindexed whatever engagements,
 * resets and listings interleave (killswitch.c).
 *
 * Sales must not pay a Redis round trip to learn whether they are halted, and
 * kill keys cannot share the SKU's hash slot, so every instance keeps a local
 * cache of what halts a sale: a flag for "global" and a hash set of the
 * "sku:<SKU>" scopes engaged with halt_sales (no other scope halts a sale).
 * It holds every one of them, however many Redis holds: one lookup per sale,
 * and none (no lock either) while nothing is halted. The cache is updated
 * synchronously by this instance's own engagements and resets, by a re-read
 * of one record from Redis when a control message names its scope, and by a
 * full refresh from Redis (on bus reconnect and periodically) that repairs
 * anything missed. An engagement halts in the cache before its record is
 * written, and no read of Redis (re-read, refresh) releases that halt until
 * the write has answered: such a read can land in between and find no
 * record yet. A control message is only a hint to re-read: what it
 * says (op, halt_sales) is never believed, so a publisher on the control
 * channel can neither halt nor release anything; the record in Redis is the
 * truth.
 *
 * Scopes follow the one grammar of scope.h.
 *
 * Thread-safety: ks_halted is lock-free when nothing is halted and takes a
 * read lock otherwise; every other function is thread-safe (refreshes are
 * serialised). Functions that talk to Redis take the caller's rds_client.
 * Ownership: ks_list returns a cJSON array the caller frees.
 */
#ifndef NERVE_KILLSWITCH_H
#define NERVE_KILLSWITCH_H

#include <stdbool.h>
#include <stddef.h>

#include "nerve/rds.h"
#include "nerve/scope.h"

struct cJSON;

#define KS_SCOPE_MAX SCOPE_MAX

typedef struct ks ks;

/* PREFIX is the key prefix ("nerve:"), CONTROL the channel on which
 * engagements and resets are announced to the fleet. Both copied. */
ks *ks_new(const char *prefix, const char *control_channel, const char *instance);
void ks_free(ks *k);

/* 1 when the C string S is a valid scope (scope_valid of scope.h). */
int ks_scope_valid(const char *s);

/* What a change of a scope's record did (ks_engage, ks_reset, act_kill). */
typedef enum {
    KS_ERROR = -1,    /* Redis error (message in ERR where there is one) */
    KS_UNCHANGED = 0, /* already so: engaged before / was not engaged */
    KS_CHANGED = 1,   /* this call engaged it (the caller runs the emergency stop) / reset it */
} ks_change;

/* Engage SCOPE. Returns KS_CHANGED when this call created the record (the
 * caller runs the emergency stop), KS_UNCHANGED when it was already engaged,
 * KS_ERROR on a Redis error (message in ERR). STATE is the initial state
 * ("stopping" or "dry_run"). */
ks_change ks_engage(ks *k, rds_client *c, const char *scope, const char *reason, const char *rule,
                    bool halt_sales, const char *state, double ts, char *err, size_t errlen);

/* Update the state (and attempts, last_error) of an existing record. 0 / -1. */
int ks_set_state(ks *k, rds_client *c, const char *scope, const char *state, int attempts,
                 const char *last_error);

/* Delete the record: KS_CHANGED deleted, KS_UNCHANGED was not engaged, KS_ERROR. */
ks_change ks_reset(ks *k, rds_client *c, const char *scope);

/* All records (the first 100,000), as a JSON array of objects (NULL on a
 * Redis error). */
struct cJSON *ks_list(ks *k, rds_client *c);

/* Rebuild the halt cache from every record in Redis. Changes this instance
 * made to the cache while the refresh read Redis are newer and win. 0 / -1
 * (the cache is then left as it was). */
int ks_refresh(ks *k, rds_client *c);

/* A control-channel message (from another instance or ourselves):
 * {"op":"engage"|"reset","scope":S,...}. When S can halt a sale, S's record
 * is read from Redis with C and the cache follows it (halted iff the record
 * exists with "halt_sales": true). A message that is not such JSON is
 * ignored and counted. One GET per message, nothing queued: a flood costs
 * round trips, never memory. */
void ks_on_control(ks *k, rds_client *c, const char *msg, size_t len);

typedef struct ks_stats {
    unsigned long long control_ok;      /* messages acted on (re-read, or nothing to re-read) */
    unsigned long long control_invalid; /* not JSON, no op/scope, scope outside the grammar */
    unsigned long long control_error;   /* the re-read failed (the periodic refresh repairs) */
    size_t halting;                     /* scopes in the halt cache */
} ks_stats;

void ks_get_stats(ks *k, ks_stats *out);

/* Is a sale of SKU halted? When it is, the halting scope is copied into
 * SCOPE_OUT (KS_SCOPE_MAX + 1 bytes) and 1 is returned. */
int ks_halted(ks *k, const char *sku, char *scope_out);

#endif
