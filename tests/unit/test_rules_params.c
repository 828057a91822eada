/* test_rules_params.c -- unit tests of rule parameter declarations and the
 * channel check (engine/rules_params.c): a bad declaration is a FILE:LINE
 * error; the config's section is checked against the declarations (unknown
 * key with a suggestion, type, range, map entries, missing required key) at
 * the YAML's FILE:LINE:COL; defaults are filled in so ctx.params always has a
 * declared key; fixture params get the same check and defaults; rules sharing
 * a section share its keys; an undeclared reader leaves a section open; an
 * `on` channel the config does not name is refused with a suggestion.
 *
 * No network. Run from the repository root; files go to a mkdtemp directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "nerve/config.h"
#include "nerve/rules.h"
#include "rules_capture.h"
#include "../../engine/rules_int.h"

static char dir[256];

static void write_file(const char *name, const char *text) {
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void remove_rules(void) {
    static const char *const names[] = { "a.lua", "b.lua", "c.lua", "cfg.yaml" };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char path[512];

        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
}

static int setup(void **state) {
    (void)state;
    remove_rules();
    return 0;
}

/* cfg.yaml = "rules:\n  dir: DIR\n" + YAML_REST (params and the like), loaded
 * through cfg_load so that values keep their places; then the rule set. */
static rules_set *load_yaml(const char *yaml_rest, char *const *sets, size_t nsets,
                            char **errs) {
    char text[4096], path[512], *cerr = NULL;
    rules_set *s;
    cfg *c;

    snprintf(text, sizeof(text), "rules:\n  dir: %s\n%s", dir, yaml_rest);
    write_file("cfg.yaml", text);
    snprintf(path, sizeof(path), "%s/cfg.yaml", dir);
    c = cfg_load(path, sets, nsets, &cerr);
    if (c == NULL) fail_msg("cfg_load: %s", cerr);
    *errs = NULL;
    s = rules_set_load(c, errs);
    cfg_free(c);
    return s;
}

/* Load and expect exactly WANT (with every "@" replaced by the dir). */
static void expect_errors(const char *yaml_rest, char *const *sets, size_t nsets,
                          const char *want) {
    char expanded[8192], *errs;
    size_t o = 0;
    rules_set *s = load_yaml(yaml_rest, sets, nsets, &errs);

    for (const char *p = want; *p && o < sizeof(expanded) - 300; p++)
        if (*p == '@')
            o += (size_t)snprintf(expanded + o, sizeof(expanded) - o, "%s", dir);
        else
            expanded[o++] = *p;
    expanded[o] = '\0';
    if (s != NULL) {
        rules_set_unref(s);
        fail_msg("loaded; expected\n%s", expanded);
    }
    assert_non_null(errs);
    assert_string_equal(errs, expanded);
    free(errs);
}

/* The first decision's reason for an event on CHANNEL. */
static void eval_reason(rules_set *s, const char *channel, char *out, size_t len) {
    char err[512];
    capture cap;
    rules_vm *vm = rules_vm_new(s, NULL, err, sizeof(err));

    if (vm == NULL) fail_msg("rules_vm_new: %s", err);
    memset(&cap, 0, sizeof(cap));
    rules_vm_on_error(vm, on_err, &cap);
    rules_eval(vm, channel, "{}", 2, on_dec, &cap);
    if (cap.n_err) fail_msg("rule error: %s", cap.err_msg[0]);
    assert_int_equal(cap.n_dec, 1);
    snprintf(out, len, "%s", cap.dec_reason[0]);
    rules_vm_free(vm);
}

