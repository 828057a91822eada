/* test_clock_backoff.c -- the process' one monotonic clock (clock.h) and its
 * one backoff helper (backoff.h): pure functions, no network.
 *
 * Timing assertions only bound from below (a deadline never wakes early) and
 * from above with a generous slack, so a loaded CI box cannot fail them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "nerve/backoff.h"
#include "nerve/clock.h"
#include "nerve/lock.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

#define SLACK_MS 2000           /* upper bound slack for a timed wait */

/* ---- clock ------------------------------------------------------------------ */

static void test_clock_is_monotonic(void **state) {
    (void)state;
    uint64_t prev = clock_now_ns();
    for (int i = 0; i < 100000; i++) {
        uint64_t now = clock_now_ns();
        assert_true(now >= prev);
        prev = now;
    }
    /* The ms view is the same clock. */
    long long ms = clock_now_ms();
    uint64_t ns = clock_now_ns();
    assert_true(ns / 1000000u >= (uint64_t)ms);
    assert_true(ns / 1000000u - (uint64_t)ms < 1000);
}

static void test_clock_deadline_normalised(void **state) {
    (void)state;
    long long cases[] = { -5, 0, 1, 999, 1000, 1001, 1999, 123456 };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        long long ms = cases[i] < 0 ? 0 : cases[i];
        uint64_t before = clock_now_ns();
        struct timespec dl = clock_deadline_ms(cases[i]);
        uint64_t after = clock_now_ns();
        assert_true(dl.tv_nsec >= 0 && dl.tv_nsec < 1000000000L);
        uint64_t at = (uint64_t)dl.tv_sec * 1000000000u + (uint64_t)dl.tv_nsec;
        assert_true(at >= before + (uint64_t)ms * 1000000u);
        assert_true(at <= after + (uint64_t)ms * 1000000u);
    }
}

/* A condvar from clock_cond_init waits on the monotonic clock: a deadline
 * 50 ms ahead times out after at least 50 ms, and not seconds later. */
static void test_clock_cond_timedwait(void **state) {
    (void)state;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    assert_int_equal(clock_cond_init(&cv), 0);
    uint64_t t0 = clock_now_ns();
    struct timespec dl = clock_deadline_ms(50);
    pthread_mutex_lock(&mu);
    int rc;
    while ((rc = pthread_cond_timedwait(&cv, &mu, &dl)) == 0) {}
    pthread_mutex_unlock(&mu);
    uint64_t waited_ms = (clock_now_ns() - t0) / 1000000u;
    assert_int_equal(rc, ETIMEDOUT);
    assert_true(waited_ms >= 50);
    assert_true(waited_ms < 50 + SLACK_MS);
    pthread_cond_destroy(&cv);
}

/* ---- backoff ---------------------------------------------------------------- */

/* The cap grows geometrically from initial and stops at max, exactly. */
static void test_backoff_cap(void **state) {
    (void)state;
    backoff_policy p = { 10, 1000, 2.0, BACKOFF_JITTER_NONE };
    long long want[] = { 10, 20, 40, 80, 160, 320, 640, 1000, 1000 };
    for (int k = 1; k <= 9; k++) {
        assert_int_equal(backoff_cap(&p, k), want[k - 1]);
        assert_int_equal(backoff_delay(&p, k), want[k - 1]);     /* no jitter: exactly the cap */
    }
    assert_int_equal(backoff_cap(&p, 0), 10);                   /* attempts count from 1 */
    assert_int_equal(backoff_cap(&p, -3), 10);
    assert_int_equal(backoff_cap(&p, INT_MAX), 1000);           /* pow overflows to inf: still max */
    backoff_policy frac = { 100, 1000, 1.5, BACKOFF_JITTER_NONE };
    assert_int_equal(backoff_cap(&frac, 2), 150);
    assert_int_equal(backoff_cap(&frac, 3), 225);
    backoff_policy flat = { 7, 1000, 0.5, BACKOFF_JITTER_NONE };   /* multiplier < 1 counts as 1 */
    assert_int_equal(backoff_cap(&flat, 5), 7);
    backoff_policy zero = { 0, 0, 2.0, BACKOFF_JITTER_FULL };
    assert_int_equal(backoff_delay(&zero, 3), 0);
    backoff_policy tiny_max = { 500, 100, 2.0, BACKOFF_JITTER_NONE }; /* initial over max */
    assert_int_equal(backoff_cap(&tiny_max, 1), 100);
}

