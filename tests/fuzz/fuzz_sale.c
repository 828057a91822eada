/* fuzz_sale.c -- libFuzzer target: sale_parse(), the validation of every
 * POST /sale body (engine/sale.c).
 *
 * The input is the raw body. It is parsed with two max_qty values (the
 * default 1000 and the largest allowed, 1e9). On success the request must
 * satisfy what the rest of the sale path relies on without checking again:
 * the sku is a valid SKU (sku_valid), qty is in 1..max_qty, the
 * order_id is 1..128 printable ASCII characters without spaces (generated
 * "ord-..." when the client sent none) and a unit price is finite and in
 * 0..1e15; and the body nests at most JSONCK_MAX_DEPTH levels (cJSON recurses
 * once per level on a CivetWeb worker's small stack: the point of the jsonck
 * pre-check). On failure the message is non-empty.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "nerve/jsonck.h"
#include "nerve/sale.h"
#include "nerve/sku.h"
#include "fuzz.h"

/* Container nesting of J (a scalar is 0, {} is 1). */
static int sale_depth(const cJSON *j)
{
    int max = 0;

    if (!cJSON_IsArray(j) && !cJSON_IsObject(j))
        return 0;
    for (const cJSON *c = j->child; c; c = c->next) {
        int d = sale_depth(c);

        if (d > max)
            max = d;
    }
    return max + 1;
}

static void sale_check(const uint8_t *data, size_t size, long long max_qty)
{
    sale_req req;
    char err[512];
    size_t len;

    err[0] = '\0';
    if (sale_parse((const char *)data, size, max_qty, &req, err, sizeof(err)) != 0) {
        FUZZ_CHECK(err[0] != '\0', "sale_parse failed without a message");
        return;
    }
    len = strnlen(req.sku, sizeof(req.sku));
    FUZZ_CHECK(len < sizeof(req.sku) && sku_valid(req.sku, len), "sku \"%.40s\"", req.sku);
    FUZZ_CHECK(req.qty >= 1 && req.qty <= max_qty, "qty %lld (max %lld)", req.qty, max_qty);
    len = strnlen(req.order_id, sizeof(req.order_id));
    FUZZ_CHECK(len >= 1 && len <= SALE_STR_MAX && fuzz_printable(req.order_id, len),
               "order_id \"%.40s\"", req.order_id);
    if (!req.client_order_id)
        FUZZ_CHECK(strncmp(req.order_id, "ord-", 4) == 0, "generated order_id %s", req.order_id);
    if (req.has_price)
        FUZZ_CHECK(isfinite(req.unit_price) && req.unit_price >= 0 && req.unit_price <= 1e15,
                   "unit_price %g", req.unit_price);
    else
        FUZZ_CHECK(req.unit_price == 0, "unit_price %g without has_price", req.unit_price);
    {
        cJSON *root = cJSON_ParseWithLength((const char *)data, size);
        int depth = sale_depth(root);

        cJSON_Delete(root);
        FUZZ_CHECK(depth >= 1 && depth <= JSONCK_MAX_DEPTH, "accepted a body nested %d deep", depth);
    }
}

static int fuzz_sale_one(const uint8_t *data, size_t size)
{
    fuzz_quiet_logs();
    sale_check(data, size, 1000);
    sale_check(data, size, 1000000000LL);
    return 0;
}

FUZZ_ENTRY(fuzz_sale_one)
