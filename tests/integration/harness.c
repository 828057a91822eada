/* harness.c -- throwaway redis-server and nerve daemons for integration tests.
 *
 * See harness.h for the contract. The parts worth a word:
 *
 * Cleanup. Every child is forked into its own process group with
 * PR_SET_PDEATHSIG(SIGKILL), recorded in a fixed table that a signal handler
 * can read, and killed (the whole group) by the atexit handler or by the
 * handler of a fatal signal, which then removes the temp dir with a forked
 * `rm -rf` (fork and exec being async-signal-safe, nftw not) and re-raises.
 * PDEATHSIG covers what no handler can: a SIGKILL of the test itself.
 *
 * Ports. A free port is one the kernel gave to a socket bound to port 0. Some
 * other process may take it before our child binds it, so starts retry on a
 * fresh port, and redis is checked to be ours (INFO's process_id).
 *
 * Load. Each client thread owns one CURL easy handle, reused, so requests go
 * over one keep-alive connection; request indexes are handed out with an
 * atomic counter so a slow connection never holds back the others. Bodies are
 * parsed after the threads joined (cJSON_Parse writes a global on error).
 */
#include "harness.h"
#include "nerve/keys.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_CHILDREN 64
#define MAX_TRACKED 32
#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 20000
#define TAIL_LINES 40

/* --- process ----------------------------------------------------------- */

static char tmpdir[64];
static char rootdir[PATH_MAX];
static bool initialised;
static volatile pid_t children[MAX_CHILDREN];   /* 0 = free slot */
static pid_t main_pid;

/* Objects alive now, and what the current test wrote to daemon logs. */
static h_redis *redis_live[MAX_TRACKED];
static h_daemon *daemon_live[MAX_TRACKED];
static struct { char log[PATH_MAX]; long from; } test_logs[MAX_TRACKED];
static int n_test_logs;
static bool in_test;
static bool test_passed;
static struct h_load_run *loads_live[MAX_TRACKED];

static void run_finish(struct h_load_run *run, h_sale_rec **recs, double *secs);

static void track_child(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] == 0) {
            children[i] = pid;
            return;
        }
    }
}

static void untrack_child(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (children[i] == pid)
            children[i] = 0;
}

/* Async-signal-safe: kill every child's process group and reap it. */
static void kill_children(void)
{
    for (int i = 0; i < MAX_CHILDREN; i++) {
        pid_t pid = children[i];
        if (pid > 0) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            children[i] = 0;
        }
    }
}

static bool keep_tmpdir(void)
{
    const char *k = getenv("NERVE_TEST_KEEP");
    return k && *k && strcmp(k, "0") != 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

static void cleanup_at_exit(void)
{
    if (getpid() != main_pid)
        return;
    kill_children();
    if (tmpdir[0] == '\0')
        return;
    if (keep_tmpdir())
        fprintf(stderr, "harness: kept %s\n", tmpdir);
    else
        nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void on_fatal_signal(int sig)
{
    kill_children();
    if (tmpdir[0] != '\0' && !keep_tmpdir()) {
        pid_t pid = fork();
        if (pid == 0) {
            char *const argv[] = { "rm", "-rf", tmpdir, NULL };
            execv("/bin/rm", argv);
            _exit(127);
        }
        if (pid > 0)
            waitpid(pid, NULL, 0);
    }
    raise(sig);                 /* SA_RESETHAND: the default action now */
}

void h_init(void)
{
    if (initialised)
        return;
    initialised = true;
    main_pid = getpid();
    setvbuf(stdout, NULL, _IOLBF, 0);

    snprintf(tmpdir, sizeof tmpdir, "/tmp/nerve-it-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        fprintf(stderr, "harness: mkdtemp: %s\n", strerror(errno));
        abort();
    }
    const char *root = getenv("NERVE_ROOT");
    if (root && *root)
        snprintf(rootdir, sizeof rootdir, "%s", root);
    else if (getcwd(rootdir, sizeof rootdir) == NULL)
        snprintf(rootdir, sizeof rootdir, ".");
    atexit(cleanup_at_exit);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    const int fatal[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV,
                          SIGBUS, SIGFPE, SIGILL, SIGALRM };
    for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
        sigaction(fatal[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "harness: curl_global_init failed\n");
        abort();
    }
}

const char *h_tmpdir(void)
{
    h_init();
    return tmpdir;
}

double h_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double h_deadline(int ms)
{
    return h_now() + ms / 1000.0;
}

bool h_before(double deadline)
{
    return h_now() < deadline;
}

void h_nap(void)
{
    struct timespec ts = { 0, 5 * 1000 * 1000 };
    nanosleep(&ts, NULL);
}

void h_fail_at(const char *file, int line, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    print_error("%s\n", msg);
    _fail(file, line);
}

/* The strings of AP up to its NULL, at most MAX of them, into OUT; how many. */
static size_t va_strings(va_list ap, const char **out, size_t max)
{
    size_t n = 0;
    const char *s;
    while ((s = va_arg(ap, const char *)) != NULL && n < max)
        out[n++] = s;
    return n;
}

/* --- logs --------------------------------------------------------------- */

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* Print the last LINES lines of PATH written after offset FROM. */
static void print_tail(const char *title, const char *path, long from, int lines)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        printf("--- %s: %s: %s\n", title, path, strerror(errno));
        return;
    }
    long size = file_size(path);
    if (from < 0 || from > size)
        from = 0;
    size_t n = (size_t)(size - from);
    char *buf = malloc(n + 1);
    if (buf == NULL || fseek(f, from, SEEK_SET) != 0) {
        free(buf);
        fclose(f);
        return;
    }
    n = fread(buf, 1, n, f);
    buf[n] = '\0';
    fclose(f);

    const char *end = buf + n;
    if (end > buf && end[-1] == '\n')
        end--;
    const char *start = end;
    int seen = 0;
    while (start > buf && !(start[-1] == '\n' && ++seen == lines))
        start--;
    printf("--- %s (%s), last %d lines:\n", title, path, lines);
    for (const char *p = start; p < end; ) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        int len = nl ? (int)(nl - p) : (int)(end - p);
        printf("  | %.*s\n", len, p);
        p += len + 1;
    }
    printf("--- end of %s\n", title);
    free(buf);
}

