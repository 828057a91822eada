/* rules_vm.c -- the per-thread rule evaluator.
 *
 * A rules_vm owns one sandboxed lua_State per rule of its set (separate
 * states: a rule at its memory cap cannot make another fail). Building it
 * runs each rule file again in its state, keeps `evaluate` and a read-only ctx
 * in the registry, and so the hot path per event and rule is: refresh
 * ctx.channel and ctx.now, build the event table, call, validate, deliver.
 *
 * ctx.state is transactional: when evaluate fails (an error, the instruction
 * limit, the deadline, an invalid decision), the writes it made to ctx.state
 * are undone (journaled in rules_values.c), so one bad event cannot poison
 * the state of every later one, nor a reload carry the poison over. After a
 * memory-limit error a rule's state is rebuilt from the source (its ctx.state
 * is lost).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>
#include <cjson/cJSON.h>

#include "nerve/log.h"
#include "rules_int.h"

typedef struct vm_rule {
    rules_sbx sbx; /* address must not change: Lua points at it */
    const rules_rule *r;
    rules_counters *ctr;
    int ref_eval, ref_ctx, ref_inner, ref_state;
    /* What ctx.channel and ctx.now hold in this state (the rule cannot write
     * them: ctx is read-only), so that they are set only when they change.
     * chan_k indexes the set's channels; -1 = unknown. */
    int chan_k;
    long long ctx_now;
    bool dead; /* its state could not be rebuilt */
    rules_state_origin origin;
    /* The last diagnosis (see diagnose): the line found for the message
     * diag_err, and when it ran. */
    int diag_line;
    long long diag_ns;
    char diag_err[RULES_MSG_MAX];
} vm_rule;

struct rules_vm {
    rules_set *set;
    vm_rule *rules;
    size_t n;
    /* on[i * set->n_channels + k]: rule i listens on the set's channel k;
     * an event's channel is looked up once, not compared per rule. */
    unsigned char *on;
    rules_error_cb on_error;
    void *on_error_ud;
    rules_incr_fn incr;
    void *incr_ud;
    rules_vm_kind kind;
    char errstr[256];
};

const char *rules_state_origin_name(rules_state_origin o) {
    static const char *const names[] = { "new", "kept", "reset", "lost" };

    return (unsigned)o <= RULES_STATE_LOST ? names[o] : "?";
}

int rules_channel_in(const rules_rule *r, const char *channel) {
    for (size_t i = 0; i < r->n_channels; i++)
        if (strcmp(r->channels[i], channel) == 0) return 1;
    return 0;
}

/* ---- building a rule's state ------------------------------------------ */

struct setup_args {
    vm_rule *vr;
    const cJSON *params;
};

static void setup_fn(lua_State *L, void *ud) {
    struct setup_args *a = ud;
    vm_rule *vr = a->vr;

    rules_sbx_run_chunk(L, vr->r->src, vr->r->src_len);
    if (!lua_istable(L, 1)) luaL_error(L, "rule file must return a table");
    lua_pushliteral(L, "evaluate");
    if (lua_rawget(L, 1) != LUA_TFUNCTION) luaL_error(L, "evaluate must be a function");
    vr->ref_eval = luaL_ref(L, LUA_REGISTRYINDEX);
    if (a->params)
        rules_sbx_push_json(L, a->params, "params", 0);
    else
        rules_sbx_push_json(L, &(cJSON){ .type = cJSON_Object }, "params", 0);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    vr->ref_state = luaL_ref(L, LUA_REGISTRYINDEX);
    rules_sbx_push_ctx(L, -2, -1);
    vr->ref_inner = luaL_ref(L, LUA_REGISTRYINDEX);
    vr->ref_ctx = luaL_ref(L, LUA_REGISTRYINDEX);
    vr->chan_k = -1; /* ctx.channel is "", ctx.now 0: set at the first event */
    vr->ctx_now = 0;
}

