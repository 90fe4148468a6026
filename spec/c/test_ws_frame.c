/* test_ws_frame: the server-side frame codec. Every input is built with a
 * small masking encoder local to this file, fed whole, split at every point,
 * in a scripted pattern, one byte at a time and against an unreadable page,
 * and every way must give the same messages, control frames, error and
 * unconsumed tail. Bytes the parser leaves unconsumed are presented again
 * with the next piece, in place or copied the way the server does. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "unit.h"
#include "ws_frame.h"

/* ---- a test-local client encoder ---- */

struct wire {
    uint8_t b[1 << 18];
    size_t n;
};

/* Append the raw bytes of a header (for malformed ones). */
static void wire_raw(struct wire *w, const void *p, size_t n)
{
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

/* Append a masked client frame: b0 is FIN|RSV|opcode. */
static void wire_frame(struct wire *w, uint8_t b0, const void *payload, size_t len,
                       const uint8_t key[4])
{
    uint8_t *o = w->b + w->n;
    size_t h = 0;

    o[h++] = b0;
    if (len <= 125) {
        o[h++] = (uint8_t)(0x80 | len);
    } else if (len <= 0xFFFF) {
        o[h++] = 0x80 | 126;
        o[h++] = (uint8_t)(len >> 8);
        o[h++] = (uint8_t)len;
    } else {
        o[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            o[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    memcpy(o + h, key, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        o[h + i] = (uint8_t)(((const uint8_t *)payload)[i] ^ key[i % 4]);
    w->n += h + len;
}

static const uint8_t KEY[4] = {0x37, 0xfa, 0x21, 0x3d};

#define FRAME(w, b0, str) wire_frame((w), (b0), (str), sizeof(str) - 1, KEY)

/* ---- running the parser and recording what it reports ---- */

struct event {
    char kind; /* 'M' a data message, 'C' a control frame */
    uint8_t op, rsv;
    int ended;
    size_t off, len; /* message data: in run.arena; control data: in ctl */
    uint8_t ctl[125];
};

struct run {
    long err;
    char error[128];
    int violations; /* broken feed contract, counted while running */
    size_t tail;    /* bytes still unconsumed when the input ended */
    int nev;
    struct event ev[64];
    int in_msg;
    int chunks; /* data chunks reported */
    size_t used;
    uint8_t arena[1 << 18];
};

struct cfg {
    uint64_t max_message;
    uint32_t max_fragments;
    uint8_t rsv_allowed;
};

static const struct cfg NOLIMIT = {0, 0, 0};

static void violation(struct run *r, const char *what)
{
    if (r->violations++ < 3)
        fprintf(stderr, "  contract violation: %s\n", what);
}

static void record(struct run *r, const struct ws_chunk *c)
{
    if (c->opcode == WS_OP_TEXT || c->opcode == WS_OP_BINARY) {
        struct event *e = NULL;
        r->chunks++;
        if (c->flags & WS_CHUNK_MSG_START) {
            if (r->in_msg)
                violation(r, "MSG_START inside a message");
            if (r->nev == 64)
                return violation(r, "too many events");
            e = &r->ev[r->nev++];
            memset(e, 0, sizeof *e);
            e->kind = 'M';
            e->op = c->opcode;
            e->rsv = c->rsv;
            e->off = r->used;
            r->in_msg = 1;
        } else if (!r->in_msg) {
            return violation(r, "data chunk without MSG_START");
        } else {
            /* the open message is the last 'M' event */
            for (int i = r->nev - 1; i >= 0 && !e; i--)
                if (r->ev[i].kind == 'M')
                    e = &r->ev[i];
            if (e->op != c->opcode)
                violation(r, "chunk opcode differs from its message");
        }
        if (r->used + c->len > sizeof r->arena)
            return violation(r, "arena full");
        memcpy(r->arena + r->used, c->data, c->len);
        r->used += c->len;
        e->len += c->len;
        if (c->flags & WS_CHUNK_MSG_END) {
            e->ended = 1;
            r->in_msg = 0;
        }
        return;
    }
    if (c->opcode != WS_OP_CLOSE && c->opcode != WS_OP_PING && c->opcode != WS_OP_PONG)
        return violation(r, "unknown chunk opcode");
    if (c->flags)
        violation(r, "flags on a control chunk");
    if (c->len > 125)
        return violation(r, "control chunk over 125 bytes");
    if (r->nev == 64)
        return violation(r, "too many events");
    struct event *e = &r->ev[r->nev++];
    memset(e, 0, sizeof *e);
    e->kind = 'C';
    e->op = c->opcode;
    e->rsv = c->rsv;
    e->ended = 1;
    e->len = c->len;
    memcpy(e->ctl, c->data, c->len);
}

/* ---- the guard page ---- */

static uint8_t *guard_end; /* first unreadable byte */
static size_t guard_room;

static void guard_init(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    guard_room = ((sizeof(struct wire) + page - 1) / page) * page;
    uint8_t *m = mmap(NULL, guard_room + page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    CHECK(mprotect(m + guard_room, page, PROT_NONE) == 0);
    guard_end = m + guard_room;
}

/* How run_at presents bytes to the parser. */
enum present {
    /* Where they are in buf: an unconsumed tail is presented again from
     * where it is, with the next piece right after it. */
    IN_PLACE,
    /* As the server does: the unconsumed tail is copied out, then copied
     * back in front of the next piece, and each call's input ends at the
     * unreadable page, so reading one byte too far faults. */
    STAGED,
};

/* Feed the bytes of w in pieces whose sizes cycle through pattern, checking
 * the return contract on every call. buf (IN_PLACE: room for w->n bytes)
 * receives a copy of w, which the parser unmasks in place; bytes it leaves
 * unconsumed must come back untouched. */
static void run_at(struct run *r, const struct wire *w, uint8_t *buf, enum present how,
                   const size_t *pattern, size_t npat, const struct cfg *cfg)
{
    struct ws_parser p;
    uint8_t tail[WS_FRAME_TAIL_MAX];
    size_t n = w->n, pos = 0, pi = 0, kept = 0;

    memset(r, 0, offsetof(struct run, arena));
    ws_parser_init(&p, cfg->max_message, cfg->max_fragments);
    p.rsv_allowed = cfg->rsv_allowed;
    if (how == IN_PLACE)
        memcpy(buf, w->b, n);
    while (pos < n) {
        size_t piece = pattern[pi++ % npat];
        if (piece > n - pos)
            piece = n - pos;
        pos += piece;
        /* The parser sees what it left last time, then the new piece. */
        size_t avail = kept + piece, off = 0;
        uint8_t *in = buf + pos - avail;
        if (how == STAGED) {
            in = guard_end - avail;
            memcpy(in, tail, kept);
            memcpy(in + kept, w->b + pos - piece, piece);
        }
        for (int guard = 0;; guard++) {
            struct ws_chunk c;
            uint8_t *at = in + off;
            size_t left = avail - off;
            long rc = ws_parser_feed(&p, at, left, &c);
            if (rc < 0) {
                r->err = rc;
                snprintf(r->error, sizeof r->error, "%s", ws_parser_error(&p) ? ws_parser_error(&p) : "(null)");
                return;
            }
            if ((size_t)rc > left)
                return violation(r, "consumed more than given");
            if (c.opcode && (c.data < at || c.data + c.len > at + rc))
                violation(r, "chunk outside the bytes consumed");
            off += (size_t)rc;
            if (!c.opcode) {
                kept = avail - off;
                if (kept > WS_FRAME_TAIL_MAX)
                    return violation(r, "no chunk but more than a tail left");
                if (memcmp(in + off, w->b + pos - kept, kept) != 0)
                    violation(r, "unconsumed bytes changed");
                if (how == STAGED)
                    memcpy(tail, in + off, kept);
                break;
            }
            if (guard > (int)avail + 200)
                return violation(r, "no progress");
            record(r, &c);
        }
    }
    r->tail = kept;
}

static uint8_t *scratch;

static void run(struct run *r, const struct wire *w, enum present how, const size_t *pattern,
                size_t npat, const struct cfg *cfg)
{
    run_at(r, w, scratch, how, pattern, npat, cfg);
}

static const uint8_t *msg_data(const struct run *r, int i)
{
    return r->arena + r->ev[i].off;
}

/* Two runs of the same input agree: same error and reason, same events,
 * and without an error the same tail left unconsumed at the end.
 * After an error the message that was open may have reported more or less
 * of its failing frame depending on how the input was split (a whole feed
 * rejects a chunk that a byte feed delivers in part), so open messages only
 * need to agree on a common prefix. */
static int runs_agree(const struct run *a, const struct run *b)
{
    int na = a->nev, nb = b->nev;

    if (a->violations || b->violations || a->err != b->err || strcmp(a->error, b->error))
        return 0;
    if (!a->err && a->tail != b->tail)
        return 0;
    if (a->err) {
        if (na == nb + 1 && a->ev[na - 1].kind == 'M' && !a->ev[na - 1].ended)
            na--;
        else if (nb == na + 1 && b->ev[nb - 1].kind == 'M' && !b->ev[nb - 1].ended)
            nb--;
    }
    if (na != nb)
        return 0;
    for (int i = 0; i < na; i++) {
        const struct event *x = &a->ev[i], *y = &b->ev[i];
        if (x->kind != y->kind || x->op != y->op || x->rsv != y->rsv || x->ended != y->ended)
            return 0;
        const uint8_t *dx = x->kind == 'M' ? msg_data(a, i) : x->ctl;
        const uint8_t *dy = y->kind == 'M' ? msg_data(b, i) : y->ctl;
        size_t len = x->len;
        if (a->err && x->kind == 'M' && !x->ended)
            len = x->len < y->len ? x->len : y->len;
        else if (x->len != y->len)
            return 0;
        if (memcmp(dx, dy, len))
            return 0;
    }
    return 1;
}

static const size_t WHOLE[] = {SIZE_MAX};
static const size_t BYTES[] = {1};
static const size_t SCRIPT[] = {1, 2, 3, 5, 8, 13, 21, 4, 7};

static struct run *R, *S; /* the reference (whole) run and a comparison run */

/* Run the input every way and check that all agree with the whole feed;
 * return the whole run in R for the caller's expectations. */
static void run_all_ways(const struct wire *w, const struct cfg *cfg, int line)
{
    int bad = 0;

    run(R, w, IN_PLACE, WHOLE, 1, cfg);
    CHECK_EQ(R->violations, 0);
    for (int how = IN_PLACE; how <= STAGED; how++) {
        run(S, w, (enum present)how, BYTES, 1, cfg);
        bad += !runs_agree(R, S);
        run(S, w, (enum present)how, SCRIPT, sizeof SCRIPT / sizeof SCRIPT[0], cfg);
        bad += !runs_agree(R, S);
        /* every two-piece split of short inputs, a sample of long ones */
        size_t step = w->n <= 400 ? 1 : w->n / 97;
        for (size_t k = 0; k <= w->n; k += step) {
            size_t split[2] = {k, SIZE_MAX};
            run(S, w, (enum present)how, split, 2, cfg);
            bad += !runs_agree(R, S);
        }
    }
    /* the input's last byte is the last readable byte */
    uint8_t *g = guard_end - w->n;
    run_at(S, w, g, IN_PLACE, WHOLE, 1, cfg);
    bad += !runs_agree(R, S);
    run_at(S, w, g, IN_PLACE, BYTES, 1, cfg);
    bad += !runs_agree(R, S);
    if (bad)
        fprintf(stderr, "  input at line %d: %d feedings disagree with the whole feed\n", line,
                bad);
    CHECK_EQ(bad, 0);
}

#define RUN(w, cfg) run_all_ways((w), (cfg), __LINE__)

static struct wire W;

static void wire_reset(void)
{
    W.n = 0;
}

/* Expect the whole run in R to have failed with err and reason. */
static void expect_error(long err, const char *why, int line)
{
    if (R->err != err || strcmp(R->error, why))
        fprintf(stderr, "  line %d: got %ld \"%s\", want %ld \"%s\"\n", line, R->err, R->error,
                err, why);
    CHECK_EQ(R->err, err);
    CHECK(strcmp(R->error, why) == 0);
}

#define EXPECT_ERROR(err, why) expect_error((err), (why), __LINE__)

static int event_is(int i, char kind, uint8_t op, const void *data, size_t len)
{
    if (i >= R->nev)
        return 0;
    const struct event *e = &R->ev[i];
    const uint8_t *d = kind == 'M' ? msg_data(R, i) : e->ctl;
    return e->kind == kind && e->op == op && e->len == len && e->ended &&
           (len == 0 || memcmp(d, data, len) == 0);
}

#define EVENT_IS(i, kind, op, str) CHECK(event_is((i), (kind), (op), (str), sizeof(str) - 1))

/* A whole message in one short frame takes one step in the parser
 * (small_message): at every 7-bit length, several in a row, each must give
 * what the general path gives when the same bytes arrive split (every way
 * run_all_ways feeds them), and fail the same way: bad UTF-8 anywhere in
 * the payload, UTF-8 cut at its end, a payload one byte over the limit. */
static void test_small_messages(void)
{
    uint8_t payload[125];
    static const char *const ends[] = {"", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};

    for (size_t n = 0; n <= 125; n++) {
        for (size_t i = 0; i < n; i++)
            payload[i] = (uint8_t)('a' + (i * 5 + n) % 26);
        for (int e = 0; e < 4; e++) { /* ASCII, then a 2-, 3-, 4-byte character at the end */
            size_t el = strlen(ends[e]);
            if (el > n)
                continue;
            memcpy(payload + n - el, ends[e], el);
            wire_reset();
            wire_frame(&W, 0x81, payload, n, KEY);
            wire_frame(&W, 0x82, payload, n, KEY);
            wire_frame(&W, 0x81, payload, n, KEY);
            RUN(&W, &NOLIMIT);
            CHECK_EQ(R->err, 0);
            CHECK(R->nev == 3 && event_is(0, 'M', WS_OP_TEXT, payload, n) &&
                  event_is(1, 'M', WS_OP_BINARY, payload, n) &&
                  event_is(2, 'M', WS_OP_TEXT, payload, n));
            if (el > 1) { /* the character cut short: text fails, binary does not */
                wire_reset();
                wire_frame(&W, 0x82, payload, n - 1, KEY);
                wire_frame(&W, 0x81, payload, n - 1, KEY);
                RUN(&W, &NOLIMIT);
                EXPECT_ERROR(WS_ERR_UTF8, "text message ends inside a UTF-8 character");
                CHECK(R->nev >= 1 && event_is(0, 'M', WS_OP_BINARY, payload, n - 1));
            }
        }
        if (n) { /* a byte that is never UTF-8, at each place in turn */
            for (size_t at = 0; at < n; at += 7) {
                uint8_t saved = payload[at];
                payload[at] = 0xff;
                wire_reset();
                wire_frame(&W, 0x81, payload, n, KEY);
                RUN(&W, &NOLIMIT);
                EXPECT_ERROR(WS_ERR_UTF8, "invalid UTF-8 in text message");
                payload[at] = saved;
            }
            /* exactly the limit passes, one over fails (at a few lengths:
             * the parser keeps only a few distinct limits of its own) */
            if (n != 2 && n != 9 && n != 64 && n != 125)
                continue;
            const struct cfg at_limit = {n, 0, 0}, under = {n - 1 ? n - 1 : 0, 0, 0};
            wire_reset();
            wire_frame(&W, 0x82, payload, n, KEY);
            RUN(&W, &at_limit);
            CHECK_EQ(R->err, 0);
            if (n > 1) {
                RUN(&W, &under);
                EXPECT_ERROR(WS_ERR_TOO_BIG, "message over the size limit");
            }
        }
    }
}

/* ---- the encoder side ---- */

static void test_frame_header(void)
{
    static const struct {
        uint64_t len;
        size_t n;
        uint8_t b[10];
    } cases[] = {
        {0, 2, {0x81, 0}},
        {125, 2, {0x81, 125}},
        {126, 4, {0x81, 126, 0, 126}},
        {65535, 4, {0x81, 126, 0xff, 0xff}},
        {65536, 10, {0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0}},
        {0x0102030405060708ull, 10, {0x81, 127, 1, 2, 3, 4, 5, 6, 7, 8}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t out[10];
        memset(out, 0xAA, sizeof out);
        size_t n = ws_frame_header(out, 0x81, cases[i].len);
        CHECK_EQ(n, cases[i].n);
        CHECK(memcmp(out, cases[i].b, cases[i].n) == 0);
    }
    uint8_t out[10];
    CHECK_EQ(ws_frame_header(out, 0xC2, 3), 2);
    CHECK_EQ(out[0], 0xC2);
    CHECK_EQ(out[1], 3); /* no mask bit: servers do not mask */
}

static void test_unmask(void)
{
    static const uint8_t key[4] = {0x01, 0x80, 0x5a, 0xff};
    uint8_t base[64 + 8], buf[64 + 8], want[64 + 8];
    int bad = 0;

    for (size_t i = 0; i < sizeof base; i++)
        base[i] = (uint8_t)(i * 37 + 11);
    for (size_t align = 0; align < 8; align++)
        for (uint8_t pos0 = 0; pos0 < 4; pos0++)
            for (size_t len = 0; len <= 64; len++) {
                memcpy(buf, base, sizeof buf);
                memcpy(want, base, sizeof want);
                for (size_t i = 0; i < len; i++)
                    want[align + i] ^= key[(pos0 + i) % 4];
                uint8_t pos = pos0;
                ws_unmask(buf + align, len, key, &pos);
                bad += memcmp(buf, want, sizeof buf) != 0; /* also: nothing outside touched */
                bad += pos != (pos0 + len) % 4;
            }
    CHECK_EQ(bad, 0);

    /* Unmasking in two calls equals unmasking in one. */
    memcpy(buf, base, sizeof buf);
    memcpy(want, base, sizeof want);
    uint8_t p1 = 0, p2 = 0;
    ws_unmask(want, 61, key, &p1);
    ws_unmask(buf, 13, key, &p2);
    ws_unmask(buf + 13, 48, key, &p2);
    CHECK(memcmp(buf, want, sizeof buf) == 0);
    CHECK_EQ(p1, p2);
}

static void test_close_parse(void)
{
    static const struct {
        unsigned code;
        int ok;
    } codes[] = {
        {0, 0},     {999, 0},   {1000, 1},  {1001, 1},  {1002, 1},  {1003, 1},  {1004, 0},
        {1005, 0},  {1006, 0},  {1007, 1},  {1008, 1},  {1009, 1},  {1010, 1},  {1011, 1},
        {1012, 1},  {1013, 1},  {1014, 1},  {1015, 0},  {1016, 0},  {1100, 0},  {2000, 0},
        {2999, 0},  {3000, 1},  {3999, 1},  {4000, 1},  {4999, 1},  {5000, 0},  {65535, 0},
    };
    uint16_t code;
    const uint8_t *reason;
    size_t rlen;

    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        uint8_t pl[2] = {(uint8_t)(codes[i].code >> 8), (uint8_t)codes[i].code};
        CHECK_EQ(ws_close_code_valid(codes[i].code), codes[i].ok);
        int rc = ws_close_parse(pl, 2, &code, &reason, &rlen);
        CHECK_EQ(rc, codes[i].ok ? 0 : WS_ERR_PROTOCOL);
        if (codes[i].ok) {
            CHECK_EQ(code, codes[i].code);
            CHECK_EQ(rlen, 0);
        }
    }
    CHECK_EQ(ws_close_parse(NULL, 0, &code, &reason, &rlen), 0);
    CHECK_EQ(code, 1005);
    CHECK(reason == NULL);
    CHECK_EQ(rlen, 0);
    /* One byte is a protocol error even if the byte after it would make 1000. */
    CHECK_EQ(ws_close_parse((const uint8_t *)"\x03\xe8", 1, &code, &reason, &rlen),
             WS_ERR_PROTOCOL);

    static const uint8_t good[] = "\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
    CHECK_EQ(ws_close_parse(good, sizeof good - 1, &code, &reason, &rlen), 0);
    CHECK_EQ(code, 1000);
    CHECK(reason == good + 2);
    CHECK_EQ(rlen, sizeof good - 3);
    CHECK_EQ(ws_close_parse((const uint8_t *)"\x03\xe8\xff", 3, &code, &reason, &rlen),
             WS_ERR_UTF8);
    CHECK_EQ(ws_close_parse((const uint8_t *)"\x03\xe8\xce", 3, &code, &reason, &rlen),
             WS_ERR_UTF8);
    CHECK_EQ(ws_close_parse((const uint8_t *)"\x03\xe8\xed\xa0\x80", 5, &code, &reason, &rlen),
             WS_ERR_UTF8);
    /* a bad code is a protocol error even when the reason is bad too */
    CHECK_EQ(ws_close_parse((const uint8_t *)"\x03\xed\xff", 3, &code, &reason, &rlen),
             WS_ERR_PROTOCOL);
}

static void test_error_codes(void)
{
    CHECK_EQ(ws_frame_error_code(WS_ERR_PROTOCOL), 1002);
    CHECK_EQ(ws_frame_error_code(WS_ERR_UTF8), 1007);
    CHECK_EQ(ws_frame_error_code(WS_ERR_TOO_BIG), 1009);
}

/* ---- the parser, call by call ---- */

static void test_feed_contract(void)
{
    struct ws_parser p;
    struct ws_chunk c;
    uint8_t *b = scratch;

    /* One frame, whole: one chunk carrying both flags, unmasked in place. */
    wire_reset();
    FRAME(&W, 0x81, "Hello");
    FRAME(&W, 0x82, "");
    memcpy(b, W.b, W.n);
    ws_parser_init(&p, 0, 0);
    CHECK_EQ(ws_parser_feed(&p, b, W.n, &c), 11);
    CHECK_EQ(c.opcode, WS_OP_TEXT);
    CHECK_EQ(c.flags, WS_CHUNK_MSG_START | WS_CHUNK_MSG_END);
    CHECK_EQ(c.len, 5);
    CHECK(c.data == b + 6);
    CHECK(memcmp(c.data, "Hello", 5) == 0);
    /* A zero-length frame still reports a (zero-length) chunk. */
    CHECK_EQ(ws_parser_feed(&p, b + 11, W.n - 11, &c), 6);
    CHECK_EQ(c.opcode, WS_OP_BINARY);
    CHECK_EQ(c.flags, WS_CHUNK_MSG_START | WS_CHUNK_MSG_END);
    CHECK_EQ(c.len, 0);
    CHECK_EQ(ws_parser_feed(&p, b + 17, 0, &c), 0);
    CHECK_EQ(c.opcode, 0);

    /* A header in pieces is not consumed until it is whole: the caller
     * presents it again with more; payload comes as chunks. */
    memcpy(b, W.b, W.n);
    ws_parser_init(&p, 0, 0);
    CHECK_EQ(ws_parser_feed(&p, b, 1, &c), 0);
    CHECK_EQ(c.opcode, 0);
    CHECK_EQ(ws_parser_feed(&p, b, 5, &c), 0);
    CHECK_EQ(c.opcode, 0);
    CHECK(memcmp(b, W.b, 6) == 0);             /* untouched */
    CHECK_EQ(ws_parser_feed(&p, b, 6, &c), 6); /* header complete, no payload yet */
    CHECK_EQ(c.opcode, 0);
    CHECK_EQ(ws_parser_feed(&p, b + 6, 2, &c), 2);
    CHECK_EQ(c.opcode, WS_OP_TEXT);
    CHECK_EQ(c.flags, WS_CHUNK_MSG_START);
    CHECK(c.len == 2 && memcmp(c.data, "He", 2) == 0);
    CHECK_EQ(ws_parser_feed(&p, b + 8, 3, &c), 3);
    CHECK_EQ(c.flags, WS_CHUNK_MSG_END);
    CHECK(c.len == 3 && memcmp(c.data, "llo", 3) == 0);

    /* A control frame is consumed whole or not at all, and reported once,
     * unmasked in place. */
    wire_reset();
    FRAME(&W, 0x89, "ping!");
    memcpy(b, W.b, W.n);
    ws_parser_init(&p, 0, 0);
    for (size_t i = 0; i < W.n; i++) {
        CHECK_EQ(ws_parser_feed(&p, b, i, &c), 0);
        CHECK_EQ(c.opcode, 0);
    }
    CHECK(memcmp(b, W.b, W.n) == 0); /* untouched until consumed */
    CHECK_EQ(ws_parser_feed(&p, b, W.n, &c), W.n);
    CHECK_EQ(c.opcode, WS_OP_PING);
    CHECK(c.data == b + 6 && c.len == 5 && memcmp(c.data, "ping!", 5) == 0);

    /* After a chunk, a partial header is left: the count is short of len. */
    wire_reset();
    FRAME(&W, 0x81, "Hello");
    FRAME(&W, 0x8A, "");
    memcpy(b, W.b, W.n);
    ws_parser_init(&p, 0, 0);
    CHECK_EQ(ws_parser_feed(&p, b, 11 + 3, &c), 11);
    CHECK(c.opcode == WS_OP_TEXT && c.len == 5);
    CHECK_EQ(ws_parser_feed(&p, b + 11, 3, &c), 0);
    CHECK_EQ(c.opcode, 0);
    CHECK_EQ(ws_parser_feed(&p, b + 11, 6, &c), 6);
    CHECK(c.opcode == WS_OP_PONG && c.len == 0);

    /* The longest tail: a ping with 125 bytes of payload, one byte short. */
    static uint8_t pl[125];
    memset(pl, 'x', sizeof pl);
    wire_reset();
    wire_frame(&W, 0x89, pl, sizeof pl, KEY);
    CHECK_EQ(W.n, WS_FRAME_TAIL_MAX + 1);
    memcpy(b, W.b, W.n);
    ws_parser_init(&p, 0, 0);
    CHECK_EQ(ws_parser_feed(&p, b, WS_FRAME_TAIL_MAX, &c), 0);
    CHECK_EQ(c.opcode, 0);
    CHECK_EQ(ws_parser_feed(&p, b, W.n, &c), W.n);
    CHECK(c.opcode == WS_OP_PING && c.len == 125 && memcmp(c.data, pl, 125) == 0);

    /* A fragmented text message: MSG_START only on the first chunk, MSG_END
     * only on the last, and continuation chunks carry the message opcode. */
    wire_reset();
    FRAME(&W, 0x01, "");
    FRAME(&W, 0x00, "ab");
    FRAME(&W, 0x80, "c");
    memcpy(b, W.b, W.n);
    ws_parser_init(&p, 0, 0);
    CHECK_EQ(ws_parser_feed(&p, b, W.n, &c), 6);
    CHECK(c.opcode == WS_OP_TEXT && c.flags == WS_CHUNK_MSG_START && c.len == 0);
    CHECK_EQ(ws_parser_feed(&p, b + 6, W.n - 6, &c), 8);
    CHECK(c.opcode == WS_OP_TEXT && c.flags == 0 && c.len == 2);
    CHECK_EQ(ws_parser_feed(&p, b + 14, W.n - 14, &c), 7);
    CHECK(c.opcode == WS_OP_TEXT && c.flags == WS_CHUNK_MSG_END && c.len == 1);
}

/* ---- bytes left unconsumed and presented again ---- */

/* A data frame header split at every position, for each length form: no
 * byte is consumed until the header is whole, none is changed, and the
 * header presented again with the rest gives the payload. */
static void test_header_split(void)
{
    static const size_t lens[] = {5, 300, 70000}; /* 7-, 16- and 64-bit lengths */
    static const size_t sizes[] = {6, 8, 14};
    static uint8_t payload[70000];
    struct ws_parser p;
    struct ws_chunk c;
    uint8_t *b = scratch;
    int bad = 0;

    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 7 + 1);
    for (size_t l = 0; l < 3; l++) {
        wire_reset();
        wire_frame(&W, 0x82, payload, lens[l], KEY);
        size_t hl = W.n - lens[l];
        CHECK_EQ(hl, sizes[l]);
        for (size_t k = 0; k < hl; k++) {
            memcpy(b, W.b, W.n);
            ws_parser_init(&p, 0, 0);
            bad += ws_parser_feed(&p, b, k, &c) != 0 || c.opcode != 0;
            bad += memcmp(b, W.b, W.n) != 0;
            /* again, with the rest of the header: consumed, no chunk yet */
            bad += ws_parser_feed(&p, b, hl, &c) != (long)hl || c.opcode != 0;
            bad += ws_parser_feed(&p, b + hl, W.n - hl, &c) != (long)lens[l];
            bad += c.opcode != WS_OP_BINARY || c.flags != (WS_CHUNK_MSG_START | WS_CHUNK_MSG_END) ||
                   c.len != lens[l] || c.data != b + hl || memcmp(c.data, payload, lens[l]) != 0;
            /* and with the rest of the header and part of the payload */
            memcpy(b, W.b, W.n);
            ws_parser_init(&p, 0, 0);
            bad += ws_parser_feed(&p, b, k, &c) != 0 || c.opcode != 0;
            bad += ws_parser_feed(&p, b, hl + 3, &c) != (long)hl + 3;
            bad += c.opcode != WS_OP_BINARY || c.flags != WS_CHUNK_MSG_START || c.len != 3 ||
                   memcmp(c.data, payload, 3) != 0;
        }
    }
    CHECK_EQ(bad, 0);

    /* The size limit fails on the length, however much of the header came
     * before it: a 64-bit length needs 10 bytes, the mask key none. */
    wire_reset();
    wire_raw(&W, "\x82\xff\x00\x00\x00\x00\x00\x00\x00\x0b", 10);
    wire_raw(&W, KEY, 4);
    for (size_t k = 0; k < 10; k++) {
        memcpy(b, W.b, W.n);
        ws_parser_init(&p, 10, 0);
        CHECK_EQ(ws_parser_feed(&p, b, k, &c), 0);
        CHECK_EQ(ws_parser_feed(&p, b, 10, &c), WS_ERR_TOO_BIG);
        CHECK(strcmp(ws_parser_error(&p), "message over the size limit") == 0);
    }
}

/* With no max_message, WS_MESSAGE_MAX still bounds a message (a parser
 * counts it in 32 bits): a frame of exactly that many bytes starts, one
 * byte more fails on its header, and so does a second fragment that would
 * take the message past it (the first one's 4 GiB fed in reused pieces). */
static void test_message_max(void)
{
    struct ws_parser p;
    struct ws_chunk c;
    uint8_t *b = scratch;
    static const uint8_t at_max[] = {0x82, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4};
    static const uint8_t over[] = {0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4};
    CHECK_EQ(WS_MESSAGE_MAX, 0xffffffffu);
    ws_parser_init(&p, 0, 0);
    memcpy(b, at_max, sizeof at_max);
    CHECK_EQ(ws_parser_feed(&p, b, sizeof at_max, &c), (long)sizeof at_max);
    ws_parser_init(&p, 0, 0);
    memcpy(b, over, sizeof over);
    CHECK_EQ(ws_parser_feed(&p, b, sizeof over, &c), WS_ERR_TOO_BIG);
    CHECK(strcmp(ws_parser_error(&p), "message over the size limit") == 0);
    /* max_message over the ceiling is the ceiling */
    ws_parser_init(&p, (uint64_t)1 << 40, 0);
    memcpy(b, over, sizeof over);
    CHECK_EQ(ws_parser_feed(&p, b, sizeof over, &c), WS_ERR_TOO_BIG);

    /* 0x02 (binary, not FIN) of 2^32 - 16 bytes, then a continuation of 15
     * passes; one of 16 fails. */
    for (int extra = 15; extra <= 16; extra++) {
        static const uint8_t first[] = {0x02, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0};
        uint8_t second[] = {0x80, (uint8_t)(0x80 | extra), 0, 0, 0, 0};
        ws_parser_init(&p, 0, 0);
        memcpy(b, first, sizeof first);
        CHECK_EQ(ws_parser_feed(&p, b, sizeof first, &c), (long)sizeof first);
        uint64_t left = 0xfffffff0u;
        size_t piece = sizeof(struct wire);
        int bad = 0;
        while (left) {
            size_t n = left < piece ? (size_t)left : piece;
            bad += ws_parser_feed(&p, b, n, &c) != (long)n;
            left -= n;
        }
        CHECK_EQ(bad, 0);
        memcpy(b, second, sizeof second);
        long r = ws_parser_feed(&p, b, sizeof second, &c);
        if (extra == 15)
            CHECK_EQ(r, (long)sizeof second);
        else
            CHECK_EQ(r, WS_ERR_TOO_BIG);
    }
}

/* Feed w in three pieces, cut at i and j, staged as the server does. */
static void run_cut(struct run *r, const struct wire *w, size_t i, size_t j)
{
    size_t cuts[3] = {i, j - i, SIZE_MAX};
    run(r, w, STAGED, cuts, 3, &NOLIMIT);
}

/* A ping cut in every possible place, in two and in three pieces, alone and
 * between the fragments of a message, is reported once, whole. */
static void test_control_split(void)
{
    int bad = 0;

    wire_reset();
    FRAME(&W, 0x89, "ping!");
    for (size_t i = 0; i <= W.n; i++)
        for (size_t j = i; j <= W.n; j++) {
            run_cut(R, &W, i, j);
            bad += R->err != 0 || R->violations != 0 || R->tail != 0 || R->nev != 1 ||
                   !event_is(0, 'C', WS_OP_PING, "ping!", 5);
        }
    CHECK_EQ(bad, 0);

    wire_reset();
    FRAME(&W, 0x01, "Hel");
    FRAME(&W, 0x89, "ping!");
    FRAME(&W, 0x80, "lo");
    for (size_t i = 0; i <= W.n; i++)
        for (size_t j = i; j <= W.n; j++) {
            run_cut(R, &W, i, j);
            bad += R->err != 0 || R->violations != 0 || R->tail != 0 || R->nev != 2 ||
                   !event_is(0, 'M', WS_OP_TEXT, "Hello", 5) ||
                   !event_is(1, 'C', WS_OP_PING, "ping!", 5);
        }
    CHECK_EQ(bad, 0);

    /* A stream that ends inside a control frame keeps all of it as the
     * tail and reports nothing; one that ends in a data frame's payload
     * keeps nothing. */
    wire_reset();
    FRAME(&W, 0x82, "ab");
    FRAME(&W, 0x88, "\x03\xe8" "bye");
    W.n -= 1;
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);
    CHECK_EQ(R->nev, 1);
    CHECK_EQ(R->tail, 6 + 4);
}

/* ---- the parser, every rule, every feeding ---- */

static void test_valid_streams(void)
{
    struct cfg rsv1 = {0, 0, 0x40};

    /* 16- and 64-bit lengths. */
    static uint8_t big[70000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i % 251);
    wire_reset();
    wire_frame(&W, 0x82, big, 126, KEY);
    wire_frame(&W, 0x82, big, 65535, KEY);
    wire_frame(&W, 0x82, big, 70000, KEY);
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);
    CHECK_EQ(R->nev, 3);
    CHECK(event_is(0, 'M', WS_OP_BINARY, big, 126));
    CHECK(event_is(1, 'M', WS_OP_BINARY, big, 65535));
    CHECK(event_is(2, 'M', WS_OP_BINARY, big, 70000));

    /* Pings and pongs between fragments, a close at the end. */
    wire_reset();
    FRAME(&W, 0x01, "Hel");
    FRAME(&W, 0x89, "p1");
    FRAME(&W, 0x00, "lo, ");
    FRAME(&W, 0x8A, "");
    FRAME(&W, 0x89, "p2");
    FRAME(&W, 0x80, "world");
    FRAME(&W, 0x88, "\x03\xe8" "bye");
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);
    CHECK_EQ(R->nev, 5);
    EVENT_IS(0, 'M', WS_OP_TEXT, "Hello, world");
    EVENT_IS(1, 'C', WS_OP_PING, "p1");
    EVENT_IS(2, 'C', WS_OP_PONG, "");
    EVENT_IS(3, 'C', WS_OP_PING, "p2");
    EVENT_IS(4, 'C', WS_OP_CLOSE, "\x03\xe8" "bye");

    /* UTF-8 split across frames is one stream. */
    wire_reset();
    FRAME(&W, 0x01, "\xce");
    FRAME(&W, 0x00, "\xba\xe1");
    FRAME(&W, 0x89, "");
    FRAME(&W, 0x80, "\xbd\xb9");
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);
    EVENT_IS(0, 'M', WS_OP_TEXT, "\xce\xba\xe1\xbd\xb9");

    /* The parser does not judge close payloads: the caller does. */
    wire_reset();
    FRAME(&W, 0x88, "\x03\xe7\xff");
    FRAME(&W, 0x88, "\x01");
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);
    EVENT_IS(0, 'C', WS_OP_CLOSE, "\x03\xe7\xff");
    EVENT_IS(1, 'C', WS_OP_CLOSE, "\x01");

    /* Control payload of exactly 125 bytes. */
    wire_reset();
    wire_frame(&W, 0x89, big, 125, KEY);
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);
    CHECK(event_is(0, 'C', WS_OP_PING, big, 125));

    /* RSV1 negotiated: a compressed text message is not UTF-8 checked, and
     * the bits are reported on the chunk. */
    wire_reset();
    FRAME(&W, 0x41, "\xff\xfe");
    FRAME(&W, 0x80, "\xce");
    FRAME(&W, 0xC1, "\xc0");
    RUN(&W, &rsv1);
    CHECK_EQ(R->err, 0);
    CHECK_EQ(R->nev, 2);
    EVENT_IS(0, 'M', WS_OP_TEXT, "\xff\xfe\xce");
    CHECK_EQ(R->ev[0].rsv, 0x40);
    EVENT_IS(1, 'M', WS_OP_TEXT, "\xc0");

    /* RSV1 allowed but unused: text is checked as usual. */
    wire_reset();
    FRAME(&W, 0x81, "\xff");
    RUN(&W, &rsv1);
    EXPECT_ERROR(WS_ERR_UTF8, "invalid UTF-8 in text message");

    /* RSV2 and RSV3 when an extension claims them. */
    struct cfg all = {0, 0, 0x70};
    wire_reset();
    FRAME(&W, 0xB1, "a");
    FRAME(&W, 0x99, "b");
    RUN(&W, &all);
    CHECK_EQ(R->err, 0);
    CHECK_EQ(R->ev[0].rsv, 0x30);
    CHECK_EQ(R->ev[1].rsv, 0x10);

    /* A truncated stream is not an error: it waits for more. */
    wire_reset();
    FRAME(&W, 0x01, "abc");
    W.n -= 1;
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);
    CHECK_EQ(R->nev, 1);
    CHECK(!R->ev[0].ended && R->ev[0].len == 2);
    CHECK_EQ(R->tail, 0); /* payload is never held back */
    wire_reset();
    FRAME(&W, 0x82, "abc");
    wire_raw(&W, "\x81\xfe\x01", 3); /* a 16-bit length, one byte of it */
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);
    CHECK_EQ(R->nev, 1);
    CHECK_EQ(R->tail, 3);
}

