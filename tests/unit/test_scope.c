/* test_scope.c -- the one scope grammar (scope.h): every scope has exactly
 * one spelling, the one scope_make writes, so that what the admin API or a
 * rule engages is what a sale (compared byte for byte) is halted by.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "nerve/scope.h"

static int valid(const char *s) {
    return scope_valid(s, strlen(s));
}

static void test_rows(void **state) {
    (void)state;
    static const char *const good[] = {
        "global", "sku:ABC", "campaign:42", "campaign:spring/sale@x", "campaign:a%20b",
        "campaign:spring%20sale%20100%25", "k:%00", "k:%FF", "k:%7B%7D", "a.b_c-d+e",
    };
    static const char *const bad[] = {
        "",          "sku:%52ACE3", /* 'R': a second spelling of sku:RACE3 */
        "k:%2f",     "k:%2F",       /* '/' is plain, and lower case is never written */
        "k:%7b",     "k:%41",       "k:%3A", "k:%25%", "k:%2", "k:%", "k:%G0", "a b", "k:{x}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!valid(good[i])) fail_msg("\"%s\": refused", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (valid(bad[i])) fail_msg("\"%s\": accepted", bad[i]);
}

/* Every byte as an id: scope_make writes a valid scope; and of all 22 * 22
 * spellings "%XY" (hex digits of either case), exactly the one scope_make
 * writes for a byte that needs escaping is valid. */
static void test_one_spelling(void **state) {
    (void)state;
    static const char digits[] = "0123456789ABCDEFabcdef";
    for (int b = 0; b < 256; b++) {
        char id = (char)b, made[16];
        assert_int_equal(scope_make(made, sizeof made, "k", &id, 1), 0);
        if (!valid(made)) fail_msg("scope_make of byte 0x%02X: \"%s\" refused", b, made);
    }
    for (size_t x = 0; x < 22; x++)
        for (size_t y = 0; y < 22; y++) {
            char s[8], made[16];
            snprintf(s, sizeof s, "k:%%%c%c", digits[x], digits[y]);
            int hx = x < 16 ? (int)x : (int)x - 6, hy = y < 16 ? (int)y : (int)y - 6;
            char id = (char)(hx << 4 | hy);
            assert_int_equal(scope_make(made, sizeof made, "k", &id, 1), 0);
            int want = strcmp(s, made) == 0;
            if (valid(s) != want)
                fail_msg("\"%s\": %s (scope_make writes \"%s\")", s, want ? "refused" : "accepted",
                         made);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_one_spelling),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
