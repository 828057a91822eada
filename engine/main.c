/* main.c -- the nerve command line: parses the command and its options and
 * hands over to the module that does the work (daemon.c for `serve`, the
 * rules engine for `check` and `rules test`, ledger_cli.c for `ledger`).
 * Only main decides exit codes.
 */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nerve/cli.h"
#include "nerve/config.h"
#include "nerve/daemon.h"
#include "nerve/declog.h"
#include "nerve/keys_cli.h"
#include "nerve/killswitch_cli.h"
#include "nerve/ledger.h"
#include "nerve/log.h"
#include "nerve/reload_cli.h"
#include "nerve/rules.h"
#include "nerve/rules_new.h"
#include "nerve/status_cli.h"
#include "nerve/stress.h"
#include "nerve/version.h"

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: nerve COMMAND [options]\n"
        "\n"
        "commands:\n"
        "  serve   [-c FILE]            run the daemon (default config/nerve.yaml)\n"
        "  check   [-c FILE]            validate config and rules; exit 0 only if all is valid\n"
        "  rules test [-c FILE] [--rule NAME] [--all] EVENTS.jsonl\n"
        "                               dry-run: feed each {\"channel\",\"event\"} line to the rules,\n"
        "                               print EVENTS.jsonl:LINE: per decision or error, then a\n"
        "                               summary; no Redis needed (nerve rules test --help)\n"
        "  rules new NAME --on CHANNEL [-c FILE] [--dir DIR] [--force]\n"
        "                               write DIR/NAME.lua, a commented rule with passing\n"
        "                               fixtures (nerve rules new --help)\n"
        "  reload  [-c FILE] [--url URL] [--timeout S]\n"
        "                               reload the running daemon (SIGHUP to server.pidfile's pid)\n"
        "                               and report the outcome: the new generation, or the\n"
        "                               FILE:LINE errors, exit 1 (nerve reload --help)\n"
        "  status  [-c FILE] [--url URL] [--json]\n"
        "                               one screen on the running daemon (nerve status --help)\n"
        "  stress  --url URL --sku SKU --stock N --clients C --requests R [--qty Q] ...\n"
        "                               load test with invariant checks (nerve stress --help)\n"
        "  ledger migrate|verify|export|backup FILE|sales [-c FILE] [options]\n"
        "                               the SQL order ledger: apply the schema, check it against\n"
        "                               Redis, export rows, back it up, summarise sales\n"
        "                               (nerve ledger --help)\n"
        "  keys where SKU... | keys migrate [--from N|legacy] --to M [--dry-run]\n"
        "                               where a SKU's keys are; move every SKU to another\n"
        "                               bus.partitions (nerve keys --help)\n"
        "  killswitch ls [--json] | engage SCOPE --reason R [--halt-sales] | reset SCOPE --reason R\n"
        "                               the running daemon's kill switch (nerve killswitch --help)\n"
        "  decisions [--rule R] [--scope S] [--limit N] [--follow] [--json]\n"
        "                               the decision log: last decisions and rule errors, then\n"
        "                               new ones with --follow (nerve decisions --help)\n"
        "  help                         this text\n"
        "  --version                    print the version\n"
        "\n"
        "options for commands that read config:\n"
        "  -c, --config FILE            config file (default config/nerve.yaml)\n"
        "  --set dotted.key=value       override a key after the file is read (repeatable)\n"
        "  --log-format text|json       log line format on stderr\n"
        "\n"
        "environment: REDIS_URL NERVE_LISTEN NERVE_RULES_DIR NERVE_PANIC_URL NERVE_LEDGER_URL\n"
        "             NERVE_RESUME_URL\n"
        "             NERVE_ADMIN_TOKEN NERVE_ADMIN_TOKENS NERVE_PANIC_TOKEN (secrets: environment\n"
        "             only)\n");
}

/* ---- commands ------------------------------------------------------------------ */

