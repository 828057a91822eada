/* stress_report.c -- what a `nerve stress` run proved.
 *
 * Merges the worker threads' counters and latency samples (percentiles are
 * exact to the microsecond: nearest rank over every sample), judges the invariants of
 * SPEC §9 and prints the result once, as a table for people or as one JSON
 * object for scripts. The invariants, in order:
 *
 *   1. sold == initial - final, for every SKU: units the 200 answers
 *      (without "duplicate": true) sold, plus what the replay of unanswered
 *      sales found sold (stress.c), are exactly the units that left stock;
 *   2. final stock >= 0, for every SKU;
 *   3. every 200 echoes its own request's order_id and sku (the order_ids
 *      sent are distinct, so distinct answers follow);
 *   4. no 200 reported a negative stock_remaining;
 *   5. (--kill-check) the kill switch sku:<SKU> is engaged for every SKU
 *      whose final stock is at or under the critical threshold and which sold.
 */
#include "stress_int.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NCHECKS 5

typedef struct totals {
    long long requests, by_status[600], transport, duplicates, mismatched, negative;
    long long min_remaining, sold, lat_dropped;
    long long *per_url;
    uint64_t *hist; /* [STRESS_HIST_US], all threads */
    uint32_t *slow; /* sorted */
    size_t nslow;
    long long nlat;
    const char *first_error, *first_mismatch;
} totals;

typedef struct check {
    const char *name;  /* JSON key */
    const char *title; /* table label */
    int pass;          /* 1 pass, 0 fail, -1 not asserted */
    char detail[STRESS_ERR_MAX + 64];
    char failure[STRESS_ERR_MAX + 64]; /* the INVARIANT FAILED line */
} check;

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int merge(const stress_run *r, totals *t) {
    memset(t, 0, sizeof *t);
    t->min_remaining = LLONG_MAX;
    size_t n = 0;
    for (int i = 0; i < r->threads; i++) n += r->stats[i].nslow;
    t->per_url = calloc((size_t)r->nurls, sizeof *t->per_url);
    t->hist = calloc(STRESS_HIST_US, sizeof *t->hist);
    t->slow = malloc((n ? n : 1) * sizeof *t->slow);
    if (!t->per_url || !t->hist || !t->slow) return -1;
    for (int i = 0; i < r->threads; i++) {
        const stress_stats *s = &r->stats[i];
        t->requests += s->requests;
        for (int k = 0; k < 600; k++) t->by_status[k] += s->by_status[k];
        t->transport += s->transport;
        t->duplicates += s->duplicates;
        t->mismatched += s->mismatched;
        t->negative += s->negative;
        t->lat_dropped += s->lat_dropped;
        if (s->min_remaining < t->min_remaining) t->min_remaining = s->min_remaining;
        for (int k = 0; k < r->nurls; k++) t->per_url[k] += s->per_url[k];
        for (int k = 0; k < STRESS_HIST_US; k++) t->hist[k] += s->hist[k];
        if (s->nslow) memcpy(t->slow + t->nslow, s->slow_us, s->nslow * sizeof *t->slow);
        t->nslow += s->nslow;
        t->nlat += s->nlat;
        if (!t->first_error && s->first_error[0]) t->first_error = s->first_error;
        if (!t->first_mismatch && s->first_mismatch[0]) t->first_mismatch = s->first_mismatch;
    }
    qsort(t->slow, t->nslow, sizeof *t->slow, cmp_u32);
    return 0;
}

static void totals_free(totals *t) {
    free(t->per_url);
    free(t->hist);
    free(t->slow);
}

/* Nearest-rank percentile PERMILLE/10 in milliseconds (0 without samples):
 * the sample at rank ceil(permille * n / 1000) in ascending order. */
static double pct_ms(const totals *t, unsigned permille) {
    if (t->nlat <= 0) return 0;
    unsigned long long n = (unsigned long long)t->nlat;
    unsigned long long rank = (permille * n + 999) / 1000, seen = 0;
    if (rank < 1) rank = 1;
    for (int us = 0; us < STRESS_HIST_US; us++) {
        seen += t->hist[us];
        if (seen >= rank) return us / 1000.0;
    }
    size_t i = (size_t)(rank - seen - 1);
    return (i < t->nslow ? t->slow[i] : t->nslow ? t->slow[t->nslow - 1] : 0) / 1000.0;
}

