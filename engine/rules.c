/* rules.c -- compiling rule files into an immutable, refcounted rules_set,
 * and the dry run behind `nerve rules test`.
 *
 * Loading is where an analyst learns what is wrong with a file, so it never
 * stops at the first problem: every file is compiled in a fresh sandbox, the
 * table it returns is checked field by field, its fixtures are run, and each
 * problem becomes one `FILE:LINE: message` line. The set keeps only plain data
 * (source text, names, channels, digests, params): evaluators (rules_vm.c)
 * build their own Lua states from it, one per thread, so the set itself can
 * be shared freely and swapped atomically on reload.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>
#include <cjson/cJSON.h>
#include <openssl/evp.h>

#include "nerve/config.h"
#include "rules_int.h"

#define DEFAULT_INSTR_LIMIT     1000000LL
#define DEFAULT_MEM_LIMIT       (8u << 20)
#define DEFAULT_EVENT_BYTES     65536u

/* ---- collected errors --------------------------------------------------- */

typedef struct errbuf {
    char *s;
    size_t len, cap;
    int count;
} errbuf;

static void eb_add(errbuf *b, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void eb_add(errbuf *b, const char *file, int line, const char *fmt, ...)
{
    char msg[RULES_MSG_MAX + 128], clean[RULES_MSG_MAX + 128], head[RULES_MSG_MAX];
    va_list ap;
    size_t need;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    rules_sanitize(clean, sizeof(clean), msg, strlen(msg));
    snprintf(head, sizeof(head), "%s:%d: ", file, line > 0 ? line : 1);
    need = strlen(head) + strlen(clean) + 2;
    b->count++;
    if (b->len + need > b->cap) {
        size_t cap = (b->cap + need) * 2;
        char *s = realloc(b->s, cap);

        if (s == NULL)
            return;             /* the count still says something was wrong */
        b->s = s;
        b->cap = cap;
    }
    b->len += (size_t)sprintf(b->s + b->len, "%s%s\n", head, clean);
}

/* ---- small helpers ------------------------------------------------------ */

static int isident(int c)
{
    return isalnum(c) || c == '_';
}

/* Best-effort line of the NTH (1-based) `KEY =` at or after line FROM,
 * ignoring what follows `--` on a line; 0 when not found. Used to point at a
 * field of the returned table, which Lua keeps no line for. */
static int key_line(const char *src, size_t len, const char *key, int from, int nth)
{
    size_t klen = strlen(key);
    const char *p, *end = src + len;
    bool comment = false;
    int line = 1;

    for (p = src; p < end; p++) {
        if (*p == '\n') {
            line++;
            comment = false;
            continue;
        }
        if (comment || line < from)
            continue;
        if (p[0] == '-' && p + 1 < end && p[1] == '-') {
            comment = true;
            continue;
        }
        if ((size_t)(end - p) > klen && memcmp(p, key, klen) == 0 &&
            (p == src || !isident((unsigned char)p[-1])) && !isident((unsigned char)p[klen])) {
            const char *q = p + klen;

            while (q < end && (*q == ' ' || *q == '\t'))
                q++;
            if (q < end && *q == '=' && (q + 1 >= end || q[1] != '=') && --nth == 0)
                return line;
        }
    }
    return 0;
}

static int name_ok(const char *s, size_t len)
{
    if (len == 0 || len > RULES_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!isident((unsigned char)s[i]) && s[i] != '.' && s[i] != '-')
            return 0;
    return 1;
}

static int channel_ok(const char *s, size_t len)
{
    if (len == 0 || len > RULES_CHANNEL_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

static void sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1)
        mdlen = 0;
    for (unsigned int i = 0; i < mdlen && i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
    out[2 * (mdlen < 32 ? mdlen : 32)] = '\0';
}

/* Read PATH whole (at most RULES_FILE_MAX bytes), NUL-terminated. */
static char *read_file(const char *path, size_t *len, errbuf *eb)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;

    if (f == NULL) {
        eb_add(eb, path, 1, "cannot open rule file: %s", strerror(errno));
        return NULL;
    }
    buf = malloc(RULES_FILE_MAX + 2);
    if (buf == NULL) {
        fclose(f);
        eb_add(eb, path, 1, "out of memory");
        return NULL;
    }
    n = fread(buf, 1, RULES_FILE_MAX + 1, f);
    if (ferror(f)) {
        eb_add(eb, path, 1, "cannot read rule file: %s", strerror(errno));
    } else if (n > RULES_FILE_MAX) {
        eb_add(eb, path, 1, "rule file larger than %d bytes", RULES_FILE_MAX);
    } else {
        fclose(f);
        buf[n] = '\0';
        *len = n;
        return buf;
    }
    fclose(f);
    free(buf);
    return NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_strv(char **v, size_t n)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* The files to load, as paths the user will recognise in messages. */
static char **list_files(const cfg *c, size_t *n, errbuf *eb)
{
    const char *dir = c->rules_dir && *c->rules_dir ? c->rules_dir : "rules";
    char **v = NULL;
    size_t cap = 0;
    struct dirent *de;
    DIR *d;

    const char *sep = dir[strlen(dir) - 1] == '/' ? "" : "/";

    *n = 0;
    if (c->n_rules_files > 0) {
        /* Relative entries are relative to the rules directory. */
        v = calloc(c->n_rules_files, sizeof(*v));
        for (size_t i = 0; v && i < c->n_rules_files; i++) {
            const char *f = c->rules_files[i];

            if (f[0] == '/' ? (v[i] = strdup(f)) == NULL
                            : asprintf(&v[i], "%s%s%s", dir, sep, f) < 0) {
                v[i] = NULL;
                break;
            }
            (*n)++;
        }
        if (v == NULL || *n < c->n_rules_files) {
            eb_add(eb, c->rules_files[0], 1, "out of memory");
            free_strv(v, *n);
            *n = 0;
            return NULL;
        }
        return v;
    }
    d = opendir(dir);
    if (d == NULL) {
        eb_add(eb, dir, 1, "cannot open rules directory: %s", strerror(errno));
        return NULL;
    }
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        struct stat st;
        char *path;

        if (de->d_name[0] == '.' || len < 5 || strcmp(de->d_name + len - 4, ".lua") != 0)
            continue;
        if (asprintf(&path, "%s%s%s", dir, sep, de->d_name) < 0)
            continue;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(path);
            continue;
        }
        if (*n == cap) {
            char **nv = realloc(v, (cap = cap ? cap * 2 : 16) * sizeof(*v));

            if (nv == NULL) {
                free(path);
                break;
            }
            v = nv;
        }
        v[(*n)++] = path;
    }
    closedir(d);
    if (*n == 0)
        eb_add(eb, dir, 1, "no rule files (*.lua) in the rules directory");
    else
        qsort(v, *n, sizeof(*v), cmp_str);
    return v;
}