static void note_test_log(const char *path, long from)
{
    if (!in_test || n_test_logs >= MAX_TRACKED)
        return;
    snprintf(test_logs[n_test_logs].log, sizeof test_logs[0].log, "%s", path);
    test_logs[n_test_logs].from = from;
    n_test_logs++;
}

/* --- children ---------------------------------------------------------- */

/* The environment for a child: ours minus the variables that would steer the
 * daemon (config overrides, secrets) or a preloaded libstdbuf, plus EXTRA
 * (NULL-terminated "NAME=value" strings; NULL: none). The array is the
 * caller's to free; its strings are not copied. */
static char **child_env(const char *const *extra)
{
    static const char *const drop[] = {
        "REDIS_URL=", "NERVE_LISTEN=", "NERVE_RULES_DIR=", "NERVE_PANIC_URL=",
        "NERVE_ADMIN_TOKEN=", "NERVE_PANIC_TOKEN=", "NERVE_LEDGER_URL=", "_STDBUF_I=", "_STDBUF_O=",
        "NOTIFY_SOCKET=", /* a test runner under systemd: its manager is not ours */
        "_STDBUF_E=", "NERVE_ADMIN_TOKENS=", "NERVE_RESUME_URL=",
    };
    size_t n = 0, nx = 0;
    while (environ[n])
        n++;
    while (extra && extra[nx])
        nx++;
    char **env = calloc(n + nx + 1, sizeof *env);
    if (env == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool skip = false;
        for (size_t j = 0; j < sizeof drop / sizeof drop[0]; j++)
            if (strncmp(environ[i], drop[j], strlen(drop[j])) == 0)
                skip = true;
        if (strncmp(environ[i], "LD_PRELOAD=", 11) == 0 && strstr(environ[i], "libstdbuf"))
            skip = true;
        if (!skip)
            env[k++] = environ[i];
    }
    for (size_t i = 0; i < nx; i++)
        env[k++] = (char *)extra[i];
    env[k] = NULL;
    return env;
}

/* Fork ARGV[0] (a path, or a name looked up in PATH) with ENV, in directory
 * CWD, stdin /dev/null, stdout appended to LOG and stderr to ERRLOG (NULL:
 * LOG too). Returns the pid or -1 (the reason printed). */
static pid_t spawn(char *const argv[], char *const env[], const char *log, const char *errlog,
                   const char *cwd)
{
    pid_t parent = getpid();
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "harness: %s: %s\n", log, strerror(errno));
        return -1;
    }
    int efd = errlog ? open(errlog, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : fd;
    if (efd < 0) {
        fprintf(stderr, "harness: %s: %s\n", errlog, strerror(errno));
        close(fd);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        close(fd);
        if (efd != fd)
            close(efd);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0)
            dup2(in, 0);
        dup2(fd, 1);
        dup2(efd, 2);
        close_range(3, ~0U, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (cwd && chdir(cwd) != 0) {
            dprintf(2, "harness: chdir %s: %s\n", cwd, strerror(errno));
            _exit(127);
        }
        execvpe(argv[0], argv, env);
        dprintf(2, "harness: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    close(fd);
    if (efd != fd)
        close(efd);
    track_child(pid);
    return pid;
}

/* Reap PID if it exited: 1 with *STATUS set, 0 while it runs. */
static int reaped(pid_t pid, int *status)
{
    pid_t w = waitpid(pid, status, WNOHANG);
    if (w == pid || (w < 0 && errno == ECHILD)) {
        untrack_child(pid);
        return 1;
    }
    return 0;
}

/* SIGTERM (to the group), wait up to MS, then SIGKILL. Returns the wait
 * status, and *KILLED when SIGKILL was needed. */
static int terminate(pid_t pid, int ms, bool *killed)
{
    int status = 0;
    *killed = false;
    if (reaped(pid, &status))
        return status;
    kill(pid, SIGTERM);
    double dl = h_deadline(ms);
    while (h_before(dl)) {
        if (reaped(pid, &status))
            return status;
        h_nap();
    }
    *killed = true;
    /* A process that ignored SIGTERM for MS is a bug to find: every
     * thread's stack first, when gdb is there (CI runs are not repeatable). */
    char cmd[160];
    snprintf(cmd, sizeof cmd,
             "command -v gdb >/dev/null && timeout 30 gdb -batch -nx -p %d "
             "-ex 'thread apply all bt 12' 2>/dev/null | grep -E '^(Thread|#)' | head -400",
             (int)pid);
    printf("harness: pid %d still running %d ms after SIGTERM; its threads:\n", (int)pid, ms);
    fflush(stdout);
    if (system(cmd) == -1)
        printf("harness: (no stacks: %s)\n", strerror(errno));
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    untrack_child(pid);
    return status;
}

static void describe_status(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "wait status %#x", status);
}

/* Bind 127.0.0.1:PORT (0: the kernel's pick) and release it: the port, or -1. */
static int try_port(int want)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)want);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

int h_free_port(void)
{
    return try_port(0);
}

/* A free port for a cluster node: its cluster bus listens 10000 above it,
 * so the port must be at most 55535 and that one free too. */
static int free_cluster_port(void)
{
    for (int i = 0; i < 200; i++) {
        int p = h_free_port();
        if (p > 0 && p <= 55535 && try_port(p + 10000) == p + 10000)
            return p;
    }
    return -1;
}

static void track(void **table, void *obj)
{
    for (int i = 0; i < MAX_TRACKED; i++) {
        if (table[i] == NULL) {
            table[i] = obj;
            return;
        }
    }
}

static void untrack(void **table, void *obj)
{
    for (int i = 0; i < MAX_TRACKED; i++)
        if (table[i] == obj)
            table[i] = NULL;
}