/* ---- invariants ------------------------------------------------------------------- */

static void judge(const stress_report_in *in, const totals *t, check *c) {
    const stress_run *r = in->run;
    bool many = r->nskus > 1;
    long long ok = t->by_status[200];

    c[0] = (check){ "sold", "sold == initial - final", 1, "", "" };
    c[1] = (check){ "final_stock_nonnegative", "final stock >= 0", 1, "", "" };
    c[2] = (check){ "order_ids", "200s echo distinct order_ids", 1, "", "" };
    c[3] = (check){ "stock_remaining_nonnegative", "stock_remaining >= 0", 1, "", "" };
    c[4] = (check){ "kill_switch", "kill switch engaged", -1, "", "" };

    long long sum_sold = 0, sum_init = 0, sum_final = 0, min_final = LLONG_MAX;
    for (int i = 0; i < r->nskus; i++) {
        const stress_sku_result *s = &in->skus[i];
        char forsku[STRESS_SKU_MAX + 8] = "";
        if (many) snprintf(forsku, sizeof forsku, " for %s", r->skus[i]);
        sum_sold += s->sold;
        sum_init += s->initial;
        if (!s->final_ok) {
            if (c[0].pass) {
                c[0].pass = c[1].pass = 0;
                snprintf(c[0].failure, sizeof c[0].failure, "final stock of %s unknown (%s)",
                         r->skus[i], s->final_err);
                snprintf(c[0].detail, sizeof c[0].detail, "final stock of %s unknown: %s",
                         r->skus[i], s->final_err);
                snprintf(c[1].detail, sizeof c[1].detail, "final stock of %s unknown", r->skus[i]);
            }
            continue;
        }
        sum_final += s->final;
        if (s->final < min_final) min_final = s->final;
        if (c[0].pass && s->sold != s->initial - s->final) {
            c[0].pass = 0;
            snprintf(c[0].failure, sizeof c[0].failure, "sold (%lld) != initial - final (%lld)%s",
                     s->sold, s->initial - s->final, forsku);
            snprintf(c[0].detail, sizeof c[0].detail, "sold %lld != %lld - %lld%s", s->sold,
                     s->initial, s->final, forsku);
        }
        if (c[1].pass && s->final < 0) {
            c[1].pass = 0;
            snprintf(c[1].failure, sizeof c[1].failure, "final stock (%lld) < 0%s", s->final,
                     forsku);
            snprintf(c[1].detail, sizeof c[1].detail, "final %lld%s", s->final, forsku);
        }
    }
    const stress_replay *rp = in->replay;
    if (!c[0].pass && rp->unresolved) {
        size_t n = strlen(c[0].failure);
        snprintf(c[0].failure + n, sizeof c[0].failure - n,
                 "; %lld sales got no answer even on replay", rp->unresolved);
    }
    if (c[0].pass)
        snprintf(c[0].detail, sizeof c[0].detail, "%lld == %lld - %lld%s", sum_sold, sum_init,
                 sum_final, many ? " (each SKU)" : "");
    if (c[1].pass)
        snprintf(c[1].detail, sizeof c[1].detail, many ? "lowest %lld" : "%lld", min_final);

    if (t->mismatched) {
        c[2].pass = 0;
        snprintf(c[2].failure, sizeof c[2].failure,
                 "%lld of %lld 200 answers do not echo their own order_id/sku/qty (first: %.200s)",
                 t->mismatched, ok, t->first_mismatch ? t->first_mismatch : "?");
        snprintf(c[2].detail, sizeof c[2].detail, "%lld of %lld do not match their request",
                 t->mismatched, ok);
    } else {
        snprintf(c[2].detail, sizeof c[2].detail, "%lld of %lld, all distinct", ok, ok);
    }

    if (t->negative) {
        c[3].pass = 0;
        snprintf(c[3].failure, sizeof c[3].failure,
                 "%lld 200 answers reported a negative stock_remaining (lowest %lld)", t->negative,
                 t->min_remaining);
        snprintf(c[3].detail, sizeof c[3].detail, "%lld negative, lowest %lld", t->negative,
                 t->min_remaining);
    } else if (t->min_remaining == LLONG_MAX) {
        snprintf(c[3].detail, sizeof c[3].detail, "no 200 answers");
    } else {
        snprintf(c[3].detail, sizeof c[3].detail, "lowest %lld", t->min_remaining);
    }

    if (!in->kill_check) {
        snprintf(c[4].detail, sizeof c[4].detail, "not checked (no --kill-check)");
        return;
    }
    int asserted = 0, engaged = 0;
    for (int i = 0; i < r->nskus; i++) {
        const stress_sku_result *s = &in->skus[i];
        if (s->kill < 0) continue;
        asserted++;
        if (s->kill == 1) {
            engaged++;
        } else if (c[4].pass != 0) {
            c[4].pass = 0;
            snprintf(c[4].failure, sizeof c[4].failure,
                     "kill switch sku:%s not engaged although final stock %lld <= critical %lld",
                     r->skus[i], s->final, in->critical);
        }
    }
    if (asserted == 0) {
        snprintf(c[4].detail, sizeof c[4].detail,
                 "not asserted: no SKU sold down to the critical threshold %lld", in->critical);
    } else {
        if (c[4].pass < 0) c[4].pass = 1;
        if (many)
            snprintf(c[4].detail, sizeof c[4].detail,
                     "%d of %d SKUs at or under critical %lld engaged", engaged, asserted,
                     in->critical);
        else
            snprintf(c[4].detail, sizeof c[4].detail, "sku:%s %s (final %lld <= critical %lld)",
                     r->skus[0], engaged ? "engaged" : "NOT engaged", in->skus[0].final,
                     in->critical);
    }
}

