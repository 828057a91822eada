/* keys_cli.h -- `nerve keys`: where a SKU's keys are, and moving every SKU's
 * keys to another partition count (keys.h) or from the {SKU} layout of nerve
 * before issue 11.
 *
 * A command, not a library: it prints to stdout and stderr and returns an
 * exit status (0 done, 1 error or refusal, 2 usage). Single-threaded.
 */
#ifndef NERVE_KEYS_CLI_H
#define NERVE_KEYS_CLI_H

/* Run `nerve keys ARGS...`: ARGV[0] is "keys" (as a main's program name),
 * ARGV[1] the subcommand (where, migrate). Returns the exit status. */
int keys_cli_main(int argc, char **argv);

#endif