/* --- redis-server ------------------------------------------------------ */

static redisContext *connect_port(int port, int timeout_ms)
{
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c == NULL)
        return NULL;
    if (c->err) {
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

/* 1 when the redis on PORT answers PING and is process PID, 0 not yet. */
static int redis_ready(int port, pid_t pid)
{
    redisContext *c = connect_port(port, 500);
    if (c == NULL)
        return 0;
    int ok = 0;
    redisReply *rep = redisCommand(c, "PING");
    if (rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0) {
        freeReplyObject(rep);
        rep = redisCommand(c, "INFO server");
        const char *p = rep && rep->type == REDIS_REPLY_STRING ? strstr(rep->str, "process_id:") : NULL;
        ok = p && strtol(p + 11, NULL, 10) == (long)pid;
    }
    if (rep)
        freeReplyObject(rep);
    redisFree(c);
    return ok;
}

/* Launch on R->port and wait for PING. 0, or -1 with the log printed. */
static int redis_launch(h_redis *r)
{
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    char *argv[24];
    int n = 0;
    const char *bin = getenv("REDIS_SERVER");
    if (r->sentinel) {
        /* Debian's redis-sentinel, with the config file it needs (and
         * rewrites) in its directory, the cwd. */
        argv[n++] = "redis-sentinel";
        argv[n++] = "sentinel.conf";
    } else {
        argv[n++] = (char *)(bin && *bin ? bin : "redis-server");
    }
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--dir";
    argv[n++] = r->dir;
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = r->aof ? "yes" : "no";
    if (r->aof) {
        argv[n++] = "--appendfsync";
        argv[n++] = "always";
    }
    if (r->cluster) {
        argv[n++] = "--cluster-enabled";
        argv[n++] = "yes";
        argv[n++] = "--cluster-config-file";
        argv[n++] = "nodes.conf";
    }
    argv[n++] = "--daemonize";
    argv[n++] = "no";
    argv[n] = NULL;

    char **env = child_env(NULL);
    long from = file_size(r->log);
    pid_t pid = env ? spawn(argv, env, r->log, NULL, r->dir) : -1;
    free(env);
    if (pid < 0)
        return -1;

    double dl = h_deadline(START_TIMEOUT_MS);
    int status;
    while (h_before(dl)) {
        if (reaped(pid, &status)) {
            char why[128];
            describe_status(status, why, sizeof why);
            printf("harness: redis-server on port %d exited (%s)\n", r->port, why);
            print_tail("redis log", r->log, from, 10);
            return -1;
        }
        if (redis_ready(r->port, pid)) {
            r->pid = pid;
            r->paused = false;
            return 0;
        }
        h_nap();
    }
    printf("harness: redis-server on port %d did not answer PING within %d ms\n",
           r->port, START_TIMEOUT_MS);
    print_tail("redis log", r->log, from, 10);
    bool killed;
    terminate(pid, 0, &killed);
    return -1;
}

static h_redis *redis_start(bool aof, bool cluster, const char *sentinel_conf)
{
    static int seq;
    h_init();
    h_redis *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->aof = aof;
    r->cluster = cluster;
    r->sentinel = sentinel_conf != NULL;
    r->owned = in_test;
    snprintf(r->dir, sizeof r->dir, "%s/redis-%d", tmpdir, ++seq);
    snprintf(r->log, sizeof r->log, "%s/redis.log", r->dir);
    if (mkdir(r->dir, 0700) != 0) {
        printf("harness: mkdir %s: %s\n", r->dir, strerror(errno));
        free(r);
        return NULL;
    }
    if (sentinel_conf) {
        char conf[PATH_MAX];
        snprintf(conf, sizeof conf, "%s/sentinel.conf", r->dir);
        FILE *f = fopen(conf, "w");
        if (f == NULL || fputs(sentinel_conf, f) < 0 || fclose(f) != 0) {
            printf("harness: %s: %s\n", conf, strerror(errno));
            free(r);
            return NULL;
        }
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        r->port = cluster ? free_cluster_port() : h_free_port();
        if (r->port > 0 && redis_launch(r) == 0) {
            track((void **)redis_live, r);
            return r;
        }
    }
    printf("harness: could not start redis-server (is it installed? REDIS_SERVER=path)\n");
    free(r);
    return NULL;
}

h_redis *h_redis_start(bool aof)
{
    return redis_start(aof, false, NULL);
}

h_redis *h_redis_start_cluster_node(void)
{
    return redis_start(false, true, NULL);
}

h_redis *h_redis_start_sentinel(const char *conf)
{
    return redis_start(false, false, conf);
}

int h_redis_stop(h_redis *r)
{
    if (r == NULL || r->pid == 0)
        return 0;
    if (r->ctx) {
        redisFree(r->ctx);
        r->ctx = NULL;
    }
    if (r->paused)
        h_redis_resume(r);
    bool killed;
    int status = terminate(r->pid, STOP_TIMEOUT_MS, &killed);
    r->pid = 0;
    if (killed || !WIFEXITED(status)) {
        char why[128];
        describe_status(status, why, sizeof why);
        printf("harness: redis-server on port %d: %s%s\n", r->port, why,
               killed ? " (did not stop on SIGTERM)" : "");
        return -1;
    }
    return 0;
}

int h_redis_pause(h_redis *r)
{
    if (r == NULL || r->pid == 0 || kill(-r->pid, SIGSTOP) != 0)
        return -1;
    r->paused = true;
    return 0;
}

int h_redis_resume(h_redis *r)
{
    if (r == NULL || r->pid == 0 || kill(-r->pid, SIGCONT) != 0)
        return -1;
    r->paused = false;
    return 0;
}

int h_redis_restart(h_redis *r)
{
    if (r == NULL)
        return -1;
    if (r->pid != 0 && h_redis_stop(r) != 0)
        return -1;
    return redis_launch(r);
}

void h_redis_free(h_redis *r)
{
    if (r == NULL)
        return;
    h_redis_stop(r);
    untrack((void **)redis_live, r);
    free(r);
}

const char *h_redis_url(const h_redis *r, char *buf, size_t len)
{
    snprintf(buf, len, "redis://127.0.0.1:%d/0", r->port);
    return buf;
}

redisContext *h_redis_connect(const h_redis *r)
{
    redisContext *c = connect_port(r->port, 5000);
    if (c == NULL)
        printf("harness: cannot connect to redis on port %d\n", r->port);
    return c;
}

redisReply *h_redis_cmd(h_redis *r, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (r->ctx == NULL && (r->ctx = h_redis_connect(r)) == NULL)
            return NULL;
        va_list ap;
        va_start(ap, fmt);
        redisReply *rep = redisvCommand(r->ctx, fmt, ap);
        va_end(ap);
        if (rep)
            return rep;
        redisFree(r->ctx);          /* broken (redis restarted): reconnect */
        r->ctx = NULL;
    }
    return NULL;
}

