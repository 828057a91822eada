/* status_cli.h -- `nerve status`: one screen on a running daemon.
 *
 * Reads GET /status.json of the daemon at --url (default: http:// plus the
 * config's server.listen, a wildcard address asked on loopback) and prints
 * version, uptime, readiness and its reasons, Redis, bus, the rules in
 * force with their counters, sales, the engaged kill switches with reason
 * and age, queue depth and ledger lag; --json prints the document as it
 * came. Text from the daemon (reasons, rule errors) is printed with control
 * characters replaced, so a hostile reason cannot drive the terminal.
 *
 * A command, not a library: it prints and returns an exit status (0 the
 * daemon answered and is ready, 1 it is not ready or did not answer, 2
 * usage). Single-threaded.
 */
#ifndef NERVE_STATUS_CLI_H
#define NERVE_STATUS_CLI_H

/* Run `nerve status ARGS...`: ARGV[0] is "status". Returns the exit status. */
int status_cli_main(int argc, char **argv);

#endif
