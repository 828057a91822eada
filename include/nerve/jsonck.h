/* jsonck.h -- strict checks in front of cJSON.
 *
 * cJSON is lenient where a money API must not be: it accepts numbers such as
 * 01 or 1., silently cuts strings at an escaped NUL ("a\u0000b" becomes
 * "a"), and recurses once per nesting level (about 1,000 levels allowed) on
 * whatever stack it runs on -- a CivetWeb worker has about 100 KiB. Every
 * JSON text that comes from outside (request bodies) is checked here first:
 * nesting depth, NUL characters, and the JSON number grammar. It does not
 * parse; cJSON still does. Thread-safe, no allocation.
 */
#ifndef NERVE_JSONCK_H
#define NERVE_JSONCK_H

#include <stddef.h>

#define JSONCK_MAX_DEPTH 32

/* 0 when TEXT (LEN bytes) passes, else -1 with a message in ERR. */
int jsonck_check(const char *text, size_t len, int max_depth, char *err, size_t errlen);

/* The one JSON string escaper, for answers and events written without a
 * cJSON tree (the sale path, logs): writes S into OUT as the inside of a
 * JSON string (" and \ escaped, control characters as \u00XX, the rest as
 * is) and returns the end; no NUL is written. OUT needs JSONCK_ESC_MAX(strlen(S))
 * bytes. */
#define JSONCK_ESC_MAX(len) ((len)*6)
char *jsonck_escape(char *out, const char *s);

#endif
