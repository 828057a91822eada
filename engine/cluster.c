/* cluster.c -- Redis Cluster routing: key slots, the slot map, redirects and
 * the refresh policy (see cluster.h).
 *
 * Everything a server sends here (CLUSTER SLOTS, MOVED/ASK, INFO) is read as
 * hostile: every count, length and number is bounded and checked, and a reply
 * that does not have the expected shape is an error with a message, never a
 * guess. A wrong slot map would send a commit to a node that answers MOVED
 * at best.
 */
#include "nerve/cluster.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- key slots ------------------------------------------------------------ */

/* Bitwise CRC16-XMODEM. Keys are short (RDS_KEY_MAX) and the slot is computed
 * once per request, so a 512-byte table would buy nothing measurable. */
uint16_t cl_crc16(const char *buf, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint16_t)(unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++) crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

const char *cl_hashtag(const char *key, size_t len, size_t *taglen) {
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1) {
            *taglen = (size_t)(close - open - 1);
            return open + 1;
        }
    }
    *taglen = len;
    return key;
}

int cl_keyslot(const char *key, size_t len) {
    size_t n;
    const char *tag = cl_hashtag(key, len, &n);
    return cl_crc16(tag, n) & (CL_SLOTS - 1);
}

/* ---- the slot map ----------------------------------------------------------- */

struct cl_map {
    int16_t slot[CL_SLOTS]; /* node index, -1 = uncovered */
    cl_node *nodes;
    int nnodes, cap, covered;
};

static int reply_int(const redisReply *r, long long *v) {
    if (r->type == REDIS_REPLY_INTEGER) {
        *v = r->integer;
        return 0;
    }
    return -1;
}

/* Read node entry E ([host, port, id?, ...]) into A. */
static int read_addr(const redisReply *e, const char *self_host, cl_addr *a, char *why,
                     size_t whylen) {
    long long port;
    memset(a, 0, sizeof *a);
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || !e->element[0] || !e->element[1] ||
        e->element[0]->type != REDIS_REPLY_STRING) {
        snprintf(why, whylen, "a node is not [host, port, ...]");
        return -1;
    }
    const redisReply *h = e->element[0];
    if (h->len == 0 || (h->len == 1 && h->str[0] == '?')) {
        snprintf(a->host, sizeof a->host, "%s", self_host ? self_host : "");
        if (!a->host[0]) {
            snprintf(why, whylen, "a node has no address");
            return -1;
        }
    } else if (h->len >= sizeof a->host || memchr(h->str, '\0', h->len)) {
        snprintf(why, whylen, "a node's host is longer than %d bytes or holds a NUL",
                 CL_HOST_MAX - 1);
        return -1;
    } else {
        memcpy(a->host, h->str, h->len);
        a->host[h->len] = 0;
    }
    if (reply_int(e->element[1], &port) || port < 1 || port > 65535) {
        snprintf(why, whylen, "a node's port is not in 1..65535");
        return -1;
    }
    a->port = (int)port;
    if (e->elements >= 3 && e->element[2] && e->element[2]->type == REDIS_REPLY_STRING &&
        e->element[2]->len < sizeof a->id)
        memcpy(a->id, e->element[2]->str, e->element[2]->len);
    return 0;
}

