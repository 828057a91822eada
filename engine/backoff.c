/* backoff.c -- capped exponential backoff with jitter (see backoff.h). */
#include "nerve/backoff.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

long long backoff_cap(const backoff_policy *p, int attempt) {
    if (attempt < 1) attempt = 1;
    double mult = p->multiplier >= 1.0 ? p->multiplier : 1.0;
    double cap = (double)p->initial * pow(mult, attempt - 1);
    if (!(cap < (double)p->max)) return p->max > 0 ? p->max : 0; /* also inf and NaN */
    return cap > 0 ? (long long)cap : 0;
}

long long backoff_uniform(long long n) {
    if (n <= 0) return 0;
    if (n < UINT32_MAX) return (long long)arc4random_uniform((uint32_t)n + 1);
    /* Rejection sampling over 64 bits: drop the short last bucket. */
    uint64_t range = (uint64_t)n + 1, threshold = -range % range, r;
    do arc4random_buf(&r, sizeof r);
    while (r < threshold);
    return (long long)(r % range);
}

long long backoff_delay(const backoff_policy *p, int attempt) {
    long long cap = backoff_cap(p, attempt);
    switch (p->jitter) {
    case BACKOFF_JITTER_FULL: return backoff_uniform(cap);
    case BACKOFF_JITTER_EQUAL: return cap / 2 + backoff_uniform(cap - cap / 2);
    case BACKOFF_JITTER_NONE: break;
    }
    return cap;
}
