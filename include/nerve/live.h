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
    bool ok;
    long long at;               /* epoch seconds */
    char *errors;               /* "FILE:LINE: message" lines of a failed reload, or NULL */
} live_reload;

live *live_new(void);
void live_free(live *l);        /* drops the current set */

/* Install SET (may be NULL) as the current one; returns the new generation. */
uint64_t live_swap(live *l, rules_set *set);

/* The current set with a reference taken (NULL when none), and its generation. */
rules_set *live_get(live *l, uint64_t *generation);
uint64_t live_generation(live *l);

/* Record the result of a reload attempt (ERRORS copied; NULL for success). */
void live_record_reload(live *l, bool ok, const char *errors);
/* Copy of the last reload result; free out->errors. */
void live_last_reload(live *l, live_reload *out);

typedef struct live_stats {
    uint64_t reloads_ok, reloads_failed;    /* live_record_reload calls, by OK */
} live_stats;

/* Reload attempts since live_new (each live_record_reload counts one). */
void live_get_stats(live *l, live_stats *out);

#endif
