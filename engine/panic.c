/* panic.c -- the emergency stop worker (see panic.h).
 *
 * One worker thread owns one libcurl easy handle and drains a bounded FIFO of
 * jobs. Each job is a POST of {"scope","reason","rule","ts"} retried with
 * exponential backoff and full jitter (the AWS "full jitter" scheme: sleep a
 * uniform random time in [0, cap], cap growing geometrically up to a max), so
 * that a fleet of instances hitting a struggling webhook spreads out instead
 * of retrying in lockstep.
 *
 * Backoff sleeps are a timed wait on the worker's condition variable (bound
 * to CLOCK_MONOTONIC, so wall-clock jumps neither shorten nor stretch them),
 * which panic_free() signals: shutdown never waits out a backoff. An attempt
 * in flight is bounded by CURLOPT_TIMEOUT_MS and is let finish.
 *
 * Every attempt uses a fresh connection: one attempt is then exactly one
 * request on the wire, and curl's silent resend on a reused connection that
 * died can never turn one attempt into two POSTs.
 */
#include "nerve/panic.h"
#include "nerve/backoff.h"
#include "nerve/clock.h"
#include "nerve/log.h"
#include "nerve/url.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RESP_BODY_MAX (64 * 1024) /* answer bytes read before we stop caring */
#define JOB_STR_MAX   4096        /* scope, reason, rule: bytes kept */

typedef struct pjob {
    panic_job job; /* scope/reason/rule/actor point at the copies */
    char *scope, *reason, *rule, *actor;
    struct pjob *next;
} pjob;

struct panic {
    /* Immutable after panic_new. */
    panic_opts o;              /* url/token point at the copies below */
    char *url, *token;         /* url NULL = no webhook configured */
    char *what;                /* "emergency stop", "resume call": log lines */
    const char *attempt_label; /* "webhook" for the emergency stop (as ever), else WHAT */
    CURL *curl;                /* worker thread only */
    struct curl_slist *headers;
    pthread_t thread;

    pthread_mutex_t mu;
    pthread_cond_t wake; /* worker: a job arrived, or stop */
    pthread_cond_t idle; /* drain: queue empty and nothing running */
    /* Guarded by mu. */
    pjob *head, *tail;
    int queued;
    bool busy, stopping;
    panic_stats stats;
};

/* ---- helpers ---------------------------------------------------------- */

/* Copy at most JOB_STR_MAX bytes of S, cut at a UTF-8 character boundary.
 * NULL stays NULL. *OOM is set when the allocation failed. */
