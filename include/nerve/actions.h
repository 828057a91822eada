/* actions.h -- turn rule decisions into alerts, kill switch engagements and
 * emergency stops.
 *
 * alert: published on the alerts channel as JSON
 *     {"level","kind":"rule_alert","rule","scope","reason","ts","instance","suppressed"}
 * at most once per (rule, scope, level) per throttle window, fleet-wide (the
 * throttle key lives in Redis), so an alert of one level never silences one
 * of another (a warning never keeps a critical quiet); the suppressed ones
 * are counted there and the next published alert of that (rule, scope,
 * level) carries "suppressed": N, and counted by this instance in
 * nerve_alerts_suppressed_total{level}. Published alerts are appended to the
 * capped stream PREFIXaudit.
 * An alert decided on a stream event (act_decision_ev with its id) is
 * published at most once per event, (rule, scope, level) and id: a marker
 * key set in the same script as the throttle says that an earlier delivery
 * of the event already handled it (at-least-once delivery, see bus.h).
 * Pub/Sub events have no id: no such guard.
 * kill: engages the scope (killswitch.h); when this instance created the
 * record it publishes {"level":"critical","kind":"kill_switch",...}, appends
 * it to the audit stream and submits the emergency stop to the panic worker;
 * its outcome is written into the record and, when every attempt failed,
 * {"level":"fatal","kind":"critical_failure",...} is published.
 * reset: deletes the record, appends who reset it and why to the audit
 * stream and, when panic.resume_url is set, submits the resume call (the
 * second panic module, act_opts.resume) so that the campaigns the stop
 * paused restart; its outcome is logged, counted by that module and
 * appended to the audit stream as {"level","kind":"kill_resume",...}.
 * reject: nothing to do here (the sale path answers 422).
 *
 * Thread-safety: every function is thread-safe; each takes the calling
 * thread's rds_client. Ownership: act_new borrows K, P, POOL and the
 * options' RESUME (they must outlive it) and copies the options' strings.
 */
#ifndef NERVE_ACTIONS_H
#define NERVE_ACTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nerve/killswitch.h"
#include "nerve/panic.h"
#include "nerve/rds.h"
#include "nerve/rules.h"

typedef struct act_opts {
    const char *prefix;
    const char *alerts_channel;
    const char *instance;
    int throttle_s;
    long audit_maxlen;
    bool dry_run;      /* panic.dry_run: record "would stop", no webhook */
    int stop_bound_ms; /* the longest an emergency stop can take (every attempt, timeout and
                        * backoff); a record still "stopping" twice that long after its
                        * engagement lost its instance (act_resume_stalled); <= 0: 60000 */
    panic *resume;     /* the resume call's module (panic.resume_url); NULL = none */
} act_opts;

typedef struct act act;

act *act_new(const act_opts *o, ks *k, panic *p, rds_pool *pool);
void act_free(act *a);

/* Handle one decision. 0, or -1 on a Redis error (logged). */
int act_decision(act *a, rds_client *c, const rules_decision *d);
/* The same for a decision on the event EVENT_ID ("<stream key>/<entry id>";
 * NULL: none): an alert already handled for that event is not published
 * again (counted as a duplicate). */
int act_decision_ev(act *a, rds_client *c, const rules_decision *d, const char *event_id);

typedef enum {
    ACT_ALERT_ERROR = -1,
    ACT_ALERT_SUPPRESSED = 0, /* inside the throttle window: counted, not sent */
    ACT_ALERT_PUBLISHED = 1,
    ACT_ALERT_DUPLICATE = 2, /* handled at an earlier delivery of the same event */
} act_alert_result;

/* Publish an alert (throttled per RULE, SCOPE and LEVEL). KIND is "rule_alert",
 * "reload_failed", ...; SCOPE may be NULL. */
act_alert_result act_alert(act *a, rds_client *c, const char *kind, const char *level,
                           const char *rule, const char *scope, const char *reason);

/* Who asked for an engagement or a reset by hand, as the audit records it.
 * Every field may be NULL (recorded as ""); borrowed for the call. */
typedef struct act_who {
    const char *token;  /* name of the admin token that authorised it ("admin") */
    const char *actor;  /* declared by the caller ("cli:alice"); NULL or "": the token's name */
    const char *remote; /* the client's address */
    const char *reason; /* why (a reset's; "" when the caller gave none) */
} act_who;

/* Engage SCOPE (also by hand, RULE "admin"): KS_CHANGED engaged by this
 * call (alert published, emergency stop queued), KS_UNCHANGED already
 * engaged, KS_ERROR (message in ERR). */
ks_change act_kill(act *a, rds_client *c, const char *rule, const char *scope, const char *reason,
                   bool halt_sales, char *err, size_t errlen);
/* act_kill by hand (RULE "admin") for WHO: the kill_switch alert's actor is
 * WHO's actor (else its token's name) instead of "admin", and it carries
 * "token" and "remote". WHO's reason is not used (REASON is the kill's). */
ks_change act_kill_by(act *a, rds_client *c, const act_who *who, const char *scope,
                      const char *reason, bool halt_sales, char *err, size_t errlen);

/* Reset SCOPE (ks_reset) and, when it was engaged, log it, append
 * {"kind":"kill_reset","scope","actor","token","remote","reason","ts","instance"}
 * to the audit stream (the ledger's kills row takes actor and reason from
 * it) and submit the resume call when there is one. WHO may be NULL. */
ks_change act_reset(act *a, rds_client *c, const char *scope, const act_who *who);

/* Resume the emergency stops an instance started and never finished: it
 * engaged the record ("stopping") and died before its stop was recorded as
 * stopped or failed. Since engagement is idempotent (ks_engage only acts
 * when it creates the record), a redelivered event never re-runs that stop,
 * and without this the pause-campaigns API would never be called. A record
 * still "stopping" 2 x stop_bound_ms after its ts is claimed by one instance
 * of the fleet (SET NX of PREFIXkill_resume:SCOPE, expiring after the same
 * time, so a resumer that dies too is resumed in turn), logged, and its stop
 * submitted again; the outcome is written into the record as for any stop.
 * Returns how many were resumed, -1 on a Redis error. Call it now and then
 * (the evaluator does, every min(30 s, stop_bound_ms) or so). */
int act_resume_stalled(act *a, rds_client *c);

/* Alert levels as this instance counts them (nerve_alerts_suppressed_total's
 * level label): a level outside the four known ones counts as "other". */
typedef enum {
    ACT_LEVEL_INFO,
    ACT_LEVEL_WARNING,
    ACT_LEVEL_CRITICAL,
    ACT_LEVEL_FATAL,
    ACT_LEVEL_OTHER,
    ACT_LEVEL_COUNT
} act_level;

/* "info", "warning", "critical", "fatal", "other"; NULL out of range. */
const char *act_level_name(act_level l);

typedef struct act_alert_stats {
    uint64_t suppressed[ACT_LEVEL_COUNT]; /* kept quiet inside their throttle window */
    uint64_t duplicates;                  /* not published again: the event was delivered before */
} act_alert_stats;

/* Counters since act_new. Thread-safe, lock-free. */
void act_get_alert_stats(act *a, act_alert_stats *out);

#endif
