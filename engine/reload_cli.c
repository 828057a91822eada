/* reload_cli.c -- `nerve reload` (see reload_cli.h).
 *
 * HTTP goes through the one blocking client (httpc.h, shared with `nerve stress`):
 * one HTTP client in nerve, plain sockets with one deadline per request. */
#include "nerve/reload_cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nerve/cli.h"
#include "nerve/httpc.h"
#include "nerve/clock.h"
#include "nerve/config.h"
#include "nerve/daemon.h"

#define DEFAULT_TIMEOUT_S 30
#define POLL_MS           50   /* between two GET /rules while waiting */
#define REQUEST_MS        5000 /* one request at most, within the deadline */

static const char help[] =
    "usage: nerve reload [-c FILE] [--set dotted.key=value]... [--url URL] [--timeout SECONDS]\n"
    "\n"
    "Tell the running daemon to reload its config and rules, and report the outcome:\n"
    "reads GET /rules (last_reload.seq), sends SIGHUP to the pid in server.pidfile, then\n"
    "polls GET /rules until that reload is recorded. Prints 'reloaded: generation N (M rules,\n"
    "sha256 ...)', or the FILE:LINE errors of a refused reload (the previous rules stay).\n"
    "\n"
    "  --url URL          the daemon's HTTP API (default http://server.listen of the config)\n"
    "  --timeout SECONDS  how long to wait for the outcome (default 30)\n"
    "  -c, --config FILE, --set dotted.key=value, --log-format text|json  (see nerve help)\n"
    "\n"
    "Under make run: `make reload` (the same config, the pidfile make run writes).\n"
    "\n"
    "exit status: 0 reloaded; 1 the reload was refused, no daemon (pidfile unset, missing or\n"
    "stale), its API unreachable, or no outcome within --timeout; 2 usage.\n";

typedef struct ropts {
    cli_args a;
    const char *url;
    int timeout_s;
} ropts;

static int on_opt(void *ud, int val, const char *arg) {
    ropts *o = ud;
    if (val == CLI_OPT(1)) {
        o->url = arg;
        return 0;
    }
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (end == arg || *end || errno || v < 1 || v > 3600) {
        fprintf(stderr, "nerve reload: --timeout: expected whole seconds 1..3600, got '%.40s'\n",
                arg);
        return -1;
    }
    o->timeout_s = (int)v;
    return 0;
}

/* GET /rules' last_reload. 0 with *OUT (cJSON_Delete it), *SEQ and
 * *STARTED (started_mono_us, -1 when absent), or -1 with why in ERR. */
static int read_last(const httpc_url *u, int timeout_ms, cJSON **out, double *seq, double *started,
                     char *err, size_t errlen) {
    httpc_reply r;
    int st = httpc_request(u, "GET", "/rules", NULL, NULL, timeout_ms, &r);
    int rc = -1;
    if (st == 0) {
        snprintf(err, errlen, "GET %s/rules: %s", u->base, r.err);
    } else if (st != 200) {
        snprintf(err, errlen, "GET %s/rules: HTTP %d (is that nerve?)", u->base, st);
    } else {
        cJSON *j = cJSON_Parse(r.body);
        const cJSON *last = cJSON_GetObjectItemCaseSensitive(j, "last_reload");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(last, "seq");
        if (!cJSON_IsNumber(s)) {
            snprintf(err, errlen,
                     "GET %s/rules: no last_reload.seq in the answer (a nerve older than this "
                     "command? it cannot report the outcome)",
                     u->base);
            cJSON_Delete(j);
        } else {
            *seq = s->valuedouble;
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(last, "started_mono_us");
            *started = cJSON_IsNumber(m) ? m->valuedouble : -1;
            *out = j;
            rc = 0;
        }
    }
    httpc_reply_free(&r);
    return rc;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "?";
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* One line of the daemon's answer: a rule file's error can quote anything
 * of the file, so control bytes (a terminal escape) print as '?'. */
static void print_line(FILE *f, const char *s) {
    cli_put_safe(f, s, 0);
    fputc('\n', f);
}

/* The outcome in J (GET /rules), seq BEFORE when we signalled. */
static int report(const cJSON *j, double before) {
    const cJSON *last = cJSON_GetObjectItemCaseSensitive(j, "last_reload");
    double seq = jnum(last, "seq");
    if (seq > before + 1)
        fprintf(stderr,
                "nerve reload: note: %.0f reloads ran meanwhile (another reload was asked for "
                "too); this is the latest\n",
                seq - before);
    if (strcmp(jstr(last, "result"), "ok") == 0) {
        printf("reloaded: generation %.0f (%.0f rules, sha256 %s)\n", jnum(last, "generation"),
               jnum(last, "rules"), jstr(last, "sha256"));
        return 0;
    }
    fprintf(stderr, "nerve reload: reload refused, the previous rules stay (generation %.0f):\n",
            jnum(last, "generation"));
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(last, "errors")) {
        if (cJSON_IsString(e)) print_line(stderr, e->valuestring);
    }
    return 1;
}

