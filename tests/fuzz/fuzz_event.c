/* fuzz_event.c -- libFuzzer target: events from the bus into the shipped
 * rules (rules_eval: JSON parsing and limits, the event-to-Lua conversion,
 * rules/inventory.lua and rules/financial.lua, decision validation), and the
 * dry run of `nerve rules test` (rules_test_events).
 *
 * The shipped rules are loaded once, with config/nerve.yaml (its params and
 * limits), as the daemon does. Each input then gets a fresh evaluator, so a
 * crash reproduces from its input alone. The first byte chooses the channel
 * (low bits: inventory_events, sales_events, financial_events, sale_request
 * or one nobody listens on) and the mode (high bit): the rest of the input is
 * either up to 8 events, one per line, evaluated in order on that evaluator
 * (so ctx.state carries from one to the next), or a JSON-lines file for the
 * dry run. Deep nesting, invalid UTF-8, huge numbers, duplicate keys...: all
 * must end as a refused event or a rule error, never a crash.
 *
 * Checked: rules_eval returns -1 with a reason or the number of failed rules
 * (0..2) with none; every decision obeys the decision contract (rules.h);
 * every rule error reads `FILE:LINE: message`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/config.h"
#include "nerve/rules.h"
#include "fuzz.h"

#define EV_MAX_EVENTS 8

static const char *const ev_channels[] = {
    "inventory_events", "sales_events", "financial_events", RULES_SALE_CHANNEL, "elsewhere",
};

static struct {
    rules_set *set;
    FILE *devnull;
    const char *channel;
} ev;

static void ev_teardown(void)
{
    rules_set_unref(ev.set);
    ev.set = NULL;
    if (ev.devnull)
        fclose(ev.devnull);
    ev.devnull = NULL;
}

static void ev_setup(void)
{
    char *errs = NULL;
    cfg *c;

    if (ev.set)
        return;
    fuzz_quiet_logs();
    unsetenv("NERVE_RULES_DIR");
    c = cfg_load("config/nerve.yaml", NULL, 0, &errs);
    FUZZ_CHECK(c != NULL, "config/nerve.yaml (run from the repository root): %s",
               errs ? errs : "?");
    ev.set = rules_set_load(c, &errs);
    cfg_free(c);
    FUZZ_CHECK(ev.set != NULL, "shipped rules: %s", errs ? errs : "?");
    ev.devnull = fopen("/dev/null", "w");
    FUZZ_CHECK(ev.devnull != NULL, "/dev/null");
    atexit(ev_teardown);
}

static void ev_on_decision(void *ud, const rules_decision *d)
{
    (void)ud;
    fuzz_check_decision(d, ev.channel);
}

static void ev_on_error(void *ud, const char *rule, const char *msg)
{
    rules_info info;
    int known = 0;

    (void)ud;
    for (size_t i = 0; rules_set_info(ev.set, i, &info) == 0; i++)
        if (strcmp(info.name, rule) == 0)
            known = fuzz_file_line_msg(msg, info.file);
    FUZZ_CHECK(known, "rule error of %s: \"%.200s\"", rule, msg);
}

static void ev_events(rules_vm *vm, const char *text, size_t len)
{
    const char *end = text + len;
    int n = 0;

    while (text <= end && n++ < EV_MAX_EVENTS) {
        const char *nl = memchr(text, '\n', (size_t)(end - text));
        size_t elen = nl ? (size_t)(nl - text) : (size_t)(end - text);
        int rc = rules_eval(vm, ev.channel, text, elen, ev_on_decision, NULL);

        if (rc < 0)
            FUZZ_CHECK(rc == -1 && rules_vm_errstr(vm)[0] != '\0', "rules_eval = %d, no reason", rc);
        else
            FUZZ_CHECK(rc <= (int)rules_set_count(ev.set) && rules_vm_errstr(vm)[0] == '\0',
                       "rules_eval = %d (%s)", rc, rules_vm_errstr(vm));
        if (nl == NULL)
            break;
        text = nl + 1;
    }
}

static int fuzz_event_one(const uint8_t *data, size_t size)
{
    char err[1024];
    rules_vm *vm;

    if (size == 0)
        return 0;
    ev_setup();
    ev.channel = ev_channels[(data[0] & 0x7f) % (sizeof(ev_channels) / sizeof(ev_channels[0]))];
    if (data[0] & 0x80) {
        /* Dry run: its own vm, output discarded; fmemopen refuses size 0. */
        FILE *in = size > 1 ? fmemopen((void *)(data + 1), size - 1, "r") : NULL;

        if (in) {
            rules_test_events(ev.set, in, "fuzz.jsonl", ev.devnull, ev.devnull);
            fclose(in);
        }
        return 0;
    }
    vm = rules_vm_new(ev.set, NULL, err, sizeof(err));
    FUZZ_CHECK(vm != NULL, "rules_vm_new: %s", err);
    rules_vm_on_error(vm, ev_on_error, NULL);
    ev_events(vm, (const char *)data + 1, size - 1);
    rules_vm_free(vm);
    return 0;
}

FUZZ_ENTRY(fuzz_event_one)