/* A rule on inventory_events declaring section s; its reason shows them. */
#define RULE_S                                                                         \
    "return {\n"                                                                       \
    "  name = \"r\",\n"                                                                \
    "  on = { \"inventory_events\" },\n"                                               \
    "  params_section = \"s\",\n"                                                      \
    "  params = {\n"                                                                   \
    "    limit = { type = \"integer\", default = 5, min = 0, max = 100,\n"             \
    "              description = \"how many\" },\n"                                    \
    "    ratio = { type = \"number\", default = 0.5 },\n"                              \
    "    label = { type = \"string\", default = \"x\" },\n"                            \
    "    on = { type = \"boolean\", default = true },\n"                               \
    "    by_sku = { type = \"map\", values = \"number\", min = 0, default = {} },\n"   \
    "  },\n"                                                                           \
    "  evaluate = function(event, ctx)\n"                                              \
    "    local p, n = ctx.params.s, 0\n"                                               \
    "    for _ in pairs(p.by_sku) do n = n + 1 end\n"                                  \
    "    return { action = \"alert\", level = \"info\", reason = string.format(\n"     \
    "      \"%s %s %s %s %d\", tostring(p.limit), tostring(p.ratio), p.label,\n"       \
    "      tostring(p.on), n) }\n"                                                     \
    "  end,\n"                                                                         \
    "}\n"

static void test_defaults_filled(void **state) {
    char *errs, reason[512];
    rules_set *s;

    (void)state;
    write_file("a.lua", RULE_S);
    s = load_yaml("  params: {}\n", NULL, 0, &errs);
    if (s == NULL) fail_msg("%s", errs);
    eval_reason(s, "inventory_events", reason, sizeof(reason));
    assert_string_equal(reason, "5 0.5 x true 0");
    rules_set_unref(s);

    s = load_yaml("  params:\n    s:\n      limit: 7\n      by_sku: {A: 1, B: 2.5}\n", NULL, 0,
                  &errs);
    if (s == NULL) fail_msg("%s", errs);
    eval_reason(s, "inventory_events", reason, sizeof(reason));
    assert_string_equal(reason, "7 0.5 x true 2");
    rules_set_unref(s);
}

static void test_config_errors(void **state) {
    (void)state;
    write_file("a.lua", RULE_S);
    expect_errors("  params:\n"
                  "    s:\n"
                  "      limt: 8\n"
                  "      ratio: lots\n"
                  "      limit: 101\n"
                  "      label: 3\n"
                  "      on: yes\n"
                  "      by_sku: {A: -1}\n",
                  NULL, 0,
                  "@/cfg.yaml:7:14: rules.params.s.limit: 101 is over the maximum 100 (rule r, "
                  "@/a.lua:6)\n"
                  "@/cfg.yaml:6:14: rules.params.s.ratio: expected a number, got \"lots\" (rule "
                  "r, @/a.lua:8)\n"
                  "@/cfg.yaml:8:14: rules.params.s.label: expected a string, got 3 (rule r, "
                  "@/a.lua:9)\n"
                  "@/cfg.yaml:9:11: rules.params.s.on: expected a boolean, got \"yes\" (rule "
                  "r, @/a.lua:10)\n"
                  "@/cfg.yaml:10:19: rules.params.s.by_sku.A: -1 is under the minimum 0 (rule "
                  "r, @/a.lua:11)\n"
                  "@/cfg.yaml:5:13: rules.params.s.limt: unknown parameter: rule r (@/a.lua:6) "
                  "declares limit, ratio, label, on, by_sku; did you mean limit?\n");
    expect_errors("  params:\n    s: 3\n", NULL, 0,
                  "@/cfg.yaml:4:8: rules.params.s: expected a mapping of the parameters rule r "
                  "(@/a.lua:6) declares, got 3\n");
    /* A --set is named as given. */
    expect_errors("", (char *[]){ "rules.params.s.limit=many" }, 1,
                  "--set rules.params.s.limit=many: rules.params.s.limit: expected an integer, "
                  "got \"many\" (rule r, @/a.lua:6)\n");
}

