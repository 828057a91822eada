/* rules.h -- the rules engine: sandboxed Lua 5.4 rule files over events.
 *
 * A rule file is Lua source that returns a table (SPEC §7):
 *
 *     return {
 *       name = "inventory_threshold",       -- unique in the set, [A-Za-z0-9_.-]{1,64}
 *       on = { "inventory_events" },        -- channels; "sale_request" = sale-time policy
 *       description = "...",                -- optional
 *       params_section = "inventory",       -- optional; default: name
 *       params = { key = {type=..., default=?, min=?, max=?, description=?} },  -- optional
 *       evaluate = function(event, ctx) ... end,
 *       tests = { {channel=..., event={...}, expect={...}, now=?, params=?}, ... },  -- optional
 *     }
 *
 * This module is the only one that touches the Lua C API. It has two objects:
 *
 *   rules_set  an immutable compiled rule set: each rule's source text, name,
 *              file, channels and sha256, the params tree and the limits. A set
 *              exists only if every file compiled and loaded in a fresh
 *              sandbox, returned a valid table, and passed its fixtures. It is
 *              refcounted: any thread may take a reference, read its info and
 *              its counters; the last unref frees it.
 *
 *   rules_vm   an evaluator instantiated from a set for ONE thread. It holds one
 *              lua_State per rule (of one kind: bus rules for the evaluator,
 *              sale_request rules for an HTTP worker), so a rule that leaks
 *              memory cannot starve another; each state has a byte-counting
 *              allocator capped at rules.memory_limit, and each evaluation an
 *              instruction budget of rules.instruction_limit and a wall-clock
 *              deadline of rules.eval_timeout_ms. A rules_vm is not
 *              thread-safe: give each evaluating thread its own (ctx.state is
 *              then per thread too; ctx.incr is the fleet-wide count).
 *
 * Sandbox: the globals are a whitelist -- assert error ipairs next pairs pcall
 * xpcall select tonumber tostring type unpack rawequal rawlen rawget
 * getmetatable setmetatable (refusing __gc and protected metatables), string
 * (no dump), table, math, utf8, os.time/os.clock/os.date and log(level, msg)
 * (levels debug|info|warn|error, to the log module, component "rules", at most
 * 16 lines per evaluation). No io, debug, package, require, load, loadfile,
 * dofile, collectgarbage, print, rawset. Over the instruction or memory limit
 * the evaluation is aborted and a pcall inside the rule cannot swallow that:
 * the count hook keeps raising until control is back in C. The same holds for
 * the deadline, which the count hook checks every 1000 instructions; xpcall
 * never runs a rule's message handler once an abort is pending (Lua runs it
 * with hooks off), and every function of string, table, utf8 and os.date is
 * guarded: a call whose estimated work cannot fit the deadline is refused
 * before it starts, and the clock is checked when it returns. The memory limit
 * counts live data: an allocation over the cap first gets an emergency
 * collection (states run the generational collector, so garbage rarely piles
 * up); only what still does not fit aborts, and the rule then gets a fresh
 * state (its ctx.state is lost). C functions that allocate (string.rep,
 * table.concat, patterns...) are bounded by the memory limit; CPU inside one
 * C call is not seen by the hook, so string.find/match/gmatch/gsub refuse a
 * call whose worst-case backtracking (attempts x items x subject length per
 * backtracking repeat, %b or back reference) could not finish before the
 * deadline.
 *
 * evaluate(event, ctx): EVENT is the event JSON as a fresh Lua table (JSON
 * null = absent key; integral numbers are integers). CTX is read-only:
 * ctx.params (read-only, recursively, from rules.params), ctx.channel,
 * ctx.now (integer epoch seconds), ctx.state, a table owned by the rule that
 * persists between events of that vm and across reloads when the rule's name
 * and source are unchanged (see rules_vm_new), ctx.scope(kind, id) ("kind:"
 * .. id percent-encoded into the scope grammar of nerve/scope.h) and
 * ctx.incr(key, window_s [, by]) (a counter of this rule in fixed windows:
 * see rules_incr_fn; fleet-wide in the daemon). It returns nothing, one
 * decision, or a list of decisions (at most RULES_MAX_DECISIONS):
 *     {action="alert", level="info"|"warning"|"critical", reason=str, scope=str?}
 *     {action="kill", scope=str, reason=str, halt_sales=bool?}   (default false)
 *     {action="reject", reason=str}                  (only on "sale_request")
 * Unknown fields are errors (a typo such as `halt_sale` must not pass). A scope
 * must follow the one grammar of nerve/scope.h (scope_valid), so that every
 * scope a rule can engage can also be listed and reset through the API.
 *
 * Params (rules_params.c): a rule that declares `params` has its section of
 * rules.params checked when the set loads -- a key no rule declares, a wrong
 * type, a value out of range are load errors at the config's FILE:LINE:COL
 * (or `--set KEY=VALUE`) -- and its defaults filled in, so ctx.params holds
 * every declared key; fixture params likewise. Each `on` channel must be one
 * the config names (bus.channels, bus.inventory_channel, bus.sales_channel)
 * or "sale_request"; a cfg without bus settings (not from cfg_load) skips
 * that check.
 *
 * Fixtures (tests): each has channel (one of the rule's `on`), event (table),
 * expect (list of partial decisions, {} = no decision), optional now (number,
 * default: the time of loading) and optional params (table, used instead of
 * rules.params so fixtures do not depend on deployment values). A rule's
 * fixtures run in order against one ctx.state that starts empty, like a
 * sequence of live events. A decision matches an expect entry when every field
 * the entry gives is equal; the counts must be equal.
 *
 * Every message a user sees reads `FILE:LINE: message`, FILE being the path as
 * configured (rules_dir + "/" + name; rules_dir is "rules" by default, so
 * `rules/inventory.lua:12: ...`). LINE is exact for syntax and runtime errors
 * and where a limit was hit; for an invalid decision it is the line of the
 * `return` that produced it (the event is run again with a return hook, only
 * then; `evaluate`'s line if that rerun does not fail the same way); for a
 * bad field of the returned table, the line where that key
 * appears in the source (best effort), else 1; for a fixture, the line of its
 * `channel =` key.
 */