int h_redis_get_ll(h_redis *r, const char *key, long long *v)
{
    redisReply *rep = h_redis_cmd(r, "GET %s", key);
    if (rep == NULL)
        return -1;
    int rc = -1;
    if (rep->type == REDIS_REPLY_NIL) {
        rc = 1;
    } else if (rep->type == REDIS_REPLY_STRING) {
        char *end;
        errno = 0;
        long long x = strtoll(rep->str, &end, 10);
        if (errno == 0 && end != rep->str && *end == '\0') {
            *v = x;
            rc = 0;
        }
    }
    freeReplyObject(rep);
    return rc;
}

/* --- the daemon -------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static size_t buf_add(buf *b, const char *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

static size_t on_data(char *data, size_t size, size_t nmemb, void *ud)
{
    return buf_add(ud, data, size * nmemb);
}


const char *h_nerve_bin(void)
{
    static char path[PATH_MAX];
    const char *b = getenv("NERVE_BIN");
    if (b == NULL || *b == '\0')
        b = "./nerve";
    if (path[0] == '\0' && realpath(b, path) == NULL)
        return b;
    return path;
}

/* 1 when GET /healthz answers 200. */
static int healthy(const h_daemon *d)
{
    CURL *h = curl_easy_init();
    if (h == NULL)
        return 0;
    char url[128];
    snprintf(url, sizeof url, "%s/healthz", d->base);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L);
    buf sink = { 0 };
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
    long code = 0;
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(h);
    free(sink.p);
    return code == 200;
}

/* 1 when PATH, from offset FROM on, contains WHAT (case-insensitive). */
static int log_mentions(const char *path, long from, const char *what)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    char line[4096];
    int found = 0;
    if (fseek(f, from, SEEK_SET) == 0)
        while (!found && fgets(line, sizeof line, f))
            found = strcasestr(line, what) != NULL;
    fclose(f);
    return found;
}

/* Launch once on D->port. 1 ready, 0 exited early (maybe a port race),
 * -1 when it failed otherwise (exited, or alive but not healthy in time:
 * killed). */
static int daemon_launch(h_daemon *d, const h_redis *r, const char *const *extra_env,
                         const char *const *sets, size_t nsets)
{
    char listen[64], url[64], ledger[256];
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", d->port);
    /* One ledger per redis (a fleet shares one), in its directory: never the
     * default nerve-ledger.db in the checkout. SETS may override it. */
    snprintf(ledger, sizeof ledger, "ledger.path=%s/ledger.db", r->dir);
    snprintf(url, sizeof url, "redis.url=");
    h_redis_url(r, url + strlen(url), sizeof url - strlen(url));
    snprintf(d->base, sizeof d->base, "http://127.0.0.1:%d", d->port);

    size_t max = 14 + 2 * nsets;
    char **argv = calloc(max, sizeof *argv);
    if (argv == NULL)
        return -1;
    size_t n = 0;
    argv[n++] = (char *)h_nerve_bin();
    argv[n++] = "serve";
    argv[n++] = "-c";
    argv[n++] = "config/nerve.yaml";
    argv[n++] = "--set";
    argv[n++] = listen;
    argv[n++] = "--set";
    argv[n++] = url;
    argv[n++] = "--set";
    argv[n++] = "server.pidfile=";
    argv[n++] = "--set";
    argv[n++] = ledger;
    for (size_t i = 0; i < nsets; i++) {
        argv[n++] = "--set";
        argv[n++] = (char *)sets[i];
    }
    argv[n] = NULL;

    char **env = child_env(extra_env);
    long from = file_size(d->log);
    {
        FILE *f = fopen(d->log, "a");
        if (f) {
            fprintf(f, "### harness:");
            for (size_t i = 0; i < n; i++)
                fprintf(f, " %s", argv[i][0] ? argv[i] : "''");
            fprintf(f, "\n");
            fclose(f);
        }
    }
    pid_t pid = env ? spawn(argv, env, d->log, NULL, rootdir) : -1;
    free(env);
    free(argv);
    if (pid < 0)
        return -1;
    d->pid = pid;

    double dl = h_deadline(START_TIMEOUT_MS);
    int status;
    while (h_before(dl)) {
        if (reaped(pid, &status)) {
            char why[128];
            describe_status(status, why, sizeof why);
            printf("harness: %s exited before /healthz answered (%s)\n", h_nerve_bin(), why);
            print_tail("daemon log", d->log, from, TAIL_LINES);
            d->pid = 0;
            return log_mentions(d->log, from, "in use") ? 0 : -1;
        }
        if (healthy(d))
            return 1;
        h_nap();
    }
    printf("harness: daemon on port %d: no 200 from /healthz within %d ms\n",
           d->port, START_TIMEOUT_MS);
    bool killed;
    terminate(pid, 2000, &killed);
    print_tail("daemon log", d->log, from, TAIL_LINES);
    d->pid = 0;
    return -1;
}

