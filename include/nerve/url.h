/* url.h -- URL validation and parsing with libcurl's URL API (curl_url).
 *
 * Config validation goes through here, so that a URL nerve cannot use is a
 * `FILE:LINE:COL: key: message` error from `nerve check` (and at startup or
 * reload), never a failure later in `serve`. libcurl's parser is the
 * RFC 3986 one the webhook client itself uses, so what is accepted here is
 * what curl will later connect to.
 *
 * redis:// URLs are also parsed, curl-free, by rds_parse_url (the sale path
 * must not link libcurl): url_parse_redis is the reference that the unit
 * tests hold rds_parse_url to, case by case.
 *
 * Messages never echo the URL: it may carry a password or a token.
 * Thread-safety: every function (no shared state).
 */
#ifndef NERVE_URL_H
#define NERVE_URL_H

#include <stddef.h>

typedef struct url_redis {
    char host[256];
    int port;       /* 1..65535, default 6379 */
    char user[128]; /* percent-decoded; "" = none */
    char pass[256]; /* percent-decoded; "" = none */
    int db;         /* 0..100000, default 0 */
} url_redis;

/* Parse redis://[[user]:password@]host[:port][/db] into OUT. Refused: another
 * scheme, no host, a port outside 1..65535, a db that is not a number in
 * 0..100000, anything after the db (more path, a query, a fragment), user or
 * password too long. 0, or -1 with a message in ERR. */
int url_parse_redis(const char *url, url_redis *out, char *err, size_t errlen);

/* An http:// or https:// URL with a host (and a port in 1..65535 when one is
 * given). 0, or -1 with a message in ERR. */
int url_check_http(const char *url, char *err, size_t errlen);

#endif
