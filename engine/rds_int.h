/* rds_int.h -- what rds.c (one server) and rds_cluster.c (slot routing)
 * share: the client and its connections. Private to those two files. */
#ifndef NERVE_RDS_INT_H
#define NERVE_RDS_INT_H

#include "nerve/rds.h"

/* One connection to one server, with its reconnect backoff. */
typedef struct rds_conn {
    char host[256]; /* cluster mode: the node; standalone uses the client's opts */
    int port;
    redisContext *ctx;
    int down;               /* last attempt failed */
    int fails;              /* failed connections in a row (the backoff attempt) */
    long long retry_at_ms;  /* monotonic ms before which we do not retry */
    long long last_used_ms; /* monotonic ms of the last command */
    int pending;            /* appended commands whose replies are not read yet */
    int readonly;           /* answered -READONLY: replace the connection */
    unsigned long gen;      /* sentinel mode: snt_generation when it connected */
    unsigned long serial;   /* which connection this is (rds_conn_serial) */
} rds_conn;

typedef struct rds_route rds_route; /* rds_cluster.c */

struct rds_client {
    rds_opts o;
    rds_conn one;  /* standalone: the connection */
    rds_route *cl; /* cluster mode: the routing state; NULL standalone */
    int unknown;   /* the last failure came after a command was sent */
    char errstr[256];
};

void rds_set_error(rds_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Make N usable (connect, or reconnect a stale idle one) to O's server. 0,
 * or -1 with rds_errstr set. Clears c->unknown. */
int rds_conn_ensure(rds_client *c, rds_conn *n, const rds_opts *o);
/* After a NULL reply on N: remember why, drop N (with backoff), unknown = 1. */
void rds_conn_failed(rds_client *c, rds_conn *n);
/* Close N without backoff (a pipeline abandoned, not a failure). */
void rds_conn_close(rds_conn *n);

/* rds_cluster.c */
rds_route *rds_route_new(rds_client *c);
void rds_route_free(rds_route *r);
redisReply *rds_route_formatted(rds_client *c, char *cmd, size_t len);
redisReply *rds_route_argv(rds_client *c, int argc, const char **argv, const size_t *argvlen);
int rds_route_append(rds_client *c, int argc, const char **argv, const size_t *argvlen);
redisReply *rds_route_get_reply(rds_client *c);

#endif
