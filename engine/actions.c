/* actions.c -- decisions to alerts, kill switch and emergency stop (see
 * actions.h).
 */
#include "nerve/actions.h"

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nerve/log.h"

struct act {
    char *prefix, *alerts_channel, *instance;
    int throttle_s;
    long audit_maxlen;
    bool dry_run;
    int stop_bound_ms;
    ks *k;
    panic *p;
    panic *resume; /* NULL: no panic.resume_url */
    rds_pool *pool;
    _Atomic uint64_t suppressed[ACT_LEVEL_COUNT]; /* act_alert_stats */
    _Atomic uint64_t duplicates;                  /* act_alert_stats */
};

act *act_new(const act_opts *o, ks *k, panic *p, rds_pool *pool) {
    act *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->prefix = strdup(o->prefix);
    a->alerts_channel = strdup(o->alerts_channel);
    a->instance = strdup(o->instance);
    if (!a->prefix || !a->alerts_channel || !a->instance) {
        free(a->prefix), free(a->alerts_channel), free(a->instance), free(a);
        return NULL;
    }
    a->throttle_s = o->throttle_s;
    a->audit_maxlen = o->audit_maxlen;
    a->dry_run = o->dry_run;
    a->stop_bound_ms = o->stop_bound_ms > 0 ? o->stop_bound_ms : 60000;
    a->k = k;
    a->p = p;
    a->resume = o->resume;
    a->pool = pool;
    return a;
}

void act_free(act *a) {
    if (!a) return;
    free(a->prefix);
    free(a->alerts_channel);
    free(a->instance);
    free(a);
}

static const char *const level_names[ACT_LEVEL_COUNT] = { "info", "warning", "critical", "fatal",
                                                          "other" };

const char *act_level_name(act_level l) {
    return (unsigned)l < ACT_LEVEL_COUNT ? level_names[l] : NULL;
}

static act_level level_of(const char *level) {
    int i = 0;
    while (i < ACT_LEVEL_OTHER && strcmp(level ? level : "", level_names[i]) != 0) i++;
    return (act_level)i;
}

void act_get_alert_stats(act *a, act_alert_stats *out) {
    for (int i = 0; i < ACT_LEVEL_COUNT; i++)
        out->suppressed[i] = atomic_load_explicit(&a->suppressed[i], memory_order_relaxed);
    out->duplicates = atomic_load_explicit(&a->duplicates, memory_order_relaxed);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static cJSON *alert_obj(act *a, const char *level, const char *kind, const char *rule,
                        const char *scope, const char *reason) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "level", level);
    cJSON_AddStringToObject(o, "kind", kind);
    cJSON_AddStringToObject(o, "rule", rule ? rule : "");
    if (scope) cJSON_AddStringToObject(o, "scope", scope);
    cJSON_AddStringToObject(o, "reason", reason ? reason : "");
    cJSON_AddNumberToObject(o, "ts", now_s());
    cJSON_AddStringToObject(o, "instance", a->instance);
    return o;
}

/* Append TEXT to the capped audit stream. */
static void audit(act *a, rds_client *c, const char *kind, const char *text) {
    char key[RDS_KEY_MAX], maxlen[24];
    snprintf(key, sizeof key, "%saudit", a->prefix);
    snprintf(maxlen, sizeof maxlen, "%ld", a->audit_maxlen);
    const char *argv[] = { "XADD", key, "MAXLEN", "~", maxlen, "*", "kind", kind, "data", text };
    redisReply *r = rds_commandargv(c, 10, argv, NULL);
    if (!r || r->type == REDIS_REPLY_ERROR)
        log_warn("actions", "audit append failed error=\"%s\"", r ? r->str : rds_errstr(c));
    freeReplyObject(r);
}

/* Publish an unthrottled alert object (consumed) and audit it. */
static int publish(act *a, rds_client *c, cJSON *o) {
    char *txt = cJSON_PrintUnformatted(o);
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(o, "kind");
    char kindbuf[64];
    snprintf(kindbuf, sizeof kindbuf, "%s", cJSON_IsString(kind) ? kind->valuestring : "alert");
    cJSON_Delete(o);
    if (!txt) return -1;
    redisReply *r = rds_command(c, "PUBLISH %s %s", a->alerts_channel, txt);
    int rc = r && r->type == REDIS_REPLY_INTEGER ? 0 : -1;
    freeReplyObject(r);
    if (rc == 0) audit(a, c, kindbuf, txt);
    free(txt);
    return rc;
}

