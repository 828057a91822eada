/* test_panic.c -- the emergency stop worker against a local mock webhook.
 *
 * Every test drives a real panic module (worker thread, libcurl) against the
 * in-process mock HTTP server of tests/lib/mock_webhook.c on 127.0.0.1, so
 * there is no network beyond loopback. Waiting is always a condition with a
 * deadline (the job callbacks signal a condvar, the mock one of its own);
 * timing assertions use small millisecond values with a tolerance (TOL_MS)
 * for slow and sanitized builds.
 *
 * The Makefile links unit tests with libnerve.a only, so the mock is built as
 * part of this translation unit.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "../lib/mock_webhook.c"

#include "nerve/log.h"
#include "nerve/panic.h"

#include <cjson/cJSON.h>
#include <math.h>

/* Scheduling slack on top of a planned delay: thread wake-ups, a fresh TCP
 * connection per attempt, and on a loaded 2-CPU CI box with sanitizers some
 * tens of ms more. Lower bounds need none (see check_gap). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TOL_MS 250
#else
#define TOL_MS 120
#endif
#define WAIT_MS 10000           /* deadline for things that should take ms */
#define MAX_REC 16

static log_level quiet_level = LOG_LVL_ERROR;   /* what main chose */

/* ---- what the callbacks saw ------------------------------------------- */

typedef struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nattempts;
    panic_attempt attempts[MAX_REC];
    int ndone;
    struct {
        char scope[64];
        panic_outcome outcome;
        int attempts;
        bool has_error;
        char error[512];
        long long t_ns;
    } done[MAX_REC];
} rec;

static void rec_init(rec *r) {
    memset(r, 0, sizeof *r);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
}

static void rec_destroy(rec *r) {
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
}

static void on_attempt_cb(void *ud, const panic_job *job, const panic_attempt *a) {
    (void)job;
    rec *r = ud;
    pthread_mutex_lock(&r->mu);
    if (r->nattempts < MAX_REC) r->attempts[r->nattempts] = *a;
    r->nattempts++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void on_done_cb(void *ud, const panic_job *job, panic_outcome outcome, int attempts,
                       const char *last_error) {
    rec *r = ud;
    pthread_mutex_lock(&r->mu);
    if (r->ndone < MAX_REC) {
        snprintf(r->done[r->ndone].scope, sizeof r->done[0].scope, "%s", job->scope);
        r->done[r->ndone].outcome = outcome;
        r->done[r->ndone].attempts = attempts;
        r->done[r->ndone].has_error = last_error != NULL;
        snprintf(r->done[r->ndone].error, sizeof r->done[0].error, "%s", last_error ? last_error : "");
        r->done[r->ndone].t_ns = mock_now_ns();
    }
    r->ndone++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Wait until *FIELD (a counter of R) reaches N: 0, or -1 at the deadline. */
static int rec_wait(rec *r, const int *field, int n, int timeout_ms) {
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    while (*field < n) {
        if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT) break;
    }
    int rc = *field >= n ? 0 : -1;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* ---- fixtures --------------------------------------------------------- */

static panic_opts base_opts(const char *url) {
    panic_opts o = {
        .url = url,
        .token = NULL,
        .timeout_ms = 2000,
        .max_attempts = 5,
        .backoff_initial_ms = 20,
        .backoff_max_ms = 200,
        .backoff_multiplier = 2.0,
        .jitter = true,
        .dry_run = false,
        .queue_max = 8,
    };
    return o;
}

static panic_job job_for(rec *r, const char *scope) {
    panic_job j = {
        .scope = scope,
        .reason = "stock at or under critical threshold",
        .rule = "inventory_threshold",
        .ts = 1764349521.25,
        .on_attempt = on_attempt_cb,
        .on_done = on_done_cb,
        .ud = r,
    };
    return j;
}

static panic *new_panic(const panic_opts *o) {
    char err[256] = "";
    panic *p = panic_new(o, err, sizeof err);
    if (!p) fail_msg("panic_new: %s", err);
    return p;
}

static mock_server *new_mock(char *url, size_t len) {
    int port = 0;
    mock_server *m = mock_start(&port);
    assert_non_null(m);
    assert_true(port > 0);
    assert_int_equal(mock_url(m, "/pause", url, len), 0);
    return m;
}

static long long ms_between(long long a_ns, long long b_ns) { return (b_ns - a_ns) / 1000000; }

/* The gap between the arrivals of requests K and K+1 lies in [LO, HI] ms.
 * LO needs no slack: the mock stamps request K before it answers, and the
 * worker starts its sleep only after reading that answer. */
static long long check_gap(mock_server *m, size_t k, long long lo, long long hi) {
    const mock_req *a = mock_request(m, k), *b = mock_request(m, k + 1);
    assert_non_null(a);
    assert_non_null(b);
    long long gap = ms_between(a->t_ns, b->t_ns);
    if (gap < lo || gap > hi)
        fail_msg("gap between requests %zu and %zu: %lld ms, want [%lld, %lld]", k, k + 1, gap, lo, hi);
    return gap;
}

/* A URL to a loopback port where nothing listens. */
static void closed_port_url(char *url, size_t len) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);      /* bound but never listened: connecting is refused */
    snprintf(url, len, "http://127.0.0.1:%d/pause", ntohs(sa.sin_port));
}

