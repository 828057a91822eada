/* clock.h -- the one monotonic clock of the process.
 *
 * Every duration, deadline and liveness stamp is measured on CLOCK_MONOTONIC
 * so that a wall-clock jump (NTP step, operator, VM resume) neither shortens
 * nor stretches it. Condition variables that wait with a deadline must be
 * bound to the same clock: clock_cond_init() does that, and
 * clock_deadline_ms() gives the absolute timespec pthread_cond_timedwait
 * wants.
 *
 * A leaf module: it depends on nothing of nerve. Thread-safety: every
 * function (no state).
 */
#ifndef NERVE_CLOCK_H
#define NERVE_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Nanoseconds on CLOCK_MONOTONIC (an arbitrary origin: only differences
 * mean anything). */
uint64_t clock_now_ns(void);

/* The same clock in milliseconds. */
long long clock_now_ms(void);

/* The absolute CLOCK_MONOTONIC time MS milliseconds from now (MS < 0 counts
 * as 0), normalised (tv_nsec < 1e9), for pthread_cond_timedwait on a
 * condition variable made by clock_cond_init(). */
struct timespec clock_deadline_ms(long long ms);

/* pthread_cond_init with the condition bound to CLOCK_MONOTONIC. Returns 0
 * or the pthread error number (as pthread_cond_init does). */
int clock_cond_init(pthread_cond_t *cv);

#endif
