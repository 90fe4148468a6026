/* ws_frame: the RFC 6455 frame codec, server side. It owns the framing state
 * of one connection (struct ws_parser) and turns client bytes into unmasked
 * payload chunks, enforcing every framing rule on the way. It must never do
 * I/O, allocate, read outside the buffer it is given, or keep input bytes:
 * a header or control frame that is not complete is left to the caller,
 * unconsumed and untouched, to present again with more bytes. */
#include "ws_frame.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define HDR_FIN 0x80
#define HDR_RSV 0x70
#define HDR_RSV1 0x40
#define HDR_OPCODE 0x0F
#define HDR_MASK 0x80
#define HDR_LEN7 0x7F
#define CTL_MAX 125

static int op_is_control(uint8_t op)
{
    return (op & 0x08) != 0;
}

static int op_is_known(uint8_t op)
{
    return op <= WS_OP_BINARY || (op >= WS_OP_CLOSE && op <= WS_OP_PONG);
}

/* Why the parser failed, kept in the parser as one byte: an index into
 * reasons. Below 16 it is the reserved opcode the frame had. */
enum {
    WHY_RSV = 16,
    WHY_RSV1_CONTROL,
    WHY_RSV1_CONT,
    WHY_FRAGMENTED_CONTROL,
    WHY_CONT_WITHOUT_MSG,
    WHY_DATA_INSIDE_MSG,
    WHY_UNMASKED,
    WHY_CONTROL_TOO_LONG,
    WHY_LEN_HIGH_BIT,
    WHY_FRAGMENT_LIMIT,
    WHY_SIZE_LIMIT,
    WHY_UTF8,
    WHY_UTF8_CUT,
};

static const char *const reasons[] = {
    [0x3] = "reserved opcode 0x3",
    [0x4] = "reserved opcode 0x4",
    [0x5] = "reserved opcode 0x5",
    [0x6] = "reserved opcode 0x6",
    [0x7] = "reserved opcode 0x7",
    [0xB] = "reserved opcode 0xB",
    [0xC] = "reserved opcode 0xC",
    [0xD] = "reserved opcode 0xD",
    [0xE] = "reserved opcode 0xE",
    [0xF] = "reserved opcode 0xF",
    [WHY_RSV] = "RSV bits set without extension",
    [WHY_RSV1_CONTROL] = "RSV1 set on a control frame",
    [WHY_RSV1_CONT] = "RSV1 set on a continuation frame",
    [WHY_FRAGMENTED_CONTROL] = "fragmented control frame",
    [WHY_CONT_WITHOUT_MSG] = "continuation frame without a message",
    [WHY_DATA_INSIDE_MSG] = "new data frame inside a fragmented message",
    [WHY_UNMASKED] = "unmasked client frame",
    [WHY_CONTROL_TOO_LONG] = "control frame payload over 125 bytes",
    [WHY_LEN_HIGH_BIT] = "64-bit length with the high bit set",
    /* The reasons name no number: the parser has nowhere to format one.
     * The caller knows its limits. */
    [WHY_FRAGMENT_LIMIT] = "message over the fragment limit",
    [WHY_SIZE_LIMIT] = "message over the size limit",
    [WHY_UTF8] = "invalid UTF-8 in text message",
    [WHY_UTF8_CUT] = "text message ends inside a UTF-8 character",
};

static long fail(struct ws_parser *p, int err, uint8_t why)
{
    p->why = why;
    return err;
}

const char *ws_parser_error(const struct ws_parser *p)
{
    return p->why ? reasons[p->why] : NULL;
}

void ws_parser_init_shared(struct ws_parser *p, const struct ws_limits *limits)
{
    memset(p, 0, sizeof *p);
    p->limits = limits;
    ws_utf8_reset(&p->utf8);
}

void ws_parser_init(struct ws_parser *p, uint64_t max_message, uint32_t max_fragments)
{
    static struct ws_limits own[WS_LIMITS_OWN];
    static size_t nown;
    size_t i = 0;
    while (i < nown && (own[i].max_message != max_message || own[i].max_fragments != max_fragments))
        i++;
    if (i == nown) {
        if (nown == WS_LIMITS_OWN)
            abort();
        own[nown++] = (struct ws_limits){max_message, max_fragments};
    }
    ws_parser_init_shared(p, &own[i]);
}

/* Whole header length implied by its first two bytes (mask key included). */
static uint8_t header_size(const uint8_t *h)
{
    uint8_t len7 = h[1] & HDR_LEN7;

    return (uint8_t)(2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4);
}

static uint64_t header_payload_len(const uint8_t *h)
{
    uint8_t len7 = h[1] & HDR_LEN7;
    uint64_t n = 0;

    if (len7 < 126)
        return len7;
    for (int i = 0, k = len7 == 126 ? 2 : 8; i < k; i++)
        n = n << 8 | h[2 + i];
    return n;
}

