/* evaluator.c -- queued events -> rules -> actions (see evaluator.h). */
#include "nerve/evaluator.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/clock.h"
#include "nerve/log.h"

typedef struct call_ctx call_ctx;

struct eval {
    eval_opts o;
    pthread_t th;
    pthread_mutex_t mu; /* guards st and the liveness stamps */
    eval_stats st;
    /* Liveness stamps (clock_now_ns), written by the evaluator thread. */
    uint64_t last_done_ns;  /* last event finished; the start time until one has */
    uint64_t busy_since_ns; /* the event in evaluation was taken, 0 when idle */
    uint64_t busy_enq_ns;   /* ... and was queued */
    call_ctx *cur;          /* the event in evaluation (evaluator thread only), for rule errors */
};

struct call_ctx {
    eval *e;
    rds_client *c;
    uint64_t decisions;
    const char *event_id; /* "<stream>/<id>", NULL for Pub/Sub */
    int failed;           /* a decision was not applied (no client, Redis error) */
    declog_src src;       /* what the decision log says of the event */
};

static void on_decision(void *ud, const rules_decision *d) {
    call_ctx *cc = ud;
    cc->decisions++;
    log_debug("eval", "decision rule=%s action=%s scope=%s reason=\"%s\"", d->rule,
              rules_action_name(d->action), d->scope ? d->scope : "", d->reason);
    declog_decision(cc->e->o.dlog, d, &cc->src);
    if (!cc->c || act_decision_ev(cc->e->o.act, cc->c, d, cc->event_id) != 0) cc->failed = 1;
}

/* Acknowledgements are sent ack_batch at a time, or once no event came for
 * ACK_LINGER_MS, or once the oldest held is ACK_MAX_AGE_MS old (a steady
 * trickle must not hold them towards bus.claim_idle_ms, >= 100 ms, after
 * which another instance would claim and evaluate them again): each XACK is
 * one command per stream the entries came from,
 * so larger batches are fewer commands for Redis (issue 12). */
#define ACK_LINGER_MS  2
#define ACK_MAX_AGE_MS 10

/* Stream events evaluated and not yet acknowledged (data already freed). */
typedef struct acks {
    evq_item it[EVAL_ACK_MAX];
    size_t n;
} acks;

static void ack_flush(eval *e, acks *a) {
    if (!a->n) return;
    rds_client *c = rds_pool_client(e->o.pool);
    /* A failed ack leaves the entries pending: they come back (claimed)
     * and their decisions are idempotent. */
    if (c && e->o.ack) e->o.ack(e->o.ack_ud, c, a->it, a->n);
    for (size_t i = 0; i < a->n; i++) evq_item_free(&a->it[i]);
    a->n = 0;
}

static void on_rule_error(void *ud, const char *rule, const char *msg) {
    eval *e = ud;
    pthread_mutex_lock(&e->mu);
    e->st.rule_errors++;
    pthread_mutex_unlock(&e->mu);
    log_error("rules", "%s rule=%s", msg, rule);
    if (e->cur) declog_rule_error(e->o.dlog, rule, msg, &e->cur->src);
}

static void count_event(eval *e, const char *channel, int bad, uint64_t decisions) {
    pthread_mutex_lock(&e->mu);
    e->st.events++;
    e->st.bad_events += (uint64_t)bad;
    e->st.decisions += decisions;
    size_t i = 0;
    while (i < e->st.n_channels && strcmp(e->st.channels[i].name, channel) != 0) i++;
    if (i == e->st.n_channels && i < EVAL_MAX_CHANNELS) {
        snprintf(e->st.channels[i].name, sizeof e->st.channels[i].name, "%s", channel);
        e->st.n_channels++;
    }
    if (i < e->st.n_channels) e->st.channels[i].events++;
    e->last_done_ns = clock_now_ns();
    e->busy_since_ns = e->busy_enq_ns = 0;
    pthread_mutex_unlock(&e->mu);
}

static void mark_busy(eval *e, uint64_t enq_ns) {
    pthread_mutex_lock(&e->mu);
    e->busy_since_ns = clock_now_ns();
    e->busy_enq_ns = enq_ns ? enq_ns : e->busy_since_ns;
    pthread_mutex_unlock(&e->mu);
}

/* Make sure *VM evaluates the live set; rebuild between events on a swap. */
static void sync_vm(eval *e, rules_vm **vm, uint64_t *gen) {
    /* Only the rules of bus channels: sale_request rules run in the HTTP
     * workers' vms (policy.c). */
    live_vm_opts o = {
        .kind = RULES_VM_EVENTS,
        .log_component = "eval",
        .what = "an evaluator",
        .log_states = true,
        .on_error = on_rule_error,
        .error_ud = e,
        .incr = e->o.counters ? ctr_incr : NULL,
        .incr_ud = e->o.counters,
    };
    live_sync_vm(e->o.live, vm, gen, &o);
}