static void test_protocol_errors(void)
{
    struct cfg rsv1 = {0, 0, 0x40};

    wire_reset();
    wire_raw(&W, "\x81\x05" "Hello", 7);
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "unmasked client frame");

    static const uint8_t reserved[] = {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF};
    for (size_t i = 0; i < sizeof reserved; i++) {
        char why[32];
        snprintf(why, sizeof why, "reserved opcode 0x%X", reserved[i]);
        wire_reset();
        wire_frame(&W, (uint8_t)(0x80 | reserved[i]), "x", 1, KEY);
        RUN(&W, &NOLIMIT);
        EXPECT_ERROR(WS_ERR_PROTOCOL, why);
        /* the first byte alone decides it */
        W.n = 1;
        RUN(&W, &NOLIMIT);
        EXPECT_ERROR(WS_ERR_PROTOCOL, why);
    }

    static const uint8_t rsv[] = {0xC1, 0xA1, 0x91, 0xF2};
    for (size_t i = 0; i < sizeof rsv; i++) {
        wire_reset();
        wire_frame(&W, rsv[i], "x", 1, KEY);
        RUN(&W, &NOLIMIT);
        EXPECT_ERROR(WS_ERR_PROTOCOL, "RSV bits set without extension");
    }
    wire_reset();
    FRAME(&W, 0xA1, "x"); /* RSV2 when only RSV1 was negotiated */
    RUN(&W, &rsv1);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "RSV bits set without extension");

    wire_reset();
    FRAME(&W, 0xC9, "x");
    RUN(&W, &rsv1);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "RSV1 set on a control frame");

    wire_reset();
    FRAME(&W, 0x41, "a");
    FRAME(&W, 0xC0, "b");
    RUN(&W, &rsv1);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "RSV1 set on a continuation frame");
    CHECK_EQ(R->nev, 1);

    wire_reset();
    static uint8_t pl[126];
    wire_frame(&W, 0x89, pl, 126, KEY);
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "control frame payload over 125 bytes");
    wire_reset();
    wire_raw(&W, "\x8a\xfe\x00\x05", 4); /* 16-bit length form, even for a short pong */
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "control frame payload over 125 bytes");

    static const uint8_t unfinished_controls[] = {0x08, 0x09, 0x0A};
    for (size_t i = 0; i < sizeof unfinished_controls; i++) {
        wire_reset();
        FRAME(&W, unfinished_controls[i], "");
        RUN(&W, &NOLIMIT);
        EXPECT_ERROR(WS_ERR_PROTOCOL, "fragmented control frame");
    }

    wire_reset();
    FRAME(&W, 0x80, "x");
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "continuation frame without a message");
    wire_reset();
    FRAME(&W, 0x81, "done");
    FRAME(&W, 0x00, "x");
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "continuation frame without a message");
    EVENT_IS(0, 'M', WS_OP_TEXT, "done");

    wire_reset();
    FRAME(&W, 0x01, "a");
    FRAME(&W, 0x89, "");
    FRAME(&W, 0x82, "b");
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "new data frame inside a fragmented message");
    CHECK_EQ(R->nev, 2);

    wire_reset();
    wire_raw(&W, "\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00", 10);
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_PROTOCOL, "64-bit length with the high bit set");
}

