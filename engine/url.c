/* url.c -- URL validation and parsing over curl_url (see url.h). */
#include "nerve/url.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Copy part WHAT of U into OUT (CAP bytes), "" when absent. 0, or -1 when it
 * does not fit or curl failed. */
static int get_part(CURLU *u, CURLUPart what, unsigned flags, char *out, size_t cap) {
    char *v = NULL;
    CURLUcode rc = curl_url_get(u, what, &v, flags);
    out[0] = 0;
    if (rc != CURLUE_OK) {
        int absent = rc == CURLUE_NO_USER || rc == CURLUE_NO_PASSWORD || rc == CURLUE_NO_PORT ||
                     rc == CURLUE_NO_QUERY || rc == CURLUE_NO_FRAGMENT || rc == CURLUE_NO_OPTIONS;
        return absent ? 0 : -1;
    }
    size_t n = strlen(v);
    int ok = n < cap;
    if (ok) memcpy(out, v, n + 1);
    curl_free(v);
    return ok ? 0 : -1;
}

/* Percent-decode S into OUT (CAP bytes); -1 on a malformed escape, a NUL
 * byte or no room. curl's own decoding lets "%zz" through. */
static int unescape(const char *s, char *out, size_t cap) {
    size_t j = 0;
    for (; *s; s++) {
        int ch = (unsigned char)*s;
        if (ch == '%') {
            char hex[3] = { s[1], s[1] ? s[2] : 0, 0 };
            char *end;
            if (!hex[0] || !hex[1]) return -1;
            ch = (int)strtol(hex, &end, 16);
            if (*end || ch == 0 || hex[0] == '+' || hex[0] == '-' || hex[0] == ' ') return -1;
            s += 2;
        }
        if (j + 1 >= cap) return -1;
        out[j++] = (char)ch;
    }
    out[j] = 0;
    return 0;
}

/* Whether the userinfo of AUTH (the URL after "scheme://") has a ':'. */
static int has_colon_before_at(const char *auth) {
    size_t n = strcspn(auth, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < n; i++)
        if (auth[i] == '@') at = auth + i;
    return at && memchr(auth, ':', (size_t)(at - auth)) != NULL;
}

/* Parse URL with curl into a handle; NULL with a message in ERR. */
static CURLU *parse(const char *url, unsigned flags, char *err, size_t errlen) {
    CURLU *u = curl_url();
    if (!u) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, flags);
    if (rc != CURLUE_OK) {
        /* curl's reason ("No host part in the URL", "Bad scheme"...) never
         * contains the URL. */
        if (rc == CURLUE_BAD_PORT_NUMBER)
            snprintf(err, errlen, "port must be 1..65535");
        else
            snprintf(err, errlen, "%s", curl_url_strerror(rc));
        curl_url_cleanup(u);
        return NULL;
    }
    return u;
}

/* The port part, checked to be 1..65535; DEF when absent. 0 or -1. */
static int get_port(CURLU *u, int def, int *port, char *err, size_t errlen) {
    char buf[16];
    if (get_part(u, CURLUPART_PORT, 0, buf, sizeof buf) != 0 || (buf[0] == 0 && def == 0)) {
        snprintf(err, errlen, "port must be 1..65535");
        return -1;
    }
    if (!buf[0]) {
        *port = def;
        return 0;
    }
    char *end;
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (end == buf || *end || errno || v < 1 || v > 65535) {
        snprintf(err, errlen, "port must be 1..65535");
        return -1;
    }
    *port = (int)v;
    return 0;
}

int url_parse_redis(const char *url, url_redis *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "must be a redis:// URL (redis://[user:password@]host:port/db)");
        return -1;
    }
    /* curl reads "host:" as the default port; nerve wants one or none. */
    size_t auth = strcspn(url + 8, "/?#");
    if (auth == 0 || url[8 + auth - 1] == '@') {
        snprintf(err, errlen, "missing or too long host");
        return -1;
    }
    if (url[8 + auth - 1] == ':') {
        snprintf(err, errlen, "port must be 1..65535");
        return -1;
    }
    CURLU *u = parse(url, CURLU_NON_SUPPORT_SCHEME, err, errlen);
    if (!u) return -1;
    int rc = -1;
    char path[64], extra[8], user[sizeof out->user], pass[sizeof out->pass];
    if (get_part(u, CURLUPART_HOST, 0, out->host, sizeof out->host) != 0 || !out->host[0]) {
        snprintf(err, errlen, "missing or too long host");
        goto out;
    }
    size_t hl = strlen(out->host);
    if (out->host[0] == '[' && hl > 2 && out->host[hl - 1] == ']') {
        /* IPv6 literal: hiredis wants it without the brackets. */
        memmove(out->host, out->host + 1, hl - 2);
        out->host[hl - 2] = 0;
    }
    if (get_port(u, 6379, &out->port, err, errlen) != 0) goto out;
    if (get_part(u, CURLUPART_USER, 0, user, sizeof user) != 0 ||
        get_part(u, CURLUPART_PASSWORD, 0, pass, sizeof pass) != 0 ||
        unescape(user, out->user, sizeof out->user) != 0 ||
        unescape(pass, out->pass, sizeof out->pass) != 0) {
        snprintf(err, errlen, "bad or too long user or password");
        goto out;
    }
    /* redis://secret@host: a lone user part is the password (AUTH with the
     * password only), as redis-cli and rds_parse_url read it. */
    if (out->user[0] && !pass[0] && !has_colon_before_at(url + 8)) {
        memcpy(out->pass, out->user, sizeof out->user);
        out->user[0] = 0;
    }
    if (get_part(u, CURLUPART_QUERY, 0, extra, sizeof extra) != 0 || extra[0] ||
        get_part(u, CURLUPART_FRAGMENT, 0, extra, sizeof extra) != 0 || extra[0] ||
        get_part(u, CURLUPART_OPTIONS, 0, extra, sizeof extra) != 0 || extra[0]) {
        snprintf(err, errlen, "nothing may follow the database number");
        goto out;
    }
    if (get_part(u, CURLUPART_PATH, 0, path, sizeof path) != 0) {
        snprintf(err, errlen, "database must be a number in 0..100000");
        goto out;
    }
    /* curl gives "/" for no path at all. */
    const char *p = path[0] == '/' ? path + 1 : path;
    if (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || *end || errno || v < 0 || v > 100000 || *p == '-' || *p == '+' ||
            *p == ' ') {
            snprintf(err, errlen, "database must be a number in 0..100000");
            goto out;
        }
        out->db = (int)v;
    }
    rc = 0;