/* Check every rule that the first n bytes of a frame header can decide.
 * A header that has not all arrived is checked again, further, each time it
 * is presented; the checks are pure functions of the prefix and run in a
 * fixed order, so the first rule broken is the same however the input was
 * split. */
static long header_check(struct ws_parser *p, const uint8_t *h, size_t n)
{
    if (n < 1)
        return 0;
    uint8_t op = h[0] & HDR_OPCODE, rsv = h[0] & HDR_RSV;
    int control = op_is_control(op);

    if (!op_is_known(op))
        return fail(p, WS_ERR_PROTOCOL, op);
    if (rsv & ~p->rsv_allowed)
        return fail(p, WS_ERR_PROTOCOL, WHY_RSV);
    /* An extension such as permessage-deflate marks a whole message with
     * RSV1 on its first frame; anywhere else RSV1 means nothing. */
    if ((rsv & HDR_RSV1) && control)
        return fail(p, WS_ERR_PROTOCOL, WHY_RSV1_CONTROL);
    if ((rsv & HDR_RSV1) && op == WS_OP_CONT)
        return fail(p, WS_ERR_PROTOCOL, WHY_RSV1_CONT);
    if (control && !(h[0] & HDR_FIN))
        return fail(p, WS_ERR_PROTOCOL, WHY_FRAGMENTED_CONTROL);
    if (op == WS_OP_CONT && !p->msg_op)
        return fail(p, WS_ERR_PROTOCOL, WHY_CONT_WITHOUT_MSG);
    if ((op == WS_OP_TEXT || op == WS_OP_BINARY) && p->msg_op)
        return fail(p, WS_ERR_PROTOCOL, WHY_DATA_INSIDE_MSG);

    if (n < 2)
        return 0;
    if (!(h[1] & HDR_MASK))
        return fail(p, WS_ERR_PROTOCOL, WHY_UNMASKED);
    if (control && (h[1] & HDR_LEN7) > CTL_MAX)
        return fail(p, WS_ERR_PROTOCOL, WHY_CONTROL_TOO_LONG);

    /* The length is known once the extended length bytes are in; the mask
     * key does not matter, so an oversized frame fails four bytes sooner. */
    if (n < (size_t)header_size(h) - 4)
        return 0;
    if ((h[1] & HDR_LEN7) == 127 && (h[2] & 0x80))
        return fail(p, WS_ERR_PROTOCOL, WHY_LEN_HIGH_BIT);
    if (control)
        return 0;
    uint64_t len = header_payload_len(h);
    const struct ws_limits *lim = p->limits;
    if (lim->max_fragments && p->msg_frames >= lim->max_fragments)
        return fail(p, WS_ERR_TOO_BIG, WHY_FRAGMENT_LIMIT);
    uint64_t max = lim->max_message && lim->max_message < WS_MESSAGE_MAX ? lim->max_message
                                                                         : WS_MESSAGE_MAX;
    /* msg_len never exceeds max, so the subtraction cannot wrap. */
    if (len > max - p->msg_len)
        return fail(p, WS_ERR_TOO_BIG, WHY_SIZE_LIMIT);
    return 0;
}

/* A complete, checked data frame header is in h: set up the frame it
 * announces. */
static void data_start(struct ws_parser *p, const uint8_t *h)
{
    uint8_t op = h[0] & HDR_OPCODE;

    p->frame_fin = (h[0] & HDR_FIN) != 0;
    p->frame_rsv = h[0] & HDR_RSV;
    p->frame_left = (uint32_t)header_payload_len(h); /* <= WS_MESSAGE_MAX: checked */
    memcpy(p->mask, h + header_size(h) - 4, 4);
    p->mask_pos = 0;
    if (op != WS_OP_CONT) {
        p->msg_op = op;
        p->msg_rsv = p->frame_rsv;
        p->msg_len = 0;
        p->msg_frames = 0;
        ws_utf8_reset(&p->utf8);
    }
    p->msg_frames++;
}