static void *run(void *arg) {
    pthread_setname_np(pthread_self(), "nerve-eval"); /* top -H, perf */
    eval *e = arg;
    rules_vm *vm = NULL;
    uint64_t gen = 0;
    uint64_t last_refresh = 0, last_resume = 0, bad_burst = 0;
    acks pend = { .n = 0 };
    uint64_t pend_since = 0; /* when the oldest held ack was taken */
    for (;;) {
        evq_item it;
        /* With acks held, wait a little for more before sending them: an
         * XACK round trip per few events was a Redis command and a wait of
         * this thread per sale under load (issue 12). Only the ack waits,
         * never an event's decisions. */
        evq_pop_result rc = evq_pop(e->o.q, &it, pend.n ? ACK_LINGER_MS : 200);
        if (rc != EVQ_GOT && pend.n) {
            ack_flush(e, &pend);
            if (rc == EVQ_TIMEOUT) continue;
        }
        if (rc == EVQ_CLOSED) break;
        /* Busy from the pop: a halt cache refresh or a VM rebuild that hangs
         * delays this event as much as a rule that does. */
        if (rc == EVQ_GOT) mark_busy(e, it.enq_ns);
        uint64_t now = clock_now_ns();
        if (now - last_refresh > 2000000000ull) {
            /* Repair the halt cache from Redis now and then. */
            rds_client *c = rds_pool_client(e->o.pool);
            if (c) ks_refresh(e->o.ks, c);
            last_refresh = now;
            /* Emergency stops a dead instance left unfinished (actions.h). */
            if (c && e->o.act && now - last_resume > (uint64_t)e->o.resume_ms * 1000000ull) {
                act_resume_stalled(e->o.act, c);
                last_resume = now;
            }
        }
        if (rc == EVQ_TIMEOUT) continue;
        sync_vm(e, &vm, &gen);
        char evid[RDS_KEY_MAX + 64];
        if (it.stream) snprintf(evid, sizeof evid, "%s/%s", it.stream, it.id);
        call_ctx cc = { .e = e,
                        .c = rds_pool_client(e->o.pool),
                        .event_id = it.stream ? evid : NULL,
                        .src = { it.channel, it.stream ? it.id : NULL, gen, it.data, it.len } };
        int bad = 0;
        if (vm) {
            e->cur = &cc;
            int r = rules_eval(vm, it.channel, it.data, it.len, on_decision, &cc);
            e->cur = NULL;
            if (r < 0) {
                bad = 1;
                if (bad_burst++ == 0)
                    log_warn("eval",
                             "unusable event channel=%s error=\"%s\" (logged once per burst)",
                             it.channel, rules_vm_errstr(vm));
            } else {
                bad_burst = 0;
            }
        }
        count_event(e, it.channel, bad, cc.decisions);
        if (it.stream && e->o.ack && (cc.failed || !vm)) {
            /* A kill that Redis refused to record, or no rules to run: an
             * acknowledged entry would never come back, and that kill would
             * be lost for good. Left pending, it is claimed again after
             * bus.claim_idle_ms (its decisions are idempotent). */
            if (e->o.release) e->o.release(e->o.ack_ud, 1);
            pthread_mutex_lock(&e->mu);
            e->st.deferred++;
            pthread_mutex_unlock(&e->mu);
            log_warn("eval", "event left pending for another try stream=%s id=%s why=%s", it.stream,
                     it.id, vm ? "a decision failed" : "no rules built");
            evq_item_free(&it);
        } else if (it.stream && e->o.ack) {
            free(it.data);
            free(it.channel);
            it.data = it.channel = NULL;
            if (pend.n == 0) pend_since = clock_now_ns();
            pend.it[pend.n++] = it;
            if (pend.n >= e->o.ack_batch ||
                clock_now_ns() - pend_since >= ACK_MAX_AGE_MS * 1000000ull)
                ack_flush(e, &pend);
        } else {
            evq_item_free(&it);
        }
    }
    ack_flush(e, &pend);
    rules_vm_free(vm);
    return NULL;
}

eval *eval_start(const eval_opts *o, char *err, size_t errlen) {
    eval *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->o = *o;
    if (e->o.ack_batch == 0 || e->o.ack_batch > EVAL_ACK_MAX) e->o.ack_batch = EVAL_ACK_MAX;
    if (e->o.stall_ms <= 0) e->o.stall_ms = 5000;
    e->last_done_ns = clock_now_ns();
    pthread_mutex_init(&e->mu, NULL);
    if (pthread_create(&e->th, NULL, run, e) != 0) {
        snprintf(err, errlen, "cannot start the evaluator thread");
        pthread_mutex_destroy(&e->mu);
        free(e);
        return NULL;
    }
    return e;
}

void eval_stop(eval *e) {
    if (!e) return;
    pthread_join(e->th, NULL);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

void eval_get_stats(eval *e, eval_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->st;
    pthread_mutex_unlock(&e->mu);
}

static uint64_t since(uint64_t now, uint64_t t) {
    return t && now > t ? now - t : 0;
}

void eval_get_liveness(eval *e, eval_liveness *out) {
    memset(out, 0, sizeof *out);
    /* Two locks, each held for a copy: neither waits for an evaluation. The
     * snapshot may be a pop apart, which can only hide a stall for an instant,
     * never invent one: an item old enough to count was queued at both reads. */
    pthread_mutex_lock(&e->mu);
    uint64_t done = e->last_done_ns, busy_since = e->busy_since_ns, busy_enq = e->busy_enq_ns;
    pthread_mutex_unlock(&e->mu);
    evq_stats qs;
    evq_get_stats(e->o.q, &qs);
    uint64_t now = clock_now_ns();

    out->stall_ms = e->o.stall_ms;
    out->queued = qs.depth;
    out->oldest_age_ns = evq_oldest_age_ns(&qs, now);
    out->busy = busy_since != 0;
    out->busy_ns = since(now, busy_since);
    out->since_done_ns = since(now, done);
    /* The work pending longest: the event in evaluation, else the queue head. */
    uint64_t first = busy_since ? busy_enq : qs.depth ? qs.oldest_enq_ns : 0;
    if (first) {
        uint64_t from = first > done ? first : done;
        out->waiting_ns = since(now, from);
        out->stalled = out->waiting_ns >= (uint64_t)out->stall_ms * 1000000u;
    }
}
