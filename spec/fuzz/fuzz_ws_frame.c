/* fuzz_ws_frame: libFuzzer target for the frame parser. The first input byte
 * picks the limits and the negotiated RSV bits, the second picks how the
 * stream is split; the rest is the client's byte stream. The streaming
 * parser is run whole, split at one point, in a pattern and one byte at a
 * time, presenting what it leaves unconsumed again with the next piece as
 * the server does, and every run must keep the feed contract and agree with
 * a slow reference that parses the whole buffer at once with naive loops,
 * down to the bytes left unconsumed at the end. Any disagreement aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ref_utf8.h"
#include "ws_frame.h"

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)

struct event {
    char kind; /* 'M' a data message, 'C' a control frame */
    uint8_t op, rsv;
    int ended;
    size_t off, len; /* message data: in the run's arena; control data: in ctl */
    uint8_t ctl[125];
};

struct run {
    long err;
    char error[128];
    size_t tail; /* bytes unconsumed when the input ended */
    size_t nev, cap;
    struct event *ev;
    uint8_t *arena;
    size_t used;
    long open; /* index of the open message event, or -1 */
};

struct cfg {
    uint64_t max_message;
    uint32_t max_fragments;
    uint8_t rsv_allowed;
};

static void run_init(struct run *r, size_t n)
{
    memset(r, 0, sizeof *r);
    /* every event takes at least the 2 header bytes of its frame */
    r->cap = n / 2 + 2;
    r->ev = calloc(r->cap, sizeof *r->ev);
    r->arena = malloc(n + 1);
    r->open = -1;
    CHECK(r->ev && r->arena);
}

static void run_free(struct run *r)
{
    free(r->ev);
    free(r->arena);
}

static struct event *event_new(struct run *r, char kind, uint8_t op, uint8_t rsv)
{
    CHECK(r->nev < r->cap);
    struct event *e = &r->ev[r->nev++];
    e->kind = kind;
    e->op = op;
    e->rsv = rsv;
    e->off = r->used;
    return e;
}

/* Only one message is open at a time and control payloads live in their
 * event, so each message's data is contiguous in the arena. */
static void event_data(struct run *r, struct event *e, const uint8_t *p, size_t n)
{
    if (e->kind == 'C') {
        CHECK(e->len + n <= sizeof e->ctl);
        memcpy(e->ctl + e->len, p, n);
    } else {
        memcpy(r->arena + r->used, p, n);
        r->used += n;
    }
    e->len += n;
}

/* ---- the streaming parser under test ---- */

static void stream_chunk(struct run *r, const struct ws_chunk *c, const struct cfg *cfg)
{
    if (c->opcode == WS_OP_TEXT || c->opcode == WS_OP_BINARY) {
        struct event *e;
        if (c->flags & WS_CHUNK_MSG_START) {
            CHECK(r->open < 0);
            e = event_new(r, 'M', c->opcode, c->rsv);
            r->open = (long)(e - r->ev);
        } else {
            CHECK(r->open >= 0);
            e = &r->ev[r->open];
            CHECK(e->op == c->opcode);
        }
        CHECK(c->flags <= (WS_CHUNK_MSG_START | WS_CHUNK_MSG_END));
        CHECK(c->len == 0 || c->data != NULL);
        event_data(r, e, c->data, c->len);
        CHECK(!cfg->max_message || e->len <= cfg->max_message);
        CHECK(e->len <= WS_MESSAGE_MAX);
        if (c->flags & WS_CHUNK_MSG_END) {
            e->ended = 1;
            r->open = -1;
        }
        return;
    }
    CHECK(c->opcode == WS_OP_CLOSE || c->opcode == WS_OP_PING || c->opcode == WS_OP_PONG);
    CHECK(c->flags == 0 && c->len <= 125);
    struct event *e = event_new(r, 'C', c->opcode, c->rsv);
    e->ended = 1;
    event_data(r, e, c->data, c->len);
    if (c->opcode == WS_OP_CLOSE) {
        uint16_t code;
        const uint8_t *reason;
        size_t rlen;
        int rc = ws_close_parse(c->data, c->len, &code, &reason, &rlen);
        CHECK(rc == 0 || rc == WS_ERR_PROTOCOL || rc == WS_ERR_UTF8);
        if (rc == 0 && c->len == 0)
            CHECK(code == WS_CLOSE_NO_STATUS && rlen == 0);
        if (rc == 0 && c->len > 0)
            CHECK(ws_close_code_valid(code) && reason == c->data + 2 && rlen == c->len - 2);
    }
}