/* KEYS[1] throttle marker, KEYS[2] suppressed counter, KEYS[3] (optional)
 * the event's marker; ARGV[1] window s, ARGV[2] channel, ARGV[3] alert JSON,
 * ARGV[4] the event marker's ttl s. Returns 0 when the event marker already
 * existed (this decision was handled at an earlier delivery of the event),
 * else publishes with "suppressed" filled in and returns the JSON, or
 * returns false when inside the window. */
static rds_script throttle_script = RDS_SCRIPT_INIT(
    "if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'NX', 'EX', tonumber(ARGV[4])) then\n"
    "  return 0\n"
    "end\n"
    "local w = tonumber(ARGV[1])\n"
    "if w > 0 and not redis.call('SET', KEYS[1], '1', 'NX', 'EX', w) then\n"
    "  redis.call('INCR', KEYS[2])\n"
    "  redis.call('EXPIRE', KEYS[2], w * 100 + 86400)\n"
    "  return false\n"
    "end\n"
    "local n = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "redis.call('DEL', KEYS[2])\n"
    "local a = cjson.decode(ARGV[3])\n"
    "a.suppressed = n\n"
    "local txt = cjson.encode(a)\n"
    "redis.call('PUBLISH', ARGV[2], txt)\n"
    "return txt\n");

/* How long an event's marker outlives its first evaluation: longer than
 * any redelivery (claim_idle_ms, or a fleet down for hours) is likely to
 * take; alerts are few (throttled), so the markers cost little. */
#define EVENT_MARKER_TTL_S 86400

static act_alert_result alert(act *a, rds_client *c, const char *kind, const char *level,
                              const char *rule, const char *scope, const char *reason,
                              const char *event_id) {
    char k1[RDS_KEY_MAX], k2[RDS_KEY_MAX], k3[RDS_KEY_MAX], win[16], ttl[16];
    /* One window per (rule, scope, level): a warning must never keep a later
     * critical about the same thing quiet. One hash tag per key pair, so
     * that the script's two keys share a slot. */
    const char *ru = rule ? rule : "", *sc = scope ? scope : "";
    snprintf(k1, sizeof k1, "%sthrottle:{%s|%s|%s}", a->prefix, ru, sc, level);
    snprintf(k2, sizeof k2, "%sthrottle:{%s|%s|%s}:suppressed", a->prefix, ru, sc, level);
    snprintf(win, sizeof win, "%d", a->throttle_s);
    snprintf(ttl, sizeof ttl, "%d", EVENT_MARKER_TTL_S);
    /* The event's marker shares the throttle keys' tag (one slot). */
    int nkeys = 2;
    if (event_id) {
        int kn = snprintf(k3, sizeof k3, "%sthrottle:{%s|%s|%s}:ev:%s", a->prefix, ru, sc, level,
                          event_id);
        if (kn > 0 && (size_t)kn < sizeof k3) nkeys = 3;
    }
    cJSON *o = alert_obj(a, level, kind, rule, scope, reason);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!txt) return ACT_ALERT_ERROR;
    const char *argv[7];
    int argc = 0;
    argv[argc++] = k1;
    argv[argc++] = k2;
    if (nkeys == 3) argv[argc++] = k3;
    argv[argc++] = win;
    argv[argc++] = a->alerts_channel;
    argv[argc++] = txt;
    argv[argc++] = ttl;
    redisReply *r = rds_eval(c, &throttle_script, nkeys, argc, argv, NULL);
    free(txt);
    act_alert_result rc;
    if (r && r->type == REDIS_REPLY_INTEGER) {
        atomic_fetch_add_explicit(&a->duplicates, 1, memory_order_relaxed);
        log_debug("actions", "alert already handled rule=%s event=%s", rule ? rule : "",
                  event_id ? event_id : "");
        rc = ACT_ALERT_DUPLICATE;
    } else if (!r || r->type == REDIS_REPLY_ERROR) {
        log_warn("actions", "alert not published rule=%s error=\"%s\"", rule ? rule : "",
                 r ? r->str : rds_errstr(c));
        rc = ACT_ALERT_ERROR;
    } else if (r->type == REDIS_REPLY_STRING) {
        audit(a, c, kind, r->str);
        /* The alert's level is the line's level, so a collector that pages
         * on error lines pages on critical alerts too. */
        act_level al = level_of(level);
        log_level ll = al == ACT_LEVEL_INFO      ? LOG_LVL_INFO
                       : al == ACT_LEVEL_WARNING ? LOG_LVL_WARN
                       : al == ACT_LEVEL_OTHER   ? LOG_LVL_WARN
                                                 : LOG_LVL_ERROR;
        if (log_enabled(ll))
            log_write(ll, "actions", "alert level=%s kind=%s rule=%s scope=%s reason=\"%s\"", level,
                      kind, rule ? rule : "", scope ? scope : "", reason ? reason : "");
        rc = ACT_ALERT_PUBLISHED;
    } else {
        atomic_fetch_add_explicit(&a->suppressed[level_of(level)], 1, memory_order_relaxed);
        rc = ACT_ALERT_SUPPRESSED;
    }
    freeReplyObject(r);
    return rc;
}

