/* daemon.c -- `nerve serve` (see daemon.h). */
#include "nerve/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nerve/actions.h"
#include "nerve/bus.h"
#include "nerve/clock.h"
#include "nerve/cluster.h"
#include "nerve/config.h"
#include "nerve/declog.h"
#include "nerve/evaluator.h"
#include "nerve/http.h"
#include "nerve/keys.h"
#include "nerve/killswitch.h"
#include "nerve/ledger.h"
#include "nerve/live.h"
#include "nerve/lock.h"
#include "nerve/log.h"
#include "nerve/notify.h"
#include "nerve/panic.h"
#include "nerve/policy.h"
#include "nerve/queue.h"
#include "nerve/rds.h"
#include "nerve/rules.h"
#include "nerve/sale.h"
#include "nerve/sentinel.h"

void daemon_print_errors(const char *text) {
    fputs(text, stderr);
    if (text[0] && text[strlen(text) - 1] != '\n') fputc('\n', stderr);
}
#define print_errors daemon_print_errors

/* ---- pidfile ---------------------------------------------------------------- */

int daemon_pidfile_read(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[32] = "";
    char *ok = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!ok) return -1;
    char *end;
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (end == buf || errno || v <= 0 || v > 0x7fffffff) return -1;
    return (int)v;
}

