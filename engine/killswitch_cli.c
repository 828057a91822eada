/* killswitch_cli.c -- `nerve killswitch ls|engage|reset` (see
 * killswitch_cli.h).
 *
 * Why over HTTP and not straight to Redis: an engagement must run the
 * emergency stop and a reset the resume call, both owned by a daemon, and
 * the daemon is what audits who asked. The CLI is one more admin client; it
 * speaks through the blocking one-shot client of `nerve stress`
 * (httpc.h), the one HTTP/1.1 client of nerve.
 */
#include "nerve/killswitch_cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nerve/cli.h"
#include "nerve/httpc.h"
#include "nerve/config.h"
#include "nerve/scope.h"

#define TIMEOUT_MS      10000
#define TOKEN_MAX       4096 /* bytes, as the config takes NERVE_ADMIN_TOKEN */
#define ACTOR_MAX       64   /* bytes: the daemon's bound */
#define REASON_SHOW_MAX 60   /* characters of a reason in the ls table */

static const char help[] =
    "usage: nerve killswitch ls [--json]\n"
    "       nerve killswitch engage SCOPE --reason R [--halt-sales]\n"
    "       nerve killswitch reset SCOPE --reason R\n"
    "\n"
    "The kill switch of the running daemon, over its HTTP API.\n"
    "  ls       engaged scopes: scope, rule, reason, age, state, halt_sales (GET /killswitch,\n"
    "           no token); --json prints the daemon's records as JSON\n"
    "  engage   engage SCOPE by hand and run the emergency stop (POST /admin/killswitch);\n"
    "           --halt-sales also answers 423 to the sales it covers\n"
    "  reset    release SCOPE (DELETE /admin/killswitch/SCOPE); the daemon audits the reason,\n"
    "           the actor cli:$USER, the token's name and this host's address, and calls\n"
    "           panic.resume_url when set\n"
    "\n"
    "  --reason R          why (required by engage and reset; reset: at most 256 bytes)\n"
    "  --url http://HOST:PORT  the daemon (default: the config's server.listen)\n"
    "  --token-file FILE   read the admin token from FILE (default: NERVE_ADMIN_TOKEN)\n"
    "  -c, --config FILE, --set dotted.key=value  (see nerve help)\n"
    "\n"
    "SCOPE: " SCOPE_GRAMMAR ".\n"
    "exit status: 0 done; 1 refused or failed (no token, wrong token 401, admin disabled\n"
    "403, scope not engaged 404, bad request 400, daemon unreachable); 2 usage.\n";

typedef struct kopts {
    cli_args a;
    const char *url, *token_file, *reason;
    bool json, halt_sales;
} kopts;

enum { OPT_URL = 1, OPT_TOKEN_FILE, OPT_REASON, OPT_JSON, OPT_HALT };

static int on_opt(void *ud, int val, const char *arg) {
    kopts *o = ud;
    switch (val - CLI_OPT(0)) {
    case OPT_URL: o->url = arg; break;
    case OPT_TOKEN_FILE: o->token_file = arg; break;
    case OPT_REASON: o->reason = arg; break;
    case OPT_JSON: o->json = true; break;
    case OPT_HALT: o->halt_sales = true; break;
    }
    return 0;
}

/* ---- where and who ------------------------------------------------------------- */

/* The daemon's base URL into OUT: --url, or http:// + server.listen (a
 * wildcard address is reached on loopback). 0, or -1 after saying why. */
static int daemon_url(const kopts *o, char *out, size_t n) {
    if (o->url) {
        snprintf(out, n, "%s", o->url);
        return 0;
    }
    cfg *c = cli_load_config(&o->a);
    if (!c) return -1;
    cli_daemon_url(c, out, n);
    cfg_free(c);
    return 0;
}

/* The admin token: --token-file's first line, or NERVE_ADMIN_TOKEN. A
 * malloc'd string (the caller wipes and frees it), or NULL after saying why. */
