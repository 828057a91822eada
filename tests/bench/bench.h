/* bench.h -- the few helpers every benchmark program needs: a monotonic
 * clock, sorting samples, and strict number parsing. Header-only (static
 * functions) because the Makefile builds each tests/bench/NAME.c alone. */
#ifndef NERVE_BENCH_H
#define NERVE_BENCH_H

#include <errno.h>
#include <stdlib.h>
#include <time.h>

/* Monotonic milliseconds. */
static inline double bench_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* qsort comparator for doubles. */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* strtol with end pointer and range: 0, or -1 when S is not in MIN..MAX. */
static inline int bench_parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno == ERANGE || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

#endif
