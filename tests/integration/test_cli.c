/* test_cli.c -- the command line (engine/main.c over getopt_long): every
 * option form `nerve help` documents keeps working, mixed with positional
 * arguments, and each misuse is exit 2 with one line saying what is wrong.
 * No daemon, no Redis: one-shot `nerve check` / `nerve rules test` runs.
 */
#include "harness.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int run(h_run *r, const char *const *args) { return h_run_nerve(r, 10000, NULL, args); }

#define OK_PREFIX "config/nerve.yaml: ok ("

/* RUN ARGS, expect exit STATUS and, when WANT_ERR is not NULL, exactly that stderr. */
static void expect(const char *const *args, int status, const char *want_err, const char *out_prefix) {
    h_run r;
    run(&r, args);
    if (r.status != status || (want_err && strcmp(r.err, want_err) != 0) ||
        (out_prefix && strncmp(r.out, out_prefix, strlen(out_prefix)) != 0))
        fail_msg("nerve %s %s ...: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stderr: %s", args[0],
                 args[1] ? args[1] : "", r.status, status, r.out, r.err, want_err ? want_err : "(any)");
    h_run_free(&r);
}

static void test_option_forms(void **state) {
    (void)state;
    expect((const char *const[]){ "check", NULL }, 0, "", OK_PREFIX);
    expect((const char *const[]){ "check", "-c", "config/nerve.yaml", NULL }, 0, "", OK_PREFIX);
    expect((const char *const[]){ "check", "-cconfig/nerve.yaml", NULL }, 0, "", OK_PREFIX);
    expect((const char *const[]){ "check", "--config", "config/nerve.yaml", NULL }, 0, "", OK_PREFIX);
    expect((const char *const[]){ "check", "--config=config/nerve.yaml", NULL }, 0, "", OK_PREFIX);
    expect((const char *const[]){ "check", "--set", "server.threads=4", "--set=log.level=warn",
                                  "--log-format", "json", "--log-format=text", NULL }, 0, "", OK_PREFIX);
    /* --set values are applied in order, and reach the config check. */
    expect((const char *const[]){ "check", "--set=server.threads=4", "--set", "server.threads=0", NULL }, 1,
           "--set server.threads: must be between 1 and 1024 (got 0)\n", NULL);
    h_pass();
}

/* Options after positional arguments, and "--" ending the options. */
static void test_positional_mixed(void **state) {
    (void)state;
    char events[PATH_MAX];
    snprintf(events, sizeof events, "%s/events.jsonl", h_tmpdir());
    FILE *f = fopen(events, "w");
    assert_non_null(f);
    fclose(f);
    const char *none = "events: 0, decisions: 0, errors: 0\n"; /* the summary line */
    expect((const char *const[]){ "rules", "test", "-c", "config/nerve.yaml", events, NULL }, 0, none, NULL);
    expect((const char *const[]){ "rules", "test", events, "-c", "config/nerve.yaml", NULL }, 0, none, NULL);
    expect((const char *const[]){ "rules", "-c", "config/nerve.yaml", "test", "--", events, NULL }, 0, none, NULL);
    expect((const char *const[]){ "rules", "test", NULL }, 2,
           "nerve rules test: expected exactly one EVENTS.jsonl file (use - for standard input)\n", NULL);
    h_pass();
}

static void test_misuse(void **state) {
    (void)state;
    expect((const char *const[]){ "check", "--frobnicate", NULL }, 2,
           "nerve: unknown option --frobnicate (see nerve help)\n", NULL);
    expect((const char *const[]){ "check", "--frobnicate=1", NULL }, 2,
           "nerve: unknown option --frobnicate=1 (see nerve help)\n", NULL);
    expect((const char *const[]){ "check", "-x", NULL }, 2, "nerve: unknown option -x (see nerve help)\n", NULL);
    expect((const char *const[]){ "check", "--set", NULL }, 2, "nerve: --set needs a value (see nerve help)\n", NULL);
    expect((const char *const[]){ "check", "-c", NULL }, 2, "nerve: -c needs a value (see nerve help)\n", NULL);
    expect((const char *const[]){ "check", "--log-format=xml", NULL }, 2,
           "nerve: --log-format must be text or json\n", NULL);
    /* A URL serve could not use fails nerve check, not serve later. */
    expect((const char *const[]){ "check", "--set", "redis.url=redis://h:99999/0", NULL }, 1,
           "--set redis.url: invalid redis:// URL: port must be 1..65535\n", NULL);
    expect((const char *const[]){ "frob", NULL }, 2, "nerve: unknown command 'frob' (see nerve help)\n", NULL);
    /* The stress tool's own parser: the same kinds of misuse. */
    expect((const char *const[]){ "stress", "--url", NULL }, 2,
           "nerve stress: --url needs a value (see nerve stress --help)\n", NULL);
    expect((const char *const[]){ "stress", "--url=http://127.0.0.1:1", "extra", NULL }, 2,
           "nerve stress: unexpected argument 'extra' (see nerve stress --help)\n", NULL);
    expect((const char *const[]){ "stress", "-q", NULL }, 2,
           "nerve stress: unknown option -q (see nerve stress --help)\n", NULL);
    h_pass();
}

/* nerve help names every option the parser takes. */
static void test_help_lists_options(void **state) {
    (void)state;
    h_run r;
    run(&r, (const char *const[]){ "help", NULL });
    assert_int_equal(r.status, 0);
    const char *want[] = { "-c, --config FILE", "--set dotted.key=value", "--log-format text|json",
                           "serve", "check", "rules test", "reload", "stress", "--version" };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(r.out, want[i])) fail_msg("nerve help does not mention %s:\n%s", want[i], r.out);
    h_run_free(&r);
    run(&r, (const char *const[]){ "stress", "--help", NULL });
    assert_int_equal(r.status, 0);
    const char *swant[] = { "--url URL", "--sku SKU", "--stock N", "--clients C", "--requests R",
                            "--duration SECONDS", "--qty Q", "--skus K", "--token T", "--kill-check",
                            "--critical N", "--threads N", "--timeout MS", "--json", "--quiet", "-h, --help" };
    for (size_t i = 0; i < sizeof swant / sizeof swant[0]; i++)
        if (!strstr(r.out, swant[i])) fail_msg("nerve stress --help does not mention %s", swant[i]);
    h_run_free(&r);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_option_forms),
        T(test_positional_mixed),
        T(test_misuse),
        T(test_help_lists_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
