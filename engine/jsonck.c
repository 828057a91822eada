/* jsonck.c -- strict checks in front of cJSON (see jsonck.h). A single pass
 * that knows just enough of the JSON grammar to tell strings from the rest. */
#include "nerve/jsonck.h"

#include <stdio.h>
#include <string.h>

char *jsonck_escape(char *out, const char *s) {
    static const char hex[] = "0123456789abcdef";
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            *out++ = '\\';
            *out++ = (char)ch;
        } else if (ch < 0x20) {
            memcpy(out, "\\u00", 4);
            out[4] = hex[ch >> 4];
            out[5] = hex[ch & 15];
            out += 6;
        } else {
            *out++ = (char)ch;
        }
    }
    return out;
}

static int digit(char c) {
    return c >= '0' && c <= '9';
}

/* Length of the JSON number at S (grammar of RFC 8259), 0 when invalid. */
static size_t number_len(const char *s, size_t n) {
    size_t i = 0;
    if (i < n && s[i] == '-') i++;
    if (i < n && s[i] == '0') {
        i++;
    } else if (i < n && s[i] >= '1' && s[i] <= '9') {
        while (i < n && digit(s[i])) i++;
    } else {
        return 0;
    }
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !digit(s[i])) return 0;
        while (i < n && digit(s[i])) i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || !digit(s[i])) return 0;
        while (i < n && digit(s[i])) i++;
    }
    /* A number ends at a delimiter; "01" stops after "0" and then fails here. */
    if (i < n && !strchr(" \t\r\n,]}:", s[i])) return 0;
    return i;
}

int jsonck_check(const char *s, size_t n, int max_depth, char *err, size_t errlen) {
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == 0) {
            snprintf(err, errlen, "JSON must not contain NUL characters");
            return -1;
        }
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++) {
                if (s[i] == 0) {
                    snprintf(err, errlen, "JSON must not contain NUL characters");
                    return -1;
                }
                if (s[i] != '\\') continue;
                if (i + 5 < n && s[i + 1] == 'u' && s[i + 2] == '0' && s[i + 3] == '0' &&
                    s[i + 4] == '0' && s[i + 5] == '0') {
                    snprintf(err, errlen, "strings must not contain NUL characters (\\u0000)");
                    return -1;
                }
                i++; /* the escaped character */
            }
            continue; /* an unterminated string is cJSON's to reject */
        }
        if (c == '[' || c == '{') {
            if (++depth > max_depth) {
                snprintf(err, errlen, "JSON nested deeper than %d levels", max_depth);
                return -1;
            }
        } else if (c == ']' || c == '}') {
            depth--;
        } else if (c == '-' || digit(c)) {
            size_t len = number_len(s + i, n - i);
            if (!len) {
                snprintf(err, errlen, "malformed JSON number at byte %zu", i);
                return -1;
            }
            i += len - 1;
        }
    }
    return 0;
}