/* Feed in in pieces whose sizes cycle through pattern, as the server does:
 * each piece goes into a buffer of its own, after the bytes the parser left
 * unconsumed last time (copied out: the parser unmasks in place). The
 * buffer has exactly the bytes presented, so a read past them is caught. */
static void stream_run(struct run *r, const uint8_t *in, size_t n, const size_t *pattern,
                       size_t npat, const struct cfg *cfg)
{
    struct ws_parser p;
    uint8_t tail[WS_FRAME_TAIL_MAX];
    size_t pos = 0, pi = 0, kept = 0;

    run_init(r, n);
    ws_parser_init(&p, cfg->max_message, cfg->max_fragments);
    p.rsv_allowed = cfg->rsv_allowed;
    while (pos < n) {
        size_t piece = pattern[pi++ % npat], off = 0;
        if (piece > n - pos)
            piece = n - pos;
        pos += piece;
        size_t avail = kept + piece;
        uint8_t *buf = malloc(avail ? avail : 1);
        CHECK(buf);
        memcpy(buf, tail, kept);
        memcpy(buf + kept, in + pos - piece, piece);
        for (size_t calls = 0;; calls++) {
            struct ws_chunk c;
            uint8_t *at = buf + off;
            size_t left = avail - off;
            /* every chunk ends a frame or consumes a byte */
            CHECK(calls <= 2 * avail + 2);
            memset(&c, 0xA5, sizeof c);
            long rc = ws_parser_feed(&p, at, left, &c);
            if (rc < 0) {
                CHECK(rc == WS_ERR_PROTOCOL || rc == WS_ERR_UTF8 || rc == WS_ERR_TOO_BIG);
                CHECK(ws_parser_error(&p) != NULL && strlen(ws_parser_error(&p)) < sizeof r->error);
                CHECK(ws_frame_error_code((int)rc) != WS_CLOSE_INTERNAL);
                r->err = rc;
                strcpy(r->error, ws_parser_error(&p));
                free(buf);
                return;
            }
            CHECK((size_t)rc <= left);
            if (c.opcode)
                CHECK(c.data >= at && c.data + c.len <= at + rc);
            off += (size_t)rc;
            if (!c.opcode) {
                /* What is left is the start of a frame that has not all
                 * arrived, untouched, and no longer than the header says. */
                kept = avail - off;
                CHECK(kept <= WS_FRAME_TAIL_MAX);
                CHECK(memcmp(buf + off, in + pos - kept, kept) == 0);
                memcpy(tail, buf + off, kept);
                break;
            }
            stream_chunk(r, &c, cfg);
        }
        free(buf);
    }
    r->tail = kept;
}

/* ---- the reference: whole buffer, naive loops, same rules ---- */


static void ref_fail(struct run *r, long err, const char *why)
{
    r->err = err;
    strcpy(r->error, why);
}

