/* httpc: an HTTP/1.1 response parser for moonport.http, with llhttp. Pure:
 * no fd, no libev, no Lua. It is fed a backend's bytes in chunks of any size
 * and collects the status, the headers (names lower-cased, values without
 * their surrounding white space, in the order received) and the body
 * (chunked transfer coding decoded by llhttp), and says when the response is
 * complete: at its Content-Length, its last chunk, or (neither given) at the
 * end of the connection, which the caller reports with httpc_eof. A backend
 * is not trusted: the head (status line, headers, interim 1xx responses and
 * chunked trailers) and the body each have a size limit, and no input makes
 * it hold more than those limits plus a few bytes. */
#ifndef MOONPORT_HTTPC_H
#define MOONPORT_HTTPC_H

#include <stddef.h>

/* Results of httpc_feed and httpc_eof. */
enum { HTTPC_NEED_MORE = 0, HTTPC_DONE = 1, HTTPC_ERROR = -1 };

/* The defaults the Lua side uses when an app gives none. */
enum { HTTPC_MAX_HEAD = 64 * 1024, HTTPC_MAX_BODY = 16 * 1024 * 1024 };

struct httpc;

/* A parser for one response. max_head bounds the bytes of the head,
 * max_body those of the decoded body; no_body says the request was HEAD
 * (its response has headers only). NULL when out of memory. */
struct httpc *httpc_new(size_t max_head, size_t max_body, int no_body);
void httpc_free(struct httpc *p); /* NULL is a no-op */

/* Parse len more bytes. Returns HTTPC_NEED_MORE (all len bytes taken),
 * HTTPC_DONE (the response is complete; *used says how many of the len
 * bytes it took: any after that are not part of it) or HTTPC_ERROR
 * (httpc_error says why; the parser takes nothing more). Once it has
 * returned DONE or ERROR, it keeps returning that and takes nothing. */
int httpc_feed(struct httpc *p, const char *data, size_t len, size_t *used);

/* The backend closed the connection: DONE if that ends the response (a body
 * delimited by the end of the connection), otherwise ERROR ("closed": the
 * response had not ended). */
int httpc_eof(struct httpc *p);

/* What to read next for the response to go on without reading past its
 * end: 0 for "a line" (the head, a chunk size, a chunk's CRLF, trailers),
 * otherwise at most that many bytes (the rest of a Content-Length body or of
 * a chunk, or a read-to-the-end body: any amount, answered by at most the
 * caller's own buffer size given as cap). Meaningful while NEED_MORE. */
size_t httpc_want(const struct httpc *p, size_t cap);

/* The final status (after an interim 1xx, the one that followed), 0 before
 * the status line. */
int httpc_status(const struct httpc *p);

/* Once DONE: whether the connection may carry another request (HTTP/1.1
 * without Connection: close, and a body that did not end with the
 * connection). */
int httpc_keep_alive(const struct httpc *p);

/* The headers, in order: *cursor starts at NULL; each call sets *name and
 * *value (NUL-terminated; the value's length in *vlen) and returns 1, or
 * returns 0 after the last. Names are lower-case; a header that appears
 * twice appears twice. Valid until httpc_free. */
int httpc_header_next(const struct httpc *p, const char **cursor, const char **name,
                      const char **value, size_t *vlen);

/* The body so far (all of it once DONE). */
const char *httpc_body(const struct httpc *p, size_t *len);

/* Why it failed: "body too large", "closed", "bad response: <why>" (llhttp's
 * reason, or "head too large"), "out of memory"; "" while it has not. */
const char *httpc_error(const struct httpc *p);

#endif
