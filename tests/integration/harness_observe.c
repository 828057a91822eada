/* harness_observe.c -- what an integration test watches besides the answer
 * to its own request: who subscribes to a channel and what is published on
 * it, the kill records in Redis, and the daemon's own counters (GET /rules,
 * GET /metrics).
 *
 * See harness.h for the contract. The parts worth a word:
 *
 * Subscriber. One hiredis connection in subscribe mode, read without
 * blocking (redisGetReplyFromReader, then poll and redisBufferRead), so that
 * a pump can stop at its deadline; every message is kept, parsed, with the
 * time it was read, until the subscriber is closed.
 *
 * Failures. The waiting helpers fail the running test at the caller's
 * FILE:LINE with what they last saw, so a timeout says how far it got.
 */
#include "harness.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUB_MAX 1024            /* messages a subscriber keeps */
#define SUBS_LIVE 32            /* subscribers open at once */

/* --- the bus ------------------------------------------------------------- */

/* PUBSUB NUMSUB CHANNEL on R: the count, -1 on error. */
static long long numsub(h_redis *r, const char *channel)
{
    redisReply *rep = h_redis_cmd(r, "PUBSUB NUMSUB %s", channel);
    long long n = -1;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[1]->type == REDIS_REPLY_INTEGER)
        n = rep->element[1]->integer;
    if (rep)
        freeReplyObject(rep);
    return n;
}

void h_wait_subscribers_at(h_redis *r, const char *channel, long long n,
                           const char *file, int line)
{
    double dl = h_deadline(10000);
    long long got = -1;
    while (h_before(dl)) {
        got = numsub(r, channel);
        if (got >= n)
            return;
        h_nap();
    }
    h_fail_at(file, line, "expected %lld subscriber(s) on %s within 10 s, got %lld", n, channel,
              got);
}

long long h_publish(h_redis *r, const char *channel, const char *msg)
{
    redisReply *rep = h_redis_cmd(r, "PUBLISH %s %s", channel, msg);
    long long n = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    if (rep)
        freeReplyObject(rep);
    return n;
}

/* --- a subscriber ---------------------------------------------------------- */

struct h_sub {
    redisContext *c;
    char channel[128];
    cJSON *msg[SUB_MAX];        /* every payload received, parsed */
    double at[SUB_MAX];         /* h_now() when it was read */
    size_t n;
};

static h_sub *subs_live[SUBS_LIVE];     /* open ones, for h_sub_close_all */

h_sub *h_sub_open_at(h_redis *r, const char *channel, const char *file, int line)
{
    h_sub *s = calloc(1, sizeof *s);
    if (s == NULL) {
        h_fail_at(file, line, "subscriber on %s: out of memory", channel);
        return NULL;
    }
    snprintf(s->channel, sizeof s->channel, "%s", channel);
    s->c = h_redis_connect(r);
    if (s->c == NULL) {
        free(s);
        h_fail_at(file, line, "subscriber on %s: cannot connect to redis on port %d", channel,
                  r->port);
        return NULL;
    }
    redisReply *rep = redisCommand(s->c, "SUBSCRIBE %s", channel);
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        char why[128];
        snprintf(why, sizeof why, "%s", s->c->errstr);
        if (rep)
            freeReplyObject(rep);
        h_sub_close(s);
        h_fail_at(file, line, "SUBSCRIBE %s failed: %s", channel, why);
        return NULL;
    }
    freeReplyObject(rep);
    for (int i = 0; i < SUBS_LIVE; i++) {
        if (subs_live[i] == NULL) {
            subs_live[i] = s;
            break;
        }
    }
    return s;
}

void h_sub_close(h_sub *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < SUBS_LIVE; i++)
        if (subs_live[i] == s)
            subs_live[i] = NULL;
    for (size_t i = 0; i < s->n; i++)
        cJSON_Delete(s->msg[i]);
    redisFree(s->c);
    free(s);
}

void h_sub_close_all(void)
{
    for (int i = 0; i < SUBS_LIVE; i++)
        h_sub_close(subs_live[i]);
}

void h_sub_pump_at(h_sub *s, int ms, const char *file, int line)
{
    double dl = h_deadline(ms);
    for (;;) {
        void *reply = NULL;
        if (redisGetReplyFromReader(s->c, &reply) != REDIS_OK)
            h_fail_at(file, line, "subscriber on %s: %s", s->channel, s->c->errstr);
        if (reply) {
            redisReply *rep = reply;
            if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
                rep->element[0]->type == REDIS_REPLY_STRING &&
                strcmp(rep->element[0]->str, "message") == 0 && s->n < SUB_MAX) {
                s->msg[s->n] = cJSON_Parse(rep->element[2]->str);
                s->at[s->n] = h_now();
                if (s->msg[s->n] == NULL) {
                    char bad[512];
                    snprintf(bad, sizeof bad, "%s", rep->element[2]->str);
                    freeReplyObject(rep);
                    h_fail_at(file, line, "a message on %s that is not JSON: %s", s->channel,
                              bad);
                    return;
                }
                s->n++;
            }
            freeReplyObject(rep);
            continue;
        }
        int left = (int)((dl - h_now()) * 1000);
        if (left < 0)
            left = 0;
        struct pollfd pf = { s->c->fd, POLLIN, 0 };
        int pr = poll(&pf, 1, left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return;
        if (redisBufferRead(s->c) != REDIS_OK)
            h_fail_at(file, line, "subscriber on %s: %s", s->channel, s->c->errstr);
    }
}