static void ref_run(struct run *r, const uint8_t *in, size_t n, const struct cfg *cfg)
{
    uint8_t msg_op = 0, msg_rsv = 0;
    uint64_t msg_len = 0;
    uint32_t frames = 0;
    size_t pos = 0;
    uint8_t ctl[125];

    run_init(r, n);
    while (pos < n) {
        const uint8_t *h = in + pos;
        size_t avail = n - pos;
        uint8_t op = h[0] & 0x0F, rsv = h[0] & 0x70;
        int fin = h[0] >> 7, control = op >= 8;

        if (!(op <= 2 || (op >= 8 && op <= 10))) {
            char why[32];
            strcpy(why, "reserved opcode 0x");
            why[18] = "0123456789ABCDEF"[op];
            why[19] = 0;
            return ref_fail(r, WS_ERR_PROTOCOL, why);
        }
        if (rsv & ~cfg->rsv_allowed)
            return ref_fail(r, WS_ERR_PROTOCOL, "RSV bits set without extension");
        if ((rsv & 0x40) && control)
            return ref_fail(r, WS_ERR_PROTOCOL, "RSV1 set on a control frame");
        if ((rsv & 0x40) && op == 0)
            return ref_fail(r, WS_ERR_PROTOCOL, "RSV1 set on a continuation frame");
        if (control && !fin)
            return ref_fail(r, WS_ERR_PROTOCOL, "fragmented control frame");
        if (op == 0 && !msg_op)
            return ref_fail(r, WS_ERR_PROTOCOL, "continuation frame without a message");
        if ((op == 1 || op == 2) && msg_op)
            return ref_fail(r, WS_ERR_PROTOCOL, "new data frame inside a fragmented message");
        /* The streaming parser leaves this frame unconsumed until its
         * header is whole, and a control frame until its payload is too;
         * a data frame's payload it streams. */
        r->tail = avail;
        if (avail < 2)
            return;
        if (!(h[1] & 0x80))
            return ref_fail(r, WS_ERR_PROTOCOL, "unmasked client frame");
        size_t len7 = h[1] & 0x7F, ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
        if (control && len7 > 125)
            return ref_fail(r, WS_ERR_PROTOCOL, "control frame payload over 125 bytes");
        if (avail < 2 + ext)
            return;
        uint64_t len = len7;
        if (ext) {
            len = 0;
            for (size_t i = 0; i < ext; i++)
                len = len * 256 + h[2 + i];
        }
        if (ext == 8 && len >= (UINT64_C(1) << 63))
            return ref_fail(r, WS_ERR_PROTOCOL, "64-bit length with the high bit set");
        if (!control) {
            if (cfg->max_fragments && frames + 1 > cfg->max_fragments)
                return ref_fail(r, WS_ERR_TOO_BIG, "message over the fragment limit");
            /* max_message, or WS_MESSAGE_MAX when that is unset or larger:
             * a parser counts a message in 32 bits */
            uint64_t max = cfg->max_message && cfg->max_message < WS_MESSAGE_MAX
                               ? cfg->max_message
                               : WS_MESSAGE_MAX;
            if (msg_len + len > max)
                return ref_fail(r, WS_ERR_TOO_BIG, "message over the size limit");
        }
        if (avail < 2 + ext + 4)
            return;
        const uint8_t *key = h + 2 + ext;
        size_t hl = 2 + ext + 4;
        size_t have = len < avail - hl ? (size_t)len : avail - hl;

        if (control) {
            if (have < len)
                return;
            r->tail = 0;
            for (size_t i = 0; i < have; i++)
                ctl[i] = h[hl + i] ^ key[i % 4];
            struct event *e = event_new(r, 'C', op, rsv);
            e->ended = 1;
            event_data(r, e, ctl, have);
            pos += hl + have;
            continue;
        }
        r->tail = 0;
        if (op != 0) {
            msg_op = op;
            msg_rsv = rsv;
            msg_len = 0;
            frames = 0;
        }
        frames++;
        /* The streaming parser opens a message with its first chunk, which
         * needs a payload byte or an empty frame. */
        if (frames == 1 && (have > 0 || len == 0)) {
            r->open = (long)r->nev;
            event_new(r, 'M', msg_op, msg_rsv);
        }
        if (have < len && have == 0)
            return; /* nothing of this frame yet */
        struct event *e = &r->ev[r->open];
        for (size_t i = 0; i < have; i++) {
            uint8_t b = h[hl + i] ^ key[i % 4];
            event_data(r, e, &b, 1);
        }
        if (msg_op == 1 && !(msg_rsv & 0x40)) {
            long v = ref_utf8_classify(r->arena + e->off, e->len);
            if (v >= 0) {
                /* keep only what precedes the bad byte: a streaming run
                 * may have delivered that much, never more */
                r->used -= e->len - (size_t)v;
                e->len = (size_t)v;
                return ref_fail(r, WS_ERR_UTF8, "invalid UTF-8 in text message");
            }
            if (have == len && fin && v == REF_UTF8_INCOMPLETE)
                return ref_fail(r, WS_ERR_UTF8, "text message ends inside a UTF-8 character");
        }
        if (have < len)
            return;
        msg_len += len;
        if (fin) {
            e->ended = 1;
            r->open = -1;
            msg_op = 0;
            msg_rsv = 0;
            msg_len = 0;
            frames = 0;
        }
        pos += hl + have;
    }
}

