/* rules_int.h -- internals shared by the rules engine's files (not a public
 * header): the set's layout and loading (rules.c), fixtures and the dry run
 * (rules_test.c), the sandbox (rules_sandbox.c, bounded C calls in
 * rules_guard.c), the values crossing it
 * (rules_values.c) and the evaluator (rules_vm.c).
 *
 * A rules_sbx is one sandboxed lua_State with its allocator and limits. All
 * Lua work goes through rules_sbx_pcall(), which runs a C callback in
 * protected mode under the instruction budget, so that a memory error can
 * never reach Lua's panic handler and every error becomes a (line, message)
 * pair the caller prefixes with the file name.
 */
#ifndef NERVE_RULES_INT_H
#define NERVE_RULES_INT_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include "nerve/hist.h"
#include "nerve/rules.h"

#define RULES_MSG_MAX      1024 /* one error message */
#define RULES_NAME_MAX     64
#define RULES_CHANNEL_MAX  128
#define RULES_MAX_CHANNELS 32 /* per rule */
#define RULES_LOG_MAX      16 /* log() lines per evaluation */
#define RULES_STATE_DEPTH  64 /* ctx.state nesting that survives a reload */
#define RULES_INCR_LOG     16 /* ctx.incr results kept for a diagnosis rerun */

#define RULES_MAX_PARAMS 64 /* declared per rule */

/* Types a rule may declare for a parameter (rules_params.c). A map is a
 * mapping of any key (a SKU...) to values of one scalar type. */
typedef enum {
    RULES_P_INTEGER = 0,
    RULES_P_NUMBER,
    RULES_P_STRING,
    RULES_P_BOOLEAN,
    RULES_P_MAP
} rules_ptype;

/* One declared parameter, as the set keeps it. */
typedef struct rules_param {
    char *key;
    rules_ptype type;
    rules_ptype values; /* RULES_P_MAP: the type of each value */
    bool has_min, has_max;
    double min, max;   /* numeric types, and maps of them */
    struct cJSON *def; /* the default; NULL: the key is required */
    int line;          /* of its declaration in the rule file */
} rules_param;

typedef struct rules_rule {
    char *name;
    char *file;
    char *description;
    char **channels;
    size_t n_channels;
    char *src; /* the source text, NUL-terminated */
    size_t src_len;
    char sha256[65];
    int line; /* line of `evaluate`: fallback for errors */
    int n_fixtures;
    /* Only while the set loads (in a list of its own, for the rules that
     * failed too): */
    char *params_section; /* key under rules.params it reads; NULL: not declared */
    bool declares;        /* has `params`: its section is checked */
    rules_param *params;
    size_t n_params;
} rules_rule;

/* One rule's counters, on their own cache lines so that threads evaluating
 * different rules do not bounce each other's. Shared by name across reloads
 * (rules_tally.c): a set points at the tally's counters of each of its rules,
 * so a reload never sends a Prometheus counter backwards. */
typedef struct rules_counters {
    alignas(64) _Atomic uint64_t evaluations;
    _Atomic uint64_t errors;
    _Atomic uint64_t duration_ns;
    _Atomic uint64_t decisions[RULES_ACTION_COUNT];
    hist duration;   /* per evaluation, seconds */
    atomic_int refs; /* the sets and the tally pointing here */
} rules_counters;

/* New zeroed counters with one reference, or NULL; drop with _unref. */
rules_counters *rules_counters_new(void);
void rules_counters_unref(rules_counters *c);

struct rules_set {
    atomic_int refs;
    rules_rule *rules;
    size_t n;
    rules_counters **ctr; /* n of them, one reference each */
    char **channels;      /* union of the rules' channels */
    size_t n_channels;
    char sha256[65];
    long long instr_limit;
    size_t mem_limit;
    int timeout_ms;  /* wall-clock deadline of one evaluation */
    bool sale_allow; /* rules.sale_on_error == allow */
    size_t max_event_bytes;
    struct cJSON *params; /* owned copy of cfg.params (an object) */
    long long loaded_at;
};

/* ---- loading (rules.c) and fixtures (rules_test.c) --------------------- */

/* Load errors, collected: one "FILE:LINE: message\n" per problem. */
typedef struct rules_errbuf {
    char *s;
    size_t len, cap;
    int count; /* problems seen, even if the text ran out of memory */
} rules_errbuf;