act_alert_result act_alert(act *a, rds_client *c, const char *kind, const char *level,
                           const char *rule, const char *scope, const char *reason) {
    return alert(a, c, kind, level, rule, scope, reason, NULL);
}

/* ---- kill + emergency stop ------------------------------------------------------ */

static void on_attempt(void *ud, const panic_job *job, const panic_attempt *at) {
    act *a = ud;
    rds_client *c = rds_pool_client(a->pool);
    if (c && !at->ok) ks_set_state(a->k, c, job->scope, "stopping", at->attempt, at->error);
}

static void on_done(void *ud, const panic_job *job, panic_outcome outcome, int attempts,
                    const char *last_error) {
    act *a = ud;
    rds_client *c = rds_pool_client(a->pool);
    if (!c) return;
    const char *state = outcome == PANIC_STOPPED   ? "stopped"
                        : outcome == PANIC_DRY_RUN ? "dry_run"
                                                   : "stop_failed";
    if (ks_set_state(a->k, c, job->scope, state, attempts, last_error))
        log_warn("actions", "could not record kill state scope=%s state=%s", job->scope, state);
    if (outcome == PANIC_STOP_FAILED) {
        char reason[512];
        snprintf(reason, sizeof reason,
                 "emergency stop failed after %d attempts: %s (original: %s)", attempts,
                 last_error ? last_error : "unknown", job->reason);
        /* Pairs, not a bare sentence: the JSON log keeps scope, attempts,
         * the last error and the kill's own reason as keys of their own. */
        log_error("actions",
                  "critical failure: emergency stop failed scope=%s rule=%s attempts=%d "
                  "error=\"%s\" reason=\"%s\"",
                  job->scope, job->rule ? job->rule : "", attempts,
                  last_error ? last_error : "unknown", job->reason);
        cJSON *o = alert_obj(a, "fatal", "critical_failure", job->rule, job->scope, reason);
        cJSON_AddNumberToObject(o, "attempts", attempts);
        publish(a, c, o);
    }
}

