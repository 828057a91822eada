/* test_reload_cli.c -- `nerve reload` reports the outcome of its reload
 * (issue 13 item 6), the daemon tells systemd where it is (sd_notify), a
 * listen port in use is named, and config/nerve.service passes
 * `systemd-analyze verify` when that is installed.
 *
 * `nerve reload` reads GET /rules' last_reload.seq, sends SIGHUP to the pid
 * in server.pidfile and polls GET /rules until the seq moves: "reloaded:
 * generation N (M rules, sha256 ...)" and exit 0, or the FILE:LINE errors on
 * stderr and exit 1. The notify test binds the unix datagram socket the
 * daemon finds in NOTIFY_SOCKET, as systemd does.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static h_redis *redis;

static const char *const GOOD_RULE = "return {\n"
                                     "  name = \"rc_good\",\n"
                                     "  on = { \"test_events\" },\n"
                                     "  evaluate = function(event, ctx) return {} end,\n"
                                     "}\n";

static const char *const BROKEN_RULE = /* syntax error on line 4 */
    "return {\n"
    "  name = \"rc_good\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx) return { action = \"alert\" level = 1 } end,\n"
    "}\n";

static int run_nerve(h_run *r, const char *const *args)
{
    return h_run_nerve(r, 20000, NULL, args);
}

/* A daemon on rules dir NAME (GOOD_RULE) with its pidfile in the temp dir:
 * the pidfile override into PSET, the rules dir into DIR and RSET. */
static h_daemon *start(const char *name, char *dir, size_t dirlen, char *rset, size_t rsetlen,
                       char *pset, size_t psetlen)
{
    H_RULES_DIR(name, "rc.lua", GOOD_RULE, dir, dirlen, rset, rsetlen);
    snprintf(pset, psetlen, "server.pidfile=%s/%s.pid", h_tmpdir(), name);
    return h_daemon_start(redis, rset, pset, "bus.channels=[inventory_events,test_events]", NULL);
}

/* --- 1. success and failure are reported ------------------------------------------ */

static void test_reload_reports_outcome(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], pset[PATH_MAX + 32], listen[64];
    h_daemon *d = start("rc-ok", dir, sizeof dir, rset, sizeof rset, pset, sizeof pset);
    assert_non_null(d);
    /* server.listen as the daemon's: the command finds the API there, no --url. */
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", d->port);
    const char *const args[] = { "reload", "-c", "config/nerve.yaml", "--set", pset,
                                 "--set", rset, "--set", listen, NULL };

    long long g0 = H_GENERATION(d);
    h_run r;
    run_nerve(&r, args);
    char want[96];
    snprintf(want, sizeof want, "reloaded: generation %lld (1 rules, sha256 ", g0 + 1);
    if (r.status != 0 || strncmp(r.out, want, strlen(want)) != 0)
        fail_msg("nerve reload: expected exit 0 and stdout starting \"%s\"; got exit %d\n"
                 "stdout:\n%s\nstderr:\n%s",
                 want, r.status, r.out, r.err);
    /* The reload was over when the command returned: no polling here. */
    assert_int_equal(H_GENERATION(d), g0 + 1);
    h_run_free(&r);

    /* A broken rule: exit 1, the rule's FILE:LINE on stderr, old rules stay. */
    H_WRITE_FILE(dir, "rc.lua", BROKEN_RULE);
    run_nerve(&r, args);
    if (r.status != 1 || strstr(r.err, "rc.lua:4:") == NULL ||
        strstr(r.err, "reload refused") == NULL)
        fail_msg("nerve reload of a broken rule: expected exit 1 with \"reload refused\" and "
                 "\"rc.lua:4:\" on stderr; got exit %d\nstdout:\n%s\nstderr:\n%s",
                 r.status, r.out, r.err);
    h_run_free(&r);
    assert_int_equal(H_GENERATION(d), g0 + 1);

    /* Fixed again: reloaded, the next generation. */
    H_WRITE_FILE(dir, "rc.lua", GOOD_RULE);
    run_nerve(&r, args);
    snprintf(want, sizeof want, "reloaded: generation %lld ", g0 + 2);
    if (r.status != 0 || strncmp(r.out, want, strlen(want)) != 0)
        fail_msg("nerve reload after the fix: expected exit 0 and \"%s\"; got exit %d\n"
                 "stdout:\n%s\nstderr:\n%s",
                 want, r.status, r.out, r.err);
    h_run_free(&r);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 1b. several at once ------------------------------------------------------------ */

#define CONCURRENT 6