/* ---- tests ------------------------------------------------------------ */

/* 500, 500, then 200: three attempts, STOPPED, and the request gaps honour
 * the full-jitter bounds [delay planned, cap_k + TOL]. Repeated runs draw
 * different delays. */
static void test_retry_then_success_jitter(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    panic_opts o = base_opts(url);
    panic *p = new_panic(&o);
    const long long cap[] = { 20, 40 };     /* min(200, 20 * 2^(k-1)) */
    long long seen[5][2];

    for (int run = 0; run < 5; run++) {
        mock_reset(m);
        mock_set_script(m, (const int[]){ 500, 500 }, 2, 200);
        rec r;
        rec_init(&r);
        panic_job j = job_for(&r, "sku:A1");
        assert_int_equal(panic_submit(p, &j), 0);
        assert_int_equal(rec_wait(&r, &r.ndone, 1, WAIT_MS), 0);

        assert_int_equal(r.done[0].outcome, PANIC_STOPPED);
        assert_int_equal(r.done[0].attempts, 3);
        assert_false(r.done[0].has_error);
        assert_int_equal(r.nattempts, 3);
        assert_int_equal(mock_requests(m), 3);
        const int want_status[] = { 500, 500, 200 };
        for (int k = 0; k < 3; k++) {
            const panic_attempt *a = &r.attempts[k];
            assert_int_equal(a->attempt, k + 1);
            assert_int_equal(a->http_status, want_status[k]);
            assert_int_equal(a->ok, k == 2);
            if (k < 2) {
                assert_string_equal(a->error, "HTTP 500");
                assert_in_range(a->delay_ms, 0, cap[k]);
                seen[run][k] = a->delay_ms;
                check_gap(m, (size_t)k, a->delay_ms, cap[k] + TOL_MS);
            } else {
                assert_int_equal(a->delay_ms, 0);
            }
        }
        rec_destroy(&r);
    }
    int differ = 0;
    for (int run = 1; run < 5; run++)
        differ += seen[run][0] != seen[0][0] || seen[run][1] != seen[0][1];
    assert_true(differ > 0);

    panic_stats st;
    panic_get_stats(p, &st);
    assert_int_equal(st.attempts_failed, 10);
    assert_int_equal(st.attempts_ok, 5);
    assert_int_equal(st.jobs_stopped, 5);
    assert_int_equal(st.jobs_failed, 0);
    panic_free(p);
    mock_stop(m);
}

