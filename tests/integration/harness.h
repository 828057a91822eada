/* harness.h -- throwaway redis-server and nerve daemons for integration tests.
 *
 * Everything an integration test needs to drive the real daemon over real
 * HTTP against a real Redis, in the spirit of hiredis' test.sh:
 *
 *   - a temp dir (mkdtemp under /tmp) removed at exit (kept when the
 *     environment has NERVE_TEST_KEEP=1);
 *   - redis-server on a free port, in its own directory under the temp dir;
 *     stop, pause (SIGSTOP), resume, restart on the same port;
 *   - the daemon ($NERVE_BIN, default ./nerve) started from the repo root
 *     (NERVE_ROOT, default the current directory) with
 *     `serve -c config/nerve.yaml --set server.listen=... --set redis.url=...
 *     --set server.pidfile=` plus the test's own --set values, with
 *     NERVE_ADMIN_TOKEN=test-token and its stderr in a log file;
 *   - one-shot `nerve ...` commands (check, reload, stress...) with their
 *     exit status, stdout and stderr;
 *   - HTTP helpers over libcurl and a concurrent keep-alive load generator;
 *   - (harness_fixtures.c) files and rule directories in the temp dir, a
 *     mock emergency-stop webhook (tests/lib/mock_webhook.h, compiled in
 *     there), and the redis-server (daemon, webhook) a group of tests
 *     shares;
 *   - (harness_observe.c) the bus (subscribers, PUBLISH, a subscriber of
 *     the test's own), kill records, and the daemon's counters (GET /rules,
 *     GET /metrics).
 *
 * Children run in their own process groups with PR_SET_PDEATHSIG and are
 * killed at exit and on fatal signals, so a failed or aborted test leaves
 * nothing behind. Waiting is always a poll of a condition with a deadline.
 *
 * Threads: only h_load_start()/h_load_run() start threads, which touch
 * nothing but their own state; everything else is meant for the test's main
 * thread (cmocka's asserts are not thread-safe either).
 * Ownership: h_*_start() return objects freed by the matching stop; h_resp,
 * h_load and h_run results are freed with h_resp_free(), h_load_free() and
 * h_run_free(); a subscriber with h_sub_close(); strings returned as
 * `char *` are the caller's to free().
 * Failing: the H_UPPER_CASE helper macros (and the *_at functions behind
 * them) fail the running test at the caller's FILE:LINE, saying what they
 * saw, instead of returning an error.
 */
#ifndef NERVE_TEST_HARNESS_H
#define NERVE_TEST_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <hiredis/hiredis.h>

#include "../lib/mock_webhook.h"
#include "nerve/keys.h"

#define H_ADMIN_TOKEN "test-token"
#define H_STR_(x) #x
#define H_STR(x) H_STR_(x)
#define H_PREFIX "nerve:"
/* bus.partitions of the daemons the harness starts (the default). */
#define H_PARTITIONS 16

/* --- process ----------------------------------------------------------- */

/* Create the temp dir, install the exit and signal cleanup, init libcurl.
 * Idempotent; every h_*_start calls it. Aborts the process on failure. */
void h_init(void);
const char *h_tmpdir(void);

/* Monotonic seconds, a deadline MS from now, and whether it is still ahead. */
double h_now(void);
double h_deadline(int ms);
bool h_before(double deadline);
/* A short pause between two polls of a condition (not synchronisation). */
void h_nap(void);

/* A TCP port on 127.0.0.1 that nothing listens on just now (the kernel's
 * pick for port 0, released again), -1 on error. Someone may take it before
 * the caller binds it: starts that bind it retry. */
int h_free_port(void);
/* $NERVE_BIN (default ./nerve) made absolute (as given when that fails):
 * children run in the repo root, not in the test's directory. */
const char *h_nerve_bin(void);