int daemon_pidfile_write(const char *path, char *err, size_t errlen) {
    int other = daemon_pidfile_read(path);
    if (other > 0 && other != (int)getpid() && (kill(other, 0) == 0 || errno == EPERM)) {
        snprintf(err, errlen,
                 "another nerve (pid %d) holds pidfile %s; stop it first or set server.pidfile",
                 other, path);
        return -1;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write pidfile %s: %s", path, strerror(errno));
        return -1;
    }
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    int bad = write(fd, buf, (size_t)n) != n;
    int saved = errno;
    bad |= close(fd) != 0;
    /* rename is atomic: a reader sees the old pidfile or ours, never half. */
    if (bad || rename(tmp, path) != 0) {
        if (!bad) saved = errno;
        snprintf(err, errlen, "cannot write pidfile %s: %s", path, strerror(saved ? saved : EIO));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* ---- the running daemon -------------------------------------------------------- */

typedef struct nerved {
    const daemon_args *args;
    cfg *c;
    snt *watched; /* sentinel mode: its +switch-master watcher runs */
    rds_pool *pool;
    live *live;
    panic *panic;
    panic *resume; /* panic.resume_url's calls; NULL when unset */
    ks *ks;
    act *act;
    evq *q;
    eval *eval;
    bus *bus;
    policy *policy;
    ctr *counters;
    declog *dlog;
    sale_engine *sale;
    http_server *http;
    ledger_writer *ledger;     /* NULL: ledger.enabled or bus.streams off */
    pthread_mutex_t reload_mu; /* one reload at a time (SIGHUP and HTTP) */
    int layout_checked;        /* bus.partitions compared with Redis' record */
    _Atomic int layout_bad;    /* it differs: stop, exit 1 */
} nerved;

/* A reload applies rules.* (the rule set, its params and limits) and
 * log.level; every other setting is read at start only. Report each one that
 * changed, rather than half-apply it. */
static void report_restart_only(const cfg *old, const cfg *nw) {
    const char *keys[64];
    size_t n = cfg_diff(old, nw, keys, 64);
    for (size_t i = 0; i < n && i < 64; i++) {
        if (strncmp(keys[i], "rules.", 6) == 0 || strcmp(keys[i], "log.level") == 0) continue;
        log_warn("reload", "%s changed but needs a restart; still using the old value", keys[i]);
    }
    if (strcmp(old->log_level, nw->log_level) != 0) {
        log_set_level_name(nw->log_level);
        log_info("reload", "log.level is now %s", nw->log_level);
    }
}

/* Re-read the config file and the rules; swap only when everything is valid. */
static int do_reload(void *ud, uint64_t *generation, char **errors) {
    nerved *d = ud;
    pthread_mutex_lock(&d->reload_mu);
    uint64_t started_us = clock_now_ns() / 1000;
    notify_reloading(started_us);
    *errors = NULL;
    char *errs = NULL;
    int rc = -1;
    cfg *nc = cfg_load(d->args->config, d->args->sets, d->args->nsets, &errs);
    rules_set *set = nc ? rules_set_load(nc, &errs) : NULL;
    if (!set) {
        const char *text = errs ? errs : "reload failed: out of memory\n";
        for (const char *p = text; *p;) {
            const char *nl = strchr(p, '\n');
            int n = nl ? (int)(nl - p) : (int)strlen(p);
            if (n) log_error("reload", "%.*s", n, p);
            p += n + (nl ? 1 : 0);
        }
        uint64_t seq = live_record_reload(d->live, false, started_us, live_generation(d->live),
                                          NULL, text);
        /* systemd: back to ready (the old rules serve), the failure in STATUS. */
        char status[300];
        snprintf(status, sizeof status, "reload %llu failed, previous rules kept: %.200s",
                 (unsigned long long)seq, text);
        char *snl = strchr(status, '\n');
        if (snl) *snl = 0;
        notify_ready(status);
        rds_client *c = rds_pool_client(d->pool);
        if (c) {
            char reason[512];
            snprintf(reason, sizeof reason, "reload failed, previous rules kept: %.400s", text);
            char *nl = strchr(reason, '\n');
            if (nl) *nl = 0;
            act_alert(d->act, c, "reload_failed", "critical", "reload", NULL, reason);
        }
        *errors = errs;
        errs = NULL;
    } else {
        report_restart_only(d->c, nc);
        uint64_t g = live_swap(d->live, set);
        /* SET is the live one now, referenced by L: still valid here under
         * reload_mu (only a reload swaps it out). */
        live_record_reload(d->live, true, started_us, g, set, NULL);
        log_info("reload", "rules reloaded generation=%llu rules=%zu sha256=%s",
                 (unsigned long long)g, rules_set_count(set), rules_set_sha256(set));
        char status[200];
        snprintf(status, sizeof status, "serving, rules generation %llu (%zu rules)",
                 (unsigned long long)g, rules_set_count(set));
        notify_ready(status);
        if (generation) *generation = g;
        rc = 0;
    }
    free(errs);
    cfg_free(nc);
    pthread_mutex_unlock(&d->reload_mu);
    return rc;
}

/* Runs once shutdown has begun: a second SIGTERM/SIGINT exits at once, and a
 * shutdown that overruns the grace period is cut short. */
typedef struct watchdog {
    sigset_t sigs;
    int grace_ms;
} watchdog;

static void *watchdog_run(void *arg) {
    watchdog *w = arg;
    struct timespec ts = { w->grace_ms / 1000 + 1, (long)(w->grace_ms % 1000) * 1000000 };
    for (;;) {
        int sig = sigtimedwait(&w->sigs, NULL, &ts);
        if (sig == SIGHUP) continue; /* no reloads while stopping */
        if (sig < 0 && errno == EINTR) continue;
        if (sig < 0)
            log_error("main", "shutdown took longer than the grace period (%d ms); exiting now",
                      w->grace_ms);
        else
            log_warn("main", "second signal: exiting now");
        _exit(sig < 0 ? 1 : 130);
    }
    return NULL;
}

/* On the bus thread: a control message only names a scope whose record to
 * re-read (killswitch.h), with the bus thread's own pooled client (its
 * subscribed connection can send nothing). One GET per message, no queue. */
static void on_control(void *ud, const char *msg, size_t len) {
    nerved *d = ud;
    ks_on_control(d->ks, rds_pool_client(d->pool), msg, len);
}

/* A Redis Cluster node reached as one standalone server answers MOVED for
 * most keys: sales would fail while /readyz said ready. And the reverse:
 * redis.mode cluster against a server without cluster support could route
 * nothing. 0 when Redis is what the mode says (or nobody can tell: logged),
 * 1 when Redis did not answer, -1 after logging why nerve must not start. */
static int check_not_cluster(nerved *d, rds_client *c) {
    char err[512];
    rds_opts ro;
    if (cfg_redis_opts(d->c, &ro, err, sizeof err)) return -1;
    /* Asked of the seed itself: a routing client needs a slot map first. */
    rds_opts one = ro;
    one.cluster = 0;
    rds_client *seed = ro.cluster ? rds_client_new(&one) : c;
    int on = seed ? cl_info_cluster_enabled(seed, err, sizeof err) : -1;
    if (seed != c) rds_client_free(seed);
    if (on == -1) return 1;
    if (on == -2) {
        log_warn("main", "cannot tell whether redis is a cluster node error=\"%s\"", err);
        return 0;
    }
    if (on == !!ro.cluster) return 0;
    if (ro.cluster)
        log_error("main",
                  "redis at %s:%d is not a Redis Cluster node (cluster_enabled:0) but redis.mode "
                  "is cluster. Set redis.mode: standalone, or point redis.url at a node of the "
                  "cluster",
                  ro.host, ro.port);
    else
        log_error("main",
                  "redis at %s:%d is a Redis Cluster node (cluster_enabled:1) but redis.mode is "
                  "standalone: most keys would answer MOVED. Set redis.mode: cluster, or point "
                  "redis.url at a standalone Redis",
                  ro.host, ro.port);
    return -1;
}

/* Check that Redis is what the config says (not a cluster node, see above)
 * and compare bus.partitions with the count recorded in Redis (keys.h): every
 * key name depends on it, so a daemon with another count would sell from
 * stock records nobody else sees. 0 same (or recorded now), -1 differs (the
 * message is logged), 1 Redis did not answer (checked again on connect). */
static int check_layout(nerved *d) {
    rds_client *c = rds_pool_client(d->pool);
    char err[512];
    if (!c) return 1;
    int rc = check_not_cluster(d, c);
    if (rc) return rc;
    if (keys_check_partitions(c, d->c->redis_prefix, d->c->bus_partitions, err, sizeof err) == 0) {
        d->layout_checked = 1;
        return 0;
    }
    if (strncmp(err, "redis:", 6) == 0) return 1;
    log_error("main", "%s", err);
    return -1;
}

/* On the evaluator thread: its stream events are evaluated (bus.h). */
static void eval_release(void *ud, size_t n) {
    bus_release(ud, n);
}

static int eval_ack(void *ud, rds_client *c, const evq_item *items, size_t n) {
    return bus_ack(ud, c, items, n);
}

static void on_bus_connect(void *ud) {
    nerved *d = ud;
    /* Redis did not answer at start: the first connection checks the layout,
     * and a daemon with the wrong partition count stops (exit 1). */
    if (!d->layout_checked && check_layout(d) < 0) {
        d->layout_bad = 1;
        kill(getpid(), SIGTERM);
        return;
    }
    rds_client *c = rds_pool_client(d->pool);
    if (c) ks_refresh(d->ks, c);
}

static void seed_inventory(const cfg *c, const sale_opts *so, rds_pool *pool) {
    if (!c->n_seed) return;
    rds_client *rc = rds_pool_client(pool);
    size_t set = 0;
    for (size_t i = 0; i < c->n_seed; i++) {
        int r = rc ? sale_stock_seed(rc, so, c->seed[i].sku, c->seed[i].stock) : -1;
        if (r < 0) {
            log_warn("main", "inventory seed skipped: redis unavailable error=\"%s\"",
                     rc ? rds_errstr(rc) : "oom");
            return;
        }
        set += (size_t)r;
    }
    log_info("main", "inventory seeded skus=%zu new=%zu", c->n_seed, set);
}

int daemon_run(const daemon_args *a) {
    nerved d;
    memset(&d, 0, sizeof d);
    d.args = a;
    pthread_mutex_init(&d.reload_mu, NULL);
    int rc = 1, have_pidfile = 0, have_wd = 0;
    pthread_t wd_thread;
    char err[512];

    /* Block the signals we handle before any thread starts, so that every
     * thread inherits the mask and only sigwait() below sees them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    char *errs = NULL;
    d.c = cfg_load(a->config, a->sets, a->nsets, &errs);
    if (!d.c) {
        print_errors(errs ? errs : "config: out of memory");
        free(errs);
        return 1;
    }
    cfg *c = d.c;
    log_set_level_name(c->log_level);
    log_set_json(strcmp(a->log_format ? a->log_format : c->log_format, "json") == 0);

    rules_set *set = rules_set_load(c, &errs);
    if (!set) {
        print_errors(errs ? errs : "rules: out of memory");
        fprintf(stderr,
                "nerve: refusing to start with broken rules (check them with `nerve check`)\n");
        free(errs);
        goto out;
    }

    rds_opts ro;
    if (cfg_redis_opts(c, &ro, err, sizeof err)) {
        log_error("main", "%s", err);
        rules_set_unref(set);
        goto out;
    }
    if (ro.sentinel) {
        /* A master name no sentinel knows is a config error: say so now.
         * Sentinels that do not answer are an outage: serve (503s) and
         * keep asking, as with a Redis that is down. */
        char sh[SNT_HOST_MAX];
        int sp, sr = snt_primary(ro.sentinel, sh, sizeof sh, &sp, err, sizeof err);
        if (sr == SNT_UNKNOWN) {
            log_error("main", "%s", err);
            rules_set_unref(set);
            goto out;
        }
        if (sr == SNT_DOWN) log_warn("main", "sentinel mode: %s; retrying", err);
        if (snt_watch_start(ro.sentinel, err, sizeof err)) {
            log_error("main", "%s", err);
            rules_set_unref(set);
            goto out;
        }
        d.watched = ro.sentinel;
    }
    if (c->pidfile[0]) {
        if (daemon_pidfile_write(c->pidfile, err, sizeof err)) {
            fprintf(stderr, "nerve: %s\n", err);
            rules_set_unref(set);
            goto out;
        }
        have_pidfile = 1;
    }

    char host[128] = "host", instance[200];
    gethostname(host, sizeof host - 1);
    /* host:pid:random. The instance id names this process in kill records
     * and is its consumer name in the stream groups: two containers with
     * one hostname both run as pid 1, and two consumers of one name would
     * read (and DELCONSUMER) each other's pending entries. */
    char tok[LOCK_TOKEN_LEN + 1];
    lock_token_new(tok);
    snprintf(instance, sizeof instance, "%s:%d:%.8s", host, (int)getpid(), tok);
    char control[600];
    snprintf(control, sizeof control, "%scontrol", c->redis_prefix);

    d.live = live_new();
    if (d.live)
        live_swap(d.live, set);
    else
        rules_set_unref(set);
    d.pool = rds_pool_new(&ro);
    /* No webhook configured: there is nothing to call, so emergency stops are
     * recorded and alerted as "would stop" (dry run) instead of failing. */
    bool dry_run = c->panic_dry_run || !c->panic_webhook_url[0];
    if (!c->panic_webhook_url[0])
        log_warn("main",
                 "panic.webhook_url is not set: kill switch engagements are recorded as dry runs");
    panic_opts po = {
        .url = c->panic_webhook_url,
        .token = c->panic_token,
        .timeout_ms = c->panic_timeout_ms,
        .max_attempts = c->panic_max_attempts,
        .backoff_initial_ms = c->panic_backoff_initial_ms,
        .backoff_max_ms = c->panic_backoff_max_ms,
        .backoff_multiplier = c->panic_backoff_multiplier,
        .jitter = c->panic_jitter,
        .dry_run = dry_run,
        .queue_max = 1024,
    };
    d.panic = panic_new(&po, err, sizeof err);
    if (!d.panic) {
        log_error("main", "%s", err);
        goto out;
    }
    /* The resume call after a reset: the same machinery and settings, its
     * own queue and worker, so that a slow pause-campaigns API never holds
     * up a resume nor the reverse. Unset: nothing to call. */
    if (c->panic_resume_url[0]) {
        panic_opts rp = po;
        rp.url = c->panic_resume_url;
        rp.dry_run = c->panic_dry_run;
        rp.what = "resume call";
        d.resume = panic_new(&rp, err, sizeof err);
        if (!d.resume) {
            log_error("main", "panic.resume_url: %s", err);
            goto out;
        }
    }
    d.ks = ks_new(c->redis_prefix, control, instance);
    /* Every attempt timing out after the longest backoff: a stop still
     * "stopping" well past this lost its instance (act_resume_stalled). */
    long long bound = (long long)c->panic_max_attempts *
                      ((long long)c->panic_timeout_ms + c->panic_backoff_max_ms);
    int stop_bound_ms = bound > 3600000 ? 3600000 : (int)bound;
    act_opts ao = { .prefix = c->redis_prefix,
                    .alerts_channel = c->alerts_channel,
                    .instance = instance,
                    .throttle_s = c->alerts_throttle_s,
                    .audit_maxlen = c->audit_maxlen,
                    .dry_run = dry_run,
                    .stop_bound_ms = stop_bound_ms,
                    .resume = d.resume };
    d.act = d.ks && d.pool ? act_new(&ao, d.ks, d.panic, d.pool) : NULL;
    d.q = evq_new((size_t)c->queue_size);
    d.counters = d.pool ? ctr_new(d.pool, c->redis_prefix) : NULL;
    declog_opts dlo = { .redis = ro,
                        .prefix = c->redis_prefix,
                        .instance = instance,
                        .maxlen = c->decisions_maxlen,
                        .event_max_bytes = (size_t)c->decisions_event_max_bytes,
                        .queue_size = (size_t)c->decisions_queue_size };
    d.dlog = declog_start(&dlo, err, sizeof err);
    if (!d.dlog) {
        log_error("main", "%s", err);
        goto out;
    }
    d.policy = d.live && d.ks && d.act && d.counters
                   ? policy_new(d.live, d.ks, d.act, d.pool, d.counters, d.dlog)
                   : NULL;
    if (!d.live || !d.pool || !d.act || !d.q || !d.counters || !d.policy) {
        log_error("main", "out of memory");
        goto out;
    }
    if (check_layout(&d) < 0) {
        fprintf(stderr, "nerve: refusing to start: see the error above\n");
        goto out;
    }
    sale_opts so = {
        .prefix = c->redis_prefix,
        .inventory_channel = c->inventory_channel,
        .sales_channel = c->sales_channel,
        .partitions = c->bus_partitions,
        .streams = c->bus_streams,
        .stream_maxlen = c->stream_maxlen,
        .publish = c->bus_publish,
        .instance = instance,
        .lock_ttl_ms = c->lock_ttl_ms,
        .lock_max_wait_ms = c->lock_max_wait_ms,
        .idempotency_ttl_s = c->idempotency_ttl_s,
        .max_batch = c->max_batch,
        .max_qty = c->max_qty,
        .redis = &ro,
        .pipelines = c->sale_pipelines,
        .wait_replicas = c->sale_wait_replicas,
        .wait_timeout_ms = c->sale_wait_timeout_ms,
        .gate = policy_gate,
        .gate_ud = d.policy,
    };
    rds_client *c0 = rds_pool_client(d.pool);
    if (c0) ks_refresh(d.ks, c0);
    seed_inventory(c, &so, d.pool);

    /* The bus before the evaluator, which acknowledges through it; its
     * events wait in the queue meanwhile. */
    bus_opts bo = { .redis = ro,
                    .channels = c->bus_channels,
                    .n_channels = c->n_bus_channels,
                    .max_event_bytes = (size_t)c->max_event_bytes,
                    .control_channel = control,
                    .on_control = on_control,
                    .on_connect = on_bus_connect,
                    .ud = &d,
                    .pubsub_input = c->bus_pubsub_input,
                    .streams = c->bus_streams,
                    .prefix = c->redis_prefix,
                    .partitions = c->bus_partitions,
                    .group = c->bus_group,
                    .inventory_channel = c->inventory_channel,
                    .sales_channel = c->sales_channel,
                    .consumer = instance,
                    .claim_idle_ms = c->claim_idle_ms };
    d.bus = bus_start(&bo, d.q, err, sizeof err);
    if (!d.bus) {
        log_error("main", "%s", err);
        goto out;
    }
    eval_opts eo = { .live = d.live,
                     .q = d.q,
                     .act = d.act,
                     .ks = d.ks,
                     .pool = d.pool,
                     .counters = d.counters,
                     .dlog = d.dlog,
                     .stall_ms = c->stall_ms,
                     .resume_ms = stop_bound_ms < 30000 ? stop_bound_ms : 30000,
                     .ack = eval_ack,
                     .release = eval_release,
                     .ack_batch = BUS_ACK_BATCH,
                     .ack_ud = d.bus };
    d.eval = eval_start(&eo, err, sizeof err);
    if (!d.eval) {
        log_error("main", "%s", err);
        goto out;
    }
    if (c->ledger_enabled && c->bus_streams) {
        ledger_writer_opts lo = {
            .cfg = c, .redis = ro, .instance = instance, .url = c->ledger_url
        };
        d.ledger = ledger_writer_start(&lo, err, sizeof err);
        if (!d.ledger) {
            log_error("main", "%s", err);
            goto out;
        }
    } else if (c->ledger_enabled) {
        log_warn("main", "bus.streams is off: the ledger is not written (it reads the streams)");
    }
    d.sale = sale_engine_new(&so, d.pool);
    if (!d.sale) {
        log_error("main", "out of memory");
        goto out;
    }
    http_deps hd = { .cfg = c,
                     .pool = d.pool,
                     .sale = d.sale,
                     .live = d.live,
                     .ks = d.ks,
                     .act = d.act,
                     .policy = d.policy,
                     .q = d.q,
                     .bus = d.bus,
                     .eval = d.eval,
                     .panic = d.panic,
                     .resume = d.resume,
                     .ledger = d.ledger,
                     .dlog = d.dlog,
                     .reload = do_reload,
                     .reload_ud = &d };
    d.http = http_start(&hd, err, sizeof err);
    if (!d.http) {
        log_error("main", "%s", err);
        goto out;
    }
    log_info("main", "nerve serving listen=%s redis=%s:%d/%d threads=%d rules=%zu pid=%d",
             c->listen, ro.host, ro.port, ro.db, c->threads, rules_set_count(set), (int)getpid());
    {
        /* The live set, referenced: an HTTP reload may already have swapped SET out. */
        uint64_t g = 0;
        rules_set *now = live_get(d.live, &g);
        char status[300];
        snprintf(status, sizeof status, "serving on %.200s, rules generation %llu (%zu rules)",
                 c->listen, (unsigned long long)g, now ? rules_set_count(now) : (size_t)0);
        rules_set_unref(now);
        notify_ready(status);
    }

    for (;;) {
        int sig = 0;
        if (sigwait(&sigs, &sig) != 0) continue;
        if (sig == SIGHUP) {
            uint64_t g = 0;
            char *e2 = NULL;
            log_info("main", "SIGHUP: reloading config and rules");
            do_reload(&d, &g, &e2);
            free(e2);
            continue;
        }
        log_info("main", "signal %s: shutting down (grace %d ms)", sig == SIGTERM ? "TERM" : "INT",
                 c->shutdown_grace_ms);
        notify_stopping();
        break;
    }
    static watchdog wd;
    wd.sigs = sigs;
    wd.grace_ms = c->shutdown_grace_ms;
    have_wd = pthread_create(&wd_thread, NULL, watchdog_run, &wd) == 0;
    rc = d.layout_bad ? 1 : 0;
out:
    /* Order: stop taking requests (in-flight ones finish), then stop the bus,
     * let the evaluator drain the queue, then the emergency stops. */
    http_stop(d.http);
    log_debug("main", "http stopped");
    bus_stop_input(d.bus);
    log_debug("main", "bus stopped");
    if (d.q) evq_close(d.q);
    eval_stop(d.eval);
    bus_stop(d.bus); /* after the evaluator's last acknowledgement */
    log_debug("main", "event queue drained");
    /* Every decision is made: write what the log holds (Redis permitting). */
    declog_stop(d.dlog, c->shutdown_grace_ms < 2000 ? c->shutdown_grace_ms : 2000);
    /* What the writer read and did not commit stays pending in Redis. */
    ledger_writer_stop(d.ledger);
    log_debug("main", "ledger writer stopped");
    if (d.panic) panic_drain(d.panic, c->shutdown_grace_ms);
    panic_free(d.panic);
    if (d.resume) panic_drain(d.resume, c->shutdown_grace_ms);
    panic_free(d.resume);
    log_debug("main", "emergency stops finished");
    sale_engine_free(d.sale);
    policy_free(d.policy);
    ctr_free(d.counters);
    act_free(d.act);
    ks_free(d.ks);
    evq_free(d.q);
    rds_pool_free(d.pool);
    if (d.watched) snt_watch_stop(d.watched);
    live_free(d.live);
    if (have_pidfile && daemon_pidfile_read(c->pidfile) == (int)getpid()) unlink(c->pidfile);
    if (have_wd) {
        /* sigtimedwait is a cancellation point: the watchdog ends here. */
        pthread_cancel(wd_thread);
        pthread_join(wd_thread, NULL);
    }
    if (rc == 0) log_info("main", "stopped");
    pthread_mutex_destroy(&d.reload_mu);
    cfg_free(c);
    return rc;
}
