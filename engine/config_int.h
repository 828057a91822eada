/* config_int.h -- internals shared by the config module's files. PRIVATE to
 * engine/config*.c: not a public header, not under include/, and no other
 * module may include it; the module's contract is include/nerve/config.h.
 *
 *   config.c         the option table (cfg_opts) and its string checks, the
 *                    error report (cfg_errf), YAML documents and the walk of
 *                    the file's two levels, cross-key checks, cfg_load() and
 *                    cfg_free()
 *   config_values.c  what a key's YAML node becomes in struct cfg
 *                    (cfg_set_node): integers, numbers, booleans, strings,
 *                    lists, the rules.params cJSON tree, inventory.seed; the
 *                    defaults; the environment and --set overrides
 *
 * What they share is the table, the loader (one per cfg_load() call: the cfg
 * being built plus the error report) and the YAML-node helpers both sides
 * need. Nothing here keeps global state, logs or exits: errors are added to
 * the loader's report with cfg_errf(), running out of memory sets L->oom, and
 * every function is as thread-safe as cfg_load() itself.
 */
#ifndef NERVE_CONFIG_INT_H
#define NERVE_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>

#include <yaml.h>

#include "nerve/config.h"

/* ---- bounds on every input ---------------------------------------------- */

#define MAX_FILE_BYTES  (4L << 20) /* a config file */
#define MAX_VALUE_BYTES (1L << 20) /* one --set value */
#define MAX_STR         4096       /* a string setting or list entry, bytes */
#define MAX_LIST        256        /* entries of a string list */
#define MAX_MAP         10000      /* entries of one YAML mapping */
#define MAX_DEPTH       32         /* rules.params nesting */
#define MAX_NODES       65536      /* values in one rules.params tree */
#define MAX_KEY         256        /* a mapping key or dotted key, bytes */
#define MAX_PREFIX      64         /* redis.prefix, bytes */
#define MAX_ERRORS      100        /* lines reported before giving up */
#define MAX_SHOW        64         /* bytes of a bad value echoed back */
#define QBUF            (MAX_SHOW * 4 + 8)
#define PATHBUF         1024
#define TREE_START      "[{\"'" /* override values parsed as YAML */

/* ---- the table (config.c) ---------------------------------------------- */

typedef enum {
    T_INT,
    T_LONG,
    T_LLONG,
    T_DOUBLE,
    T_BOOL, /* numbers */
    T_STR,
    T_ENUM,
    T_LIST, /* strings */
    T_PARAMS,
    T_SEED /* trees */
} otype;

/* An extra syntax check for a string setting: 0 when S is fine, else -1 with
 * a message in MSG. */
typedef int check_fn(const char *s, char *msg, size_t size);

typedef struct opt {
    const char *key; /* "section.name" */
    otype type;
    size_t off;                 /* the field in struct cfg */
    size_t off_n;               /* T_LIST, T_SEED: its count field */
    long long min, max;         /* integers: value; T_STR: length in bytes */
    long long idef;             /* integers and T_BOOL */
    double dmin, dmax, ddef;    /* T_DOUBLE */
    const char *sdef;           /* T_STR, T_ENUM; T_LIST: comma-separated */
    const char *const *choices; /* T_ENUM, NULL-terminated */
    check_fn *check;            /* T_STR, optional */
} opt;

/* Every key: its type, field, range and default, in the order of
 * include/nerve/config.h. Read-only; CFG_NOPTS rows (config.c asserts it). */
#define CFG_NOPTS 69
extern const opt cfg_opts[];

/* The field of C that O describes. */
#define FIELD(c, o, T) ((T *)(void *)((char *)(c) + (o)->off))
#define COUNT(c, o)    ((size_t *)(void *)((char *)(c) + (o)->off_n))

/* The row of dotted KEY ("section.name"), or NULL when there is none. */
const opt *cfg_find_opt(const char *key);

/* ---- the loader and its error report (config.c) ------------------------ */

/* Where a value came from, which decides an error's prefix. */
typedef enum { AT_DEFAULT = 0, AT_FILE, AT_ENV, AT_SET } at_kind;

typedef struct origin {
    at_kind kind;
    const char *file; /* AT_FILE */
    const char *name; /* AT_ENV: the variable */
    int line, col;    /* AT_FILE, 1-based; 0 = the file as a whole */
} origin;

/* One cfg_load() call: the cfg being built, which the loader owns until
 * cfg_load() hands it over or frees it, and the report (L->err, malloc'd). */