static int same_addr(const cl_addr *a, const cl_addr *b) {
    if (a->id[0] && b->id[0]) return strcmp(a->id, b->id) == 0;
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* The index of primary P in M, added when new; -1 on OOM or too many. */
static int node_index(cl_map *m, const cl_addr *p) {
    for (int i = 0; i < m->nnodes; i++)
        if (same_addr(&m->nodes[i].primary, p)) return i;
    if (m->nnodes >= CL_NODES_MAX) return -1;
    if (m->nnodes == m->cap) {
        int cap = m->cap ? m->cap * 2 : 4;
        cl_node *v = realloc(m->nodes, (size_t)cap * sizeof *v);
        if (!v) return -1;
        m->nodes = v;
        m->cap = cap;
    }
    memset(&m->nodes[m->nnodes], 0, sizeof m->nodes[0]);
    m->nodes[m->nnodes].primary = *p;
    return m->nnodes++;
}

cl_map *cl_map_from_reply(const redisReply *r, const char *self_host, char *err, size_t errlen) {
    char why[160];
    cl_map *m = calloc(1, sizeof *m);
    size_t i = 0;

    if (!m) {
        snprintf(err, errlen, "CLUSTER SLOTS: out of memory");
        return NULL;
    }
    for (int s = 0; s < CL_SLOTS; s++) m->slot[s] = -1;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "CLUSTER SLOTS: %s",
                 r && r->type == REDIS_REPLY_ERROR ? r->str : "the reply is not an array");
        goto err;
    }
    for (i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        long long lo, hi;
        cl_addr a;
        int idx;

        if (!e || e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            reply_int(e->element[0], &lo) || reply_int(e->element[1], &hi)) {
            snprintf(why, sizeof why, "not [start, end, primary, replicas...]");
            goto bad;
        }
        if (lo < 0 || hi >= CL_SLOTS || lo > hi) {
            snprintf(why, sizeof why, "slot range %lld-%lld is not within 0..16383", lo, hi);
            goto bad;
        }
        if (read_addr(e->element[2], self_host, &a, why, sizeof why)) goto bad;
        if ((idx = node_index(m, &a)) < 0) {
            snprintf(why, sizeof why, "out of memory or more than %d primaries", CL_NODES_MAX);
            goto bad;
        }
        cl_node *n = &m->nodes[idx];
        for (size_t j = 3; j < e->elements; j++) {
            cl_addr rep;
            int k;
            if (read_addr(e->element[j], self_host, &rep, why, sizeof why)) goto bad;
            for (k = 0; k < n->nreplicas && !same_addr(&n->replicas[k], &rep); k++)
                ;
            if (k == n->nreplicas && n->nreplicas < CL_REPLICAS_MAX)
                n->replicas[n->nreplicas++] = rep;
        }
        for (long long s = lo; s <= hi; s++) {
            if (m->slot[s] >= 0) {
                snprintf(why, sizeof why, "slot %lld is claimed twice", s);
                goto bad;
            }
            m->slot[s] = (int16_t)idx;
            m->covered++;
        }
    }
    return m;
bad:
    snprintf(err, errlen, "CLUSTER SLOTS: entry %zu: %s", i, why);
err:
    cl_map_free(m);
    return NULL;
}

int cl_map_node_index(const cl_map *m, int slot) {
    if (!m || slot < 0 || slot >= CL_SLOTS) return -1;
    return m->slot[slot];
}

const cl_node *cl_map_node(const cl_map *m, int slot) {
    int i = cl_map_node_index(m, slot);
    return i < 0 ? NULL : &m->nodes[i];
}

int cl_map_nnodes(const cl_map *m) {
    return m ? m->nnodes : 0;
}

const cl_node *cl_map_node_at(const cl_map *m, int i) {
    return m && i >= 0 && i < m->nnodes ? &m->nodes[i] : NULL;
}

int cl_map_covered(const cl_map *m) {
    return m ? m->covered : 0;
}

void cl_map_free(cl_map *m) {
    if (!m) return;
    free(m->nodes);
    free(m);
}

/* ---- redirects ---------------------------------------------------------------- */

int cl_parse_redirect(const char *s, size_t len, cl_redirect *out, char *err, size_t errlen) {
    cl_redirect_kind kind;
    size_t i;

    if (len >= 6 && !memcmp(s, "MOVED ", 6)) {
        kind = CL_MOVED;
        i = 6;
    } else if (len >= 4 && !memcmp(s, "ASK ", 4)) {
        kind = CL_ASK;
        i = 4;
    } else {
        return 1;
    }
    const char *what = kind == CL_MOVED ? "MOVED" : "ASK";
    /* The slot: 1 to 5 digits, then one space. */
    long slot = 0;
    size_t d0 = i;
    while (i < len && isdigit((unsigned char)s[i]) && i - d0 < 5) slot = slot * 10 + (s[i++] - '0');
    if (i == d0 || i >= len || s[i] != ' ' || slot >= CL_SLOTS) {
        snprintf(err, errlen, "malformed %s redirect: the slot is not a number in 0..16383", what);
        return -1;
    }
    i++;
    /* host:port, the port after the last ':' (an IPv6 host has colons). */
    const char *ep = s + i;
    size_t elen = len - i;
    const char *colon = NULL;
    for (size_t k = 0; k < elen; k++) {
        if (ep[k] == ':') colon = ep + k;
        if (isspace((unsigned char)ep[k]) || ep[k] == '\0') {
            snprintf(err, errlen, "malformed %s redirect: text after host:port", what);
            return -1;
        }
    }
    if (!colon) {
        snprintf(err, errlen, "malformed %s redirect: no host:port", what);
        return -1;
    }
    size_t hlen = (size_t)(colon - ep), plen = elen - hlen - 1;
    long port = 0;
    for (size_t k = 0; k < plen && k < 6; k++) {
        if (!isdigit((unsigned char)colon[1 + k])) {
            port = -1;
            break;
        }
        port = port * 10 + (colon[1 + k] - '0');
    }
    if (plen == 0 || plen > 5 || port < 1 || port > 65535) {
        snprintf(err, errlen, "malformed %s redirect: the port is not in 1..65535", what);
        return -1;
    }
    if (hlen >= CL_HOST_MAX) {
        snprintf(err, errlen, "malformed %s redirect: the host is longer than %d bytes", what,
                 CL_HOST_MAX - 1);
        return -1;
    }
    out->kind = kind;
    out->slot = (int)slot;
    memcpy(out->host, ep, hlen);
    out->host[hlen] = 0;
    out->port = (int)port;
    return 0;
}

