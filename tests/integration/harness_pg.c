/* harness_pg.c -- a throwaway PostgreSQL server for the ledger tests, as
 * harness.c starts redis-server (see harness.h, "PostgreSQL").
 *
 * initdb into a directory under the test's temp dir, then `postgres` on a
 * free port with a Unix socket only in that directory (listen_addresses
 * empty) and trust authentication: nothing outside the temp dir is touched
 * and nothing listens on the network. fsync is off: a test's data need not
 * survive the machine, and it keeps initdb and each commit fast.
 *
 * initdb and postgres refuse to run as root: when the tests run as root the
 * child drops to the `postgres` user (setgid/setuid before exec) and the
 * directory is given to it. The server is our direct child in its own
 * process group, killed with the test process (PR_SET_PDEATHSIG, set after
 * the uid change, which clears it) and at exit.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <libpq-fe.h>

#define PG_START_MS 30000
#define PG_MAX      8

static h_pg *pg_live[PG_MAX];
static bool pg_atexit_done;

static void pg_kill_all(void)
{
    for (int i = 0; i < PG_MAX; i++)
        if (pg_live[i] && pg_live[i]->pid > 0) {
            kill(-pg_live[i]->pid, SIGKILL);
            kill(pg_live[i]->pid, SIGKILL);
            waitpid(pg_live[i]->pid, NULL, 0);
            pg_live[i]->pid = 0;
        }
}

/* The bin directory of the server programs: `pg_config --bindir`, else
 * Debian 12's. */
static const char *pg_bindir(void)
{
    static char dir[256];
    if (dir[0])
        return dir;
    FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
    if (p) {
        if (fgets(dir, sizeof dir, p))
            dir[strcspn(dir, "\n")] = 0;
        pclose(p);
    }
    char initdb[300];
    snprintf(initdb, sizeof initdb, "%s/initdb", dir);
    if (!dir[0] || access(initdb, X_OK) != 0)
        snprintf(dir, sizeof dir, "/usr/lib/postgresql/15/bin");
    return dir;
}

/* Fork ARGV with stdout/stderr appended to LOG, as the postgres user when
 * we are root. The pid, or -1. */
static pid_t pg_spawn(char *const argv[], const char *log)
{
    struct passwd *pw = getuid() == 0 ? getpwnam("postgres") : NULL;
    if (getuid() == 0 && !pw) {
        fprintf(stderr, "harness: running as root and there is no postgres user to run %s as\n",
                argv[0]);
        return -1;
    }
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "harness: %s: %s\n", log, strerror(errno));
        return -1;
    }
    if (pw && fchown(fd, pw->pw_uid, pw->pw_gid) != 0) {
        /* only the log's owner; the child still writes through fd */
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        if (pw && (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 ||
                   setuid(pw->pw_uid) != 0)) {
            dprintf(fd, "harness: cannot become postgres: %s\n", strerror(errno));
            _exit(127);
        }
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0)
            dup2(in, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(argv[0], argv);
        dprintf(2, "harness: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    close(fd);
    return pid;
}

static void pg_log_tail(const h_pg *p)
{
    char *text = h_read_file(p->log);
    if (!text)
        return;
    size_t n = strlen(text);
    const char *from = n > 1500 ? text + n - 1500 : text;
    printf("--- postgres log (%s), tail:\n%s--- end of postgres log\n", p->log, from);
    free(text);
}

static int pg_launch(h_pg *p)
{
    char bin[300], port[16], data[200];
    snprintf(bin, sizeof bin, "%s/postgres", pg_bindir());
    snprintf(port, sizeof port, "%d", p->port);
    snprintf(data, sizeof data, "%s/data", p->dir);
    char *const argv[] = { bin, "-D", data, "-k", p->dir, "-p", port,
                           "-c", "listen_addresses=", "-c", "fsync=off",
                           "-c", "full_page_writes=off", "-c", "max_connections=50", NULL };
    p->pid = pg_spawn(argv, p->log);
    if (p->pid < 0) {
        p->pid = 0;
        return -1;
    }
    char ping[300];
    snprintf(ping, sizeof ping, "host=%s port=%d user=nerve dbname=postgres connect_timeout=2",
             p->dir, p->port);
    double dl = h_deadline(PG_START_MS);
    while (h_before(dl)) {
        if (PQping(ping) == PQPING_OK)
            return 0;
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->pid = 0;
            fprintf(stderr, "harness: postgres exited at start\n");
            pg_log_tail(p);
            return -1;
        }
        h_nap();
    }
    fprintf(stderr, "harness: postgres did not answer within %d ms\n", PG_START_MS);
    pg_log_tail(p);
    return -1;
}

