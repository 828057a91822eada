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

/* A Sentinel deployment as one URL, the form REDIS_URL can carry:
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]]...
 *                    /master_name[/db]
 * (the hosts are the sentinels, port 26379 when absent; user, password and
 * db are the primary's). Each part is read with url_parse_redis' rules. */
#define URL_SENTINELS_MAX   16
#define URL_SENTINEL_SCHEME "redis-sentinel://"

typedef struct url_sentinel {
    struct {
        char host[256];
        int port;
    } sentinels[URL_SENTINELS_MAX];
    int n;           /* 1..URL_SENTINELS_MAX */
    char master[65]; /* 1 to 64 of A-Z a-z 0-9 . _ : - */
    char user[128];  /* the primary's, percent-decoded; "" = none */
    char pass[256];
    int db; /* 0..100000, default 0 */
} url_sentinel;

/* Parse a redis-sentinel:// URL (above) into OUT. Refused: another scheme,
 * no sentinel, more than URL_SENTINELS_MAX, an empty or bad host:port, a
 * missing or bad master name, a bad db or anything after it. 0, or -1 with a
 * message in ERR. */
int url_parse_sentinel(const char *url, url_sentinel *out, char *err, size_t errlen);

/* A host:port (a sentinel's address: a name, IPv4 or [IPv6], port 1..65535)
 * read as url_parse_redis reads the authority of a URL; DEF_PORT when the
 * port is absent (0: the port is required). 0, or -1 with a message in ERR. */
int url_parse_hostport(const char *s, int def_port, char *host, size_t hostlen, int *port,
                       char *err, size_t errlen);

/* An http:// or https:// URL with a host (and a port in 1..65535 when one is
 * given). 0, or -1 with a message in ERR. */
int url_check_http(const char *url, char *err, size_t errlen);

#endif
