/* test_parsers.c -- the pure parsers, without I/O, the way hiredis tests its
 * reply parser: tables of inputs with the exact expected output.
 *
 *   sale_parse         (include/nerve/sale.h) every field, every bound and
 *                      the exact error message a client reads;
 *   jsonck_check       (include/nerve/jsonck.h) depth, NUL and the JSON
 *                      number grammar, exact messages;
 *   httpc_parse  (include/nerve/httpc.h) the HTTP client's incremental
 *                      HTTP/1.1 response parser: complete, incomplete at
 *                      every prefix, malformed; and httpc_url_parse;
 *   rds_parse_url      (include/nerve/rds.h) every part of a redis:// URL.
 *
 * Every row is a cmocka test of its own, named after the row ("sale_parse:
 * qty 0"), so a failure names its case; its message shows the input, the
 * expected and the actual answer. Only public entry points are called, so
 * the tables survive refactors of the code behind them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/jsonck.h"
#include "nerve/rds.h"
#include "nerve/sale.h"
#include "nerve/httpc.h"

#define NELEM(a) (sizeof(a) / sizeof(a)[0])
/* A string literal and its length (NUL bytes allowed). */
#define LIT(s) (s), (sizeof(s) - 1)

/* A printable copy of S (LEN bytes) in OUT: \r \n \t \0 \xNN escaped, cut at
 * OUTLEN with "...". For failure messages. */
static const char *show(const char *s, size_t len, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        char tmp[8];
        if (ch == '\r')
            snprintf(tmp, sizeof tmp, "\\r");
        else if (ch == '\n')
            snprintf(tmp, sizeof tmp, "\\n");
        else if (ch == '\t')
            snprintf(tmp, sizeof tmp, "\\t");
        else if (ch == 0)
            snprintf(tmp, sizeof tmp, "\\0");
        else if (ch < 0x20 || ch >= 0x7f)
            snprintf(tmp, sizeof tmp, "\\x%02x", ch);
        else
            snprintf(tmp, sizeof tmp, "%c", ch);
        size_t tl = strlen(tmp);
        if (o + tl + 4 >= outlen) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, tmp, tl);
        o += tl;
    }
    out[o] = '\0';
    return out;
}

/* S repeated N times after PREFIX and before SUFFIX (the caller frees). */
static char *build(const char *prefix, const char *s, size_t n, const char *suffix)
{
    size_t pl = strlen(prefix), sl = strlen(s), xl = strlen(suffix);
    char *out = malloc(pl + sl * n + xl + 1);
    assert_non_null(out);
    memcpy(out, prefix, pl);
    for (size_t i = 0; i < n; i++)
        memcpy(out + pl + i * sl, s, sl);
    memcpy(out + pl + sl * n, suffix, xl + 1);
    return out;
}

/* ---- sale_parse ----------------------------------------------------------- */

#define MAXQ 1000               /* server.max_qty in every row but those that say */

typedef struct sale_case {
    const char *name;
    const char *body;           /* NULL: built by the test from GEN */
    size_t len;
    long long max_qty;          /* 0: MAXQ */
    const char *err;            /* expected message; NULL: accepted */
    /* accepted: */
    const char *sku;
    long long qty;
    const char *order_id;       /* NULL: generated ("ord-...") */
    bool has_price;
    double price;
    int gen;                    /* GEN_*: a body too long to write out */
} sale_case;

enum { GEN_NONE, GEN_SKU_128, GEN_SKU_129, GEN_OID_128, GEN_OID_129, GEN_DEPTH_32, GEN_DEPTH_33 };

#define E_EMPTY "request body is empty; expected a JSON object"
#define E_MALFORMED "malformed JSON body"
#define E_OBJECT "body must be a JSON object"
#define E_SKU_REQ "sku is required"
#define E_SKU_STR "sku must be a string"
#define E_SKU_EMPTY "sku must not be empty"
#define E_SKU_LONG "sku must be at most 128 bytes"
#define E_SKU_CHARS "sku may only contain A-Z a-z 0-9 . _ : - (and at least one letter or digit)"
#define E_QTY_REQ "qty is required"
#define E_QTY_INT "qty must be an integer"
#define E_QTY_RANGE "qty must be between 1 and 1000"
#define E_OID_STR "order_id must be a string"
#define E_OID_LONG "order_id must be at most 128 bytes"
#define E_OID_CHARS "order_id must be 1 to 128 printable ASCII characters without spaces"
#define E_PRICE "unit_price must be a number between 0 and 1e15"
#define E_NUL "malformed JSON body: JSON must not contain NUL characters"
#define E_NUL_ESC "malformed JSON body: strings must not contain NUL characters (\\u0000)"

/* Rows: name, body, max_qty, error; or name, body, max_qty, NULL, sku, qty,
 * order_id, has_price, price. */
#define OK(name, lit, sku, qty, oid) { (name), LIT(lit), 0, NULL, (sku), (qty), (oid), false, 0, 0 }
#define OKP(name, lit, sku, qty, oid, price) \
    { (name), LIT(lit), 0, NULL, (sku), (qty), (oid), true, (price), 0 }
#define BAD(name, lit, err) { (name), LIT(lit), 0, (err), NULL, 0, NULL, false, 0, 0 }
#define GEN_OK(name, gen, sku, oid) { (name), NULL, 0, 0, NULL, (sku), 1, (oid), false, 0, (gen) }
#define GEN_BAD(name, gen, err) { (name), NULL, 0, 0, (err), NULL, 0, NULL, false, 0, (gen) }