/* Without jitter the delays are exactly the caps, and the gaps grow. */
static void test_backoff_exact_without_jitter(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    mock_set_script(m, (const int[]){ 503, 503, 503 }, 3, 200);
    panic_opts o = base_opts(url);
    o.jitter = false;
    o.backoff_initial_ms = 40;
    o.backoff_multiplier = 8;
    o.backoff_max_ms = 400;
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "global");
    assert_int_equal(panic_submit(p, &j), 0);
    assert_int_equal(rec_wait(&r, &r.ndone, 1, WAIT_MS), 0);

    assert_int_equal(r.done[0].outcome, PANIC_STOPPED);
    assert_int_equal(r.done[0].attempts, 4);
    const long long want[] = { 40, 320, 400, 0 };   /* 40*8 = 320, 320*8 capped at 400 */
    long long prev_gap = -1;
    for (int k = 0; k < 4; k++) {
        assert_int_equal(r.attempts[k].delay_ms, want[k]);
        if (k == 3) break;
        long long gap = check_gap(m, (size_t)k, want[k], want[k] + TOL_MS);
        if (k <= 1) assert_true(gap > prev_gap);   /* 40 + TOL < 320: the gaps grow */
        prev_gap = gap;
    }
    rec_destroy(&r);
    panic_free(p);
    mock_stop(m);
}

/* A webhook that always fails: max_attempts attempts, STOP_FAILED naming the status. */
static void test_always_failing(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    mock_set_script(m, NULL, 0, 502);
    panic_opts o = base_opts(url);
    o.max_attempts = 4;
    o.backoff_initial_ms = 1;
    o.backoff_max_ms = 5;
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:B2");
    assert_int_equal(panic_submit(p, &j), 0);
    assert_int_equal(rec_wait(&r, &r.ndone, 1, WAIT_MS), 0);

    assert_int_equal(r.done[0].outcome, PANIC_STOP_FAILED);
    assert_int_equal(r.done[0].attempts, 4);
    assert_string_equal(r.done[0].error, "HTTP 502");
    assert_int_equal(r.nattempts, 4);
    assert_int_equal(mock_requests(m), 4);
    assert_int_equal(r.attempts[3].delay_ms, 0);   /* no sleep after the last */
    panic_stats st;
    panic_get_stats(p, &st);
    assert_int_equal(st.attempts_failed, 4);
    assert_int_equal(st.attempts_ok, 0);
    assert_int_equal(st.jobs_failed, 1);
    rec_destroy(&r);
    panic_free(p);
    mock_stop(m);
}

/* Nothing listens: every attempt is a connect error without HTTP status. */
static void test_connect_refused(void **state) {
    (void)state;
    char url[128];
    closed_port_url(url, sizeof url);
    panic_opts o = base_opts(url);
    o.max_attempts = 3;
    o.backoff_initial_ms = 1;
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:C3");
    assert_int_equal(panic_submit(p, &j), 0);
    assert_int_equal(rec_wait(&r, &r.ndone, 1, WAIT_MS), 0);

    assert_int_equal(r.done[0].outcome, PANIC_STOP_FAILED);
    assert_int_equal(r.done[0].attempts, 3);
    assert_int_equal(r.nattempts, 3);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(r.attempts[k].http_status, 0);
        assert_false(r.attempts[k].ok);
        assert_non_null(strcasestr(r.attempts[k].error, "connect"));
    }
    assert_non_null(strcasestr(r.done[0].error, "connect"));
    rec_destroy(&r);
    panic_free(p);
}

/* A webhook slower than timeout_ms: the attempt fails with a timeout, in time. */
static void test_timeout(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    mock_set_delay_ms(m, 3000);
    panic_opts o = base_opts(url);
    o.timeout_ms = 150;
    o.max_attempts = 1;
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:D4");
    long long t0 = mock_now_ns();
    assert_int_equal(panic_submit(p, &j), 0);
    assert_int_equal(rec_wait(&r, &r.ndone, 1, WAIT_MS), 0);
    long long took = ms_between(t0, r.done[0].t_ns);

    assert_in_range(took, o.timeout_ms, o.timeout_ms + 2 * TOL_MS);
    assert_int_equal(r.done[0].outcome, PANIC_STOP_FAILED);
    assert_int_equal(r.done[0].attempts, 1);
    assert_int_equal(r.attempts[0].http_status, 0);
    assert_non_null(strcasestr(r.attempts[0].error, "timed out"));
    assert_int_equal(mock_requests(m), 1);
    rec_destroy(&r);
    panic_free(p);
    mock_stop(m);   /* abandons the delayed answer at once */
}