/* Print a cmocka error at FILE:LINE and fail the running test. */
void h_fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Per-test bookkeeping, to pass as cmocka setup/teardown: on failure the
 * teardown prints the tail of every daemon log written during the test; it
 * always resumes a paused redis, stops the daemons the test started and left
 * running, joins a load the test left running, closes the subscribers left
 * open (h_sub_close_all), and stops the redis servers the test started. A
 * test calls h_pass() as its last statement (reached only when no assertion
 * failed). */
int h_test_setup(void **state);
int h_test_teardown(void **state);
void h_pass(void);

/* --- redis-server ------------------------------------------------------ */

typedef struct h_redis {
    pid_t pid;                  /* 0 while stopped */
    int port;
    bool aof;                   /* appendonly yes, appendfsync always */
    bool paused;
    bool owned;                 /* started inside a test: stopped by teardown */
    bool cluster;               /* --cluster-enabled yes (harness_cluster.c) */
    bool sentinel;              /* a redis-sentinel (harness_sentinel.c) */
    char dir[128];
    char log[160];
    redisContext *ctx;          /* h_redis_cmd's connection */
} h_redis;

/* Start redis-server on a free port (retrying on a port race) and wait until
 * it answers PING. AOF keeps data across h_redis_stop/h_redis_restart.
 * NULL on failure (the reason is printed). */
h_redis *h_redis_start(bool aof);
/* SIGTERM and wait. 0, or -1 when it had to be killed. */
int h_redis_stop(h_redis *r);
int h_redis_pause(h_redis *r);
int h_redis_resume(h_redis *r);
/* Start again on the same port and directory; 0 once it answers PING. */
int h_redis_restart(h_redis *r);
/* Stop if running and free. NULL is fine. */
void h_redis_free(h_redis *r);

/* "redis://127.0.0.1:PORT/0" into BUF. */
const char *h_redis_url(const h_redis *r, char *buf, size_t len);
/* A fresh connection (caller frees with redisFree), NULL on failure. */
redisContext *h_redis_connect(const h_redis *r);
/* A command on the redis' own cached connection (reconnects as needed).
 * The reply is the caller's (freeReplyObject); NULL on a connection error. */
redisReply *h_redis_cmd(h_redis *r, const char *fmt, ...);
/* GET KEY as an integer: 0 with *V set, 1 when absent, -1 on error or when
 * the value is not an integer. */
int h_redis_get_ll(h_redis *r, const char *key, long long *v);

/* --- Redis Cluster (harness_cluster.c) --------------------------------- */

#define H_CLUSTER_MAX 8

/* N (1..H_CLUSTER_MAX) redis-server primaries with cluster support on free
 * ports, each in its own directory, joined by `redis-cli --cluster create
 * --cluster-replicas 0 --cluster-yes` and waited for (cluster_state:ok on
 * every node, 30 s deadline). The nodes are the cluster's, not the test's
 * (teardown leaves them): free with h_cluster_free; at exit they are killed
 * like every child. */
typedef struct h_cluster {
    h_redis *nodes[H_CLUSTER_MAX];
    int n;                      /* every node, replicas included */
    int primaries;              /* as asked; which nodes they are, CLUSTER NODES says */
    double start_secs;          /* how long the start took */
} h_cluster;
/* NULL on failure, after printing why and stopping what was started. */
h_cluster *h_cluster_start(int n);
/* The same with REPLICAS replicas per primary (N * (1 + REPLICAS) nodes,
 * `--cluster-replicas REPLICAS`, each replica waited for until its link to
 * its primary is up) and, when NODE_TIMEOUT_MS > 0, cluster-node-timeout set
 * to it on every node (a replica takes over a dead primary after about
 * twice that). */
h_cluster *h_cluster_start_replicas(int n, int replicas, int node_timeout_ms);
/* Stop every node and free. NULL is fine. */
void h_cluster_free(h_cluster *c);
/* The node of C whose port is PORT, or NULL. */
h_redis *h_cluster_node_at(const h_cluster *c, int port);
/* A library client on R (2 s timeouts, 100 ms reconnect backoff), routing
 * through the cluster with R as its seed when ROUTED; fails the test when
 * it cannot be made. */