static int open_rule(const rules_vm *vm, vm_rule *vr, char *err, size_t errlen) {
    const rules_set *set = vm->set;
    struct setup_args a = { vr, set->params };
    rules_sbx_err e;

    if (rules_sbx_open(&vr->sbx, vr->r->file, vr->r->name, set->instr_limit, set->mem_limit,
                       set->timeout_ms, &e) == 0) {
        vr->sbx.def_line = vr->r->line;
        vr->sbx.incr = vm->incr;
        vr->sbx.incr_ud = vm->incr_ud;
        if (rules_sbx_pcall(&vr->sbx, setup_fn, &a, &e) == 0) return 0;
        rules_sbx_close(&vr->sbx);
    }
    snprintf(err, errlen, "%s:%d: %.900s", vr->r->file, e.line, e.msg);
    return -1;
}

/* ---- carrying ctx.state over ------------------------------------------- */

struct carry_args {
    vm_rule *from, *to;
};

static void carry_fn(lua_State *L, void *ud) {
    struct carry_args *a = ud;
    lua_State *src = a->from->sbx.L;

    if (!lua_checkstack(src, 2)) luaL_error(L, "ctx.state copy: source stack exhausted");
    lua_rawgeti(src, LUA_REGISTRYINDEX, a->from->ref_state);
    rules_sbx_copy(L, src);
    lua_pop(src, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->to->ref_inner);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "state");
    lua_pop(L, 1);
    lua_rawseti(L, LUA_REGISTRYINDEX, a->to->ref_state);
}

static rules_state_origin carry(const rules_vm *prev, vm_rule *to) {
    struct carry_args a;
    rules_sbx_err e;
    int top, rc;

    for (size_t j = 0; j < prev->n; j++) {
        vm_rule *from = &prev->rules[j];

        if (strcmp(from->r->name, to->r->name) != 0) continue;
        if (strcmp(from->r->sha256, to->r->sha256) != 0) return RULES_STATE_RESET;
        if (from->dead || from->sbx.L == NULL) return RULES_STATE_LOST;
        a.from = from;
        a.to = to;
        top = lua_gettop(from->sbx.L);
        rc = rules_sbx_pcall(&to->sbx, carry_fn, &a, &e);
        lua_settop(from->sbx.L, top);
        if (rc != 0) {
            log_warn("rules", "ctx.state not carried over: %s rule=%s", e.msg, to->r->name);
            return RULES_STATE_LOST;
        }
        return RULES_STATE_KEPT;
    }
    return RULES_STATE_NEW;
}

/* Does rule R belong in a vm of KIND? */
static int of_kind(const rules_rule *r, rules_vm_kind kind) {
    int sale = rules_channel_in(r, RULES_SALE_CHANNEL);

    switch (kind) {
    case RULES_VM_EVENTS: return r->n_channels > (size_t)sale;
    case RULES_VM_SALE: return sale;
    default: return 1;
    }
}

/* Index of CHANNEL among the set's channels, -1 when no rule listens on it. */
static int channel_index(const rules_set *set, const char *channel) {
    for (size_t k = 0; k < set->n_channels; k++)
        if (strcmp(set->channels[k], channel) == 0) return (int)k;
    return -1;
}

/* Fill vm->on for vm->set (allocated for it). */
static void map_channels(rules_vm *vm) {
    const rules_set *set = vm->set;

    for (size_t i = 0; i < vm->n; i++)
        for (size_t k = 0; k < set->n_channels; k++)
            vm->on[i * set->n_channels + k] = (unsigned char)rules_channel_in(vm->rules[i].r,
                                                                              set->channels[k]);
}

rules_vm *rules_vm_new(rules_set *set, rules_vm *previous, char *err, size_t errlen) {
    return rules_vm_new_kind(set, previous, RULES_VM_ALL, err, errlen);
}

static rules_vm *vm_build(rules_set *set, rules_vm *previous, rules_vm_kind kind, const char *only,
                          char *err, size_t errlen);

rules_vm *rules_vm_new_kind(rules_set *set, rules_vm *previous, rules_vm_kind kind, char *err,
                            size_t errlen) {
    return vm_build(set, previous, kind, NULL, err, errlen);
}

