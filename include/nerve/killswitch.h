/* killswitch.h -- fleet-wide kill switch records and the local halt cache.
 *
 * A scope S ("global", "sku:<SKU>", "campaign:<id>", ...) is engaged by
 * creating PREFIXkill:S only if absent (SET NX), so exactly one instance of a
 * fleet wins and runs the emergency stop. The record is JSON:
 * {"scope","reason","rule","ts","instance","state","halt_sales","attempts"}
 * with state "stopping", "stopped", "stop_failed" or "dry_run". Engaged scopes
 * are also members of the set PREFIXkills, so that listing them costs
 * O(engaged), not a SCAN of the keyspace; a record deleted by hand is dropped
 * from that index at the next listing.
 *
 * Sales must not pay a Redis round trip to learn whether they are halted, and
 * kill keys cannot share the SKU's hash slot, so every instance keeps a local
 * cache of the scopes engaged with halt_sales. The cache is updated
 * synchronously by this instance's own engagements, by control messages that
 * other instances publish (bus control channel), and by a full refresh from
 * Redis (on bus reconnect and periodically) that repairs anything missed.
 *
 * Thread-safety: ks_halted is lock-free when nothing is halted and takes a
 * read lock otherwise; every other function is thread-safe. Functions that
 * talk to Redis take the caller's rds_client.
 * Ownership: ks_list returns a cJSON array the caller frees.
 */
#ifndef NERVE_KILLSWITCH_H
#define NERVE_KILLSWITCH_H

#include <stdbool.h>
#include <stddef.h>

#include "nerve/rds.h"

struct cJSON;

#define KS_SCOPE_MAX 160

typedef struct ks ks;

/* PREFIX is the key prefix ("nerve:"), CONTROL the channel on which
 * engagements and resets are announced to the fleet. Both copied. */
ks *ks_new(const char *prefix, const char *control_channel, const char *instance);
void ks_free(ks *k);

/* 1 when S is a valid scope: 1..KS_SCOPE_MAX bytes of [A-Za-z0-9._:-]. */
int ks_scope_valid(const char *s);

/* Engage SCOPE. Returns 1 when this call created the record (the caller runs
 * the emergency stop), 0 when it was already engaged, -1 on a Redis error
 * (message in ERR). STATE is the initial state ("stopping" or "dry_run"). */
int ks_engage(ks *k, rds_client *c, const char *scope, const char *reason, const char *rule,
              bool halt_sales, const char *state, double ts, char *err, size_t errlen);

/* Update the state (and attempts, last_error) of an existing record. 0 / -1. */
int ks_set_state(ks *k, rds_client *c, const char *scope, const char *state, int attempts,
                 const char *last_error);

/* Delete the record. 1 deleted, 0 was not engaged, -1 error. */
int ks_reset(ks *k, rds_client *c, const char *scope);

/* All records, as a JSON array of objects (NULL on a Redis error). */
struct cJSON *ks_list(ks *k, rds_client *c);

/* Rebuild the halt cache from Redis. 0 / -1. */
int ks_refresh(ks *k, rds_client *c);

/* Apply a control-channel message (from another instance or ourselves). */
void ks_on_control(ks *k, const char *msg, size_t len);

/* Is a sale of SKU halted? When it is, the halting scope is copied into
 * SCOPE_OUT (KS_SCOPE_MAX + 1 bytes) and 1 is returned. */
int ks_halted(ks *k, const char *sku, char *scope_out);

/* Number of engaged scopes known from the last refresh/engagements (for metrics). */
size_t ks_engaged_count(ks *k);

#endif
