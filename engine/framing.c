/* framing.c -- where a request ends, judged once (see framing.h). */
#include "nerve/framing.h"

#include <civetweb.h>
#include <string.h>
#include <strings.h>

/* What head_check found. */
enum { HEAD_WHOLE, HEAD_CUT, HEAD_OVERRUN };

/* CivetWeb stops reading header lines at the 64th (MG_MAX_HEADERS), at an
 * obsolete line folding (a line starting with a space, RFC 9112 §5.2), and
 * at a line it cannot read as a header; and it ends a head only at LF LF or
 * CR LF CR LF, so after a header line ending in a bare LF, "\r\n" (the empty
 * line to RFC 9112 §2.2 and to a proxy in front) does not end it: the next
 * request is taken as part of this head and never answered. What follows
 * the last header CivetWeb kept is seen by no one here, though a proxy in
 * front may have read a Content-Length or a whole request there.
 *
 * CivetWeb parses the head in place, turning each line end (CR and LF) into
 * NULs: after the last value come its one or two line-end bytes, then the
 * line that must be the empty one: CR then the head's last LF (NUL), or that
 * LF alone (NUL). A byte other than NUL right after the first of them means
 * a bare LF followed by more head. After two NULs (CR LF, or LF and the LF
 * ending the head) the next bytes may be past the head (the body, the next
 * request, what an earlier request left in CivetWeb's buffer), so only a
 * space there is taken as a sign, and then the connection is merely closed.
 * Without headers the same holds after the request line, whose line end
 * (and any white space after it) CivetWeb turned into NULs: one NUL cannot
 * have ended the head.
 *
 * HEAD_CUT (an obsolete folding, 64 lines: answered, then closed),
 * HEAD_OVERRUN (a line after the headers that is not their end: refused),
 * or HEAD_WHOLE. */
static int head_check(const struct mg_request_info *ri) {
    if (ri->num_headers >= MG_MAX_HEADERS) return HEAD_CUT;
    const char *e;
    if (ri->num_headers == 0) {
        e = ri->http_version + strlen(ri->http_version);
        return e[1] != '\0' ? HEAD_OVERRUN : HEAD_WHOLE;
    }
    const char *v = ri->http_headers[ri->num_headers - 1].value;
    e = v + strlen(v); /* the last line's CR or LF */
    /* LF, then the next line, which is not a LF (that would be NUL). */
    if (e[1] != '\0') return e[1] == ' ' ? HEAD_CUT : HEAD_OVERRUN;
    /* CR LF then the next line, or LF and the LF that ends the head. Read
     * past the head only well inside CivetWeb's 16 KiB buffer
     * (max_request_size), which starts at or before the method. A head this
     * long is closed after the answer anyway. */
    if (e + 2 - ri->request_method >= 15 * 1024) return HEAD_CUT;
    return e[2] == ' ' || e[2] == '\t' ? HEAD_CUT : HEAD_WHOLE;
}

/* 1 when header H's line had white space between its name and the colon
 * ("Transfer-Encoding : chunked"), which RFC 9112 §5.1 says a server must
 * refuse with 400: a proxy in front may read the name otherwise. CivetWeb
 * drops such spaces, turning them and the colon into NULs, and leaves the
 * spaces after the colon in place (checked against CivetWeb 1.15: "Name:v",
 * "Name: v" give "Name\0v", "Name\0 v"; "Name : v" gives "Name\0\0 v"; a tab
 * before the colon it refuses itself). So a NUL right after the name's own
 * NUL, before the value, was a space before the colon. */
static int space_before_colon(const struct mg_header *h) {
    const char *e = h->name + strlen(h->name);
    return h->value > e + 1 && e[1] == '\0';
}

/* 1 when V is a Content-Length value RFC 9112 §6.2 allows: 1*DIGIT (the
 * optional whitespace after it is allowed too). Not "+41", " 41x", "-1",
 * "0x10", "", "41, 42". */
static int length_valid(const char *v) {
    size_t n = strspn(v, "0123456789");
    if (n == 0) return 0;
    while (v[n] == ' ' || v[n] == '\t') n++;
    return v[n] == '\0';
}

/* The digits of a Content-Length value, for comparing two of them. */
static size_t length_digits(const char *v) {
    return strspn(v, "0123456789");
}

/* RFC 9112 §6.1-6.3: one reading of where this request ends, checked on the
 * header lines CivetWeb parsed (every one, repeats included) before any
 * body is read; and §5.1, no white space before a header's colon (see
 * framing.h). */
framing_verdict framing_check(const struct mg_request_info *ri, const char **why_out) {
    const char *cl = NULL, *why = NULL;
    int te = 0;
    for (int i = 0; i < ri->num_headers && !why; i++) {
        const char *n = ri->http_headers[i].name, *v = ri->http_headers[i].value;
        if (space_before_colon(&ri->http_headers[i])) {
            why = "white space between a header name and its colon";
        } else if (strcasecmp(n, "Content-Length") == 0) {
            if (!length_valid(v))
                why = "Content-Length must be a decimal number of bytes, digits only";
            else if (cl && (length_digits(cl) != length_digits(v) ||
                            memcmp(cl, v, length_digits(v)) != 0))
                why = "two different Content-Length headers";
            cl = v;
        } else if (strcasecmp(n, "Transfer-Encoding") == 0) {
            /* CivetWeb refuses codings it does not know, reads the first
             * header only, and takes "identity" for no coding at all. */
            if (te++)
                why = "more than one Transfer-Encoding header";
            else if (strcasecmp(v, "chunked") != 0)
                why = "Transfer-Encoding must be chunked";
        }
    }
    if (!why && te && cl) why = "both Transfer-Encoding and Content-Length: send one of them";
    if (!why && te && strcmp(ri->http_version, "1.0") == 0)
        why = "Transfer-Encoding in an HTTP/1.0 request";
    int head = why ? HEAD_WHOLE : head_check(ri);
    if (head == HEAD_OVERRUN) why = "a line after the headers that does not end the head";
    *why_out = why;
    if (why) return FRAMING_REFUSE;
    return head == HEAD_CUT ? FRAMING_CLOSE_AFTER : FRAMING_OK;
}
