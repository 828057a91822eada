/* bad_server.c -- a deliberately broken sale server, to prove that
 * `nerve stress` catches an oversell.
 *
 * It speaks just enough of nerve's HTTP API (SPEC §6) for a stress run:
 * GET /healthz, PUT /admin/stock/{sku}, GET /stock/{sku}, GET /killswitch
 * and POST /sale -- but it sells every SKU twice over: POST /sale answers
 * 200 until 2N units are gone, with a stock_remaining that never goes under
 * 0, and GET /stock reports 0 at the end. So "sold == initial - final"
 * fails (2N against N) while every other answer looks healthy.
 *
 * One thread, one poll() loop over plain sockets, HTTP/1.1 keep-alive,
 * 127.0.0.1 on a free port. Meant to be #included into a test (one
 * translation unit); `cc -DBAD_SERVER_MAIN bad_server.c -lcjson -pthread`
 * builds a standalone server that prints its port.
 *
 *   int bad_server_start(int *port);   0 and the port, or -1 (errno)
 *   void bad_server_stop(void);        stop the thread, close everything
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

int bad_server_start(int *port);
void bad_server_stop(void);

#define BS_CONNS    512
#define BS_SKUS     64
#define BS_BUF      16384

typedef struct bs_conn {
    int fd;
    size_t len;
    char buf[BS_BUF];
} bs_conn;

static struct {
    int lfd;
    int wake[2];                /* a byte on wake[1] stops the loop */
    pthread_t tid;
    bool running;
    bs_conn *conns;             /* [BS_CONNS] */
    struct { char sku[129]; long long stock, sold; } skus[BS_SKUS];
    int nskus;
} bs = { .lfd = -1, .wake = { -1, -1 } };

static int bs_find(const char *sku, bool create)
{
    for (int i = 0; i < bs.nskus; i++)
        if (strcmp(bs.skus[i].sku, sku) == 0)
            return i;
    if (!create || bs.nskus == BS_SKUS || strlen(sku) > 128)
        return -1;
    snprintf(bs.skus[bs.nskus].sku, sizeof bs.skus[0].sku, "%s", sku);
    return bs.nskus++;
}

static long long bs_left(int i)
{
    long long left = bs.skus[i].stock - bs.skus[i].sold;
    return left < 0 ? 0 : left;     /* the lie that hides the oversell */
}

static void bs_send(int fd, int status, cJSON *o)
{
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    char msg[BS_BUF];
    size_t bl = body ? strlen(body) : 0;
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     status, status == 200 ? "OK" : "Error", bl, body ? body : "");
    free(body);
    /* One write (no Nagle stall); small answers on loopback go through whole. */
    if (n < 0 || (size_t)n >= sizeof msg || send(fd, msg, (size_t)n, MSG_NOSIGNAL) != n)
        fprintf(stderr, "bad_server: could not send a %d answer\n", status);
}

static cJSON *bs_error(const char *code, const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", code);
    cJSON_AddStringToObject(o, "message", msg);
    return o;
}

static void bs_sale(int fd, const char *body, size_t len)
{
    cJSON *in = cJSON_ParseWithLength(body, len);
    const cJSON *sku = cJSON_GetObjectItemCaseSensitive(in, "sku");
    const cJSON *qty = cJSON_GetObjectItemCaseSensitive(in, "qty");
    const cJSON *oid = cJSON_GetObjectItemCaseSensitive(in, "order_id");
    if (!cJSON_IsString(sku) || !cJSON_IsNumber(qty) || qty->valuedouble < 1) {
        cJSON_Delete(in);
        bs_send(fd, 400, bs_error("bad_request", "body must be {\"sku\",\"qty\"}"));
        return;
    }
    int i = bs_find(sku->valuestring, false);
    long long q = (long long)qty->valuedouble;
    cJSON *o;
    if (i >= 0 && bs.skus[i].sold + q <= 2 * bs.skus[i].stock) {
        bs.skus[i].sold += q;
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ok");
        cJSON_AddStringToObject(o, "sku", sku->valuestring);
        cJSON_AddNumberToObject(o, "qty", (double)q);
        cJSON_AddNumberToObject(o, "stock_remaining", (double)bs_left(i));
        cJSON_AddStringToObject(o, "order_id", cJSON_IsString(oid) ? oid->valuestring : "bad-1");
        bs_send(fd, 200, o);
    } else {
        o = bs_error("out_of_stock", "not enough stock");
        cJSON_AddNumberToObject(o, "stock_remaining", i >= 0 ? (double)bs_left(i) : 0);
        bs_send(fd, 409, o);
    }
    cJSON_Delete(in);
}

