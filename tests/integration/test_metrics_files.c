/* test_metrics_files.c -- the Grafana dashboard and the Prometheus alerting
 * rules shipped in config/ name only metrics a running nerve exports.
 *
 * A renamed or removed metric leaves a dashboard panel empty and an alert
 * that can never fire, silently; so every metric name (nerve_* and
 * process_*) in config/grafana-dashboard.json and config/prometheus-alerts.yml
 * must have its family (`# TYPE` line) on a real daemon's /metrics, a
 * _bucket/_sum/_count name the family of a histogram or summary. The files
 * must also parse (JSON; YAML with libyaml) and hold what their consumers
 * read (panels with expressions; rule groups with an expr per alert).
 */
#include "harness.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define DASHBOARD "config/grafana-dashboard.json"
#define ALERTS    "config/prometheus-alerts.yml"

static h_redis *redis;
static h_daemon *daemon_;

/* The TYPE of family NAME in the exposition TEXT, "" when it has none. */
static const char *family_type(const char *text, const char *name, char *out, size_t outlen) {
    size_t n = strlen(name);
    out[0] = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, "# TYPE ", 7) != 0 || strncmp(p + 7, name, n) != 0 || p[7 + n] != ' ')
            continue;
        sscanf(p + 8 + n, "%31s", out);
        break;
    }
    (void)outlen;
    return out;
}

/* 1 when NAME is exported: its own family, or a histogram's (or summary's)
 * _bucket, _sum or _count. */
static int exported(const char *metrics, const char *name) {
    char type[32], fam[256];
    if (family_type(metrics, name, type, sizeof type)[0]) return 1;
    static const char *const suffixes[] = { "_bucket", "_sum", "_count" };
    size_t n = strlen(name);
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(suffixes[i]);
        if (n <= k || n - k >= sizeof fam || strcmp(name + n - k, suffixes[i]) != 0) continue;
        memcpy(fam, name, n - k);
        fam[n - k] = 0;
        family_type(metrics, fam, type, sizeof type);
        if (strcmp(type, "histogram") == 0 || (strcmp(type, "summary") == 0 && i > 0)) return 1;
    }
    return 0;
}

/* Check every metric name in FILE's TEXT against METRICS; returns how many
 * distinct names it found (failing the test on a missing one). */
static int check_names(const char *file, const char *text, const char *metrics) {
    char seen[8192] = " ";
    int found = 0, missing = 0;
    for (const char *p = text; *p;) {
        if (!(isalpha((unsigned char)*p) || *p == '_')) {
            p++;
            continue;
        }
        const char *s = p;
        while (isalnum((unsigned char)*p) || *p == '_') p++;
        size_t n = (size_t)(p - s);
        if (n >= 200 ||
            !((n > 6 && strncmp(s, "nerve_", 6) == 0) || (n > 8 && strncmp(s, "process_", 8) == 0)))
            continue;
        char name[208], key[212];
        memcpy(name, s, n);
        name[n] = 0;
        snprintf(key, sizeof key, " %s ", name);
        if (strstr(seen, key)) continue;
        if (strlen(seen) + n + 2 < sizeof seen) strcat(strcat(seen, name), " ");
        found++;
        if (!exported(metrics, name)) {
            int line = 1;
            for (const char *q = text; q < s; q++) line += *q == '\n';
            print_error("%s:%d: %s is not on /metrics (renamed or removed?)\n", file, line, name);
            missing++;
        }
    }
    if (missing) fail_msg("%s names %d metric(s) nerve does not export", file, missing);
    return found;
}