static void test_declaration_errors(void **state) {
    (void)state;
    write_file("a.lua", "return {\n"
                        "  name = \"r\",\n"
                        "  on = { \"inventory_events\" },\n"
                        "  params_section = \"has space\",\n"
                        "  params = {\n"
                        "    a = { type = \"int\" },\n"
                        "    b = { type = \"integer\", default = \"x\" },\n"
                        "    c = { type = \"integer\", default = -1, min = 0 },\n"
                        "    d = { type = \"map\", default = { 1 } },\n"
                        "    e = { type = \"string\", min = 1 },\n"
                        "    f = { type = \"integer\", deflt = 3 },\n"
                        "    g = { type = \"number\", min = 2, max = 1 },\n"
                        "    h = 5,\n"
                        "  },\n"
                        "  evaluate = function(event, ctx) end,\n"
                        "}\n");
    expect_errors("", NULL, 0,
                  "@/a.lua:4: params_section must be a key of rules.params (1 to 64 printable "
                  "characters, no spaces)\n"
                  "@/a.lua:6: params.a: type must be one of \"integer\", \"number\", \"string\", "
                  "\"boolean\", \"map\"\n"
                  "@/a.lua:7: params.b: default: expected an integer, got \"x\"\n"
                  "@/a.lua:8: params.c: default: -1 is under the minimum 0\n"
                  "@/a.lua:9: params.d: the default of a map is {} (its entries come from the "
                  "config)\n"
                  "@/a.lua:10: params.e: min must be a number, for a numeric type\n"
                  "@/a.lua:11: params.f: unknown field \"deflt\" (expected type, default, min, "
                  "max, description, values)\n"
                  "@/a.lua:12: params.g: min 2 is over max 1\n"
                  "@/a.lua:13: params.h must be a table {type = ..., default = ..., min = ..., "
                  "max = ..., description = ...}\n");
}

/* Without a default a key is required, in the config and in fixtures. */
static void test_required(void **state) {
    (void)state;
    write_file("a.lua", "return {\n"
                        "  name = \"r\",\n"
                        "  on = { \"inventory_events\" },\n"
                        "  params = { need = { type = \"integer\" } },\n"
                        "  evaluate = function(event, ctx) end,\n"
                        "}\n");
    expect_errors("", NULL, 0,
                  "rules.params.r.need: missing: rule r (@/a.lua:4) declares it without a "
                  "default\n");
}

/* Fixture params: checked, defaults filled in. */
static void test_fixture_params(void **state) {
    char *errs;
    rules_set *s;
    char text[4096];

    (void)state;
    snprintf(text, sizeof(text), "%.*s  tests = {\n"
             "    { channel = \"inventory_events\", event = {}, params = {},\n"
             "      expect = { { reason = \"5 0.5 x true 0\" } } },\n"
             "    { channel = \"inventory_events\", event = {},\n"
             "      params = { s = { limit = 9, by_sku = { A = 1 } } },\n"
             "      expect = { { reason = \"9 0.5 x true 1\" } } },\n"
             "  },\n}\n",
             (int)(strlen(RULE_S) - 2), RULE_S);
    write_file("a.lua", text);
    s = load_yaml("", NULL, 0, &errs);
    if (s == NULL) fail_msg("%s", errs);
    rules_set_unref(s);

    snprintf(text, sizeof(text), "%.*s  tests = {\n"
             "    { channel = \"inventory_events\", event = {},\n"
             "      params = { s = { limt = 9 } }, expect = {} },\n"
             "    { channel = \"inventory_events\", event = {},\n"
             "      params = { s = { by_sku = { A = \"x\" } } }, expect = {} },\n"
             "  },\n}\n",
             (int)(strlen(RULE_S) - 2), RULE_S);
    write_file("a.lua", text);
    expect_errors("", NULL, 0,
                  "@/a.lua:21: fixture 1 (inventory_events): params.s.limt: unknown parameter; "
                  "did you mean limit?\n"
                  "@/a.lua:23: fixture 2 (inventory_events): params.s.by_sku.A: expected a "
                  "number, got \"x\"\n");
}