static void bs_handle(int fd, const char *method, const char *path, const char *body, size_t len)
{
    cJSON *o;
    if (strcmp(method, "GET") == 0 && strcmp(path, "/healthz") == 0) {
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ok");
        bs_send(fd, 200, o);
    } else if (strcmp(method, "PUT") == 0 && strncmp(path, "/admin/stock/", 13) == 0) {
        cJSON *in = cJSON_ParseWithLength(body, len);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(in, "stock");
        int i = bs_find(path + 13, true);
        if (!cJSON_IsNumber(v) || i < 0) {
            bs_send(fd, 400, bs_error("bad_request", "body must be {\"stock\": N}"));
        } else {
            bs.skus[i].stock = (long long)v->valuedouble;
            bs.skus[i].sold = 0;
            o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "sku", path + 13);
            cJSON_AddNumberToObject(o, "stock", v->valuedouble);
            bs_send(fd, 200, o);
        }
        cJSON_Delete(in);
    } else if (strcmp(method, "GET") == 0 && strncmp(path, "/stock/", 7) == 0) {
        int i = bs_find(path + 7, false);
        if (i < 0) {
            bs_send(fd, 404, bs_error("not_found", "unknown SKU"));
        } else {
            o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "sku", path + 7);
            cJSON_AddNumberToObject(o, "stock", (double)bs_left(i));
            bs_send(fd, 200, o);
        }
    } else if (strcmp(method, "GET") == 0 && strcmp(path, "/killswitch") == 0) {
        o = cJSON_CreateObject();
        cJSON_AddArrayToObject(o, "engaged");
        bs_send(fd, 200, o);
    } else if (strcmp(method, "POST") == 0 && strcmp(path, "/sale") == 0) {
        bs_sale(fd, body, len);
    } else {
        bs_send(fd, 404, bs_error("not_found", "no such path"));
    }
}

/* Serve every complete request in C's buffer. -1: drop the connection. */
static int bs_serve(bs_conn *c)
{
    for (;;) {
        char *end = NULL;
        for (size_t i = 3; i < c->len && !end; i++)
            if (memcmp(c->buf + i - 3, "\r\n\r\n", 4) == 0)
                end = c->buf + i + 1;
        if (!end)
            return c->len == BS_BUF ? -1 : 0;
        size_t head = (size_t)(end - c->buf), clen = 0;
        *(end - 1) = 0;
        for (char *l = strstr(c->buf, "\r\n"); l; l = strstr(l + 2, "\r\n"))
            if (strncasecmp(l + 2, "Content-Length:", 15) == 0)
                clen = strtoul(l + 17, NULL, 10);
        if (clen > BS_BUF - head)
            return -1;
        if (c->len < head + clen) {
            *(end - 1) = '\n';
            return 0;
        }
        char method[8] = "", path[256] = "";
        if (sscanf(c->buf, "%7s %255s", method, path) != 2)
            return -1;
        char body[BS_BUF];
        memcpy(body, end, clen);
        body[clen] = 0;
        bs_handle(c->fd, method, path, body, clen);
        memmove(c->buf, c->buf + head + clen, c->len - head - clen);
        c->len -= head + clen;
    }
}

