/* ledger_writer.c -- the thread that writes the streams into the ledger
 * (see ledger.h, "the writer").
 *
 * It reads, as consumer INSTANCE of group ledger.group, the partition
 * streams of the sales and inventory channels (sgroup: field `event`) and
 * the audit stream (a second sgroup: field `data`, whose JSON carries its
 * `kind`) and the decision log (a third: PREFIXdecisions, field `d`,
 * declog.h), and records each batch in one transaction. Entries are
 * acknowledged only after COMMIT returned: a crash between the two replays
 * them (own pending entries first after a restart, or another instance's
 * XAUTOCLAIM), and ON CONFLICT DO NOTHING makes the replay write nothing.
 *
 * When the database is down, locked or full, the batch in hand is kept and
 * retried with capped backoff (100 ms doubling to 5 s) and nothing more is
 * read: the entries wait in Redis, whose streams are the buffer (README:
 * size bus.stream_maxlen for the longest outage to ride out). Sales never
 * wait for any of this. The lag -- the age of the oldest entry read and not
 * yet committed -- is what /metrics and /readyz show.
 *
 * The database is opened (and migrated) lazily, after the first batch is in
 * hand, so that a database down at start shows as lag, too.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ledger_int.h"
#include "nerve/backoff.h"
#include "nerve/clock.h"
#include "nerve/keys.h"
#include "nerve/log.h"
#include "nerve/sgroup.h"

#define BLOCK_MS 100
/* A batch waits this long for more entries before it is written: one
 * transaction (one fsync) per LINGER_MS at most under load, instead of one
 * per read, which cost the sale path CPU on a small machine; the lag it
 * adds is bounded by it. */
#define LINGER_MS 50
/* On a Redis Cluster the reader polls its 16 partition slots instead of
 * blocking (sgroup.h): the ledger is written behind the sales anyway, so it
 * polls 5 times less often than the evaluator and costs an idle cluster
 * about a fifth of the reads. */
#define CLUSTER_POLL_MS 50
/* Failed attempts of a batch, with the database answering, before its
 * entries are tried one by one (one_by_one). */
#define POISON_AFTER    3
#define MAX_ENTRY_BYTES (1 << 20)
#define LOG_EVERY_MS    10000

struct ledger_writer {
    char *url, *path, *group, *consumer;
    int batch;
    sg *events, *audit, *decisions;
    ledger *db;
    pthread_t thread;
    bool started;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop; /* under mu */

    _Atomic uint64_t rows[LEDGER_TABLES], duplicates, ignored, invalid, batches, errors;
    _Atomic uint64_t oldest_ms; /* id_ms of the oldest uncommitted entry, 0: none */
    _Atomic int db_up;
};

#define ADD(w, f, v) atomic_fetch_add_explicit(&(w)->f, (uint64_t)(v), memory_order_relaxed)

static bool stopping(ledger_writer *w) {
    pthread_mutex_lock(&w->mu);
    bool s = w->stop;
    pthread_mutex_unlock(&w->mu);
    return s;
}

/* Wait MS, or less when stop is asked. Returns true when stopping. */
static bool pause_ms(ledger_writer *w, long long ms) {
    struct timespec dl = clock_deadline_ms(ms);
    pthread_mutex_lock(&w->mu);
    while (!w->stop && pthread_cond_timedwait(&w->cv, &w->mu, &dl) != ETIMEDOUT) {
    }
    bool s = w->stop;
    pthread_mutex_unlock(&w->mu);
    return s;
}

static long long wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Open and migrate the database when it is not. 0, or -1 (logged by the caller). */
static int ensure_db(ledger_writer *w, char *err, size_t errlen) {
    if (w->db) return 0;
    w->db = ledger_open(w->url, w->path, err, errlen);
    if (!w->db) return -1;
    int applied = 0;
    if (ledger_migrate(w->db, &applied)) {
        snprintf(err, errlen, "%s %s: %s", ledger_backend(w->db), ledger_where(w->db),
                 ledger_errstr(w->db));
        ledger_close(w->db);
        w->db = NULL;
        return -1;
    }
    log_info("ledger", "ledger open backend=%s where=%s migrations_applied=%d",
             ledger_backend(w->db), ledger_where(w->db), applied);
    return 0;
}

static void count(ledger_writer *w, const ledger_result *r) {
    for (int t = 0; t < LEDGER_TABLES; t++) ADD(w, rows[t], r->rows[t]);
    ADD(w, duplicates, r->duplicates);
    ADD(w, ignored, r->ignored);
    ADD(w, invalid, r->invalid);
}

/* The batch E[0..n) one entry per transaction: an entry the database
 * refuses while it answers a query is set aside (logged with its event id,
 * counted as invalid, acknowledged with the rest) so that the others are
 * written. 0 when every entry was written or set aside; -1 when the
 * database stopped answering (the whole batch is retried: the entries
 * written already are duplicates then, ON CONFLICT DO NOTHING). */