struct rds_client *h_rds_client(const h_redis *r, bool routed);
/* One cluster node started (h_redis_start without AOF, with
 * --cluster-enabled yes), not yet part of any cluster. */
h_redis *h_redis_start_cluster_node(void);

/* --- Redis Sentinel (harness_sentinel.c) ------------------------------- */

/* A redis-sentinel on a free port, in its own directory, started with the
 * config file text CONF (`sentinel monitor ...` lines; the harness adds
 * port, bind and dir on the command line). Owned and stopped like a
 * redis-server. NULL on failure (the reason printed). */
h_redis *h_redis_start_sentinel(const char *conf);

#define H_SENTINELS    3
#define H_SENTINEL_MASTER "nerve-primary"

/* A Sentinel deployment: a primary, one replica (REPLICAOF, waited for
 * master_link_status:up) and H_SENTINELS sentinels watching the primary as
 * H_SENTINEL_MASTER with quorum 2, down-after-milliseconds DOWN_AFTER_MS
 * and failover-timeout FAILOVER_TIMEOUT_MS, waited for (30 s) until every
 * sentinel knows the replica and the other sentinels (else a failover could
 * not happen). The servers are the set's (teardown leaves them): free with
 * h_sentinel_free. URL (for redis.url) is the redis-sentinel:// URL of the
 * three sentinels and the master. NULL on failure, after printing why. */
typedef struct h_sentinel_set {
    h_redis *primary, *replica; /* as started: a failover swaps their roles */
    h_redis *sentinels[H_SENTINELS];
    char url[200];
    double start_secs;
} h_sentinel_set;
h_sentinel_set *h_sentinel_start(int down_after_ms, int failover_timeout_ms);
void h_sentinel_free(h_sentinel_set *s);
/* The port of the primary the first answering sentinel names, -1 when none
 * answers. */
int h_sentinel_primary_port(h_sentinel_set *s);
/* The set's server on PORT (primary or replica), NULL when neither. */
h_redis *h_sentinel_server(h_sentinel_set *s, int port);

/* --- the daemon -------------------------------------------------------- */

typedef struct h_daemon {
    pid_t pid;                  /* 0 once reaped */
    int port;
    bool owned;
    char base[64];              /* "http://127.0.0.1:PORT" */
    char log[160];
} h_daemon;

/* Start `nerve serve` against R with the extra `key=value` overrides SETS
 * (NSETS of them), with or without NERVE_ADMIN_TOKEN=test-token, and wait
 * (10 s) until GET /healthz answers 200. NULL on failure, after printing the
 * log tail. */
h_daemon *h_daemon_startv(const h_redis *r, bool admin_token,
                          const char *const *sets, size_t nsets);
/* Same with the overrides as NULL-terminated arguments and the token set. */
h_daemon *h_daemon_start(const h_redis *r, ...) __attribute__((sentinel));
/* Same with ENV, NULL-terminated "NAME=value" strings (NULL: none), added to
 * the child's environment after the harness dropped the variables that
 * steer the daemon (REDIS_URL, NERVE_LISTEN, NERVE_RULES_DIR,
 * NERVE_PANIC_URL, NERVE_RESUME_URL, NERVE_ADMIN_TOKEN(S), NERVE_PANIC_TOKEN): the way to hand it
 * secrets such as NERVE_PANIC_TOKEN. The admin token is set only when ENV
 * has it. ENV is not kept after the start. */
h_daemon *h_daemon_start_env(const h_redis *r, const char *const *env,
                             const char *const *sets, size_t nsets);
/* SIGTERM, wait up to 20 s (then SIGKILL) and free D. Returns the exit
 * status (0..255) of a normal exit, -1 otherwise; a non-zero result is
 * printed with the log tail. NULL returns -1. */
int h_daemon_stop(h_daemon *d);
/* 1 while the process runs. */
int h_daemon_alive(h_daemon *d);
/* Print the last LINES lines of D's log. */
void h_daemon_log_tail(const h_daemon *d, int lines);

/* --- per group, the mock webhook (harness_fixtures.c) ------------------ */