/* Six `nerve reload` at once (signals coalesce, reloads queue behind one
 * another): each reports a reload that began after its own signal, so every
 * one exits 0 with a generation past the one before they started and no
 * later than the final one; and last_reload.started_mono_us is on this
 * host's monotonic clock, within the run. */
static void test_concurrent_reloads(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16], pset[PATH_MAX + 32];
    h_daemon *d = start("rc-many", dir, sizeof dir, rset, sizeof rset, pset, sizeof pset);
    assert_non_null(d);
    long long g0 = H_GENERATION(d);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t kids[CONCURRENT];
    char outs[CONCURRENT][PATH_MAX];
    const char *root = getenv("NERVE_ROOT");
    for (int i = 0; i < CONCURRENT; i++) {
        snprintf(outs[i], sizeof outs[i], "%s/many-%d.out", h_tmpdir(), i);
        kids[i] = fork();
        assert_true(kids[i] >= 0);
        if (kids[i] == 0) {
            int fd = open(outs[i], O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0 || (root && chdir(root) != 0))
                _exit(127);
            dup2(fd, 1);
            dup2(fd, 2);
            execl(h_nerve_bin(), "nerve", "reload", "-c", "config/nerve.yaml", "--set", pset,
                  "--set", rset, "--url", d->base, (char *)NULL);
            _exit(127);
        }
    }
    int status[CONCURRENT];
    int left = CONCURRENT;
    double dl = h_deadline(30000);
    while (left && h_before(dl)) {
        for (int i = 0; i < CONCURRENT; i++)
            if (kids[i] && waitpid(kids[i], &status[i], WNOHANG) == kids[i]) {
                kids[i] = 0;
                left--;
            }
        if (left)
            h_nap();
    }
    for (int i = 0; i < CONCURRENT; i++)
        if (kids[i]) {
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
            fail_msg("nerve reload %d still runs after 30 s", i);
        }
    long long gend = H_GENERATION(d);
    for (int i = 0; i < CONCURRENT; i++) {
        char *t = h_read_file(outs[i]);
        long long g = -1;
        const char *at = t ? strstr(t, "reloaded: generation ") : NULL;
        if (at)
            g = atoll(at + strlen("reloaded: generation "));
        if (!WIFEXITED(status[i]) || WEXITSTATUS(status[i]) != 0 || g <= g0 || g > gend)
            fail_msg("concurrent nerve reload %d: expected exit 0 and a generation in %lld..%lld; "
                     "output:\n%s",
                     i, g0 + 1, gend, t ? t : "");
        free(t);
    }
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    h_resp r;
    assert_int_equal(h_http(d, "GET", "/rules", NULL, &r, NULL), 200);
    const cJSON *last = cJSON_GetObjectItemCaseSensitive(r.json, "last_reload");
    long long started = -1, seq = -1;
    assert_true(h_jll(last, "started_mono_us", &started));
    assert_true(h_jll(last, "seq", &seq));
    long long us0 = (long long)t0.tv_sec * 1000000 + t0.tv_nsec / 1000;
    long long us1 = (long long)t1.tv_sec * 1000000 + t1.tv_nsec / 1000;
    if (started < us0 || started > us1 || seq != gend - g0)
        fail_msg("last_reload: started_mono_us %lld should be within %lld..%lld and seq %lld "
                 "equal the %lld reloads run",
                 started, us0, us1, seq, gend - g0);
    h_resp_free(&r);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 2. no daemon, no API: clear messages, exit 1 ---------------------------------- */

static void expect_fail(const char *what, const char *const *args, const char *needle)
{
    h_run r;
    run_nerve(&r, args);
    if (r.status != 1 || strstr(r.err, needle) == NULL)
        fail_msg("%s: expected exit 1 and \"%s\" on stderr; got exit %d\nstdout:\n%s\nstderr:\n%s",
                 what, needle, r.status, r.out, r.err);
    h_run_free(&r);
}