rules_vm *rules_vm_new_rule(rules_set *set, const char *name, char *err, size_t errlen) {
    return vm_build(set, NULL, RULES_VM_ALL, name, err, errlen);
}

/* A vm of KIND holding, when ONLY is not NULL, just the rule of that name. */
static rules_vm *vm_build(rules_set *set, rules_vm *previous, rules_vm_kind kind, const char *only,
                          char *err, size_t errlen) {
    char buf[RULES_MSG_MAX];
    rules_vm *vm = calloc(1, sizeof(*vm));

    if (vm == NULL) goto oom;
    vm->set = rules_set_ref(set);
    vm->kind = kind;
    vm->rules = calloc(set->n ? set->n : 1, sizeof(*vm->rules));
    vm->on = calloc(set->n * set->n_channels + 1, 1);
    if (vm->rules == NULL || vm->on == NULL) goto oom;
    if (previous) {
        vm->incr = previous->incr;
        vm->incr_ud = previous->incr_ud;
    }
    for (size_t i = 0; i < set->n; i++) {
        vm_rule *vr = &vm->rules[vm->n];

        if (!of_kind(&set->rules[i], kind)) continue;
        if (only && strcmp(set->rules[i].name, only) != 0) continue;
        vm->n++;
        vr->r = &set->rules[i];
        vr->ctr = set->ctr[i];
        if (open_rule(vm, vr, buf, sizeof(buf)) != 0) {
            if (err) snprintf(err, errlen, "%s", buf);
            rules_vm_free(vm);
            return NULL;
        }
        vr->origin = previous ? carry(previous, vr) : RULES_STATE_NEW;
    }
    map_channels(vm);
    return vm;
oom:
    if (err) snprintf(err, errlen, "out of memory");
    rules_vm_free(vm);
    return NULL;
}

void rules_vm_free(rules_vm *vm) {
    if (vm == NULL) return;
    if (vm->rules)
        for (size_t i = 0; i < vm->n; i++) rules_sbx_close(&vm->rules[i].sbx);
    free(vm->rules);
    free(vm->on);
    rules_set_unref(vm->set);
    free(vm);
}

/* Limits and params a rule's Lua state was built with. */
static int same_build(const rules_set *a, const rules_set *b) {
    return a->instr_limit == b->instr_limit && a->mem_limit == b->mem_limit &&
           a->timeout_ms == b->timeout_ms && cJSON_Compare(a->params, b->params, 1);
}

int rules_vm_rebind(rules_vm *vm, rules_set *set) {
    unsigned char *on;
    size_t k = 0;

    if (vm->set == set) return 0;
    if (!same_build(vm->set, set)) return -1;
    /* The same rules of this kind, in the same order, same source. */
    for (size_t i = 0; i < set->n; i++) {
        if (!of_kind(&set->rules[i], vm->kind)) continue;
        if (k >= vm->n || strcmp(vm->rules[k].r->name, set->rules[i].name) != 0 ||
            strcmp(vm->rules[k].r->sha256, set->rules[i].sha256) != 0 || vm->rules[k].dead)
            return -1;
        k++;
    }
    if (k != vm->n) return -1;
    on = calloc(set->n * set->n_channels + 1, 1);
    if (on == NULL) return -1;
    free(vm->on);
    vm->on = on;
    k = 0;
    for (size_t i = 0; i < set->n; i++) {
        vm_rule *vr;

        if (!of_kind(&set->rules[i], vm->kind)) continue;
        vr = &vm->rules[k++];
        vr->r = &set->rules[i];
        vr->ctr = set->ctr[i];
        vr->origin = RULES_STATE_KEPT;
        /* The sandbox borrows these strings: point it at the new set's. */
        vr->sbx.file = vr->r->file;
        vr->sbx.name = vr->r->name;
        vr->sbx.def_line = vr->r->line;
        vr->chan_k = -1; /* indexes the old set's channels */
    }
    rules_set_ref(set);
    rules_set_unref(vm->set);
    vm->set = set;
    map_channels(vm);
    return 0;
}

