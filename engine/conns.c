/* conns.c -- open HTTP connections and idle eviction (see conns.h). */
#include "nerve/conns.h"

#include <civetweb.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "nerve/clock.h"
#include "nerve/log.h"

/* A slot's state; changed only by compare-and-swap (see conns.h). */
enum {
    SLOT_IDLE,     /* waiting for a request (since since_ns) */
    SLOT_BUSY,     /* in a handler */
    SLOT_BODY,     /* in a handler, reading the body (since body_ns) */
    SLOT_EVICTING, /* the evictor took it: shut, or about to be; final */
};

struct conns_slot {
    int used;                  /* open (under mu) */
    atomic_int state;          /* SLOT_* */
    _Atomic uint64_t since_ns; /* waiting for a request since (clock_now_ns) */
    _Atomic uint64_t body_ns;  /* reading the body since */
    const struct mg_connection *conn;
    char addr[48]; /* the peer as CivetWeb prints it, "" until known */
    int port, server_port;
};

struct conns {
    pthread_mutex_t mu; /* guards the slots' used/evicted/ends, open, stop */
    pthread_cond_t cv;  /* every worker holds a connection, or stopping */
    conns_slot *slots;
    int nslots, open;
    int evict_idle_ms;
    int body_ms; /* a body may take this long when every worker is held */
    pthread_t evictor;
    int started, stop;
    unsigned long long evicted;      /* connections shut (under mu) */
    unsigned long long evicted_body; /* of those, reading a body */
};

conns *conns_new(int nslots, int evict_idle_ms, int request_timeout_ms) {
    conns *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->slots = calloc((size_t)(nslots > 0 ? nslots : 1), sizeof *c->slots);
    if (!c->slots) {
        free(c);
        return NULL;
    }
    c->nslots = nslots;
    c->evict_idle_ms = evict_idle_ms > 0 ? evict_idle_ms : 1;
    /* Long enough for any client that sends its body at once, whatever the
     * network (a body is read only after its head arrived); short enough
     * that a new client is not kept waiting long by slow ones. CivetWeb's
     * own request_timeout_ms bounds only each wait for a byte, so this is
     * capped by it. */
    long long body = 20LL * c->evict_idle_ms;
    if (body < 1000) body = 1000;
    if (request_timeout_ms > 0 && body > request_timeout_ms) body = request_timeout_ms;
    c->body_ms = (int)body;
    pthread_mutex_init(&c->mu, NULL);
    clock_cond_init(&c->cv);
    return c;
}

void conns_free(conns *c) {
    if (!c) return;
    conns_stop(c);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c->slots);
    free(c);
}

conns_slot *conns_open(conns *s, const struct mg_connection *conn) {
    conns_slot *got = NULL;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->nslots; i++) {
        conns_slot *c = &s->slots[i];
        if (c->used) continue;
        memset(c, 0, sizeof *c);
        c->used = 1;
        atomic_store(&c->state, SLOT_IDLE);
        atomic_store(&c->since_ns, clock_now_ns());
        c->conn = conn;
        got = c;
        if (++s->open == s->nslots) pthread_cond_signal(&s->cv);
        break;
    }
    pthread_mutex_unlock(&s->mu);
    return got;
}

void conns_close(conns *s, conns_slot *c) {
    if (!c) return;
    pthread_mutex_lock(&s->mu);
    c->used = 0;
    s->open--;
    pthread_mutex_unlock(&s->mu);
}

/* Swap state FROM for TO: 1 when it was FROM. */
static int slot_swap(conns_slot *c, int from, int to) {
    return atomic_compare_exchange_strong(&c->state, &from, to);
}

int conns_enter(conns_slot *c) {
    if (!c) return 0;
    return slot_swap(c, SLOT_IDLE, SLOT_BUSY) ? 0 : -1;
}

void conns_leave(conns_slot *c) {
    if (!c) return;
    /* since_ns first: the evictor reads it once it sees IDLE. */
    atomic_store(&c->since_ns, clock_now_ns());
    slot_swap(c, SLOT_BUSY, SLOT_IDLE);
}

int conns_body(conns_slot *c, int reading) {
    if (!c) return 0;
    if (reading) {
        atomic_store(&c->body_ns, clock_now_ns());
        return slot_swap(c, SLOT_BUSY, SLOT_BODY) ? 0 : -1;
    }
    return slot_swap(c, SLOT_BODY, SLOT_BUSY) ? 0 : -1;
}

unsigned long long conns_evicted(conns *s) {
    pthread_mutex_lock(&s->mu);
    unsigned long long n = s->evicted;
    pthread_mutex_unlock(&s->mu);
    return n;
}

unsigned long long conns_evicted_body(conns *s) {
    pthread_mutex_lock(&s->mu);
    unsigned long long n = s->evicted_body;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* CivetWeb fills in a connection's two ends before on_conn_open but only
 * hands out its request info once it reads a request (which it has begun
 * by the time a connection has waited evict_idle_ms). Under the mutex. 0 once
 * C's ends are known. */
static int slot_ends(conns_slot *c) {
    if (c->addr[0]) return 0;
    const struct mg_request_info *ri = mg_get_request_info(c->conn);
    if (!ri || !ri->remote_addr[0]) return -1;
    snprintf(c->addr, sizeof c->addr, "%s", ri->remote_addr);
    c->port = ri->remote_port;
    c->server_port = ri->server_port;
    return 0;
}

/* 1 when socket FD is the server side of slot C's connection. */
static int fd_is(int fd, const conns_slot *c) {
    struct sockaddr_storage a;
    socklen_t al = sizeof a;
    char host[48];
    if (getsockname(fd, (struct sockaddr *)&a, &al) != 0) return 0;
    if (a.ss_family == AF_INET    ? ntohs(((struct sockaddr_in *)&a)->sin_port) != c->server_port
        : a.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&a)->sin6_port) != c->server_port
                                  : 1)
        return 0;
    al = sizeof a;
    if (getpeername(fd, (struct sockaddr *)&a, &al) != 0) return 0;
    int port;
    if (a.ss_family == AF_INET) {
        port = ntohs(((struct sockaddr_in *)&a)->sin_port);
        inet_ntop(AF_INET, &((struct sockaddr_in *)&a)->sin_addr, host, sizeof host);
    } else {
        port = ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a)->sin6_addr, host, sizeof host);
    }
    return port == c->port && strcmp(host, c->addr) == 0;
}