h_daemon *h_daemon_start_env(const h_redis *r, const char *const *env,
                             const char *const *sets, size_t nsets)
{
    static int seq;
    h_init();
    if (access(h_nerve_bin(), X_OK) != 0) {
        printf("harness: NERVE_BIN %s: %s\n", h_nerve_bin(), strerror(errno));
        return NULL;
    }
    h_daemon *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->owned = in_test;
    snprintf(d->log, sizeof d->log, "%s/nerve-%d.log", tmpdir, ++seq);
    for (int attempt = 0; attempt < 3; attempt++) {
        d->port = h_free_port();
        if (d->port <= 0)
            continue;
        int rc = daemon_launch(d, r, env, sets, nsets);
        if (rc == 1) {
            track((void **)daemon_live, d);
            note_test_log(d->log, 0);
            return d;
        }
        if (rc < 0)
            break;
    }
    free(d);
    return NULL;
}

h_daemon *h_daemon_startv(const h_redis *r, bool admin_token,
                          const char *const *sets, size_t nsets)
{
    static const char *const token[] = { "NERVE_ADMIN_TOKEN=" H_ADMIN_TOKEN, NULL };
    return h_daemon_start_env(r, admin_token ? token : NULL, sets, nsets);
}

h_daemon *h_daemon_start(const h_redis *r, ...)
{
    const char *sets[64];
    va_list ap;
    va_start(ap, r);
    size_t n = va_strings(ap, sets, 64);
    va_end(ap);
    return h_daemon_startv(r, true, sets, n);
}

int h_daemon_alive(h_daemon *d)
{
    int status;
    if (d == NULL || d->pid == 0)
        return 0;
    if (reaped(d->pid, &status)) {
        char why[128];
        describe_status(status, why, sizeof why);
        printf("harness: daemon on port %d died: %s\n", d->port, why);
        d->pid = 0;
        return 0;
    }
    return 1;
}

int h_daemon_stop(h_daemon *d)
{
    if (d == NULL)
        return -1;
    untrack((void **)daemon_live, d);
    int rc = -1;
    if (d->pid != 0) {
        bool killed;
        int status = terminate(d->pid, STOP_TIMEOUT_MS, &killed);
        d->pid = 0;
        if (!killed && WIFEXITED(status))
            rc = WEXITSTATUS(status);
        if (rc != 0) {
            char why[128];
            describe_status(status, why, sizeof why);
            printf("harness: daemon on port %d after SIGTERM: %s%s\n", d->port, why,
                   killed ? " (still running after 20 s: killed)" : "");
            h_daemon_log_tail(d, TAIL_LINES);
        }
    } else {
        printf("harness: daemon on port %d had already exited\n", d->port);
        h_daemon_log_tail(d, TAIL_LINES);
    }
    free(d);
    return rc;
}

void h_daemon_log_tail(const h_daemon *d, int lines)
{
    if (d)
        print_tail("daemon log", d->log, 0, lines);
}

/* --- one-shot commands ------------------------------------------------- */

int h_run_cmd(char *const argv[], const char *log, int timeout_ms)
{
    h_init();
    char **env = child_env(NULL);
    pid_t pid = env ? spawn(argv, env, log, NULL, tmpdir) : -1;
    free(env);
    if (pid < 0)
        return -1;
    double dl = h_deadline(timeout_ms);
    int status;
    while (h_before(dl)) {
        if (reaped(pid, &status))
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        h_nap();
    }
    bool killed;
    terminate(pid, 0, &killed);
    printf("harness: %s did not finish within %d ms: killed\n", argv[0], timeout_ms);
    return -1;
}

int h_run_nerve(h_run *r, int timeout_ms, const char *const *env, const char *const *args)
{
    static int seq;
    h_init();
    memset(r, 0, sizeof *r);
    r->status = -1;
    char out[PATH_MAX], err[PATH_MAX];
    seq++;
    snprintf(out, sizeof out, "%s/run-%d.out", tmpdir, seq);
    snprintf(err, sizeof err, "%s/run-%d.err", tmpdir, seq);
    size_t n = 0;
    while (args[n])
        n++;
    char **argv = calloc(n + 2, sizeof *argv);
    char **envp = child_env(env);
    pid_t pid = -1;
    if (argv && envp) {
        argv[0] = (char *)h_nerve_bin();
        for (size_t i = 0; i < n; i++)
            argv[i + 1] = (char *)args[i];
        pid = spawn(argv, envp, out, err, rootdir);
    }
    free(argv);
    free(envp);
    if (pid < 0) {
        r->out = strdup("");
        r->err = strdup("harness: could not start nerve (the reason is printed above)\n");
        return -1;
    }
    int status = 0;
    bool done;
    double dl = h_deadline(timeout_ms);
    while (!(done = reaped(pid, &status)) && h_before(dl))
        h_nap();
    if (!done) {
        r->timed_out = true;
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        untrack_child(pid);
    } else if (WIFEXITED(status)) {
        r->status = WEXITSTATUS(status);
    }
    char *o = h_read_file(out), *e = h_read_file(err);
    r->out = o ? o : strdup("");
    r->err = e ? e : strdup("");
    r->json = cJSON_Parse(r->out);
    return r->status;
}

void h_run_free(h_run *r)
{
    if (r == NULL)
        return;
    free(r->out);
    free(r->err);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

/* --- per test ---------------------------------------------------------- */

int h_test_setup(void **state)
{
    (void)state;
    h_init();
    in_test = true;
    test_passed = false;
    n_test_logs = 0;
    for (int i = 0; i < MAX_TRACKED; i++)
        if (daemon_live[i])
            note_test_log(daemon_live[i]->log, file_size(daemon_live[i]->log));
    return 0;
}

void h_pass(void)
{
    test_passed = true;
}

int h_test_teardown(void **state)
{
    (void)state;
    if (!test_passed)
        for (int i = 0; i < n_test_logs; i++)
            print_tail("daemon log", test_logs[i].log, test_logs[i].from, TAIL_LINES);
    for (int i = 0; i < MAX_TRACKED; i++)
        if (redis_live[i] && redis_live[i]->paused)
            h_redis_resume(redis_live[i]);
    for (int i = 0; i < MAX_TRACKED; i++) {
        h_daemon *d = daemon_live[i];
        if (d && d->owned)
            h_daemon_stop(d);
    }
    for (int i = 0; i < MAX_TRACKED; i++)
        if (loads_live[i])          /* left running by a failed test */
            run_finish(loads_live[i], NULL, NULL);
    h_sub_close_all();
    for (int i = 0; i < MAX_TRACKED; i++) {
        h_redis *r = redis_live[i];
        if (r && r->owned)
            h_redis_free(r);
    }
    in_test = false;
    n_test_logs = 0;
    return 0;
}

/* --- HTTP -------------------------------------------------------------- */

/* Set up H for METHOD URL with BODY (NULL = none) and the header list. */
static void prepare(CURL *h, const char *method, const char *url, const char *body,
                    struct curl_slist *hdrs, buf *out, buf *hout, char *errbuf,
                    long timeout_ms)
{
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, hout);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    } else {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    if (strcmp(method, body ? "POST" : "GET") != 0)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    else
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, NULL);
}

