/* daemon.h -- `nerve serve`: wires the modules together and owns the
 * lifecycle (start, SIGHUP reload, SIGTERM/SIGINT graceful stop).
 *
 *   http -> policy (kill switch, sale rules) -> sale -> lock/rds
 *   bus -> queue -> evaluator -> rules -> actions -> killswitch/panic/rds
 *
 * Signals are blocked in every thread and taken by the calling thread with
 * sigwait(), so no work runs inside a signal handler.
 */
#ifndef NERVE_DAEMON_H
#define NERVE_DAEMON_H

#include <stddef.h>

typedef struct daemon_args {
    const char *config; /* path of the YAML file */
    char *const *sets;  /* --set overrides, re-applied on every reload */
    size_t nsets;
    const char *log_format; /* "text", "json" or NULL (from config) */
} daemon_args;

/* Print `FILE:LINE: message` lines on stderr, ending with a newline. */
void daemon_print_errors(const char *text);

/* Run until SIGTERM/SIGINT. Returns the process exit code. */
int daemon_run(const daemon_args *a);

/* Write our pid to PATH, refusing when a live process already holds it.
 * 0, or -1 with a message in ERR. */
int daemon_pidfile_write(const char *path, char *err, size_t errlen);
/* The pid in PATH, or -1. */
int daemon_pidfile_read(const char *path);

#endif