static ks_change engage(act *a, rds_client *c, const char *rule, const act_who *by,
                        const char *scope, const char *reason, bool halt_sales, char *err,
                        size_t errlen) {
    double ts = now_s();
    ks_change rc = ks_engage(a->k, c, scope, reason, rule, halt_sales,
                             a->dry_run ? "dry_run" : "stopping", ts, err, errlen);
    if (rc != KS_CHANGED) {
        if (rc == KS_ERROR)
            log_error("actions", "kill switch not engaged scope=%s error=\"%s\"", scope, err);
        return rc;
    }
    log_warn("actions", "kill switch engaged scope=%s rule=%s halt_sales=%s reason=\"%s\"", scope,
             rule, halt_sales ? "true" : "false", reason);
    cJSON *o = alert_obj(a, "critical", "kill_switch", rule, scope, reason);
    cJSON_AddBoolToObject(o, "halt_sales", halt_sales);
    /* Who engaged it, as the ledger's kills.actor records it: the operator
     * through the API, or the rule that decided it. */
    if (by) {
        const char *token = by->token ? by->token : "";
        cJSON_AddStringToObject(o, "actor", by->actor && *by->actor ? by->actor : token);
        cJSON_AddStringToObject(o, "token", token);
        cJSON_AddStringToObject(o, "remote", by->remote ? by->remote : "");
    } else if (strcmp(rule, "admin") == 0) {
        cJSON_AddStringToObject(o, "actor", "admin");
    } else {
        char who[160];
        snprintf(who, sizeof who, "rule:%s", rule);
        cJSON_AddStringToObject(o, "actor", who);
    }
    cJSON_AddStringToObject(o, "state", a->dry_run ? "would_stop" : "stopping");
    publish(a, c, o);

    panic_job job = { .scope = scope,
                      .reason = reason,
                      .rule = rule,
                      .ts = ts,
                      .on_attempt = on_attempt,
                      .on_done = on_done,
                      .ud = a };
    if (panic_submit(a->p, &job) != 0) {
        log_error("actions", "emergency stop queue full scope=%s", scope);
        on_done(a, &job, PANIC_STOP_FAILED, 0, "emergency stop queue full");
    }
    return KS_CHANGED;
}

ks_change act_kill(act *a, rds_client *c, const char *rule, const char *scope, const char *reason,
                   bool halt_sales, char *err, size_t errlen) {
    return engage(a, c, rule, NULL, scope, reason, halt_sales, err, errlen);
}

ks_change act_kill_by(act *a, rds_client *c, const act_who *who, const char *scope,
                      const char *reason, bool halt_sales, char *err, size_t errlen) {
    static const act_who none = { 0 };
    return engage(a, c, "admin", who ? who : &none, scope, reason, halt_sales, err, errlen);
}

/* The resume call's outcome, on the resume worker's thread: logged by the
 * panic module, counted there (nerve_resume_attempts_total), and audited
 * here so that the ledger's alerts table shows whether the campaigns were
 * told to restart. */
static void on_resume_done(void *ud, const panic_job *job, panic_outcome outcome, int attempts,
                           const char *last_error) {
    act *a = ud;
    const char *result = outcome == PANIC_STOPPED   ? "resumed"
                         : outcome == PANIC_DRY_RUN ? "dry_run"
                                                    : "failed";
    char reason[512];
    if (outcome == PANIC_STOP_FAILED)
        snprintf(reason, sizeof reason, "resume call failed after %d attempts: %s", attempts,
                 last_error ? last_error : "unknown");
    else
        snprintf(reason, sizeof reason, "resume call %s after %d attempts", result, attempts);
    if (outcome == PANIC_STOP_FAILED)
        log_error("actions", "campaigns not resumed scope=%s %s", job->scope, reason);
    rds_client *c = rds_pool_client(a->pool);
    if (!c) return;
    cJSON *o = alert_obj(a, outcome == PANIC_STOP_FAILED ? "critical" : "info", "kill_resume", NULL,
                         job->scope, reason);
    cJSON_AddStringToObject(o, "result", result);
    cJSON_AddNumberToObject(o, "attempts", attempts);
    cJSON_AddStringToObject(o, "actor", job->actor ? job->actor : "");
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (txt) audit(a, c, "kill_resume", txt);
    free(txt);
}