/* Fixtures shared by a group of tests, for a file's main():
 *
 *     h_group_use(&redis, &daemon, sets);
 *     return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
 *
 * h_group_setup starts one redis-server (no AOF) into *REDIS and, when
 * DAEMON is not NULL, one daemon on it into *DAEMON (h_daemon_startv with
 * the admin token and the NULL-terminated overrides SETS, NULL: none; SETS
 * is read at setup time, so it may point at buffers the file fills in just
 * before). h_group_teardown stops that daemon (whatever *DAEMON holds then:
 * a test may have replaced it) and frees the redis, setting both pointers
 * to NULL; it fails (-1) when the daemon did not exit 0. A file with more
 * fixtures of its own calls these from its group setup/teardown. The
 * pointers must outlive the group run; main thread only. */
void h_group_use(h_redis **redis, h_daemon **daemon, const char *const *sets);
/* Also a mock webhook for the group, started after the redis into *HOOK,
 * its override "panic.webhook_url=..." into SET (SETLEN bytes); stopped
 * first by h_group_teardown. */
void h_group_hook(mock_server **hook, char *set, size_t setlen);
int h_group_setup(void **state);
int h_group_teardown(void **state);

/* A mock emergency-stop webhook (tests/lib/mock_webhook.h) answering 200 at
 * once on 127.0.0.1: the server (the caller stops it with mock_stop) and,
 * into SET (SETLEN bytes), the override "panic.webhook_url=<its /hook URL>".
 * NULL on failure (the reason printed). */
mock_server *h_hook_start(char *set, size_t setlen);
/* Back to answering 200 at once, and forget the requests seen (between two
 * tests). NULL is fine. */
void h_hook_reset(mock_server *m);

/* --- files in the temp dir (harness_fixtures.c) ------------------------ */

/* Write TEXT to DIR/NAME, created or truncated. */
#define H_WRITE_FILE(dir, name, text) \
    h_write_file_at((dir), (name), (text), __FILE__, __LINE__)
/* A directory NAME in the temp dir (made when missing) holding the rule file
 * RULE with TEXT (RULE NULL: an empty directory, or as it is): its path into
 * DIR (DIRLEN bytes) and the override "rules.dir=<path>" into SET (SETLEN
 * bytes), each only when not NULL. */
#define H_RULES_DIR(name, rule, text, dir, dirlen, set, setlen) \
    h_rules_dir_at((name), (rule), (text), (dir), (dirlen), (set), (setlen), __FILE__, __LINE__)

void h_write_file_at(const char *dir, const char *name, const char *text,
                     const char *file, int line);
void h_rules_dir_at(const char *name, const char *rule, const char *text, char *dir,
                    size_t dirlen, char *set, size_t setlen, const char *file, int line);
/* The whole of PATH, NUL-terminated (the caller frees it); NULL when it
 * cannot be read, with errno set. */
char *h_read_file(const char *path);

/* --- one-shot commands ------------------------------------------------- */

typedef struct h_run {
    int status;                 /* exit status 0..255; -1: killed by a signal,
                                 * timed out, or could not start */
    bool timed_out;             /* killed (SIGKILL) at the deadline */
    char *out, *err;            /* the whole stdout and stderr, NUL-terminated */
    cJSON *json;                /* stdout parsed, NULL when not JSON */
} h_run;

/* Run `$NERVE_BIN ARGS...` (ARGS NULL-terminated) from the repo root, in its
 * own process group, with stdin /dev/null and the environment the daemon gets
 * (the steering variables dropped, see h_daemon_start_env) plus ENV
 * (NULL-terminated "NAME=value" strings, NULL: none); wait up to TIMEOUT_MS,
 * then SIGKILL the group. Fills R (free with h_run_free; out and err are
 * never NULL, err says why when it could not start) and returns its status. */
int h_run_nerve(h_run *r, int timeout_ms, const char *const *env, const char *const *args);
/* NULL is fine. */
void h_run_free(h_run *r);
/* Run ARGV (NULL-terminated, ARGV[0] looked up in PATH) in the temp dir with
 * the children's environment, stdout and stderr appended to LOG, for up to
 * TIMEOUT_MS (then killed): its exit status 0..255, or -1. */
