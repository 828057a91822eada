/* cli.c -- the shared command-line options (see cli.h). */
#include "nerve/cli.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/log.h"

static const struct option common[] = {
    { "config", required_argument, NULL, 'c' },
    { "set", required_argument, NULL, 's' },
    { "log-format", required_argument, NULL, 'l' },
    { "help", no_argument, NULL, 'h' },
};
#define NCOMMON (sizeof common / sizeof common[0])

int cli_parse(const char *who, const char *hint, int argc, char **argv, const struct option *extra,
              cli_opt_fn on_opt, void *ud, cli_args *a) {
    memset(a, 0, sizeof *a);
    a->config = "config/nerve.yaml";
    a->rest = calloc((size_t)argc + 1, sizeof *a->rest);
    size_t nextra = 0;
    while (extra && extra[nextra].name) nextra++;
    struct option *opts = calloc(NCOMMON + nextra + 1, sizeof *opts);
    if (!a->rest || !opts) {
        fprintf(stderr, "%s: out of memory\n", who);
        free(opts);
        return -1;
    }
    memcpy(opts, common, sizeof common);
    if (nextra) memcpy(opts + NCOMMON, extra, nextra * sizeof *opts);
    opterr = 0; /* our messages, not getopt's */
    optind = 0; /* GNU: start afresh */
    int ch, rc = 0;
    while (rc == 0 && (ch = getopt_long(argc, argv, ":c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': a->config = optarg; break;
        case 's':
            if (a->nsets == CLI_MAX_SETS) {
                fprintf(stderr, "%s: at most %d --set options\n", who, CLI_MAX_SETS);
                rc = -1;
            } else {
                a->sets[a->nsets++] = optarg;
            }
            break;
        case 'l':
            if (strcmp(optarg, "text") && strcmp(optarg, "json")) {
                fprintf(stderr, "%s: --log-format must be text or json\n", who);
                rc = -1;
            }
            a->log_format = optarg;
            break;
        case 'h': a->help = true; break;
        case ':':
            fprintf(stderr, "%s: %s needs a value (see %s)\n", who, argv[optind - 1], hint);
            rc = -1;
            break;
        case '?':
            if (optopt)
                fprintf(stderr, "%s: unknown option -%c (see %s)\n", who, optopt, hint);
            else
                fprintf(stderr, "%s: unknown option %s (see %s)\n", who, argv[optind - 1], hint);
            rc = -1;
            break;
        default: rc = on_opt ? on_opt(ud, ch, optarg) : -1; break;
        }
    }
    free(opts);
    if (rc == 0)
        for (int i = optind; i < argc; i++) a->rest[a->nrest++] = argv[i];
    return rc;
}

void cli_args_free(cli_args *a) {
    free(a->rest);
    a->rest = NULL;
    a->nrest = 0;
}

cfg *cli_load_config(const cli_args *a) {
    char *errors = NULL;
    cfg *c = cfg_load(a->config, a->sets, a->nsets, &errors);
    if (!c) {
        const char *t = errors ? errors : "config: out of memory";
        fputs(t, stderr);
        if (t[0] && t[strlen(t) - 1] != '\n') fputc('\n', stderr);
        free(errors);
        return NULL;
    }
    log_set_level_name(c->log_level);
    log_set_json(strcmp(a->log_format ? a->log_format : c->log_format, "json") == 0);
    return c;
}

void cli_daemon_url(const cfg *c, char *out, size_t len) {
    const char *l = c->listen, *colon = strrchr(l, ':');
    const char *port = colon ? colon + 1 : "80";
    size_t hl = colon ? (size_t)(colon - l) : strlen(l);
    if (hl == 0 || (hl == 7 && strncmp(l, "0.0.0.0", 7) == 0))
        snprintf(out, len, "http://127.0.0.1:%s", port);
    else if (hl == 4 && strncmp(l, "[::]", 4) == 0)
        snprintf(out, len, "http://[::1]:%s", port);
    else
        snprintf(out, len, "http://%.*s:%s", (int)hl, l, port);
}

/* One character of cli_put_safe/cli_safe_text: SIZE_MAX stops (cut). */
static size_t safe_step(const unsigned char *p, size_t *chars, size_t max, char *out) {
    if ((*p & 0xC0) != 0x80 && max && ++*chars > max) return SIZE_MAX;
    *out = *p < 0x20 || *p == 0x7f ? '?' : (char)*p;
    return 1;
}

void cli_put_safe(FILE *f, const char *s, size_t max_chars) {
    size_t chars = 0;
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        char ch;
        if (safe_step(p, &chars, max_chars, &ch) == SIZE_MAX) {
            fputs("...", f);
            return;
        }
        fputc(ch, f);
    }
}

void cli_safe_text(char *out, size_t n, const char *s, size_t max_chars) {
    size_t i = 0, chars = 0;
    if (!n) return;
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p && i + 4 < n; p++) {
        if (safe_step(p, &chars, max_chars, out + i) == SIZE_MAX) {
            memcpy(out + i, "...", 3);
            i += 3;
            break;
        }
        i++;
    }
    out[i] = 0;
}
