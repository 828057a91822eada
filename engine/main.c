/* main.c -- the nerve command line and the daemon's lifecycle.
 *
 * main() parses the command, loads the config and wires the modules
 * together: rds pool -> sale engine -> http server. Signals are blocked in
 * every thread and taken synchronously by the main thread with sigwait(), so
 * no work ever runs inside a signal handler.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nerve/config.h"
#include "nerve/http.h"
#include "nerve/log.h"
#include "nerve/rds.h"
#include "nerve/sale.h"

#define NERVE_VERSION "0.1.0"
#define MAX_SETS 256

typedef struct opts {
    const char *config;
    char *sets[MAX_SETS];
    size_t nsets;
    const char *log_format;     /* NULL = from config */
    char **rest;                /* positional arguments after the command */
    int nrest;
} opts;

static void usage(FILE *f) {
    fprintf(f,
            "usage: nerve COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  serve   [-c FILE]            run the daemon (default config/nerve.yaml)\n"
            "  check   [-c FILE]            validate config and rules; exit 0 only if all is valid\n"
            "  reload  [-c FILE]            send SIGHUP to the running daemon (pidfile from config)\n"
            "  help                         this text\n"
            "  --version                    print the version\n"
            "\n"
            "options for commands that read config:\n"
            "  -c, --config FILE            config file (default config/nerve.yaml)\n"
            "  --set dotted.key=value       override a key after the file is read (repeatable)\n"
            "  --log-format text|json       log line format on stderr\n"
            "\n"
            "environment: REDIS_URL NERVE_LISTEN NERVE_RULES_DIR NERVE_PANIC_URL\n"
            "             NERVE_ADMIN_TOKEN NERVE_PANIC_TOKEN (secrets: environment only)\n");
}

/* Parse options after the command. Returns 0, or -1 after printing why. */
static int parse_opts(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->config = "config/nerve.yaml";
    o->rest = calloc((size_t)argc + 1, sizeof *o->rest);
    if (!o->rest) return -1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0 || strcmp(a, "--set") == 0 ||
            strcmp(a, "--log-format") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "nerve: %s needs a value\n", a);
                return -1;
            }
            val = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            a = "--config", val = argv[i] + 9;
        } else if (strncmp(a, "--set=", 6) == 0) {
            a = "--set", val = argv[i] + 6;
        } else if (strncmp(a, "--log-format=", 13) == 0) {
            a = "--log-format", val = argv[i] + 13;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "nerve: unknown option %s (see nerve help)\n", a);
            return -1;
        } else {
            o->rest[o->nrest++] = argv[i];
            continue;
        }
        if (strcmp(a, "--set") == 0) {
            if (o->nsets == MAX_SETS) {
                fprintf(stderr, "nerve: at most %d --set options\n", MAX_SETS);
                return -1;
            }
            o->sets[o->nsets++] = (char *)val;
        } else if (strcmp(a, "--log-format") == 0) {
            if (strcmp(val, "text") && strcmp(val, "json")) {
                fprintf(stderr, "nerve: --log-format must be text or json\n");
                return -1;
            }
            o->log_format = val;
        } else {
            o->config = val;
        }
    }
    return 0;
}

static cfg *load_config(const opts *o) {
    char *errors = NULL;
    cfg *c = cfg_load(o->config, o->sets, o->nsets, &errors);
    if (!c) {
        fputs(errors ? errors : "config: out of memory\n", stderr);
        if (errors && errors[0] && errors[strlen(errors) - 1] != '\n') fputc('\n', stderr);
        free(errors);
        return NULL;
    }
    log_set_level_name(c->log_level);
    log_set_json(strcmp(o->log_format ? o->log_format : c->log_format, "json") == 0);
    return c;
}

/* ---- pidfile ---------------------------------------------------------------- */

static pid_t read_pid(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[32] = "";
    char *ok = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!ok) return -1;
    char *end;
    long v = strtol(buf, &end, 10);
    if (end == buf || v <= 0) return -1;
    return (pid_t)v;
}