static int run(ropts *o) {
    cfg *c = cli_load_config(&o->a);
    if (!c) return 1;
    int rc = 1;
    char err[1024], base[400];
    cJSON *j = NULL;
    httpc_url u;
    if (!c->pidfile[0]) {
        fprintf(stderr,
                "nerve reload: server.pidfile is not set in %s, so the daemon cannot be found; "
                "give the daemon's: --set server.pidfile=PATH (under make run: make reload)\n",
                o->a.config);
        goto out;
    }
    int pid = daemon_pidfile_read(c->pidfile);
    if (pid <= 0) {
        fprintf(stderr, "nerve reload: no running daemon: cannot read a pid from %s (%s)\n",
                c->pidfile,
                access(c->pidfile, F_OK) != 0 ? "no such file: is nerve running?" : "not a pid");
        goto out;
    }
    if (kill(pid, 0) != 0 && errno == ESRCH) {
        fprintf(stderr, "nerve reload: no running daemon: pid %d from %s is gone (stale pidfile)\n",
                pid, c->pidfile);
        goto out;
    }
    if (o->url)
        snprintf(base, sizeof base, "%s", o->url);
    else
        cli_daemon_url(c, base, sizeof base);
    if (httpc_url_parse(base, &u, err, sizeof err) || httpc_url_resolve(&u, err, sizeof err)) {
        fprintf(stderr, "nerve reload: %s\n", err);
        goto out;
    }
    long long deadline = clock_now_ms() + (long long)o->timeout_s * 1000;
    double before = 0, started = -1;
    /* Read first, or a reload that ends before the first poll would look
     * like no reload at all. Unreachable: nothing is sent, since the
     * outcome could not be told. */
    if (read_last(&u, REQUEST_MS, &j, &before, &started, err, sizeof err)) {
        fprintf(stderr,
                "nerve reload: %s; no signal sent (the daemon's API is needed to report the "
                "outcome: --url URL if server.listen is not where it listens; kill -HUP %d "
                "reloads without a report)\n",
                err, pid);
        goto out;
    }
    cJSON_Delete(j);
    j = NULL;
    /* The daemon stamps each reload with the same clock when it begins,
     * after taking a signal: one begun after this instant read the files as
     * they were when we asked (ours, or one asked for meanwhile). */
    double sent_us = (double)(clock_now_ns() / 1000);
    if (kill(pid, SIGHUP) != 0) {
        fprintf(stderr, "nerve reload: cannot signal pid %d from %s: %s\n", pid, c->pidfile,
                strerror(errno));
        goto out;
    }
    for (;;) {
        long long left = deadline - clock_now_ms();
        double seq = before;
        int got = read_last(&u, left < REQUEST_MS ? (int)(left > 1 ? left : 1) : REQUEST_MS, &j,
                            &seq, &started, err, sizeof err);
        /* A reload already running when we signalled moves seq too: not
         * ours (ours follows it). */
        if (got == 0 && seq > before && (started < 0 || started >= sent_us)) {
            rc = report(j, before);
            break;
        }
        cJSON_Delete(j);
        j = NULL;
        if (clock_now_ms() >= deadline) {
            if (got)
                fprintf(stderr,
                        "nerve reload: sent SIGHUP to pid %d, but %s: the outcome is unknown (see "
                        "the daemon's log)\n",
                        pid, err);
            else
                fprintf(stderr,
                        "nerve reload: sent SIGHUP to pid %d, but no reload was recorded within "
                        "%d s: the outcome is unknown (see the daemon's log; --timeout)\n",
                        pid, o->timeout_s);
            break;
        }
        struct timespec ts = { 0, POLL_MS * 1000000L };
        nanosleep(&ts, NULL);
    }
out:
    cJSON_Delete(j);
    cfg_free(c);
    return rc;
}

int reload_cli_main(int argc, char **argv) {
    static const struct option own[] = { { "url", required_argument, NULL, CLI_OPT(1) },
                                         { "timeout", required_argument, NULL, CLI_OPT(2) },
                                         { 0, 0, 0, 0 } };
    ropts o = { .timeout_s = DEFAULT_TIMEOUT_S };
    if (cli_parse("nerve reload", "nerve reload --help", argc, argv, own, on_opt, &o, &o.a)) {
        cli_args_free(&o.a);
        return 2;
    }
    int rc;
    if (o.a.help) {
        fputs(help, stdout);
        rc = 0;
    } else if (o.a.nrest) {
        fprintf(stderr, "nerve reload: unexpected argument '%.100s' (see nerve reload --help)\n",
                o.a.rest[0]);
        rc = 2;
    } else {
        rc = run(&o);
    }
    cli_args_free(&o.a);
    return rc;
}