int h_run_cmd(char *const argv[], const char *log, int timeout_ms);

/* --- HTTP -------------------------------------------------------------- */

typedef struct h_resp {
    long status;                /* 0 when the request failed (see err) */
    char *body;                 /* NUL-terminated */
    size_t len;
    char *headers;              /* raw response header block */
    cJSON *json;                /* the body parsed, NULL when not JSON */
    double secs;                /* request duration */
    char err[256];
} h_resp;

/* METHOD PATH on D with BODY (NULL = none; a body gets
 * `Content-Type: application/json` unless a header line says otherwise) and
 * extra header lines ("Name: value"), NULL-terminated. Fills R (free with
 * h_resp_free) and returns the status, 0 on transport error. */
long h_http(const h_daemon *d, const char *method, const char *path,
            const char *body, h_resp *r, ...) __attribute__((sentinel));
void h_resp_free(h_resp *r);
/* The value of response header NAME (case-insensitive) into OUT; false when
 * absent. */
bool h_header(const h_resp *r, const char *name, char *out, size_t outlen);

/* JSON accessors: the string at KEY or NULL; an integral number at KEY
 * (false when absent or not integral); a bool at KEY as 0/1, -1 otherwise. */
const char *h_jstr(const cJSON *o, const char *key);
bool h_jll(const cJSON *o, const char *key, long long *v);
int h_jbool(const cJSON *o, const char *key);
/* true when O is an object whose keys are exactly the NULL-terminated list. */
bool h_jkeys(const cJSON *o, ...) __attribute__((sentinel));

/* POST PATH {"sku","qty"[,"order_id"]} (ORDER_ID NULL = none). */
long h_sale(const h_daemon *d, const char *path, const char *sku, long long qty,
            const char *order_id, h_resp *r);

/* Assertions that report the caller's FILE:LINE. */
#define H_SET_STOCK(d, sku, n) h_set_stock_at((d), (sku), (n), __FILE__, __LINE__)
#define H_GET_STOCK(d, sku) h_get_stock_at((d), (sku), __FILE__, __LINE__)
#define H_REDIS_STOCK(r, sku) h_redis_stock_at((r), (sku), __FILE__, __LINE__)
/* R is a JSON error: status STATUS, Content-Type application/json, body
 * {"error": CODE, "message": non-empty string, ...}; CODE NULL = any
 * non-empty string. */
#define H_ASSERT_ERROR(r, status, code) \
    h_assert_error_at((r), (status), (code), __FILE__, __LINE__)
/* R has Content-Type application/json and a JSON object body. */
#define H_ASSERT_JSON(r) h_assert_json_at((r), __FILE__, __LINE__)

void h_set_stock_at(const h_daemon *d, const char *sku, long long stock,
                    const char *file, int line);
/* GET /stock/SKU: the stock, or -1 on 404 (other answers fail the test). */
long long h_get_stock_at(const h_daemon *d, const char *sku, const char *file, int line);
/* The Redis key of SKU's KIND ("stock", "price", "lock") in BUF (600
 * bytes), as a daemon with H_PREFIX and H_PARTITIONS names it (keys.h). */
const char *h_key(char *out, const char *kind, const char *sku);
/* The key of SKU's idempotency record of ORDER_ID ("*": a KEYS pattern). */
const char *h_order_key(char *out, const char *sku, const char *order_id);
/* GET PREFIX{pN}:stock:SKU: the value, or -1 when absent. */
long long h_redis_stock_at(h_redis *r, const char *sku, const char *file, int line);
void h_assert_error_at(const h_resp *r, long status, const char *code,
                       const char *file, int line);
void h_assert_json_at(const h_resp *r, const char *file, int line);

/* --- the bus, kill records, counters (harness_observe.c) --------------- */

/* Poll PUBSUB NUMSUB until at least N clients (the daemons' buses) subscribe
 * to CHANNEL on R; fails after 10 s with the count last seen. */
