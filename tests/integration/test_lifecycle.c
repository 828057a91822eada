/* test_lifecycle.c -- the process around the daemon (SPEC §3, §10): one
 * daemon per pidfile, `nerve reload` signalling it, SIGTERM under load
 * answering every accepted request and releasing every lock, and the
 * offline commands `nerve check` and `nerve rules test`.
 *
 * Daemons come from the harness; the one-shot commands are run by run_nerve()
 * below, which captures their exit status, stdout and stderr apart.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define AUTH "Authorization: Bearer " H_ADMIN_TOKEN

extern char **environ;

static h_redis *redis;

/* --- small helpers -------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        fail_msg("fopen %s: %s", path, strerror(errno));
    fputs(text, f);
    if (fclose(f) != 0)
        fail_msg("write %s: %s", path, strerror(errno));
}

/* The whole of PATH (caller frees); "" when it cannot be read. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return strdup("");
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, m);
    fclose(f);
    fclose(m);
    return buf;
}

/* A fresh directory TMP/NAME holding rule file FILE = TEXT; path into OUT. */
static void rules_dir(const char *name, const char *file, const char *text, char *out,
                      size_t outlen)
{
    snprintf(out, outlen, "%s/%s", h_tmpdir(), name);
    if (mkdir(out, 0700) != 0 && errno != EEXIST)
        fail_msg("mkdir %s: %s", out, strerror(errno));
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", out, file);
    write_file(path, text);
}

static long long generation(const h_daemon *d)
{
    h_resp r;
    h_http(d, "GET", "/rules", NULL, &r, NULL);
    long long g = -1;
    if (r.status != 200 || !h_jll(r.json, "generation", &g))
        fail_msg("GET /rules: %ld %s %s", r.status, r.body, r.err);
    h_resp_free(&r);
    return g;
}

static const char *nerve_bin(void)
{
    static char path[PATH_MAX];
    const char *b = getenv("NERVE_BIN");
    if (b == NULL || *b == '\0')
        b = "./nerve";
    if (path[0] == '\0' && realpath(b, path) == NULL)
        return b;
    return path;
}

/* What a one-shot command did. */
typedef struct run {
    int status;                 /* exit status 0..255; -1 killed or timed out */
    char *out, *err;            /* stdout and stderr, NUL-terminated */
} run;