static int one_by_one(ledger_writer *w, const ledger_entry *e, size_t n, ledger_result *res) {
    for (size_t i = 0; i < n; i++) {
        if (ledger_record(w->db, &e[i], 1, res) == 0) continue;
        if (!ledger_refused(w->db)) return -1; /* unavailable now: not this entry's fault */
        res->invalid++;
        ADD(w, errors, 1);
        log_error("ledger", "entry refused by the database, set aside event_id=%s error=\"%s\"",
                  e[i].event_id, ledger_errstr(w->db));
    }
    return 0;
}

/* Record M[0..n) (NE of them from the event streams, then NA audit, the
 * rest decision log records), retrying until it commits or stop is asked;
 * then acknowledge. */
static void write_batch(ledger_writer *w, sg_msg *m, size_t n, size_t ne, size_t na) {
    /* The event ids "<stream>/<id>" packed in one buffer: a slot of the
     * longest key per entry was 1.3 MB touched per batch of 2000 (peak RSS). */
    size_t idlen = 0;
    for (size_t i = 0; i < n; i++) idlen += strlen(m[i].stream) + strlen(m[i].id) + 2;
    ledger_entry *e = calloc(n, sizeof *e);
    char *ids = malloc(idlen ? idlen : 1);
    if (!e || !ids) {
        free(e);
        free(ids);
        return; /* left pending: re-read after the next reconnect */
    }
    uint64_t oldest = 0;
    char *idp = ids;
    for (size_t i = 0; i < n; i++) {
        size_t sl = strlen(m[i].stream), il = strlen(m[i].id);
        memcpy(idp, m[i].stream, sl);
        idp[sl] = '/';
        memcpy(idp + sl + 1, m[i].id, il + 1);
        e[i].event_id = idp;
        idp += sl + il + 2;
        e[i].json = m[i].event;
        e[i].len = m[i].len;
        e[i].id_ms = m[i].id_ms;
        if (i >= ne + na)
            e[i].decision = 1;
        else if (i >= ne)
            e[i].kind = ""; /* audit: the kind is in the data */
        if (!oldest || m[i].id_ms < oldest) oldest = m[i].id_ms;
    }
    atomic_store(&w->oldest_ms, oldest ? oldest : 1);
    backoff_policy bp = { 100, 5000, 2.0, BACKOFF_JITTER_EQUAL };
    int fails = 0;
    long long last_log = 0;
    ledger_result res;
    for (;;) {
        char err[700] = "";
        memset(&res, 0, sizeof res);
        if (ensure_db(w, err, sizeof err) == 0) {
            if (ledger_record(w->db, e, n, &res) == 0) break;
            snprintf(err, sizeof err, "%s %s: %s", ledger_backend(w->db), ledger_where(w->db),
                     ledger_errstr(w->db));
            /* The database answers but the batch keeps failing: one entry
             * may be what it refuses (text PostgreSQL will not take, a
             * value out of range). Retried as it is, that batch would stop
             * the ledger for good, here and on every instance that claims
             * it after us. */
            if (ledger_refused(w->db) && fails + 1 >= POISON_AFTER &&
                one_by_one(w, e, n, &res) == 0)
                break;
        }
        fails++;
        ADD(w, errors, 1);
        atomic_store(&w->db_up, 0);
        long long now = clock_now_ms();
        if (fails == 1 || now - last_log >= LOG_EVERY_MS) {
            log_error("ledger",
                      "cannot write the ledger, %zu entries kept pending and retried "
                      "(attempt %d; sales go on): %s",
                      n, fails, err);
            last_log = now;
        }
        if (pause_ms(w, backoff_delay(&bp, fails))) {
            log_warn("ledger", "stopping with %zu entries not written; they stay pending in Redis",
                     n);
            free(e);
            free(ids);
            return;
        }
    }
    atomic_store(&w->db_up, 1);
    count(w, &res);
    if (fails) log_info("ledger", "ledger writable again after %d failed attempts", fails);
    ADD(w, batches, 1);
    free(e);
    free(ids);
    /* Acknowledge after COMMIT. A failed XACK is harmless: the entries come
     * back as this consumer's pending ones and are written as nothing. */
    if (ne && sg_ack(w->events, m, ne) != 0)
        log_warn("ledger", "XACK failed (entries will be re-read): %s", sg_errstr(w->events));
    if (na && sg_ack(w->audit, m + ne, na) != 0)
        log_warn("ledger", "XACK failed (entries will be re-read): %s", sg_errstr(w->audit));
    if (n > ne + na && sg_ack(w->decisions, m + ne + na, n - ne - na) != 0)
        log_warn("ledger", "XACK failed (entries will be re-read): %s", sg_errstr(w->decisions));
}

