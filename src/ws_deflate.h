/* ws_deflate: the pure part of RFC 7692 permessage-deflate, server side. It
 * owns the negotiation (Sec-WebSocket-Extensions offers in, the agreed
 * parameters and the exact response value out) and the zlib contexts that
 * inflate and deflate whole messages. Pure: no sockets, no libev, no Lua;
 * it allocates only zlib state and the output it appends to a struct buf.
 * It does not know about frames: the caller gathers a message's payload and
 * sets or checks RSV1 (see "For the integrator" at the end). */
#ifndef MOONPORT_WS_DEFLATE_H
#define MOONPORT_WS_DEFLATE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* ---- Negotiation (RFC 7692 sections 5 and 7.1) ---- */

/* What the server is willing to agree to. ws_deflate_policy_init() fills in
 * the defaults; window bits outside 9..15 are clamped into that range
 * (zlib's raw deflate has no 8-bit window). */
struct ws_deflate_policy {
    int enabled;                    /* 0: never negotiate (default 1) */
    int server_max_window_bits;     /* our compressor's largest window (default 15) */
    int server_no_context_takeover; /* 1: our compressor starts every message
                                       empty, so one deflater serves every
                                       connection (default 1) */
    int client_no_context_takeover; /* 1: ask the client to start every message
                                       empty, so one inflater serves every
                                       connection (default 1; 7.1.1.2 allows
                                       the server to ask unprompted) */
    int client_max_window_bits;     /* the largest client window we accept,
                                       sent only when the client offered the
                                       parameter (7.1.2.2; default 15) */
    int mem_level;                  /* deflateInit2 memLevel, 1..9 (default 8) */
    int level;                      /* compression level, 0..9 or -1 for zlib's
                                       default, 6 (default -1) */
};

void ws_deflate_policy_init(struct ws_deflate_policy *p);

/* The agreed parameters of one connection. */
struct ws_deflate_params {
    uint8_t server_no_context_takeover; /* reset our deflater after every message */
    uint8_t client_no_context_takeover; /* the client resets: inflate each message empty */
    uint8_t server_max_window_bits;     /* 8..15: create the deflater with this */
    uint8_t client_max_window_bits;     /* 8..15: create the inflater with this;
                                           15 when the client was not limited */
};

/* The longest response ws_deflate_negotiate writes, with its NUL. */
#define WS_DEFLATE_RESPONSE_MAX 160

/* ws_deflate_negotiate results. */
enum {
    WS_DEFLATE_ACCEPTED = 1,  /* *out and response are filled in */
    WS_DEFLATE_DECLINED = 0,  /* no acceptable permessage-deflate offer (or
                                 none at all, or policy->enabled is 0) */
    WS_DEFLATE_MALFORMED = -1 /* the header does not follow the grammar of
                                 RFC 6455 section 9.1: nothing is accepted */
};

/* Pick the first permessage-deflate offer in offers (the
 * Sec-WebSocket-Extensions value, repeated header lines joined with ", ";
 * NULL when there is none) that the server can accept under policy. Offers
 * with an unknown or repeated parameter or an invalid value are declined
 * and the next one is tried (RFC 7692 section 7); other extensions are
 * ignored. On
 * WS_DEFLATE_ACCEPTED, *out holds the agreed parameters and response the
 * NUL-terminated value for the 101's Sec-WebSocket-Extensions header, such as
 * "permessage-deflate; server_no_context_takeover; client_max_window_bits=15".
 * response_len must be at least WS_DEFLATE_RESPONSE_MAX (otherwise the offer
 * is declined). On the other results *out and response are zeroed.
 *
 * WS_DEFLATE_MALFORMED: RFC 6455 section 9.1 says a server that receives a
 * header not conforming to its grammar MUST fail the connection; the caller
 * may answer 400, or treat it as WS_DEFLATE_DECLINED and go on without
 * compression. */
int ws_deflate_negotiate(const char *offers, const struct ws_deflate_policy *policy,
                         struct ws_deflate_params *out, char *response, size_t response_len);

/* ---- Errors of ws_inflate_message and ws_deflate_message ---- */

/* Besides WS_ERR_TOO_BIG (ws_frame.h, -3): distinct from every WS_ERR_*. */
enum ws_deflate_err {
    WS_DEFLATE_ERR_DATA = -16,  /* corrupt or truncated compressed data: close 1007 */
    WS_DEFLATE_ERR_NOMEM = -17, /* out of memory: close 1011 */
};

/* The close code that fails a connection for a negative result of
 * ws_inflate_message or ws_deflate_message. */
uint16_t ws_deflate_close_code(int err);

/* ---- Inflate: client messages (RFC 7692 section 7.2.2) ---- */

struct ws_inflater;

/* window_bits: the agreed client_max_window_bits, 8..15 (an 8 is inflated
 * with a 9-bit window: a larger window than the client's is always fine).
 * no_context_takeover: the agreed client_no_context_takeover; when set,
 * every message is inflated from an empty window, so one inflater can serve
 * every connection; otherwise the inflater belongs to one connection and
 * keeps its window from message to message. NULL when out of memory or
 * window_bits is out of range.
 *
 * Memory: about 7 KiB of zlib state at once, plus a 2^window_bits window
 * allocated at the first message (32 KiB at 15): about 39 KiB in all.
 * ws_inflater_memory() says exactly. */