/* ---- comparing runs ---- */

/* A streaming run agrees with the reference: same error and reason, same
 * events. After an error the open message may be short of the reference's
 * (the chunk holding the bad byte is never delivered, nor, in a whole feed,
 * the valid bytes before it in that chunk), or missing when nothing of it
 * was delivered; what was delivered must be a prefix of the reference's. */
static void check_agree(const struct run *s, const struct run *ref)
{
    size_t ns = s->nev;

    CHECK(s->err == ref->err);
    CHECK(strcmp(s->error, ref->error) == 0);
    /* Every byte is consumed but those of a frame that never completed. */
    if (!s->err)
        CHECK(s->tail == ref->tail);
    if (s->err && ns + 1 == ref->nev && ref->ev[ns].kind == 'M' && !ref->ev[ns].ended)
        ; /* the failed message never started in s */
    else
        CHECK(ns == ref->nev);
    for (size_t i = 0; i < ns; i++) {
        const struct event *x = &s->ev[i], *y = &ref->ev[i];
        CHECK(x->kind == y->kind && x->op == y->op && x->rsv == y->rsv && x->ended == y->ended);
        if (s->err && x->kind == 'M' && !x->ended)
            CHECK(x->len <= y->len);
        else
            CHECK(x->len == y->len);
        if (x->kind == 'M')
            CHECK(memcmp(s->arena + x->off, ref->arena + y->off, x->len) == 0);
        else
            CHECK(memcmp(x->ctl, y->ctl, x->len) == 0);
    }
}

/* A server header for len is minimal, unmasked, and decodes back to len. */
static void check_header(uint8_t b0, uint64_t len)
{
    uint8_t h[10];
    size_t n = ws_frame_header(h, b0, len);
    uint64_t back = h[1] & 0x7F;

    CHECK(h[0] == b0 && !(h[1] & 0x80));
    CHECK(n == (len <= 125 ? 2u : len <= 0xFFFF ? 4u : 10u));
    if (n > 2) {
        back = 0;
        for (size_t i = 2; i < n; i++)
            back = back << 8 | h[i];
    }
    CHECK(back == len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t max_messages[4] = {0, 1, 100, 70000};
    static const uint32_t max_fragments[4] = {0, 1, 2, 5};

    if (size < 2)
        return 0;
    struct cfg cfg = {
        .max_message = max_messages[data[0] & 3],
        .max_fragments = max_fragments[data[0] >> 2 & 3],
        .rsv_allowed = (uint8_t)((data[0] >> 4 & 7) << 4),
    };
    uint8_t seed = data[1];
    const uint8_t *in = data + 2;
    size_t n = size - 2;

    struct run ref, whole, s;
    ref_run(&ref, in, n, &cfg);

    static const size_t WHOLE[] = {SIZE_MAX}, BYTES[] = {1};
    size_t split[2] = {n ? seed % (n + 1) : 0, SIZE_MAX};
    size_t pattern[3] = {1 + (seed & 7), 1 + (seed >> 3), 2};

    stream_run(&whole, in, n, WHOLE, 1, &cfg);
    check_agree(&whole, &ref);
    const size_t *patterns[3] = {split, pattern, BYTES};
    const size_t npat[3] = {2, 3, 1};
    for (int k = 0; k < 3; k++) {
        stream_run(&s, in, n, patterns[k], npat[k], &cfg);
        check_agree(&s, &ref);
        run_free(&s);
    }
    for (size_t i = 0; i < whole.nev; i++)
        check_header((uint8_t)(0x80 | whole.ev[i].op), whole.ev[i].len);
    if (n >= 8) {
        uint64_t len;
        memcpy(&len, in, sizeof len);
        check_header(data[0], len);
        check_header(data[0], len >> (seed & 63));
    }
    run_free(&whole);
    run_free(&ref);
    return 0;
}