static void test_utf8_errors(void)
{
    /* Fail fast: the bad byte fails the message before the frame is over. */
    wire_reset();
    wire_raw(&W, "\x81\xe4", 2); /* masked, 100 bytes of payload announced */
    wire_raw(&W, KEY, 4);
    const uint8_t body[3] = {'a' ^ KEY[0], 'b' ^ KEY[1], 0xff ^ KEY[2]};
    wire_raw(&W, body, 3);
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_UTF8, "invalid UTF-8 in text message");

    /* ... also in a continuation frame. */
    wire_reset();
    FRAME(&W, 0x01, "ok");
    FRAME(&W, 0x80, "\xed\xa0\x80");
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_UTF8, "invalid UTF-8 in text message");

    /* A text message may not end inside a character... */
    wire_reset();
    FRAME(&W, 0x81, "a\xce");
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_UTF8, "text message ends inside a UTF-8 character");
    wire_reset();
    FRAME(&W, 0x01, "a\xce");
    FRAME(&W, 0x80, "");
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_UTF8, "text message ends inside a UTF-8 character");
    /* ... but a frame may, and binary is never checked. */
    wire_reset();
    FRAME(&W, 0x01, "a\xce");
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);
    wire_reset();
    FRAME(&W, 0x82, "\xff\xce");
    RUN(&W, &NOLIMIT);
    CHECK_EQ(R->err, 0);

    /* A new message starts with a fresh validator. */
    wire_reset();
    FRAME(&W, 0x82, "\xce");
    FRAME(&W, 0x81, "\xba");
    RUN(&W, &NOLIMIT);
    EXPECT_ERROR(WS_ERR_UTF8, "invalid UTF-8 in text message");
}

