/* ws_frame: the RFC 6455 frame codec, server side. It turns bytes read from
 * a client into chunks of unmasked payload and enforces every framing rule
 * (masking, opcodes, reserved bits, control frame limits, fragmentation,
 * UTF-8 of text and close reasons, message size and fragment count). It also
 * writes server frame headers. Pure: no fd, no libev, no Lua, no allocation.
 * The parser keeps no input bytes, only a few dozen bytes of state: a frame
 * header or a control frame that is not complete yet is left unconsumed in
 * the caller's buffer, so a connection needs a buffer only while one is
 * pending (at most WS_FRAME_TAIL_MAX bytes). */
#ifndef MOONPORT_WS_FRAME_H
#define MOONPORT_WS_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "ws_utf8.h"

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close codes the codec reports (RFC 6455 section 7.4.1). */
enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005, /* never on the wire: "close had no code" */
    WS_CLOSE_ABNORMAL = 1006,  /* never on the wire: "no close frame" */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_RESTART = 1012, /* "service restart": reconnect, it comes back */
    WS_CLOSE_TRY_AGAIN = 1013, /* the server is overloaded: try again later */
};

/* Negative results of ws_parser_feed and ws_close_parse. Each maps to the
 * close code that fails the connection: ws_frame_error_code(). */
enum ws_frame_err {
    WS_ERR_PROTOCOL = -1, /* 1002: a framing rule broken */
    WS_ERR_UTF8 = -2,     /* 1007: invalid UTF-8 in a text message or close reason */
    WS_ERR_TOO_BIG = -3,  /* 1009: message over max_message, or over max_fragments */
};

/* Flags of a chunk. */
enum {
    WS_CHUNK_MSG_START = 1, /* first chunk of a data message */
    WS_CHUNK_MSG_END = 2,   /* last chunk of a data message (FIN frame, all its payload) */
};

/* What ws_parser_feed hands back: nothing, a piece of a data message, or a
 * whole control frame. data points into the bytes of the caller's buffer
 * that the call consumed, unmasked in place; it is valid as long as the
 * caller keeps that buffer. */
struct ws_chunk {
    uint8_t opcode;  /* 0 = no chunk; WS_OP_TEXT/BINARY for data (the message's
                        opcode, also for continuation frames); CLOSE/PING/PONG */
    uint8_t flags;   /* WS_CHUNK_* for data chunks */
    uint8_t rsv;     /* the RSV bits of the frame the chunk came from (0x40 = RSV1) */
    const uint8_t *data;
    size_t len;
};

/* The most payload a message can have, whatever max_message says: a parser
 * counts it in 32 bits, since every byte of a parser is paid by every
 * connection. A longer message fails as one over max_message does. */
#define WS_MESSAGE_MAX UINT32_MAX

/* Limits of a parser. Many parsers share one (a connection's parser points
 * at the server's), so a connection pays 8 bytes for them, not 16. */
struct ws_limits {
    uint64_t max_message;   /* bytes of payload in one message; 0: WS_MESSAGE_MAX */
    uint32_t max_fragments; /* frames in one message; 0 = no limit */
};

struct ws_parser {
    /* Set by the caller before the first feed (ws_parser_init). */
    const struct ws_limits *limits; /* must outlive the parser */
    uint8_t rsv_allowed;    /* RSV bits an extension negotiated (0x40 for RSV1) */

    /* State: private to ws_frame.c. Only a data frame's payload spans
     * calls, so only data frames leave state here. */
    uint8_t frame_fin;      /* the current data frame ends its message */
    uint8_t frame_rsv;      /* RSV bits of the current data frame */
    uint8_t mask_pos;       /* index into mask of the next payload byte */
    uint8_t mask[4];
    uint8_t msg_op;         /* TEXT/BINARY while a message is open, else 0 */
    uint8_t msg_rsv;        /* RSV bits of the message's first frame */
    struct ws_utf8 utf8;    /* state across a text message's chunks */
    uint8_t why;            /* after a negative return: why (ws_parser_error) */
    uint32_t msg_frames;    /* frames of the open message so far */
    uint32_t frame_left;    /* payload bytes of the current data frame still to come */
    uint32_t msg_len;       /* payload bytes of the open message so far */
};

