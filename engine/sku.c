/* sku.c -- the SKU grammar (see sku.h). */
#include "nerve/sku.h"

int sku_valid(const char *s, size_t len) {
    if (len == 0 || len > SKU_MAX) return 0;
    int alnum = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        int an = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!an && ch != '.' && ch != '_' && ch != ':' && ch != '-') return 0;
        alnum |= an;
    }
    /* "." and ".." are in the character set but are path traversal, not SKUs. */
    return alnum;
}
