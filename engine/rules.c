/* rules.c -- compiling rule files into an immutable, refcounted rules_set.
 *
 * Loading is where an analyst learns what is wrong with a file, so it never
 * stops at the first problem: every file is compiled in a fresh sandbox, the
 * table it returns is checked field by field, its fixtures are run, and each
 * problem becomes one `FILE:LINE: message` line. The set keeps only plain data
 * (source text, names, channels, digests, params): evaluators (rules_vm.c)
 * build their own Lua states from it, one per thread, so the set itself can
 * be shared freely and swapped atomically on reload. Fixtures and the dry
 * run are in rules_test.c.
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

/* ---- collected errors --------------------------------------------------- */

static void eb_vadd(rules_errbuf *b, const char *head, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static void eb_vadd(rules_errbuf *b, const char *head, const char *fmt, va_list ap) {
    char msg[RULES_MSG_MAX + 128], clean[RULES_MSG_MAX + 128];
    size_t need;

    vsnprintf(msg, sizeof(msg), fmt, ap);
    rules_sanitize(clean, sizeof(clean), msg, strlen(msg));
    need = strlen(head) + strlen(clean) + 2;
    b->count++;
    if (b->len + need > b->cap) {
        size_t cap = (b->cap + need) * 2;
        char *s = realloc(b->s, cap);

        if (s == NULL) return; /* the count still says something was wrong */
        b->s = s;
        b->cap = cap;
    }
    b->len += (size_t)sprintf(b->s + b->len, "%s%s\n", head, clean);
}

void rules_eb_add(rules_errbuf *b, const char *file, int line, const char *fmt, ...) {
    char head[RULES_MSG_MAX];
    va_list ap;

    snprintf(head, sizeof(head), "%s:%d: ", file, line > 0 ? line : 1);
    va_start(ap, fmt);
    eb_vadd(b, head, fmt, ap);
    va_end(ap);
}

void rules_eb_addat(rules_errbuf *b, const char *where, const char *fmt, ...) {
    char head[RULES_MSG_MAX + 4], clean[RULES_MSG_MAX];
    va_list ap;

    /* WHERE may quote a --set value: one line whatever it holds. */
    rules_sanitize(clean, sizeof(clean), where ? where : "", where ? strlen(where) : 0);
    snprintf(head, sizeof(head), "%s%s", clean, where ? ": " : "");
    va_start(ap, fmt);
    eb_vadd(b, head, fmt, ap);
    va_end(ap);
}

/* ---- small helpers ------------------------------------------------------ */

static int isident(int c) {
    return isalnum(c) || c == '_';
}

/* Best-effort line of the NTH (1-based) `KEY =` at or after line FROM,
 * ignoring what follows `--` on a line; 0 when not found. Used to point at a
 * field of the returned table, which Lua keeps no line for. */
int rules_key_line(const char *src, size_t len, const char *key, int from, int nth) {
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
        if (comment || line < from) continue;
        if (p[0] == '-' && p + 1 < end && p[1] == '-') {
            comment = true;
            continue;
        }
        if ((size_t)(end - p) > klen && memcmp(p, key, klen) == 0 &&
            (p == src || !isident((unsigned char)p[-1])) && !isident((unsigned char)p[klen])) {
            const char *q = p + klen;

            while (q < end && (*q == ' ' || *q == '\t')) q++;
            if (q < end && *q == '=' && (q + 1 >= end || q[1] != '=') && --nth == 0) return line;
        }
    }
    return 0;
}

static int name_ok(const char *s, size_t len) {
    if (len == 0 || len > RULES_NAME_MAX) return 0;
    for (size_t i = 0; i < len; i++)
        if (!isident((unsigned char)s[i]) && s[i] != '.' && s[i] != '-') return 0;
    return 1;
}

int rules_channel_ok(const char *s, size_t len) {
    if (len == 0 || len > RULES_CHANNEL_MAX) return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return 0;
    return 1;
}