/* Authorization exactly when a token is set; the body is the documented JSON. */
static void test_request_shape(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    for (int with_token = 1; with_token >= 0; with_token--) {
        mock_reset(m);
        panic_opts o = base_opts(url);
        o.token = with_token ? "s3cret-Token" : "";
        panic *p = new_panic(&o);
        rec r;
        rec_init(&r);
        panic_job j = job_for(&r, "sku:E5");
        if (!with_token) j.rule = NULL;     /* a manual engagement */
        assert_int_equal(panic_submit(p, &j), 0);
        assert_int_equal(panic_drain(p, WAIT_MS), 0);
        assert_int_equal(r.ndone, 1);
        assert_int_equal(r.done[0].outcome, PANIC_STOPPED);

        assert_int_equal(mock_requests(m), 1);
        const mock_req *q = mock_request(m, 0);
        assert_string_equal(q->method, "POST");
        assert_string_equal(q->path, "/pause");
        assert_non_null(q->content_type);
        assert_string_equal(q->content_type, "application/json");
        if (with_token) {
            assert_non_null(q->authorization);
            assert_string_equal(q->authorization, "Bearer s3cret-Token");
        } else {
            assert_null(q->authorization);
        }
        cJSON *b = cJSON_ParseWithLength(q->body, q->body_len);
        assert_non_null(b);
        assert_int_equal(cJSON_GetArraySize(b), 4);
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "scope")), "sku:E5");
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "reason")),
                            "stock at or under critical threshold");
        cJSON *rule = cJSON_GetObjectItemCaseSensitive(b, "rule");
        if (with_token) assert_string_equal(cJSON_GetStringValue(rule), "inventory_threshold");
        else assert_true(cJSON_IsNull(rule));
        cJSON *ts = cJSON_GetObjectItemCaseSensitive(b, "ts");
        assert_true(cJSON_IsNumber(ts));
        assert_true(fabs(cJSON_GetNumberValue(ts) - 1764349521.25) < 1e-6);
        cJSON_Delete(b);
        rec_destroy(&r);
        panic_free(p);
    }
    mock_stop(m);
}

/* A resume call (panic.resume_url): a job with an actor sends
 * {"scope","reason","actor","ts"} (no rule), and the log names the call. */
static void test_resume_shape(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    mock_set_script(m, (int[]){ 500 }, 1, 200);
    panic_opts o = base_opts(url);
    o.what = "resume call";
    FILE *cap = tmpfile();
    assert_non_null(cap);
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    dup2(fileno(cap), 2);
    log_set_level(LOG_LVL_DEBUG);
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:R1");
    j.actor = "cli:alice";
    int sub = panic_submit(p, &j);
    int drained = panic_drain(p, WAIT_MS);
    panic_free(p);
    log_set_level(quiet_level);
    dup2(saved, 2);
    close(saved);
    assert_int_equal(sub, 0);
    assert_int_equal(drained, 0);
    assert_int_equal(r.ndone, 1);
    assert_int_equal(r.done[0].outcome, PANIC_STOPPED);
    assert_int_equal(mock_requests(m), 2);
    const mock_req *q = mock_request(m, 1);
    cJSON *b = cJSON_ParseWithLength(q->body, q->body_len);
    assert_non_null(b);
    assert_int_equal(cJSON_GetArraySize(b), 4);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "scope")), "sku:R1");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "actor")),
                        "cli:alice");
    assert_null(cJSON_GetObjectItemCaseSensitive(b, "rule"));
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(b, "ts")));
    cJSON_Delete(b);
    char text[16384];
    rewind(cap);
    size_t n = fread(text, 1, sizeof text - 1, cap);
    text[n] = 0;
    fclose(cap);
    assert_non_null(strstr(text, "warn panic resume call attempt failed scope=sku:R1 attempt=1/5 status=500"));
    assert_non_null(strstr(text, "info panic resume call done scope=sku:R1 attempts=2"));
    rec_destroy(&r);
    mock_stop(m);
}