static long data_feed(struct ws_parser *p, uint8_t *buf, size_t len, struct ws_chunk *out)
{
    size_t n = p->frame_left < len ? (size_t)p->frame_left : len;
    int text = p->msg_op == WS_OP_TEXT && !(p->msg_rsv & HDR_RSV1);

    /* A frame with payload still to come but none in the buffer has nothing
     * to report; only a zero-length frame yields an empty chunk. */
    if (n == 0 && p->frame_left > 0)
        return 0;
    ws_unmask(buf, n, p->mask, &p->mask_pos);
    if (text && ws_utf8_feed(&p->utf8, buf, n) != WS_UTF8_OK)
        return fail(p, WS_ERR_UTF8, WHY_UTF8);

    out->opcode = p->msg_op;
    out->rsv = p->frame_rsv;
    out->data = buf;
    out->len = n;
    /* msg_len counts payload already reported, so it is 0 only until the
     * first chunk of the first frame (a zero-length first frame reports one
     * empty chunk and ends; its successors have msg_frames > 1). */
    if (p->msg_frames == 1 && p->msg_len == 0)
        out->flags |= WS_CHUNK_MSG_START;
    p->msg_len += (uint32_t)n;
    p->frame_left -= (uint32_t)n;
    if (p->frame_left == 0) {
        if (p->frame_fin) {
            if (text && !ws_utf8_complete(&p->utf8))
                return fail(p, WS_ERR_UTF8, WHY_UTF8_CUT);
            out->flags |= WS_CHUNK_MSG_END;
            p->msg_op = 0;
            p->msg_rsv = 0;
            p->msg_len = 0;
            p->msg_frames = 0;
        }
    }
    return (long)n;
}

/* At the start of a frame: consume it if enough of it is in buf, else
 * consume nothing. A control frame is consumed whole or not at all, header
 * and payload together, so it never leaves state in the parser; a data
 * frame is consumed once its header is whole, and its payload is streamed. */
static long frame_feed(struct ws_parser *p, uint8_t *buf, size_t len, struct ws_chunk *out)
{
    long rc = header_check(p, buf, len);
    if (rc < 0)
        return rc;
    /* A partial header is not consumed: the caller presents it again. */
    if (len < 2)
        return 0;
    size_t hl = header_size(buf);
    uint8_t op = buf[0] & HDR_OPCODE;
    if (len < hl)
        return 0;

    if (op_is_control(op)) {
        /* header_check allowed only the 7-bit length form, up to 125. */
        size_t n = buf[1] & HDR_LEN7;
        uint8_t pos = 0;
        if (len - hl < n)
            return 0; /* a partial control frame: the caller presents it again */
        ws_unmask(buf + hl, n, buf + hl - 4, &pos);
        out->opcode = op;
        out->rsv = buf[0] & HDR_RSV;
        out->data = buf + hl;
        out->len = n;
        return (long)(hl + n);
    }
    data_start(p, buf);
    rc = data_feed(p, buf + hl, len - hl, out);
    if (rc < 0)
        return rc;
    return (long)(hl + (size_t)rc);
}

/* Unmask a short payload whose key starts at its first byte, and say
 * whether it is all ASCII. */
static int unmask_ascii(uint8_t *d, size_t n, const uint8_t key[4])
{
    uint32_t k32;
    memcpy(&k32, key, sizeof k32);
    uint64_t kw = (uint64_t)k32 << 32 | k32, high = 0;
    size_t i = 0;
#if defined(__SSE2__)
    /* 16 bytes a step in one register (SSE2 is in every x86-64): a third
     * of the instructions of two 8-byte words. i stays a multiple of 4, so
     * the key lines up in every lane and in the word after. */
    __m128i k = _mm_set1_epi32((int)k32), hi = _mm_setzero_si128();
    for (; n - i >= 16; i += 16) {
        __m128i w = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(d + i)), k);
        hi = _mm_or_si128(hi, w);
        _mm_storeu_si128((__m128i *)(d + i), w);
    }
    if (_mm_movemask_epi8(hi))
        high = UINT64_C(0x80);
#else
    for (; n - i >= 16; i += 16) {
        uint64_t w[2];
        memcpy(w, d + i, sizeof w);
        w[0] ^= kw;
        w[1] ^= kw;
        high |= w[0] | w[1];
        memcpy(d + i, w, sizeof w);
    }
#endif
    if (n - i >= 8) {
        uint64_t w;
        memcpy(&w, d + i, sizeof w);
        w ^= kw;
        high |= w;
        memcpy(d + i, &w, sizeof w);
        i += 8;
    }
    for (; i < n; i++) {
        d[i] ^= key[i & 3];
        high |= d[i];
    }
    return !(high & UINT64_C(0x8080808080808080));
}

/* The frame most clients send most of the time, in one step: a whole
 * message in one short masked frame (FIN, no RSV, 7-bit length), entirely
 * in buf, between messages. Each rule frame_feed would check is decided by
 * the test below or holds by construction (RSV clear; control rules do not
 * apply; a first frame is under any fragment limit), so the outcome,
 * failures included, is the same as frame_feed's. Returns 0 when the frame
 * is not of that kind. */
