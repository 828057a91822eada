/* test_salewin.c -- the status page's sales window (salewin.h): the ring
 * counts every sale exactly, also from many threads at once; the SKU table
 * keeps the heavy hitters in bounded memory whatever the number of SKUs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/salewin.h"

static salewin w;

static uint64_t window_sum(const salewin_snap *s) {
    uint64_t n = 0;
    for (int i = 0; i < SALEWIN_SECONDS; i++) n += s->per_second[i];
    return n;
}

static salewin_snap *snap(void) {
    static salewin_snap s;
    salewin_read(&w, &s);
    return &s;
}

static void test_empty(void **state) {
    (void)state;
    salewin_init(&w);
    salewin_snap *s = snap();
    assert_int_equal(window_sum(s), 0);
    assert_int_equal(s->n_top, 0);
    salewin_destroy(&w);
}

/* One hot SKU (6% of the units) among 5,000 others sold once each: the
 * table (64 entries) keeps it on top with its exact count, shows at most
 * SALEWIN_TOP, most units first, each count exact (a newcomer's inherited
 * weight is not shown as units); the ring counted every sale. */
static void test_heavy_hitter(void **state) {
    (void)state;
    salewin_init(&w);
    char sku[32];
    for (int i = 0; i < 5000; i++) {
        if (i % 50 == 0) salewin_add(&w, "HOT", 3);
        snprintf(sku, sizeof sku, "cold-%d", i);
        salewin_add(&w, sku, 1);
    }
    salewin_snap *s = snap();
    assert_int_equal(window_sum(s), 5100);
    assert_int_equal(s->n_top, SALEWIN_TOP);
    assert_string_equal(s->top[0].sku, "HOT");
    assert_int_equal(s->top[0].units, 300);
    assert_int_equal(s->top[0].sales, 100);
    for (int i = 1; i < s->n_top; i++) {
        assert_int_equal(s->top[i].units, 1);
        assert_int_equal(s->top[i].sales, 1);
    }
    salewin_destroy(&w);
}

static void *seller(void *arg) {
    const char *sku = arg;
    for (int i = 0; i < 20000; i++) salewin_add(&w, sku, 1);
    return NULL;
}

/* Four threads at once: not one sale lost in the ring (one atomic per
 * sale); the SKU table, taken with a try-lock, may count fewer but never
 * more (on a loaded machine a thread can even run all its sales while
 * another holds the lock: one more uncontended sale each puts every SKU in
 * the table). */
static void test_threads(void **state) {
    (void)state;
    salewin_init(&w);
    pthread_t th[4];
    static char *names[4] = { "T0", "T1", "T2", "T3" };
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&th[i], NULL, seller, names[i]), 0);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) salewin_add(&w, names[i], 1);
    salewin_snap *s = snap();
    assert_int_equal(window_sum(s), 80004);
    assert_int_equal(s->n_top, 4);
    for (int i = 0; i < 4; i++) assert_true(s->top[i].units > 0 && s->top[i].units <= 20001);
    salewin_destroy(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_heavy_hitter),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