/* Two rules declaring one section share its keys; a rule that names the
 * section without declaring leaves it open. */
static void test_shared_section(void **state) {
    char *errs;
    rules_set *s;

    (void)state;
    write_file("a.lua", "return { name = \"a\", on = { \"sales_events\" }, params_section = \"s\",\n"
                        "  params = { x = { type = \"integer\", default = 1 } },\n"
                        "  evaluate = function(event, ctx) end }\n");
    write_file("b.lua", "return { name = \"b\", on = { \"sales_events\" }, params_section = \"s\",\n"
                        "  params = { y = { type = \"integer\", default = 1 } },\n"
                        "  evaluate = function(event, ctx) end }\n");
    s = load_yaml("  params:\n    s: {x: 2, y: 3}\n", NULL, 0, &errs);
    if (s == NULL) fail_msg("%s", errs);
    rules_set_unref(s);
    expect_errors("  params:\n    s: {x: 2, z: 3}\n", NULL, 0,
                  "@/cfg.yaml:4:18: rules.params.s.z: unknown parameter: rule a (@/a.lua:2) "
                  "declares x\n");
    write_file("c.lua", "return { name = \"c\", on = { \"sales_events\" }, params_section = \"s\",\n"
                        "  evaluate = function(event, ctx) end }\n");
    s = load_yaml("  params:\n    s: {x: 2, z: 3}\n", NULL, 0, &errs);
    if (s == NULL) fail_msg("an undeclared reader should leave the section open: %s", errs);
    rules_set_unref(s);
}

static void test_channels(void **state) {
    char *errs;
    rules_set *s;

    (void)state;
    write_file("a.lua", "return { name = \"a\", on = { \"inventory_event\", \"zzz\" },\n"
                        "  evaluate = function(event, ctx) end }\n");
    expect_errors("", NULL, 0,
                  "@/a.lua:1: on[1]: unknown channel \"inventory_event\": not in bus.channels, "
                  "bus.inventory_channel or bus.sales_channel, nor built in (known: "
                  "inventory_events, sales_events, financial_events, sale_request); did you "
                  "mean inventory_events?\n"
                  "@/a.lua:1: on[2]: unknown channel \"zzz\": not in bus.channels, "
                  "bus.inventory_channel or bus.sales_channel, nor built in (known: "
                  "inventory_events, sales_events, financial_events, sale_request)\n");
    s = load_yaml("bus:\n  channels: [inventory_event, zzz]\n", NULL, 0, &errs);
    if (s == NULL) fail_msg("configured channels refused: %s", errs);
    rules_set_unref(s);
}

static void test_suggest(void **state) {
    const char *const c[] = { "financial_events", "sales_events", "inventory_events" };

    (void)state;
    assert_string_equal(rules_suggest("financial_event", c, 3), "financial_events");
    assert_string_equal(rules_suggest("sale_events", c, 3), "sales_events");
    assert_null(rules_suggest("orders", c, 3));
    assert_null(rules_suggest("financial_events", c, 3)); /* equal is not a typo */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults_filled, setup),
        cmocka_unit_test_setup(test_config_errors, setup),
        cmocka_unit_test_setup(test_declaration_errors, setup),
        cmocka_unit_test_setup(test_required, setup),
        cmocka_unit_test_setup(test_fixture_params, setup),
        cmocka_unit_test_setup(test_shared_section, setup),
        cmocka_unit_test_setup(test_channels, setup),
        cmocka_unit_test_setup(test_suggest, setup),
    };
    char tmpl[] = "/tmp/nerve-params.XXXXXX";
    int rc;

    if (mkdtemp(tmpl) == NULL) return 1;
    snprintf(dir, sizeof(dir), "%s", tmpl);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    remove_rules();
    rmdir(dir);
    return rc;
}
