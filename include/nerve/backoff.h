/* backoff.h -- capped exponential backoff with jitter, the one formula used
 * by every retry loop (lock wait, panic webhook retries, Redis reconnect,
 * bus resubscribe).
 *
 * The delay after failed attempt K (1-based) has the cap
 *     min(max, initial * multiplier^(K-1))
 * and is drawn from that cap by the policy's jitter:
 *     BACKOFF_JITTER_NONE   exactly the cap
 *     BACKOFF_JITTER_FULL   uniform in [0, cap]       (AWS "full jitter")
 *     BACKOFF_JITTER_EQUAL  uniform in [cap/2, cap]   (keeps a floor)
 * Jitter spreads a fleet that failed at the same moment, so that its retries
 * do not arrive in lockstep. The unit is the caller's (ms, us...): the
 * helper only scales numbers. Random numbers come from glibc's arc4random.
 *
 * Stateless: the caller counts attempts. Thread-safety: every function.
 */
#ifndef NERVE_BACKOFF_H
#define NERVE_BACKOFF_H

typedef enum {
    BACKOFF_JITTER_NONE = 0,
    BACKOFF_JITTER_FULL,
    BACKOFF_JITTER_EQUAL,
} backoff_jitter;

typedef struct backoff_policy {
    long long initial; /* cap after the first failure, >= 0 */
    long long max;     /* the cap never grows past this, >= 0 */
    double multiplier; /* growth per attempt, >= 1 (values below count as 1) */
    backoff_jitter jitter;
} backoff_policy;

/* The cap after failed attempt ATTEMPT (1-based; < 1 counts as 1):
 * min(max, initial * multiplier^(attempt-1)), never above the exact bound
 * and never overflowing however many attempts. */
long long backoff_cap(const backoff_policy *p, int attempt);

/* The delay to wait after failed attempt ATTEMPT: backoff_cap() with the
 * policy's jitter applied. Always in [0, backoff_cap()]. */
long long backoff_delay(const backoff_policy *p, int attempt);

/* A uniform random integer in [0, n] (n >= 0), without modulo bias. */
long long backoff_uniform(long long n);

#endif