static char *admin_token(const kopts *o) {
    char *t = NULL;
    if (o->token_file) {
        FILE *f = fopen(o->token_file, "r");
        if (!f) {
            fprintf(stderr, "nerve killswitch: --token-file %s: %s\n", o->token_file,
                    strerror(errno));
            return NULL;
        }
        t = calloc(1, TOKEN_MAX + 2);
        size_t n = t ? fread(t, 1, TOKEN_MAX + 1, f) : 0;
        fclose(f);
        if (!t) return NULL;
        while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r')) t[--n] = 0;
        if (n > TOKEN_MAX || memchr(t, '\n', n)) {
            fprintf(stderr,
                    "nerve killswitch: --token-file %s: expected one line of at most %d "
                    "bytes\n",
                    o->token_file, TOKEN_MAX);
            goto bad;
        }
    } else {
        const char *e = getenv("NERVE_ADMIN_TOKEN");
        if (!e || !*e) {
            fprintf(stderr, "nerve killswitch: no admin token: set NERVE_ADMIN_TOKEN (the "
                            "daemon's) or pass --token-file FILE; nothing was changed\n");
            return NULL;
        }
        if (strlen(e) > TOKEN_MAX) {
            fprintf(stderr, "nerve killswitch: NERVE_ADMIN_TOKEN is longer than %d bytes\n",
                    TOKEN_MAX);
            return NULL;
        }
        if (!(t = strdup(e))) return NULL;
    }
    if (!*t) {
        fprintf(stderr, "nerve killswitch: --token-file %s is empty\n", o->token_file);
        goto bad;
    }
    /* It goes into a request header: a control character would forge one. */
    for (const char *p = t; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            fprintf(stderr, "nerve killswitch: the admin token contains a control character\n");
            goto bad;
        }
    return t;
bad:
    explicit_bzero(t, strlen(t));
    free(t);
    return NULL;
}

static void token_free(char *t) {
    if (!t) return;
    explicit_bzero(t, strlen(t));
    free(t);
}

/* "cli:$USER", or "cli" when USER is unset or would not fit the daemon's
 * bound or grammar (no control characters). */
static void cli_actor(char *out, size_t n) {
    const char *u = getenv("USER");
    bool ok = u && *u && strlen(u) + 4 <= ACTOR_MAX;
    for (const char *p = u; ok && *p; p++) ok = (unsigned char)*p >= 0x20 && *p != 0x7f;
    if (ok)
        snprintf(out, n, "cli:%s", u);
    else
        snprintf(out, n, "cli");
}

/* ---- one request ------------------------------------------------------------------ */

/* The daemon's message from an error body {"error","message"}, or "". */
static const char *err_message(const httpc_reply *r, char *buf, size_t n) {
    buf[0] = 0;
    cJSON *o = r->body ? cJSON_ParseWithLength(r->body, r->len) : NULL;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "message");
    if (cJSON_IsString(m)) snprintf(buf, n, "%s", m->valuestring);
    cJSON_Delete(o);
    return buf;
}

/* METHOD PATH with BODY on BASE. The status (2xx) with the reply in OUT, or
 * 0 after printing why it failed, in words an operator can act on. */
static int call(const char *base, const char *method, const char *path, const char *token,
                const char *body, httpc_reply *out) {
    httpc_url u;
    char err[HTTPC_ERR_MAX + 64];
    memset(out, 0, sizeof *out);
    if (httpc_url_parse(base, &u, err, sizeof err) != 0) {
        fprintf(stderr, "nerve killswitch: %s\n", err);
        return 0;
    }
    if (httpc_url_resolve(&u, err, sizeof err) != 0) {
        fprintf(stderr, "nerve killswitch: %s\n", err);
        return 0;
    }
    int st = httpc_request(&u, method, path, token, body, TIMEOUT_MS, out);
    if (st == 0) {
        fprintf(stderr,
                "nerve killswitch: cannot reach the daemon at %s: %s (is nerve serve running? "
                "its address is the config's server.listen, or pass --url)\n",
                u.base, out->err);
        return 0;
    }
    if (st >= 200 && st <= 299) return st;
    char msg[512];
    err_message(out, msg, sizeof msg);
    switch (st) {
    case 401:
        fprintf(stderr,
                "nerve killswitch: the daemon refused the admin token (401): NERVE_ADMIN_TOKEN "
                "(or --token-file) is not the daemon's; nothing was changed\n");
        break;
    case 403:
        fprintf(stderr, "nerve killswitch: forbidden (403): %s; nothing was changed\n",
                msg[0] ? msg : "admin endpoints are disabled on the daemon");
        break;
    case 404: fprintf(stderr, "nerve killswitch: %s (404)\n", msg[0] ? msg : "not found"); break;
    default:
        fprintf(stderr, "nerve killswitch: the daemon answered %d: %s\n", st,
                msg[0] ? msg : "(no message)");
    }
    httpc_reply_free(out);
    return 0;
}