/* ---- refresh policy ------------------------------------------------------------- */

void cl_refresh_init(cl_refresh *r, int min_interval_ms) {
    r->min_interval_ms = min_interval_ms < 0 ? 0 : min_interval_ms;
    atomic_init(&r->inflight, 0);
    atomic_init(&r->stale, 0);
    /* No fetch yet: the first MOVED may fetch at once. */
    atomic_init(&r->last_ms, -(long long)r->min_interval_ms - 1);
    atomic_init(&r->fetches, 0);
}

int cl_refresh_due(cl_refresh *r, long long now_ms) {
    atomic_store(&r->stale, 1);
    if (now_ms - atomic_load(&r->last_ms) < r->min_interval_ms) return 0;
    int idle = 0;
    if (!atomic_compare_exchange_strong(&r->inflight, &idle, 1)) return 0;
    /* Re-check under the flag: another thread may have fetched meanwhile. */
    if (now_ms - atomic_load(&r->last_ms) < r->min_interval_ms) {
        atomic_store(&r->inflight, 0);
        return 0;
    }
    atomic_store(&r->last_ms, now_ms);
    atomic_fetch_add(&r->fetches, 1);
    return 1;
}

void cl_refresh_done(cl_refresh *r, int ok) {
    if (ok) atomic_store(&r->stale, 0);
    atomic_store(&r->inflight, 0);
}

/* ---- round trips ------------------------------------------------------------------ */

/* Whether the text of an INFO section or CLUSTER INFO (S, LEN bytes) has
 * the line NAME (e.g. "cluster_enabled:1"). */
static int has_line(const char *s, size_t len, const char *name) {
    const char *p = s, *end = s + len;
    size_t nl = strlen(name);
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t n = eol ? (size_t)(eol - p) : (size_t)(end - p);
        if (n && p[n - 1] == '\r') n--;
        if (n >= nl && !memcmp(p, name, nl) && (n == nl || name[nl - 1] == ':')) return 1;
        if (!eol) break;
        p = eol + 1;
    }
    return 0;
}

int cl_info_cluster_enabled(rds_client *c, char *err, size_t errlen) {
    redisReply *r = rds_command(c, "INFO cluster");
    int rc = -2;
    if (!r) {
        snprintf(err, errlen, "%s", rds_errstr(c));
        return -1;
    }
    if (r->type == REDIS_REPLY_STRING) {
        /* A server without the section (a proxy, an old fork) is not a
         * cluster node: absent means 0. */
        rc = has_line(r->str, r->len, "cluster_enabled:1");
        freeReplyObject(r);
        return rc;
    }
    freeReplyObject(r);
    /* INFO is in ACL category @dangerous, which the README's least-privilege
     * user lacks; CLUSTER INFO is not, and answers every server: an error
     * naming disabled cluster support, or the cluster's state. */
    if (!(r = rds_command(c, "CLUSTER INFO"))) {
        snprintf(err, errlen, "%s", rds_errstr(c));
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "cluster support disabled"))
        rc = 0;
    else if ((r->type == REDIS_REPLY_STRING) && has_line(r->str, r->len, "cluster_state:"))
        rc = 1;
    else
        snprintf(err, errlen, "neither INFO cluster nor CLUSTER INFO answered: %.200s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    freeReplyObject(r);
    return rc;
}

cl_map *cl_map_fetch(rds_client *c, const char *self_host, char *err, size_t errlen) {
    redisReply *r = rds_command(c, "CLUSTER SLOTS");
    if (!r) {
        snprintf(err, errlen, "CLUSTER SLOTS: %s", rds_errstr(c));
        return NULL;
    }
    cl_map *m = cl_map_from_reply(r, self_host, err, errlen);
    freeReplyObject(r);
    return m;
}