static int cmd_check(const cli_args *o) {
    cfg *c = cli_load_config(o);
    if (!c) return 1;
    char *errors = NULL;
    rules_set *set = rules_set_load(c, &errors);
    int rc = 0;
    if (!set) {
        daemon_print_errors(errors ? errors : "rules: out of memory");
        rc = 1;
    } else {
        int fixtures = 0;
        for (size_t i = 0; i < rules_set_count(set); i++) {
            rules_info in;
            if (rules_set_info(set, i, &in) == 0) fixtures += in.n_fixtures;
        }
        printf("%s: ok (%zu rules, %d fixtures passed, ruleset sha256 %s)\n", o->config,
               rules_set_count(set), fixtures, rules_set_sha256(set));
    }
    free(errors);
    rules_set_unref(set);
    cfg_free(c);
    return rc;
}

static const char rules_help[] =
    "usage: nerve rules test [-c FILE] [--rule NAME] [--all] EVENTS.jsonl (- = standard input)\n"
    "\n"
    "Dry run, no Redis: each line {\"channel\": ..., \"event\": {...}, \"now\": N?} goes through\n"
    "the rules on one fresh evaluator (ctx.state carries from line to line). Every line about\n"
    "an event starts with EVENTS.jsonl:LINE: -- a decision (JSON, on stdout) or an error (on\n"
    "stderr); the last line on stderr sums up: events: N, decisions: N (kill N, ...), errors: N.\n"
    "A rule whose fixtures fail is reported (FILE:LINE, as nerve check does) and still runs.\n"
    "\n"
    "  --rule NAME    evaluate only rule NAME: the other rules do not run, and their errors\n"
    "                 or failed fixtures do not change the exit status\n"
    "  --all          also print the events that produced no decision\n"
    "  -c, --config FILE, --set dotted.key=value, --log-format text|json  (see nerve help)\n"
    "\n"
    "exit status: 0 every line valid, no rule error, every fixture passed; 1 a bad input line,\n"
    "a rule error, a failed fixture, or the config or a rule file does not load; 2 usage\n"
    "(bad option, unknown --rule NAME).\n";

struct rules_cli {
    const char *rule;
    bool all;
};

static int rules_opt(void *ud, int val, const char *arg) {
    struct rules_cli *r = ud;
    if (val == CLI_OPT(1))
        r->rule = arg;
    else
        r->all = true;
    return 0;
}

/* 1 when a line of TEXT starts with "FILE:" (an error about that file). */
static bool text_has_line_prefix(const char *text, const char *file) {
    size_t n = strlen(file);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, file, n) == 0 && p[n] == ':') return true;
    return false;
}

/* `nerve rules test`: its own options, so it parses its own arguments.
 * `nerve rules new` is rules_new.c's. */
static int cmd_rules(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "new") == 0) return rules_new_main(argc - 1, argv + 1);
    static const struct option own[] = { { "rule", required_argument, NULL, CLI_OPT(1) },
                                         { "all", no_argument, NULL, CLI_OPT(2) },
                                         { 0, 0, 0, 0 } };
    struct rules_cli rc_opts = { 0 };
    cli_args a;
    const cli_args *o = &a;
    if (cli_parse("nerve rules test", "nerve rules test --help", argc, argv, own, rules_opt,
                  &rc_opts, &a)) {
        cli_args_free(&a);
        return 2;
    }
    if (a.help) {
        fputs(rules_help, stdout);
        cli_args_free(&a);
        return 0;
    }
    if (o->nrest < 1 || strcmp(o->rest[0], "test") != 0) {
        fprintf(stderr,
                "usage: nerve rules test [-c FILE] EVENTS.jsonl (use - for standard input)\n");
        cli_args_free(&a);
        return 2;
    }
    if (o->nrest != 2) {
        fprintf(
            stderr,
            "nerve rules test: expected exactly one EVENTS.jsonl file (use - for standard input)\n");
        cli_args_free(&a);
        return 2;
    }
    const char *path = o->rest[1];
    FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!in) {
        fprintf(stderr, "%s: cannot open: %s\n", path, strerror(errno));
        cli_args_free(&a);
        return 1;
    }
    cfg *c = cli_load_config(o);
    int rc = 1;
    if (c) {
        char *errors = NULL, *fixture_errors = NULL;
        rules_set *set = rules_set_load_dry(c, &errors, &fixture_errors);
        /* Reported, then the events still run: the analyst sees both. */
        if (fixture_errors) daemon_print_errors(fixture_errors);
        if (!set) {
            daemon_print_errors(errors ? errors : "rules: out of memory");
        } else {
            rules_test_opts t = { rc_opts.rule, rc_opts.all };
            bool known = rc_opts.rule == NULL;
            for (size_t i = 0; !known && i < rules_set_count(set); i++) {
                rules_info ri;
                known = rules_set_info(set, i, &ri) == 0 && strcmp(ri.name, rc_opts.rule) == 0;
            }
            if (!known) {
                fprintf(stderr, "nerve rules test: --rule %s: no rule of that name (",
                        rc_opts.rule);
                for (size_t i = 0; i < rules_set_count(set); i++) {
                    rules_info ri;
                    if (rules_set_info(set, i, &ri) == 0)
                        fprintf(stderr, "%s%s", i ? ", " : "rules: ", ri.name);
                }
                fprintf(stderr, ")\n");
                rc = 2;
            } else {
                int ran = rules_test_run(set, in, path, &t, stdout, stderr);
                /* With --rule, only that rule's failed fixtures count. */
                bool fix_bad = fixture_errors != NULL;
                for (size_t i = 0; fix_bad && rc_opts.rule && i < rules_set_count(set); i++) {
                    rules_info ri;
                    if (rules_set_info(set, i, &ri) == 0 && strcmp(ri.name, rc_opts.rule) == 0)
                        fix_bad = text_has_line_prefix(fixture_errors, ri.file);
                }
                rc = ran == 0 && !fix_bad ? 0 : 1;
            }
        }
        free(fixture_errors);
        free(errors);
        rules_set_unref(set);
        cfg_free(c);
    }
    if (in != stdin) fclose(in);
    cli_args_free(&a);
    return rc;
}