/* ---- loading one file ----------------------------------------------------- */

/* What validate_fn finds. Strings point into the Lua state and are copied
 * out (after the protected call, so no C allocation can be skipped by a
 * Lua error) before the state is closed. */
struct load_args {
    const char *file;
    const char *src;
    size_t src_len;
    const cJSON *params;
    errbuf *eb;
    int errors_before;
    const char *name;
    const char *desc;
    const char *chan[RULES_MAX_CHANNELS];
    size_t n_chan;
    int eval_line;
    int tests_line;
    int n_fix;
    bool ok;                    /* the shape is valid: fixtures can run */
    int ref_rule, ref_state, ref_params;
    long long now;
};

static const char *const rule_keys[] = { "name", "on", "evaluate", "tests", "description", NULL };

static int kline(const struct load_args *a, const char *key)
{
    int l = key_line(a->src, a->src_len, key, 1, 1);

    return l > 0 ? l : 1;
}

static void validate_fn(lua_State *L, void *ud)
{
    struct load_args *a = ud;
    int t, vt;

    rules_sbx_run_chunk(L, a->src, a->src_len);
    t = lua_gettop(L);
    if (!lua_istable(L, t)) {
        eb_add(a->eb, a->file, 1, "rule file must return a table, not %s", luaL_typename(L, t));
        return;
    }
    lua_pushvalue(L, t);
    a->ref_rule = luaL_ref(L, LUA_REGISTRYINDEX);

    lua_pushnil(L);
    while (lua_next(L, t)) {
        int known = 0;

        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (int i = 0; rule_keys[i]; i++)
                known |= strcmp(lua_tostring(L, -1), rule_keys[i]) == 0;
        if (!known) {
            if (lua_type(L, -1) == LUA_TSTRING)
                eb_add(a->eb, a->file, kline(a, lua_tostring(L, -1)),
                       "unknown field \"%.40s\" in the rule table (expected name, on, "
                       "evaluate, tests, description)", lua_tostring(L, -1));
            else
                eb_add(a->eb, a->file, 1, "unexpected %s key in the rule table",
                       luaL_typename(L, -1));
        }
    }

    lua_pushliteral(L, "name");
    vt = lua_rawget(L, t);
    if (vt != LUA_TSTRING || !name_ok(lua_tostring(L, -1), lua_rawlen(L, -1)))
        eb_add(a->eb, a->file, kline(a, "name"), "name must be a string of 1 to %d "
               "characters from [A-Za-z0-9_.-]", RULES_NAME_MAX);
    else
        a->name = lua_tostring(L, -1);
    lua_pop(L, 1);

    lua_pushliteral(L, "description");
    vt = lua_rawget(L, t);
    if (vt == LUA_TSTRING && lua_rawlen(L, -1) <= RULES_REASON_MAX)
        a->desc = lua_tostring(L, -1);
    else if (vt != LUA_TNIL)
        eb_add(a->eb, a->file, kline(a, "description"),
               "description must be a string of at most %d bytes", RULES_REASON_MAX);
    lua_pop(L, 1);

    lua_pushliteral(L, "on");
    vt = lua_rawget(L, t);
    if (vt != LUA_TTABLE || lua_rawlen(L, -1) == 0 || lua_rawlen(L, -1) > RULES_MAX_CHANNELS) {
        eb_add(a->eb, a->file, kline(a, "on"), "on must be a list of 1 to %d channel names",
               RULES_MAX_CHANNELS);
    } else {
        int on = lua_gettop(L);
        size_t n = lua_rawlen(L, on);

        for (size_t i = 1; i <= n; i++) {
            if (lua_rawgeti(L, on, (lua_Integer)i) != LUA_TSTRING ||
                !channel_ok(lua_tostring(L, -1), lua_rawlen(L, -1))) {
                eb_add(a->eb, a->file, kline(a, "on"), "on[%zu] must be a channel name "
                       "(1 to %d printable characters, no spaces)", i, RULES_CHANNEL_MAX);
                a->n_chan = 0;
                lua_pop(L, 1);
                break;
            }
            a->chan[a->n_chan++] = lua_tostring(L, -1);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);

    lua_pushliteral(L, "evaluate");
    if (lua_rawget(L, t) != LUA_TFUNCTION) {
        eb_add(a->eb, a->file, kline(a, "evaluate"), "evaluate must be a function(event, ctx)");
    } else {
        lua_Debug ar;

        lua_getinfo(L, ">S", &ar);
        a->eval_line = ar.linedefined > 0 ? ar.linedefined : 1;
        lua_pushnil(L);         /* balance the pop below */
    }
    lua_pop(L, 1);

    a->tests_line = key_line(a->src, a->src_len, "tests", 1, 1);
    lua_pushliteral(L, "tests");
    vt = lua_rawget(L, t);
    if (vt == LUA_TTABLE) {
        a->n_fix = (int)lua_rawlen(L, -1);
    } else if (vt != LUA_TNIL) {
        eb_add(a->eb, a->file, kline(a, "tests"), "tests must be a list of fixtures");
    }
    lua_pop(L, 1);

    if (a->params)
        rules_sbx_push_json(L, a->params, "params", 0);
    else
        rules_sbx_push_json(L, &(cJSON){ .type = cJSON_Object }, "params", 0);
    a->ref_params = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    a->ref_state = luaL_ref(L, LUA_REGISTRYINDEX);
    a->ok = a->eb->count == a->errors_before;
}

/* ---- fixtures ------------------------------------------------------------ */

struct fix_args {
    struct load_args *la;
    int i;
    int line;
    char chan[RULES_CHANNEL_MAX + 1];
};

static const char *const expect_keys[] = { "action", "level", "reason", "scope", "halt_sales", NULL };

#define FERR(...) do { \
        eb_add(f->la->eb, f->la->file, f->line, "fixture %d (%s): %s", f->i, f->chan, \
               (snprintf(fmsg, sizeof(fmsg), __VA_ARGS__), fmsg)); \
        return; \
    } while (0)