static void test_limits(void)
{
    struct cfg ten = {10, 0, 0};
    struct cfg three = {0, 3, 0};

    /* Exactly at the limit is fine, one over fails on the header alone. */
    wire_reset();
    FRAME(&W, 0x82, "0123456789");
    FRAME(&W, 0x01, "01234");
    FRAME(&W, 0x89, "control frames do not count");
    FRAME(&W, 0x80, "56789");
    RUN(&W, &ten);
    CHECK_EQ(R->err, 0);
    CHECK_EQ(R->nev, 3);

    wire_reset();
    wire_raw(&W, "\x82\x8b", 2);
    wire_raw(&W, KEY, 4);
    RUN(&W, &ten);
    EXPECT_ERROR(WS_ERR_TOO_BIG, "message over the size limit");
    W.n = 2; /* the length decides it: the mask key is not needed */
    RUN(&W, &ten);
    EXPECT_ERROR(WS_ERR_TOO_BIG, "message over the size limit");

    /* Across fragments: the third frame's header takes it over. */
    wire_reset();
    FRAME(&W, 0x01, "0123");
    FRAME(&W, 0x00, "4567");
    wire_raw(&W, "\x80\x83", 2);
    RUN(&W, &ten);
    EXPECT_ERROR(WS_ERR_TOO_BIG, "message over the size limit");
    CHECK_EQ(R->nev, 1);

    /* A 64-bit length far beyond any limit. */
    wire_reset();
    wire_raw(&W, "\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff", 10);
    RUN(&W, &ten);
    EXPECT_ERROR(WS_ERR_TOO_BIG, "message over the size limit");

    /* Fragment count: three frames pass, the fourth header fails. */
    wire_reset();
    FRAME(&W, 0x01, "a");
    FRAME(&W, 0x89, "");
    FRAME(&W, 0x00, "b");
    FRAME(&W, 0x80, "c");
    FRAME(&W, 0x01, "a");
    FRAME(&W, 0x00, "b");
    FRAME(&W, 0x00, "c");
    wire_raw(&W, "\x80\x81", 2);
    RUN(&W, &three);
    EXPECT_ERROR(WS_ERR_TOO_BIG, "message over the fragment limit");
    CHECK_EQ(R->nev, 3);
    EVENT_IS(0, 'M', WS_OP_TEXT, "abc");
}