size_t rules_vm_count(const rules_vm *vm) {
    return vm->n;
}

void rules_vm_set_incr(rules_vm *vm, rules_incr_fn fn, void *ud) {
    vm->incr = fn;
    vm->incr_ud = ud;
    for (size_t i = 0; i < vm->n; i++) {
        vm->rules[i].sbx.incr = fn;
        vm->rules[i].sbx.incr_ud = ud;
    }
}

rules_set *rules_vm_set(const rules_vm *vm) {
    return vm->set;
}

rules_state_origin rules_vm_state_origin(const rules_vm *vm, size_t i) {
    /* I indexes the set; a vm of one kind holds a subset. */
    for (size_t j = 0; i < vm->set->n && j < vm->n; j++)
        if (vm->rules[j].r == &vm->set->rules[i]) return vm->rules[j].origin;
    return RULES_STATE_NEW;
}

void rules_vm_on_error(rules_vm *vm, rules_error_cb cb, void *ud) {
    vm->on_error = cb;
    vm->on_error_ud = ud;
}

const char *rules_vm_errstr(const rules_vm *vm) {
    return vm->errstr;
}

/* ---- evaluation --------------------------------------------------------- */

struct eval_args {
    vm_rule *vr;
    const char *channel;
    int chan_k; /* its index among the set's channels */
    const cJSON *event;
    long long now;
    rules_decision_cb cb;
    void *ud;
    bool bad;  /* evaluate returned an invalid decision */
    bool diag; /* a diagnosis rerun: validate only, deliver nothing */
    char err[RULES_MSG_MAX];
};

static void eval_fn(lua_State *L, void *ud) {
    struct eval_args *a = ud;
    vm_rule *vr = a->vr;
    rules_decision d[RULES_MAX_DECISIONS];
    size_t n;

    if (vr->chan_k != a->chan_k || vr->ctx_now != a->now) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, vr->ref_inner);
        lua_pushstring(L, a->channel);
        lua_setfield(L, -2, "channel");
        lua_pushinteger(L, (lua_Integer)a->now);
        lua_setfield(L, -2, "now");
        lua_settop(L, 0);
        vr->chan_k = a->chan_k;
        vr->ctx_now = a->now;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, vr->ref_eval);
    rules_sbx_push_json(L, a->event, NULL, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vr->ref_ctx);
    lua_call(L, 2, 1);
    rules_sbx_check_abort(L);
    if (rules_sbx_decisions(L, 1, a->channel, d, &n, a->err, sizeof(a->err)) != 0) {
        a->bad = true; /* a late evaluate still fails with the deadline (pcall's end) */
        return;
    }
    if (n == 0 || a->diag) return; /* the protected call's end checks the deadline */
    /* Before any decision is delivered: an evaluate that returned late must
     * decide nothing (one C call can overrun between two looks). */
    rules_sbx_check_deadline(L);
    /* Delivered decisions act: the state that led to them stays, whatever
     * the end of the protected call says. */
    rules_state_commit(&vr->sbx);
    /* All valid: deliver (the strings are anchored on this stack). */
    for (size_t i = 0; i < n; i++) {
        d[i].rule = vr->r->name;
        d[i].file = vr->r->file;
        d[i].channel = a->channel;
        atomic_fetch_add_explicit(&vr->ctr->decisions[d[i].action], 1, memory_order_relaxed);
        if (a->cb) a->cb(a->ud, &d[i]);
    }
}

static void report(rules_vm *vm, const vm_rule *vr, const char *msg) {
    if (vm->on_error)
        vm->on_error(vm->on_error_ud, vr->r->name, msg);
    else
        log_error("rules", "%s rule=%s", msg, vr->r->name);
}

/* After evaluate returned an invalid decision for the event of A (and its
 * ctx.state writes were undone): run it again with a return hook to learn
 * the line of the `return` that produced it -- the one line the analyst
 * needs, which the hot path does not pay to record. ctx.now is the same,
 * ctx.incr replays its answers and log() is silent, so the rerun decides
 * the same and changes nothing. The line, or 0 when the rerun did not fail
 * the same way. *REBUILD set when ctx.state could not be restored. */
