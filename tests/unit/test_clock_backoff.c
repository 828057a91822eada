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

#include "nerve/clock.h"

#include <errno.h>
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clock_is_monotonic),
        cmocka_unit_test(test_clock_deadline_normalised),
        cmocka_unit_test(test_clock_cond_timedwait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
