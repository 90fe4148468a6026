/* compress: the server's permessage-deflate (RFC 7692) contexts, shared by
 * every connection. moonport always answers with server_no_context_takeover
 * and client_no_context_takeover, so each message is compressed and
 * inflated on its own: one inflater and one deflater per window size serve
 * all connections, and a connection holds no zlib state at all, only which
 * window it agreed to. A message sent to many connections in one go (a
 * broadcast) is compressed once. The codec itself is ws_deflate.c. */
#ifndef MOONPORT_COMPRESS_H
#define MOONPORT_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

#include "ws_deflate.h"

struct config;
struct compress;

/* NULL when out of memory. The zlib contexts are made on first use. */
struct compress *compress_new(const struct config *cfg);
void compress_free(struct compress *z);

/* Choose among a client's offers (the Sec-WebSocket-Extensions value, or
 * NULL). WS_DEFLATE_ACCEPTED: *window is the window our deflater must use
 * for this connection and response the header value for the 101. */
int compress_negotiate(struct compress *z, const char *offers, int *window,
                       char response[WS_DEFLATE_RESPONSE_MAX]);

/* Inflate one whole compressed message, at most max bytes of it. Returns 0
 * with *out, *out_len valid until compress_inflated_done, or a negative
 * error (ws_deflate_close_code says which close code). */
int compress_inflate(struct compress *z, const uint8_t *in, size_t len, uint64_t max,
                     const uint8_t **out, size_t *out_len);
void compress_inflated_done(struct compress *z);

/* Compress a message for a connection with this window. Returns 1 with
 * *out, *out_len (valid until the next call), or 0: send it as it is
 * (shorter than compression.threshold, compression would not make it
 * smaller, or out of memory: with no context takeover any message may go
 * uncompressed). */
int compress_deflate(struct compress *z, int window, const uint8_t *in, size_t len,
                     const uint8_t **out, size_t *out_len);

/* Once per loop iteration: forget the last compressed message, so the
 * cache never holds on to a large one. */
void compress_trim(struct compress *z);

#endif