static const sale_case sale_cases[] = {
    /* accepted */
    OK("minimal", "{\"sku\":\"A\",\"qty\":1}", "A", 1, NULL),
    OKP("every field", "{\"sku\":\"abc-1.X_y:z\",\"qty\":1000,\"order_id\":\"o-1\",\"unit_price\":9.99}",
        "abc-1.X_y:z", 1000, "o-1", 9.99),
    OK("fields in any order", "{\"order_id\":\"z\",\"qty\":7,\"sku\":\"B\"}", "B", 7, "z"),
    OK("white space around and inside", " \r\n\t{ \"sku\" : \"A\" ,\n \"qty\" : 2 }\t\r\n ", "A", 2, NULL),
    OK("qty 1.0 is the integer 1", "{\"sku\":\"A\",\"qty\":1.0}", "A", 1, NULL),
    OK("qty 1e2 is the integer 100", "{\"sku\":\"A\",\"qty\":1e2}", "A", 100, NULL),
    OK("qty 10E+1 is the integer 100", "{\"sku\":\"A\",\"qty\":10E+1}", "A", 100, NULL),
    OK("qty = max_qty", "{\"sku\":\"A\",\"qty\":1000}", "A", 1000, NULL),
    OK("order_id null: generated", "{\"sku\":\"A\",\"qty\":1,\"order_id\":null}", "A", 1, NULL),
    OK("order_id of every printable character",
       "{\"sku\":\"A\",\"qty\":1,\"order_id\":\"!#$%&'()*+,-./09:;<=>?@AZ[\\\\]^_`az{|}~\\\"\"}",
       "A", 1, "!#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~\""),
    OK("unit_price null: none", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":null}", "A", 1, NULL),
    OKP("unit_price 0", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":0}", "A", 1, NULL, 0),
    OKP("unit_price -0", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":-0}", "A", 1, NULL, 0),
    OKP("unit_price 1e15 (the maximum)", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":1e15}", "A", 1, NULL, 1e15),
    OKP("unit_price 1E+2", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":1E+2}", "A", 1, NULL, 100),
    OKP("unit_price 0.001", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":0.001}", "A", 1, NULL, 0.001),
    OKP("unit_price 1e-400 (underflows to 0)", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":1e-400}",
        "A", 1, NULL, 0),
    OK("sku .a (a dot and a letter)", "{\"sku\":\".a\",\"qty\":1}", ".a", 1, NULL),
    OK("sku ..1", "{\"sku\":\"..1\",\"qty\":1}", "..1", 1, NULL),
    OK("sku of digits", "{\"sku\":\"0123456789\",\"qty\":1}", "0123456789", 1, NULL),
    OK("sku with a \\u escape of a letter", "{\"sku\":\"A\\u0042\",\"qty\":1}", "AB", 1, NULL),
    OK("unknown keys are ignored", "{\"sku\":\"A\",\"qty\":1,\"x\":[1,{\"y\":null}],\"z\":\"\"}",
       "A", 1, NULL),
    OK("duplicate sku: the first wins", "{\"sku\":\"A\",\"sku\":\"B\",\"qty\":1}", "A", 1, NULL),
    OK("duplicate order_id: the first wins", "{\"sku\":\"A\",\"qty\":1,\"order_id\":\"a\",\"order_id\":\"b\"}",
       "A", 1, "a"),
    GEN_OK("sku of 128 bytes", GEN_SKU_128, NULL, NULL),
    GEN_OK("order_id of 128 bytes", GEN_OID_128, "A", NULL),
    GEN_OK("32 levels of nesting (the limit)", GEN_DEPTH_32, "A", NULL),

    /* the body */
    { "empty body", "", 0, 0, E_EMPTY, NULL, 0, NULL, false, 0, 0 },
    BAD("white space only", "  \r\n ", E_MALFORMED),
    BAD("not JSON", "sku=A&qty=1", E_MALFORMED),
    BAD("an array", "[{\"sku\":\"A\",\"qty\":1}]", E_OBJECT),
    BAD("a number", "42", E_OBJECT),
    BAD("a string", "\"A\"", E_OBJECT),
    BAD("null", "null", E_OBJECT),
    BAD("true", "true", E_OBJECT),
    BAD("unterminated object", "{\"sku\":\"A\",\"qty\":1", E_MALFORMED),
    BAD("unterminated string", "{\"sku\":\"A,\"qty\":1}", E_MALFORMED),
    BAD("trailing garbage", "{\"sku\":\"A\",\"qty\":1}x", E_MALFORMED),
    BAD("two objects", "{\"sku\":\"A\",\"qty\":1}{\"sku\":\"A\",\"qty\":1}", E_MALFORMED),
    BAD("trailing comma", "{\"sku\":\"A\",\"qty\":1,}", E_MALFORMED),
    BAD("single quotes", "{'sku':'A','qty':1}", E_MALFORMED),
    BAD("bad escape \\x", "{\"sku\":\"A\\x41\",\"qty\":1}", E_MALFORMED),
    BAD("NUL after the object", "{\"sku\":\"A\",\"qty\":1}\0", E_NUL),
    BAD("NUL inside a string", "{\"sku\":\"A\0B\",\"qty\":1}", E_NUL),
    BAD("NUL before the object", "\0{\"sku\":\"A\",\"qty\":1}", E_NUL),
    BAD("\\u0000 in sku", "{\"sku\":\"A\\u0000B\",\"qty\":1}", E_NUL_ESC),
    BAD("\\u0000 in order_id", "{\"sku\":\"A\",\"qty\":1,\"order_id\":\"o\\u0000\"}", E_NUL_ESC),
    BAD("\\u0000 in an ignored key", "{\"sku\":\"A\",\"qty\":1,\"x\\u0000\":1}", E_NUL_ESC),
    GEN_BAD("33 levels of nesting", GEN_DEPTH_33, "malformed JSON body: JSON nested deeper than 32 levels"),
    BAD("qty 01", "{\"sku\":\"A\",\"qty\":01}", "malformed JSON body: malformed JSON number at byte 17"),
    BAD("qty 1.", "{\"sku\":\"A\",\"qty\":1.}", "malformed JSON body: malformed JSON number at byte 17"),
    BAD("qty -", "{\"sku\":\"A\",\"qty\":-}", "malformed JSON body: malformed JSON number at byte 17"),
    BAD("qty 1e", "{\"sku\":\"A\",\"qty\":1e}", "malformed JSON body: malformed JSON number at byte 17"),
    BAD("qty +1", "{\"sku\":\"A\",\"qty\":+1}", E_MALFORMED),
    BAD("qty .5", "{\"sku\":\"A\",\"qty\":.5}", E_MALFORMED),
    BAD("qty 0x10", "{\"sku\":\"A\",\"qty\":0x10}", "malformed JSON body: malformed JSON number at byte 17"),
    BAD("qty NaN", "{\"sku\":\"A\",\"qty\":NaN}", E_MALFORMED),
    BAD("qty Infinity", "{\"sku\":\"A\",\"qty\":Infinity}", E_MALFORMED),
    BAD("keys are case-sensitive", "{\"SKU\":\"A\",\"qty\":1}", E_SKU_REQ),

    /* sku */
    BAD("no sku", "{\"qty\":1}", E_SKU_REQ),
    BAD("empty object", "{}", E_SKU_REQ),
    BAD("sku a number", "{\"sku\":1,\"qty\":1}", E_SKU_STR),
    BAD("sku null", "{\"sku\":null,\"qty\":1}", E_SKU_STR),
    BAD("sku an array", "{\"sku\":[\"A\"],\"qty\":1}", E_SKU_STR),
    BAD("sku an object", "{\"sku\":{},\"qty\":1}", E_SKU_STR),
    BAD("sku true", "{\"sku\":true,\"qty\":1}", E_SKU_STR),
    BAD("sku checked before qty", "{\"sku\":1,\"qty\":0}", E_SKU_STR),
    BAD("sku empty", "{\"sku\":\"\",\"qty\":1}", E_SKU_EMPTY),
    GEN_BAD("sku of 129 bytes", GEN_SKU_129, E_SKU_LONG),
    BAD("sku .", "{\"sku\":\".\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku ..", "{\"sku\":\"..\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku -_:.", "{\"sku\":\"-_:.\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with a space", "{\"sku\":\"a b\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with a slash", "{\"sku\":\"a/b\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with an escaped slash", "{\"sku\":\"a\\/b\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku ../etc", "{\"sku\":\"../etc\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with a Redis hash tag", "{\"sku\":\"a{b}\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with a *", "{\"sku\":\"a*\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with UTF-8", "{\"sku\":\"caf\xc3\xa9\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with invalid UTF-8", "{\"sku\":\"\xff\xfe\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with \\u00e9", "{\"sku\":\"caf\\u00e9\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with a newline", "{\"sku\":\"a\\nb\",\"qty\":1}", E_SKU_CHARS),
    BAD("sku with a tab", "{\"sku\":\"a\\tb\",\"qty\":1}", E_SKU_CHARS),

    /* qty */
    BAD("no qty", "{\"sku\":\"A\"}", E_QTY_REQ),
    BAD("qty a string", "{\"sku\":\"A\",\"qty\":\"1\"}", E_QTY_INT),
    BAD("qty null", "{\"sku\":\"A\",\"qty\":null}", E_QTY_INT),
    BAD("qty true", "{\"sku\":\"A\",\"qty\":true}", E_QTY_INT),
    BAD("qty an array", "{\"sku\":\"A\",\"qty\":[1]}", E_QTY_INT),
    BAD("qty 1.5", "{\"sku\":\"A\",\"qty\":1.5}", E_QTY_INT),
    BAD("qty 0.999999", "{\"sku\":\"A\",\"qty\":0.999999}", E_QTY_INT),
    BAD("qty 1e400 (infinite)", "{\"sku\":\"A\",\"qty\":1e400}", E_QTY_INT),
    BAD("qty -1e400", "{\"sku\":\"A\",\"qty\":-1e400}", E_QTY_INT),
    BAD("qty 0", "{\"sku\":\"A\",\"qty\":0}", E_QTY_RANGE),
    BAD("qty -0", "{\"sku\":\"A\",\"qty\":-0}", E_QTY_RANGE),
    BAD("qty -1", "{\"sku\":\"A\",\"qty\":-1}", E_QTY_RANGE),
    BAD("qty 1e-400 (0)", "{\"sku\":\"A\",\"qty\":1e-400}", E_QTY_RANGE),
    BAD("qty max_qty + 1", "{\"sku\":\"A\",\"qty\":1001}", E_QTY_RANGE),
    BAD("qty 2^63", "{\"sku\":\"A\",\"qty\":9223372036854775808}", E_QTY_RANGE),
    BAD("qty 1e300", "{\"sku\":\"A\",\"qty\":1e300}", E_QTY_RANGE),
    BAD("qty of 400 digits",
        "{\"sku\":\"A\",\"qty\":1000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000}",
        E_QTY_INT),
    BAD("duplicate qty: the first (0) wins", "{\"sku\":\"A\",\"qty\":0,\"qty\":1}", E_QTY_RANGE),
    { "qty 2 with max_qty 1", LIT("{\"sku\":\"A\",\"qty\":2}"), 1, "qty must be between 1 and 1",
      NULL, 0, NULL, false, 0, 0 },
    { "qty 1 with max_qty 1", LIT("{\"sku\":\"A\",\"qty\":1}"), 1, NULL, "A", 1, NULL, false, 0, 0 },

    /* order_id */
    BAD("order_id a number", "{\"sku\":\"A\",\"qty\":1,\"order_id\":1}", E_OID_STR),
    BAD("order_id an object", "{\"sku\":\"A\",\"qty\":1,\"order_id\":{}}", E_OID_STR),
    BAD("order_id false", "{\"sku\":\"A\",\"qty\":1,\"order_id\":false}", E_OID_STR),
    BAD("order_id empty", "{\"sku\":\"A\",\"qty\":1,\"order_id\":\"\"}", E_OID_CHARS),
    BAD("order_id with a space", "{\"sku\":\"A\",\"qty\":1,\"order_id\":\"a b\"}", E_OID_CHARS),
    BAD("order_id with a tab", "{\"sku\":\"A\",\"qty\":1,\"order_id\":\"a\\tb\"}", E_OID_CHARS),
    BAD("order_id with DEL", "{\"sku\":\"A\",\"qty\":1,\"order_id\":\"a\\u007f\"}", E_OID_CHARS),
    BAD("order_id with UTF-8", "{\"sku\":\"A\",\"qty\":1,\"order_id\":\"\xc3\xa9\"}", E_OID_CHARS),
    GEN_BAD("order_id of 129 bytes", GEN_OID_129, E_OID_LONG),

    /* unit_price */
    BAD("unit_price a string", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":\"9.99\"}", E_PRICE),
    BAD("unit_price true", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":true}", E_PRICE),
    BAD("unit_price an array", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":[1]}", E_PRICE),
    BAD("unit_price -0.01", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":-0.01}", E_PRICE),
    BAD("unit_price 1000000000000001", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":1000000000000001}", E_PRICE),
    BAD("unit_price 1e16", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":1e16}", E_PRICE),
    BAD("unit_price 1e400 (infinite)", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":1e400}", E_PRICE),
    BAD("unit_price 01", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":01}",
        "malformed JSON body: malformed JSON number at byte 32"),
};