#ifndef NERVE_RULES_H
#define NERVE_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "nerve/hist.h"

struct cfg;
struct cJSON;

#define RULES_SALE_CHANNEL  "sale_request"
#define RULES_MAX_DECISIONS 32        /* per evaluation of one rule */
#define RULES_SCOPE_MAX     200       /* bytes: SCOPE_MAX of nerve/scope.h */
#define RULES_REASON_MAX    1024      /* bytes */
#define RULES_JSON_DEPTH    32        /* event nesting */
#define RULES_FILE_MAX      (1 << 20) /* bytes of one rule file */

typedef struct rules_set rules_set;
typedef struct rules_vm rules_vm;

typedef enum { RULES_ALERT = 0, RULES_KILL, RULES_REJECT, RULES_ACTION_COUNT } rules_action;
typedef enum { RULES_LEVEL_NONE = 0, RULES_INFO, RULES_WARNING, RULES_CRITICAL } rules_level;

/* "alert", "kill", "reject"; "info", "warning", "critical" ("" for NONE). */
const char *rules_action_name(rules_action a);
const char *rules_level_name(rules_level l);

/* One decision. Every pointer is valid only during the callback that receives
 * it: copy what you keep. rule and file belong to the set; reason and scope to
 * the rule's Lua state. */
typedef struct rules_decision {
    const char *rule;
    const char *file;
    const char *channel;
    rules_action action;
    rules_level level;  /* alerts; RULES_LEVEL_NONE otherwise */
    const char *reason; /* never NULL */
    const char *scope;  /* NULL when none (optional for alert, never for reject) */
    bool halt_sales;    /* kill only; false otherwise */
} rules_decision;

