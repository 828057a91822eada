/* scope.c -- the kill-switch scope grammar (see scope.h). */
#include "nerve/scope.h"

#include <string.h>

static int plain(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-' || c == '/' || c == '@' || c == '+';
}

/* The value of an upper-case hex digit, -1 for anything else ('a'-'f'
 * included: scope_make writes upper case, and one byte has one spelling). */
static int hex(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int scope_valid(const char *s, size_t len) {
    if (s == NULL || len == 0 || len > SCOPE_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (plain(c)) continue;
        /* Only the escape scope_make writes: "%52" for 'R' would be a second
         * spelling of "R" that no sale (which compares bytes) ever matches. */
        if (c == '%' && i + 2 < len) {
            int hi = hex((unsigned char)s[i + 1]), lo = hex((unsigned char)s[i + 2]);
            if (hi >= 0 && lo >= 0 && !plain((unsigned char)(hi << 4 | lo))) {
                i += 2;
                continue;
            }
        }
        return 0;
    }
    return 1;
}

int scope_make(char *dst, size_t n, const char *kind, const char *id, size_t id_len) {
    static const char digits[] = "0123456789ABCDEF";
    size_t klen = kind ? strlen(kind) : 0, o = 0, cap = n < SCOPE_MAX + 1 ? n : SCOPE_MAX + 1;

    if (n == 0) return -1;
    dst[0] = '\0';
    if (klen == 0 || strchr(kind, '%') || !scope_valid(kind, klen) || klen + 1 >= cap) return -1;
    memcpy(dst, kind, klen);
    o = klen;
    dst[o++] = ':';
    for (size_t i = 0; i < id_len; i++) {
        unsigned char c = (unsigned char)id[i];

        if (plain(c)) {
            if (o + 1 >= cap) goto toolong;
            dst[o++] = (char)c;
        } else {
            if (o + 3 >= cap) goto toolong;
            dst[o++] = '%';
            dst[o++] = digits[c >> 4];
            dst[o++] = digits[c & 15];
        }
    }
    dst[o] = '\0';
    return 0;
toolong:
    dst[0] = '\0';
    return -1;
}