/* The body of a GEN_* row (the caller frees). */
static char *gen_body(int gen)
{
    switch (gen) {
    case GEN_SKU_128:
        return build("{\"qty\":1,\"sku\":\"", "s", 128, "\"}");
    case GEN_SKU_129:
        return build("{\"qty\":1,\"sku\":\"", "s", 129, "\"}");
    case GEN_OID_128:
        return build("{\"sku\":\"A\",\"qty\":1,\"order_id\":\"", "o", 128, "\"}");
    case GEN_OID_129:
        return build("{\"sku\":\"A\",\"qty\":1,\"order_id\":\"", "o", 129, "\"}");
    case GEN_DEPTH_32: {
        /* The object is level 1: 31 arrays inside it. */
        char *open = build("{\"sku\":\"A\",\"qty\":1,\"x\":", "[", 31, "");
        char *all = build(open, "]", 31, "}");
        free(open);
        return all;
    }
    case GEN_DEPTH_33: {
        char *open = build("{\"sku\":\"A\",\"qty\":1,\"x\":", "[", 32, "");
        char *all = build(open, "]", 32, "}");
        free(open);
        return all;
    }
    }
    return NULL;
}

static void test_sale_parse_row(void **state)
{
    const sale_case *c = *state;
    char *owned = c->body ? NULL : gen_body(c->gen);
    const char *body = c->body ? c->body : owned;
    size_t len = c->body ? c->len : strlen(owned);
    long long max_qty = c->max_qty ? c->max_qty : MAXQ;
    sale_req req;
    char err[512] = "", in[300];
    memset(&req, 0xa5, sizeof req);
    int rc = sale_parse(body, len, max_qty, &req, err, sizeof err);
    show(body, len, in, sizeof in);
    if (c->err) {
        if (rc != -1 || strcmp(err, c->err) != 0)
            fail_msg("sale_parse(%s, max_qty %lld): expected -1 \"%s\", got %d \"%s\"", in, max_qty,
                     c->err, rc, rc ? err : "");
        free(owned);
        return;
    }
    if (rc != 0)
        fail_msg("sale_parse(%s, max_qty %lld): expected 0, got %d \"%s\"", in, max_qty, rc, err);
    const char *want_sku = c->sku;
    char sku128[SALE_STR_MAX + 1];
    if (c->gen == GEN_SKU_128) {
        memset(sku128, 's', SALE_STR_MAX);
        sku128[SALE_STR_MAX] = '\0';
        want_sku = sku128;
    }
    if (strcmp(req.sku, want_sku) != 0)
        fail_msg("sale_parse(%s): sku \"%s\", expected \"%s\"", in, req.sku, want_sku);
    if (req.qty != c->qty)
        fail_msg("sale_parse(%s): qty %lld, expected %lld", in, req.qty, c->qty);
    char oid128[SALE_STR_MAX + 1];
    const char *want_oid = c->order_id;
    if (c->gen == GEN_OID_128) {
        memset(oid128, 'o', SALE_STR_MAX);
        oid128[SALE_STR_MAX] = '\0';
        want_oid = oid128;
    }
    if (want_oid) {
        if (!req.client_order_id || strcmp(req.order_id, want_oid) != 0)
            fail_msg("sale_parse(%s): order_id \"%s\" (client %d), expected the client's \"%s\"", in,
                     req.order_id, req.client_order_id, want_oid);
    } else {
        /* Generated: "ord-" and a token, printable, no spaces. */
        size_t ol = strnlen(req.order_id, sizeof req.order_id);
        bool printable = ol < sizeof req.order_id;
        for (size_t i = 0; printable && i < ol; i++)
            printable = req.order_id[i] > 0x20 && req.order_id[i] < 0x7f;
        if (req.client_order_id || strncmp(req.order_id, "ord-", 4) != 0 || ol < 5 || !printable)
            fail_msg("sale_parse(%s): expected a generated order_id \"ord-...\", got \"%.*s\" "
                     "(client %d)", in, (int)ol, req.order_id, req.client_order_id);
    }
    if (req.has_price != c->has_price || (c->has_price && req.unit_price != c->price))
        fail_msg("sale_parse(%s): unit_price %s%.17g, expected %s%.17g", in,
                 req.has_price ? "" : "none ", req.has_price ? req.unit_price : 0,
                 c->has_price ? "" : "none ", c->price);
    free(owned);
}