/* The most bytes ws_parser_feed leaves unconsumed at the end of its input:
 * one short of the largest control frame (a 6-byte header and 125 bytes of
 * payload). A data frame header is at most 14 bytes. */
#define WS_FRAME_TAIL_MAX (6 + 125 - 1)

/* A parser that points at limits the caller keeps (the server's, shared by
 * every connection's parser): they must outlive it. */
void ws_parser_init_shared(struct ws_parser *p, const struct ws_limits *limits);
/* A parser with its own limits, for tests and tools: each distinct pair is
 * kept in a static table of WS_LIMITS_OWN entries (no allocation); more
 * distinct pairs than that in one process is a programming error (abort). */
#define WS_LIMITS_OWN 64
void ws_parser_init(struct ws_parser *p, uint64_t max_message, uint32_t max_fragments);

/* Parse client bytes. buf is modified: payload is unmasked in place, but
 * only in the bytes the call consumes. Consumes bytes until it has one chunk
 * to report or it cannot go on, fills *out and returns the number of bytes
 * consumed (>= 0); out->opcode is 0 when there is no chunk. Call again with
 * the rest of the buffer until it returns with no chunk. Then either all of
 * len was consumed (a data frame's payload is streamed as it comes: the
 * parser holds none of it back), or the input ended inside a frame header or
 * inside a control frame: those bytes are not consumed, the count is smaller
 * than len, and the caller must present the unconsumed tail again, unchanged
 * and followed by more bytes, on the next call. The tail is at most
 * WS_FRAME_TAIL_MAX bytes.
 *
 * Returns WS_ERR_* on a violation; ws_parser_error then says why, and the
 * parser must not be fed again. The
 * bytes seen decide the error, not how they were split: a frame header is
 * checked as far as it has arrived every time it is presented.
 *
 * Text is validated as it arrives, so an invalid byte fails the message at
 * once, not when it ends. A frame header that would take the message over
 * max_message fails before any of its payload is read, as soon as its length
 * is in (the mask key is not needed). A text message with RSV1 set
 * (compressed) is not UTF-8 checked here: the caller checks it after
 * inflating. */
long ws_parser_feed(struct ws_parser *p, uint8_t *buf, size_t len, struct ws_chunk *out);

/* After a negative ws_parser_feed: why, as a string that lives as long as
 * the program. NULL if the parser has not failed. */
const char *ws_parser_error(const struct ws_parser *p);

/* Validate a close frame's payload. Empty: code 1005, no reason. One byte,
 * a code that may not be sent (RFC 6455 7.4, IANA registry), or invalid
 * UTF-8 in the reason: WS_ERR_PROTOCOL or WS_ERR_UTF8. */
int ws_close_parse(const uint8_t *payload, size_t len, uint16_t *code, const uint8_t **reason,
                   size_t *reason_len);

/* 1 if an endpoint may send this close code in a close frame. */
int ws_close_code_valid(unsigned code);

/* The close code that fails a connection for a WS_ERR_* result. */
uint16_t ws_frame_error_code(int err);

/* Write the header of an unmasked server frame into out (at most 10 bytes)
 * and return its length. fin_rsv_op is the first byte: 0x80 for FIN, RSV
 * bits, opcode. */
static inline size_t ws_frame_header(uint8_t out[10], uint8_t fin_rsv_op, uint64_t payload_len)
{
    out[0] = fin_rsv_op;
    if (payload_len <= 125) {
        out[1] = (uint8_t)payload_len;
        return 2;
    }
    if (payload_len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(payload_len >> 8);
        out[3] = (uint8_t)payload_len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(payload_len >> (56 - 8 * i));
    return 10;
}

/* The length ws_frame_header gives for payload_len: 2, 4 or 10. */
static inline size_t ws_frame_header_size(uint64_t payload_len)
{
    return payload_len <= 125 ? 2 : payload_len <= 0xFFFF ? 4 : 10;
}

/* Unmask len bytes in place with key, starting at key index *pos, which it
 * advances. Word-at-a-time; exposed for the tests and the benchmark. */
void ws_unmask(uint8_t *p, size_t len, const uint8_t key[4], uint8_t *pos);

#endif