/* ---- ls ----------------------------------------------------------------------------- */

static void age_str(double secs, char *out, size_t n) {
    long long s = secs > 0 ? (long long)secs : 0;
    if (s < 60)
        snprintf(out, n, "%llds", s);
    else if (s < 3600)
        snprintf(out, n, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, n, "%lldh%02lldm", s / 3600, s % 3600 / 60);
    else
        snprintf(out, n, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

/* S for a terminal: control bytes (an escape sequence in a rule's reason)
 * become '?', and at most MAX characters are kept ("..." says so). */
static void show(const char *s, size_t max, char *out, size_t n) {
    cli_safe_text(out, n, s, max);
}

static const char *jstr(const cJSON *o, const char *k, const char *dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

static int by_scope(const void *x, const void *y) {
    const cJSON *a = *(const cJSON *const *)x, *b = *(const cJSON *const *)y;
    return strcmp(jstr(a, "scope", ""), jstr(b, "scope", ""));
}

static int cmd_ls(const kopts *o, const char *base) {
    httpc_reply r;
    if (!call(base, "GET", "/killswitch", NULL, NULL, &r)) return 1;
    cJSON *root = cJSON_ParseWithLength(r.body, r.len);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "engaged");
    int rc = 1;
    if (!cJSON_IsArray(arr)) {
        fprintf(stderr, "nerve killswitch: GET /killswitch: unexpected answer (no \"engaged\" "
                        "array)\n");
        goto out;
    }
    if (o->json) {
        char *txt = cJSON_PrintUnformatted(arr);
        if (txt) printf("%s\n", txt);
        free(txt);
        rc = txt ? 0 : 1;
        goto out;
    }
    int n = cJSON_GetArraySize(arr);
    const cJSON **recs = calloc((size_t)n + 1, sizeof *recs);
    if (!recs) goto out;
    int k = 0;
    const cJSON *rec;
    cJSON_ArrayForEach(rec, arr) if (cJSON_IsObject(rec)) recs[k++] = rec;
    qsort(recs, (size_t)k, sizeof *recs, by_scope);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    printf("%-32s %-20s %-8s %-12s %-10s %s\n", "SCOPE", "RULE", "AGE", "STATE", "HALT_SALES",
           "REASON");
    for (int i = 0; i < k; i++) {
        char scope[SCOPE_MAX * 4 + 8], rule[96], reason[REASON_SHOW_MAX * 4 + 8], state[64],
            age[32] = "?";
        show(jstr(recs[i], "scope", "?"), SCOPE_MAX, scope, sizeof scope);
        show(jstr(recs[i], "rule", "-"), 20, rule, sizeof rule);
        show(jstr(recs[i], "reason", ""), REASON_SHOW_MAX, reason, sizeof reason);
        show(jstr(recs[i], "state", "?"), 12, state, sizeof state);
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(recs[i], "ts");
        if (cJSON_IsNumber(ts)) age_str((double)now.tv_sec - ts->valuedouble, age, sizeof age);
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(recs[i], "halt_sales");
        printf("%-32s %-20s %-8s %-12s %-10s %s\n", scope, rule, age, state,
               cJSON_IsTrue(h) ? "yes" : "no", reason);
    }
    if (k == 0) printf("(no scope engaged)\n");
    free(recs);
    rc = 0;
out:
    cJSON_Delete(root);
    httpc_reply_free(&r);
    return rc;
}

/* ---- engage, reset ------------------------------------------------------------------ */

/* SCOPE from the positional arguments, checked against scope.h's grammar
 * before anything is sent. NULL after printing why (usage). */
static const char *scope_arg(const kopts *o, const char *sub) {
    if (o->a.nrest != 2) {
        fprintf(stderr,
                "nerve killswitch %s: expected exactly one SCOPE (see nerve killswitch "
                "--help)\n",
                sub);
        return NULL;
    }
    const char *s = o->a.rest[1];
    if (!scope_valid(s, strlen(s))) {
        fprintf(stderr, "nerve killswitch %s: invalid scope: must be %s\n", sub, SCOPE_GRAMMAR);
        return NULL;
    }
    if (!o->reason || !*o->reason) {
        fprintf(stderr, "nerve killswitch %s: --reason R is required (it is audited)\n", sub);
        return NULL;
    }
    return s;
}

static int cmd_engage(const kopts *o, const char *base, const char *scope) {
    char *token = admin_token(o);
    if (!token) return 1;
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "scope", scope);
    cJSON_AddStringToObject(b, "reason", o->reason);
    cJSON_AddBoolToObject(b, "halt_sales", o->halt_sales);
    char *body = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    httpc_reply r;
    int st = body ? call(base, "POST", "/admin/killswitch", token, body, &r) : 0;
    free(body);
    token_free(token);
    if (!st) return 1;
    cJSON *a = cJSON_ParseWithLength(r.body, r.len);
    bool already = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "already_engaged"));
    if (already)
        printf("%s was already engaged (nothing changed; nerve killswitch ls shows its record)\n",
               scope);
    else
        printf("engaged %s%s; the emergency stop runs on the daemon\n", scope,
               o->halt_sales ? " (sales halted)" : "");
    cJSON_Delete(a);
    httpc_reply_free(&r);
    return 0;
}