static struct curl_slist *base_headers(bool has_body, const char *const *extra, size_t n)
{
    struct curl_slist *l = curl_slist_append(NULL, "Expect:");
    bool ct = false;
    for (size_t i = 0; i < n; i++) {
        l = curl_slist_append(l, extra[i]);
        if (strncasecmp(extra[i], "Content-Type:", 13) == 0)
            ct = true;
    }
    if (has_body && !ct)
        l = curl_slist_append(l, "Content-Type: application/json");
    return l;
}

long h_http(const h_daemon *d, const char *method, const char *path,
            const char *body, h_resp *r, ...)
{
    h_init();
    memset(r, 0, sizeof *r);
    const char *extra[32];
    va_list ap;
    va_start(ap, r);
    size_t n = va_strings(ap, extra, 32);
    va_end(ap);

    CURL *h = curl_easy_init();
    if (h == NULL) {
        snprintf(r->err, sizeof r->err, "curl_easy_init failed");
        return 0;
    }
    struct curl_slist *hdrs = base_headers(body != NULL, extra, n);
    char url[4096];
    snprintf(url, sizeof url, "%s%s", d ? d->base : "http://127.0.0.1:1", path);
    buf out = { 0 }, hout = { 0 };
    char errbuf[CURL_ERROR_SIZE] = "";
    prepare(h, method, url, body, hdrs, &out, &hout, errbuf, 30000);
    curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L);

    double t0 = h_now();
    CURLcode cc = curl_easy_perform(h);
    r->secs = h_now() - t0;
    if (cc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    } else {
        snprintf(r->err, sizeof r->err, "%.16s %.64s: %.160s", method, path,
                 errbuf[0] ? errbuf : curl_easy_strerror(cc));
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    if (out.p == NULL)
        buf_add(&out, "", 0);
    if (hout.p == NULL)
        buf_add(&hout, "", 0);
    r->body = out.p ? out.p : strdup("");
    r->len = out.len;
    r->headers = hout.p ? hout.p : strdup("");
    r->json = r->body ? cJSON_Parse(r->body) : NULL;
    return r->status;
}

CURL *h_sale_curl(const h_daemon *d, const char *sku)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *all = hdrs ? curl_slist_append(hdrs, "Expect:") : NULL;
    if (h == NULL || all == NULL) {
        curl_slist_free_all(hdrs);
        if (h != NULL)
            curl_easy_cleanup(h);
        return NULL;
    }
    char url[256], body[256];
    snprintf(url, sizeof url, "%s/sale", d->base);
    snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":1}", sku);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, all);
    curl_easy_setopt(h, CURLOPT_COPYPOSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_PRIVATE, all);      /* freed with the handle */
    return h;
}

void h_sale_curl_free(CURL *h)
{
    if (h == NULL)
        return;
    struct curl_slist *hdrs = NULL;
    curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&hdrs);
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
}

void h_resp_free(h_resp *r)
{
    if (r == NULL)
        return;
    free(r->body);
    free(r->headers);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

static bool header_in(const char *block, const char *name, char *out, size_t outlen)
{
    bool found = false;
    size_t nl = strlen(name);
    for (const char *p = block; p && *p; ) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            const char *e = p + len;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            while (e > v && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
                e--;
            if (out && outlen)
                snprintf(out, outlen, "%.*s", (int)(e - v), v);
            found = true;       /* keep looking: the last response wins */
        }
        p = eol ? eol + 1 : NULL;
    }
    return found;
}

bool h_header(const h_resp *r, const char *name, char *out, size_t outlen)
{
    return r && r->headers && header_in(r->headers, name, out, outlen);
}

static bool json_ct(const char *headers)
{
    char ct[128];
    return header_in(headers, "Content-Type", ct, sizeof ct) &&
           strncasecmp(ct, "application/json", 16) == 0 &&
           (ct[16] == '\0' || ct[16] == ';' || ct[16] == ' ');
}

const char *h_jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

bool h_jll(const cJSON *o, const char *key, long long *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(x))
        return false;
    double d = x->valuedouble;
    if (d != d || d < -9.2e18 || d > 9.2e18 || (double)(long long)d != d)
        return false;
    *v = (long long)d;
    return true;
}

int h_jbool(const cJSON *o, const char *key)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsBool(x))
        return -1;
    return cJSON_IsTrue(x) ? 1 : 0;
}

bool h_jkeys(const cJSON *o, ...)
{
    if (!cJSON_IsObject(o))
        return false;
    int want = 0;
    bool ok = true;
    va_list ap;
    va_start(ap, o);
    const char *k;
    while ((k = va_arg(ap, const char *)) != NULL) {
        want++;
        if (!cJSON_HasObjectItem(o, k))
            ok = false;
    }
    va_end(ap);
    return ok && cJSON_GetArraySize(o) == want;
}

static char *sale_body(const char *sku, long long qty, const char *order_id)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "sku", sku);
    cJSON_AddNumberToObject(o, "qty", (double)qty);
    if (order_id)
        cJSON_AddStringToObject(o, "order_id", order_id);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

