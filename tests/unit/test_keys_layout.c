/* test_keys_layout.c -- the key layout (keys.h) pinned down: the partition function
 * is part of every key name in every deployed Redis, so a change to it (or to
 * a name's shape) would strand data that `nerve keys migrate` could no longer
 * find. FNV-1a 32-bit against its published test vectors, the names, the
 * overflow contract. No network.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "nerve/keys.h"

static void test_fnv1a_vectors(void **state) {
    (void)state;
    /* The FNV reference vectors (draft-eastlake-fnv, fnv_test.c). */
    assert_int_equal(keys_hash("", 0), 0x811c9dc5u);
    assert_int_equal(keys_hash("a", 1), 0xe40c292cu);
    assert_int_equal(keys_hash("foobar", 6), 0xbf9cf968u);
    assert_int_equal(keys_partition("foobar", 16), 0xbf9cf968u % 16);
    assert_int_equal(keys_partition("anything", 1), 0);
}

static void test_names(void **state) {
    (void)state;
    char k[RDS_KEY_MAX];
    int p = keys_partition("cat:1:x", 16);
    char want[128];
    snprintf(want, sizeof want, "nerve:{p%d}:stock:cat:1:x", p);
    assert_int_equal(keys_sku(k, "nerve:", 16, "stock", "cat:1:x"), (int)strlen(want));
    assert_string_equal(k, want);
    snprintf(want, sizeof want, "nerve:{p%d}:order:cat:1:x:o:1", p);
    assert_int_equal(keys_order(k, "nerve:", 16, "cat:1:x", "o:1"), (int)strlen(want));
    assert_string_equal(k, want);
    keys_stream(k, "nerve:", 7, "sales_events");
    assert_string_equal(k, "nerve:{p7}:stream:sales_events");
    keys_ingest(k, "nerve:", "sales_events");
    assert_string_equal(k, "nerve:stream:sales_events");
    keys_meta_partitions(k, "nerve:");
    assert_string_equal(k, "nerve:meta:partitions");

    char **v;
    size_t n;
    assert_int_equal(keys_streams_of("nerve:", 3, "inv", &v, &n), 0);
    assert_int_equal(n, 4);
    assert_string_equal(v[0], "nerve:{p0}:stream:inv");
    assert_string_equal(v[2], "nerve:{p2}:stream:inv");
    assert_string_equal(v[3], "nerve:stream:inv");
    keys_streams_free(v, n);
}

/* A name that does not fit is -1 with the buffer emptied, never truncated. */
static void test_too_long(void **state) {
    (void)state;
    char k[RDS_KEY_MAX], big[RDS_KEY_MAX + 1];
    memset(big, 'x', RDS_KEY_MAX);
    big[RDS_KEY_MAX] = 0;
    assert_int_equal(keys_sku(k, "nerve:", 16, "stock", big), -1);
    assert_string_equal(k, "");
    assert_int_equal(keys_order(k, "nerve:", 16, "a", big), -1);
    assert_string_equal(k, "");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fnv1a_vectors),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_too_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