static int cmd_reset(const kopts *o, const char *base, const char *scope) {
    char *token = admin_token(o);
    if (!token) return 1;
    /* Grammar characters are sent as they are, '%' as %25: the daemon
     * decodes the path once (scope.h). */
    char path[sizeof "/admin/killswitch/" + SCOPE_MAX * 3];
    size_t n = (size_t)snprintf(path, sizeof path, "/admin/killswitch/");
    for (const char *p = scope; *p; p++)
        n += (size_t)snprintf(path + n, sizeof path - n, *p == '%' ? "%%25" : "%c", *p);
    char actor[ACTOR_MAX + 1];
    cli_actor(actor, sizeof actor);
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "reason", o->reason);
    cJSON_AddStringToObject(b, "actor", actor);
    char *body = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    httpc_reply r;
    int st = body ? call(base, "DELETE", path, token, body, &r) : 0;
    free(body);
    token_free(token);
    if (!st) return 1;
    cJSON *a = cJSON_ParseWithLength(r.body, r.len);
    bool resume = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "resume_call"));
    printf("reset %s (audited as %s)%s\n", scope, actor,
           resume ? "; the daemon calls panic.resume_url"
                  : "; no panic.resume_url: nothing resumed");
    cJSON_Delete(a);
    httpc_reply_free(&r);
    return 0;
}

int killswitch_cli_main(int argc, char **argv) {
    static const struct option own[] = {
        { "url", required_argument, NULL, CLI_OPT(OPT_URL) },
        { "token-file", required_argument, NULL, CLI_OPT(OPT_TOKEN_FILE) },
        { "reason", required_argument, NULL, CLI_OPT(OPT_REASON) },
        { "json", no_argument, NULL, CLI_OPT(OPT_JSON) },
        { "halt-sales", no_argument, NULL, CLI_OPT(OPT_HALT) },
        { 0, 0, 0, 0 },
    };
    kopts o;
    memset(&o, 0, sizeof o);
    if (cli_parse("nerve killswitch", "nerve killswitch --help", argc, argv, own, on_opt, &o,
                  &o.a)) {
        cli_args_free(&o.a);
        return 2;
    }
    int rc = 2;
    const char *sub = o.a.nrest > 0 ? o.a.rest[0] : NULL;
    char base[512];
    if (o.a.help) {
        fputs(help, stdout);
        rc = 0;
    } else if (!sub) {
        fputs(help, stderr);
    } else if (strcmp(sub, "ls") == 0) {
        if (o.a.nrest != 1)
            fprintf(stderr,
                    "nerve killswitch ls: takes no argument (see nerve killswitch --help)\n");
        else
            rc = daemon_url(&o, base, sizeof base) ? 1 : cmd_ls(&o, base);
    } else if (strcmp(sub, "engage") == 0 || strcmp(sub, "reset") == 0) {
        const char *scope = scope_arg(&o, sub);
        if (scope) {
            if (daemon_url(&o, base, sizeof base))
                rc = 1;
            else
                rc = sub[0] == 'e' ? cmd_engage(&o, base, scope) : cmd_reset(&o, base, scope);
        }
    } else {
        fprintf(stderr,
                "nerve killswitch: unknown command '%s' (ls, engage, reset; see nerve "
                "killswitch --help)\n",
                sub);
    }
    cli_args_free(&o.a);
    return rc;
}