/* A generated order_id differs from one parse to the next, and a short
 * error buffer gets a terminated prefix of the message. */
static void test_sale_parse_side_effects(void **state)
{
    (void)state;
    sale_req a, b;
    char err[256];
    assert_int_equal(sale_parse(LIT("{\"sku\":\"A\",\"qty\":1}"), MAXQ, &a, err, sizeof err), 0);
    assert_int_equal(sale_parse(LIT("{\"sku\":\"A\",\"qty\":1}"), MAXQ, &b, err, sizeof err), 0);
    if (strcmp(a.order_id, b.order_id) == 0)
        fail_msg("two generated order_ids are the same: %s", a.order_id);

    char small[8];
    memset(small, 'x', sizeof small);
    assert_int_equal(sale_parse(LIT("{}"), MAXQ, &a, small, sizeof small), -1);
    assert_string_equal(small, "sku is ");
}

/* ---- jsonck_check ------------------------------------------------------------ */

typedef struct jck_case {
    const char *name;
    const char *text;
    size_t len;
    int max_depth;              /* 0: JSONCK_MAX_DEPTH */
    const char *err;            /* NULL: passes */
} jck_case;

#define JOK(name, lit) { (name), LIT(lit), 0, NULL }
#define JBAD(name, lit, err) { (name), LIT(lit), 0, (err) }
#define JNUM(at) "malformed JSON number at byte " #at
#define JNUL "JSON must not contain NUL characters"

static const jck_case jck_cases[] = {
    JOK("empty text", ""),
    JOK("{}", "{}"),
    JOK("a sale", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":9.99}"),
    /* numbers, RFC 8259 */
    JOK("0", "0"),
    JOK("-0", "-0"),
    JOK("123", "123"),
    JOK("-1.5e+10", "-1.5e+10"),
    JOK("1E5", "1E5"),
    JOK("1e-5", "1e-5"),
    JOK("0.0", "0.0"),
    JOK("huge exponent 1e99999 (grammar only)", "1e99999"),
    JOK("400 digits", "1000000000000000000000000000000000000000000000000000000000000000000000000000"
                      "00000000000000000000000000000000000000000000000000000000000000000000000000000"
                      "00000000000000000000000000000000000000000000000000000000000000000000000000000"
                      "00000000000000000000000000000000000000000000000000000000000000000000000000000"
                      "000000000000000000000000000000000000000000000000000000000000000000000000000000"),
    JOK("numbers before every delimiter", "[1,2 ,3\t,4\r,5\n,{\"a\":6}]"),
    JOK("a number as a key's neighbour", "{\"a\":1 }"),
    JBAD("01", "01", JNUM(0)),
    JBAD("-01", "-01", JNUM(0)),
    JBAD("00", "00", JNUM(0)),
    JBAD("1.", "1.", JNUM(0)),
    JBAD("1.e5", "1.e5", JNUM(0)),
    JBAD("-", "-", JNUM(0)),
    JBAD("--1", "--1", JNUM(0)),
    JBAD("-a", "-a", JNUM(0)),
    JBAD("1e", "1e", JNUM(0)),
    JBAD("1e+", "1e+", JNUM(0)),
    JBAD("1e-", "1e-", JNUM(0)),
    JBAD("1e5.5", "1e5.5", JNUM(0)),
    JBAD("1.5.5", "1.5.5", JNUM(0)),
    JBAD("1x", "1x", JNUM(0)),
    JBAD("0x10", "0x10", JNUM(0)),
    JBAD("1-2", "1-2", JNUM(0)),
    JBAD("01 in an array (its byte)", "[1,01]", JNUM(3)),
    JBAD("- in an array", "[-]", JNUM(1)),
    JBAD("1. in an object", "{\"a\":1.}", JNUM(5)),
    JBAD("the first bad number is named", "[01,1.]", JNUM(1)),
    /* left to cJSON, which rejects them: not numbers by their first byte */
    JOK("+1 (cJSON's to reject)", "+1"),
    JOK(".5 (cJSON's to reject)", ".5"),
    JOK("NaN (cJSON's to reject)", "NaN"),
    /* strings */
    JOK("digits in a string are not numbers", "\"01\""),
    JOK("a key like a bad number", "{\"1.\":1}"),
    JOK("brackets in a string do not nest", "[\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"]"),
    JOK("an escaped quote does not end the string", "[\"a\\\"01\"]"),
    JOK("unterminated string (cJSON's to reject)", "\"abc"),
    JOK("a string ending in a backslash (cJSON's to reject)", "\"abc\\"),
    JOK("bad escape \\x (cJSON's to reject)", "\"\\x41\""),
    JOK("an escaped backslash then u0000 is no NUL", "\"\\\\u0000\""),
    JOK("\\u0001", "\"\\u0001\""),
    JOK("\\u000 cut short", "\"\\u000\""),
    JBAD("\\u0000", "\"a\\u0000b\"", "strings must not contain NUL characters (\\u0000)"),
    JBAD("\\u0000 in a key", "{\"a\\u0000\":1}", "strings must not contain NUL characters (\\u0000)"),
    JBAD("raw NUL", "\0", JNUL),
    JBAD("raw NUL after a value", "{}\0", JNUL),
    JBAD("raw NUL in a string", "\"a\0b\"", JNUL),
    JBAD("raw NUL inside an unterminated string", "\"a\0", JNUL),
    /* depth */
    JOK("unbalanced closers (cJSON's to reject)", "]]]]}}}}"),
    JOK("garbage letters (cJSON's to reject)", "hello"),
    { "2 levels with a limit of 2", LIT("[{}]"), 2, NULL },
    { "3 levels with a limit of 2", LIT("[[[]]]"), 2, "JSON nested deeper than 2 levels" },
    { "siblings do not add up", LIT("[[],[],[],[]]"), 2, NULL },
    { "depth is counted even in an unterminated text", LIT("[[["), 2, "JSON nested deeper than 2 levels" },
};

