/* cli.h -- the options every nerve command that reads the config shares,
 * parsed in one place.
 *
 * `nerve check|serve|reload|rules test`, `nerve ledger ...` and `nerve keys
 * ...` all take -c/--config FILE, --set dotted.key=value (repeatable),
 * --log-format text|json and -h/--help, in any order with their own
 * options and positional arguments (getopt_long permutes; "--" ends the
 * options). One parser, so that an option means the same and fails with the
 * same message everywhere; each command adds its own options as getopt_long
 * entries whose val is CLI_OPT(n), handed to its callback.
 *
 * Ownership: cli_parse fills a cli_args whose rest array is malloc'd (free
 * with cli_args_free); its strings point into ARGV. Not thread-safe
 * (getopt's globals): call it from main only.
 */
#ifndef NERVE_CLI_H
#define NERVE_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "nerve/config.h"

#define CLI_MAX_SETS 256
/* The val of a command's own option N: out of the common options' range. */
#define CLI_OPT(n) (1000 + (n))

typedef struct cli_args {
    const char *config; /* -c FILE; default config/nerve.yaml */
    char *sets[CLI_MAX_SETS];
    size_t nsets;
    const char *log_format; /* text|json; NULL: the config's */
    bool help;              /* -h or --help */
    char **rest;            /* positional arguments, in order */
    int nrest;
} cli_args;

/* A command's own option VAL (CLI_OPT(n)) with its argument ARG (NULL when
 * it takes none): 0, or -1 after printing why on stderr. */
typedef int (*cli_opt_fn)(void *ud, int val, const char *arg);

/* Parse ARGV[1..ARGC) (ARGV[0] is the command's name) into A: the common
 * options, then EXTRA (NULL or a list ending with a zero entry) through
 * ON_OPT. WHO names the command in messages ("nerve", "nerve ledger"), HINT
 * where its help is ("nerve help", "nerve ledger --help"). 0, or -1 after
 * printing "WHO: what was wrong (see HINT)" on stderr (exit 2). */
int cli_parse(const char *who, const char *hint, int argc, char **argv, const struct option *extra,
              cli_opt_fn on_opt, void *ud, cli_args *a);
void cli_args_free(cli_args *a);

/* Load A's config (file, environment, --set): the cfg, or NULL after
 * printing every error (FILE:LINE:COLUMN: message) on stderr. Sets the log
 * level and format (--log-format wins over log.format). */
cfg *cli_load_config(const cli_args *a);

/* The base URL of the daemon's HTTP API for the commands that talk to it
 * (`nerve reload`, `nerve status`, `nerve killswitch`): "http://" +
 * server.listen of C, a wildcard address (0.0.0.0, [::], or none) reached on
 * the loopback of its family. */
void cli_daemon_url(const cfg *c, char *out, size_t len);

/* Text from a daemon, a rule file or a stranger's event shown on a
 * terminal: every control byte (an escape sequence in a rule's reason)
 * becomes '?', and when MAX_CHARS > 0 at most that many characters (UTF-8)
 * are kept, "..." saying so. The one rule for every command that prints
 * such text: cli_put_safe writes to F, cli_safe_text into OUT (N bytes,
 * always terminated). */
void cli_put_safe(FILE *f, const char *s, size_t max_chars);
void cli_safe_text(char *out, size_t n, const char *s, size_t max_chars);

#endif