/* The lag starts when an entry is read, not when its batch is written:
 * the batch waits LINGER_MS, or a database that is down, with it in hand. */
static void note_oldest(ledger_writer *w, const sg_msg *m, size_t n) {
    uint64_t oldest = 0;
    for (size_t i = 0; i < n; i++)
        if (!oldest || m[i].id_ms < oldest) oldest = m[i].id_ms;
    if (oldest) atomic_store(&w->oldest_ms, oldest);
}

/* Entries asked of Redis in one XREADGROUP at most. A batch of 2,000 read
 * in one go made Redis build a reply of half a megabyte while every sale
 * waited behind it (the hot SKU's p99 went from 6 to 26 ms, issue 12); read
 * in chunks, the same entries cost Redis the same, spread out. */
#define READ_CHUNK 256

/* sg_read of up to CAP entries, READ_CHUNK at a time while chunks come back
 * full; waits BLOCK_MS only for the first. The count, or -1 when the first
 * read failed (a later failure shows on the next call). */
static int read_chunked(sg *g, sg_msg *m, size_t cap, int block_ms) {
    size_t got = 0;
    while (got < cap) {
        size_t want = cap - got < READ_CHUNK ? cap - got : READ_CHUNK;
        int k = sg_read(g, m + got, want, got ? 0 : block_ms);
        if (k < 0) return got ? (int)got : -1;
        got += (size_t)k;
        if ((size_t)k < want) break;
    }
    return (int)got;
}

static void *run(void *arg) {
    pthread_setname_np(pthread_self(), "nerve-ledger"); /* top -H, perf */
    ledger_writer *w = arg;
    size_t cap = (size_t)w->batch;
    sg_msg *m = calloc(cap, sizeof *m);
    if (!m) {
        log_error("ledger", "ledger writer: out of memory; not writing the ledger");
        return NULL;
    }
    int rfails = 0;
    while (!stopping(w)) {
        /* The event streams block briefly when the audit stream has nothing
         * either; the audit stream is read without waiting. */
        /* The events never take the whole batch: a share is kept for the
         * audit stream, which a sustained sale load would otherwise starve
         * (its cap, alerts.audit_maxlen, is far smaller). */
        size_t ecap = cap > 1 ? cap - (cap + 7) / 8 : cap;
        int ne = read_chunked(w->events, m, ecap, 0);
        if (ne > 0) note_oldest(w, m, (size_t)ne);
        if (ne > 0 && (size_t)ne < ecap) {
            pause_ms(w, LINGER_MS);
            int k = read_chunked(w->events, m + ne, ecap - (size_t)ne, 0);
            if (k > 0) ne += k; /* an error shows on the next read */
        }
        int na = ne >= 0 && (size_t)ne < cap ? sg_read(w->audit, m + ne, cap - (size_t)ne, 0) : 0;
        /* The decision log takes what the audit stream left of the share. */
        size_t used = (size_t)(ne > 0 ? ne : 0) + (size_t)(na > 0 ? na : 0);
        int nd = ne >= 0 && na >= 0 && used < cap ? sg_read(w->decisions, m + used, cap - used, 0)
                                                  : 0;
        if (ne == 0 && na == 0 && nd == 0) {
            atomic_store(&w->oldest_ms, 0); /* caught up */
            ne = read_chunked(w->events, m, ecap, BLOCK_MS);
            if (ne > 0) note_oldest(w, m, (size_t)ne);
        }
        if (ne < 0 || na < 0 || nd < 0) {
            /* The entries read before the error still get written below. */
            if (++rfails == 1)
                log_warn("ledger", "ledger writer: reading the streams failed: %s",
                         ne < 0   ? sg_errstr(w->events)
                         : na < 0 ? sg_errstr(w->audit)
                                  : sg_errstr(w->decisions));
            ADD(w, errors, 1);
            if (ne < 0) ne = 0;
            if (na < 0) na = 0;
            if (nd < 0) nd = 0;
            if (ne + na + nd == 0) {
                pause_ms(w, BLOCK_MS);
                continue;
            }
        } else {
            rfails = 0;
        }
        size_t n = (size_t)ne + (size_t)na + (size_t)nd;
        if (n == 0) {
            atomic_store(&w->oldest_ms, 0);
            continue;
        }
        write_batch(w, m, n, (size_t)ne, (size_t)na);
        sg_msgs_free(m, n);
        /* oldest_ms stays until the next read says what is waiting: 0 only
         * when a read finds nothing. Resetting it here showed no lag while
         * the next batch was being read (measured: 0 with 231 sales
         * waiting). */
    }
    free(m);
    return NULL;
}

