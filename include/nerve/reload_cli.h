/* reload_cli.h -- `nerve reload`: signal the running daemon to reload its
 * config and rules, wait for the outcome of that reload, and report it.
 *
 * The daemon counts every reload attempt (GET /rules: last_reload.seq,
 * live.h); the command reads the count, sends SIGHUP to the pid in
 * server.pidfile, and polls GET /rules until the count moves: the new
 * generation on stdout (exit 0), or the FILE:LINE errors on stderr (exit 1).
 *
 * A command, not a library: it prints to stdout and stderr and returns an
 * exit status (0 reloaded, 1 refused or unknown outcome, 2 usage).
 * Single-threaded.
 */
#ifndef NERVE_RELOAD_CLI_H
#define NERVE_RELOAD_CLI_H

/* Run `nerve reload ARGS...`: ARGV[0] is "reload". Returns the exit status. */
int reload_cli_main(int argc, char **argv);

#endif