ks_change act_reset(act *a, rds_client *c, const char *scope, const act_who *who) {
    static const act_who none = { 0 };
    if (!who) who = &none;
    const char *token = who->token ? who->token : "";
    const char *actor = who->actor && *who->actor ? who->actor : token;
    const char *remote = who->remote ? who->remote : "";
    const char *reason = who->reason ? who->reason : "";
    ks_change rc = ks_reset(a->k, c, scope);
    if (rc != KS_CHANGED) return rc;
    /* What the daemon knows (scope, token name, address) before what the
     * caller declares: a quote inside the declared actor or reason cannot
     * forge an earlier key (JSON logs keep a key's first occurrence). */
    log_warn("actions", "kill switch reset scope=%s token=%s remote=%s actor=\"%s\" reason=\"%s\"",
             scope, token, remote, actor, reason);
    /* In the audit stream (and so in the ledger) with who reset it and why. */
    double ts = now_s();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", "kill_reset");
    cJSON_AddStringToObject(o, "scope", scope);
    cJSON_AddStringToObject(o, "actor", actor);
    cJSON_AddStringToObject(o, "token", token);
    cJSON_AddStringToObject(o, "remote", remote);
    cJSON_AddStringToObject(o, "reason", reason);
    cJSON_AddNumberToObject(o, "ts", ts);
    cJSON_AddStringToObject(o, "instance", a->instance);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (txt) audit(a, c, "kill_reset", txt);
    free(txt);
    /* Only the instance that deleted the record gets here (KS_CHANGED), so
     * one reset makes one resume call, however many ask at once. */
    if (a->resume) {
        panic_job job = { .scope = scope,
                          .reason = reason,
                          .actor = actor,
                          .ts = ts,
                          .on_done = on_resume_done,
                          .ud = a };
        if (panic_submit(a->resume, &job) != 0)
            on_resume_done(a, &job, PANIC_STOP_FAILED, 0, "resume queue full");
    }
    return rc;
}

int act_resume_stalled(act *a, rds_client *c) {
    cJSON *arr = ks_list(a->k, c);
    if (!arr) return -1;
    double now = now_s(), stale = 2.0 * a->stop_bound_ms / 1000.0;
    int resumed = 0;
    const cJSON *rec;
    cJSON_ArrayForEach(rec, arr) {
        const cJSON *state = cJSON_GetObjectItemCaseSensitive(rec, "state");
        const cJSON *scope = cJSON_GetObjectItemCaseSensitive(rec, "scope");
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(rec, "ts");
        if (!cJSON_IsString(state) || strcmp(state->valuestring, "stopping") != 0 ||
            !cJSON_IsString(scope) || !cJSON_IsNumber(ts) || now - ts->valuedouble < stale)
            continue;
        char key[RDS_KEY_MAX], ex[24];
        snprintf(key, sizeof key, "%skill_resume:%s", a->prefix, scope->valuestring);
        snprintf(ex, sizeof ex, "%d", (int)stale + 1);
        const char *argv[] = { "SET", key, a->instance, "NX", "EX", ex };
        redisReply *r = rds_commandargv(c, 6, argv, NULL);
        bool mine = r && r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        if (!mine) continue; /* another instance resumes it (or Redis failed: next time) */
        const cJSON *reason = cJSON_GetObjectItemCaseSensitive(rec, "reason");
        const cJSON *rule = cJSON_GetObjectItemCaseSensitive(rec, "rule");
        const cJSON *inst = cJSON_GetObjectItemCaseSensitive(rec, "instance");
        log_warn("actions",
                 "resuming an emergency stop its instance never finished scope=%s instance=%s "
                 "engaged_s_ago=%.0f",
                 scope->valuestring, cJSON_IsString(inst) ? inst->valuestring : "?",
                 now - ts->valuedouble);
        panic_job job = { .scope = scope->valuestring,
                          .reason = cJSON_IsString(reason) ? reason->valuestring : "",
                          .rule = cJSON_IsString(rule) ? rule->valuestring : NULL,
                          .ts = ts->valuedouble,
                          .on_attempt = on_attempt,
                          .on_done = on_done,
                          .ud = a };
        if (panic_submit(a->p, &job) != 0) {
            log_error("actions", "emergency stop queue full scope=%s", scope->valuestring);
            continue;
        }
        resumed++;
    }
    cJSON_Delete(arr);
    return resumed;
}

int act_decision(act *a, rds_client *c, const rules_decision *d) {
    return act_decision_ev(a, c, d, NULL);
}

int act_decision_ev(act *a, rds_client *c, const rules_decision *d, const char *event_id) {
    char err[256];
    switch (d->action) {
    case RULES_ALERT:
        return alert(a, c, "rule_alert", rules_level_name(d->level), d->rule, d->scope, d->reason,
                     event_id) == ACT_ALERT_ERROR
                   ? -1
                   : 0;
    case RULES_KILL:
        return act_kill(a, c, d->rule, d->scope, d->reason, d->halt_sales, err, sizeof err) ==
                       KS_ERROR
                   ? -1
                   : 0;
    case RULES_REJECT:
    default: return 0;
    }
}