/* The token never reaches the log, failures and success are logged per attempt. */
static void test_token_never_logged(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    mock_set_script(m, (const int[]){ 500 }, 1, 200);
    panic_opts o = base_opts(url);
    o.token = "tok-XYZZY-42";
    o.backoff_initial_ms = 1;

    FILE *cap = tmpfile();
    assert_non_null(cap);
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    dup2(fileno(cap), 2);
    log_set_level(LOG_LVL_DEBUG);

    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:F6");
    int sub = panic_submit(p, &j);
    int drained = panic_drain(p, WAIT_MS);
    panic_free(p);

    log_set_level(quiet_level);
    dup2(saved, 2);
    close(saved);
    assert_int_equal(sub, 0);
    assert_int_equal(drained, 0);

    char text[16384];
    rewind(cap);
    size_t n = fread(text, 1, sizeof text - 1, cap);
    text[n] = 0;
    fclose(cap);
    assert_null(strstr(text, "XYZZY"));
    assert_non_null(strstr(text, "warn panic webhook attempt failed scope=sku:F6 attempt=1/5 status=500 error=\"HTTP 500\""));
    assert_non_null(strstr(text, "info panic webhook attempt ok scope=sku:F6 attempt=2/5 status=200"));
    assert_non_null(strstr(text, "info panic emergency stop done scope=sku:F6 attempts=2"));
    rec_destroy(&r);
    mock_stop(m);
}

/* dry_run: no request at all, outcome DRY_RUN. */
static void test_dry_run(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    panic_opts o = base_opts(url);
    o.dry_run = true;
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:G7");
    assert_int_equal(panic_submit(p, &j), 0);
    assert_int_equal(panic_drain(p, WAIT_MS), 0);
    assert_int_equal(r.ndone, 1);
    assert_int_equal(r.done[0].outcome, PANIC_DRY_RUN);
    assert_int_equal(r.done[0].attempts, 0);
    assert_false(r.done[0].has_error);
    assert_int_equal(r.nattempts, 0);
    assert_int_equal(mock_requests(m), 0);
    panic_stats st;
    panic_get_stats(p, &st);
    assert_int_equal(st.jobs_dry_run, 1);
    assert_int_equal(st.attempts_ok + st.attempts_failed, 0);
    rec_destroy(&r);
    panic_free(p);
    mock_stop(m);
}

/* No webhook configured: STOP_FAILED at once, zero attempts. */
static void test_no_url(void **state) {
    (void)state;
    for (int i = 0; i < 2; i++) {
        panic_opts o = base_opts(i ? NULL : "");
        panic *p = new_panic(&o);
        rec r;
        rec_init(&r);
        panic_job j = job_for(&r, "global");
        assert_int_equal(panic_submit(p, &j), 0);
        assert_int_equal(panic_drain(p, WAIT_MS), 0);
        assert_int_equal(r.ndone, 1);
        assert_int_equal(r.done[0].outcome, PANIC_STOP_FAILED);
        assert_int_equal(r.done[0].attempts, 0);
        assert_string_equal(r.done[0].error, "no panic.webhook_url configured");
        assert_int_equal(r.nattempts, 0);
        rec_destroy(&r);
        panic_free(p);
    }
}