static void *bs_main(void *arg)
{
    (void)arg;
    struct pollfd *p = calloc(BS_CONNS + 2, sizeof *p);
    int *which = calloc(BS_CONNS + 2, sizeof *which);
    if (!p || !which) {
        free(p);
        free(which);
        return NULL;
    }
    for (;;) {
        int n = 0;
        p[n++] = (struct pollfd){ .fd = bs.wake[0], .events = POLLIN };
        p[n++] = (struct pollfd){ .fd = bs.lfd, .events = POLLIN };
        for (int i = 0; i < BS_CONNS; i++)
            if (bs.conns[i].fd >= 0) {
                which[n] = i;
                p[n++] = (struct pollfd){ .fd = bs.conns[i].fd, .events = POLLIN };
            }
        if (poll(p, (nfds_t)n, -1) < 0 && errno != EINTR)
            break;
        if (p[0].revents)
            break;
        if (p[1].revents & POLLIN) {
            int fd = accept(bs.lfd, NULL, NULL);
            int slot = -1;
            for (int i = 0; fd >= 0 && i < BS_CONNS && slot < 0; i++)
                if (bs.conns[i].fd < 0)
                    slot = i;
            if (slot >= 0) {
                bs.conns[slot].fd = fd;
                bs.conns[slot].len = 0;
            } else if (fd >= 0) {
                close(fd);
            }
        }
        for (int k = 2; k < n; k++) {
            if (!p[k].revents)
                continue;
            bs_conn *c = &bs.conns[which[k]];
            ssize_t got = recv(c->fd, c->buf + c->len, BS_BUF - c->len, 0);
            if (got > 0)
                c->len += (size_t)got;
            if (got <= 0 || bs_serve(c) < 0) {
                close(c->fd);
                c->fd = -1;
            }
        }
    }
    free(p);
    free(which);
    return NULL;
}

int bad_server_start(int *port)
{
    if (bs.running)
        return -1;
    bs.conns = calloc(BS_CONNS, sizeof *bs.conns);
    if (!bs.conns)
        return -1;
    for (int i = 0; i < BS_CONNS; i++)
        bs.conns[i].fd = -1;
    bs.nskus = 0;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    bs.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (bs.lfd < 0 || bind(bs.lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(bs.lfd, 512) != 0 || getsockname(bs.lfd, (struct sockaddr *)&a, &al) != 0 ||
        pipe(bs.wake) != 0)
        goto err;
    if (pthread_create(&bs.tid, NULL, bs_main, NULL) != 0)
        goto err;
    bs.running = true;
    *port = ntohs(a.sin_port);
    return 0;
err:
    if (bs.lfd >= 0)
        close(bs.lfd);
    for (int i = 0; i < 2; i++)
        if (bs.wake[i] >= 0)
            close(bs.wake[i]);
    bs.lfd = bs.wake[0] = bs.wake[1] = -1;
    free(bs.conns);
    bs.conns = NULL;
    return -1;
}

void bad_server_stop(void)
{
    if (!bs.running)
        return;
    if (write(bs.wake[1], "x", 1) != 1)
        fprintf(stderr, "bad_server: wake: %s\n", strerror(errno));
    pthread_join(bs.tid, NULL);
    for (int i = 0; i < BS_CONNS; i++)
        if (bs.conns[i].fd >= 0)
            close(bs.conns[i].fd);
    close(bs.lfd);
    close(bs.wake[0]);
    close(bs.wake[1]);
    bs.lfd = bs.wake[0] = bs.wake[1] = -1;
    free(bs.conns);
    bs.conns = NULL;
    bs.running = false;
}

#ifdef BAD_SERVER_MAIN
int main(void)
{
    int port;
    if (bad_server_start(&port) != 0) {
        perror("bad_server");
        return 1;
    }
    printf("bad_server listening on http://127.0.0.1:%d (^C to stop)\n", port);
    fflush(stdout);
    pause();
    bad_server_stop();
    return 0;
}
#endif