/* glibc gives threads up to 8 x cores malloc arenas; the daemon runs
 * server.threads (128 by default) workers, each with its own sale-rule Lua
 * state, and every arena keeps its own free holes: measured under the bench's
 * hot and 1,000-SKU loads (64 connections, 2 cores), 15 arenas held ~24 MB
 * of the daemon's ~40 MB peak RSS, and two arenas cut the peak by ~2 MB at
 * the same sale rate (only as many threads as cores run at once). One per
 * core, at least 2; MALLOC_ARENA_MAX or GLIBC_TUNABLES, when set, decide. */
static void limit_arenas(void) {
    if (getenv("MALLOC_ARENA_MAX") || getenv("GLIBC_TUNABLES")) return;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    mallopt(M_ARENA_MAX, cores > 2 ? (int)cores : 2);
}

static int cmd_serve(const cli_args *o) {
    limit_arenas();
    daemon_args a = { o->config, o->sets, o->nsets, o->log_format };
    return daemon_run(&a);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("nerve %s\n", NERVE_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "stress") == 0) return stress_main(argc - 1, argv + 1);
    if (strcmp(cmd, "keys") == 0) return keys_cli_main(argc - 1, argv + 1);
    if (strcmp(cmd, "killswitch") == 0) return killswitch_cli_main(argc - 1, argv + 1);
    if (strcmp(cmd, "ledger") == 0) return ledger_cli_main(argc - 1, argv + 1);
    if (strcmp(cmd, "rules") == 0) return cmd_rules(argc - 1, argv + 1);
    if (strcmp(cmd, "reload") == 0) return reload_cli_main(argc - 1, argv + 1);
    if (strcmp(cmd, "status") == 0) return status_cli_main(argc - 1, argv + 1);
    if (strcmp(cmd, "decisions") == 0) return declog_cli_main(argc - 1, argv + 1);
    cli_args o;
    if (cli_parse("nerve", "nerve help", argc - 1, argv + 1, NULL, NULL, NULL, &o)) {
        cli_args_free(&o);
        return 2;
    }
    int rc;
    if (o.help) {
        usage(stdout);
        rc = 0;
    } else if (strcmp(cmd, "serve") == 0)
        rc = cmd_serve(&o);
    else if (strcmp(cmd, "check") == 0)
        rc = cmd_check(&o);
    else {
        fprintf(stderr, "nerve: unknown command '%s' (see nerve help)\n", cmd);
        rc = 2;
    }
    cli_args_free(&o);
    return rc;
}