/* panic_submit never waits for the webhook; panic_drain honours its timeout. */
static void test_submit_does_not_block(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    mock_set_delay_ms(m, 1000);
    panic_opts o = base_opts(url);
    o.timeout_ms = 5000;
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:H8");

    long long t0 = mock_now_ns();
    assert_int_equal(panic_submit(p, &j), 0);
    assert_true(ms_between(t0, mock_now_ns()) < 50);
    assert_int_equal(mock_wait_requests(m, 1, WAIT_MS), 0);    /* worker is in the slow POST */
    t0 = mock_now_ns();
    j.scope = "sku:H9";
    assert_int_equal(panic_submit(p, &j), 0);
    assert_true(ms_between(t0, mock_now_ns()) < 50);

    t0 = mock_now_ns();
    assert_int_equal(panic_drain(p, 50), -1);
    assert_in_range(ms_between(t0, mock_now_ns()), 50, 50 + TOL_MS);

    assert_int_equal(panic_drain(p, WAIT_MS), 0);  /* both answered after ~1 s each */
    assert_int_equal(r.ndone, 2);
    assert_int_equal(r.done[0].outcome, PANIC_STOPPED);
    assert_string_equal(r.done[0].scope, "sku:H8");
    assert_int_equal(r.done[1].outcome, PANIC_STOPPED);
    assert_string_equal(r.done[1].scope, "sku:H9");
    rec_destroy(&r);
    panic_free(p);
    mock_stop(m);
}

/* panic_free cuts a backoff sleep short and fails what is still queued. */
static void test_free_during_backoff(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    mock_set_script(m, NULL, 0, 500);
    panic_opts o = base_opts(url);
    o.jitter = false;
    o.backoff_initial_ms = 10000;
    o.backoff_max_ms = 10000;
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:I1");
    assert_int_equal(panic_submit(p, &j), 0);
    j.scope = "sku:I2";
    assert_int_equal(panic_submit(p, &j), 0);
    assert_int_equal(rec_wait(&r, &r.nattempts, 1, WAIT_MS), 0);   /* now sleeping 10 s */
    assert_int_equal(r.attempts[0].delay_ms, 10000);

    long long t0 = mock_now_ns();
    panic_free(p);
    assert_in_range(ms_between(t0, mock_now_ns()), 0, TOL_MS);

    assert_int_equal(r.nattempts, 1);
    assert_int_equal(r.ndone, 2);
    assert_string_equal(r.done[0].scope, "sku:I1");
    assert_int_equal(r.done[0].outcome, PANIC_STOP_FAILED);
    assert_int_equal(r.done[0].attempts, 1);
    assert_string_equal(r.done[0].error, "shutting down: HTTP 500");
    assert_string_equal(r.done[1].scope, "sku:I2");
    assert_int_equal(r.done[1].outcome, PANIC_STOP_FAILED);
    assert_int_equal(r.done[1].attempts, 0);
    assert_string_equal(r.done[1].error, "shutting down");
    assert_int_equal(mock_requests(m), 1);
    rec_destroy(&r);
    mock_stop(m);
}

/* queue_max bounds the jobs waiting behind the one in progress. */
static void test_queue_full(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    mock_set_delay_ms(m, 5000);
    panic_opts o = base_opts(url);
    o.timeout_ms = 10000;
    o.queue_max = 1;
    o.max_attempts = 1;
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:J1");
    assert_int_equal(panic_submit(p, &j), 0);
    assert_int_equal(mock_wait_requests(m, 1, WAIT_MS), 0);    /* J1 runs, queue empty */
    j.scope = "sku:J2";
    assert_int_equal(panic_submit(p, &j), 0);
    j.scope = "sku:J3";
    assert_int_equal(panic_submit(p, &j), -1);
    j.scope = "";
    assert_int_equal(panic_submit(p, &j), -1);                  /* no scope */

    mock_stop(m);           /* J1's connection closes: its attempt fails now */
    panic_free(p);
    assert_int_equal(r.ndone, 2);
    assert_string_equal(r.done[0].scope, "sku:J1");
    assert_int_equal(r.done[0].outcome, PANIC_STOP_FAILED);
    /* J2 either met the stop in the queue ("shutting down") or ran first
     * against the stopped mock (connect refused): failed either way. */
    assert_string_equal(r.done[1].scope, "sku:J2");
    assert_int_equal(r.done[1].outcome, PANIC_STOP_FAILED);
    rec_destroy(&r);
}