long h_sale(const h_daemon *d, const char *path, const char *sku, long long qty,
            const char *order_id, h_resp *r)
{
    char *body = sale_body(sku, qty, order_id);
    long st = h_http(d, "POST", path, body, r, NULL);
    free(body);
    return st;
}

void h_set_stock_at(const h_daemon *d, const char *sku, long long stock,
                    const char *file, int line)
{
    char path[512], body[64];
    snprintf(path, sizeof path, "/admin/stock/%s", sku);
    snprintf(body, sizeof body, "{\"stock\":%lld}", stock);
    h_resp r;
    h_http(d, "PUT", path, body, &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    if (r.status != 200) {
        h_fail_at(file, line, "PUT %s %s: expected 200, got %ld %s %s", path, body,
                  r.status, r.body, r.err);
    }
    h_resp_free(&r);
}

long long h_get_stock_at(const h_daemon *d, const char *sku, const char *file, int line)
{
    char path[512];
    snprintf(path, sizeof path, "/stock/%s", sku);
    h_resp r;
    h_http(d, "GET", path, NULL, &r, NULL);
    long long v = -1;
    if (r.status == 404) {
        h_resp_free(&r);
        return -1;
    }
    const char *s = h_jstr(r.json, "sku");
    if (r.status != 200 || !h_jll(r.json, "stock", &v) || s == NULL || strcmp(s, sku) != 0) {
        h_fail_at(file, line, "GET %s: expected 200 {\"sku\":\"%s\",\"stock\":N}, got %ld %s %s",
                  path, sku, r.status, r.body, r.err);
    }
    h_resp_free(&r);
    return v;
}

const char *h_key(char *out, const char *kind, const char *sku)
{
    keys_sku(out, H_PREFIX, H_PARTITIONS, kind, sku);
    return out;
}

const char *h_order_key(char *out, const char *sku, const char *order_id)
{
    keys_order(out, H_PREFIX, H_PARTITIONS, sku, order_id);
    return out;
}

long long h_redis_stock_at(h_redis *r, const char *sku, const char *file, int line)
{
    char key[RDS_KEY_MAX];
    h_key(key, "stock", sku);
    long long v = -1;
    int rc = h_redis_get_ll(r, key, &v);
    if (rc < 0)
        h_fail_at(file, line, "redis GET %s: error or not an integer", key);
    return rc == 0 ? v : -1;
}

void h_assert_json_at(const h_resp *r, const char *file, int line)
{
    if (r->status == 0)
        h_fail_at(file, line, "request failed: %s", r->err);
    if (!json_ct(r->headers))
        h_fail_at(file, line, "status %ld: Content-Type is not application/json; headers:\n%s",
                  r->status, r->headers);
    if (!cJSON_IsObject(r->json))
        h_fail_at(file, line, "status %ld: body is not a JSON object: %s", r->status, r->body);
}

void h_assert_error_at(const h_resp *r, long status, const char *code,
                       const char *file, int line)
{
    if (r->status != status)
        h_fail_at(file, line, "expected status %ld, got %ld: %s %s", status, r->status,
                  r->body, r->err);
    h_assert_json_at(r, file, line);
    const char *e = h_jstr(r->json, "error");
    const char *m = h_jstr(r->json, "message");
    if (e == NULL || *e == '\0' || (code && strcmp(e, code) != 0))
        h_fail_at(file, line, "expected \"error\": \"%s\", got %s", code ? code : "<any>",
                  r->body);
    if (m == NULL || *m == '\0')
        h_fail_at(file, line, "expected a non-empty \"message\" string, got %s", r->body);
}

/* --- concurrent load ---------------------------------------------------- */

/* Everything the client threads touch lives here, on the heap, never in the
 * caller's h_load: a test that fails while its load runs longjmps out of the
 * frame holding that h_load, and the teardown then joins the threads. */
typedef struct load_thread {
    struct h_load_run *run;
    int k;                      /* this client's number */
} load_thread;

/* Every field below is set before the threads start and read-only after,
 * except the atomics, the records (one writer each) and the mutex. */
struct h_load_run {
    char url[512], health[512];
    char *sku, *order_id, *order_prefix;
    long long qty;
    int requests, clients;
    bool together, serial;
    long timeout_ms;
    pthread_mutex_t one;        /* serial: one request at a time */
    h_sale_rec *recs;
    atomic_int next;
    atomic_int completed;
    atomic_bool stop;
    atomic_int errors_shown;
    pthread_barrier_t barrier;
    bool barrier_ok;
    pthread_t *tids;
    load_thread *lts;
    int started;
    double t0;
};

static void *load_client(void *arg)
{
    load_thread *lt = arg;
    struct h_load_run *run = lt->run;
    int turn = 0;
    CURL *h = curl_easy_init();
    struct curl_slist *hdrs = base_headers(true, NULL, 0);
    char errbuf[CURL_ERROR_SIZE];

    if (run->together) {
        /* Open the keep-alive connection first so the sales race for real. */
        if (h) {
            buf sink = { 0 }, hsink = { 0 };
            prepare(h, "GET", run->health, NULL, hdrs, &sink, &hsink, errbuf, run->timeout_ms);
            curl_easy_perform(h);
            free(sink.p);
            free(hsink.p);
        }
        pthread_barrier_wait(&run->barrier);
    }
    for (;;) {
        if (atomic_load(&run->stop))
            break;
        /* Serial: client k sends requests k, k + clients, ...; else the
         * next request goes to whichever client is free. */
        int i = run->serial ? lt->k + run->clients * turn++ : atomic_fetch_add(&run->next, 1);
        if (i >= run->requests)
            break;
        h_sale_rec *rec = &run->recs[i];
        rec->sent = true;
        char oid[160];
        const char *order = run->order_id;
        if (order == NULL && run->order_prefix) {
            snprintf(oid, sizeof oid, "%s-%d", run->order_prefix, i);
            order = oid;
        }
        char *body = sale_body(run->sku, run->qty, order);
        buf out = { 0 }, hout = { 0 };
        errbuf[0] = '\0';
        if (h == NULL || body == NULL) {
            free(body);
            atomic_fetch_add(&run->completed, 1);
            continue;
        }
        prepare(h, "POST", run->url, body, hdrs, &out, &hout, errbuf, run->timeout_ms);
        if (run->serial)
            pthread_mutex_lock(&run->one);
        double t0 = h_now();
        CURLcode cc = curl_easy_perform(h);
        rec->secs = h_now() - t0;
        if (run->serial)
            pthread_mutex_unlock(&run->one);
        if (cc == CURLE_OK)
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &rec->status);
        else if (atomic_fetch_add(&run->errors_shown, 1) < 5)
            fprintf(stderr, "load: request %d: %s\n", i,
                    errbuf[0] ? errbuf : curl_easy_strerror(cc));
        rec->body = out.p ? out.p : strdup("");
        rec->json_ct = hout.p && json_ct(hout.p);
        rec->retry_after = hout.p && header_in(hout.p, "Retry-After", NULL, 0);
        free(hout.p);
        free(body);
        atomic_fetch_add(&run->completed, 1);
    }
    curl_slist_free_all(hdrs);
    if (h)
        curl_easy_cleanup(h);
    return NULL;
}

