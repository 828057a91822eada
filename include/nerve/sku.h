/* sku.h -- what a SKU is: the one grammar every module that names a SKU
 * checks against (the sale body, inventory.seed in the config, the
 * /admin/stock path, the stress tool's --sku).
 *
 * A leaf: it depends on nothing, so that config can validate SKUs without
 * linking the sale engine. Thread-safety: every function (pure).
 */
#ifndef NERVE_SKU_H
#define NERVE_SKU_H

#include <stddef.h>

#define SKU_MAX 128 /* bytes */

/* 1 when S (LEN bytes, need not be terminated) is a valid SKU: 1..SKU_MAX
 * bytes of [A-Za-z0-9._:-] with at least one letter or digit (so "." and
 * ".." are not SKUs), else 0. */
int sku_valid(const char *s, size_t len);

#endif