static void test_jsonck_row(void **state)
{
    const jck_case *c = *state;
    int depth = c->max_depth ? c->max_depth : JSONCK_MAX_DEPTH;
    char err[256] = "", in[300];
    int rc = jsonck_check(c->text, c->len, depth, err, sizeof err);
    show(c->text, c->len, in, sizeof in);
    if (c->err == NULL && rc != 0)
        fail_msg("jsonck_check(%s, depth %d): expected 0, got %d \"%s\"", in, depth, rc, err);
    if (c->err && (rc != -1 || strcmp(err, c->err) != 0))
        fail_msg("jsonck_check(%s, depth %d): expected -1 \"%s\", got %d \"%s\"", in, depth, c->err,
                 rc, rc ? err : "");
}

/* JSONCK_MAX_DEPTH itself: 32 levels pass, 33 do not, objects and arrays
 * alike, and 100,000 levels are refused without recursion. */
static void test_jsonck_depth_limit(void **state)
{
    (void)state;
    char err[256];
    assert_int_equal(JSONCK_MAX_DEPTH, 32);
    struct { const char *open, *close; } kinds[] = { { "[", "]" }, { "{\"a\":", "}" } };
    for (size_t k = 0; k < NELEM(kinds); k++) {
        for (size_t depth = 31; depth <= 34; depth++) {
            char *o = build("", kinds[k].open, depth, "");
            char *t = build(o, kinds[k].close, depth, "");
            int rc = jsonck_check(t, strlen(t), JSONCK_MAX_DEPTH, err, sizeof err);
            if (depth <= 32 && rc != 0)
                fail_msg("%zu levels of %s: expected 0, got %d %s", depth, kinds[k].open, rc, err);
            if (depth > 32 && (rc != -1 || strcmp(err, "JSON nested deeper than 32 levels") != 0))
                fail_msg("%zu levels of %s: expected the depth error, got %d %s", depth,
                         kinds[k].open, rc, rc ? err : "");
            free(o);
            free(t);
        }
    }
    char *deep = build("", "[", 100000, "");
    assert_int_equal(jsonck_check(deep, 100000, JSONCK_MAX_DEPTH, err, sizeof err), -1);
    assert_string_equal(err, "JSON nested deeper than 32 levels");
    free(deep);
}

/* ---- httpc_parse ------------------------------------------------------------- */

typedef struct resp_case {
    const char *name;
    const char *in;
    size_t len;
    bool eof;
    int rc;                     /* 1 complete, 0 incomplete, -1 malformed */
    const char *err;            /* rc -1 */
    /* rc 1: */
    int status;
    bool close;
    const char *body;
    size_t body_len;
    size_t total;               /* 0: the whole input */
} resp_case;

#define R_OK(name, lit, eof, st, cl, blit, total) \
    { (name), LIT(lit), (eof), 1, NULL, (st), (cl), LIT(blit), (total) }
#define R_MORE(name, lit) { (name), LIT(lit), false, 0, NULL, 0, false, NULL, 0, 0 }
#define R_BAD(name, lit, eof, err) { (name), LIT(lit), (eof), -1, (err), 0, false, NULL, 0, 0 }

#define H200 "HTTP/1.1 200 OK\r\n"
#define CHUNKED "Transfer-Encoding: chunked\r\n"