/* Draw N delays for attempt K and check the range; return how many distinct
 * values were seen in the bottom and top quarter of the cap (jitter must
 * actually spread). */
static void check_jitter(const backoff_policy *p, int k, long long lo, long long hi) {
    int low = 0, high = 0;
    long long cap = backoff_cap(p, k), min = LLONG_MAX, max = -1;
    for (int i = 0; i < 20000; i++) {
        long long d = backoff_delay(p, k);
        assert_true(d >= lo && d <= hi);
        if (d < min) min = d;
        if (d > max) max = d;
        if (d < lo + (hi - lo) / 4) low++;
        if (d > hi - (hi - lo) / 4) high++;
    }
    /* 20000 uniform draws: each quarter gets ~5000; 3000 is far outside chance. */
    assert_true(low > 3000 && high > 3000);
    assert_true(max <= cap);
    assert_true(min <= lo + (hi - lo) / 100 && max >= hi - (hi - lo) / 100);
}

static void test_backoff_full_jitter(void **state) {
    (void)state;
    backoff_policy p = { 100, 5000, 2.0, BACKOFF_JITTER_FULL };
    check_jitter(&p, 1, 0, 100);
    check_jitter(&p, 4, 0, 800);
    check_jitter(&p, 30, 0, 5000);
}

static void test_backoff_equal_jitter(void **state) {
    (void)state;
    backoff_policy p = { 200, 50000, 2.0, BACKOFF_JITTER_EQUAL };
    check_jitter(&p, 1, 100, 200);
    check_jitter(&p, 5, 1600, 3200);
    check_jitter(&p, 20, 25000, 50000);
}

/* backoff_uniform reaches both ends, also above 32 bits. */
static void test_backoff_uniform_range(void **state) {
    (void)state;
    assert_int_equal(backoff_uniform(0), 0);
    assert_int_equal(backoff_uniform(-5), 0);
    int seen[4] = { 0 };
    for (int i = 0; i < 2000; i++) {
        long long v = backoff_uniform(3);
        assert_true(v >= 0 && v <= 3);
        seen[v]++;
    }
    for (int i = 0; i < 4; i++) assert_true(seen[i] > 300);
    long long big = 1LL << 40, top = 0;
    for (int i = 0; i < 1000; i++) {
        long long v = backoff_uniform(big);
        assert_true(v >= 0 && v <= big);
        if (v > top) top = v;
    }
    assert_true(top > (1LL << 39));     /* the high bits are random too */
}

/* ---- random source ------------------------------------------------------------ */

/* Lock tokens: 32 lowercase hex digits, all different, and every bit
 * position varies (128 random bits, not 64 and a counter). */
static void test_lock_token_random_bits(void **state) {
    (void)state;
    enum { N = 2000 };
    static char tok[N][LOCK_TOKEN_LEN + 1];
    unsigned char ones[LOCK_TOKEN_LEN] = { 0 }, zeros[LOCK_TOKEN_LEN] = { 0 };
    for (int i = 0; i < N; i++) {
        lock_token_new(tok[i]);
        assert_int_equal(strlen(tok[i]), LOCK_TOKEN_LEN);
        assert_int_equal(strspn(tok[i], "0123456789abcdef"), LOCK_TOKEN_LEN);
        for (int j = 0; j < LOCK_TOKEN_LEN; j++) {
            int v = tok[i][j] <= '9' ? tok[i][j] - '0' : tok[i][j] - 'a' + 10;
            if (v & 8) ones[j] |= 1; else zeros[j] |= 1;
            if (v & 1) ones[j] |= 2; else zeros[j] |= 2;
        }
    }
    for (int j = 0; j < LOCK_TOKEN_LEN; j++) {
        assert_int_equal(ones[j], 3);
        assert_int_equal(zeros[j], 3);
    }
    qsort(tok, N, sizeof tok[0], (int (*)(const void *, const void *))strcmp);
    for (int i = 1; i < N; i++) assert_true(strcmp(tok[i - 1], tok[i]) != 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clock_is_monotonic),
        cmocka_unit_test(test_clock_deadline_normalised),
        cmocka_unit_test(test_clock_cond_timedwait),
        cmocka_unit_test(test_backoff_cap),
        cmocka_unit_test(test_backoff_full_jitter),
        cmocka_unit_test(test_backoff_equal_jitter),
        cmocka_unit_test(test_backoff_uniform_range),
        cmocka_unit_test(test_lock_token_random_bits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