void rules_eb_add(rules_errbuf *b, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The same with the whole prefix given: WHERE (a config place such as
 * "config/nerve.yaml:12:7" or "--set KEY=VALUE"; NULL: none) then ": ". */
void rules_eb_addat(rules_errbuf *b, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Best-effort line of the NTH (1-based) `KEY =` at or after line FROM of
 * SRC, ignoring what follows `--`; 0 when not found. */
int rules_key_line(const char *src, size_t len, const char *key, int from, int nth);
/* 1 when S (LEN bytes) is a valid channel name. */
int rules_channel_ok(const char *s, size_t len);

/* One rule file being loaded. validate_fn (rules.c) fills it; strings point
 * into the Lua state and are copied out after the protected call (so no C
 * allocation can be skipped by a Lua error), before the state is closed. */
struct rules_load {
    const char *file;
    const char *src;
    size_t src_len;
    const struct cJSON *params;
    rules_errbuf *eb;
    int errors_before;
    const char *name;
    const char *desc;
    const char *chan[RULES_MAX_CHANNELS];
    size_t n_chan;
    int eval_line;
    int tests_line;
    int n_fix;
    /* params_section and params, as declared (rules_params_parse) */
    const char *section;
    bool has_section, has_params;
    int params_line;
    struct rules_pdecl {
        const char *key;
        rules_ptype type, values;
        bool has_min, has_max, has_def;
        double min, max;
        int def_type; /* LUA_T* of the default */
        double def_num;
        bool def_int, def_bool;
        const char *def_str;
        int line;
    } decl[RULES_MAX_PARAMS];
    size_t n_decl;
    const rules_param *params_decl; /* built from decl before the fixtures run */
    size_t n_params;
    bool ok;                             /* the shape is valid: fixtures can run */
    int ref_rule, ref_state, ref_params; /* registry refs in the sandbox */
    long long now;                       /* default ctx.now of fixtures */
};

/* Inside FN: anchor the string on top of the stack in table ANCHOR (so it
 * outlives changes the rule makes to where it came from) and return it. */
const char *rules_anchored(lua_State *L, int anchor);

/* ---- parameter declarations and channels (rules_params.c) --------------- */

/* Inside validate_fn: read `params_section` and `params` of the rule table at
 * T into A (strings anchored in ANCHOR), adding every bad declaration to
 * A->eb at its FILE:LINE. */
void rules_params_parse(lua_State *L, int t, int anchor, struct rules_load *a);
/* After the protected call: R's params_section, declares and params from A
 * (R->name set). 0, or -1 when out of memory. */
int rules_params_build(rules_rule *r, const struct rules_load *a);
/* Check the section of PARAMS (the set's copy of rules.params) that R reads
 * against R's declarations, types and ranges, naming each bad value's place
 * in WHERE (cfg.params_where, may be NULL), and fill in R's defaults. */
void rules_params_check(const rules_rule *r, struct cJSON *params, const struct cJSON *where,
                        rules_errbuf *eb);
/* Refuse the keys of every checked section of PARAMS that none of the N
 * rules R (their declarations; name NULL = skipped) declares. */
void rules_params_unknown(const rules_rule *r, size_t n, const struct cJSON *params,
                          const struct cJSON *where, rules_errbuf *eb);
/* Inside a fixture: replace the params table at IDX with a checked copy,
 * defaults filled in, for the rule A loads; 0, or -1 with ERR. */
int rules_params_fixture(lua_State *L, int idx, const struct rules_load *a, char *err,
                         size_t errlen);
/* The candidate of CANDS (N of them) closest to WORD by edit distance, when
 * close enough to be a likely typo; else NULL. */
const char *rules_suggest(const char *word, const char *const *cands, size_t n);

struct cfg;
/* Refuse (in EB, at the `on` line) each channel of A that C does not name:
 * bus.channels, bus.inventory_channel, bus.sales_channel, or "sale_request".
 * Not checked when C names no bus channels (a cfg not from cfg_load). */
void rules_channels_check(const struct rules_load *a, const struct cfg *c, rules_errbuf *eb);

/* Run the N_FIX fixtures of the rule A describes in its sandbox S, adding
 * every failure to A->eb. */
struct rules_sbx;
void rules_run_fixtures(struct rules_sbx *s, struct rules_load *a);

/* ---- the sandbox (rules_sandbox.c, rules_values.c) --------------------- */

enum {
    RULES_SBX_OK = 0,
    RULES_SBX_ERR,
    RULES_SBX_INSTR,
    RULES_SBX_MEM,
    RULES_SBX_TIME,
    RULES_SBX_STACK
};

typedef struct rules_sbx_err {
    int kind;                /* RULES_SBX_* */
    int line;                /* >= 1 */
    char msg[RULES_MSG_MAX]; /* without the FILE:LINE: prefix */
} rules_sbx_err;

typedef struct rules_sbx {
    lua_State *L;
    size_t used;  /* bytes allocated by L */
    size_t limit; /* cap on used */
    int instr_limit;
    long long budget;           /* instructions (and charged C work) left in this pcall */
    int period;                 /* instructions between two count hooks */
    int timeout_ms;             /* wall-clock deadline of one pcall */
    uint64_t deadline_ns;       /* CLOCK_MONOTONIC; set by rules_sbx_pcall */
    uint64_t last_hook_ns;      /* when the count hook last looked */
    uint64_t start_ns;          /* when this pcall started */
    uint64_t end_ns;            /* when the last pcall ended */
    uint64_t hard_ns;           /* wall-clock cap, whatever the CPU time */
    uint64_t mark_ns, cpu_mark; /* wall and thread CPU time once the call ran 1 ms */
    uint64_t pre_ns;            /* time charged up to the mark */
    uint64_t io_ns;             /* wall time in blocking calls (ctx.incr) after the mark */
    uint64_t io_early_ns;       /* ... and before it */
    uintptr_t stack_guard;      /* lowest C stack address a call may start at; 0 = none */
    int hookmask;               /* LUA_MASKCOUNT, plus LUA_MASKCALL with a stack guard */
    int abort;                  /* RULES_SBX_INSTR / _MEM / _TIME once a limit was hit */
    int abort_line;
    int err_line;   /* line recorded by the message handler */
    bool armed;     /* inside rules_sbx_pcall */
    bool pending;   /* an allocation was refused; Lua may retry it */
    void *pend_ptr; /* ... this one */
    size_t pend_osize, pend_nsize;
    int pend_line;
    size_t churn;       /* bytes allocated in this pcall (growth only) */
    size_t churn_limit; /* mem limit + 64 bytes per instruction of budget */
    bool churned;       /* the instruction abort came from churn */
    bool compiling;     /* parsing a chunk: allocations are not charged */
    int logs_left;
    const char *file;   /* borrowed; chunk name is "@" file */
    const char *name;   /* borrowed; rule name for log(), may be NULL */
    int def_line;       /* fallback line for errors without one */
    bool journal;       /* writes to ctx.state are journaled (inside evaluate) */
    int jnl_n;          /* entries in the journal */
    bool jnl_idx;       /* ... and an index of them was built */
    rules_incr_fn incr; /* ctx.incr backend; NULL = counters local to this state */
    void *incr_ud;
    /* Finding the `return` behind an invalid decision (rules_vm.c runs the
     * event again, fixtures run so): with trace_ret, a return hook records
     * in ret_line the line of the last Lua function to return to C (the
     * top-level evaluate, or what it tail-called). With replay, ctx.incr
     * answers what it answered in the last call (incr_log) instead of
     * counting again, and log() is silent: the rerun must change nothing. */
    bool trace_ret, replay;
    int ret_line;
    int incr_n, incr_i; /* ctx.incr results logged (reset by the caller); replayed */
    long long incr_log[RULES_INCR_LOG];
    char short_src[LUA_IDSIZE]; /* how Lua abbreviates FILE in messages */
} rules_sbx;

/* The sandbox that owns L (kept in L's extra space). */
static inline rules_sbx *rules_sbx_of(lua_State *L) {
    return *(rules_sbx **)lua_getextraspace(L);
}

/* Create the sandboxed state. FILE and NAME must outlive S. 0, or -1 with E. */
int rules_sbx_open(rules_sbx *s, const char *file, const char *name, long long instr_limit,
                   size_t mem_limit, int timeout_ms, rules_sbx_err *e);
/* Monotonic clock, ns. */
uint64_t rules_now_ns(void);
/* Close the state; S may be zeroed or already closed. */
void rules_sbx_close(rules_sbx *s);

/* Run FN(L, UD) in protected mode with a fresh instruction budget and a
 * deadline of timeout_ms from now (or DEADLINE_NS when that is earlier and
 * not 0: a file's fixtures share one overall budget). Whatever FN
 * leaves on the stack is dropped. FN may raise Lua errors; it must not hold C
 * resources across calls that can raise. Returns 0, or -1 with E filled
 * (E->kind says whether a limit was hit; after RULES_SBX_MEM the caller should
 * rebuild the state). */
typedef void (*rules_sbx_fn)(lua_State *L, void *ud);
int rules_sbx_pcall(rules_sbx *s, rules_sbx_fn fn, void *ud, rules_sbx_err *e);
int rules_sbx_pcall_until(rules_sbx *s, rules_sbx_fn fn, void *ud, uint64_t deadline_ns,
                          rules_sbx_err *e);

/* Inside FN, from a C function a rule called: raise the abort (which no
 * pcall in the rule can swallow) when the deadline has passed. */
void rules_sbx_check_deadline(lua_State *L);

/* Raise abort KIND from a C function the rule called (rules_guard.c). */
int rules_sbx_abort(lua_State *L, int kind);
/* Nanoseconds left before the call's deadline (0 when past it). */
double rules_sbx_time_left(lua_State *L);
/* Guard the sandbox's library functions and xpcall (rules_guard.c); called
 * once by rules_sbx_open on the fresh environment. */
void rules_guard_env(lua_State *L);

/* Inside FN, after calling into the rule: raise the pending abort, if any
 * (a rule that caught it and returned at once must still fail with it). */
void rules_sbx_check_abort(lua_State *L);

/* The rule was blocked NS nanoseconds in a call that waits rather than
 * computes (ctx.incr): that time counts against its deadline in full. */
void rules_sbx_blocked(rules_sbx *s, uint64_t ns);

/* Inside FN: compile SRC (text only) as the sandbox's file and run it,
 * pushing its first result. Raises on a syntax or runtime error. */
void rules_sbx_run_chunk(lua_State *L, const char *src, size_t len);

/* Inside FN: push the JSON value J as Lua (objects and arrays as tables, null
 * as nil). With RO, every table is wrapped read-only, named RO in errors
 * ("params"). Raises past RULES_JSON_DEPTH + DEPTH levels. */
void rules_sbx_push_json(lua_State *L, const struct cJSON *j, const char *ro, int depth);
/* Inside FN: push a read-only deep copy of the table at IDX. */
void rules_sbx_push_ro_copy(lua_State *L, int idx, const char *ro, int depth);
/* Inside FN: build ctx over the params at PARAMS_IDX and the table at
 * STATE_IDX; pushes the read-only ctx, then its inner table (where channel
 * and now are written before each call). */
void rules_sbx_push_ctx(lua_State *L, int params_idx, int state_idx);

/* Transactional ctx.state (rules_values.c). Every table of ctx.state is a
 * proxy whose writes are journaled while s->journal is set: begin a call with
 * rules_state_begin, end it with rules_state_commit (good: drop the journal)
 * or run rules_state_rollback in a protected call (failed: restore every key
 * written since the begin).
 *
 * Inside FN: make the table at IDX, and every table without a metatable
 * reachable from it, a ctx.state table, in place (references kept elsewhere
 * see the same table). */
void rules_state_adopt(lua_State *L, int idx);
static inline void rules_state_begin(rules_sbx *s) {
    s->journal = true;
}
/* Outside protected mode: neither allocates nor raises. */
void rules_state_commit(rules_sbx *s);
/* A rules_sbx_fn: undo the journaled writes, then commit. */
void rules_state_rollback(lua_State *L, void *ud);
/* When the value at IDX is a ctx.state table, push its data table and
 * return 1; else 0. Never allocates or raises (needs 2 free stack slots). */
int rules_state_data(lua_State *L, int idx);
/* lua_rawlen of the value at IDX, of its data for a ctx.state table. */
size_t rules_state_rawlen(lua_State *L, int idx);
/* Inside FN: next, rawget and rawlen that see through ctx.state's tables. */
void rules_state_env(lua_State *L);

/* Inside FN: validate what evaluate returned (at absolute IDX) for CHANNEL.
 * Fills OUT (action, level, reason, scope, halt_sales) and *N. Returns 0, or
 * -1 with a message like `decision 2: kill needs a scope` in ERR. */
int rules_sbx_decisions(lua_State *L, int idx, const char *channel, rules_decision *out, size_t *n,
                        char *err, size_t errlen);

/* Inside FN (running on DST): push a copy of the plain data at the top of
 * SRC's stack (another, idle state), its tables made ctx.state tables (the
 * data of SRC's are read). Raises on DST past RULES_STATE_DEPTH. */
void rules_sbx_copy(lua_State *dst, lua_State *src);

/* Copy S into DST (size N) replacing control characters with spaces. */
void rules_sanitize(char *dst, size_t n, const char *s, size_t len);

/* rules_vm_new holding only the rule NAME of SET (none when no rule has
 * that name): `nerve rules test --rule NAME` evaluates that rule alone. */
rules_vm *rules_vm_new_rule(rules_set *set, const char *name, char *err, size_t errlen);

/* Shared by the vm and the dry run. */
int rules_channel_in(const rules_rule *r, const char *channel);
/* Container nesting of J (a scalar is 0, {} is 1). */
int rules_json_depth(const struct cJSON *j);

#endif
