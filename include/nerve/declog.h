/* declog.h -- the decision log: every decision (alert, kill, reject) and
 * every rule error, with the event that caused it, in the capped stream
 * PREFIXdecisions.
 *
 * Why: counters say how many sales were rejected and logs scroll away; the
 * question "why was this sale refused, by which rule, on which ruleset
 * generation, and what did the event look like?" needs one record per
 * decision that a person (nerve decisions) or a page (GET /decisions) can
 * read back, as OPA's decision logs and Falco's outputs do.
 *
 * Record (one stream field `d`, a JSON object; the contract in README
 * "Decision log"):
 *     {"ts", "kind": "decision"|"rule_error", "action"?, "level"?, "scope"?,
 *      "reason"?, "halt_sales"?, "rule", "channel", "event_id", "generation",
 *      "instance", "error"?, "event" | "event_truncated": true}
 *
 * Writing: declog_decision and declog_rule_error format the record on the
 * calling thread (the evaluator, or an HTTP worker for a sale_request rule)
 * and put it on a bounded in-memory queue; one writer thread drains it in
 * pipelined batches of XADD PREFIXdecisions MAXLEN ~ N * d RECORD on its own
 * Redis connection. The sale path therefore never waits on Redis for the
 * log: a full queue drops the record and counts it (a client can cause
 * rejects at will; it must not be able to slow sales or grow memory). An
 * event's text over event_max_bytes is left out ("event_truncated": true).
 * While Redis does not answer, the writer keeps its batch and tries again
 * every 100 ms; what does not fit in the queue meanwhile is dropped.
 *
 * Reading: declog_query scans the stream newest first (XREVRANGE) with
 * filters, for GET /decisions and `nerve decisions`.
 *
 * Thread-safety: declog_decision, declog_rule_error and declog_get_stats
 * from any thread; declog_start/declog_stop from the owner. declog_query on
 * the caller's client. Ownership: declog_start copies its options; a NULL
 * declog is accepted (and ignored) by every writing function, so that a
 * caller without a log (tests, tools) needs no branch.
 */
#ifndef NERVE_DECLOG_H
#define NERVE_DECLOG_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "nerve/rds.h"
#include "nerve/rules.h"

#define DECLOG_STREAM       "decisions" /* after redis.prefix */
#define DECLOG_FILTER_MAX   128         /* bytes of a rule, scope or kind filter */
#define DECLOG_LIMIT_MAX    1000
#define DECLOG_SCAN_MAX     10000 /* entries one query reads back at most */
#define DECLOG_SCAN_PER_HIT 10    /* ... and at most this many per asked-for record */
#define DECLOG_SCAN_MIN     1000  /* ... but at least this many */
/* ... and it stops once this many bytes of records were read (filtered
 * queries read pages of 100): what one anonymous request can make Redis
 * send, whatever decisions.event_max_bytes is. */
#define DECLOG_SCAN_BYTES (4 * 1024 * 1024)

typedef struct declog declog;

typedef struct declog_opts {
    rds_opts redis;         /* the writer's own connection */
    const char *prefix;     /* redis.prefix */
    const char *instance;   /* host:pid:... of this daemon */
    long maxlen;            /* decisions.maxlen: XADD MAXLEN ~ */
    size_t event_max_bytes; /* decisions.event_max_bytes: larger events are left out */
    size_t queue_size;      /* decisions.queue_size: records waiting, then dropped */
} declog_opts;

/* Start the writer thread. NULL with a message in ERR. */
declog *declog_start(const declog_opts *o, char *err, size_t errlen);
/* Write what is queued (for at most GRACE_MS while Redis does not answer;
 * the rest is counted as dropped), stop the thread, free. NULL is fine. */
void declog_stop(declog *l, int grace_ms);

/* What a record says about where the decision came from. */
typedef struct declog_src {
    const char *channel;  /* the event's channel ("sale_request" for a sale) */
    const char *event_id; /* the stream entry id, NULL or "" when none (Pub/Sub, sale) */
    uint64_t generation;  /* the ruleset generation that decided */
    const char *event;    /* the event as JSON object text, NULL: none */
    size_t event_len;
} declog_src;

/* Queue a record of decision D (kind "decision") or of rule RULE's error MSG
 * (kind "rule_error", MSG reading FILE:LINE: message). Never blocks on
 * Redis; when the queue is full (or out of memory) the record is dropped and
 * counted. EVENT text is embedded as is when it is strict JSON (jsonck), else
 * re-printed by cJSON; over event_max_bytes it is left out. */
void declog_decision(declog *l, const rules_decision *d, const declog_src *src);
void declog_rule_error(declog *l, const char *rule, const char *msg, const declog_src *src);

typedef struct declog_stats {
    uint64_t written; /* records Redis accepted */
    uint64_t dropped; /* queue full, out of memory, or Redis refused / gone at stop */
    size_t queued;    /* waiting now */
} declog_stats;
/* Counters since declog_start; zeros for a NULL log. Thread-safe. */
void declog_get_stats(declog *l, declog_stats *out);

/* ---- reading ---------------------------------------------------------------------- */

typedef struct declog_filter {
    const char *rule, *scope, *kind; /* NULL or "": any */
    int limit;                       /* 1..DECLOG_LIMIT_MAX */
} declog_filter;

/* The stream key of PREFIX into OUT (RDS_KEY_MAX bytes). */
const char *declog_key(char *out, size_t outlen, const char *prefix);

/* 1 when RECORD (a parsed record) passes F's rule, scope and kind. */
int declog_match(const cJSON *record, const declog_filter *f);

/* Read back newest first through PREFIXdecisions, keeping the records that
 * pass F, until F->limit are found or max(DECLOG_SCAN_MIN, DECLOG_SCAN_PER_HIT
 * x limit) entries (never more than DECLOG_SCAN_MAX) or DECLOG_SCAN_BYTES
 * were read; one filtered query runs at a time (another gets NULL and "try
 * again": answer 503). Each record
 * gets "id" (its stream id) first. Returns the array (caller deletes),
 * *SCANNED the entries read; NULL with a message in ERR on a Redis error or
 * out of memory. An entry whose `d` is not a JSON object is skipped. */
cJSON *declog_query(rds_client *c, const char *prefix, const declog_filter *f, size_t *scanned,
                    char *err, size_t errlen);

/* A stream entry (a [id, [field, value...]] reply element) as a record with
 * "id" first; NULL when it holds no JSON object `d`. Caller deletes. */
cJSON *declog_entry(const redisReply *entry);

/* Parse a limit ("1".."1000"): 0 with *OUT set, -1 otherwise. */
int declog_parse_limit(const char *s, int *out);

/* `nerve decisions ...` (declog_cli.c): ARGV[0] is "decisions". Returns the
 * exit status (0 done, 1 config or Redis error, 2 usage). */
int declog_cli_main(int argc, char **argv);

#endif