static void test_reload_without_daemon(void **state)
{
    (void)state;
    expect_fail("no server.pidfile",
                (const char *const[]){ "reload", "-c", "config/nerve.yaml", NULL },
                "server.pidfile is not set");

    char none[PATH_MAX + 32];
    snprintf(none, sizeof none, "server.pidfile=%s/none.pid", h_tmpdir());
    expect_fail("a missing pidfile",
                (const char *const[]){ "reload", "-c", "config/nerve.yaml", "--set", none, NULL },
                "no running daemon");

    /* A stale pidfile: a pid that is gone (a reaped child of ours). */
    pid_t gone = fork();
    if (gone == 0)
        _exit(0);
    assert_true(gone > 0);
    int st;
    assert_int_equal(waitpid(gone, &st, 0), gone);
    char text[32], stale[PATH_MAX + 32];
    snprintf(text, sizeof text, "%d\n", (int)gone);
    H_WRITE_FILE(h_tmpdir(), "stale.pid", text);
    snprintf(stale, sizeof stale, "server.pidfile=%s/stale.pid", h_tmpdir());
    expect_fail("a stale pidfile",
                (const char *const[]){ "reload", "-c", "config/nerve.yaml", "--set", stale, NULL },
                "stale pidfile");

    /* A live daemon whose API is not where the command looks: nothing sent. */
    char dir[PATH_MAX], rset[PATH_MAX + 16], pset[PATH_MAX + 32], url[64];
    h_daemon *d = start("rc-nohttp", dir, sizeof dir, rset, sizeof rset, pset, sizeof pset);
    assert_non_null(d);
    long long g0 = H_GENERATION(d);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", h_free_port());
    expect_fail("an unreachable API",
                (const char *const[]){ "reload", "-c", "config/nerve.yaml", "--set", pset,
                                       "--set", rset, "--url", url, "--timeout", "2", NULL },
                "no signal sent");
    assert_int_equal(H_GENERATION(d), g0);

    /* The signal went (to a process that ignores it) but no reload follows:
     * the outcome is unknown, said so at the deadline. */
    pid_t deaf = fork();
    if (deaf == 0) {
        signal(SIGHUP, SIG_IGN);
        for (;;)
            pause();
    }
    assert_true(deaf > 0);
    char dtext[32], dset[PATH_MAX + 32];
    snprintf(dtext, sizeof dtext, "%d\n", (int)deaf);
    H_WRITE_FILE(h_tmpdir(), "deaf.pid", dtext);
    snprintf(dset, sizeof dset, "server.pidfile=%s/deaf.pid", h_tmpdir());
    h_run r;
    run_nerve(&r, (const char *const[]){ "reload", "-c", "config/nerve.yaml", "--set", dset,
                                         "--set", rset, "--url", d->base, "--timeout", "1",
                                         NULL });
    kill(deaf, SIGKILL);
    waitpid(deaf, &st, 0);
    if (r.status != 1 || !strstr(r.err, "sent SIGHUP") || !strstr(r.err, "outcome is unknown"))
        fail_msg("no reload after the signal: expected exit 1 saying the signal was sent and "
                 "the outcome is unknown; got exit %d\nstderr:\n%s",
                 r.status, r.err);
    h_run_free(&r);
    assert_int_equal(H_GENERATION(d), g0);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 3. sd_notify ---------------------------------------------------------------------- */

/* Wait up to MS for a datagram on FD containing WANT; everything received
 * is appended to SEEN (for the failure message). */
static bool wait_notify(int fd, const char *want, int ms, char *seen, size_t seenlen)
{
    double dl = h_deadline(ms);
    while (h_before(dl)) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 100) <= 0)
            continue;
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n <= 0)
            continue;
        buf[n] = 0;
        size_t used = strlen(seen);
        snprintf(seen + used, seenlen - used, "[%s] ", buf);
        if (strstr(buf, want))
            return true;
    }
    return false;
}