typedef void (*rules_decision_cb)(void *ud, const rules_decision *d);

/* Backend of ctx.incr(key, window_s [, by]) (see "Counters" above): add BY
 * to the counter KEY (KEYLEN bytes, no NUL) of RULE in the fixed window of
 * WINDOW_S seconds that holds NOW (epoch seconds; windows are aligned on
 * multiples of WINDOW_S), and set *COUNT to the new total. 0, or -1 with a
 * message in ERR (the rule then fails with it). Called on the evaluating
 * thread, inside the evaluation: it must be bounded in time. */
typedef int (*rules_incr_fn)(void *ud, const char *rule, const char *key, size_t keylen,
                             long long window_s, long long by, long long now, long long *count,
                             char *err, size_t errlen);
/* MSG reads `FILE:LINE: message` (one line); RULE is the rule's name. */
typedef void (*rules_error_cb)(void *ud, const char *rule, const char *msg);

/* ---- rule sets (immutable; thread-safe) -------------------------------- */

/* Compile the rules CFG names: rules_files when non-empty (in that order;
 * a relative entry is relative to rules_dir, an absolute one is used as is),
 * else every regular *.lua file in rules_dir not starting with '.', sorted by
 * name. Each file is read as text (bytecode is refused), run in a fresh
 * sandbox under the configured limits, its returned table validated (names
 * unique across the set) and its fixtures run. The set copies what it needs
 * from CFG (params, limits, max_event_bytes): CFG may be freed afterwards.
 *
 * Returns a set with one reference, or NULL with *ERRORS set to a malloc'd
 * text the caller frees: every problem found in every file, one
 * `FILE:LINE: message` per line. No rule files at all is an error. */
rules_set *rules_set_load(const struct cfg *c, char **errors);

/* rules_set_load for `nerve rules test`: a failed fixture does not stop its
 * rule from loading; *FIXTURE_ERRORS gets those failures (malloc'd text, same
 * format; NULL when every fixture passed), whether or not a set is returned. */
rules_set *rules_set_load_dry(const struct cfg *c, char **errors, char **fixture_errors);

/* Take / drop a reference. Thread-safe. rules_set_unref(NULL) is a no-op. */
rules_set *rules_set_ref(rules_set *s);
void rules_set_unref(rules_set *s);

typedef struct rules_info {
    const char *name;
    const char *file;
    const char *description; /* "" when none */
    const char *const *channels;
    size_t n_channels;
    const char *sha256; /* hex digest of the source text */
    int n_fixtures;
} rules_info;

/* Number of rules, in evaluation order (the order of the files). */
size_t rules_set_count(const rules_set *s);
/* Fill OUT for rule I (pointers owned by the set). 0, or -1 if I is out of range. */
int rules_set_info(const rules_set *s, size_t i, rules_info *out);
/* Hex sha256 over every rule in order: sha256 of "FILE\0SHA256HEX\n"... */
const char *rules_set_sha256(const rules_set *s);
/* Wall-clock time (epoch seconds) the set finished loading. */
long long rules_set_loaded_at(const rules_set *s);
/* rules.sale_on_error of the config the set was loaded with: 1 = allow. */
int rules_set_sale_allow(const rules_set *s);
/* rules.eval_timeout_ms of the set. */
int rules_set_timeout_ms(const rules_set *s);
/* 1 when at least one rule listens on CHANNEL (so a caller may skip parsing). */
int rules_set_listens(const rules_set *s, const char *channel);
/* 0 when a rule may listen on CHANNEL under config C (bus.channels,
 * bus.inventory_channel, bus.sales_channel or "sale_request"; a cfg not from
 * cfg_load knows every channel), else -1 with ERR: the known ones and a
 * "did you mean" when one is close. The one definition: the loader's check
 * and `nerve rules new` both use it. */
