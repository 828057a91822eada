/* killswitch_cli.h -- `nerve killswitch ls|engage|reset`: the kill switch of a
 * running daemon, over its HTTP API (GET /killswitch, POST
 * /admin/killswitch, DELETE /admin/killswitch/{scope}).
 *
 * The daemon's address is the config's server.listen (a wildcard listen is
 * reached on loopback), or --url http://HOST:PORT. The admin token comes
 * from the environment (NERVE_ADMIN_TOKEN) or --token-file FILE, never from
 * a flag that `ps` would show. A reset is sent with the reason and the
 * actor "cli:$USER" (or "cli"), which the daemon audits with the token's name
 * and the remote address.
 *
 * A command, not a library: it prints to stdout and stderr and returns an
 * exit status (0 done, 1 refused or failed -- no token, 401, 403, 404, the
 * daemon unreachable --, 2 usage). Single-threaded.
 */
#ifndef NERVE_KILLSWITCH_CLI_H
#define NERVE_KILLSWITCH_CLI_H

/* Run `nerve killswitch ARGS...`: ARGV[0] is "killswitch", ARGV[1] the
 * subcommand (ls, engage, reset). Returns the exit status. */
int killswitch_cli_main(int argc, char **argv);

#endif