static void sha256_hex(const void *data, size_t len, char out[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1) mdlen = 0;
    for (unsigned int i = 0; i < mdlen && i < 32; i++) sprintf(out + 2 * i, "%02x", md[i]);
    out[2 * (mdlen < 32 ? mdlen : 32)] = '\0';
}

/* Read PATH whole (at most RULES_FILE_MAX bytes), NUL-terminated. */
static char *read_file(const char *path, size_t *len, rules_errbuf *eb) {
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;

    if (f == NULL) {
        rules_eb_add(eb, path, 1, "cannot open rule file: %s", strerror(errno));
        return NULL;
    }
    buf = malloc(RULES_FILE_MAX + 2);
    if (buf == NULL) {
        fclose(f);
        rules_eb_add(eb, path, 1, "out of memory");
        return NULL;
    }
    n = fread(buf, 1, RULES_FILE_MAX + 1, f);
    if (ferror(f)) {
        rules_eb_add(eb, path, 1, "cannot read rule file: %s", strerror(errno));
    } else if (n > RULES_FILE_MAX) {
        rules_eb_add(eb, path, 1, "rule file larger than %d bytes", RULES_FILE_MAX);
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

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_strv(char **v, size_t n) {
    if (v == NULL) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* The files to load, as paths the user will recognise in messages. */
static char **list_files(const cfg *c, size_t *n, rules_errbuf *eb) {
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
            rules_eb_add(eb, c->rules_files[0], 1, "out of memory");
            free_strv(v, *n);
            *n = 0;
            return NULL;
        }
        return v;
    }
    d = opendir(dir);
    if (d == NULL) {
        rules_eb_add(eb, dir, 1, "cannot open rules directory: %s", strerror(errno));
        return NULL;
    }
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        struct stat st;
        char *path;

        if (de->d_name[0] == '.' || len < 5 || strcmp(de->d_name + len - 4, ".lua") != 0) continue;
        if (asprintf(&path, "%s%s%s", dir, sep, de->d_name) < 0) continue;
        /* The file name starts every message about the rule (FILE:LINE:
         * message, in logs and `nerve check`): a newline in it would forge
         * a log line. Refused, and named with its control bytes blanked. */
        for (size_t i = 0; i < len; i++) {
            unsigned char b = (unsigned char)de->d_name[i];

            if (b < 0x20 || b == 0x7f) {
                char clean[RULES_MSG_MAX];

                rules_sanitize(clean, sizeof(clean), path, strlen(path));
                rules_eb_add(eb, clean, 1,
                             "cannot load rule file: its name holds a control character "
                             "(byte 0x%02x): rename it",
                             b);
                free(path);
                path = NULL;
                break;
            }
        }
        if (path == NULL) continue;
        /* A *.lua entry that cannot be loaded is an error, never skipped:
         * a dangling symlink or a vanished file would otherwise silently
         * remove a safety rule from the set (and `nerve check` say ok). */
        if (stat(path, &st) != 0) {
            int saved = errno;
            struct stat lst;

            if (lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode))
                rules_eb_add(eb, path, 1, "cannot load rule file: dangling symlink (%s)",
                             strerror(saved));
            else
                rules_eb_add(eb, path, 1, "cannot load rule file: %s", strerror(saved));
            free(path);
            continue;
        }
        if (!S_ISREG(st.st_mode)) {
            rules_eb_add(eb, path, 1, "cannot load rule file: not a regular file");
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
    if (*n == 0 && eb->count == 0)
        rules_eb_add(eb, dir, 1, "no rule files (*.lua) in the rules directory");
    else if (*n > 0)
        qsort(v, *n, sizeof(*v), cmp_str);
    return v;
}

/* ---- loading one file ----------------------------------------------------- */

static const char *const rule_keys[] = { "name",   "on",          "evaluate",
                                         "tests",  "description", "params_section",
                                         "params", NULL };

static int kline(const struct rules_load *a, const char *key) {
    int l = rules_key_line(a->src, a->src_len, key, 1, 1);

    return l > 0 ? l : 1;
}

/* The strings kept in struct rules_load must outlive any change the rule's
 * own code (its fixtures' evaluate) makes to the table they came from. */
const char *rules_anchored(lua_State *L, int anchor) {
    lua_pushvalue(L, -1);
    lua_rawseti(L, anchor, (lua_Integer)lua_rawlen(L, anchor) + 1);
    return lua_tostring(L, -1);
}

static void validate_fn(lua_State *L, void *ud) {
    struct rules_load *a = ud;
    int t, vt, anchor;

    rules_sbx_run_chunk(L, a->src, a->src_len);
    t = lua_gettop(L);
    if (!lua_istable(L, t)) {
        rules_eb_add(a->eb, a->file, 1, "rule file must return a table, not %s",
                     luaL_typename(L, t));
        return;
    }
    lua_pushvalue(L, t);
    a->ref_rule = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L); /* referenced from the registry until the state closes */
    anchor = lua_gettop(L);
    lua_pushvalue(L, anchor);
    (void)luaL_ref(L, LUA_REGISTRYINDEX);

    lua_pushnil(L);
    while (lua_next(L, t)) {
        int known = 0;

        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (int i = 0; rule_keys[i]; i++)
                known |= strcmp(lua_tostring(L, -1), rule_keys[i]) == 0;
        if (!known) {
            if (lua_type(L, -1) == LUA_TSTRING)
                rules_eb_add(a->eb, a->file, kline(a, lua_tostring(L, -1)),
                             "unknown field \"%.40s\" in the rule table (expected name, on, "
                             "evaluate, tests, description, params_section, params)",
                             lua_tostring(L, -1));
            else
                rules_eb_add(a->eb, a->file, 1, "unexpected %s key in the rule table",
                             luaL_typename(L, -1));
        }
    }

    lua_pushliteral(L, "name");
    vt = lua_rawget(L, t);
    if (vt != LUA_TSTRING || !name_ok(lua_tostring(L, -1), lua_rawlen(L, -1)))
        rules_eb_add(a->eb, a->file, kline(a, "name"),
                     "name must be a string of 1 to %d "
                     "characters from [A-Za-z0-9_.-]",
                     RULES_NAME_MAX);
    else
        a->name = rules_anchored(L, anchor);
    lua_pop(L, 1);

    lua_pushliteral(L, "description");
    vt = lua_rawget(L, t);
    if (vt == LUA_TSTRING && lua_rawlen(L, -1) <= RULES_REASON_MAX)
        a->desc = rules_anchored(L, anchor);
    else if (vt != LUA_TNIL)
        rules_eb_add(a->eb, a->file, kline(a, "description"),
                     "description must be a string of at most %d bytes", RULES_REASON_MAX);
    lua_pop(L, 1);

    lua_pushliteral(L, "on");
    vt = lua_rawget(L, t);
    if (vt != LUA_TTABLE || lua_rawlen(L, -1) == 0 || lua_rawlen(L, -1) > RULES_MAX_CHANNELS) {
        rules_eb_add(a->eb, a->file, kline(a, "on"), "on must be a list of 1 to %d channel names",
                     RULES_MAX_CHANNELS);
    } else {
        int on = lua_gettop(L);
        size_t n = lua_rawlen(L, on);

        for (size_t i = 1; i <= n; i++) {
            if (lua_rawgeti(L, on, (lua_Integer)i) != LUA_TSTRING ||
                !rules_channel_ok(lua_tostring(L, -1), lua_rawlen(L, -1))) {
                rules_eb_add(a->eb, a->file, kline(a, "on"),
                             "on[%zu] must be a channel name "
                             "(1 to %d printable characters, no spaces)",
                             i, RULES_CHANNEL_MAX);
                a->n_chan = 0;
                lua_pop(L, 1);
                break;
            }
            a->chan[a->n_chan++] = rules_anchored(L, anchor);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);

    lua_pushliteral(L, "evaluate");
    if (lua_rawget(L, t) != LUA_TFUNCTION) {
        rules_eb_add(a->eb, a->file, kline(a, "evaluate"),
                     "evaluate must be a function(event, ctx)");
    } else {
        lua_Debug ar;

        lua_getinfo(L, ">S", &ar);
        a->eval_line = ar.linedefined > 0 ? ar.linedefined : 1;
        lua_pushnil(L); /* balance the pop below */
    }
    lua_pop(L, 1);

    a->tests_line = rules_key_line(a->src, a->src_len, "tests", 1, 1);
    lua_pushliteral(L, "tests");
    vt = lua_rawget(L, t);
    if (vt == LUA_TTABLE) {
        a->n_fix = (int)lua_rawlen(L, -1);
    } else if (vt != LUA_TNIL) {
        rules_eb_add(a->eb, a->file, kline(a, "tests"), "tests must be a list of fixtures");
    }
    lua_pop(L, 1);

    rules_params_parse(L, t, anchor, a);
    lua_newtable(L);
    a->ref_state = luaL_ref(L, LUA_REGISTRYINDEX);
    a->ok = a->eb->count == a->errors_before;
}

/* The params fixtures see by default: the set's, defaults filled in. */
static void params_fn(lua_State *L, void *ud) {
    struct rules_load *a = ud;

    if (a->params)
        rules_sbx_push_json(L, a->params, "params", 0);
    else
        rules_sbx_push_json(L, &(cJSON){ .type = cJSON_Object }, "params", 0);
    a->ref_params = luaL_ref(L, LUA_REGISTRYINDEX);
}

static void free_params(rules_rule *r) {
    for (size_t i = 0; i < r->n_params; i++) {
        free(r->params[i].key);
        cJSON_Delete(r->params[i].def);
    }
    free(r->params);
    free(r->params_section);
    r->params = NULL;
    r->params_section = NULL;
    r->n_params = 0;
}

static void free_rule(rules_rule *r) {
    free(r->name);
    free(r->file);
    free(r->description);
    free_strv(r->channels, r->n_channels);
    free(r->src);
    free_params(r);
}

/* Compile, validate and test FILE; on success append it to SET. FIX_EB NULL:
 * a failed fixture is a load error; else it goes there and the rule loads
 * (`nerve rules test`). */
static void load_one(rules_set *set, const cfg *c, const char *file, rules_errbuf *eb,
                     rules_errbuf *fix_eb, rules_rule *pr) {
    struct rules_load a;
    rules_sbx s;
    rules_sbx_err e;
    rules_rule *r;
    char *src;
    size_t len = 0;

    src = read_file(file, &len, eb);
    if (src == NULL) return;
    if (len > 0 && src[0] == LUA_SIGNATURE[0]) {
        rules_eb_add(eb, file, 1,
                     "precompiled Lua bytecode is not accepted: rule files are "
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
    if (rules_sbx_open(&s, file, NULL, set->instr_limit, set->mem_limit, set->timeout_ms, &e) !=
        0) {
        rules_eb_add(eb, file, e.line, "%s", e.msg);
        free(src);
        return;
    }
    if (rules_sbx_pcall(&s, validate_fn, &a, &e) != 0) {
        rules_eb_add(eb, file, e.line, "%s", e.msg);
        goto done;
    }
    if (!a.ok) goto done;
    s.name = a.name;
    s.def_line = a.eval_line;
    for (size_t i = 0; i < set->n; i++)
        if (strcmp(set->rules[i].name, a.name) == 0) {
            rules_eb_add(eb, file, kline(&a, "name"), "duplicate rule name \"%s\" (also in %s:%d)",
                         a.name, set->rules[i].file,
                         rules_key_line(set->rules[i].src, set->rules[i].src_len, "name", 1, 1));
            goto done;
        }
    rules_channels_check(&a, c, eb);
    pr->name = strdup(a.name);
    pr->file = strdup(file);
    pr->line = a.eval_line;
    if (!pr->name || !pr->file || rules_params_build(pr, &a) != 0) {
        rules_eb_add(eb, file, 1, "out of memory");
        goto done;
    }
    rules_params_check(pr, set->params, c->params_where, eb);
    if (eb->count != a.errors_before) goto done;
    a.params_decl = pr->params;
    a.n_params = pr->n_params;
    if (rules_sbx_pcall(&s, params_fn, &a, &e) != 0) {
        rules_eb_add(eb, file, e.line, "%s", e.msg);
        goto done;
    }
    if (fix_eb) a.eb = fix_eb;
    rules_run_fixtures(&s, &a);
    a.eb = eb;
    if (eb->count != a.errors_before) goto done;

    r = &set->rules[set->n];
    memset(r, 0, sizeof(*r));
    r->name = strdup(a.name);
    r->file = strdup(file);
    r->description = strdup(a.desc ? a.desc : "");
    r->channels = calloc(a.n_chan, sizeof(char *));
    for (size_t i = 0; r->channels && i < a.n_chan; i++)
        if ((r->channels[r->n_channels] = strdup(a.chan[i])) != NULL) r->n_channels++;
    if (!r->name || !r->file || !r->description || r->n_channels != a.n_chan) {
        rules_eb_add(eb, file, 1, "out of memory");
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

static void set_free(rules_set *s) {
    if (s == NULL) return;
    for (size_t i = 0; i < s->n; i++) free_rule(&s->rules[i]);
    free(s->rules);
    for (size_t i = 0; s->ctr && i < s->n; i++) rules_counters_unref(s->ctr[i]);
    free(s->ctr);
    free(s->channels); /* the strings belong to the rules */
    cJSON_Delete(s->params);
    free(s);
}

/* Channel union and the set digest. */
static int set_finish(rules_set *s) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char dig[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    size_t total = 0;

    for (size_t i = 0; i < s->n; i++) total += s->rules[i].n_channels;
    s->channels = calloc(total ? total : 1, sizeof(char *));
    s->ctr = calloc(s->n ? s->n : 1, sizeof(rules_counters *));
    bool ctr_ok = s->ctr != NULL;
    for (size_t i = 0; ctr_ok && i < s->n; i++) ctr_ok = (s->ctr[i] = rules_counters_new()) != NULL;
    if (md == NULL || s->channels == NULL || !ctr_ok) {
        EVP_MD_CTX_free(md);
        return -1;
    }
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (size_t i = 0; i < s->n; i++) {
        rules_rule *r = &s->rules[i];

        EVP_DigestUpdate(md, r->file, strlen(r->file) + 1);
        EVP_DigestUpdate(md, r->sha256, strlen(r->sha256));
        EVP_DigestUpdate(md, "\n", 1);
        for (size_t c = 0; c < r->n_channels; c++) {
            size_t k = 0;

            while (k < s->n_channels && strcmp(s->channels[k], r->channels[c]) != 0) k++;
            if (k == s->n_channels) s->channels[s->n_channels++] = r->channels[c];
        }
    }
    EVP_DigestFinal_ex(md, dig, &dlen);
    EVP_MD_CTX_free(md);
    for (unsigned int i = 0; i < dlen && i < 32; i++) sprintf(s->sha256 + 2 * i, "%02x", dig[i]);
    return 0;
}

static rules_set *set_load(const cfg *c, char **errors, rules_errbuf *fix_eb) {
    rules_errbuf eb = { 0 };
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
                                                    : CFG_RULES_INSTRUCTION_LIMIT_DEFAULT;
    s->mem_limit = c->rules_memory_limit > 0 ? (size_t)c->rules_memory_limit
                                             : CFG_RULES_MEMORY_LIMIT_DEFAULT;
    s->timeout_ms = c->rules_eval_timeout_ms > 0 ? c->rules_eval_timeout_ms
                                                 : CFG_RULES_EVAL_TIMEOUT_MS_DEFAULT;
    s->sale_allow = c->rules_sale_on_error && strcmp(c->rules_sale_on_error, "allow") == 0;
    s->max_event_bytes = c->max_event_bytes > 0 ? (size_t)c->max_event_bytes
                                                : CFG_MAX_EVENT_BYTES_DEFAULT;
    s->params = c->params ? cJSON_Duplicate(c->params, 1) : cJSON_CreateObject();
    files = list_files(c, &nfiles, &eb);
    s->rules = calloc(nfiles ? nfiles : 1, sizeof(*s->rules));
    if (s->params == NULL || s->rules == NULL) {
        if (eb.count == 0)
            rules_eb_add(&eb, c->rules_dir ? c->rules_dir : "rules", 1, "out of memory");
    } else {
        /* The declarations of every rule that declared, loaded or not: a
         * typo is reported whatever else is wrong in the same section. */
        rules_rule *decl = calloc(nfiles ? nfiles : 1, sizeof(*decl));

        for (size_t i = 0; decl && i < nfiles; i++) load_one(s, c, files[i], &eb, fix_eb, &decl[i]);
        if (decl)
            rules_params_unknown(decl, nfiles, s->params, c->params_where, &eb);
        else
            rules_eb_add(&eb, c->rules_dir ? c->rules_dir : "rules", 1, "out of memory");
        for (size_t i = 0; decl && i < nfiles; i++) free_rule(&decl[i]);
        free(decl);
    }
    free_strv(files, nfiles);
    if (eb.count == 0 && set_finish(s) != 0)
        rules_eb_add(&eb, c->rules_dir ? c->rules_dir : "rules", 1, "out of memory");
    if (eb.count > 0) {
        *errors = eb.s ? eb.s : strdup("rules:1: out of memory\n");
        set_free(s);
        return NULL;
    }
    free(eb.s);
    s->loaded_at = (long long)time(NULL);
    return s;
}

rules_set *rules_set_load(const cfg *c, char **errors) {
    return set_load(c, errors, NULL);
}

rules_set *rules_set_load_dry(const cfg *c, char **errors, char **fixture_errors) {
    rules_errbuf fix = { 0 };
    rules_set *s = set_load(c, errors, &fix);

    *fixture_errors = fix.count > 0 && fix.s == NULL ? strdup("rules:1: out of memory\n") : fix.s;
    return s;
}

rules_set *rules_set_ref(rules_set *s) {
    if (s) atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void rules_set_unref(rules_set *s) {
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) set_free(s);
}

size_t rules_set_count(const rules_set *s) {
    return s->n;
}

int rules_set_info(const rules_set *s, size_t i, rules_info *out) {
    const rules_rule *r;

    if (i >= s->n) return -1;
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

const char *rules_set_sha256(const rules_set *s) {
    return s->sha256;
}

long long rules_set_loaded_at(const rules_set *s) {
    return s->loaded_at;
}

int rules_set_sale_allow(const rules_set *s) {
    return s->sale_allow;
}

int rules_set_timeout_ms(const rules_set *s) {
    return s->timeout_ms;
}

int rules_set_listens(const rules_set *s, const char *channel) {
    for (size_t i = 0; i < s->n_channels; i++)
        if (strcmp(s->channels[i], channel) == 0) return 1;
    return 0;
}

const char *const *rules_set_channels(const rules_set *s, size_t *n) {
    *n = s->n_channels;
    return (const char *const *)s->channels;
}

int rules_set_stats(const rules_set *s, size_t i, rules_stats *out) {
    rules_counters *c;

    if (i >= s->n) return -1;
    c = s->ctr[i];
    hist_read(&c->duration, &out->duration);
    out->evaluations = atomic_load_explicit(&c->evaluations, memory_order_relaxed);
    out->errors = atomic_load_explicit(&c->errors, memory_order_relaxed);
    out->duration_ns = atomic_load_explicit(&c->duration_ns, memory_order_relaxed);
    for (int a = 0; a < RULES_ACTION_COUNT; a++)
        out->decisions[a] = atomic_load_explicit(&c->decisions[a], memory_order_relaxed);
    return 0;
}