static char *copy_bounded(const char *s, bool *oom) {
    if (!s) return NULL;
    size_t n = strnlen(s, JOB_STR_MAX + 1);
    if (n > JOB_STR_MAX) {
        n = JOB_STR_MAX;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    }
    char *d = malloc(n + 1);
    if (!d) {
        *oom = true;
        return NULL;
    }
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static void job_free(pjob *j) {
    if (!j) return;
    free(j->scope);
    free(j->reason);
    free(j->rule);
    free(j->actor);
    free(j);
}

/* The delay after attempt K (1-based), in ms: backoff.h's cap
 * min(max, initial*mult^(K-1)), full jitter unless the options turn it off. */
static long long backoff_delay_ms(const panic_opts *o, int k) {
    backoff_policy b = { o->backoff_initial_ms, o->backoff_max_ms, o->backoff_multiplier,
                         o->jitter ? BACKOFF_JITTER_FULL : BACKOFF_JITTER_NONE };
    return backoff_delay(&b, k);
}

/* Sleep MS on the worker's condvar. 0 when the time ran out, -1 when
 * panic_free() asked us to stop (at once, whatever remained). */
static int sleep_ms(panic *p, long long ms) {
    struct timespec dl = clock_deadline_ms(ms);
    pthread_mutex_lock(&p->mu);
    while (!p->stopping) {
        if (pthread_cond_timedwait(&p->wake, &p->mu, &dl) == ETIMEDOUT) break;
    }
    int rc = p->stopping ? -1 : 0;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* ---- one attempt ------------------------------------------------------ */

typedef struct {
    size_t got;
    bool overflow;
} sink;

/* Discard the answer, but stop reading once it is absurdly large. */
static size_t discard(char *ptr, size_t size, size_t nmemb, void *ud) {
    (void)ptr;
    sink *s = ud;
    size_t n = size * nmemb;
    s->got += n;
    if (s->got > RESP_BODY_MAX) {
        s->overflow = true;
        return 0; /* CURLE_WRITE_ERROR */
    }
    return n;
}

/* POST BODY once; fill A's ok, http_status and error. */
static void attempt(panic *p, const char *body, panic_attempt *a) {
    char errbuf[CURL_ERROR_SIZE];
    sink s = { 0, false };
    errbuf[0] = 0;
    curl_easy_setopt(p->curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(p->curl, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(p->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(p->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    CURLcode rc = curl_easy_perform(p->curl);
    long status = 0;
    curl_easy_getinfo(p->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_setopt(p->curl, CURLOPT_ERRORBUFFER, NULL); /* errbuf dies here */
    curl_easy_setopt(p->curl, CURLOPT_WRITEDATA, NULL);

    a->http_status = (int)status;
    /* A 2xx is an acknowledgement, also when we cut an oversized answer short. */
    bool complete = rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && s.overflow);
    if (complete && status >= 200 && status <= 299) {
        a->ok = true;
        a->error[0] = 0;
    } else if (complete) {
        a->ok = false;
        snprintf(a->error, sizeof a->error, "HTTP %ld", status);
    } else {
        a->ok = false;
        snprintf(a->error, sizeof a->error, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }
}

static char *build_body(const pjob *j) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    char *out = NULL;
    if (!cJSON_AddStringToObject(o, "scope", j->scope)) goto done;
    if (!cJSON_AddStringToObject(o, "reason", j->reason ? j->reason : "")) goto done;
    if (j->actor) {
        if (!cJSON_AddStringToObject(o, "actor", j->actor)) goto done;
    } else if (!(j->rule ? cJSON_AddStringToObject(o, "rule", j->rule)
                         : cJSON_AddNullToObject(o, "rule"))) {
        goto done;
    }
    if (!cJSON_AddNumberToObject(o, "ts", j->job.ts)) goto done;
    out = cJSON_PrintUnformatted(o);
done:
    cJSON_Delete(o);
    return out;
}

/* ---- jobs ------------------------------------------------------------- */

/* Count, log and report the end of a job. LAST_ERROR only for STOP_FAILED. */
static void finish(panic *p, pjob *j, panic_outcome outcome, int attempts, const char *last_error) {
    pthread_mutex_lock(&p->mu);
    if (outcome == PANIC_STOPPED)
        p->stats.jobs_stopped++;
    else if (outcome == PANIC_DRY_RUN)
        p->stats.jobs_dry_run++;
    else
        p->stats.jobs_failed++;
    pthread_mutex_unlock(&p->mu);

    if (outcome == PANIC_STOPPED)
        log_info("panic", "%s done scope=%s attempts=%d", p->what, j->scope, attempts);
    else if (outcome == PANIC_DRY_RUN && j->actor)
        log_info("panic", "dry run: would resume scope=%s actor=\"%s\" reason=\"%s\"", j->scope,
                 j->actor, j->reason ? j->reason : "");
    else if (outcome == PANIC_DRY_RUN)
        log_info("panic", "dry run: would stop scope=%s rule=%s reason=\"%s\"", j->scope,
                 j->rule ? j->rule : "-", j->reason ? j->reason : "");
    else
        log_warn("panic", "%s failed scope=%s attempts=%d error=\"%s\"", p->what, j->scope,
                 attempts, last_error);
    if (j->job.on_done)
        j->job.on_done(j->job.ud, &j->job, outcome, attempts,
                       outcome == PANIC_STOP_FAILED ? last_error : NULL);
}

static void run_job(panic *p, pjob *j) {
    if (p->o.dry_run) {
        finish(p, j, PANIC_DRY_RUN, 0, NULL);
        return;
    }
    if (!p->url) {
        finish(p, j, PANIC_STOP_FAILED, 0, "no panic.webhook_url configured");
        return;
    }
    char *body = build_body(j);
    if (!body) {
        finish(p, j, PANIC_STOP_FAILED, 0, "out of memory building the request body");
        return;
    }
    char last[sizeof((panic_attempt *)0)->error + 64] = "";
    int k = 0, max = p->o.max_attempts;
    panic_attempt a = { 0 };
    while (k < max) {
        memset(&a, 0, sizeof a);
        a.attempt = ++k;
        attempt(p, body, &a);
        a.delay_ms = a.ok || k == max ? 0 : backoff_delay_ms(&p->o, k);

        pthread_mutex_lock(&p->mu);
        if (a.ok)
            p->stats.attempts_ok++;
        else
            p->stats.attempts_failed++;
        pthread_mutex_unlock(&p->mu);
        if (a.ok)
            log_info("panic", "%s attempt ok scope=%s attempt=%d/%d status=%d", p->attempt_label,
                     j->scope, k, max, a.http_status);
        else
            log_warn(
                "panic",
                "%s attempt failed scope=%s attempt=%d/%d status=%d error=\"%s\" retry_in_ms=%lld",
                p->attempt_label, j->scope, k, max, a.http_status, a.error, a.delay_ms);
        if (j->job.on_attempt) j->job.on_attempt(j->job.ud, &j->job, &a);

        if (a.ok) break;
        snprintf(last, sizeof last, "%s", a.error);
        if (k < max && sleep_ms(p, a.delay_ms) != 0) {
            snprintf(last, sizeof last, "shutting down: %s", a.error);
            break;
        }
    }
    cJSON_free(body);
    if (a.ok)
        finish(p, j, PANIC_STOPPED, k, NULL);
    else
        finish(p, j, PANIC_STOP_FAILED, k, last);
}

static void *worker_main(void *arg) {
    pthread_setname_np(pthread_self(), "nerve-panic"); /* top -H, perf */
    panic *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stopping) pthread_cond_wait(&p->wake, &p->mu);
        if (p->stopping) break;
        pjob *j = p->head;
        p->head = j->next;
        if (!p->head) p->tail = NULL;
        p->queued--;
        p->busy = true;
        pthread_mutex_unlock(&p->mu);

        run_job(p, j);
        job_free(j);

        pthread_mutex_lock(&p->mu);
        p->busy = false;
        if (!p->head) pthread_cond_broadcast(&p->idle);
    }
    /* Stopping: what is still queued never runs; say so, on this thread as
     * the header promises. */
    pjob *rest = p->head;
    p->head = p->tail = NULL;
    p->queued = 0;
    pthread_mutex_unlock(&p->mu);
    while (rest) {
        pjob *next = rest->next;
        finish(p, rest, PANIC_STOP_FAILED, 0, "shutting down");
        job_free(rest);
        rest = next;
    }
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->idle);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- API -------------------------------------------------------------- */

static int check_opts(const panic_opts *o, char *err, size_t errlen) {
    const struct {
        const char *name;
        long long v, min;
    } ints[] = {
        { "timeout_ms", o->timeout_ms, 1 },
        { "max_attempts", o->max_attempts, 1 },
        { "backoff_initial_ms", o->backoff_initial_ms, 0 },
        { "backoff_max_ms", o->backoff_max_ms, 0 },
        { "queue_max", o->queue_max, 1 },
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (ints[i].v < ints[i].min) {
            snprintf(err, errlen, "panic: %s must be >= %lld (got %lld)", ints[i].name, ints[i].min,
                     ints[i].v);
            return -1;
        }
    }
    if (!(o->backoff_multiplier >= 1.0) || !isfinite(o->backoff_multiplier)) {
        snprintf(err, errlen, "panic: backoff_multiplier must be a number >= 1 (got %g)",
                 o->backoff_multiplier);
        return -1;
    }
    char uerr[200];
    if (o->url && *o->url && url_check_http(o->url, uerr, sizeof uerr) != 0) {
        if (strncasecmp(o->url, "http://", 7) != 0 && strncasecmp(o->url, "https://", 8) != 0)
            snprintf(err, errlen, "panic: webhook url must start with http:// or https://");
        else
            snprintf(err, errlen, "panic: webhook url: %s", uerr);
        return -1;
    }
    return 0;
}

panic *panic_new(const panic_opts *o, char *err, size_t errlen) {
    if (!o) {
        snprintf(err, errlen, "panic: no options");
        return NULL;
    }
    if (check_opts(o, err, errlen) != 0) return NULL;
    CURLcode grc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (grc != CURLE_OK) {
        snprintf(err, errlen, "panic: curl_global_init: %s", curl_easy_strerror(grc));
        return NULL;
    }

    panic *p = calloc(1, sizeof *p);
    if (!p) {
        curl_global_cleanup();
        snprintf(err, errlen, "panic: out of memory");
        return NULL;
    }
    int made = 0; /* how far the sync objects got, for err: */
    p->o = *o;
    if (o->url && *o->url && !(p->url = strdup(o->url))) goto oom;
    if (o->token && *o->token && !(p->token = strdup(o->token))) goto oom;
    if (!(p->what = strdup(o->what && *o->what ? o->what : "emergency stop"))) goto oom;
    p->o.url = p->url;
    p->o.token = p->token;
    p->o.what = p->what;
    p->attempt_label = o->what && *o->what ? p->what : "webhook";

    struct curl_slist *h;
    if (!(h = curl_slist_append(NULL, "Content-Type: application/json"))) goto oom;
    p->headers = h;
    if (!(h = curl_slist_append(p->headers, "Expect:"))) goto oom; /* no 100-continue round trip */
    if (p->token) {
        size_t n = strlen(p->token) + sizeof "Authorization: Bearer ";
        char *auth = malloc(n);
        if (!auth) goto oom;
        snprintf(auth, n, "Authorization: Bearer %s", p->token);
        h = curl_slist_append(p->headers, auth);
        explicit_bzero(auth, n);
        free(auth);
        if (!h) goto oom;
    }

    if (!(p->curl = curl_easy_init())) {
        snprintf(err, errlen, "panic: curl_easy_init failed");
        goto err;
    }
    if (p->url) {
        CURL *c = p->curl;
        if (curl_easy_setopt(c, CURLOPT_URL, p->url) != CURLE_OK) goto oom;
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, p->headers);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)o->timeout_ms);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(c, CURLOPT_USERAGENT, "nerve-panic/1");
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
        curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    }

    if (pthread_mutex_init(&p->mu, NULL) != 0) goto sync_err;
    made = 1;
    if (clock_cond_init(&p->wake) != 0) goto sync_err;
    made = 2;
    if (clock_cond_init(&p->idle) != 0) goto sync_err;
    made = 3;

    /* The worker takes no signals: they belong to main's handlers. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int trc = pthread_create(&p->thread, NULL, worker_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (trc != 0) {
        snprintf(err, errlen, "panic: cannot start the worker thread: %s", strerror(trc));
        goto err;
    }
    return p;

sync_err:
    snprintf(err, errlen, "panic: cannot create the worker's mutex/condvar");
    goto err;
oom:
    snprintf(err, errlen, "panic: out of memory");
err:
    if (made >= 3) pthread_cond_destroy(&p->idle);
    if (made >= 2) pthread_cond_destroy(&p->wake);
    if (made >= 1) pthread_mutex_destroy(&p->mu);
    if (p->curl) curl_easy_cleanup(p->curl);
    for (h = p->headers; h; h = h->next) explicit_bzero(h->data, strlen(h->data));
    curl_slist_free_all(p->headers);
    if (p->token) explicit_bzero(p->token, strlen(p->token));
    free(p->token);
    free(p->url);
    free(p->what);
    free(p);
    curl_global_cleanup();
    return NULL;
}

int panic_submit(panic *p, const panic_job *job) {
    if (!p || !job || !job->scope || !*job->scope) {
        log_warn("panic", "job rejected: no scope");
        return -1;
    }
    pjob *j = calloc(1, sizeof *j);
    bool oom = !j;
    if (j) {
        j->scope = copy_bounded(job->scope, &oom);
        j->reason = copy_bounded(job->reason ? job->reason : "", &oom);
        j->rule = copy_bounded(job->rule, &oom);
        j->actor = copy_bounded(job->actor, &oom);
    }
    if (oom) {
        log_warn("panic", "job rejected: out of memory scope=%s", job->scope);
        job_free(j);
        return -1;
    }
    j->job = *job;
    j->job.scope = j->scope;
    j->job.reason = j->reason;
    j->job.rule = j->rule;
    j->job.actor = j->actor;
    if (!(j->job.ts > 0)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        j->job.ts = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    }

    pthread_mutex_lock(&p->mu);
    const char *why = p->stopping                   ? "shutting down"
                      : p->queued >= p->o.queue_max ? "queue full"
                                                    : NULL;
    if (!why) {
        if (p->tail)
            p->tail->next = j;
        else
            p->head = j;
        p->tail = j;
        p->queued++;
        pthread_cond_signal(&p->wake);
    }
    int queued = p->queued;
    pthread_mutex_unlock(&p->mu);
    if (why) {
        log_warn("panic", "job rejected: %s scope=%s queued=%d", why, j->scope, queued);
        job_free(j);
        return -1;
    }
    return 0;
}

void panic_get_stats(panic *p, panic_stats *out) {
    memset(out, 0, sizeof *out);
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    pthread_mutex_unlock(&p->mu);
}

int panic_drain(panic *p, int timeout_ms) {
    if (!p) return 0;
    struct timespec dl = clock_deadline_ms(timeout_ms);
    pthread_mutex_lock(&p->mu);
    while (p->head || p->busy) {
        if (timeout_ms < 0)
            pthread_cond_wait(&p->idle, &p->mu);
        else if (pthread_cond_timedwait(&p->idle, &p->mu, &dl) == ETIMEDOUT)
            break;
    }
    int rc = p->head || p->busy ? -1 : 0;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void panic_free(panic *p) {
    if (!p) return;
    long long t0 = clock_now_ms();
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    log_debug("panic", "stopped in %lld ms", clock_now_ms() - t0);

    curl_easy_cleanup(p->curl);
    for (struct curl_slist *h = p->headers; h; h = h->next)
        explicit_bzero(h->data, strlen(h->data));
    curl_slist_free_all(p->headers);
    if (p->token) explicit_bzero(p->token, strlen(p->token));
    free(p->token);
    free(p->url);
    free(p->what);
    pthread_cond_destroy(&p->idle);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    free(p);
    curl_global_cleanup();
}