#define H_WAIT_SUBSCRIBERS(r, channel, n) \
    h_wait_subscribers_at((r), (channel), (n), __FILE__, __LINE__)
void h_wait_subscribers_at(h_redis *r, const char *channel, long long n,
                           const char *file, int line);
/* PUBLISH CHANNEL MSG on R: the number of receivers, -1 on error. */
long long h_publish(h_redis *r, const char *channel, const char *msg);

/* The test's own subscriber to one channel whose messages are JSON objects
 * with "kind" and "scope" (system_alerts): it keeps every message it reads,
 * parsed, with the time it read it. Opaque; reading happens only in the
 * pump. It lives until h_sub_close (NULL is fine), which frees the messages
 * too, or until the end of the test: h_test_teardown closes every subscriber
 * still open (h_sub_close_all). */
typedef struct h_sub h_sub;

/* Connect to R and SUBSCRIBE to CHANNEL. */
#define H_SUB_OPEN(r, channel) h_sub_open_at((r), (channel), __FILE__, __LINE__)
/* Read every message that arrives within MS (0: only what is already here);
 * fails on a connection error or a message that is not JSON. */
#define H_SUB_PUMP(s, ms) h_sub_pump_at((s), (ms), __FILE__, __LINE__)
/* Pump until at least N messages of KIND and SCOPE arrived; fails after MS. */
#define H_SUB_WAIT(s, kind, scope, n, ms) \
    h_sub_wait_at((s), (kind), (scope), (n), (ms), __FILE__, __LINE__)

h_sub *h_sub_open_at(h_redis *r, const char *channel, const char *file, int line);
void h_sub_close(h_sub *s);
void h_sub_close_all(void);
void h_sub_pump_at(h_sub *s, int ms, const char *file, int line);
void h_sub_wait_at(h_sub *s, const char *kind, const char *scope, int n, int ms,
                   const char *file, int line);
/* The messages read so far of KIND and SCOPE (NULL: any scope): how many;
 * the I-th (0-based, NULL when there is none; still S's), and the h_now()
 * it was read at into *AT when AT is not NULL; each printed, one JSON a line
 * (for a failure message). */
int h_sub_count(const h_sub *s, const char *kind, const char *scope);
const cJSON *h_sub_find(const h_sub *s, const char *kind, const char *scope, int i, double *at);
void h_sub_print(const h_sub *s, const char *kind, const char *scope);

/* The kill record of SCOPE in R (PREFIX kill:SCOPE), parsed (the caller
 * deletes it); NULL when absent or not JSON. */
cJSON *h_kill_record(h_redis *r, const char *scope);
/* Poll until SCOPE's record exists (STATE NULL) or has state STATE; the
 * record (the caller deletes it); fails after MS with the record last seen. */
#define H_WAIT_KILL(r, scope, state, ms) \
    h_wait_kill_at((r), (scope), (state), (ms), __FILE__, __LINE__)
cJSON *h_wait_kill_at(h_redis *r, const char *scope, const char *state, int ms,
                      const char *file, int line);

/* The integral counter FIELD ("evaluations", "errors") of rule NAME in D's
 * GET /rules, -1 when the rule is not listed or the request failed. */
long long h_rule_stat(const h_daemon *d, const char *name, const char *field);
/* GET /rules "generation"; fails unless 200 with an integral one. */
#define H_GENERATION(d) h_generation_at((d), __FILE__, __LINE__)
long long h_generation_at(const h_daemon *d, const char *file, int line);
/* GET /metrics as text (the caller frees it); fails unless 200. */
#define H_METRICS(d) h_metrics_at((d), __FILE__, __LINE__)
char *h_metrics_at(const h_daemon *d, const char *file, int line);
/* In the Prometheus TEXT, the sum of the samples of metric NAME (`NAME v` or
 * `NAME{labels} v`) whose labels contain the string LABEL (NULL: every
 * sample); -1 when no sample matched. */