/* Append to BUF a Lua-like rendering of decision D. */
static void fmt_decision(char *buf, size_t len, const rules_decision *d)
{
    size_t off = strlen(buf);

    snprintf(buf + off, len - off, "{action=\"%s\"%s%s%s, reason=\"%s\"%s%s%s%s}",
             rules_action_name(d->action),
             d->level ? ", level=\"" : "", d->level ? rules_level_name(d->level) : "",
             d->level ? "\"" : "", d->reason,
             d->scope ? ", scope=\"" : "", d->scope ? d->scope : "", d->scope ? "\"" : "",
             d->action == RULES_KILL ? (d->halt_sales ? ", halt_sales=true"
                                                      : ", halt_sales=false") : "");
}

/* Append the expect entry at absolute index E. */
static void fmt_expect(lua_State *L, int e, char *buf, size_t len)
{
    size_t off = strlen(buf);
    int first = 1;

    off += (size_t)snprintf(buf + off, len - off, "{");
    for (int k = 0; expect_keys[k] && off < len; k++) {
        lua_pushstring(L, expect_keys[k]);
        switch (lua_rawget(L, e)) {
        case LUA_TSTRING:
            off += (size_t)snprintf(buf + off, len - off, "%s%s=\"%s\"", first ? "" : ", ",
                                    expect_keys[k], lua_tostring(L, -1));
            first = 0;
            break;
        case LUA_TBOOLEAN:
            off += (size_t)snprintf(buf + off, len - off, "%s%s=%s", first ? "" : ", ",
                                    expect_keys[k], lua_toboolean(L, -1) ? "true" : "false");
            first = 0;
            break;
        default:
            break;
        }
        lua_pop(L, 1);
    }
    if (off < len)
        snprintf(buf + off, len - off, "}");
}