int rules_channel_known(const struct cfg *c, const char *channel, char *err, size_t errlen);
/* The union of every rule's channels, in first-seen order; *N gets the count. */
const char *const *rules_set_channels(const rules_set *s, size_t *n);

/* Per-rule counters, cumulative over every vm built from this set and, once
 * the set was given to rules_set_adopt_tally, over every earlier set with a
 * rule of the same name (else a set starts at zero). Updated with relaxed
 * atomics; any thread may read. */
typedef struct rules_stats {
    uint64_t evaluations;
    uint64_t errors; /* runtime errors, limits, invalid decisions */
    uint64_t decisions[RULES_ACTION_COUNT];
    uint64_t duration_ns; /* cumulative wall time in evaluate */
    hist_snap duration;   /* wall time of each evaluate (errors included) */
} rules_stats;
int rules_set_stats(const rules_set *s, size_t i, rules_stats *out);

/* Per-rule counters that outlive rule sets, keyed by rule name: what a
 * reload keeps counting into, whether the rule changed or not (a counter
 * never goes backwards for a given rule label). A rule removed and added
 * back later continues where it stopped. Thread-safety: every function;
 * the tally and the sets share the counters by reference count, so either
 * may be freed first. */
typedef struct rules_tally rules_tally;
rules_tally *rules_tally_new(void);
void rules_tally_free(rules_tally *t);
/* Make each rule of S count into T's counters of its name (created, from
 * S's own, on the first set that has that name). Call before any vm is built
 * from S. 0, or -1 when out of memory (the rules not adopted keep S's own
 * counters). */
int rules_set_adopt_tally(rules_set *s, rules_tally *t);

/* ---- evaluators (one per thread) -------------------------------------- */

typedef enum {
    RULES_STATE_NEW = 0, /* no rule of that name in the previous vm */
    RULES_STATE_KEPT,    /* same name and source sha: ctx.state carried over */
    RULES_STATE_RESET,   /* same name, changed source: ctx.state starts empty */
    RULES_STATE_LOST,    /* unchanged, but the state could not be copied
                               (over the memory limit, too deep): starts empty */
} rules_state_origin;

const char *rules_state_origin_name(rules_state_origin o); /* "new", "kept", ... */

/* Build an evaluator for SET (takes its own reference). When PREVIOUS is not
 * NULL (a vm of the same thread, typically on the set being replaced), the
 * ctx.state of every rule with the same name and source sha256 is copied from
 * it (plain data: tables, strings, numbers, booleans; functions, metatables
 * and userdata are dropped); PREVIOUS is left untouched and still owned by
 * the caller, who frees it when done. rules_vm_state_origin tells what
 * happened to each rule. Returns NULL with a message in ERR (when ERR is not
 * NULL) if a state cannot be created. */
rules_vm *rules_vm_new(rules_set *set, rules_vm *previous, char *err, size_t errlen);

/* Which rules a vm holds: every rule, the rules that listen on at least one
 * bus channel (the evaluator's), or those that listen on "sale_request" (one
 * vm per HTTP worker, so an event rule's state is never copied per thread).
 * A rule on both kinds of channel is in both vms, each with its own
 * ctx.state. */
typedef enum { RULES_VM_ALL = 0, RULES_VM_EVENTS, RULES_VM_SALE } rules_vm_kind;

/* rules_vm_new restricted to KIND. A vm with no rule is valid (evaluates
 * nothing). */
rules_vm *rules_vm_new_kind(rules_set *set, rules_vm *previous, rules_vm_kind kind, char *err,
                            size_t errlen);

/* Move VM onto SET without rebuilding any Lua state, when that changes
 * nothing a rule can see: SET holds exactly the same rules of VM's kind
 * (names and source, in order) with the same params and limits (typically a
 * reload that changed other rules, or nothing). Every ctx.state is kept;
 * counters then go to SET. 0, or -1 (VM unchanged: build a new one). */