/* Closed without an answer, then 200; a huge 2xx answer still counts. */
static void test_close_and_big_answer(void **state) {
    (void)state;
    char url[128];
    mock_server *m = new_mock(url, sizeof url);
    mock_set_script(m, (const int[]){ MOCK_CLOSE, MOCK_CLOSE }, 2, 200);
    mock_set_body_bytes(m, 4 * 1024 * 1024);
    panic_opts o = base_opts(url);
    o.backoff_initial_ms = 1;
    panic *p = new_panic(&o);
    rec r;
    rec_init(&r);
    panic_job j = job_for(&r, "sku:K1");
    assert_int_equal(panic_submit(p, &j), 0);
    assert_int_equal(panic_drain(p, WAIT_MS), 0);
    assert_int_equal(r.done[0].outcome, PANIC_STOPPED);
    assert_int_equal(r.done[0].attempts, 3);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(r.attempts[k].http_status, 0);
        assert_true(r.attempts[k].error[0] != 0);
    }
    assert_int_equal(r.attempts[2].http_status, 200);
    assert_true(r.attempts[2].ok);
    assert_int_equal(mock_requests(m), 3);
    rec_destroy(&r);
    panic_free(p);
    mock_stop(m);
}

static void test_bad_options(void **state) {
    (void)state;
    static const struct {
        const char *field;
        const char *err;
    } cases[] = {
        { "timeout_ms", "panic: timeout_ms must be >= 1 (got 0)" },
        { "max_attempts", "panic: max_attempts must be >= 1 (got 0)" },
        { "backoff_initial_ms", "panic: backoff_initial_ms must be >= 0 (got -1)" },
        { "queue_max", "panic: queue_max must be >= 1 (got 0)" },
        { "backoff_multiplier", "panic: backoff_multiplier must be a number >= 1 (got 0.5)" },
        { "url", "panic: webhook url must start with http:// or https://" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        panic_opts o = base_opts("http://127.0.0.1:9/x");
        const char *f = cases[i].field;
        if (!strcmp(f, "timeout_ms")) o.timeout_ms = 0;
        else if (!strcmp(f, "max_attempts")) o.max_attempts = 0;
        else if (!strcmp(f, "backoff_initial_ms")) o.backoff_initial_ms = -1;
        else if (!strcmp(f, "queue_max")) o.queue_max = 0;
        else if (!strcmp(f, "backoff_multiplier")) o.backoff_multiplier = 0.5;
        else o.url = "file:///etc/passwd";
        char err[256] = "";
        assert_null(panic_new(&o, err, sizeof err));
        assert_string_equal(err, cases[i].err);
    }
    panic_free(NULL);
    assert_int_equal(panic_submit(NULL, NULL), -1);
}

int main(void) {
    /* Quiet by default; TEST_LOG=debug|info|warn shows the module's log. */
    const char *lvl = getenv("TEST_LOG");
    for (int i = LOG_LVL_DEBUG; lvl && i <= LOG_LVL_ERROR; i++)
        if (log_set_level_name(lvl) == 0 && log_enabled((log_level)i)) {
            quiet_level = (log_level)i;
            break;
        }
    log_set_level(quiet_level);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_then_success_jitter),
        cmocka_unit_test(test_backoff_exact_without_jitter),
        cmocka_unit_test(test_always_failing),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_request_shape),
        cmocka_unit_test(test_resume_shape),
        cmocka_unit_test(test_token_never_logged),
        cmocka_unit_test(test_dry_run),
        cmocka_unit_test(test_no_url),
        cmocka_unit_test(test_submit_does_not_block),
        cmocka_unit_test(test_free_during_backoff),
        cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_close_and_big_answer),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests_name("panic", tests, NULL, NULL);
}