static void free_recs(h_sale_rec *recs, int n)
{
    if (recs == NULL)
        return;
    for (int i = 0; i < n; i++) {
        free(recs[i].body);
        cJSON_Delete(recs[i].json);
    }
    free(recs);
}

/* Join RUN's threads and free it; the records go to the caller when RECS is
 * not NULL, else they are freed. */
static void run_finish(struct h_load_run *run, h_sale_rec **recs, double *secs)
{
    for (int i = 0; i < run->started; i++)
        pthread_join(run->tids[i], NULL);
    if (secs)
        *secs = h_now() - run->t0;
    if (run->barrier_ok)
        pthread_barrier_destroy(&run->barrier);
    untrack((void **)loads_live, run);
    if (recs)
        *recs = run->recs;
    else
        free_recs(run->recs, run->requests);
    pthread_mutex_destroy(&run->one);
    free(run->tids);
    free(run->lts);
    free(run->sku);
    free(run->order_id);
    free(run->order_prefix);
    free(run);
}

int h_load_start(h_load *l)
{
    h_init();
    memset(l->by_status, 0, sizeof l->by_status);
    l->transport_errors = 0;
    l->max_secs = 0;
    l->secs = 0;
    l->recs = NULL;
    l->run = NULL;
    if (l->clients < 1 || l->requests < 0 || l->d == NULL)
        return -1;
    struct h_load_run *run = calloc(1, sizeof *run);
    if (run == NULL)
        return -1;
    snprintf(run->url, sizeof run->url, "%s%s", l->d->base, l->path);
    snprintf(run->health, sizeof run->health, "%s/healthz", l->d->base);
    run->sku = strdup(l->sku);
    run->order_id = l->order_id ? strdup(l->order_id) : NULL;
    run->order_prefix = l->order_prefix ? strdup(l->order_prefix) : NULL;
    run->qty = l->qty;
    run->requests = l->requests;
    run->clients = l->clients;
    run->together = l->together;
    run->serial = l->serial;
    pthread_mutex_init(&run->one, NULL);
    run->timeout_ms = l->timeout_ms > 0 ? l->timeout_ms : 60000;
    run->recs = calloc((size_t)l->requests + 1, sizeof *run->recs);
    run->tids = calloc((size_t)l->clients, sizeof *run->tids);
    run->lts = calloc((size_t)l->clients, sizeof *run->lts);
    atomic_init(&run->next, 0);
    atomic_init(&run->completed, 0);
    atomic_init(&run->stop, false);
    atomic_init(&run->errors_shown, 0);
    run->barrier_ok = pthread_barrier_init(&run->barrier, NULL, (unsigned)l->clients) == 0;
    if (!run->sku || !run->recs || !run->tids || !run->lts || !run->barrier_ok) {
        run_finish(run, NULL, NULL);
        return -1;
    }
    track((void **)loads_live, run);
    run->t0 = h_now();
    for (; run->started < l->clients; run->started++) {
        load_thread *lt = &run->lts[run->started];
        lt->run = run;
        lt->k = run->started;
        if (pthread_create(&run->tids[run->started], NULL, load_client, lt) != 0)
            break;
    }
    if (run->started < l->clients && l->together) {
        /* The barrier would never open: fail loudly rather than hang. */
        fprintf(stderr, "load: only %d of %d threads started\n", run->started, l->clients);
        abort();
    }
    if (run->started == 0) {
        run_finish(run, NULL, NULL);
        return -1;
    }
    l->run = run;
    return 0;
}

int h_load_completed(const h_load *l)
{
    return l->run ? atomic_load(&l->run->completed) : l->requests;
}

void h_load_stop(h_load *l)
{
    if (l->run)
        atomic_store(&l->run->stop, true);
}

int h_load_wait(h_load *l)
{
    if (l->run == NULL)
        return -1;
    run_finish(l->run, &l->recs, &l->secs);
    l->run = NULL;
    l->sent = 0;
    for (int i = 0; i < l->requests; i++) {
        h_sale_rec *rec = &l->recs[i];
        if (!rec->sent)
            continue;
        l->sent++;
        if (rec->status <= 0 || rec->status >= 600)
            l->transport_errors++;
        else
            l->by_status[rec->status]++;
        if (rec->secs > l->max_secs)
            l->max_secs = rec->secs;
        rec->json = rec->body ? cJSON_Parse(rec->body) : NULL;
    }
    return 0;
}

int h_load_run(h_load *l)
{
    if (h_load_start(l) != 0)
        return -1;
    return h_load_wait(l);
}

void h_load_free(h_load *l)
{
    if (l == NULL)
        return;
    if (l->run)
        h_load_wait(l);
    free_recs(l->recs, l->requests);
    l->recs = NULL;
}