out:
    curl_url_cleanup(u);
    return rc;
}

int url_check_http(const char *url, char *err, size_t errlen) {
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0) {
        snprintf(err, errlen, "must be an http:// or https:// URL");
        return -1;
    }
    CURLU *u = parse(url, 0, err, errlen);
    if (!u) return -1;
    char host[256];
    int port, rc = -1;
    if (get_part(u, CURLUPART_HOST, 0, host, sizeof host) != 0 || !host[0])
        snprintf(err, errlen, "missing or too long host");
    else if (get_port(u, 80, &port, err, errlen) == 0)
        rc = 0;
    curl_url_cleanup(u);
    return rc;
}

int url_parse_hostport(const char *s, int def_port, char *host, size_t hostlen, int *port,
                       char *err, size_t errlen) {
    /* Read as the authority of a redis:// URL, so that a sentinel's address
     * follows exactly the rules redis.url's host and port follow. */
    char buf[400];
    url_redis u;
    const char *first = strchr(s, ':');
    int has_port;

    if (!*s || strlen(s) > 300 || strpbrk(s, "/?#@,") || strpbrk(s, " \t\r\n")) {
        snprintf(err, errlen, "must be host:port");
        return -1;
    }
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        has_port = close && close[1] == ':';
    } else if (first && strchr(first + 1, ':')) {
        snprintf(err, errlen, "an IPv6 address must be in [brackets]");
        return -1;
    } else {
        has_port = first != NULL;
    }
    if (!has_port && !def_port) {
        snprintf(err, errlen, "must be host:port (the port is missing)");
        return -1;
    }
    snprintf(buf, sizeof buf, "redis://%s", s);
    if (url_parse_redis(buf, &u, err, errlen) != 0) return -1;
    if (strlen(u.host) >= hostlen) {
        snprintf(err, errlen, "missing or too long host");
        return -1;
    }
    memcpy(host, u.host, strlen(u.host) + 1);
    *port = has_port ? u.port : def_port;
    return 0;
}

int url_parse_sentinel(const char *url, url_sentinel *out, char *err, size_t errlen) {
    static const size_t sl = sizeof URL_SENTINEL_SCHEME - 1;
    const char *p = url + sl, *slash, *at, *hosts, *end, *name, *nend;
    char part[400], e[200];
    url_redis u;
    int w;

    memset(out, 0, sizeof *out);
    if (strncmp(url, URL_SENTINEL_SCHEME, sl) != 0) {
        snprintf(err, errlen, "must be a redis-sentinel:// URL");
        return -1;
    }
    if (!(slash = strchr(p, '/'))) {
        snprintf(err, errlen, "missing /master_name after the sentinels");
        return -1;
    }
    at = memrchr(p, '@', (size_t)(slash - p));
    hosts = at ? at + 1 : p;
    name = slash + 1;
    nend = name + strcspn(name, "/");
    /* The user, password and db, through the redis:// parser on a stand-in
     * host: they follow exactly redis.url's rules. */
    w = snprintf(part, sizeof part, "redis://%.*s%sh%s", at ? (int)(at - p) : 0, p, at ? "@" : "",
                 nend);
    if (w < 0 || (size_t)w >= sizeof part) {
        snprintf(err, errlen, "user, password or database too long");
        return -1;
    }
    if (url_parse_redis(part, &u, e, sizeof e) != 0) {
        snprintf(err, errlen, "%s", e);
        return -1;
    }
    memcpy(out->user, u.user, sizeof out->user);
    memcpy(out->pass, u.pass, sizeof out->pass);
    out->db = u.db;
    size_t nl = (size_t)(nend - name);
    if (nl < 1 || nl >= sizeof out->master ||
        strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") < nl) {
        snprintf(err, errlen, "the master name must be 1 to 64 of A-Z a-z 0-9 . _ : -");
        return -1;
    }
    memcpy(out->master, name, nl);
    for (;;) {
        end = memchr(hosts, ',', (size_t)(slash - hosts));
        if (!end) end = slash;
        size_t hl = (size_t)(end - hosts);
        if (out->n == URL_SENTINELS_MAX) {
            snprintf(err, errlen, "more than %d sentinels", URL_SENTINELS_MAX);
            return -1;
        }
        if (hl == 0 || hl >= sizeof part) {
            snprintf(err, errlen, "sentinel %d: missing or too long host", out->n + 1);
            return -1;
        }
        memcpy(part, hosts, hl);
        part[hl] = 0;
        if (url_parse_hostport(part, 26379, out->sentinels[out->n].host,
                               sizeof out->sentinels[0].host, &out->sentinels[out->n].port, e,
                               sizeof e) != 0) {
            snprintf(err, errlen, "sentinel %d: %s", out->n + 1, e);
            return -1;
        }
        out->n++;
        if (end == slash) return 0;
        hosts = end + 1;
    }
}