/* ---- output ------------------------------------------------------------------------------ */

static void print_table(const stress_report_in *in, const totals *t, const check *c, FILE *out) {
    const stress_run *r = in->run;
    long long ok = t->by_status[200], oos = t->by_status[409], halted = t->by_status[423];
    long long rej = t->by_status[422], unav = t->by_status[503];
    long long errors = t->requests - ok - oos - halted - rej - unav;
    double rate = r->secs > 0 ? (double)t->requests / r->secs : 0;

    fprintf(out, "nerve stress: %d client%s on %d thread%s, %d instance%s, qty %lld%s\n",
            r->clients, r->clients == 1 ? "" : "s", r->threads, r->threads == 1 ? "" : "s",
            r->nurls, r->nurls == 1 ? "" : "s", r->qty, in->interrupted ? " (interrupted)" : "");
    fprintf(out, "\n  %-14s %12lld\n", "requests", t->requests);
    fprintf(out, "  %-14s %12lld\n", "  ok", ok);
    if (t->duplicates) fprintf(out, "  %-14s %12lld\n", "  (duplicate)", t->duplicates);
    fprintf(out, "  %-14s %12lld\n", "  out_of_stock", oos);
    fprintf(out, "  %-14s %12lld\n", "  halted", halted);
    fprintf(out, "  %-14s %12lld\n", "  rejected", rej);
    fprintf(out, "  %-14s %12lld\n", "  unavailable", unav);
    fprintf(out, "  %-14s %12lld", "  errors", errors);
    if (errors) {
        fprintf(out, "   (");
        const char *sep = "";
        if (t->transport) fprintf(out, "transport %lld", t->transport), sep = ", ";
        for (int s = 0; s < 600; s++)
            if (t->by_status[s] && s != 200 && s != 409 && s != 422 && s != 423 && s != 503)
                fprintf(out, "%sHTTP %d: %lld", sep, s, t->by_status[s]), sep = ", ";
        fprintf(out, ")");
    }
    fprintf(out, "\n");
    if (t->first_error) fprintf(out, "  %-14s %s\n", "first error", t->first_error);
    const stress_replay *rp = in->replay;
    if (rp->replayed || rp->unresolved)
        fprintf(out,
                "  %-14s %12lld   unanswered or 503, resent with their order_id: had sold %lld, "
                "sold now %lld, not sold %lld, unresolved %lld\n",
                "replayed", rp->replayed, rp->had_sold, rp->sold_now, rp->not_sold, rp->unresolved);
    fprintf(out, "  %-14s %12.3f s\n", "duration", r->secs);
    fprintf(out, "  %-14s %12.1f req/s\n", "throughput", rate);
    fprintf(out, "  %-14s p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  (%lld samples)\n", "latency ms",
            pct_ms(t, 500), pct_ms(t, 900), pct_ms(t, 990), pct_ms(t, 1000), t->nlat);
    if (r->nurls > 1)
        for (int i = 0; i < r->nurls; i++)
            fprintf(out, "  %-14s %12lld  %s\n", i ? "" : "per instance", t->per_url[i],
                    r->urls[i].base);

    fprintf(out, "\n  %-*s %10s %10s %10s\n", r->nskus > 1 ? 16 : 12, "sku", "initial", "sold",
            "final");
    long long si = 0, ss = 0, sf = 0;
    for (int i = 0; i < r->nskus; i++) {
        const stress_sku_result *s = &in->skus[i];
        si += s->initial, ss += s->sold, sf += s->final_ok ? s->final : 0;
        if (r->nskus > 20 && i >= 10 && i < r->nskus - 5) {
            if (i == 10) fprintf(out, "  ... %d more\n", r->nskus - 15);
            continue;
        }
        char fin[32];
        if (s->final_ok)
            snprintf(fin, sizeof fin, "%lld", s->final);
        else
            snprintf(fin, sizeof fin, "unknown");
        fprintf(out, "  %-*s %10lld %10lld %10s\n", r->nskus > 1 ? 16 : 12, r->skus[i], s->initial,
                s->sold, fin);
    }
    if (r->nskus > 1) fprintf(out, "  %-16s %10lld %10lld %10lld\n", "total", si, ss, sf);

    fprintf(out, "\ninvariants\n");
    for (int i = 0; i < NCHECKS; i++)
        fprintf(out, "  %-4s  %-30s %s\n",
                c[i].pass < 0 ? "-"
                : c[i].pass   ? "PASS"
                              : "FAIL",
                c[i].title, c[i].detail);
}

