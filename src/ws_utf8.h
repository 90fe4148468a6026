/* ws_utf8: an incremental UTF-8 validator (RFC 3629) whose state carries
 * across calls, so a text message split over reads and fragments is checked
 * as one stream and rejected at its first invalid byte. Pure: no allocation,
 * no I/O, no global state. */
#ifndef MOONPORT_WS_UTF8_H
#define MOONPORT_WS_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* The validator's whole state. Zero-initialised (or ws_utf8_reset) means "at
 * a character boundary". Opaque: callers only reset, feed and ask. */
struct ws_utf8 {
    uint8_t state; /* where in a character the stream is: see ws_utf8.c */
};

enum {
    WS_UTF8_OK = 0,       /* everything fed so far is valid */
    WS_UTF8_INVALID = -1, /* a byte that can never be part of valid UTF-8 */
};

void ws_utf8_reset(struct ws_utf8 *u);

/* Feed len bytes. Returns WS_UTF8_OK if they continue a valid stream (the
 * stream may still end inside a character), WS_UTF8_INVALID if any of them
 * makes it invalid (so a message fails at the piece holding its first bad
 * byte). After WS_UTF8_INVALID the state stays invalid until reset. Has an
 * ASCII fast path. */
int ws_utf8_feed(struct ws_utf8 *u, const uint8_t *p, size_t len);

/* 1 if the stream fed so far ends on a character boundary (a message may
 * end here), 0 if it ends inside a multi-byte character. */
int ws_utf8_complete(const struct ws_utf8 *u);

/* One-shot check of a whole buffer: 1 if it is complete valid UTF-8. */
int ws_utf8_valid(const uint8_t *p, size_t len);

#endif