static bool msg_is(const cJSON *m, const char *kind, const char *scope)
{
    const char *k = h_jstr(m, "kind"), *sc = h_jstr(m, "scope");
    return k && strcmp(k, kind) == 0 && (scope == NULL || (sc && strcmp(sc, scope) == 0));
}

int h_sub_count(const h_sub *s, const char *kind, const char *scope)
{
    int n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += msg_is(s->msg[i], kind, scope);
    return n;
}

const cJSON *h_sub_find(const h_sub *s, const char *kind, const char *scope, int i, double *at)
{
    for (size_t j = 0; j < s->n; j++) {
        if (msg_is(s->msg[j], kind, scope) && i-- == 0) {
            if (at)
                *at = s->at[j];
            return s->msg[j];
        }
    }
    return NULL;
}

void h_sub_wait_at(h_sub *s, const char *kind, const char *scope, int n, int ms,
                   const char *file, int line)
{
    double dl = h_deadline(ms);
    while (h_sub_count(s, kind, scope) < n && h_before(dl))
        h_sub_pump_at(s, 20, file, line);
    if (h_sub_count(s, kind, scope) < n)
        h_fail_at(file, line, "expected %d %s alert(s) for scope %s on %s within %d ms, saw %d",
                  n, kind, scope ? scope : "*", s->channel, ms, h_sub_count(s, kind, scope));
}

void h_sub_print(const h_sub *s, const char *kind, const char *scope)
{
    for (size_t i = 0; i < s->n; i++) {
        if (!msg_is(s->msg[i], kind, scope))
            continue;
        char *txt = cJSON_PrintUnformatted(s->msg[i]);
        printf("  %s: %s\n", s->channel, txt ? txt : "?");
        free(txt);
    }
}

/* --- kill records ------------------------------------------------------------ */

cJSON *h_kill_record(h_redis *r, const char *scope)
{
    redisReply *rep = h_redis_cmd(r, "GET " H_PREFIX "kill:%s", scope);
    cJSON *o = NULL;
    if (rep && rep->type == REDIS_REPLY_STRING)
        o = cJSON_Parse(rep->str);
    if (rep)
        freeReplyObject(rep);
    return o;
}

cJSON *h_wait_kill_at(h_redis *r, const char *scope, const char *state, int ms,
                      const char *file, int line)
{
    double dl = h_deadline(ms);
    char last[1024] = "(no record)";
    while (h_before(dl)) {
        cJSON *o = h_kill_record(r, scope);
        if (o) {
            const char *s = h_jstr(o, "state");
            if (state == NULL || (s && strcmp(s, state) == 0))
                return o;
            char *txt = cJSON_PrintUnformatted(o);
            snprintf(last, sizeof last, "%s", txt ? txt : "?");
            free(txt);
            cJSON_Delete(o);
        }
        h_nap();
    }
    h_fail_at(file, line, "kill record %s%s%s not there within %d ms; last seen: %s", scope,
              state ? " with state " : "", state ? state : "", ms, last);
    return NULL;
}

/* --- the daemon's counters ---------------------------------------------------- */

long long h_rule_stat(const h_daemon *d, const char *name, const char *field)
{
    h_resp r;
    h_http(d, "GET", "/rules", NULL, &r, NULL);
    long long v = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(r.json, "rules")) {
        const char *n = h_jstr(it, "name");
        if (n && strcmp(n, name) == 0 && !h_jll(it, field, &v))
            v = -1;
    }
    h_resp_free(&r);
    return v;
}

long long h_generation_at(const h_daemon *d, const char *file, int line)
{
    h_resp r;
    h_http(d, "GET", "/rules", NULL, &r, NULL);
    long long g = -1;
    if (r.status != 200 || !h_jll(r.json, "generation", &g))
        h_fail_at(file, line, "GET /rules: expected 200 with an integral \"generation\", got "
                  "%ld %s %s", r.status, r.body, r.err);
    h_resp_free(&r);
    return g;
}

char *h_metrics_at(const h_daemon *d, const char *file, int line)
{
    h_resp r;
    h_http(d, "GET", "/metrics", NULL, &r, NULL);
    if (r.status != 200)
        h_fail_at(file, line, "GET /metrics on %s: expected 200, got %ld %s %s", d->base,
                  r.status, r.body, r.err);
    char *text = r.body;
    r.body = NULL;
    h_resp_free(&r);
    return text;
}

double h_metric(const char *text, const char *name, const char *label)
{
    double sum = -1;
    size_t nl = strlen(name);
    for (const char *p = text; p && *p; ) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, name, nl) == 0 && (p[nl] == ' ' || p[nl] == '{')) {
            const char *v = p + nl;
            bool match = label == NULL;
            if (*v == '{') {
                const char *close = strchr(v, '}');
                if (close && label) {
                    char *labels = strndup(v, (size_t)(close - v));
                    match = labels && strstr(labels, label) != NULL;
                    free(labels);
                }
                v = close ? close + 1 : v;
            }
            if (match)
                sum = (sum < 0 ? 0 : sum) + strtod(v, NULL);
        }
        p = eol ? eol + 1 : NULL;
    }
    return sum;
}
