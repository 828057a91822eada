/* fuzz.h -- what the libFuzzer targets in tests/fuzz/ share.
 *
 * Each fuzz_<target>.c defines one static entry function,
 * `static int fuzz_<target>_one(const uint8_t *data, size_t size)`, and ends
 * with FUZZ_ENTRY(fuzz_<target>_one). Built for libFuzzer (make fuzz, clang
 * -fsanitize=fuzzer) that expands to LLVMFuzzerTestOneInput. Built with
 * FUZZ_REGRESSION defined (tests/unit/test_fuzz_regressions.c #includes every
 * target .c file into one translation unit) it expands to nothing, and the
 * unit test calls the entry functions on every saved input -- so a crash the
 * fuzzer found stays fixed in `make test`, with the same checks.
 *
 * Every target initialises itself lazily on its first input (no
 * LLVMFuzzerInitialize: four of them could not share one translation unit)
 * and releases what it keeps across inputs in an atexit() handler, so that
 * the unit test ends leak-free under valgrind and LeakSanitizer. Targets run
 * from the repository root (tests/fuzz/run.sh and tests/run.sh both do).
 *
 * An invariant that does not hold is a bug like a crash: FUZZ_CHECK prints
 * what failed and aborts, which libFuzzer reports and saves as a crash input.
 */
#ifndef NERVE_FUZZ_H
#define NERVE_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/log.h"
#include "nerve/rules.h"
#include "nerve/scope.h"

#define FUZZ_CHECK(cond, ...) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__); \
            fputc('\n', stderr); \
            abort(); \
        } \
    } while (0)

#ifdef FUZZ_REGRESSION
#define FUZZ_ENTRY(fn)
#else
#define FUZZ_ENTRY(fn) \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size); \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fn(data, size); }
#endif

/* Logs would only slow the fuzzer down and bury its output: raise the
 * threshold above error (log_enabled compares levels as integers). */
static inline void fuzz_quiet_logs(void)
{
    log_set_level((log_level)(LOG_LVL_ERROR + 1));
}

/* 1 when S (LEN bytes) is printable ASCII without spaces (scopes). */
static inline int fuzz_printable(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

/* 1 when MSG reads `FILE:LINE: message` on one line (rules.h). */
static inline int fuzz_file_line_msg(const char *msg, const char *file)
{
    size_t flen = strlen(file);
    const char *p;

    if (strncmp(msg, file, flen) != 0 || msg[flen] != ':')
        return 0;
    p = msg + flen + 1;
    if (*p < '1' || *p > '9')
        return 0;
    while (*p >= '0' && *p <= '9')
        p++;
    if (p[0] != ':' || p[1] != ' ')
        return 0;
    return strchr(msg, '\n') == NULL;
}

/* The contract of one decision delivered for CHANNEL (rules.h). */
static inline void fuzz_check_decision(const rules_decision *d, const char *channel)
{
    size_t rlen;

    FUZZ_CHECK(d->rule != NULL && d->file != NULL && d->reason != NULL, "decision fields");
    FUZZ_CHECK(d->channel != NULL && strcmp(d->channel, channel) == 0, "decision channel");
    rlen = strlen(d->reason);
    FUZZ_CHECK(rlen >= 1 && rlen <= RULES_REASON_MAX, "reason of %zu bytes", rlen);
    if (d->scope) {
        size_t slen = strlen(d->scope);

        FUZZ_CHECK(scope_valid(d->scope, slen), "scope \"%.40s\"", d->scope);
    }
    switch (d->action) {
    case RULES_ALERT:
        FUZZ_CHECK(d->level >= RULES_INFO && d->level <= RULES_CRITICAL, "alert level %d",
                   (int)d->level);
        FUZZ_CHECK(!d->halt_sales, "halt_sales on an alert");
        break;
    case RULES_KILL:
        FUZZ_CHECK(d->scope != NULL, "kill without a scope");
        FUZZ_CHECK(d->level == RULES_LEVEL_NONE, "level on a kill");
        break;
    case RULES_REJECT:
        FUZZ_CHECK(strcmp(channel, RULES_SALE_CHANNEL) == 0, "reject on %s", channel);
        FUZZ_CHECK(d->scope == NULL && d->level == RULES_LEVEL_NONE && !d->halt_sales,
                   "reject with extra fields");
        break;
    default:
        FUZZ_CHECK(0, "action %d", (int)d->action);
    }
}

#endif