struct ws_inflater *ws_inflater_new(int window_bits, int no_context_takeover);
/* NULL is a no-op. */
void ws_inflater_free(struct ws_inflater *z);
/* Forget the window: the next message starts empty. */
void ws_inflater_reset(struct ws_inflater *z);
/* Bytes the inflater holds (its struct and zlib's allocations). */
size_t ws_inflater_memory(const struct ws_inflater *z);

/* Inflate one whole message: in is the concatenated payload of all its
 * frames (the first had RSV1 set). The 4 octets 0x00 0x00 0xff 0xff are
 * appended here (7.2.2), not by the caller. Appends the message to out and
 * returns 0. Returns WS_ERR_TOO_BIG as soon as the message would be longer
 * than max bytes (0: no limit), having written at most max + 1 of them, so
 * a small input that inflates to gigabytes costs at most max plus one step
 * (16 KiB) of output, rounded up by buf's doubling; WS_DEFLATE_ERR_DATA for
 * corrupt data, or data that does not end on a block boundary once the 4
 * octets are appended (an empty payload is corrupt: the empty message is
 * the single byte 0x00, 7.2.3.6); WS_DEFLATE_ERR_NOMEM. On an error out is
 * left as it was, and an inflater that keeps context must not be used
 * again (the connection fails anyway). */
int ws_inflate_message(struct ws_inflater *z, const uint8_t *in, size_t len, struct buf *out,
                       uint64_t max);

/* ---- Deflate: server messages (RFC 7692 section 7.2.1) ---- */

struct ws_deflater;

/* window_bits: the agreed server_max_window_bits, 8..15 (8: Huffman coding
 * only, which refers back to nothing: zlib has no 8-bit window); mem_level 1..9;
 * level 0..9 or -1 (zlib's default); no_context_takeover: the agreed
 * server_no_context_takeover: every message starts from an empty window, so
 * one deflater can serve every connection. NULL when out of memory or an
 * argument is out of range.
 *
 * Memory: 2^(window_bits+2) + 2^(mem_level+9) bytes plus about 6 KiB of zlib
 * state: about 262 KiB at 15 and 8, all of it allocated at once. A deflater
 * per connection (context takeover) therefore costs that much per
 * connection; ws_deflater_memory() says exactly. */
struct ws_deflater *ws_deflater_new(int window_bits, int mem_level, int level,
                                    int no_context_takeover);
/* NULL is a no-op. */
void ws_deflater_free(struct ws_deflater *z);
/* Bytes the deflater holds (its struct and zlib's allocations). */
size_t ws_deflater_memory(const struct ws_deflater *z);

/* Compress one whole message and append the payload to send, with RSV1 set
 * on its first frame, to out: the DEFLATE data flushed with an empty stored
 * block, without its last 4 octets 0x00 0x00 0xff 0xff (7.2.1). An empty
 * message gives the single byte 0x00 (7.2.3.6). Returns 0, or
 * WS_DEFLATE_ERR_NOMEM with out left as it was (and a deflater that keeps
 * context must not be used again).
 *
 * The payload can be longer than the message (random bytes). A deflater
 * with no_context_takeover may then send the message uncompressed instead
 * (RSV1 clear); one that keeps context must not: its window already holds
 * the message, and the client's would not. */
int ws_deflate_message(struct ws_deflater *z, const uint8_t *in, size_t len, struct buf *out);

/* ---- For the integrator ----
 *
 * - Negotiate in the handshake with hs_upgrade.extensions; on
 *   WS_DEFLATE_ACCEPTED send response as Sec-WebSocket-Extensions, and set
 *   the connection's ws_parser.rsv_allowed to 0x40 (RSV1), which is the only
 *   RSV bit the extension uses (RFC 7692 section 6). The parser already
 *   fails RSV1 on control and continuation frames with 1002 (6.1, 6.2) and
 *   does not UTF-8 check a text message with RSV1: check the inflated text
 *   with ws_utf8 (invalid: 1007).
 * - A message whose first frame has RSV1 is compressed (the rsv of its
 *   WS_CHUNK_MSG_START chunk; later chunks come from continuation frames,
 *   whose rsv is 0): gather the payload
 *   of all its frames (limit the compressed size with the parser's
 *   max_message) and call ws_inflate_message with max = max_message. A
 *   message without RSV1 is not compressed and is taken as it is (6.2).
 * - Inflater: with client_no_context_takeover one shared inflater, created
 *   with the largest window any client may use (15), serves every
 *   connection; otherwise one per connection, created at the handshake with
 *   client_max_window_bits, freed with the connection.
 * - Deflater: with server_no_context_takeover one shared deflater per
 *   (window bits) serves every connection; otherwise one per connection.
 * - Send a compressed message with RSV1 on its first frame only; control
 *   frames are never compressed (6.1).
 */

#endif