/* Under c->mu: shut the connections of the slots marked in WANT (N of
 * them; WANT[i] is the state, IDLE or BODY, seen + 1). CivetWeb keeps its
 * sockets to itself, so they are found among the process's descriptors by
 * their two ends; a slot is freed (conns_close, which takes the mutex)
 * before CivetWeb closes its socket, so a descriptor found here is still
 * that connection's. A slot is shut only if it is still in the state seen
 * (swapped for EVICTING first: its worker then runs no handler). An idle
 * one whose next request is already arriving (bytes unread) is left alone. */
static void evict(conns *s, const char *want, int n) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return;
    struct dirent *e;
    while (n > 0 && (e = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end || end == e->d_name || fd == dirfd(d)) continue;
        for (int i = 0; i < s->nslots; i++) {
            if (!want[i] || !fd_is((int)fd, &s->slots[i])) continue;
            conns_slot *c = &s->slots[i];
            int seen = want[i] - 1, unread = 0;
            n--;
            if (!slot_swap(c, seen, SLOT_EVICTING)) break; /* its request began */
            if (seen == SLOT_IDLE && (ioctl((int)fd, FIONREAD, &unread) != 0 || unread > 0)) {
                /* If its worker saw EVICTING meanwhile, it closes the
                 * connection unanswered itself. */
                slot_swap(c, SLOT_EVICTING, SLOT_IDLE);
                break;
            }
            shutdown((int)fd, SHUT_RDWR);
            s->evicted++;
            s->evicted_body += seen == SLOT_BODY;
            break;
        }
    }
    closedir(d);
}

/* While every worker holds a connection, shut those waiting for a request
 * for server.evict_idle_ms or more, and those reading a body for body_ms or
 * more; sleep otherwise. */
static void *evictor_main(void *arg) {
    pthread_setname_np(pthread_self(), "nerve-evictor"); /* top -H, perf */
    conns *s = arg;
    uint64_t limit = (uint64_t)s->evict_idle_ms * 1000000u;
    uint64_t blimit = (uint64_t)s->body_ms * 1000000u;
    char *want = calloc((size_t)s->nslots, 1);
    if (!want) return NULL;
    /* An episode: from a pass that shut slow bodies, for one more body
     * limit, the other bodies of that flood are shut as they come of age
     * even though workers are free again. The workers take the flood's
     * connections up over some milliseconds (more on a loaded machine); a
     * single pass found some of them just too young, and they went on to
     * finish their bodies and run their sales. */
    uint64_t episode_until = 0;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        bool all_held = s->open >= s->nslots;
        if (!all_held && clock_now_ns() >= episode_until) {
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        uint64_t now = clock_now_ns(), next = now + limit;
        int n = 0;
        for (int i = 0; i < s->nslots; i++) {
            conns_slot *c = &s->slots[i];
            int st = c->used ? atomic_load(&c->state) : SLOT_EVICTING;
            uint64_t since, lim;
            if (st == SLOT_IDLE && !all_held) {
                want[i] = 0; /* idle keep-alives are shut only when every worker is held */
                continue;
            } else if (st == SLOT_IDLE) {
                since = atomic_load(&c->since_ns);
                lim = limit;
            } else if (st == SLOT_BODY) {
                since = atomic_load(&c->body_ns);
                lim = blimit;
            } else {
                want[i] = 0;
                continue;
            }
            /* SINCE may be a moment after NOW (set since NOW was read). */
            int due = since <= now && now - since >= lim;
            want[i] = due && slot_ends(c) == 0 ? (char)(st + 1) : 0;
            n += want[i] != 0;
            if (!due && since + lim < next) next = since + lim;
        }
        if (n) {
            unsigned long long before = s->evicted, body = s->evicted_body;
            evict(s, want, n);
            if (s->evicted_body > body) episode_until = now + blimit;
            log_debug("http",
                      "every worker busy: %llu connections shut (%llu reading a body too slowly; "
                      "%llu in all)",
                      s->evicted - before, s->evicted_body - body, s->evicted);
        }
        if (!all_held && episode_until > now && episode_until < next) next = episode_until;
        struct timespec dl = clock_deadline_ms((long long)((next - now) / 1000000u) + 1);
        pthread_cond_timedwait(&s->cv, &s->mu, &dl);
    }
    pthread_mutex_unlock(&s->mu);
    free(want);
    return NULL;
}

int conns_start(conns *s) {
    if (pthread_create(&s->evictor, NULL, evictor_main, s) != 0) return -1;
    s->started = 1;
    return 0;
}

void conns_stop(conns *s) {
    if (!s->started) return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->evictor, NULL);
    s->started = 0;
}
