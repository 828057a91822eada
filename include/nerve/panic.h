/* panic.h -- the emergency stop: POST to the external "pause campaigns" API
 * with exponential backoff and full jitter, off the evaluation path.
 *
 * panic_submit() queues a job and returns at once; a worker thread owned by
 * the panic module runs the attempts (libcurl, per-attempt timeout), so rule
 * evaluation never waits for a slow or failing webhook. Each job POSTs
 * {"scope","reason","rule","ts"} as JSON to the webhook URL, with
 * "Authorization: Bearer <token>" when a token is set. A 2xx answer is a
 * success; a connect error, a timeout or any other status is a failure, after
 * which the worker sleeps a full-jitter delay — uniform in
 * [0, min(backoff_max, backoff_initial * multiplier^(attempt-1))] (without
 * jitter: exactly that bound) — and tries again, up to max_attempts in all.
 * The job's callbacks report every attempt and the final outcome.
 *
 * The same machinery makes the resume call after a kill switch reset
 * (panic.resume_url): a second panic module with that URL and WHAT set to
 * "resume call", whose jobs carry an actor, so that both calls share one
 * retry loop, one backoff and one dry-run rule.
 *
 * One attempt is one fresh connection and one request (no connection reuse,
 * no redirects, http/https only); the answer's body is read and discarded
 * (at most 64 KiB of it). The token is never logged.
 *
 * Threading: panic_submit, panic_get_stats and panic_drain are thread-safe.
 * Callbacks run on the panic worker thread; they must not call panic_free.
 * panic_new calls curl_global_init() and panic_free curl_global_cleanup(),
 * neither of which is thread-safe: create and free the panic module before
 * and after any other thread uses libcurl (in main, at start and exit).
 * Ownership: panic_new copies the options (strings included); jobs copy their
 * strings; the callback user data is borrowed until on_done has run.
 */
#ifndef NERVE_PANIC_H
#define NERVE_PANIC_H

#include <stdbool.h>
#include <stddef.h>

typedef struct panic_opts {
    const char *url;   /* webhook; "" or NULL = every job fails at once (no webhook configured) */
    const char *token; /* bearer token; NULL or "" = no Authorization header */
    int timeout_ms;    /* per attempt */
    int max_attempts;
    int backoff_initial_ms;
    int backoff_max_ms;
    double backoff_multiplier;
    bool jitter;      /* full jitter (default); false = exact exponential delays */
    bool dry_run;     /* never call the webhook: the job succeeds at once with outcome "dry_run" */
    int queue_max;    /* jobs waiting at most; further submits fail (-1) */
    const char *what; /* names the call in log lines; NULL = "emergency stop" (copied) */
} panic_opts;

typedef enum { PANIC_STOPPED = 0, PANIC_STOP_FAILED, PANIC_DRY_RUN } panic_outcome;

typedef struct panic_attempt {
    int attempt;     /* 1-based */
    int http_status; /* 0 when no HTTP answer (connect error, timeout) */
    bool ok;
    char error[256];    /* curl's or "HTTP 500" when !ok */
    long long delay_ms; /* sleep planned before the next attempt (0 if none) */
} panic_attempt;

typedef struct panic_job {
    /* Copied by panic_submit (each truncated to 4 KiB at a UTF-8 boundary).
     * scope is required; reason NULL is sent as ""; rule NULL (a manual
     * engagement) is sent as JSON null and stays NULL in the callbacks. */
    const char *scope, *reason, *rule;
    /* Who asked (a resume call after a reset): when not NULL the body is
     * {"scope","reason","actor","ts"} instead of {"scope","reason","rule","ts"}.
     * Copied like the others. */
    const char *actor;
    double ts; /* epoch seconds of the engagement; <= 0 = now */
    /* Called after each attempt (may be NULL). */
    void (*on_attempt)(void *ud, const struct panic_job *job, const panic_attempt *a);
    /* Called once at the end with the outcome and the attempts made;
     * last_error is NULL unless the outcome is PANIC_STOP_FAILED. */
    void (*on_done)(void *ud, const struct panic_job *job, panic_outcome outcome, int attempts,
                    const char *last_error);
    void *ud;
} panic_job;

typedef struct panic panic;

/* Validate the options and start the worker thread. NULL on failure with a
 * message in ERR (e.g. "panic: max_attempts must be >= 1 (got 0)").
 * Ranges: timeout_ms, max_attempts, queue_max >= 1; backoff_initial_ms,
 * backoff_max_ms >= 0; backoff_multiplier >= 1; url empty or http(s)://. */
panic *panic_new(const panic_opts *o, char *err, size_t errlen);

/* Queue a job (copied) and return at once. 0, or -1 (logged) when the queue
 * is full, the module is stopping, or the job has no scope. */
int panic_submit(panic *p, const panic_job *job);

/* Counters since start. */
typedef struct panic_stats {
    unsigned long long attempts_ok, attempts_failed, jobs_stopped, jobs_failed, jobs_dry_run;
} panic_stats;
void panic_get_stats(panic *p, panic_stats *out);

/* Block until every queued job has finished (its on_done has returned) or
 * TIMEOUT_MS passed (< 0: no limit); 0 when idle, -1 on timeout. */
int panic_drain(panic *p, int timeout_ms);

/* Stop the worker (a job in progress ends after its current attempt -- a
 * backoff sleep is cut short at once -- and reports STOP_FAILED with
 * "shutting down: ..." unless that attempt succeeded; queued jobs are
 * reported through on_done as STOP_FAILED with "shutting down") and free.
 * Returns after every on_done has run. NULL is fine. */
void panic_free(panic *p);

#endif