static void run_free(run *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

/* Run `nerve ARGS...` (NULL-terminated) from the repo root, with none of
 * the variables that steer nerve in its environment; wait up to TIMEOUT_MS
 * (then SIGKILL). Fills R (free with run_free) and returns its status. */
static int run_nerve(run *r, int timeout_ms, const char *const *args)
{
    static int seq;
    static const char *const drop[] = {
        "REDIS_URL=", "NERVE_LISTEN=", "NERVE_RULES_DIR=", "NERVE_PANIC_URL=",
        "NERVE_ADMIN_TOKEN=", "NERVE_PANIC_TOKEN=", "LD_PRELOAD=", "_STDBUF_",
    };
    memset(r, 0, sizeof *r);
    char out[PATH_MAX], err[PATH_MAX];
    seq++;
    snprintf(out, sizeof out, "%s/run-%d.out", h_tmpdir(), seq);
    snprintf(err, sizeof err, "%s/run-%d.err", h_tmpdir(), seq);
    const char *argv[64];
    size_t n = 0;
    argv[n++] = nerve_bin();
    for (size_t i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    size_t ne = 0;
    while (environ[ne])
        ne++;
    char **env = calloc(ne + 1, sizeof *env);
    assert_non_null(env);
    size_t k = 0;
    for (size_t i = 0; i < ne; i++) {
        bool skip = false;
        for (size_t j = 0; j < sizeof drop / sizeof drop[0]; j++)
            skip |= strncmp(environ[i], drop[j], strlen(drop[j])) == 0;
        if (!skip)
            env[k++] = environ[i];
    }
    env[k] = NULL;
    const char *root = getenv("NERVE_ROOT");
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int in = open("/dev/null", O_RDONLY);
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (in < 0 || fo < 0 || fe < 0)
            _exit(127);
        dup2(in, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        close_range(3, ~0U, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (root && *root && chdir(root) != 0)
            _exit(127);
        execve(argv[0], (char *const *)argv, env);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    free(env);
    int status = 0;
    bool done = false;
    double dl = h_deadline(timeout_ms);
    while (h_before(dl)) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            done = true;
            break;
        }
        h_nap();
    }
    if (!done) {
        kill(-pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    r->status = done && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r->out = read_file(out);
    r->err = read_file(err);
    return r->status;
}

/* --- rules ------------------------------------------------------------------ */

static const char *const LC_RULE =
    "return {\n"
    "  name = \"e2e_lc\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if event.boom then error(\"boom\") end\n"
    "    local out = {}\n"
    "    if event.alert then\n"
    "      out[#out + 1] = { action = \"alert\", level = \"warning\", scope = \"lc:\" .. event.id,\n"
    "                        reason = \"alert \" .. event.id }\n"
    "    end\n"
    "    if event.kill then\n"
    "      out[#out + 1] = { action = \"kill\", scope = \"lc:\" .. event.id, halt_sales = true,\n"
    "                        reason = \"kill \" .. event.id }\n"
    "    end\n"
    "    return out\n"
    "  end,\n"
    "  tests = {\n"
    "    { channel = \"test_events\", event = { id = \"f\" }, expect = {} },\n"
    "    { channel = \"test_events\", event = { id = \"f\", alert = true },\n"
    "      expect = { { action = \"alert\", level = \"warning\", scope = \"lc:f\" } } },\n"
    "  },\n"
    "}\n";

static const char *const SYNTAX_ERROR_RULE =   /* error on line 5 */
    "return {\n"
    "  name = \"e2e_broken\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\" level = \"info\", reason = \"x\" }\n"
    "  end,\n"
    "}\n";

/* --- 1. one daemon per pidfile; nerve reload ---------------------------------- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static int pidfile_pid(const char *path)
{
    char *t = read_file(path);
    char *end;
    long v = strtol(t, &end, 10);
    int ok = end != t && (*end == '\n' || *end == '\0');
    free(t);
    return ok ? (int)v : -1;
}

static void test_pidfile_and_reload_command(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], pidfile[PATH_MAX], pset[PATH_MAX + 32];
    rules_dir("lc-pid", "lc.lua", LC_RULE, dir, sizeof dir);
    snprintf(rset, sizeof rset, "rules.dir=%s", dir);
    snprintf(pidfile, sizeof pidfile, "%s/nerve.pid", h_tmpdir());
    snprintf(pset, sizeof pset, "server.pidfile=%s", pidfile);

    h_daemon *d = h_daemon_start(redis, rset, pset, NULL);
    assert_non_null(d);
    assert_int_equal(pidfile_pid(pidfile), d->pid);

    /* A second daemon with the same pidfile refuses to start and says why. */
    char listen[64], url[96], pid_s[32];
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", free_port());
    snprintf(url, sizeof url, "redis.url=redis://127.0.0.1:%d/0", redis->port);
    snprintf(pid_s, sizeof pid_s, "%d", (int)d->pid);
    run r;
    run_nerve(&r, 10000, (const char *const[]){ "serve", "-c", "config/nerve.yaml", "--set", listen,
                                                "--set", url, "--set", rset, "--set", pset, NULL });
    if (r.status == 0 || r.status == -1)
        fail_msg("a second nerve on pidfile %s: expected a non-zero exit, got %s%d; stderr:\n%s",
                 pidfile, r.status == -1 ? "killed/timed out " : "", r.status, r.err);
    if (strstr(r.err, pidfile) == NULL || strstr(r.err, pid_s) == NULL)
        fail_msg("the second nerve's message should name %s and pid %s; stderr:\n%s", pidfile,
                 pid_s, r.err);
    run_free(&r);
    assert_int_equal(h_daemon_alive(d), 1);
    assert_int_equal(pidfile_pid(pidfile), d->pid);     /* not clobbered */

    /* nerve reload signals the daemon of the pidfile. */
    long long g0 = generation(d);
    run_nerve(&r, 10000, (const char *const[]){ "reload", "-c", "config/nerve.yaml", "--set", pset,
                                                "--set", rset, NULL });
    if (r.status != 0)
        fail_msg("nerve reload: exit %d; stdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
    run_free(&r);
    double dl = h_deadline(5000);
    long long g = g0;
    while (g == g0 && h_before(dl)) {
        g = generation(d);
        if (g == g0)
            h_nap();
    }
    assert_int_equal(g, g0 + 1);

    /* No daemon behind the pidfile: nerve reload fails. */
    char nopid[PATH_MAX + 32];
    snprintf(nopid, sizeof nopid, "server.pidfile=%s/none.pid", h_tmpdir());
    run_nerve(&r, 10000, (const char *const[]){ "reload", "-c", "config/nerve.yaml", "--set", nopid,
                                                "--set", rset, NULL });
    if (r.status == 0)
        fail_msg("nerve reload without a daemon: expected a non-zero exit; stdout:\n%s", r.out);
    run_free(&r);

    assert_int_equal(h_daemon_stop(d), 0);
    if (access(pidfile, F_OK) == 0)
        fail_msg("pidfile %s left behind after a clean exit", pidfile);
    h_pass();
}

/* --- 2. SIGTERM under load ------------------------------------------------------ */

#define CLIENTS 32

typedef struct load {
    const h_daemon *d;
    const char *sku;
    pthread_t th[CLIENTS];
    bool running;
    atomic_bool stop;
    atomic_llong ok, refused, unanswered, bad;
    atomic_llong died;          /* curl: a reused connection died with the
                                 * request unanswered, and it retried */
    pthread_mutex_t mu;
    char first_bad[1024];
} load;

static load the_load;           /* stopped by the teardown when a test fails */

typedef struct rbuf {
    char b[1024];
    size_t n;
} rbuf;

static size_t sink(char *p, size_t size, size_t n, void *ud)
{
    rbuf *r = ud;
    size_t add = size * n, room = sizeof r->b - 1 - r->n;
    memcpy(r->b + r->n, p, add < room ? add : room);
    r->n += add < room ? add : room;
    r->b[r->n] = '\0';
    return size * n;
}

static void note_bad(load *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_bad(load *l, const char *fmt, ...)
{
    if (atomic_fetch_add(&l->bad, 1) != 0)
        return;
    pthread_mutex_lock(&l->mu);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->first_bad, sizeof l->first_bad, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&l->mu);
}

/* curl's own account of what happened on the wire: a request sent on a
 * kept-alive connection that closed without a byte of answer is silently
 * retried on a fresh connection, which then sees "connection refused". */
static int on_debug(CURL *h, curl_infotype type, char *data, size_t size, void *ud)
{
    (void)h;
    load *l = ud;
    if (type == CURLINFO_TEXT && memmem(data, size, "retrying a fresh connect", 24))
        atomic_fetch_add(&l->died, 1);
    return 0;
}

/* Sell one unit at a time over one keep-alive connection until told to
 * stop or the server is gone (connection refused). */
static void *load_main(void *arg)
{
    load *l = arg;
    CURL *h = curl_easy_init();
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:");
    char url[256], body[256], err[CURL_ERROR_SIZE];
    rbuf resp;
    snprintf(url, sizeof url, "%s/sale", l->d->base);
    snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":1}", l->sku);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, on_debug);
    curl_easy_setopt(h, CURLOPT_DEBUGDATA, l);
    curl_easy_setopt(h, CURLOPT_VERBOSE, 1L);
    while (!atomic_load(&l->stop)) {
        resp.n = 0;
        resp.b[0] = '\0';
        err[0] = '\0';
        long status = 0;
        curl_off_t clen = -1;
        CURLcode cc = curl_easy_perform(h);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &clen);
        if (cc == CURLE_COULDNT_CONNECT) {
            atomic_fetch_add(&l->refused, 1);
            break;                  /* the server is gone: done */
        }
        if (cc != CURLE_OK && status == 0 &&
            (cc == CURLE_GOT_NOTHING || cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR)) {
            /* Closed before a byte of answer: a request the server never
             * took (the stock check below catches one it did take). */
            atomic_fetch_add(&l->unanswered, 1);
            continue;
        }
        if (cc != CURLE_OK) {
            note_bad(l, "truncated or failed answer: status %ld, curl \"%s\", %zu bytes: %s",
                     status, err[0] ? err : curl_easy_strerror(cc), resp.n, resp.b);
            continue;
        }
        bool complete = clen < 0 || (size_t)clen == resp.n;
        if (status == 200 && complete && strstr(resp.b, "\"status\":\"ok\""))
            atomic_fetch_add(&l->ok, 1);
        else
            note_bad(l, "unexpected answer: status %ld, %zu of %lld bytes: %s", status, resp.n,
                     (long long)clen, resp.b);
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return NULL;
}

static void load_start(load *l, const h_daemon *d, const char *sku)
{
    memset(l, 0, sizeof *l);
    l->d = d;
    l->sku = sku;
    pthread_mutex_init(&l->mu, NULL);
    for (int i = 0; i < CLIENTS; i++)
        assert_int_equal(pthread_create(&l->th[i], NULL, load_main, l), 0);
    l->running = true;
}

static void load_stop(load *l)
{
    if (!l->running)
        return;
    atomic_store(&l->stop, true);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(l->th[i], NULL);
    pthread_mutex_destroy(&l->mu);
    l->running = false;
}

static int teardown(void **state)
{
    load_stop(&the_load);
    return h_test_teardown(state);
}

static void test_sigterm_under_load(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16];
    rules_dir("lc-term", "lc.lua", LC_RULE, dir, sizeof dir);
    snprintf(rset, sizeof rset, "rules.dir=%s", dir);
    const int grace_ms = 5000;
    h_daemon *d = h_daemon_start(redis, rset, "server.shutdown_grace_ms=5000",
                                 "panic.dry_run=true", NULL);
    assert_non_null(d);
    const char *sku = "lc-term-1";
    const long long stock = 1000000;
    H_SET_STOCK(d, sku, stock);

    load *l = &the_load;
    load_start(l, d, sku);
    double dl = h_deadline(10000);
    while (atomic_load(&l->ok) < 500 && atomic_load(&l->bad) == 0 && h_before(dl))
        h_nap();
    if (atomic_load(&l->ok) < 500)
        fail_msg("the load did not get going: %lld sold, %lld bad (%s)",
                 (long long)atomic_load(&l->ok), (long long)atomic_load(&l->bad), l->first_bad);

    double t0 = h_now();
    int rc = h_daemon_stop(d);          /* SIGTERM while 32 clients sell */
    double took = h_now() - t0;
    load_stop(l);
    long long ok = atomic_load(&l->ok);
    long long died = atomic_load(&l->died);
    printf("SIGTERM under load: exit %d after %.2f s; %lld sold, %lld refused, %lld unanswered, "
           "%lld sent on a connection that closed unanswered, %lld bad\n", rc, took, ok,
           (long long)atomic_load(&l->refused), (long long)atomic_load(&l->unanswered), died,
           (long long)atomic_load(&l->bad));
    assert_int_equal(rc, 0);
    if (took > grace_ms / 1000.0 + 1.0)
        fail_msg("exit took %.2f s, over the %d ms grace period", took, grace_ms);
    if (atomic_load(&l->bad) != 0)
        fail_msg("%lld requests got a truncated or unexpected answer; first: %s",
                 (long long)atomic_load(&l->bad), l->first_bad);

    /* No lock left behind. */
    redisReply *rep = h_redis_cmd(redis, "KEYS %s", H_PREFIX "{*}:lock");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    if (rep->elements != 0)
        fail_msg("%zu lock key(s) left after exit, e.g. %s", rep->elements, rep->element[0]->str);
    freeReplyObject(rep);

    /* Every sale the server made was reported to a client. */
    long long left = H_REDIS_STOCK(redis, sku);
    if (left != stock - ok)
        fail_msg("stock %lld, but clients were told of %lld sales out of %lld: %lld sales made "
                 "and never answered (%lld requests were sent on connections that then closed "
                 "without an answer)", left, ok, stock, stock - ok - left, died);
    h_pass();
}

/* --- 3. nerve check, nerve rules test --------------------------------------------- */

static void test_check_and_rules_test(void **state)
{
    (void)state;
    char good[PATH_MAX], bad[PATH_MAX], gset[PATH_MAX + 16], bset[PATH_MAX + 16];
    rules_dir("lc-check-good", "lc.lua", LC_RULE, good, sizeof good);
    rules_dir("lc-check-bad", "lc.lua", LC_RULE, bad, sizeof bad);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/broken.lua", bad);
    write_file(path, SYNTAX_ERROR_RULE);
    snprintf(gset, sizeof gset, "rules.dir=%s", good);
    snprintf(bset, sizeof bset, "rules.dir=%s", bad);
    run r;

    run_nerve(&r, 10000, (const char *const[]){ "check", "-c", "config/nerve.yaml", "--set", gset,
                                                NULL });
    if (r.status != 0)
        fail_msg("nerve check on a good dir: exit %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out,
                 r.err);
    run_free(&r);

    run_nerve(&r, 10000, (const char *const[]){ "check", "-c", "config/nerve.yaml", "--set", bset,
                                                NULL });
    char want[PATH_MAX + 128];
    snprintf(want, sizeof want, "%s:5: ", path);
    if (r.status != 1 || (strstr(r.err, want) == NULL && strstr(r.out, want) == NULL))
        fail_msg("nerve check with a syntax error: expected exit 1 and \"%s...\", got exit %d\n"
                 "stdout:\n%s\nstderr:\n%s", want, r.status, r.out, r.err);
    run_free(&r);

    /* rules test: one JSON line per decision. */
    char events[PATH_MAX];
    snprintf(events, sizeof events, "%s/events.jsonl", h_tmpdir());
    write_file(events,
               "{\"channel\":\"test_events\",\"event\":{\"id\":\"n0\"}}\n"
               "{\"channel\":\"test_events\",\"event\":{\"id\":\"n1\",\"alert\":true}}\n"
               "{\"channel\":\"test_events\",\"event\":{\"id\":\"n2\",\"alert\":true,\"kill\":true}}\n"
               "{\"channel\":\"other_events\",\"event\":{\"id\":\"n3\",\"alert\":true}}\n");
    run_nerve(&r, 10000, (const char *const[]){ "rules", "test", "-c", "config/nerve.yaml", "--set",
                                                gset, events, NULL });
    if (r.status != 0)
        fail_msg("nerve rules test: exit %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
    static const struct { const char *action, *scope, *reason; int halt; } want_d[] = {
        { "alert", "lc:n1", "alert n1", -1 },
        { "alert", "lc:n2", "alert n2", -1 },
        { "kill", "lc:n2", "kill n2", 1 },
    };
    int lines = 0;
    for (char *line = r.out, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (lines >= 3)
            fail_msg("nerve rules test: more than 3 lines: %s", line);
        cJSON *o = cJSON_Parse(line);
        const cJSON *dec = cJSON_GetObjectItemCaseSensitive(o, "decision");
        const char *rule = h_jstr(o, "rule"), *ch = h_jstr(o, "channel");
        const char *act = h_jstr(dec, "action"), *sc = h_jstr(dec, "scope");
        const char *rs = h_jstr(dec, "reason");
        bool ok = o && rule && strcmp(rule, "e2e_lc") == 0 && ch &&
                  strcmp(ch, "test_events") == 0 && act && strcmp(act, want_d[lines].action) == 0 &&
                  sc && strcmp(sc, want_d[lines].scope) == 0 && rs &&
                  strcmp(rs, want_d[lines].reason) == 0 &&
                  (want_d[lines].halt < 0 || h_jbool(dec, "halt_sales") == want_d[lines].halt);
        if (!ok)
            fail_msg("nerve rules test line %d: expected {\"rule\":\"e2e_lc\",\"channel\":"
                     "\"test_events\",\"decision\":{\"action\":\"%s\",\"scope\":\"%s\","
                     "\"reason\":\"%s\"...}}, got %s", lines + 1, want_d[lines].action,
                     want_d[lines].scope, want_d[lines].reason, line);
        cJSON_Delete(o);
        lines++;
    }
    assert_int_equal(lines, 3);
    run_free(&r);

    /* A line that is not an event: non-zero, and the line is named. */
    write_file(events,
               "{\"channel\":\"test_events\",\"event\":{\"id\":\"n1\",\"alert\":true}}\n"
               "this is not json\n");
    run_nerve(&r, 10000, (const char *const[]){ "rules", "test", "-c", "config/nerve.yaml", "--set",
                                                gset, events, NULL });
    snprintf(want, sizeof want, "%s:2:", events);
    if (r.status == 0 || r.status == -1 || strstr(r.err, want) == NULL)
        fail_msg("nerve rules test with a bad line: expected a non-zero exit and \"%s\" on "
                 "stderr, got exit %d\nstderr:\n%s", want, r.status, r.err);
    run_free(&r);

    /* A rule error: non-zero, reported as FILE:LINE of the rule. */
    write_file(events, "{\"channel\":\"test_events\",\"event\":{\"id\":\"n1\",\"boom\":true}}\n");
    run_nerve(&r, 10000, (const char *const[]){ "rules", "test", "-c", "config/nerve.yaml", "--set",
                                                gset, events, NULL });
    if (r.status == 0 || r.status == -1 || strstr(r.err, "lc.lua:5:") == NULL)
        fail_msg("nerve rules test with a rule error: expected a non-zero exit and "
                 "\"lc.lua:5:\" on stderr, got exit %d\nstderr:\n%s", r.status, r.err);
    run_free(&r);
    h_pass();
}

/* --- main ----------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    redis = h_redis_start(false);
    return redis ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    h_redis_free(redis);
    return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_pidfile_and_reload_command),
        T(test_sigterm_under_load),
        T(test_check_and_rules_test),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
