/* live.h -- the rule set in force, its generation, and the last reload result.
 *
 * Readers (evaluator thread, HTTP workers) take a reference to the current
 * set with live_get() and use it for one whole event or sale, so a reload
 * that swaps in a new set never changes the rules under a running
 * evaluation: it finishes on the set it started with. live_swap() replaces
 * the set atomically and bumps the generation; readers that cache a vm per
 * thread compare live_generation() to rebuild theirs.
 *
 * Thread-safety: every function. Ownership: live_swap takes over the caller's
 * reference; live_get returns a new reference the caller drops with
 * rules_set_unref().
 */
#ifndef NERVE_LIVE_H
#define NERVE_LIVE_H

#include <stdbool.h>
#include <stdint.h>

#include "nerve/rules.h"

typedef struct live live;

typedef struct live_reload {
    uint64_t seq; /* attempts recorded so far (0: none yet): `nerve reload` waits for
                   * it to move past the value it read before signalling */
    bool ok;
    long long at;        /* epoch seconds */
    uint64_t started_us; /* CLOCK_MONOTONIC µs when the attempt began (clock.h):
                          * `nerve reload` knows the reload read the config after
                          * its signal when this is later than the signal */
    uint64_t generation; /* the generation in force after the attempt */
    size_t rules;        /* rules in the set installed by a successful attempt */
    char sha256[65];     /* that set's sha256; "" after a failure */
    char *errors;        /* "FILE:LINE: message" lines of a failed reload, or NULL */
} live_reload;

live *live_new(void);
void live_free(live *l); /* drops the current set */

/* Install SET (may be NULL) as the current one; returns the new generation.
 * SET's rules count into L's per-rule counters (rules_set_adopt_tally), so
 * a rule's counters go on across reloads instead of starting at 0: SET must
 * be fresh from rules_set_load, with no vm built from it yet. */
uint64_t live_swap(live *l, rules_set *set);

/* The current set with a reference taken (NULL when none), and its generation. */
rules_set *live_get(live *l, uint64_t *generation);
uint64_t live_generation(live *l);

/* How a reader's cached vm is built by live_sync_vm. */
typedef struct live_vm_opts {
    rules_vm_kind kind;        /* which rules the vm holds */
    const char *only_channel;  /* build a vm only when the set has a rule on this
                                     * channel (else *vm becomes NULL); NULL = always */
    const char *log_component; /* "eval", "policy": who logs */
    const char *what;          /* "an evaluator": what a failed build could not make */
    bool log_states;           /* log each rule's ctx.state origin after a rebuild */
    rules_error_cb on_error;   /* rules_vm_on_error of a new vm (NULL = default) */
    void *error_ud;
    rules_incr_fn incr; /* ctx.incr backend of a new vm (NULL = per-rule local) */
    void *incr_ud;
} live_vm_opts;

/* Make *VM evaluate L's current set when its generation moved past *GEN: a
 * reload that left the vm's rules alone moves it onto the new set
 * (rules_vm_rebind: no Lua state rebuilt); otherwise a new vm of O's kind is
 * built from the old one (each rule's ctx.state carried over), given O's
 * error callback and incr backend, and replaces it. When the set is gone (or
 * O->only_channel is not listened on) *VM is freed and set to NULL. When a
 * build fails, the error is logged and the previous vm kept, and *GEN still
 * moves on so that the build is not retried on every call (the next reload
 * tries again). *VM and *GEN belong to the calling thread; *VM starts NULL
 * and *GEN 0.
 *
 * Returns 1 when *VM was (re)built or rebound by this call, 0 when nothing
 * changed, -1 when a build failed by this call: *VM then does not evaluate
 * the current set, and a caller that must not skip rules (the sale gate)
 * treats every use until the next change as a rule failure. */
int live_sync_vm(live *l, rules_vm **vm, uint64_t *gen, const live_vm_opts *o);

/* Record the result of a reload attempt begun at STARTED_US (monotonic µs):
 * a success installed SET (not retained: only its count and sha256 are
 * read) as GENERATION; a failure passes SET NULL and ERRORS (copied).
 * Returns the attempt's seq. */
uint64_t live_record_reload(live *l, bool ok, uint64_t started_us, uint64_t generation,
                            rules_set *set, const char *errors);
/* Copy of the last reload result; free out->errors. */
void live_last_reload(live *l, live_reload *out);

typedef struct live_stats {
    uint64_t reloads_ok, reloads_failed; /* live_record_reload calls, by OK */
} live_stats;

/* Reload attempts since live_new (each live_record_reload counts one). */
void live_get_stats(live *l, live_stats *out);

#endif
