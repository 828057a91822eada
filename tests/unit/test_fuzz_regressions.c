/* test_fuzz_regressions.c -- every input the fuzzers keep, replayed in
 * `make test`.
 *
 * The libFuzzer targets of tests/fuzz/ are #included here with
 * FUZZ_REGRESSION defined, so their entry functions and invariant checks are
 * the very ones the fuzzer ran; each test feeds them every file of
 * tests/fuzz/regressions/<target>/ (inputs that once crashed, hung or
 * leaked, minimised) and tests/fuzz/corpus/<target>/ (the seed corpus). A
 * broken invariant aborts, which tests/run.sh reports as a failure; under
 * `make asan` and `make valgrind` memory errors and leaks fail too. A
 * regression input that once hung must also finish within FUZZ_MAX_SECONDS
 * (default 3; not checked under valgrind, which is 50 times slower).
 *
 * Run from the repository root (paths are relative to it).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FUZZ_REGRESSION 1
#include "../fuzz/fuzz_sale.c"
#include "../fuzz/fuzz_config.c"
#include "../fuzz/fuzz_rules.c"
#include "../fuzz/fuzz_event.c"

typedef int (*entry_fn)(const uint8_t *data, size_t size);

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read PATH whole into a malloc'd buffer of exactly *LEN bytes (so that
 * sanitizers see an overread as the fuzzer would). */
static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long n;

    if (f == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc(n > 0 ? (size_t)n : 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        *len = (size_t)n;
    }
    fclose(f);
    return buf;
}

/* Seconds one regression input may take; 0 = unchecked. */
static double max_seconds(void)
{
    const char *env = getenv("FUZZ_MAX_SECONDS"), *pre = getenv("LD_PRELOAD");

    if (pre && strstr(pre, "vgpreload"))
        return 0;
    return env && *env ? strtod(env, NULL) : 3.0;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Feed every regular file of DIR (sorted by name) to FN, each within LIMIT
 * seconds unless LIMIT is 0; returns how many. A missing directory counts as
 * empty. */
static int replay_dir(const char *dir, entry_fn fn, double limit)
{
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *d = opendir(dir);

    if (d == NULL)
        return 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (n == cap) {
            char **nv = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof(*names));

            assert_non_null(nv);
            names = nv;
        }
        names[n] = strdup(de->d_name);
        assert_non_null(names[n]);
        n++;
    }
    closedir(d);
    if (n > 0)
        qsort(names, n, sizeof(*names), cmp_name);
    for (size_t i = 0; i < n; i++) {
        char path[1024];
        uint8_t *data;
        size_t len = 0;
        double t0, took;

        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        data = slurp(path, &len);
        if (data == NULL)
            fail_msg("cannot read %s", path);
        t0 = now_s();
        fn(data, len);
        took = now_s() - t0;
        free(data);
        if (limit > 0 && took > limit)
            fail_msg("%s took %.2f s (limit %.2f s)", path, took, limit);
        free(names[i]);
    }
    free(names);
    return (int)n;
}

static void replay(const char *target, entry_fn fn)
{
    char dir[256];
    int nreg, ncorp;

    snprintf(dir, sizeof(dir), "tests/fuzz/regressions/%s", target);
    nreg = replay_dir(dir, fn, max_seconds());
    snprintf(dir, sizeof(dir), "tests/fuzz/corpus/%s", target);
    ncorp = replay_dir(dir, fn, 0);
    print_message("fuzz_%s: %d regression inputs, %d corpus inputs\n", target, nreg, ncorp);
    /* An empty corpus means the test ran from the wrong directory. */
    assert_true(ncorp > 0);
}

static void test_sale(void **state)
{
    (void)state;
    replay("sale", fuzz_sale_one);
}

static void test_config(void **state)
{
    (void)state;
    replay("config", fuzz_config_one);
}

static void test_rules(void **state)
{
    (void)state;
    replay("rules", fuzz_rules_one);
}

static void test_event(void **state)
{
    (void)state;
    replay("event", fuzz_event_one);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sale),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_event),
    };

    return cmocka_run_group_tests_name("fuzz_regressions", tests, NULL, NULL);
}
