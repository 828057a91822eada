/* webui.c -- the status page's files, embedded (see webui.h).
 *
 * Why .incbin: the files stay real files (edited, diffed and linted as
 * HTML, JS and CSS), and the assembler copies them into .rodata at build
 * time, with no generator script and no extra package (xxd is not in the
 * build dependencies). Paths are relative to the directory make runs in,
 * the repository root, as every other path of the build.
 */
#include "nerve/webui.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* One embedded file: SYM and SYM_end bracket its bytes. */
#define WEBUI_EMBED(sym, file) \
    __asm__(".section .rodata\n" \
            ".balign 16\n" \
            ".type " #sym ", @object\n" #sym ":\n" \
            ".incbin \"" file "\"\n" #sym "_end:\n" \
            ".byte 0\n" \
            ".previous\n"); \
    extern const unsigned char sym[], sym##_end[]

WEBUI_EMBED(webui_status_html, "engine/status/status.html");
WEBUI_EMBED(webui_status_js, "engine/status/status.js");
WEBUI_EMBED(webui_status_css, "engine/status/status.css");

static webui_asset assets[] = {
    { "status.html", "text/html; charset=utf-8", webui_status_html, 0, NULL },
    { "status.js", "text/javascript; charset=utf-8", webui_status_js, 0, NULL },
    { "status.css", "text/css; charset=utf-8", webui_status_css, 0, NULL },
};
static char etags[sizeof assets / sizeof assets[0]][24];
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Lengths and ETags (FNV-1a 64 of the bytes), once. */
static void init(void) {
    const unsigned char *ends[] = { webui_status_html_end, webui_status_js_end,
                                    webui_status_css_end };
    for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++) {
        assets[i].len = (size_t)(ends[i] - assets[i].data);
        uint64_t h = 14695981039346656037ull;
        for (size_t j = 0; j < assets[i].len; j++) h = (h ^ assets[i].data[j]) * 1099511628211ull;
        snprintf(etags[i], sizeof etags[i], "\"%016llx\"", (unsigned long long)h);
        assets[i].etag = etags[i];
    }
}

const webui_asset *webui_find(const char *name) {
    pthread_once(&once, init);
    for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++)
        if (strcmp(assets[i].name, name) == 0) return &assets[i];
    return NULL;
}