ledger_writer *ledger_writer_start(const ledger_writer_opts *o, char *err, size_t errlen) {
    const cfg *c = o->cfg;
    ledger_writer *w = calloc(1, sizeof *w);
    char **ev = NULL;
    size_t nev = 0;
    if (!w) goto oom;
    pthread_mutex_init(&w->mu, NULL);
    clock_cond_init(&w->cv);
    w->batch = c->ledger_batch;
    w->url = strdup(o->url ? o->url : "");
    w->path = strdup(c->ledger_path);
    w->group = strdup(c->ledger_group);
    w->consumer = strdup(o->instance);
    if (!w->url || !w->path || !w->group || !w->consumer) goto oom;

    /* The partition streams of the sales and inventory channels (not their
     * ingest streams: the ledger records what nerve itself did). */
    int np = c->bus_partitions;
    int nch = strcmp(c->sales_channel, c->inventory_channel) ? 2 : 1;
    const char *chans[2] = { c->sales_channel, c->inventory_channel };
    ev = calloc((size_t)(np * nch), sizeof *ev);
    if (!ev) goto oom;
    for (int ch = 0; ch < nch; ch++)
        for (int p = 0; p < np; p++) {
            char key[RDS_KEY_MAX];
            if (keys_stream(key, c->redis_prefix, p, chans[ch]) < 0) {
                snprintf(err, errlen, "ledger writer: stream name too long for channel %s",
                         chans[ch]);
                goto fail;
            }
            if (!(ev[nev++] = strdup(key))) goto oom;
        }
    char audit[RDS_KEY_MAX];
    snprintf(audit, sizeof audit, "%saudit", c->redis_prefix);
    const char *audit_v[] = { audit };
    char decisions[RDS_KEY_MAX];
    snprintf(decisions, sizeof decisions, "%sdecisions", c->redis_prefix);
    const char *decisions_v[] = { decisions };
    sg_opts so = { .redis = o->redis,
                   .streams = (const char *const *)ev,
                   .n_streams = nev,
                   .group = w->group,
                   .consumer = w->consumer,
                   .claim_idle_ms = c->claim_idle_ms,
                   .max_event_bytes = MAX_ENTRY_BYTES,
                   .poll_ms = CLUSTER_POLL_MS };
    w->events = sg_open(&so, err, errlen);
    so.streams = audit_v;
    so.n_streams = 1;
    so.field = "data";
    w->audit = w->events ? sg_open(&so, err, errlen) : NULL;
    so.streams = decisions_v;
    so.field = "d";
    w->decisions = w->audit ? sg_open(&so, err, errlen) : NULL;
    if (!w->events || !w->audit || !w->decisions) goto fail;
    for (size_t i = 0; i < nev; i++) free(ev[i]);
    free(ev);
    ev = NULL;
    if (pthread_create(&w->thread, NULL, run, w) != 0) {
        snprintf(err, errlen, "ledger writer: cannot start its thread");
        goto fail;
    }
    w->started = true;
    log_info("ledger",
             "ledger writer started group=%s consumer=%s streams=%zu+audit+decisions batch=%d",
             w->group, w->consumer, nev, w->batch);
    return w;
oom:
    snprintf(err, errlen, "ledger writer: out of memory");
fail:
    for (size_t i = 0; ev && i < nev; i++) free(ev[i]);
    free(ev);
    ledger_writer_stop(w);
    return NULL;
}

void ledger_writer_stop(ledger_writer *w) {
    if (!w) return;
    if (w->started) {
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    sg_close(w->events);
    sg_close(w->audit);
    sg_close(w->decisions);
    ledger_close(w->db);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->url);
    free(w->path);
    free(w->group);
    free(w->consumer);
    free(w);
}

void ledger_writer_get_stats(ledger_writer *w, ledger_writer_stats *out) {
    memset(out, 0, sizeof *out);
    if (!w) return;
    for (int t = 0; t < LEDGER_TABLES; t++) out->rows[t] = atomic_load(&w->rows[t]);
    out->duplicates = atomic_load(&w->duplicates);
    out->ignored = atomic_load(&w->ignored);
    out->invalid = atomic_load(&w->invalid);
    out->batches = atomic_load(&w->batches);
    out->errors = atomic_load(&w->errors);
    out->db_up = atomic_load(&w->db_up);
    sg_stats gs;
    sg_get_stats(w->events, &gs);
    out->missed = gs.gaps + gs.deleted; /* trimmed unread, or trimmed while pending */
    sg_get_stats(w->audit, &gs);
    out->missed += gs.gaps + gs.deleted;
    uint64_t oldest = atomic_load(&w->oldest_ms);
    long long now = wall_ms();
    out->lag_ms = oldest && now > (long long)oldest ? (uint64_t)(now - (long long)oldest) : 0;
}
