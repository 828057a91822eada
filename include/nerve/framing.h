/* framing.h -- where an HTTP request ends, judged once, before any body is
 * read (RFC 9112 §5.1, §6.1-6.3).
 *
 * CivetWeb reads a request with both Transfer-Encoding and Content-Length as
 * chunked and takes the first of two Content-Length headers, where a proxy
 * in front may read the other one; the bytes the two disagree on would be
 * read here as a second request (request smuggling). framing_check looks at
 * every header line CivetWeb parsed (repeats included) and at the traces its
 * in-place parsing leaves (white space before a colon, a head that ran past
 * a bare LF), and says whether the request must be refused.
 *
 * Pure: reads the request info only; thread-safe.
 */
#ifndef NERVE_FRAMING_H
#define NERVE_FRAMING_H

struct mg_request_info;

typedef enum {
    FRAMING_OK = 0,      /* one reading of where the request ends */
    FRAMING_CLOSE_AFTER, /* answer it, then close: the head was cut short
                          * (an obsolete line folding, 64 header lines) */
    FRAMING_REFUSE,      /* ambiguous: answer 400 and close; *WHY says why */
} framing_verdict;

/* Judge RI's framing. On FRAMING_REFUSE, *WHY is a static sentence for the
 * client (NULL otherwise). */
framing_verdict framing_check(const struct mg_request_info *ri, const char **why);

#endif
