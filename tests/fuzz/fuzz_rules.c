/* fuzz_rules.c -- libFuzzer target: loading and running an arbitrary rule
 * file (engine/rules.c, rules_sandbox.c, rules_values.c, rules_test.c,
 * rules_vm.c).
 *
 * The input is the text of one Lua rule file. It is written as rule.lua into
 * a private temporary directory (made for this input and removed right after
 * loading, so an aborted run leaves nothing behind) and loaded with rules_set_load() under small
 * limits (100000 instructions, 1 MiB per state), which compiles it in the
 * sandbox, validates the returned table and runs its fixtures. When it loads,
 * an evaluator is built and a few fixed events are evaluated on (up to four
 * of) its channels, then a second evaluator is built from the first (ctx.state
 * carried over) and evaluates once more.
 *
 * Checked: nothing crashes, leaks or runs past the instruction limit (the
 * runner's -timeout); a failed load reports one `FILE:LINE: message` line per
 * problem; a loaded rule has a valid name, channels and digest; every decision
 * delivered obeys the decision contract (rules.h) and every rule error reads
 * `FILE:LINE: message`; the carried-over state is either kept or lost.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "nerve/config.h"
#include "nerve/rules.h"
#include "fuzz.h"

#define RZ_INSTR_LIMIT  100000
#define RZ_MEM_LIMIT    (1 << 20)
#define RZ_MAX_CHANNELS 4

static const char *const rz_params =
    "{\"inventory\":{\"warning_threshold\":20,\"critical_threshold\":5},"
    "\"financial\":{\"daily_budget\":1000.0,\"refund_ratio_max\":0.3,"
    "\"min_revenue_for_ratio\":100.0,\"min_unit_price\":1.0,\"min_unit_price_by_sku\":{}}}";

static const char *const rz_events[] = {
    "{\"type\":\"stock_changed\",\"sku\":\"ABC-1\",\"stock_remaining\":3,\"ts\":1767225600}",
    "{\"type\":\"sale\",\"sku\":\"ABC-1\",\"qty\":2,\"unit_price\":0.5,\"order_id\":\"o-1\","
    "\"ts\":1767225700}",
    "{\"type\":\"spend\",\"campaign\":\"c\",\"amount\":1e300,\"n\":-0.0,"
    "\"tags\":[\"a\",{\"b\":[true,false,null,9007199254740993]}],\"s\":\"\\u00e9\\ud83d\\ude00\"}",
    "{}",
};

static struct {
    const char *tmp;            /* where the per-input directories go */
    char dir[256];
    char file[300];
    const char *channel;        /* being evaluated */
    const char *name;           /* the loaded rule's */
} rz;

static void rz_setup(void)
{
    if (rz.tmp)
        return;
    fuzz_quiet_logs();
    /* tmpfs when there is one: a file is written for every input. */
    rz.tmp = getenv("TMPDIR");
    if (access("/dev/shm", W_OK) == 0)
        rz.tmp = "/dev/shm";
    else if (rz.tmp == NULL || *rz.tmp == '\0')
        rz.tmp = "/tmp";
}

/* Make a fresh directory holding DATA as rule.lua. */
static void rz_write(const uint8_t *data, size_t size)
{
    int fd;
    size_t off = 0;

    snprintf(rz.dir, sizeof(rz.dir), "%s/nerve-fuzz-rules.XXXXXX", rz.tmp);
    FUZZ_CHECK(mkdtemp(rz.dir) != NULL, "mkdtemp %s: %s", rz.dir, strerror(errno));
    snprintf(rz.file, sizeof(rz.file), "%s/rule.lua", rz.dir);
    fd = open(rz.file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    FUZZ_CHECK(fd >= 0, "open %s: %s", rz.file, strerror(errno));
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);

        FUZZ_CHECK(w > 0, "write %s: %s", rz.file, strerror(errno));
        off += (size_t)w;
    }
    close(fd);
}

static void rz_on_decision(void *ud, const rules_decision *d)
{
    (void)ud;
    fuzz_check_decision(d, rz.channel);
    FUZZ_CHECK(strcmp(d->rule, rz.name) == 0, "decision of rule %s", d->rule);
    FUZZ_CHECK(strcmp(d->file, rz.file) == 0, "decision of file %s", d->file);
}

static void rz_on_error(void *ud, const char *rule, const char *msg)
{
    (void)ud;
    FUZZ_CHECK(strcmp(rule, rz.name) == 0, "error of rule %s", rule);
    FUZZ_CHECK(fuzz_file_line_msg(msg, rz.file), "rule error \"%.200s\"", msg);
}