static long small_message(struct ws_parser *p, uint8_t *buf, size_t len, struct ws_chunk *out)
{
    uint8_t h0 = buf[0], h1 = buf[1];
    size_t n = h1 & HDR_LEN7;
    if ((h0 != (HDR_FIN | WS_OP_TEXT) && h0 != (HDR_FIN | WS_OP_BINARY)) || !(h1 & HDR_MASK) ||
        n >= 126 || len - 6 < n || (p->limits->max_message && n > p->limits->max_message))
        return 0;
    uint8_t *d = buf + 6;
    if (!unmask_ascii(d, n, buf + 2) && h0 == (HDR_FIN | WS_OP_TEXT)) {
        struct ws_utf8 u;
        ws_utf8_reset(&u);
        if (ws_utf8_feed(&u, d, n) != WS_UTF8_OK)
            return fail(p, WS_ERR_UTF8, WHY_UTF8);
        if (!ws_utf8_complete(&u))
            return fail(p, WS_ERR_UTF8, WHY_UTF8_CUT);
    }
    out->opcode = h0 & HDR_OPCODE;
    out->data = d;
    out->len = n;
    out->flags = WS_CHUNK_MSG_START | WS_CHUNK_MSG_END;
    return (long)(6 + n);
}

long ws_parser_feed(struct ws_parser *p, uint8_t *buf, size_t len, struct ws_chunk *out)
{
    long rc;

    memset(out, 0, sizeof *out);
    /* The result must fit in a long; a larger buffer is simply consumed over
     * more calls. */
    if (len > LONG_MAX)
        len = LONG_MAX;
    /* Between calls a frame is open only while some of its payload is
     * still to come: frame_feed finishes a zero-length frame at once. */
    if (p->frame_left > 0)
        rc = data_feed(p, buf, len, out);
    else if (len >= 6 && !p->msg_op && (rc = small_message(p, buf, len, out)) != 0)
        ;
    else if (len > 0)
        rc = frame_feed(p, buf, len, out);
    else
        rc = 0;
    if (rc < 0)
        memset(out, 0, sizeof *out);
    return rc;
}

int ws_close_code_valid(unsigned code)
{
    /* 1004-1006 and 1015 are reserved or never sent, 1016-2999 are for
     * future revisions of the protocol and extensions, 3000-4999 belong to
     * libraries and applications. */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

int ws_close_parse(const uint8_t *payload, size_t len, uint16_t *code, const uint8_t **reason,
                   size_t *reason_len)
{
    *code = WS_CLOSE_NO_STATUS;
    *reason = NULL;
    *reason_len = 0;
    if (len == 0)
        return 0;
    if (len == 1)
        return WS_ERR_PROTOCOL;
    uint16_t c = (uint16_t)(payload[0] << 8 | payload[1]);
    if (!ws_close_code_valid(c))
        return WS_ERR_PROTOCOL;
    if (!ws_utf8_valid(payload + 2, len - 2))
        return WS_ERR_UTF8;
    *code = c;
    *reason = payload + 2;
    *reason_len = len - 2;
    return 0;
}

uint16_t ws_frame_error_code(int err)
{
    switch (err) {
    case WS_ERR_PROTOCOL:
        return WS_CLOSE_PROTOCOL;
    case WS_ERR_UTF8:
        return WS_CLOSE_INVALID_DATA;
    case WS_ERR_TOO_BIG:
        return WS_CLOSE_TOO_BIG;
    default:
        return WS_CLOSE_INTERNAL;
    }
}


void ws_unmask(uint8_t *p, size_t len, const uint8_t key[4], uint8_t *pos)
{
    unsigned k = *pos & 3u;
    size_t i = 0;

    if (len >= 8) {
        /* The key rotated to the current position, twice over: 8 is a
         * multiple of 4, so the position is the same after every word.
         * Rotating the key's bytes in memory by k is a rotation of its
         * 32-bit value: right on a little-endian machine, left on a
         * big-endian one. No alignment prologue: memcpy loads and stores at
         * any address cost the same as aligned ones on the machines we run
         * on, and most payloads are short. */
        uint32_t k32;
        memcpy(&k32, key, sizeof k32);
        if (k) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            k32 = k32 << (8 * k) | k32 >> (32 - 8 * k);
#else
            k32 = k32 >> (8 * k) | k32 << (32 - 8 * k);
#endif
        }
        uint64_t kw = (uint64_t)k32 << 32 | k32;
        for (; len - i >= 16; i += 16) {
            uint64_t w[2];
            memcpy(w, p + i, sizeof w);
            w[0] ^= kw;
            w[1] ^= kw;
            memcpy(p + i, w, sizeof w);
        }
        for (; len - i >= 8; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, sizeof w);
            w ^= kw;
            memcpy(p + i, &w, sizeof w);
        }
    }
    for (; i < len; i++) {
        p[i] ^= key[k];
        k = (k + 1) & 3u;
    }
    *pos = (uint8_t)k;
}