static const resp_case resp_cases[] = {
    R_OK("Content-Length", H200 "Content-Length: 2\r\n\r\nhi", false, 200, false, "hi", 0),
    R_OK("Content-Length 0", H200 "Content-Length: 0\r\n\r\n", false, 200, false, "", 0),
    R_OK("header names in any case", H200 "content-LENGTH: 2\r\n\r\nhi", false, 200, false, "hi", 0),
    R_OK("white space before the value", H200 "Content-Length: \t 2\r\n\r\nhi", false, 200, false, "hi", 0),
    R_OK("pipelined: total is the first message only",
         H200 "Content-Length: 2\r\n\r\nhi" H200 "Content-Length: 1\r\n\r\nx", false, 200, false, "hi",
         sizeof(H200 "Content-Length: 2\r\n\r\nhi") - 1),
    R_OK("a JSON error", "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\n"
         "Content-Length: 24\r\n\r\n{\"error\":\"out_of_stock\"}", false, 409, false,
         "{\"error\":\"out_of_stock\"}", 0),
    R_OK("Connection: close", H200 "Connection: close\r\nContent-Length: 2\r\n\r\nhi", false, 200, true, "hi", 0),
    R_OK("Connection: Close (any case)", H200 "Connection: Close\r\nContent-Length: 0\r\n\r\n", false, 200, true, "", 0),
    R_OK("Connection: keep-alive", H200 "Connection: keep-alive\r\nContent-Length: 0\r\n\r\n", false, 200, false, "", 0),
    R_OK("HTTP/1.0 closes", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", false, 200, true, "hi", 0),
    R_OK("HTTP/1.0 with keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
         false, 200, false, "hi", 0),
    R_OK("204 has no body", "HTTP/1.1 204 No Content\r\n\r\nNEXT", false, 204, false, "",
         sizeof("HTTP/1.1 204 No Content\r\n\r\n") - 1),
    R_OK("304 has no body even with a Content-Length",
         "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, 304, false, "", 0),
    R_OK("100 Continue is a message of its own", "HTTP/1.1 100 Continue\r\n\r\n" H200, false, 100, false, "",
         sizeof("HTTP/1.1 100 Continue\r\n\r\n") - 1),
    R_OK("chunked", H200 CHUNKED "\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", false, 200, false,
         "hello world", 0),
    R_OK("chunked, hex sizes in any case", H200 CHUNKED "\r\na\r\n0123456789\r\nB\r\nabcdefghijk\r\n0\r\n\r\n",
         false, 200, false, "0123456789abcdefghijk", 0),
    R_OK("chunked with an extension", H200 CHUNKED "\r\n2;name=value\r\nhi\r\n0\r\n\r\n", false, 200, false, "hi", 0),
    R_OK("chunked with a trailer", H200 CHUNKED "\r\n2\r\nhi\r\n0\r\nX-Trailer: 1\r\n\r\n", false, 200, false, "hi", 0),
    R_OK("chunked with bare LF line ends", H200 CHUNKED "\r\n2\nhi\n0\n\n", false, 200, false, "hi", 0),
    R_OK("chunked, empty", H200 CHUNKED "\r\n0\r\n\r\n", false, 200, false, "", 0),
    R_OK("chunked wins over Content-Length", H200 "Content-Length: 1\r\n" CHUNKED "\r\n2\r\nhi\r\n0\r\n\r\n",
         false, 200, false, "hi", 0),
    R_OK("Transfer-Encoding: gzip, chunked", H200 "Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
         false, 200, false, "hi", 0),
    R_OK("close-delimited body at EOF", H200 "\r\nuntil the end", true, 200, true, "until the end", 0),
    R_OK("close-delimited empty body at EOF", H200 "\r\n", true, 200, true, "", 0),
    R_OK("a complete message needs no EOF, and EOF changes nothing", H200 "Content-Length: 2\r\n\r\nhi",
         true, 200, false, "hi", 0),
    R_OK("status 599", "HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n", false, 599, false, "", 0),
    R_OK("no reason phrase", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false, 200, false, "", 0),

    R_MORE("nothing yet", ""),
    R_MORE("status line only", H200),
    R_MORE("head without its blank line", H200 "Content-Length: 2\r\n"),
    R_MORE("body short of Content-Length", H200 "Content-Length: 5\r\n\r\nhi"),
    R_MORE("chunked, no chunk yet", H200 CHUNKED "\r\n"),
    R_MORE("chunked, inside a chunk", H200 CHUNKED "\r\n5\r\nhel"),
    R_MORE("chunked, before the last chunk", H200 CHUNKED "\r\n2\r\nhi\r\n"),
    R_MORE("chunked, inside the trailer", H200 CHUNKED "\r\n0\r\nX-T: 1\r\n"),
    R_MORE("close-delimited, before EOF", H200 "\r\nsome"),
    R_MORE("LF-only head: never complete", "HTTP/1.1 200 OK\nContent-Length: 0\n\n"),

    R_BAD("closed before an answer", "", true, "connection closed by the server before an answer"),
    R_BAD("closed in the head", H200 "Content-Le", true, "connection closed in the middle of the response headers"),
    R_BAD("LF-only head at EOF", "HTTP/1.1 200 OK\n\n", true, "connection closed in the middle of the response headers"),
    R_BAD("closed in the body", H200 "Content-Length: 5\r\n\r\nhi", true, "connection closed in the middle of the body"),
    R_BAD("closed in a chunk", H200 CHUNKED "\r\n5\r\nhel", true, "connection closed in the middle of the body"),
    R_BAD("HTTP/2", "HTTP/2 200\r\n\r\n", false, "not an HTTP/1.x response"),
    R_BAD("HTTP/1.1 with a 2-digit status", "HTTP/1.1 20 OK\r\n\r\n", false, "not an HTTP/1.x response"),
    R_BAD("HTTP/1.1 with a letter in the status", "HTTP/1.1 2x0 OK\r\n\r\n", false, "not an HTTP/1.x response"),
    R_BAD("lowercase http/1.1", "http/1.1 200 OK\r\n\r\n", false, "not an HTTP/1.x response"),
    R_BAD("ICY", "ICY 200 OK\r\n\r\n", false, "not an HTTP/1.x response"),
    R_BAD("a request, not a response", "GET / HTTP/1.1\r\n\r\n", false, "not an HTTP/1.x response"),
    R_BAD("Content-Length -1", H200 "Content-Length: -1\r\n\r\n", false, "bad Content-Length"),
    R_BAD("Content-Length abc", H200 "Content-Length: abc\r\n\r\n", false, "bad Content-Length"),
    R_BAD("Content-Length empty", H200 "Content-Length: \r\n\r\n", false, "bad Content-Length"),
    R_BAD("Content-Length over 1 MiB", H200 "Content-Length: 1048577\r\n\r\n", false, "bad Content-Length"),
    R_BAD("Content-Length 2^64", H200 "Content-Length: 18446744073709551616\r\n\r\n", false, "bad Content-Length"),
    R_BAD("chunk size not hex", H200 CHUNKED "\r\nzz\r\nab\r\n0\r\n\r\n", false, "bad chunk size"),
    R_BAD("chunk size with junk after it", H200 CHUNKED "\r\n2x\r\nhi\r\n0\r\n\r\n", false, "bad chunk size"),
    R_BAD("chunk size over 1 MiB", H200 CHUNKED "\r\n100001\r\n", false, "bad chunk size"),
    R_BAD("chunk size over 64 bits", H200 CHUNKED "\r\nFFFFFFFFFFFFFFFFFFFF\r\n", false, "bad chunk size"),
    R_BAD("chunk without its CRLF", H200 CHUNKED "\r\n2\r\nhiXX0\r\n\r\n", false, "chunk not followed by CRLF"),
    R_BAD("a chunk size line of 65 bytes", H200 CHUNKED "\r\n"
          "00000000000000000000000000000000000000000000000000000000000000002", false,
          "bad chunk size line"),
};

static void check_resp(const char *what, const char *in, size_t len, bool eof, int want_rc,
                       const char *want_err, int status, bool close, const char *body,
                       size_t body_len, size_t total)
{
    char *buf = malloc(len + 1);
    assert_non_null(buf);
    memcpy(buf, in, len);
    buf[len] = '\0';
    httpc_resp r;
    char err[256] = "", shown[400];
    int rc = httpc_parse(buf, len, eof, &r, err, sizeof err);
    show(in, len, shown, sizeof shown);
    if (rc != want_rc || (want_rc == -1 && strcmp(err, want_err) != 0))
        fail_msg("%s: httpc_parse(%s, eof %d): expected %d%s%s%s, got %d \"%s\"", what, shown,
                 eof, want_rc, want_err ? " \"" : "", want_err ? want_err : "", want_err ? "\"" : "",
                 rc, rc == -1 ? err : "");
    if (want_rc == 1) {
        char got[200], exp[200];
        if (r.status != status || r.close != close || r.body_len != body_len ||
            memcmp(r.body, body, body_len) != 0 || r.total != (total ? total : len))
            fail_msg("%s: httpc_parse(%s, eof %d): expected status %d close %d body \"%s\" "
                     "total %zu, got status %d close %d body \"%s\" total %zu", what, shown, eof,
                     status, close, show(body, body_len, exp, sizeof exp), total ? total : len,
                     r.status, r.close, show(r.body, r.body_len, got, sizeof got), r.total);
    }
    free(buf);
}

static void test_http_parse_row(void **state)
{
    const resp_case *c = *state;
    check_resp(c->name, c->in, c->len, c->eof, c->rc, c->err, c->status, c->close, c->body,
               c->body_len, c->total);
}

/* Fed the way the load loop feeds it, one recv() at a time: every strict
 * prefix of a complete, self-delimited message is "incomplete" (never an
 * error, never complete too early), and the whole is complete. */
static void test_http_parse_prefixes(void **state)
{
    (void)state;
    for (size_t i = 0; i < NELEM(resp_cases); i++) {
        const resp_case *c = &resp_cases[i];
        if (c->rc != 1 || c->eof || c->total)
            continue;           /* close-delimited, or followed by another message */
        for (size_t n = 0; n < c->len; n++) {
            char what[160];
            snprintf(what, sizeof what, "%s, first %zu of %zu bytes", c->name, n, c->len);
            check_resp(what, c->in, n, false, 0, NULL, 0, false, NULL, 0, 0);
        }
    }
}

/* Over HEAD_MAX (64 KiB) without the end of the head: malformed, whereas a
 * shorter unfinished head is only incomplete. */
static void test_http_parse_head_limit(void **state)
{
    (void)state;
    char *big = build(H200 "X-Pad: ", "a", 70 * 1024, "");
    check_resp("70 KiB of head", big, strlen(big), false, -1, "response headers too large", 0,
               false, NULL, 0, 0);
    free(big);
    big = build(H200 "X-Pad: ", "a", 60 * 1024, "");
    check_resp("60 KiB of head", big, strlen(big), false, 0, NULL, 0, false, NULL, 0, 0);
    free(big);
}

/* ---- httpc_url_parse ----------------------------------------------------------------- */

typedef struct surl_case {
    const char *in;
    const char *err;            /* NULL: parses */
    const char *base, *host, *hostport;
    int port;
} surl_case;

#define SU_OK(in, base, host, port, hostport) { (in), NULL, (base), (host), (hostport), (port) }
#define SU_BAD(in, err) { (in), (err), NULL, NULL, NULL, 0 }
#define SU_EXPECTED(in) SU_BAD(in, "--url: expected http://HOST:PORT, got '" in "'")
#define SU_PORT(in) SU_BAD(in, "--url: port must be 1..65535 in '" in "'; expected http://HOST:PORT")

static const surl_case surl_cases[] = {
    SU_OK("http://127.0.0.1:8080", "http://127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
    SU_OK("http://localhost", "http://localhost", "localhost", 80, "localhost:80"),
    SU_OK("http://h:1/", "http://h:1", "h", 1, "h:1"),
    SU_OK("http://h:65535", "http://h:65535", "h", 65535, "h:65535"),
    SU_OK("HTTP://Host-1.example_x:08080", "HTTP://Host-1.example_x:08080", "Host-1.example_x", 8080,
          "Host-1.example_x:8080"),
    SU_OK("http://[::1]:8080", "http://[::1]:8080", "::1", 8080, "[::1]:8080"),
    SU_OK("http://[::1]", "http://[::1]", "::1", 80, "[::1]:80"),
    SU_OK("http://[fe80::1%25eth0]:80/", "http://[fe80::1%25eth0]:80", "fe80::1%25eth0", 80,
          "[fe80::1%25eth0]:80"),
    SU_BAD("https://h:443", "--url: https is not supported; expected http://HOST:PORT, got 'https://h:443'"),
    SU_EXPECTED("ftp://h:21"),
    SU_EXPECTED("h:8080"),
    SU_EXPECTED("http://"),
    SU_EXPECTED("http:///"),
    SU_EXPECTED("http://:8080"),
    SU_EXPECTED("http://[]:80"),
    SU_EXPECTED("http://[::1:80"),
    SU_EXPECTED("http://a b:80"),
    SU_EXPECTED("http://user@h:80"),
    SU_EXPECTED("http://h:80x"),
    SU_EXPECTED("http://h:80?q"),
    SU_PORT("http://h:0"),
    SU_PORT("http://h:65536"),
    SU_PORT("http://h:-1"),
    SU_PORT("http://h:+80"),
    SU_PORT("http://h:"),
    SU_PORT("http://h:99999999999999999999"),
    SU_BAD("http://h:80/sale", "--url: expected http://HOST:PORT without a path, got 'http://h:80/sale'"),
    SU_BAD("http://h//", "--url: expected http://HOST:PORT without a path, got 'http://h//'"),
};

static void test_url_parse_row(void **state)
{
    const surl_case *c = *state;
    httpc_url u;
    char err[512] = "";
    int rc = httpc_url_parse(c->in, &u, err, sizeof err);
    if (c->err) {
        if (rc != -1 || strcmp(err, c->err) != 0)
            fail_msg("httpc_url_parse(\"%s\"): expected -1 \"%s\", got %d \"%s\"", c->in, c->err,
                     rc, rc ? err : "");
        return;
    }
    if (rc != 0)
        fail_msg("httpc_url_parse(\"%s\"): expected 0, got %d \"%s\"", c->in, rc, err);
    if (strcmp(u.base, c->base) || strcmp(u.host, c->host) || u.port != c->port ||
        strcmp(u.hostport, c->hostport))
        fail_msg("httpc_url_parse(\"%s\"): expected base %s host %s port %d Host %s, got base %s "
                 "host %s port %d Host %s", c->in, c->base, c->host, c->port, c->hostport, u.base,
                 u.host, u.port, u.hostport);
}

/* ---- rds_parse_url -------------------------------------------------------------------- */

typedef struct rurl_case {
    const char *in;
    const char *err_has;        /* NULL: parses; else a word the message must contain */
    const char *host, *user, *pass;
    int port, db;
} rurl_case;

#define RU_OK(in, host, port, db, user, pass) { (in), NULL, (host), (user), (pass), (port), (db) }
#define RU_BAD(in, word) { (in), (word), NULL, NULL, NULL, 0, 0 }

static const rurl_case rurl_cases[] = {
    RU_OK("redis://127.0.0.1:6379/0", "127.0.0.1", 6379, 0, "", ""),
    RU_OK("redis://h", "h", 6379, 0, "", ""),
    RU_OK("redis://h/", "h", 6379, 0, "", ""),
    RU_OK("redis://h:7000", "h", 7000, 0, "", ""),
    RU_OK("redis://h:1/15", "h", 1, 15, "", ""),
    RU_OK("redis://h:65535/0", "h", 65535, 0, "", ""),
    RU_OK("redis://redis-host.example:6380/3", "redis-host.example", 6380, 3, "", ""),
    RU_OK("redis://:secret@h:6379/0", "h", 6379, 0, "", "secret"),
    RU_OK("redis://nerve:PASSWORD@redis-host:6379/0", "redis-host", 6379, 0, "nerve", "PASSWORD"),
    RU_OK("redis://u:p@h", "h", 6379, 0, "u", "p"),
    RU_OK("redis://us%40er:p%3Aa%2Fss%25@h:1/2", "h", 1, 2, "us@er", "p:a/ss%"),
    RU_OK("redis://%41%62:%7e@h", "h", 6379, 0, "Ab", "~"),
    RU_OK("redis://secret@h", "h", 6379, 0, "", "secret"),
    RU_OK("redis://[::1]:6380/2", "::1", 6380, 2, "", ""),
    RU_OK("redis://[2001:db8::1]/3", "2001:db8::1", 6379, 3, "", ""),
    RU_OK("redis://u:p@[::1]:7/1", "::1", 7, 1, "u", "p"),
    RU_BAD("http://h:6379/0", "redis://"),
    RU_BAD("rediss://h:6379/0", "redis://"),
    RU_BAD("", "redis://"),
    RU_BAD("h:6379", "redis://"),
    RU_BAD("redis://", "host"),
    RU_BAD("redis://:6379/0", "host"),
    RU_BAD("redis:///0", "host"),
    RU_BAD("redis://[::1", "host"),
    RU_BAD("redis://[]:1", "host"),
    RU_BAD("redis://::1:6379", "host"),
    RU_BAD("redis://h:0/0", "port"),
    RU_BAD("redis://h:+80/0", "port"),
    RU_BAD("redis://h:65536/0", "port"),
    RU_BAD("redis://h:99999/0", "port"),
    RU_BAD("redis://h:-1/0", "port"),
    RU_BAD("redis://h:abc/0", "port"),
    RU_BAD("redis://h:/0", "port"),
    RU_BAD("redis://h:6379x/0", "port"),
    RU_BAD("redis://h:99999999999999999999999/0", "port"),
    RU_BAD("redis://h:6379/abc", "database"),
    RU_BAD("redis://h:6379/-1", "database"),
    RU_BAD("redis://h:6379/1x", "database"),
    RU_BAD("redis://h:6379/0/1", "database"),
    RU_BAD("redis://:%zz@h", "password"),
    RU_BAD("redis://:%4@h", "password"),
    RU_BAD("redis://u%:p@h", "user"),
};

static void test_rds_url_row(void **state)
{
    const rurl_case *c = *state;
    rds_opts o;
    memset(&o, 0, sizeof o);
    snprintf(o.user, sizeof o.user, "stale-user");
    snprintf(o.pass, sizeof o.pass, "stale-pass");
    o.db = 9;
    o.connect_timeout_ms = 1234;
    o.command_timeout_ms = 2345;
    o.reconnect_max_ms = 3456;
    char err[512] = "";
    int rc = rds_parse_url(c->in, &o, err, sizeof err);
    if (c->err_has) {
        if (rc != -1 || strstr(err, c->err_has) == NULL)
            fail_msg("rds_parse_url(\"%s\"): expected -1 with a message naming \"%s\", got %d \"%s\"",
                     c->in, c->err_has, rc, rc ? err : "");
        return;
    }
    if (rc != 0)
        fail_msg("rds_parse_url(\"%s\"): expected 0, got %d \"%s\"", c->in, rc, err);
    if (strcmp(o.host, c->host) || o.port != c->port || o.db != c->db || strcmp(o.user, c->user) ||
        strcmp(o.pass, c->pass))
        fail_msg("rds_parse_url(\"%s\"): expected host %s port %d db %d user \"%s\" pass \"%s\", got "
                 "host %s port %d db %d user \"%s\" pass \"%s\"", c->in, c->host, c->port, c->db,
                 c->user, c->pass, o.host, o.port, o.db, o.user, o.pass);
    if (o.connect_timeout_ms != 1234 || o.command_timeout_ms != 2345 || o.reconnect_max_ms != 3456)
        fail_msg("rds_parse_url(\"%s\") changed the timeouts: %d %d %d", c->in, o.connect_timeout_ms,
                 o.command_timeout_ms, o.reconnect_max_ms);
}

/* The longest host, user and password rds_opts holds, and one byte more. */
static void test_rds_url_lengths(void **state)
{
    (void)state;
    rds_opts o;
    char err[512];
    struct { const char *pre, *mid, *post; size_t n; int rc; const char *word; } rows[] = {
        { "redis://", "h", ":1/0", sizeof o.host - 1, 0, NULL },
        { "redis://", "h", ":1/0", sizeof o.host, -1, "host" },
        { "redis://", "u", ":p@h", sizeof o.user - 1, 0, NULL },
        { "redis://", "u", ":p@h", sizeof o.user, -1, "user" },
        { "redis://:", "p", "@h", sizeof o.pass - 1, 0, NULL },
        { "redis://:", "p", "@h", sizeof o.pass, -1, "password" },
    };
    for (size_t i = 0; i < NELEM(rows); i++) {
        char *url = build(rows[i].pre, rows[i].mid, rows[i].n, rows[i].post);
        memset(&o, 0, sizeof o);
        int rc = rds_parse_url(url, &o, err, sizeof err);
        if (rc != rows[i].rc || (rc && strstr(err, rows[i].word) == NULL))
            fail_msg("rds_parse_url(%s + %zu x '%s' + %s): expected %d%s%s, got %d \"%s\"",
                     rows[i].pre, rows[i].n, rows[i].mid, rows[i].post, rows[i].rc,
                     rows[i].word ? " naming " : "", rows[i].word ? rows[i].word : "", rc,
                     rc ? err : "");
        free(url);
    }
}

/* ---- main ---------------------------------------------------------------------------- */

/* One cmocka test per row of TABLE, named "PREFIX: <row name>". */
#define ADD_ROWS(table, func, prefix, namefield)                                          \
    for (size_t i_ = 0; i_ < NELEM(table); i_++) {                                          \
        char *nm_ = malloc(strlen(prefix) + strlen(table[i_].namefield) + 3);               \
        assert_non_null(nm_);                                                               \
        sprintf(nm_, "%s: %s", prefix, table[i_].namefield);                                 \
        tests[n++] = (struct CMUnitTest){ .name = nm_, .test_func = func,                   \
                                          .initial_state = (void *)&table[i_] };            \
    }

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_sale_parse_side_effects),
        cmocka_unit_test(test_jsonck_depth_limit),
        cmocka_unit_test(test_http_parse_prefixes),
        cmocka_unit_test(test_http_parse_head_limit),
        cmocka_unit_test(test_rds_url_lengths),
    };
    size_t cap = NELEM(fixed) + NELEM(sale_cases) + NELEM(jck_cases) + NELEM(resp_cases) +
                 NELEM(surl_cases) + NELEM(rurl_cases), n = 0;
    struct CMUnitTest *tests = calloc(cap, sizeof *tests);
    assert_non_null(tests);
    ADD_ROWS(sale_cases, test_sale_parse_row, "sale_parse", name);
    ADD_ROWS(jck_cases, test_jsonck_row, "jsonck", name);
    ADD_ROWS(resp_cases, test_http_parse_row, "httpc_parse", name);
    ADD_ROWS(surl_cases, test_url_parse_row, "httpc_url_parse", in);
    ADD_ROWS(rurl_cases, test_rds_url_row, "rds_parse_url", in);
    for (size_t i = 0; i < NELEM(fixed); i++)
        tests[n++] = fixed[i];
    const char *filter = getenv("CMOCKA_FILTER");     /* this cmocka does not read it */
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    int rc = _cmocka_run_group_tests("parsers", tests, n, NULL, NULL);
    for (size_t i = 0; i + NELEM(fixed) < n; i++)
        free((char *)tests[i].name);
    free(tests);
    return rc;
}