static void test_sd_notify(void **state)
{
    (void)state;
    char path[PATH_MAX], env[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/notify.sock", h_tmpdir());
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    assert_true(strlen(path) < sizeof sa.sun_path);
    strcpy(sa.sun_path, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    snprintf(env, sizeof env, "NOTIFY_SOCKET=%s", path);
    char rset[PATH_MAX + 16];
    H_RULES_DIR("rc-notify", "rc.lua", GOOD_RULE, NULL, 0, rset, sizeof rset);
    const char *const sets[] = { rset, "bus.channels=[inventory_events,test_events]" };
    h_daemon *d = h_daemon_start_env(redis, (const char *const[]){ env, NULL }, sets, 2);
    assert_non_null(d);

    char seen[16384] = "", mainpid[32];
    if (!wait_notify(fd, "READY=1", 5000, seen, sizeof seen))
        fail_msg("no READY=1 from the daemon within 5 s; got: %s", seen);
    snprintf(mainpid, sizeof mainpid, "MAINPID=%d", (int)d->pid);
    if (!strstr(seen, mainpid))
        fail_msg("READY=1 should come with %s; got: %s", mainpid, seen);

    seen[0] = 0;
    assert_int_equal(kill(d->pid, SIGHUP), 0);
    if (!wait_notify(fd, "RELOADING=1", 5000, seen, sizeof seen) || !strstr(seen, "MONOTONIC_USEC="))
        fail_msg("SIGHUP: expected RELOADING=1 with MONOTONIC_USEC; got: %s", seen);
    if (!wait_notify(fd, "READY=1", 5000, seen, sizeof seen))
        fail_msg("SIGHUP: no READY=1 after RELOADING=1; got: %s", seen);

    seen[0] = 0;
    assert_int_equal(h_daemon_stop(d), 0);
    if (!wait_notify(fd, "STOPPING=1", 1000, seen, sizeof seen))
        fail_msg("SIGTERM: no STOPPING=1; got: %s", seen);
    close(fd);
    unlink(path);
    h_pass();
}

/* --- 4. a listen port in use is named --------------------------------------------------- */

static void test_port_in_use(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 4), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    char listen_set[64], url[96], want[160];
    snprintf(listen_set, sizeof listen_set, "server.listen=127.0.0.1:%d", ntohs(sa.sin_port));
    snprintf(url, sizeof url, "redis.url=redis://127.0.0.1:%d/0", redis->port);
    snprintf(want, sizeof want,
             "server.listen 127.0.0.1:%d: address already in use (another nerve? set "
             "NERVE_LISTEN or --set server.listen=...)",
             ntohs(sa.sin_port));
    h_run r;
    run_nerve(&r, (const char *const[]){ "serve", "-c", "config/nerve.yaml", "--set", listen_set,
                                         "--set", url, "--set", "server.pidfile=", "--set",
                                         "ledger.enabled=false", NULL });
    if (r.status <= 0 || strstr(r.err, want) == NULL)
        fail_msg("serve on a port in use: expected a non-zero exit and \"%s\"; got exit %d\n"
                 "stderr:\n%s",
                 want, r.status, r.err);
    h_run_free(&r);
    close(fd);
    h_pass();
}

/* --- 5. the systemd unit ----------------------------------------------------------------- */

/* systemd-analyze verify checks the unit's syntax, its directives and that
 * its commands exist: the unit is copied with /usr/local/bin/nerve pointing
 * at the binary under test. */
static void test_unit_verifies(void **state)
{
    (void)state;
    if (access("/usr/bin/systemd-analyze", X_OK) != 0) {
        fprintf(stderr, "skipped: systemd-analyze is not installed (Debian package systemd)\n");
        skip();
    }
    char *unit = h_read_file("config/nerve.service");
    assert_non_null(unit);
    char bin[PATH_MAX];
    const char *nb = h_nerve_bin();
    if (nb[0] == '/')
        snprintf(bin, sizeof bin, "%s", nb);
    else
        assert_non_null(realpath(nb, bin));
    size_t cap = strlen(unit) * 4 + 4096, n = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    const char *from = "/usr/local/bin/nerve";
    for (const char *p = unit; *p;) {
        if (strncmp(p, from, strlen(from)) == 0) {
            n += (size_t)snprintf(out + n, cap - n, "%s", bin);
            p += strlen(from);
        } else {
            out[n++] = *p++;
        }
        assert_true(n + PATH_MAX < cap);
    }
    out[n] = 0;
    H_WRITE_FILE(h_tmpdir(), "nerve.service", out);
    free(out);
    free(unit);
    char cmd[PATH_MAX + 128];
    snprintf(cmd, sizeof cmd, "systemd-analyze verify %s/nerve.service 2>&1", h_tmpdir());
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char text[8192] = "";
    size_t got = fread(text, 1, sizeof text - 1, p);
    text[got] = 0;
    int rc = pclose(p);
    /* Without a running systemd (a container), verify still parses the unit
     * and reports on it; only lines naming nerve.service are the unit's. */
    if (rc != 0 && strstr(text, "nerve.service"))
        fail_msg("systemd-analyze verify config/nerve.service (exit %d):\n%s", rc, text);
    if (strstr(text, "nerve.service:"))
        fail_msg("systemd-analyze verify config/nerve.service warns:\n%s", text);
    h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reload_reports_outcome, h_test_setup,
                                        h_test_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_reloads, h_test_setup, h_test_teardown),
        cmocka_unit_test_setup_teardown(test_reload_without_daemon, h_test_setup,
                                        h_test_teardown),
        cmocka_unit_test_setup_teardown(test_sd_notify, h_test_setup, h_test_teardown),
        cmocka_unit_test_setup_teardown(test_port_in_use, h_test_setup, h_test_teardown),
        cmocka_unit_test_setup_teardown(test_unit_verifies, h_test_setup, h_test_teardown),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