static int diagnose(vm_rule *vr, const struct eval_args *a, bool *rebuild) {
    struct eval_args d = *a;
    rules_sbx_err e;
    int rc, line;

    d.cb = NULL;
    d.diag = true;
    d.bad = false;
    vr->sbx.trace_ret = vr->sbx.replay = true;
    rules_state_begin(&vr->sbx);
    rc = rules_sbx_pcall(&vr->sbx, eval_fn, &d, &e);
    line = vr->sbx.ret_line;
    vr->sbx.trace_ret = vr->sbx.replay = false;
    if (vr->sbx.jnl_n > 0 && rules_sbx_pcall(&vr->sbx, rules_state_rollback, NULL, &e) != 0)
        *rebuild = true;
    rules_state_commit(&vr->sbx);
    return rc == 0 && d.bad && strcmp(d.err, a->err) == 0 ? line : 0;
}

/* The `return` line of an invalid decision, at a bounded cost: the same
 * message as last time reuses its line; another is diagnosed at most once a
 * second per rule and state (a rule that returns bad decisions on every
 * sale must not run twice per sale; the rerun also repeats what evaluate
 * does to globals, which ctx.state's journal does not cover). The daemon's
 * vms (events, sale) are bounded so; a vm of every rule (`nerve rules
 * test`, fixtures) always diagnoses: the analyst wants every line. 0 = not
 * known: the caller names the rule's `evaluate` line. */
static int return_line(const rules_vm *vm, vm_rule *vr, const struct eval_args *a, bool *rebuild) {
    if (*rebuild) return 0;
    if (vm->kind == RULES_VM_ALL) return diagnose(vr, a, rebuild);
    if (vr->diag_line > 0 && strcmp(vr->diag_err, a->err) == 0) return vr->diag_line;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (vr->diag_ns && now - vr->diag_ns < 1000000000LL) return 0;
    vr->diag_ns = now;
    vr->diag_line = diagnose(vr, a, rebuild);
    snprintf(vr->diag_err, sizeof vr->diag_err, "%s", a->err);
    return vr->diag_line;
}

/* 0 when the rule ran fine, 1 when it failed. */
static int eval_one(rules_vm *vm, vm_rule *vr, struct eval_args *a) {
    char msg[RULES_MSG_MAX + 256];
    rules_sbx_err e;
    bool rebuild;
    int rc;

    if (vr->dead) {
        snprintf(msg, sizeof(msg),
                 "%s:%d: rule disabled: its state could not be rebuilt "
                 "after exceeding the memory limit",
                 vr->r->file, vr->r->line);
        atomic_fetch_add_explicit(&vr->ctr->evaluations, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&vr->ctr->errors, 1, memory_order_relaxed);
        report(vm, vr, msg);
        return 1;
    }
    a->vr = vr;
    a->bad = false;
    vr->sbx.incr_n = 0;
    rules_state_begin(&vr->sbx);
    rc = rules_sbx_pcall(&vr->sbx, eval_fn, a, &e);
    /* The protected call read the clock when it started and ended. */
    atomic_fetch_add_explicit(&vr->ctr->duration_ns, vr->sbx.end_ns - vr->sbx.start_ns,
                              memory_order_relaxed);
    hist_observe(&vr->ctr->duration, (double)(vr->sbx.end_ns - vr->sbx.start_ns) / 1e9);
    atomic_fetch_add_explicit(&vr->ctr->evaluations, 1, memory_order_relaxed);
    if (rc == 0 && !a->bad) {
        rules_state_commit(&vr->sbx);
        return 0;
    }
    atomic_fetch_add_explicit(&vr->ctr->errors, 1, memory_order_relaxed);
    rebuild = rc != 0 && e.kind == RULES_SBX_MEM;
    if (!rebuild && vr->sbx.jnl_n > 0) {
        rules_sbx_err re;

        /* Undoing may allocate (a key deleted and collected is inserted
         * again): protected, and a state that cannot be restored is rebuilt. */
        if (rules_sbx_pcall(&vr->sbx, rules_state_rollback, NULL, &re) != 0) rebuild = true;
    }
    rules_state_commit(&vr->sbx);
    if (rc != 0) {
        snprintf(msg, sizeof(msg), "%s:%d: %s", vr->r->file, e.line, e.msg);
    } else {
        int line = return_line(vm, vr, a, &rebuild);

        snprintf(msg, sizeof(msg), "%s:%d: %s", vr->r->file, line > 0 ? line : vr->r->line, a->err);
    }
    if (rebuild) {
        char rerr[RULES_MSG_MAX];
        size_t len = strlen(msg);

        rules_sbx_close(&vr->sbx);
        if (open_rule(vm, vr, rerr, sizeof(rerr)) == 0) {
            snprintf(msg + len, sizeof(msg) - len, "; ctx.state reset");
        } else {
            vr->dead = true;
            snprintf(msg + len, sizeof(msg) - len, "; rule disabled: %s", rerr);
        }
    }
    report(vm, vr, msg);
    return 1;
}

