/* test_run_local.c -- `make run`'s wrapper, tests/lib/run-local.sh (issue 13
 * item 10): with no Redis answering on the config's redis.url it starts one,
 * prints a banner once nerve answers (URL, Redis, admin API on or off, curl
 * lines, how to reload), and when the terminal closes (SIGHUP to the
 * wrapper) it stops nerve with SIGTERM (nerve takes SIGHUP for a reload) and
 * then its redis: no orphan. A listen port in use: nerve names it, exits
 * non-zero, and the redis goes too.
 *
 * The wrapper runs in its own session, as under a terminal; nerve and redis
 * are its children, so the test watches their pids (read from its output)
 * until they are gone.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t wrapper, nerve_pid, redis_pid;

/* A config: config/nerve.yaml with redis.url on a port where nothing
 * answers, so that the wrapper starts a redis-server of its own. */
static void write_config(char *path, size_t len)
{
    char *text = h_read_file("config/nerve.yaml");
    assert_non_null(text);
    const char *from = "url: \"redis://127.0.0.1:6379/0\"";
    char *at = strstr(text, from);
    assert_non_null(at);
    char to[64];
    snprintf(to, sizeof to, "url: \"redis://127.0.0.1:%d/0\"", h_free_port());
    size_t cap = strlen(text) + 64;
    char *out = malloc(cap);
    assert_non_null(out);
    snprintf(out, cap, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    H_WRITE_FILE(h_tmpdir(), "run.yaml", out);
    snprintf(path, len, "%s/run.yaml", h_tmpdir());
    free(out);
    free(text);
}

/* Start the wrapper in its own session on LISTEN, output into LOG. */
static void start_wrapper(const char *cfg, const char *listen, const char *log)
{
    char lset[96], pset[PATH_MAX + 32];
    snprintf(lset, sizeof lset, "server.listen=%s", listen);
    snprintf(pset, sizeof pset, "server.pidfile=%s/run.pid", h_tmpdir());
    const char *root = getenv("NERVE_ROOT");
    wrapper = fork();
    assert_true(wrapper >= 0);
    if (wrapper == 0) {
        setsid();
        /* As under a terminal: a runner that ignores SIGINT (a background
         * job) would otherwise pass that on, and bash cannot trap it. */
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || in < 0 || (root && chdir(root) != 0))
            _exit(127);
        dup2(in, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        /* The test's environment minus what would steer nerve elsewhere. */
        unsetenv("REDIS_URL");
        unsetenv("NERVE_LISTEN");
        unsetenv("NERVE_ADMIN_TOKEN");
        unsetenv("NOTIFY_SOCKET");
        execl("/bin/bash", "bash", "tests/lib/run-local.sh", h_nerve_bin(), "serve", "-c", cfg,
              "--set", lset, "--set", pset, "--set", "ledger.enabled=false", (char *)NULL);
        _exit(127);
    }
}

/* The number after NEEDLE in the file LOG, or 0. */
static pid_t pid_after(const char *log, const char *needle)
{
    char *t = h_read_file(log);
    char *at = t ? strstr(t, needle) : NULL;
    pid_t p = at ? (pid_t)atoi(at + strlen(needle)) : 0;
    free(t);
    return p;
}

/* "make run: started redis-server on 127.0.0.1:PORT (pid N, ...": N, or 0. */
static pid_t redis_pid_in(const char *t)
{
    const char *r = t ? strstr(t, "make run: started redis-server on 127.0.0.1:") : NULL;
    const char *p = r ? strstr(r, "(pid ") : NULL;
    return p ? (pid_t)atoi(p + 5) : 0;
}

static bool log_has(const char *log, const char *needle)
{
    char *t = h_read_file(log);
    bool yes = t && strstr(t, needle);
    free(t);
    return yes;
}

static bool gone(pid_t p)
{
    return p <= 0 || (kill(p, 0) != 0 && errno == ESRCH);
}

/* Wait up to MS for the wrapper to exit: its exit status, or -1. */
static int wait_wrapper(int ms)
{
    double dl = h_deadline(ms);
    while (h_before(dl)) {
        int st;
        pid_t r = waitpid(wrapper, &st, WNOHANG);
        if (r == wrapper) {
            wrapper = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        h_nap();
    }
    return -1;
}

static void wait_gone(pid_t p, const char *what, const char *log)
{
    double dl = h_deadline(10000);
    while (!gone(p) && h_before(dl))
        h_nap();
    if (!gone(p)) {
        char *t = h_read_file(log);
        fail_msg("%s (pid %d) still runs 10 s after the wrapper stopped: orphaned\n%s", what,
                 (int)p, t ? t : "");
    }
}

static int teardown(void **state)
{
    /* A failed test: nothing of it outlives the run. */
    if (wrapper > 0) {
        kill(-wrapper, SIGKILL);
        waitpid(wrapper, NULL, 0);
    }
    if (nerve_pid > 0 && !gone(nerve_pid))
        kill(nerve_pid, SIGKILL);
    if (redis_pid > 0 && !gone(redis_pid))
        kill(redis_pid, SIGKILL);
    wrapper = nerve_pid = redis_pid = 0;
    return h_test_teardown(state);
}

/* Start the wrapper, check its banner, then send SIG to the wrapper alone
 * (SIGHUP: the terminal closed; SIGINT: Ctrl-C) and wait for nerve and redis
 * to be gone. */
static void run_and_stop(int sig)
{
    char cfg[PATH_MAX], log[PATH_MAX], listen[48], want[128];
    write_config(cfg, sizeof cfg);
    snprintf(log, sizeof log, "%s/run.log", h_tmpdir());
    int port = h_free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    start_wrapper(cfg, listen, log);

    snprintf(want, sizeof want, "nerve is serving on http://%s (pid ", listen);
    double dl = h_deadline(20000);
    while (!log_has(log, want) && h_before(dl))
        h_nap();
    char *t = h_read_file(log);
    if (!t || !strstr(t, want))
        fail_msg("no banner \"%s\" within 20 s; output:\n%s", want, t ? t : "");
    nerve_pid = pid_after(log, want);
    redis_pid = redis_pid_in(t);
    if (nerve_pid <= 0 || redis_pid <= 0)
        fail_msg("cannot read nerve's and redis' pids from the output:\n%s", t);
    char curl1[128];
    snprintf(curl1, sizeof curl1, "curl -s http://%s/stock/", listen);
    const char *needles[] = { "admin API: off", curl1, "curl -s http://", "/sale -d",
                              "make reload", "started for this run" };
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
        if (!strstr(t, needles[i]))
            fail_msg("the banner should say \"%s\"; output:\n%s", needles[i], t);
    free(t);
    /* nerve answers where the banner says. */
    h_daemon d = { .pid = nerve_pid, .port = port };
    snprintf(d.base, sizeof d.base, "http://%s", listen);
    h_resp r;
    assert_int_equal(h_http(&d, "GET", "/healthz", NULL, &r, NULL), 200);
    h_resp_free(&r);

    assert_int_equal(kill(wrapper, sig), 0);
    int st = wait_wrapper(20000);
    if (st < 0)
        fail_msg("the wrapper still runs 20 s after signal %d", sig);
    wait_gone(nerve_pid, "nerve", log);
    wait_gone(redis_pid, "redis-server", log);
    t = h_read_file(log);
    if (st != 0 || !strstr(t, "signal TERM: shutting down") || strstr(t, "SIGHUP: reloading"))
        fail_msg("signal %d to the wrapper: expected nerve stopped by SIGTERM (not a reload) "
                 "and exit 0, got exit %d; output:\n%s",
                 sig, st, t);
    free(t);
}

static void test_banner_and_sighup(void **state)
{
    (void)state;
    run_and_stop(SIGHUP);
    h_pass();
}

static void test_ctrl_c(void **state)
{
    (void)state;
    run_and_stop(SIGINT);
    h_pass();
}

static void test_port_in_use(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 4), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    char cfg[PATH_MAX], log[PATH_MAX], listen_on[64], want[160];
    write_config(cfg, sizeof cfg);
    snprintf(log, sizeof log, "%s/run-busy.log", h_tmpdir());
    snprintf(listen_on, sizeof listen_on, "127.0.0.1:%d", ntohs(sa.sin_port));
    start_wrapper(cfg, listen_on, log);
    int st = wait_wrapper(20000);
    char *t = h_read_file(log);
    snprintf(want, sizeof want, "server.listen %s: address already in use", listen_on);
    if (st <= 0 || !t || !strstr(t, want) || strstr(t, "nerve is serving"))
        fail_msg("a port in use: expected a non-zero exit, \"%s\" and no banner; got exit %d, "
                 "output:\n%s",
                 want, st, t ? t : "");
    redis_pid = redis_pid_in(t);
    free(t);
    wait_gone(redis_pid, "redis-server", log);
    close(fd);
    h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_banner_and_sighup, h_test_setup, teardown),
        cmocka_unit_test_setup_teardown(test_ctrl_c, h_test_setup, teardown),
        cmocka_unit_test_setup_teardown(test_port_in_use, h_test_setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
