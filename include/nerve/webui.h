/* webui.h -- the status page's files, built into the binary.
 *
 * The page (GET /status) is three plain files under engine/status/ (HTML,
 * JavaScript, CSS), embedded at build time with the assembler's .incbin:
 * no build step, no framework, no CDN, nothing to install beside the
 * binary, and the page always matches the daemon that serves it. The
 * Makefile makes webui.o depend on those files, so editing one rebuilds.
 *
 * A leaf module. Ownership: the assets are static and never freed.
 * Thread-safety: every function (read-only data).
 */
#ifndef NERVE_WEBUI_H
#define NERVE_WEBUI_H

#include <stddef.h>

typedef struct webui_asset {
    const char *name; /* "status.html", "status.js", "status.css" */
    const char *type; /* its Content-Type */
    const unsigned char *data;
    size_t len;
    const char *etag; /* a quoted strong validator of DATA, for If-None-Match */
} webui_asset;

/* The asset called NAME (no directory), NULL when there is none. */
const webui_asset *webui_find(const char *name);

/* The Content-Security-Policy every page asset is served with: only this
 * origin, no inline script or style, no framing, no form posts. */
#define WEBUI_CSP \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " \
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

#endif