/* Write our pid to PATH, refusing when a live process already holds it. */
static int pidfile_write(const char *path) {
    pid_t other = read_pid(path);
    if (other > 0 && other != getpid() && (kill(other, 0) == 0 || errno == EPERM)) {
        fprintf(stderr, "nerve: another nerve (pid %d) holds pidfile %s; stop it first or set server.pidfile\n",
                (int)other, path);
        return -1;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        fprintf(stderr, "nerve: cannot write pidfile %s: %s\n", path, strerror(errno));
        return -1;
    }
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    int bad = write(fd, buf, (size_t)n) != n;
    bad |= close(fd) != 0;
    /* rename is atomic: a reader sees the old pidfile or ours, never half. */
    if (bad || rename(tmp, path) != 0) {
        fprintf(stderr, "nerve: cannot write pidfile %s: %s\n", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* ---- commands ------------------------------------------------------------------ */

static int cmd_check(const opts *o) {
    cfg *c = load_config(o);
    if (!c) return 1;
    printf("%s: ok\n", o->config);
    cfg_free(c);
    return 0;
}

static int cmd_reload(const opts *o) {
    cfg *c = load_config(o);
    if (!c) return 1;
    int rc = 1;
    if (!c->pidfile[0]) {
        fprintf(stderr, "nerve: server.pidfile is not set in %s; cannot find the daemon\n", o->config);
    } else {
        pid_t pid = read_pid(c->pidfile);
        if (pid <= 0)
            fprintf(stderr, "nerve: no running daemon: cannot read a pid from %s\n", c->pidfile);
        else if (kill(pid, SIGHUP) != 0)
            fprintf(stderr, "nerve: cannot signal pid %d from %s: %s\n", (int)pid, c->pidfile, strerror(errno));
        else {
            printf("sent SIGHUP to nerve pid %d\n", (int)pid);
            rc = 0;
        }
    }
    cfg_free(c);
    return rc;
}

static void seed_inventory(const cfg *c, rds_pool *pool) {
    if (!c->n_seed) return;
    rds_client *rc = rds_pool_client(pool);
    size_t set = 0;
    for (size_t i = 0; i < c->n_seed; i++) {
        int r = sale_stock_seed(rc, c->redis_prefix, c->seed[i].sku, c->seed[i].stock);
        if (r < 0) {
            log_warn("main", "inventory seed skipped: redis unavailable error=\"%s\"", rds_errstr(rc));
            return;
        }
        set += (size_t)r;
    }
    log_info("main", "inventory seeded skus=%zu new=%zu", c->n_seed, set);
}

static int cmd_serve(const opts *o) {
    cfg *c = load_config(o);
    if (!c) return 1;

    int rc = 1;
    rds_pool *pool = NULL;
    sale_engine *se = NULL;
    http_server *http = NULL;
    int have_pidfile = 0;

    /* Block the signals we handle before any thread starts, so that every
     * thread inherits the mask and only sigwait() below sees them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    rds_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.connect_timeout_ms = c->redis_connect_timeout_ms;
    ro.command_timeout_ms = c->redis_command_timeout_ms;
    ro.reconnect_max_ms = c->redis_reconnect_max_ms;
    char err[512];
    if (rds_parse_url(c->redis_url, &ro, err, sizeof err)) {
        log_error("main", "%s", err);
        goto out;
    }
    if (c->pidfile[0]) {
        if (pidfile_write(c->pidfile)) goto out;
        have_pidfile = 1;
    }
    pool = rds_pool_new(&ro);
    sale_opts so = {
        .prefix = c->redis_prefix,
        .inventory_channel = c->inventory_channel,
        .sales_channel = c->sales_channel,
        .lock_ttl_ms = c->lock_ttl_ms,
        .lock_max_wait_ms = c->lock_max_wait_ms,
        .idempotency_ttl_s = c->idempotency_ttl_s,
        .max_batch = c->max_batch,
        .max_qty = c->max_qty,
    };
    se = pool ? sale_engine_new(&so, pool) : NULL;
    if (!se) {
        log_error("main", "out of memory");
        goto out;
    }
    seed_inventory(c, pool);

    http_deps hd = { .cfg = c, .pool = pool, .sale = se };
    http = http_start(&hd, err, sizeof err);
    if (!http) {
        log_error("main", "%s", err);
        goto out;
    }
    log_info("main", "nerve %s serving listen=%s redis=%s:%d/%d threads=%d pid=%d", NERVE_VERSION,
             c->listen, ro.host, ro.port, ro.db, c->threads, (int)getpid());

    for (;;) {
        int sig = 0;
        if (sigwait(&sigs, &sig) != 0) continue;
        if (sig == SIGHUP) {
            log_warn("main", "SIGHUP: reload is not available in this build; nothing changed");
            continue;
        }
        log_info("main", "signal %s: shutting down", sig == SIGTERM ? "TERM" : "INT");
        break;
    }
    rc = 0;
out:
    http_stop(http);    /* stops accepting, lets in-flight requests finish */
    sale_engine_free(se);
    rds_pool_free(pool);
    if (have_pidfile && read_pid(c->pidfile) == getpid()) unlink(c->pidfile);
    if (rc == 0) log_info("main", "stopped");
    cfg_free(c);
    return rc;
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
    opts o;
    if (parse_opts(argc - 2, argv + 2, &o)) {
        free(o.rest);
        return 2;
    }
    int rc;
    if (strcmp(cmd, "serve") == 0) rc = cmd_serve(&o);
    else if (strcmp(cmd, "check") == 0) rc = cmd_check(&o);
    else if (strcmp(cmd, "reload") == 0) rc = cmd_reload(&o);
    else {
        fprintf(stderr, "nerve: unknown command '%s' (see nerve help)\n", cmd);
        rc = 2;
    }
    free(o.rest);
    return rc;
}
