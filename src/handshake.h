/* handshake: the opening handshake of RFC 6455, section 4.2. Bytes of an
 * HTTP/1.1 request head go in (parsed by llhttp, the one parser that decides
 * what the request says); out comes either a request with validated headers
 * or the exact HTTP status to answer with. It also computes
 * Sec-WebSocket-Accept and writes the response heads. Pure: no sockets, no
 * libev, no Lua; a request is one 2 KiB block from slabs of its own
 * (mapped apart from the heap, so that a burst of handshakes leaves no
 * holes between the connections' blocks, and given back when the burst is
 * over); only a head that outgrows the block mallocs more. */
#ifndef MOONPORT_HANDSHAKE_H
#define MOONPORT_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

struct hs_request;

struct hs_header {
    const char *name; /* lowercase, NUL-terminated */
    const char *value; /* NUL-terminated, surrounding whitespace trimmed */
    size_t value_len;
};

/* hs_feed results. */
enum {
    HS_NEED_MORE = 0, /* all bytes consumed, the head is not complete yet */
    HS_DONE = 1,      /* the head is complete; *consumed says where it ended */
    HS_ERROR = -1,    /* the request is bad: hs_status() and hs_error() say how */
};

/* max_head bounds the request line plus headers in bytes; max_headers the
 * number of header lines. Returns NULL when out of memory. */
struct hs_request *hs_new(size_t max_head, unsigned max_headers);
void hs_free(struct hs_request *r);
/* hs_free keeps a slab of free blocks for the next handshakes; this
 * unmaps the slabs whose blocks are all free (at exit). */
void hs_pool_drain(void);

/* Parse more of the request. *consumed is how many bytes of data belong to
 * the request (on HS_DONE, the bytes after it are the client's first frames
 * and are the caller's). A head over max_head or max_headers: HS_ERROR with
 * status 431. Malformed HTTP, header names that are not RFC 9110 tokens,
 * values with control characters: HS_ERROR with status 400. Headers whose
 * names contain '_' are dropped (CVE-2015-0219). */
int hs_feed(struct hs_request *r, const char *data, size_t len, size_t *consumed);

/* After HS_ERROR: the HTTP status to answer with and why (for the log). */
int hs_status(const struct hs_request *r);
const char *hs_error(const struct hs_request *r);

/* The target of the request line once it has all arrived, also when the
 * head then failed or never finished (for log lines); else NULL. */
const char *hs_target_read(const struct hs_request *r);

/* After HS_DONE. */
const char *hs_method(const struct hs_request *r); /* "GET" */
const char *hs_target(const struct hs_request *r); /* "/path?query" as sent */
size_t hs_header_count(const struct hs_request *r);
const struct hs_header *hs_header_at(const struct hs_request *r, size_t i);
/* The first header with this lowercase name, or NULL. */
const char *hs_header_get(const struct hs_request *r, const char *name);

/* What a valid upgrade request asks for. Pointers into the request. */
struct hs_upgrade {
    const char *key;         /* Sec-WebSocket-Key, 24 base64 chars */
    const char *protocols;   /* Sec-WebSocket-Protocol, comma list, or NULL */
    const char *extensions;  /* Sec-WebSocket-Extensions, or NULL */
};

/* Check that the request is a WebSocket upgrade. Returns 0 and fills *up,
 * or the HTTP status to answer with: 405 (not GET), 426 (a plain HTTP
 * request, or a version other than 13: answer with Sec-WebSocket-Version:
 * 13), 400 (missing or malformed Upgrade, Connection or key, HTTP < 1.1).
 * *why says which rule failed. */
int hs_check_upgrade(const struct hs_request *r, struct hs_upgrade *up, const char **why);

/* 1 if key is 24 base64 characters that decode to exactly 16 bytes. */
int hs_key_valid(const char *key);

/* Sec-WebSocket-Accept for a key: base64(SHA-1(key + GUID)), 28 chars + NUL. */
void hs_accept_key(const char *key, char out[29]);

/* Split a comma-separated header list (Sec-WebSocket-Protocol): calls fn for
 * each non-empty, whitespace-trimmed element. */
void hs_list_each(const char *list, void (*fn)(const char *item, size_t len, void *ud), void *ud);

/* The standard reason phrase for a status ("Not Found"), or "Unknown". */
const char *hs_reason(int status);

#endif
