/* scope.h -- the one grammar of kill-switch scopes.
 *
 * A scope names what a kill covers: "global", "sku:<SKU>", "campaign:<id>",
 * any "<kind>:<id>". Rules return scopes, the admin API takes them in a body
 * and in a path, kill records and the halt cache key on them, metrics label
 * them; all of them use this one definition, so that every scope that can be
 * engaged can also be listed and reset.
 *
 * Grammar: 1..SCOPE_MAX bytes, each one of
 *     A-Z a-z 0-9 . _ : - / @ +
 * or a '%' followed by two upper-case hex digits encoding a byte that is not
 * in that list (exactly what scope_make writes), so that every scope has one
 * spelling: "sku:%52" is refused, since it would be engaged as a scope that
 * no sale of SKU "R" (compared byte for byte) ever matches; so are "%2f"
 * (lower case) and "%2F" ('/' is plain). Nothing in it
 * needs escaping in a Redis key, a JSON string, a log line or a Prometheus
 * label; '/' and '%' are decoded out of a URL path once, so
 * DELETE /admin/killswitch/campaign:spring/sale%40x resets
 * "campaign:spring/sale@x", and "campaign:spring%20sale" is reached as
 * .../campaign:spring%2520sale.
 *
 * Stateless and thread-safe; nothing allocates.
 */
#ifndef NERVE_SCOPE_H
#define NERVE_SCOPE_H

#include <stddef.h>

#define SCOPE_MAX 200 /* bytes */
#define SCOPE_GRAMMAR \
    "1-200 bytes of A-Z a-z 0-9 . _ : - / @ + or %XX, XX the upper-case hex of a byte not in " \
    "that list (e.g. global, sku:ABC, campaign:42, campaign:a%20b)"

/* 1 when S (LEN bytes) is a valid scope, else 0. */
int scope_valid(const char *s, size_t len);

/* Write "KIND:ID" into DST (N bytes), percent-encoding every byte of ID that
 * the grammar does not allow (so any ID yields a valid scope when KIND is
 * valid). 0, or -1 when KIND is empty or invalid or the result would not fit
 * SCOPE_MAX (or N); DST then holds "". */
int scope_make(char *dst, size_t n, const char *kind, const char *id, size_t id_len);

#endif