double h_metric(const char *text, const char *name, const char *label);

/* A libcurl handle that POSTs {"sku":SKU,"qty":1} to D's /sale with a JSON
 * Content-Type, keep-alive and a 20 s timeout, for tests that run their own
 * endless sale loops (the caller sets its write callback, error buffer...).
 * Free with h_sale_curl_free. NULL on OOM. */
CURL *h_sale_curl(const h_daemon *d, const char *sku);
void h_sale_curl_free(CURL *h);

/* --- concurrent load ---------------------------------------------------- */

typedef struct h_sale_rec {
    bool sent;                  /* false: not sent (h_load_stop) */
    long status;                /* 0: transport error */
    double secs;
    char *body;
    bool json_ct;               /* Content-Type: application/json */
    bool retry_after;           /* a Retry-After header was present */
    cJSON *json;                /* parsed after the run, NULL if not JSON */
} h_sale_rec;

typedef struct h_load {
    /* in */
    const h_daemon *d;
    const char *path;           /* "/sale" */
    const char *sku;
    long long qty;
    const char *order_id;       /* the same order_id in every request, or NULL */
    const char *order_prefix;   /* else "PREFIX-<i>" per request, or NULL: none */
    int clients;                /* threads, each with one keep-alive handle */
    int requests;               /* total, shared out dynamically */
    bool together;              /* connect first, then fire at once (barrier) */
    bool serial;                /* one request at a time, client k sending
                                 * requests k, k + clients...: with together,
                                 * each on its own open connection */
    int timeout_ms;             /* per request, default 60000 */
    /* out */
    h_sale_rec *recs;           /* [requests], in request index order */
    int sent;                   /* requests sent (all unless stopped) */
    int by_status[600];
    int transport_errors;
    double secs;                /* wall time of the run */
    double max_secs;            /* slowest request */
    struct h_load_run *run;     /* private: the running threads */
} h_load;

/* Run L to its end (fills the out fields). 0, or -1 when the threads could
 * not start. */
int h_load_run(h_load *l);
/* The same in two steps, so the test can act (pause Redis...) while the load
 * runs: start the threads, then join them and fill the out fields. In
 * between, h_load_completed() says how many requests were answered. A load
 * left running by a failed test is joined by h_test_teardown(). */
int h_load_start(h_load *l);
int h_load_completed(const h_load *l);
/* Let the running requests finish but send no more. */
void h_load_stop(h_load *l);
int h_load_wait(h_load *l);
void h_load_free(h_load *l);

/* --- PostgreSQL (harness_pg.c) ----------------------------------------- */

/* A throwaway PostgreSQL server: initdb into a directory of the temp dir (as
 * the postgres user when the tests run as root), `postgres` on a free port
 * with its Unix socket in that directory and no TCP listener, user `nerve`,
 * trust authentication, fsync off. Stopped by h_pg_free and at exit. */
typedef struct h_pg {
    pid_t pid;                  /* 0 while stopped */
    int port;
    char dir[128];              /* data in DIR/data, the socket in DIR */
    char log[160];
} h_pg;

/* initdb, start and wait (30 s) until it answers; NULL on failure (the
 * reason and the server log printed). */
h_pg *h_pg_start(void);
/* Fast shutdown (SIGINT), wait; 0, or -1 when it had to be killed. */
int h_pg_stop(h_pg *p);
/* Start again on the same port and data; 0 once it answers. */
int h_pg_restart(h_pg *p);
/* Stop if running and free. NULL is fine. */
void h_pg_free(h_pg *p);
/* "postgresql:///DB?host=DIR&port=PORT&user=nerve" into BUF. */
const char *h_pg_url(const h_pg *p, const char *db, char *buf, size_t len);
/* CREATE DATABASE DB: 0 or -1. */
int h_pg_createdb(const h_pg *p, const char *db);
/* Run SQL in DB: the first column of the first row ("" when no row or
 * NULL), malloc'd (caller frees); NULL on error (printed). */
char *h_pg_query(const h_pg *p, const char *db, const char *sql);

#endif
