/* status_json.c -- GET /status.json: the status page's one answer (see
 * status_json in status.h).
 *
 * Why its own file: it only assembles what status.c's renderers and the
 * modules' getters already define (the readiness, the rules, the kill
 * switch records, the sales counters), so that the page and the other
 * endpoints can never disagree on a number; what is new here is the sales
 * window and the stock of the most-sold SKUs.
 */
#include "nerve/status.h"

#include <stdint.h>
#include <string.h>
#include <time.h>

#include "nerve/version.h"

static double epoch_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Milliseconds precision is all a page shows. */
static double ms(double seconds) {
    return (double)(long long)(seconds * 1000.0) / 1000.0;
}

/* "sales": answers by result, the per-second series, the top SKUs. */
static cJSON *sales_obj(const status_sources *s, rds_client *c) {
    cJSON *o = cJSON_CreateObject();
    sale_stats ss;
    memset(&ss, 0, sizeof ss);
    if (s->sale) sale_get_stats(s->sale, &ss);
    cJSON *ans = cJSON_AddObjectToObject(o, "answers");
    for (int i = 0; i < SALE_RESULT_COUNT; i++)
        cJSON_AddNumberToObject(ans, sale_result_name((sale_result)i), (double)ss.results[i]);

    static _Thread_local salewin_snap w; /* 5 KiB: not on a worker's stack */
    memset(&w, 0, sizeof w);
    if (s->sale) sale_read_window(s->sale, &w);
    cJSON_AddNumberToObject(o, "window_seconds", SALEWIN_SECONDS);
    cJSON *ps = cJSON_AddArrayToObject(o, "per_second");
    double last_minute = 0;
    for (int i = 0; i < SALEWIN_SECONDS; i++) {
        cJSON_AddItemToArray(ps, cJSON_CreateNumber(w.per_second[i]));
        if (i >= SALEWIN_SECONDS - 60) last_minute += w.per_second[i];
    }
    cJSON_AddNumberToObject(o, "last_minute", last_minute);

    const char *skus[SALEWIN_TOP];
    long long stock[SALEWIN_TOP];
    int rc[SALEWIN_TOP];
    for (int i = 0; i < w.n_top; i++) skus[i] = w.top[i].sku, rc[i] = -1;
    if (c && s->sale && w.n_top > 0)
        sale_stock_get_many(c, sale_engine_opts(s->sale), skus, (size_t)w.n_top, stock, rc);
    cJSON *top = cJSON_AddArrayToObject(o, "top_skus");
    for (int i = 0; i < w.n_top; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "sku", w.top[i].sku);
        cJSON_AddNumberToObject(t, "units", (double)w.top[i].units);
        cJSON_AddNumberToObject(t, "sales", (double)w.top[i].sales);
        if (rc[i] == 0)
            cJSON_AddNumberToObject(t, "stock", (double)stock[i]);
        else
            cJSON_AddNullToObject(t, "stock");
        cJSON_AddItemToArray(top, t);
    }
    return o;
}

static cJSON *bus_obj(bus *b) {
    bus_stats bs;
    bus_get_stats(b, &bs);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "connected", bs.connected);
    cJSON_AddNumberToObject(o, "messages", (double)bs.messages);
    cJSON_AddNumberToObject(o, "reconnects", (double)bs.reconnects);
    cJSON_AddBoolToObject(o, "streams", bs.streams);
    if (bs.streams) {
        cJSON_AddBoolToObject(o, "stream_connected", bs.sg.connected);
        cJSON_AddNumberToObject(o, "stream_entries", (double)bs.sg.messages);
        cJSON_AddNumberToObject(o, "pending", (double)bs.in_flight);
    }
    return o;
}

cJSON *status_json(const status_sources *s) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    double now = epoch_now(), started = status_start_time();
    cJSON_AddStringToObject(o, "version", NERVE_VERSION);
    const char *inst = s->sale ? sale_engine_opts(s->sale)->instance : NULL;
    cJSON_AddStringToObject(o, "instance", inst ? inst : "");
    cJSON_AddNumberToObject(o, "now", ms(now));
    cJSON_AddNumberToObject(o, "uptime_seconds", started > 0 ? ms(now - started) : 0);

    bool ready = false;
    cJSON *rd = status_readyz(s, &ready);
    if (rd) cJSON_AddBoolToObject(rd, "ready", ready);
    cJSON_AddItemToObject(o, "ready", rd ? rd : cJSON_CreateNull());

    rds_client *c = s->pool ? rds_pool_client(s->pool) : NULL;
    cJSON_AddItemToObject(o, "sales", sales_obj(s, c));

    cJSON *kills = status_killswitch(s);
    cJSON *engaged = cJSON_GetObjectItemCaseSensitive(kills, "engaged"), *rec;
    cJSON_ArrayForEach(rec, engaged) {
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(rec, "ts");
        if (cJSON_IsNumber(ts) && ts->valuedouble > 0 && ts->valuedouble <= now)
            cJSON_AddNumberToObject(rec, "age_seconds", ms(now - ts->valuedouble));
    }
    cJSON_AddItemToObject(o, "killswitch", kills ? kills : cJSON_CreateNull());

    cJSON *rules = NULL;
    if (status_rules(s, &rules) != 0) rules = NULL;
    cJSON_AddItemToObject(o, "rules", rules ? rules : cJSON_CreateNull());

    if (s->bus) cJSON_AddItemToObject(o, "bus", bus_obj(s->bus));
    return o;
}