/* Every line of a failed load's ERRS reads `FILE:LINE: message`. */
static void rz_check_load_errors(char *errs)
{
    char *line, *nl;

    FUZZ_CHECK(errs != NULL && errs[0] != '\0', "load failed without errors");
    FUZZ_CHECK(errs[strlen(errs) - 1] == '\n', "errors not newline-terminated");
    for (line = errs; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        *nl = '\0';
        FUZZ_CHECK(fuzz_file_line_msg(line, rz.file), "load error \"%.200s\"", line);
        *nl = '\n';
    }
}

static void rz_check_info(const rules_set *s)
{
    rules_info info;
    size_t nlen;

    FUZZ_CHECK(rules_set_count(s) == 1, "%zu rules from one file", rules_set_count(s));
    FUZZ_CHECK(rules_set_info(s, 0, &info) == 0, "rules_set_info");
    nlen = strlen(info.name);
    FUZZ_CHECK(nlen >= 1 && nlen <= 64 &&
               strspn(info.name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "0123456789_.-") == nlen, "name \"%.80s\"", info.name);
    FUZZ_CHECK(strcmp(info.file, rz.file) == 0, "file %s", info.file);
    FUZZ_CHECK(info.n_channels >= 1 && info.n_channels <= 32, "%zu channels", info.n_channels);
    for (size_t i = 0; i < info.n_channels; i++) {
        size_t clen = strlen(info.channels[i]);

        FUZZ_CHECK(clen >= 1 && clen <= 128 && fuzz_printable(info.channels[i], clen),
                   "channel \"%.40s\"", info.channels[i]);
    }
    FUZZ_CHECK(strlen(info.sha256) == 64 && strspn(info.sha256, "0123456789abcdef") == 64,
               "sha256 %s", info.sha256);
    FUZZ_CHECK(info.n_fixtures >= 0, "fixtures %d", info.n_fixtures);
}

static void rz_eval(rules_vm *vm, const char *channel, const char *event)
{
    int rc;

    rz.channel = channel;
    rc = rules_eval(vm, channel, event, strlen(event), rz_on_decision, NULL);
    FUZZ_CHECK(rc == 0 || rc == 1, "rules_eval = %d (%s)", rc, rules_vm_errstr(vm));
}

static void rz_new_vm_failed(const char *err)
{
    FUZZ_CHECK(fuzz_file_line_msg(err, rz.file), "rules_vm_new error \"%.200s\"", err);
}

static int fuzz_rules_one(const uint8_t *data, size_t size)
{
    cfg c;
    rules_set *s;
    rules_vm *vm, *vm2;
    rules_info info;
    char *errs = NULL, err[2048];
    size_t nch;

    rz_setup();
    rz_write(data, size);
    memset(&c, 0, sizeof(c));
    c.rules_dir = rz.dir;
    c.rules_instruction_limit = RZ_INSTR_LIMIT;
    c.rules_memory_limit = RZ_MEM_LIMIT;
    c.max_event_bytes = 4096;
    c.params = cJSON_Parse(rz_params);
    FUZZ_CHECK(c.params != NULL, "params");

    s = rules_set_load(&c, &errs);
    cJSON_Delete(c.params);
    unlink(rz.file);            /* the set keeps the source; rz.file stays the name */
    rmdir(rz.dir);
    if (s == NULL) {
        rz_check_load_errors(errs);
        free(errs);
        return 0;
    }
    FUZZ_CHECK(errs == NULL, "errors with a set: %s", errs);
    rz_check_info(s);
    rules_set_info(s, 0, &info);
    rz.name = info.name;

    err[0] = '\0';
    vm = rules_vm_new(s, NULL, err, sizeof(err));
    if (vm == NULL) {
        rz_new_vm_failed(err);
        rules_set_unref(s);
        return 0;
    }
    rules_vm_on_error(vm, rz_on_error, NULL);
    nch = info.n_channels < RZ_MAX_CHANNELS ? info.n_channels : RZ_MAX_CHANNELS;
    for (size_t i = 0; i < nch; i++)
        for (size_t e = 0; e < sizeof(rz_events) / sizeof(rz_events[0]); e++)
            rz_eval(vm, info.channels[i], rz_events[e]);

    /* A reload of the same set: ctx.state is copied from vm. */
    vm2 = rules_vm_new(s, vm, err, sizeof(err));
    if (vm2 == NULL) {
        rz_new_vm_failed(err);
    } else {
        rules_state_origin o = rules_vm_state_origin(vm2, 0);

        FUZZ_CHECK(o == RULES_STATE_KEPT || o == RULES_STATE_LOST, "state origin %s",
                   rules_state_origin_name(o));
        rules_vm_on_error(vm2, rz_on_error, NULL);
        rz_eval(vm2, info.channels[0], rz_events[0]);
        rules_vm_free(vm2);
    }
    rules_vm_free(vm);
    rules_set_unref(s);
    return 0;
}

FUZZ_ENTRY(fuzz_rules_one)