/* The value of field K of decision D as text; NULL when D has none. */
static const char *got_field(const rules_decision *d, const char *k)
{
    if (strcmp(k, "action") == 0)
        return rules_action_name(d->action);
    if (strcmp(k, "level") == 0)
        return d->level ? rules_level_name(d->level) : NULL;
    if (strcmp(k, "reason") == 0)
        return d->reason;
    if (strcmp(k, "scope") == 0)
        return d->scope;
    return d->halt_sales ? "true" : "false";
}

static void fixture_fn(lua_State *L, void *ud)
{
    struct fix_args *f = ud;
    struct load_args *la = f->la;
    rules_decision d[RULES_MAX_DECISIONS];
    char fmsg[RULES_MSG_MAX], exp[RULES_MSG_MAX / 2], got[RULES_MSG_MAX / 2];
    int fx, ev, expect, params, res, vt;
    long long now = la->now;
    size_t n, n_exp;

    lua_rawgeti(L, LUA_REGISTRYINDEX, la->ref_rule);
    lua_pushliteral(L, "tests");
    lua_rawget(L, -2);
    if (lua_rawgeti(L, -1, f->i) != LUA_TTABLE)
        FERR("must be a table {channel=..., event={...}, expect={...}}");
    fx = lua_gettop(L);

    lua_pushnil(L);
    while (lua_next(L, fx)) {
        static const char *const keys[] = { "channel", "event", "expect", "now", "params", NULL };
        int known = 0;

        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (int i = 0; keys[i]; i++)
                known |= strcmp(lua_tostring(L, -1), keys[i]) == 0;
        if (!known)
            FERR("unknown field %s%.40s%s (expected channel, event, expect, now, params)",
                 lua_type(L, -1) == LUA_TSTRING ? "\"" : "",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1),
                 lua_type(L, -1) == LUA_TSTRING ? "\"" : "");
    }
    lua_getfield(L, fx, "channel");
    if (lua_type(L, -1) != LUA_TSTRING || !channel_ok(lua_tostring(L, -1), lua_rawlen(L, -1)))
        FERR("channel must be a channel name");
    snprintf(f->chan, sizeof(f->chan), "%s", lua_tostring(L, -1));
    {
        int listed = 0;

        for (size_t i = 0; i < la->n_chan; i++)
            listed |= strcmp(la->chan[i], f->chan) == 0;
        if (!listed)
            FERR("channel is not one of the rule's `on` channels");
    }
    if (lua_getfield(L, fx, "event") != LUA_TTABLE)
        FERR("event must be a table");
    ev = lua_gettop(L);
    if (lua_getfield(L, fx, "expect") != LUA_TTABLE)
        FERR("expect must be a list of decisions ({} = no decision)");
    expect = lua_gettop(L);
    n_exp = lua_rawlen(L, expect);
    for (size_t k = 1; k <= n_exp; k++) {
        int e;

        if (lua_rawgeti(L, expect, (lua_Integer)k) != LUA_TTABLE)
            FERR("expect[%zu] must be a table", k);
        e = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, e)) {
            int known = -1;

            for (int i = 0; lua_type(L, -2) == LUA_TSTRING && expect_keys[i]; i++)
                if (strcmp(lua_tostring(L, -2), expect_keys[i]) == 0)
                    known = i;
            if (known < 0)
                FERR("expect[%zu]: unknown field (expected action, level, reason, scope, "
                     "halt_sales)", k);
            if (lua_type(L, -1) != (known == 4 ? LUA_TBOOLEAN : LUA_TSTRING))
                FERR("expect[%zu]: %s must be a %s", k, expect_keys[known],
                     known == 4 ? "boolean" : "string");
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    vt = lua_getfield(L, fx, "now");
    if (vt == LUA_TNUMBER)
        now = lua_isinteger(L, -1) ? (long long)lua_tointeger(L, -1)
                                   : (long long)lua_tonumber(L, -1);
    else if (vt != LUA_TNIL)
        FERR("now must be a number (epoch seconds)");
    vt = lua_getfield(L, fx, "params");
    if (vt == LUA_TTABLE)
        rules_sbx_push_ro_copy(L, -1, "params", 0);
    else if (vt == LUA_TNIL)
        lua_rawgeti(L, LUA_REGISTRYINDEX, la->ref_params);
    else
        FERR("params must be a table");
    params = lua_gettop(L);

    lua_rawgeti(L, LUA_REGISTRYINDEX, la->ref_state);
    rules_sbx_push_ctx(L, params, -1);      /* ctx, inner */
    lua_pushstring(L, f->chan);
    lua_setfield(L, -2, "channel");
    lua_pushinteger(L, (lua_Integer)now);
    lua_setfield(L, -2, "now");
    lua_pop(L, 1);
    lua_getfield(L, 1, "evaluate");
    lua_pushvalue(L, ev);
    lua_pushvalue(L, -3);
    lua_call(L, 2, 1);
    res = lua_gettop(L);

    if (rules_sbx_decisions(L, res, f->chan, d, &n, fmsg, sizeof(fmsg)) != 0) {
        eb_add(la->eb, la->file, f->line, "fixture %d (%s): %s", f->i, f->chan, fmsg);
        return;
    }
    if (n != n_exp) {
        exp[0] = got[0] = '\0';
        for (size_t k = 1; k <= n_exp; k++) {
            if (k > 1)
                strncat(exp, ", ", sizeof(exp) - strlen(exp) - 1);
            lua_rawgeti(L, expect, (lua_Integer)k);
            fmt_expect(L, lua_gettop(L), exp, sizeof(exp));
            lua_pop(L, 1);
        }
        for (size_t k = 0; k < n; k++) {
            if (k > 0)
                strncat(got, ", ", sizeof(got) - strlen(got) - 1);
            fmt_decision(got, sizeof(got), &d[k]);
        }
        FERR("expected %s, got %s", n_exp ? exp : "no decision", n ? got : "no decision");
    }
    for (size_t k = 0; k < n; k++) {
        lua_rawgeti(L, expect, (lua_Integer)k + 1);
        for (int i = 0; expect_keys[i]; i++) {
            const char *want, *have;
            int is_bool = i == 4;

            lua_pushstring(L, expect_keys[i]);
            vt = lua_rawget(L, -2);
            if (vt == LUA_TNIL) {
                lua_pop(L, 1);
                continue;
            }
            want = is_bool ? (lua_toboolean(L, -1) ? "true" : "false") : lua_tostring(L, -1);
            have = got_field(&d[k], expect_keys[i]);
            if (have == NULL || strcmp(want, have) != 0) {
                const char *q = is_bool ? "" : "\"";

                if (have)
                    FERR("decision %zu: expected %s=%s%s%s, got %s=%s%s%s", k + 1,
                         expect_keys[i], q, want, q, expect_keys[i], q, have, q);
                FERR("decision %zu: expected %s=%s%s%s, got no %s", k + 1, expect_keys[i],
                     q, want, q, expect_keys[i]);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
}

static void run_fixtures(rules_sbx *s, struct load_args *a)
{
    for (int i = 1; i <= a->n_fix; i++) {
        struct fix_args f = { .la = a, .i = i };
        rules_sbx_err e;
        int l = a->tests_line > 0 ? key_line(a->src, a->src_len, "channel", a->tests_line, i) : 0;

        f.line = l > 0 ? l : a->tests_line > 0 ? a->tests_line : a->eval_line;
        snprintf(f.chan, sizeof(f.chan), "?");
        if (rules_sbx_pcall(s, fixture_fn, &f, &e) != 0)
            eb_add(a->eb, a->file, e.line, "fixture %d (%s): %s", i, f.chan, e.msg);
    }
}

static void free_rule(rules_rule *r)
{
    free(r->name);
    free(r->file);
    free(r->description);
    free_strv(r->channels, r->n_channels);
    free(r->src);
}

/* Compile, validate and test FILE; on success append it to SET. */
static void load_one(rules_set *set, const char *file, errbuf *eb)
{
    struct load_args a;
    rules_sbx s;
    rules_sbx_err e;
    rules_rule *r;
    char *src;
    size_t len = 0;

    src = read_file(file, &len, eb);
    if (src == NULL)
        return;
    if (len > 0 && src[0] == LUA_SIGNATURE[0]) {
        eb_add(eb, file, 1, "precompiled Lua bytecode is not accepted: rule files are "
               "loaded from source text only");
        free(src);
        return;
    }
    memset(&a, 0, sizeof(a));
    a.file = file;
    a.src = src;
    a.src_len = len;
    a.params = set->params;
    a.eb = eb;
    a.errors_before = eb->count;
    a.now = (long long)time(NULL);
    if (rules_sbx_open(&s, file, NULL, set->instr_limit, set->mem_limit, &e) != 0) {
        eb_add(eb, file, e.line, "%s", e.msg);
        free(src);
        return;
    }
    if (rules_sbx_pcall(&s, validate_fn, &a, &e) != 0) {
        eb_add(eb, file, e.line, "%s", e.msg);
        goto done;
    }
    if (!a.ok)
        goto done;
    s.name = a.name;
    s.def_line = a.eval_line;
    for (size_t i = 0; i < set->n; i++)
        if (strcmp(set->rules[i].name, a.name) == 0) {
            eb_add(eb, file, kline(&a, "name"), "duplicate rule name \"%s\" (also in %s:%d)",
                   a.name, set->rules[i].file,
                   key_line(set->rules[i].src, set->rules[i].src_len, "name", 1, 1));
            goto done;
        }
    run_fixtures(&s, &a);
    if (eb->count != a.errors_before)
        goto done;

    r = &set->rules[set->n];
    memset(r, 0, sizeof(*r));
    r->name = strdup(a.name);
    r->file = strdup(file);
    r->description = strdup(a.desc ? a.desc : "");
    r->channels = calloc(a.n_chan, sizeof(char *));
    for (size_t i = 0; r->channels && i < a.n_chan; i++)
        if ((r->channels[r->n_channels] = strdup(a.chan[i])) != NULL)
            r->n_channels++;
    if (!r->name || !r->file || !r->description || r->n_channels != a.n_chan) {
        eb_add(eb, file, 1, "out of memory");
        free_rule(r);
        goto done;
    }
    r->src = src;
    r->src_len = len;
    src = NULL;
    sha256_hex(r->src, r->src_len, r->sha256);
    r->line = a.eval_line;
    r->n_fixtures = a.n_fix;
    set->n++;
done:
    rules_sbx_close(&s);
    free(src);
}

/* ---- the set ------------------------------------------------------------ */

static void set_free(rules_set *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        free_rule(&s->rules[i]);
    free(s->rules);
    free(s->ctr);
    free(s->channels);          /* the strings belong to the rules */
    cJSON_Delete(s->params);
    free(s);
}

/* Channel union and the set digest. */
static int set_finish(rules_set *s)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char dig[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    size_t total = 0;

    for (size_t i = 0; i < s->n; i++)
        total += s->rules[i].n_channels;
    s->channels = calloc(total ? total : 1, sizeof(char *));
    s->ctr = aligned_alloc(64, (s->n ? s->n : 1) * sizeof(rules_counters));
    if (md == NULL || s->channels == NULL || s->ctr == NULL) {
        EVP_MD_CTX_free(md);
        return -1;
    }
    memset(s->ctr, 0, (s->n ? s->n : 1) * sizeof(rules_counters));
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (size_t i = 0; i < s->n; i++) {
        rules_rule *r = &s->rules[i];

        EVP_DigestUpdate(md, r->file, strlen(r->file) + 1);
        EVP_DigestUpdate(md, r->sha256, strlen(r->sha256));
        EVP_DigestUpdate(md, "\n", 1);
        for (size_t c = 0; c < r->n_channels; c++) {
            size_t k = 0;

            while (k < s->n_channels && strcmp(s->channels[k], r->channels[c]) != 0)
                k++;
            if (k == s->n_channels)
                s->channels[s->n_channels++] = r->channels[c];
        }
    }
    EVP_DigestFinal_ex(md, dig, &dlen);
    EVP_MD_CTX_free(md);
    for (unsigned int i = 0; i < dlen && i < 32; i++)
        sprintf(s->sha256 + 2 * i, "%02x", dig[i]);
    return 0;
}

rules_set *rules_set_load(const cfg *c, char **errors)
{
    errbuf eb = { 0 };
    rules_set *s;
    char **files;
    size_t nfiles = 0;

    *errors = NULL;
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *errors = strdup("rules:1: out of memory\n");
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->instr_limit = c->rules_instruction_limit > 0 ? c->rules_instruction_limit
                                                    : DEFAULT_INSTR_LIMIT;
    s->mem_limit = c->rules_memory_limit > 0 ? (size_t)c->rules_memory_limit
                                             : DEFAULT_MEM_LIMIT;
    s->max_event_bytes = c->max_event_bytes > 0 ? (size_t)c->max_event_bytes
                                                : DEFAULT_EVENT_BYTES;
    s->params = c->params ? cJSON_Duplicate(c->params, 1) : cJSON_CreateObject();
    files = list_files(c, &nfiles, &eb);
    s->rules = calloc(nfiles ? nfiles : 1, sizeof(*s->rules));
    if (s->params == NULL || s->rules == NULL) {
        if (eb.count == 0)
            eb_add(&eb, c->rules_dir ? c->rules_dir : "rules", 1, "out of memory");
    } else {
        for (size_t i = 0; i < nfiles; i++)
            load_one(s, files[i], &eb);
    }
    free_strv(files, nfiles);
    if (eb.count == 0 && set_finish(s) != 0)
        eb_add(&eb, c->rules_dir ? c->rules_dir : "rules", 1, "out of memory");
    if (eb.count > 0) {
        *errors = eb.s ? eb.s : strdup("rules:1: out of memory\n");
        set_free(s);
        return NULL;
    }
    free(eb.s);
    s->loaded_at = (long long)time(NULL);
    return s;
}

rules_set *rules_set_ref(rules_set *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void rules_set_unref(rules_set *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        set_free(s);
}

size_t rules_set_count(const rules_set *s)
{
    return s->n;
}

int rules_set_info(const rules_set *s, size_t i, rules_info *out)
{
    const rules_rule *r;

    if (i >= s->n)
        return -1;
    r = &s->rules[i];
    out->name = r->name;
    out->file = r->file;
    out->description = r->description;
    out->channels = (const char *const *)r->channels;
    out->n_channels = r->n_channels;
    out->sha256 = r->sha256;
    out->n_fixtures = r->n_fixtures;
    return 0;
}

const char *rules_set_sha256(const rules_set *s)
{
    return s->sha256;
}

long long rules_set_loaded_at(const rules_set *s)
{
    return s->loaded_at;
}

int rules_set_listens(const rules_set *s, const char *channel)
{
    for (size_t i = 0; i < s->n_channels; i++)
        if (strcmp(s->channels[i], channel) == 0)
            return 1;
    return 0;
}

const char *const *rules_set_channels(const rules_set *s, size_t *n)
{
    *n = s->n_channels;
    return (const char *const *)s->channels;
}

int rules_set_stats(const rules_set *s, size_t i, rules_stats *out)
{
    const rules_counters *c;

    if (i >= s->n)
        return -1;
    c = &s->ctr[i];
    out->evaluations = atomic_load_explicit(&c->evaluations, memory_order_relaxed);
    out->errors = atomic_load_explicit(&c->errors, memory_order_relaxed);
    out->duration_ns = atomic_load_explicit(&c->duration_ns, memory_order_relaxed);
    for (int a = 0; a < RULES_ACTION_COUNT; a++)
        out->decisions[a] = atomic_load_explicit(&c->decisions[a], memory_order_relaxed);
    return 0;
}

/* ---- dry run -------------------------------------------------------------- */

struct dry {
    FILE *out, *errout;
    int errors;
};

static void dry_decision(void *ud, const rules_decision *d)
{
    struct dry *dr = ud;
    cJSON *o = cJSON_CreateObject(), *dec = cJSON_CreateObject();
    char *txt;

    if (o == NULL || dec == NULL) {
        cJSON_Delete(o);
        cJSON_Delete(dec);
        fprintf(dr->errout, "%s: out of memory printing a decision\n", d->file);
        dr->errors++;
        return;
    }
    cJSON_AddStringToObject(o, "rule", d->rule);
    cJSON_AddStringToObject(o, "channel", d->channel);
    cJSON_AddStringToObject(dec, "action", rules_action_name(d->action));
    if (d->level)
        cJSON_AddStringToObject(dec, "level", rules_level_name(d->level));
    if (d->scope)
        cJSON_AddStringToObject(dec, "scope", d->scope);
    cJSON_AddStringToObject(dec, "reason", d->reason);
    if (d->action == RULES_KILL)
        cJSON_AddBoolToObject(dec, "halt_sales", d->halt_sales);
    cJSON_AddItemToObject(o, "decision", dec);
    txt = cJSON_PrintUnformatted(o);
    if (txt) {
        fprintf(dr->out, "%s\n", txt);
        free(txt);
    }
    cJSON_Delete(o);
}

static void dry_error(void *ud, const char *rule, const char *msg)
{
    struct dry *dr = ud;

    (void)rule;
    fprintf(dr->errout, "%s\n", msg);
    dr->errors++;
}

/* Check one input line; on success set *CHANNEL, *EVENT and *NOW. */
static const char *dry_line(const cJSON *j, const char **channel, const cJSON **event,
                            long long *now)
{
    const cJSON *c, *ev, *n;

    if (!cJSON_IsObject(j))
        return "expected a JSON object {\"channel\": ..., \"event\": {...}}";
    for (c = j->child; c; c = c->next)
        if (strcmp(c->string, "channel") != 0 && strcmp(c->string, "event") != 0 &&
            strcmp(c->string, "now") != 0)
            return "unknown key (expected channel, event and optionally now)";
    c = cJSON_GetObjectItemCaseSensitive(j, "channel");
    if (!cJSON_IsString(c) || !channel_ok(c->valuestring, strlen(c->valuestring)))
        return "channel must be a non-empty string without spaces";
    ev = cJSON_GetObjectItemCaseSensitive(j, "event");
    if (!cJSON_IsObject(ev))
        return "event must be a JSON object";
    n = cJSON_GetObjectItemCaseSensitive(j, "now");
    if (n && (!cJSON_IsNumber(n) || n->valuedouble < 0 || n->valuedouble > 1e15))
        return "now must be epoch seconds";
    if (rules_json_depth(ev) > RULES_JSON_DEPTH)
        return "event nested too deep";
    *channel = c->valuestring;
    *event = ev;
    *now = n ? (long long)n->valuedouble : (long long)time(NULL);
    return NULL;
}

int rules_test_events(rules_set *set, FILE *in, const char *in_name, FILE *out,
                      FILE *errout)
{
    struct dry dr = { out, errout, 0 };
    char err[RULES_MSG_MAX], *line = NULL;
    size_t cap = 0, max = set->max_event_bytes + 4096;
    ssize_t len;
    int lineno = 0;
    rules_vm *vm = rules_vm_new(set, NULL, err, sizeof(err));

    if (vm == NULL) {
        fprintf(errout, "%s\n", err);
        return -1;
    }
    rules_vm_on_error(vm, dry_error, &dr);
    while ((len = getline(&line, &cap, in)) != -1) {
        const char *channel = NULL, *bad, *p;
        const cJSON *event = NULL;
        long long now = 0;
        cJSON *j;

        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        for (p = line; *p == ' ' || *p == '\t'; p++)
            ;
        if (*p == '\0' || *p == '#')
            continue;
        if ((size_t)len > max) {
            fprintf(errout, "%s:%d: line longer than %zu bytes\n", in_name, lineno, max);
            dr.errors++;
            continue;
        }
        j = cJSON_ParseWithLengthOpts(line, (size_t)len + 1, NULL, 1);
        if (j == NULL) {
            fprintf(errout, "%s:%d: not valid JSON\n", in_name, lineno);
            dr.errors++;
            continue;
        }
        bad = dry_line(j, &channel, &event, &now);
        if (bad) {
            fprintf(errout, "%s:%d: %s\n", in_name, lineno, bad);
            dr.errors++;
        } else {
            rules_eval_cjson(vm, channel, event, now, dry_decision, &dr);
        }
        cJSON_Delete(j);
    }
    if (ferror(in)) {
        fprintf(errout, "%s:%d: read error: %s\n", in_name, lineno, strerror(errno));
        dr.errors++;
    }
    free(line);
    rules_vm_free(vm);
    fflush(out);
    return dr.errors ? -1 : 0;
}