/* ---- round trip: random messages through the encoder and back ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* Random valid UTF-8 of about len bytes (whole characters only). */
static size_t random_utf8(uint8_t *o, size_t len)
{
    size_t n = 0;

    while (n + 4 <= len) {
        uint32_t cp;
        switch (rnd(4)) {
        case 0: cp = rnd(0x80); break;
        case 1: cp = 0x80 + rnd(0x800 - 0x80); break;
        case 2: cp = 0x800 + rnd(0x10000 - 0x800); break;
        default: cp = 0x10000 + rnd(0x110000 - 0x10000); break;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF)
            cp = 'S';
        if (cp < 0x80) {
            o[n++] = (uint8_t)cp;
        } else if (cp < 0x800) {
            o[n++] = (uint8_t)(0xC0 | cp >> 6);
            o[n++] = (uint8_t)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            o[n++] = (uint8_t)(0xE0 | cp >> 12);
            o[n++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            o[n++] = (uint8_t)(0x80 | (cp & 0x3F));
        } else {
            o[n++] = (uint8_t)(0xF0 | cp >> 18);
            o[n++] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
            o[n++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            o[n++] = (uint8_t)(0x80 | (cp & 0x3F));
        }
    }
    return n;
}

static void test_round_trip(void)
{
    static uint8_t msg[80000];
    static struct event want[64];
    static uint8_t want_data[1 << 18];
    int mismatches = 0;

    for (int iter = 0; iter < 60; iter++) {
        int nwant = 0;
        size_t used = 0;
        wire_reset();
        int nmsg = 1 + (int)rnd(5);
        for (int m = 0; m < nmsg; m++) {
            uint8_t op = rnd(2) ? WS_OP_TEXT : WS_OP_BINARY;
            size_t len = rnd(10) == 0 ? 60000 + rnd(10000) : rnd(300);
            if (op == WS_OP_TEXT)
                len = random_utf8(msg, len);
            else
                for (size_t i = 0; i < len; i++)
                    msg[i] = (uint8_t)rnd(256);
            struct event *e = &want[nwant++];
            memset(e, 0, sizeof *e);
            e->kind = 'M';
            e->op = op;
            e->ended = 1;
            e->off = used;
            e->len = len;
            memcpy(want_data + used, msg, len);
            used += len;
            /* Cut into 1..4 frames at random points, which may split characters. */
            int nfrag = 1 + (int)rnd(4);
            size_t at = 0;
            for (int f = 0; f < nfrag; f++) {
                size_t end = f == nfrag - 1 ? len : at + rnd((uint32_t)(len - at + 1));
                uint8_t key[4] = {(uint8_t)rnd(256), (uint8_t)rnd(256), (uint8_t)rnd(256),
                                  (uint8_t)rnd(256)};
                uint8_t b0 = (uint8_t)((f == 0 ? op : WS_OP_CONT) | (f == nfrag - 1 ? 0x80 : 0));
                wire_frame(&W, b0, msg + at, end - at, key);
                at = end;
                if (rnd(3) == 0) {
                    uint8_t ctl[125];
                    size_t clen = rnd(126);
                    uint8_t cop = rnd(2) ? WS_OP_PING : WS_OP_PONG;
                    for (size_t i = 0; i < clen; i++)
                        ctl[i] = (uint8_t)rnd(256);
                    wire_frame(&W, (uint8_t)(0x80 | cop), ctl, clen, key);
                    struct event *c = &want[nwant++];
                    memset(c, 0, sizeof *c);
                    c->kind = 'C';
                    c->op = cop;
                    c->ended = 1;
                    c->len = clen;
                    memcpy(c->ctl, ctl, clen);
                }
            }
        }
        size_t pattern[3] = {1 + rnd(50), 1 + rnd(3000), 1 + rnd(7)};
        const size_t *patterns[4] = {WHOLE, BYTES, pattern, pattern};
        const size_t npats[4] = {1, 1, 3, 3};
        const enum present hows[4] = {IN_PLACE, STAGED, IN_PLACE, STAGED};
        for (int k = 0; k < 4; k++) {
            run(R, &W, hows[k], patterns[k], npats[k], &NOLIMIT);
            int ok = R->err == 0 && R->violations == 0 && R->tail == 0 && R->nev == nwant;
            for (int i = 0; ok && i < nwant; i++) {
                const struct event *x = &R->ev[i], *y = &want[i];
                ok = x->kind == y->kind && x->op == y->op && x->len == y->len && x->ended &&
                     memcmp(x->kind == 'M' ? msg_data(R, i) : x->ctl,
                            y->kind == 'M' ? want_data + y->off : y->ctl, x->len) == 0;
            }
            mismatches += !ok;
        }
    }
    CHECK_EQ(mismatches, 0);
}

int main(void)
{
    scratch = malloc(sizeof(struct wire));
    R = malloc(sizeof *R);
    S = malloc(sizeof *S);
    CHECK(scratch && R && S);
    guard_init();
    test_frame_header();
    test_unmask();
    test_close_parse();
    test_error_codes();
    test_feed_contract();
    test_header_split();
    test_control_split();
    test_valid_streams();
    test_protocol_errors();
    test_utf8_errors();
    test_limits();
    test_message_max();
    test_round_trip();
    test_small_messages();
    free(scratch);
    free(R);
    free(S);
    return unit_done("ws_frame");
}