/* Evaluate EVENT with every rule on the set's channel K (CHANNEL). */
static int eval_k(rules_vm *vm, const char *channel, int k, const cJSON *event, long long now,
                  rules_decision_cb cb, void *ud) {
    struct eval_args a = {
        .channel = channel, .chan_k = k, .event = event, .now = now, .cb = cb, .ud = ud
    };
    const unsigned char *on = vm->on + k;
    size_t stride = vm->set->n_channels;
    int failed = 0;

    for (size_t i = 0; i < vm->n; i++)
        if (on[i * stride]) failed += eval_one(vm, &vm->rules[i], &a);
    return failed;
}

int rules_eval_cjson(rules_vm *vm, const char *channel, const cJSON *event, long long now,
                     rules_decision_cb cb, void *ud) {
    int k = channel_index(vm->set, channel);

    return k < 0 ? 0 : eval_k(vm, channel, k, event, now, cb, ud);
}

int rules_json_depth(const cJSON *j) {
    int max = 0;

    if (!cJSON_IsArray(j) && !cJSON_IsObject(j)) return 0;
    for (const cJSON *c = j->child; c; c = c->next) {
        int d = rules_json_depth(c);

        if (d > max) max = d;
    }
    return max + 1;
}

int rules_eval(rules_vm *vm, const char *channel, const char *json, size_t len,
               rules_decision_cb cb, void *ud) {
    const char *end = NULL;
    cJSON *ev;
    int rc, k;

    vm->errstr[0] = '\0';
    k = channel_index(vm->set, channel);
    if (k < 0) return 0;
    if (len > vm->set->max_event_bytes) {
        snprintf(vm->errstr, sizeof(vm->errstr), "event of %zu bytes is over the limit of %zu", len,
                 vm->set->max_event_bytes);
        return -1;
    }
    ev = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (ev == NULL) {
        snprintf(vm->errstr, sizeof(vm->errstr), "event is not valid JSON (at byte %td)",
                 end ? end - json : (ptrdiff_t)0);
        return -1;
    }
    while (end && (size_t)(end - json) < len &&
           (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
        end++;
    if (!cJSON_IsObject(ev) || (end && (size_t)(end - json) < len)) {
        snprintf(vm->errstr, sizeof(vm->errstr), "event is not one JSON object");
        cJSON_Delete(ev);
        return -1;
    }
    if (rules_json_depth(ev) > RULES_JSON_DEPTH) {
        snprintf(vm->errstr, sizeof(vm->errstr), "event nested deeper than %d levels",
                 RULES_JSON_DEPTH);
        cJSON_Delete(ev);
        return -1;
    }
    rc = eval_k(vm, channel, k, ev, (long long)time(NULL), cb, ud);
    cJSON_Delete(ev);
    return rc;
}
