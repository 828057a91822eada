/* bench.h -- the few helpers every benchmark program needs: a monotonic
 * clock, sorting samples, and strict number parsing. Header-only (static
 * functions) because the Makefile builds each tests/bench/NAME.c alone. */
#ifndef NERVE_BENCH_H
#define NERVE_BENCH_H

#include <civetweb.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Serve POST /sale with HANDLER on 127.0.0.1:PORT with THREADS CivetWeb
 * workers, with the options of engine/http.c's http_start() (and nerve's
 * default server.request_timeout_ms, 10000), so that the ceiling and the
 * plain server serve as nerve does, until SIGINT or SIGTERM. CB holds the
 * caller's callbacks (log_message, exit_thread...). NAME starts the
 * messages; WHAT is added to the "listening" line. 0, or 1 when it cannot
 * listen. */
static inline int bench_serve(const char *name, long port, long threads,
                              const struct mg_callbacks *cb, mg_request_handler handler,
                              const char *what)
{
    char listen[48], nthreads[24];
    sigset_t set;
    int sig;

    snprintf(listen, sizeof(listen), "127.0.0.1:%ld", port);
    snprintf(nthreads, sizeof(nthreads), "%ld", threads);
    /* Block the stop signals before CivetWeb starts its threads, so they
     * inherit the mask and only sigwait() below ever sees them. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    const char *options[] = {
        "listening_ports", listen,
        "num_threads", nthreads,
        "enable_keep_alive", "yes",
        "keep_alive_timeout_ms", "10000",
        "request_timeout_ms", "10000",
        "tcp_nodelay", "1",
        "max_request_size", "16384",
        NULL,
    };
    mg_init_library(0);
    struct mg_context *ctx = mg_start(cb, NULL, options);
    if (ctx == NULL) {
        fprintf(stderr, "%s: cannot listen on %s\n", name, listen);
        mg_exit_library();
        return 1;
    }
    mg_set_request_handler(ctx, "/sale$", handler, NULL);
    fprintf(stderr, "%s: listening on %s with %ld threads%s\n", name, listen, threads, what);
    while (sigwait(&set, &sig) != 0)
        ;
    mg_stop(ctx);
    mg_exit_library();
    return 0;
}

/* Monotonic milliseconds. */
static inline double bench_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* qsort comparator for doubles. */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* strtol with end pointer and range: 0, or -1 when S is not in MIN..MAX. */
static inline int bench_parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno == ERANGE || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

#endif