int rules_vm_rebind(rules_vm *vm, rules_set *set);

/* Number of rules (and so Lua states) VM holds. */
size_t rules_vm_count(const rules_vm *vm);

/* Where ctx.incr goes. Default (FN NULL): a counter local to each rule's Lua
 * state, for fixtures, `nerve rules test` and `nerve check`. */
void rules_vm_set_incr(rules_vm *vm, rules_incr_fn fn, void *ud);
void rules_vm_free(rules_vm *vm);

/* The set the vm evaluates (borrowed; the vm holds a reference). */
rules_set *rules_vm_set(const rules_vm *vm);
/* What happened to rule I's ctx.state in rules_vm_new. */
rules_state_origin rules_vm_state_origin(const rules_vm *vm, size_t i);

/* Where rule errors go. Default (CB NULL): logged at error level, component
 * "rules", as `FILE:LINE: message rule=NAME`. */
void rules_vm_on_error(rules_vm *vm, rules_error_cb cb, void *ud);

/* Evaluate one event. JSON (LEN bytes, at most cfg.max_event_bytes) must be a
 * JSON object nested at most RULES_JSON_DEPTH deep. Every rule whose `on`
 * holds CHANNEL runs, in set order; each valid decision goes to CB(UD, d)
 * (CB may be NULL). A rule's runtime error, limit overrun or invalid decision
 * goes to the error callback and that rule's counters, and no decision of that
 * evaluation of that rule is delivered; other rules are not affected. A rule
 * that ran out of memory gets a fresh Lua state (its ctx.state is lost).
 * Callbacks must not call back into this vm.
 *
 * Returns the number of rules that failed (0 = all fine), or -1 when the event
 * itself is not acceptable (rules_vm_errstr says why; no rule ran). */
int rules_eval(rules_vm *vm, const char *channel, const char *json, size_t len,
               rules_decision_cb cb, void *ud);

/* The same on an already parsed event (a JSON object, not checked for depth
 * beyond RULES_JSON_DEPTH: deeper nesting is that rule's error), with ctx.now
 * = NOW (epoch seconds). */
int rules_eval_cjson(rules_vm *vm, const char *channel, const struct cJSON *event, long long now,
                     rules_decision_cb cb, void *ud);

/* Why the last rules_eval returned -1. */
const char *rules_vm_errstr(const rules_vm *vm);

/* ---- dry run (`nerve rules test`) -------------------------------------- */

/* Read IN (named IN_NAME in messages), one JSON object per line:
 *     {"channel": str, "event": {...}, "now": int?}
 * (blank lines and lines starting with '#' are skipped), evaluate each on a
 * fresh vm of SET, and print on OUT one JSON line per decision:
 *     {"rule":..., "channel":..., "decision":{"action":...,...}}
 * Rule errors go to ERROUT as `FILE:LINE: message`, bad input lines as
 * `IN_NAME:LINE: message`. Returns 0 when every line was valid and no rule
 * failed, else -1. No Redis involved. */
int rules_test_events(rules_set *set, FILE *in, const char *in_name, FILE *out, FILE *errout);

/* What `nerve rules test` adds to the dry run. */
typedef struct rules_test_opts {
    const char *rule; /* NULL, or evaluate only this rule (the others do not run) */
    bool all;         /* also print `IN_NAME:LINE: no decision (CHANNEL)` */
} rules_test_opts;

/* rules_test_events with O (NULL: exactly rules_test_events). With O, every
 * line about an event (decision on OUT, rule error on ERROUT) starts with
 * `IN_NAME:LINE: ` of that event, and a last line on ERROUT sums up:
 *     events: 12, decisions: 3 (kill 1, alert 2), errors: 1 */
int rules_test_run(rules_set *set, FILE *in, const char *in_name, const rules_test_opts *o,
                   FILE *out, FILE *errout);

#endif