typedef struct loader {
    cfg *c;
    char *err; /* the report, one error per line */
    size_t len, cap;
    int nerr;
    bool oom;
    long budget;          /* rules.params values left in this conversion */
    const char *set_arg;  /* the --set argument being applied, for params_where */
    origin at[CFG_NOPTS]; /* where each key was last set, for cross-key checks */
} loader;

/* Add one line to L's report: "FILE:LINE:COL: KEY: message" (AT_FILE; just
 * "FILE: " when AT has no line), "env NAME: message" (AT_ENV; KEY is not
 * shown), "--set KEY: message" (AT_SET) or "KEY: message" (AT_DEFAULT); KEY
 * may be NULL. After MAX_ERRORS lines, one "too many errors" line ends it. */
__attribute__((format(printf, 4, 5))) void cfg_errf(loader *L, const origin *at, const char *key,
                                                    const char *fmt, ...);

/* S quoted and escaped for a message, cut after MAX_SHOW bytes; written into
 * the caller's BUF of QBUF bytes, which is returned. */
const char *cfg_quote(char *buf, const char *s);

/* N advanced by snprintf's result R in a buffer of SIZE bytes, clamped to
 * the truncated length. */
size_t cfg_advance(size_t n, int r, size_t size);

/* Report KEY as unknown at AT, pointing secret-looking keys at the
 * environment variable they belong in. */
void cfg_unknown_key(loader *L, const origin *at, const char *key);

/* ---- YAML documents and nodes (config.c) ------------------------------- */

/* Load the one document of BUF[0..LEN) into D; -1 after reporting a syntax
 * error or a second document (under BASE, and KEY for an override). D is
 * the caller's and is always safe to yaml_document_delete(). */
int cfg_load_doc(loader *L, yaml_document_t *d, const char *buf, size_t len, const origin *base,
                 const char *key);

/* Node ID of D (NULL when out of range); owned by D. */
yaml_node_t *cfg_node(yaml_document_t *d, int id);

/* BASE moved to N's 1-based line and column when BASE is a file. */
origin cfg_at_node(const origin *base, const yaml_node_t *n);

/* The text of mapping key K (owned by its document), or NULL after
 * reporting it (under PARENT) when it is not a string of 1 to MAX_KEY
 * bytes. */
const char *cfg_key_text(loader *L, const yaml_node_t *k, const origin *base, const char *parent);

/* true after reporting PAIR's key (under KEY) when an earlier key of
 * mapping M has the same text. */
bool cfg_duplicate(loader *L, yaml_document_t *d, yaml_node_t *m, yaml_node_pair_t *pair,
                   const origin *base, const char *key);

/* true after reporting it (under KEY) when mapping M has more than MAX_MAP
 * entries. */
bool cfg_map_too_big(loader *L, yaml_node_t *m, const origin *base, const char *key);

/* ---- values (config_values.c) ------------------------------------------ */

/* A whole decimal integer (optional sign, no spaces): 0, -1 when S is not
 * one, -2 when out of range. */
int cfg_parse_ll(const char *s, long long *out);

/* N is a plain null scalar: empty, ~, null, Null or NULL. */
bool cfg_is_null(const yaml_node_t *n);

/* "a mapping", "a list" or "a string": what N is, for messages. */
const char *cfg_kind(const yaml_node_t *n);

/* Scalar N holds a NUL byte (a C string would silently cut there). */
bool cfg_has_nul(const yaml_node_t *n);

/* Set key O (spelled KEY) from node N of D, whose place is taken from BASE
 * (see cfg_at_node). A bad value is reported and the previous value stays.
 * The cfg keeps copies of what it needs: N and D stay the caller's. Records
 * where O was set in L->at for cross-key checks. */
void cfg_set_node(loader *L, const opt *o, const char *key, yaml_document_t *d, yaml_node_t *n,
                  const origin *base);

/* Every key of L->c to its default (out of memory sets L->oom). */
void cfg_set_defaults(loader *L);

/* The environment overrides (REDIS_URL, NERVE_LISTEN, NERVE_RULES_DIR,
 * NERVE_PANIC_URL; empty = unset) and the secrets NERVE_ADMIN_TOKEN and
 * NERVE_PANIC_TOKEN, which only the environment can set. */
void cfg_apply_env(loader *L);

/* One --set override ARG, "dotted.key=value"; also takes the leaf forms
 * rules.params.A.B=VALUE and inventory.seed.SKU=N. */
void cfg_apply_set(loader *L, const char *arg);

/* Free a string list or seed array of N entries; NULL is fine. */
void cfg_free_list(char **v, size_t n);
void cfg_free_seed(cfg_seed *v, size_t n);

#endif