h_pg *h_pg_start(void)
{
    h_init();
    if (!pg_atexit_done) {
        /* Registered after h_init's cleanup: runs first, before the temp
         * dir is removed. */
        atexit(pg_kill_all);
        pg_atexit_done = true;
    }
    h_pg *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    static int seq;
    snprintf(p->dir, sizeof p->dir, "%s/pg-%d", h_tmpdir(), ++seq);
    snprintf(p->log, sizeof p->log, "%s/postgres.log", p->dir);
    struct passwd *pw = getuid() == 0 ? getpwnam("postgres") : NULL;
    /* The postgres user must reach its directory inside our 0700 temp dir. */
    if (mkdir(p->dir, 0700) != 0 || (pw && (chmod(h_tmpdir(), 0711) != 0 ||
                                           chown(p->dir, pw->pw_uid, pw->pw_gid) != 0))) {
        fprintf(stderr, "harness: %s: %s\n", p->dir, strerror(errno));
        free(p);
        return NULL;
    }
    char initdb[300], data[200];
    snprintf(initdb, sizeof initdb, "%s/initdb", pg_bindir());
    snprintf(data, sizeof data, "%s/data", p->dir);
    char *const argv[] = { initdb, "-D", data, "-U", "nerve", "--auth=trust", "-E", "UTF8",
                           "--locale=C", "--no-sync", NULL };
    pid_t pid = pg_spawn(argv, p->log);
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "harness: initdb failed\n");
        pg_log_tail(p);
        free(p);
        return NULL;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        p->port = h_free_port();
        if (p->port > 0 && pg_launch(p) == 0)
            break;
        p->port = 0;
    }
    if (!p->port) {
        free(p);
        return NULL;
    }
    for (int i = 0; i < PG_MAX; i++)
        if (!pg_live[i]) {
            pg_live[i] = p;
            break;
        }
    return p;
}

int h_pg_stop(h_pg *p)
{
    if (!p || p->pid <= 0)
        return 0;
    kill(p->pid, SIGINT); /* fast shutdown: clients are disconnected */
    double dl = h_deadline(20000);
    int st;
    while (h_before(dl)) {
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->pid = 0;
            return 0;
        }
        h_nap();
    }
    kill(-p->pid, SIGKILL);
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &st, 0);
    p->pid = 0;
    return -1;
}

int h_pg_restart(h_pg *p)
{
    if (p->pid > 0)
        return 0;
    return pg_launch(p);
}

void h_pg_free(h_pg *p)
{
    if (!p)
        return;
    h_pg_stop(p);
    for (int i = 0; i < PG_MAX; i++)
        if (pg_live[i] == p)
            pg_live[i] = NULL;
    free(p);
}

const char *h_pg_url(const h_pg *p, const char *db, char *buf, size_t len)
{
    snprintf(buf, len, "postgresql:///%s?host=%s&port=%d&user=nerve", db, p->dir, p->port);
    return buf;
}

char *h_pg_query(const h_pg *p, const char *db, const char *sql)
{
    char conn[400];
    snprintf(conn, sizeof conn, "host=%s port=%d user=nerve dbname=%s", p->dir, p->port, db);
    PGconn *c = PQconnectdb(conn);
    char *out = NULL;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, sql);
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0)
            out = strdup(PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
        else if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
            out = strdup("");
        else
            fprintf(stderr, "harness: postgres: %s: %s", sql, PQresultErrorMessage(r));
        PQclear(r);
    } else {
        fprintf(stderr, "harness: postgres: %s", PQerrorMessage(c));
    }
    PQfinish(c);
    return out;
}

int h_pg_createdb(const h_pg *p, const char *db)
{
    char sql[200];
    snprintf(sql, sizeof sql, "CREATE DATABASE \"%s\"", db);
    char *r = h_pg_query(p, "postgres", sql);
    free(r);
    return r ? 0 : -1;
}