static void test_dashboard(void **state) {
    (void)state;
    char *text = h_read_file(DASHBOARD);
    assert_non_null(text);
    cJSON *d = cJSON_Parse(text);
    if (!cJSON_IsObject(d))
        fail_msg("%s is not a JSON object (near: %.40s)", DASHBOARD, cJSON_GetErrorPtr());
    assert_non_null(h_jstr(d, "title"));
    const cJSON *panels = cJSON_GetObjectItemCaseSensitive(d, "panels"), *p;
    int exprs = 0;
    cJSON_ArrayForEach(p, panels) {
        const cJSON *t;
        cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(p, "targets"))
            exprs += h_jstr(t, "expr") != NULL;
    }
    if (exprs < 10) fail_msg("%s: %d panel expressions, expected a dashboard", DASHBOARD, exprs);
    char *metrics = H_METRICS(daemon_);
    int n = check_names(DASHBOARD, text, metrics);
    if (n < 20) fail_msg("%s: only %d metric names found: the scan is broken", DASHBOARD, n);
    free(metrics);
    cJSON_Delete(d);
    free(text);
    h_pass();
}

/* Parse the YAML; count the `alert:` and `expr:` keys (scalars in key
 * position of a mapping). */
static void yaml_counts(const char *text, int *alerts, int *exprs) {
    yaml_parser_t ps;
    yaml_event_t ev;
    int depth_keys[64] = { 0 }, depth = 0, done = 0;
    *alerts = *exprs = 0;
    assert_true(yaml_parser_initialize(&ps));
    yaml_parser_set_input_string(&ps, (const unsigned char *)text, strlen(text));
    while (!done) {
        if (!yaml_parser_parse(&ps, &ev))
            fail_msg("%s:%zu: %s", ALERTS, ps.problem_mark.line + 1,
                     ps.problem ? ps.problem : "invalid YAML");
        switch (ev.type) {
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            if (depth > 0 && depth < 64 && depth_keys[depth] >= 0)
                depth_keys[depth]++; /* a mapping's value */
            depth++;
            if (depth < 64) depth_keys[depth] = ev.type == YAML_MAPPING_START_EVENT ? 0 : -1;
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT: depth--; break;
        case YAML_SCALAR_EVENT:
            if (depth > 0 && depth < 64 && depth_keys[depth] >= 0) {
                if (depth_keys[depth] % 2 == 0) {
                    const char *v = (const char *)ev.data.scalar.value;
                    *alerts += strcmp(v, "alert") == 0;
                    *exprs += strcmp(v, "expr") == 0;
                }
                depth_keys[depth]++;
            }
            break;
        case YAML_STREAM_END_EVENT: done = 1; break;
        default: break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&ps);
}

static void test_alerts(void **state) {
    (void)state;
    char *text = h_read_file(ALERTS);
    assert_non_null(text);
    if (!strstr(text, "groups:")) fail_msg("%s: no `groups:` (a Prometheus rule file)", ALERTS);
    int alerts, exprs;
    yaml_counts(text, &alerts, &exprs);
    if (alerts < 10 || exprs != alerts)
        fail_msg("%s: %d alerts and %d exprs: every alert needs one expr", ALERTS, alerts, exprs);
    char *metrics = H_METRICS(daemon_);
    int n = check_names(ALERTS, text, metrics);
    if (n < 15) fail_msg("%s: only %d metric names found: the scan is broken", ALERTS, n);
    free(metrics);
    free(text);
    h_pass();
}

/* The check itself catches a name nerve does not export. */
static void test_check_catches_unknown(void **state) {
    (void)state;
    char *metrics = H_METRICS(daemon_);
    assert_true(exported(metrics, "nerve_sales_total"));
    assert_true(exported(metrics, "nerve_rule_duration_seconds_bucket"));
    assert_true(exported(metrics, "process_start_time_seconds"));
    assert_false(exported(metrics, "nerve_sales_totl"));
    assert_false(exported(metrics, "nerve_sales_total_bucket"));
    assert_false(exported(metrics, "nerve_rule_duration_seconds_bucke"));
    free(metrics);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_check_catches_unknown),
        T(test_dashboard),
        T(test_alerts),
    };
    h_group_use(&redis, &daemon_, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