static void print_json(const stress_report_in *in, const totals *t, const check *c, bool pass,
                       FILE *out) {
    const stress_run *r = in->run;
    long long ok = t->by_status[200], oos = t->by_status[409], halted = t->by_status[423];
    long long rej = t->by_status[422], unav = t->by_status[503];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "requests", (double)t->requests);
    cJSON_AddNumberToObject(o, "ok", (double)ok);
    cJSON_AddNumberToObject(o, "out_of_stock", (double)oos);
    cJSON_AddNumberToObject(o, "halted", (double)halted);
    cJSON_AddNumberToObject(o, "rejected", (double)rej);
    cJSON_AddNumberToObject(o, "unavailable", (double)unav);
    cJSON_AddNumberToObject(o, "errors", (double)(t->requests - ok - oos - halted - rej - unav));
    cJSON_AddNumberToObject(o, "transport_errors", (double)t->transport);
    cJSON *bs = cJSON_AddObjectToObject(o, "by_status");
    for (int s = 0; s < 600; s++) {
        if (!t->by_status[s]) continue;
        char k[16];
        snprintf(k, sizeof k, "%d", s);
        cJSON_AddNumberToObject(bs, k, (double)t->by_status[s]);
    }
    if (t->first_error) cJSON_AddStringToObject(o, "first_error", t->first_error);
    cJSON_AddNumberToObject(o, "duplicates", (double)t->duplicates);
    cJSON *rj = cJSON_AddObjectToObject(o, "replayed");
    cJSON_AddNumberToObject(rj, "requests", (double)in->replay->replayed);
    cJSON_AddNumberToObject(rj, "had_sold", (double)in->replay->had_sold);
    cJSON_AddNumberToObject(rj, "sold_now", (double)in->replay->sold_now);
    cJSON_AddNumberToObject(rj, "not_sold", (double)in->replay->not_sold);
    cJSON_AddNumberToObject(rj, "unresolved", (double)in->replay->unresolved);
    cJSON_AddNumberToObject(o, "duration_s", r->secs);
    cJSON_AddNumberToObject(o, "throughput_rps", r->secs > 0 ? (double)t->requests / r->secs : 0);
    cJSON *lat = cJSON_AddObjectToObject(o, "latency_ms");
    cJSON_AddNumberToObject(lat, "p50", pct_ms(t, 500));
    cJSON_AddNumberToObject(lat, "p90", pct_ms(t, 900));
    cJSON_AddNumberToObject(lat, "p99", pct_ms(t, 990));
    cJSON_AddNumberToObject(lat, "max", pct_ms(t, 1000));
    cJSON_AddNumberToObject(lat, "samples", (double)t->nlat);
    cJSON_AddNumberToObject(o, "clients", r->clients);
    cJSON_AddNumberToObject(o, "threads", r->threads);
    cJSON_AddNumberToObject(o, "qty", (double)r->qty);
    cJSON *urls = cJSON_AddArrayToObject(o, "urls");
    for (int i = 0; i < r->nurls; i++) {
        cJSON *u = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "url", r->urls[i].base);
        cJSON_AddNumberToObject(u, "requests", (double)t->per_url[i]);
        cJSON_AddItemToArray(urls, u);
    }
    long long si = 0, ss = 0, sf = 0;
    bool all_final = true;
    cJSON *skus = cJSON_CreateArray();
    for (int i = 0; i < r->nskus; i++) {
        const stress_sku_result *s = &in->skus[i];
        cJSON *k = cJSON_CreateObject();
        cJSON_AddStringToObject(k, "sku", r->skus[i]);
        cJSON_AddNumberToObject(k, "initial_stock", (double)s->initial);
        cJSON_AddNumberToObject(k, "sold", (double)s->sold);
        if (s->final_ok)
            cJSON_AddNumberToObject(k, "final_stock", (double)s->final);
        else
            cJSON_AddNullToObject(k, "final_stock"), all_final = false;
        if (s->kill >= 0) cJSON_AddBoolToObject(k, "kill_switch_engaged", s->kill == 1);
        cJSON_AddItemToArray(skus, k);
        si += s->initial, ss += s->sold, sf += s->final_ok ? s->final : 0;
    }
    /* Totals over the SKUs (one SKU: its own figures). */
    cJSON_AddNumberToObject(o, "sold", (double)ss);
    cJSON_AddNumberToObject(o, "initial_stock", (double)si);
    if (all_final)
        cJSON_AddNumberToObject(o, "final_stock", (double)sf);
    else
        cJSON_AddNullToObject(o, "final_stock");
    cJSON_AddItemToObject(o, "skus", skus);
    cJSON *inv = cJSON_AddArrayToObject(o, "invariants");
    for (int i = 0; i < NCHECKS; i++) {
        cJSON *k = cJSON_CreateObject();
        cJSON_AddStringToObject(k, "name", c[i].name);
        cJSON_AddStringToObject(k, "check", c[i].title);
        cJSON_AddStringToObject(k, "result",
                                c[i].pass < 0 ? "skipped"
                                : c[i].pass   ? "PASS"
                                              : "FAIL");
        cJSON_AddStringToObject(k, "detail", c[i].detail);
        cJSON_AddItemToArray(inv, k);
    }
    cJSON_AddBoolToObject(o, "interrupted", in->interrupted);
    cJSON_AddBoolToObject(o, "pass", pass);
    char *txt = cJSON_PrintUnformatted(o);
    if (txt) fprintf(out, "%s\n", txt);
    free(txt);
    cJSON_Delete(o);
}

int stress_report(const stress_report_in *in, FILE *out, FILE *err) {
    totals t;
    if (merge(in->run, &t) != 0) {
        fprintf(err, "nerve stress: out of memory for the report\n");
        totals_free(&t);
        return 1;
    }
    check c[NCHECKS];
    judge(in, &t, c);
    bool pass = true;
    for (int i = 0; i < NCHECKS; i++) pass = pass && c[i].pass != 0;
    if (in->json)
        print_json(in, &t, c, pass, out);
    else
        print_table(in, &t, c, out);
    fflush(out);
    for (int i = 0; i < NCHECKS; i++)
        if (c[i].pass == 0) fprintf(err, "INVARIANT FAILED: %s\n", c[i].failure);
    if (t.lat_dropped)
        fprintf(err, "nerve stress: note: %lld latency samples not kept (out of memory)\n",
                t.lat_dropped);
    totals_free(&t);
    return pass ? 0 : 1;
}
