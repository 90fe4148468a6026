/* ws_deflate: RFC 7692 permessage-deflate for the server: parsing the
 * client's Sec-WebSocket-Extensions offers, choosing one and writing the
 * response, and inflating and deflating whole messages with zlib. It must
 * never touch a socket, libev or Lua, nor trust the header it parses: a
 * malformed one is reported, never read past its NUL. zlib's allocations go
 * through counting hooks so that the memory of each context is known. */
#include "ws_deflate.h"

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "ws_frame.h"

/* ---------------------------------------------------------------------- */
/* Negotiation                                                            */
/* ---------------------------------------------------------------------- */

#define NAME "permessage-deflate"
#define WBITS_MIN 8  /* RFC 7692 7.1.2.1, 7.1.2.2: 8..15 */
#define WBITS_ZLIB 9 /* raw deflate in zlib refuses 8 (deflateInit2 returns an error):
                        an 8-bit deflater codes Huffman only (ws_deflater_new) */
#define WBITS_MAX 15

void ws_deflate_policy_init(struct ws_deflate_policy *p)
{
    p->enabled = 1;
    p->server_max_window_bits = WBITS_MAX;
    p->server_no_context_takeover = 1;
    p->client_no_context_takeover = 1;
    p->client_max_window_bits = WBITS_MAX;
    p->mem_level = 8;
    p->level = Z_DEFAULT_COMPRESSION;
}

static int clamp_bits(int bits)
{
    return bits < WBITS_ZLIB ? WBITS_ZLIB : bits > WBITS_MAX ? WBITS_MAX : bits;
}

/* RFC 2616 section 2.2, which RFC 6455 section 9.1 uses: a token is one or
 * more CHARs that are neither CTLs nor separators. */
static int is_tchar(unsigned char c)
{
    if (c <= 32 || c >= 127)
        return 0;
    return strchr("()<>@,;:\\\"/[]?={}", c) == NULL;
}

/* One parameter as parsed: its name, and its value with any quoted-string
 * unescaped. Values longer than our parameters can have are kept cut, and
 * flagged: they are invalid for every parameter we know. */
#define VALUE_KEEP 8
struct param {
    const char *name;
    size_t name_len;
    int has_value;
    char value[VALUE_KEEP];
    size_t value_len; /* the whole length, even when more than VALUE_KEEP */
};

/* The parameters of one permessage-deflate offer, as far as they are known;
 * ok is cleared by anything that makes the offer one to decline. */
struct offer {
    int ok;
    int server_no_context_takeover, client_no_context_takeover;
    int server_max_window_bits;      /* 0: absent; -1: present but invalid */
    int has_client_max_window_bits;  /* present, with or without a value */
    int client_max_window_bits;      /* 0: no value */
};

struct cursor {
    const char *p;
};

static void skip_ows(struct cursor *c)
{
    while (*c->p == ' ' || *c->p == '\t')
        c->p++;
}

/* A token at the cursor: its length, 0 if there is none. */
static size_t take_token(struct cursor *c)
{
    const char *start = c->p;
    while (is_tchar((unsigned char)*c->p))
        c->p++;
    return (size_t)(c->p - start);
}

/* A parameter value, token or quoted-string (RFC 2616 section 2.2), into
 * p->value. RFC 6455 section 9.1: "When using the quoted-string syntax
 * variant, the value after quoted-string unescaping MUST conform to the
 * 'token' ABNF." Returns 0 when the value is malformed. */
static int take_value(struct cursor *c, struct param *p)
{
    p->has_value = 1;
    p->value_len = 0;
    if (*c->p != '"') {
        const char *start = c->p;
        size_t n = take_token(c);
        if (n == 0)
            return 0;
        memcpy(p->value, start, n < VALUE_KEEP ? n : VALUE_KEEP);
        p->value_len = n;
        return 1;
    }
    c->p++;
    for (;;) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"')
            break;
        if (ch == '\\') { /* quoted-pair = "\" CHAR */
            c->p++;
            ch = (unsigned char)*c->p;
        }
        if (ch == '\0' || !is_tchar(ch)) /* the end, or not a token after unescaping */
            return 0;
        if (p->value_len < VALUE_KEEP)
            p->value[p->value_len] = (char)ch;
        p->value_len++;
        c->p++;
    }
    c->p++;
    return p->value_len > 0;
}

/* Names compare without regard to ASCII case, as HTTP tokens usually do. */
static int name_is(const char *s, size_t n, const char *name)
{
    size_t i;
    for (i = 0; i < n && name[i]; i++) {
        unsigned char a = (unsigned char)s[i], b = (unsigned char)name[i];
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a - 'A' + 'a');
        if (a != b)
            return 0;
    }
    return i == n && name[i] == '\0';
}

/* A window size: "a decimal integer value without leading zeroes between 8
 * to 15, inclusive" (RFC 7692 7.1.2.1, 7.1.2.2). 0 if it is not one. */
static int window_value(const struct param *p)
{
    if (p->value_len == 1 && p->value[0] >= '8' && p->value[0] <= '9')
        return p->value[0] - '0';
    if (p->value_len == 2 && p->value[0] == '1' && p->value[1] >= '0' && p->value[1] <= '5')
        return 10 + (p->value[1] - '0');
    return 0;
}

/* Record one parameter of a permessage-deflate offer. RFC 7692 section 7: a
 * server MUST decline an offer that "contains an extension parameter not
 * defined for use in an offer", "an extension parameter with an invalid
 * value", or "multiple extension parameters with the same name". */
static void offer_param(struct offer *o, const struct param *p)
{
    const char *n = p->name;
    size_t len = p->name_len;
    if (name_is(n, len, "server_no_context_takeover")) {
        /* 7.1.1.1: "This extension parameter has no value." */
        if (o->server_no_context_takeover || p->has_value)
            o->ok = 0;
        o->server_no_context_takeover = 1;
    } else if (name_is(n, len, "client_no_context_takeover")) {
        /* 7.1.1.2: "This extension parameter has no value." */
        if (o->client_no_context_takeover || p->has_value)
            o->ok = 0;
        o->client_no_context_takeover = 1;
    } else if (name_is(n, len, "server_max_window_bits")) {
        /* 7.1.2.1: a value is required in an offer. */
        int bits = p->has_value ? window_value(p) : 0;
        if (o->server_max_window_bits || bits == 0)
            o->ok = 0;
        o->server_max_window_bits = bits ? bits : -1;
    } else if (name_is(n, len, "client_max_window_bits")) {
        /* 7.1.2.2: "This parameter has no value or a decimal integer
         * value ... between 8 to 15 inclusive". */
        int bits = p->has_value ? window_value(p) : 0;
        if (o->has_client_max_window_bits || (p->has_value && bits == 0))
            o->ok = 0;
        o->has_client_max_window_bits = 1;
        o->client_max_window_bits = bits;
    } else {
        o->ok = 0;
    }
}

/* Decide whether to accept a well-formed offer, and with what. Returns 1
 * and fills *out, or 0 to decline. */
static int offer_accept(const struct offer *o, const struct ws_deflate_policy *policy,
                        struct ws_deflate_params *out)
{
    if (!o->ok)
        return 0;
    int server_bits = clamp_bits(policy->server_max_window_bits);
    if (o->server_max_window_bits) {
        /* 7.1.2.1: the response must carry "the same or smaller value as the
         * offer". zlib cannot deflate raw data with an 8-bit window, but a
         * deflater that never refers back (Huffman coding only, see
         * ws_deflater_new) keeps to any window, so 8 is accepted too. */
        if (o->server_max_window_bits < server_bits)
            server_bits = o->server_max_window_bits;
    }
    int client_bits = WBITS_MAX;
    if (o->has_client_max_window_bits) {
        /* 7.1.2.2: the server may limit the client's window, with a value
         * "equal to or smaller than the received value". */
        client_bits = clamp_bits(policy->client_max_window_bits);
        if (o->client_max_window_bits && o->client_max_window_bits < client_bits)
            client_bits = o->client_max_window_bits;
    }
    out->server_max_window_bits = (uint8_t)server_bits;
    out->client_max_window_bits = (uint8_t)client_bits;
    /* 7.1.1.1: accepting an offer with server_no_context_takeover means
     * including it; "A server MAY include the "server_no_context_takeover"
     * extension parameter in an extension negotiation response even if the
     * extension negotiation offer being accepted by the extension
     * negotiation response didn't include" it. */
    out->server_no_context_takeover =
        (uint8_t)(o->server_no_context_takeover || policy->server_no_context_takeover);
    /* 7.1.1.2: "A server MAY include the "client_no_context_takeover"
     * extension parameter in an extension negotiation response." When the
     * client offered it we always take the hint: it costs the client
     * nothing, and lets one inflater serve every connection. */
    out->client_no_context_takeover =
        (uint8_t)(o->client_no_context_takeover || policy->client_no_context_takeover);
    return 1;
}

/* The response for the agreed parameters (7.1.1.1, 7.1.1.2, 7.1.2.1,
 * 7.1.2.2). Returns 0 if it does not fit. */
static int write_response(const struct offer *o, const struct ws_deflate_params *a, char *out,
                          size_t len)
{
    /* 7.1.2.1: server_max_window_bits when the offer had it, and also when
     * we use a smaller window than the 15 the client otherwise expects
     * ("A server MAY include ... even if the extension negotiation offer
     * being accepted by the response didn't include" it).
     * 7.1.2.2: "If a received extension negotiation offer doesn't have the
     * "client_max_window_bits" extension parameter, the corresponding
     * extension negotiation response to the offer MUST NOT include" it; in
     * a response it always has a value. */
    int with_server_bits = o->server_max_window_bits || a->server_max_window_bits < WBITS_MAX;
    int n = snprintf(out, len, "%s%s%s", NAME,
                     a->server_no_context_takeover ? "; server_no_context_takeover" : "",
                     a->client_no_context_takeover ? "; client_no_context_takeover" : "");
    if (n >= 0 && (size_t)n < len && with_server_bits)
        n += snprintf(out + n, len - (size_t)n, "; server_max_window_bits=%d",
                      a->server_max_window_bits);
    if (n >= 0 && (size_t)n < len && o->has_client_max_window_bits)
        n += snprintf(out + n, len - (size_t)n, "; client_max_window_bits=%d",
                      a->client_max_window_bits);
    return n >= 0 && (size_t)n < len;
}

/* RFC 6455 section 9.1:
 *   extension-list = 1#extension
 *   extension = extension-token *( ";" extension-param )
 *   extension-param = token [ "=" (token | quoted-string) ]
 * with RFC 2616's implied linear white space between the parts, and its
 * #rule's empty list elements. The whole header is parsed even after an
 * offer is accepted, so that a malformed header is always reported. */
int ws_deflate_negotiate(const char *offers, const struct ws_deflate_policy *policy,
                         struct ws_deflate_params *out, char *response, size_t response_len)
{
    struct cursor c = {offers};
    int accepted = 0;

    memset(out, 0, sizeof *out);
    if (response_len > 0)
        response[0] = '\0';
    if (!offers || !policy->enabled || response_len < WS_DEFLATE_RESPONSE_MAX)
        return WS_DEFLATE_DECLINED;
    for (;;) {
        skip_ows(&c);
        if (*c.p == '\0')
            break;
        if (*c.p == ',') {
            c.p++;
            continue;
        }
        const char *name = c.p;
        size_t name_len = take_token(&c);
        if (name_len == 0)
            goto malformed;
        int ours = name_is(name, name_len, NAME);
        struct offer o = {.ok = 1};
        for (;;) {
            skip_ows(&c);
            if (*c.p != ';')
                break;
            c.p++;
            skip_ows(&c);
            struct param p = {.name = c.p};
            p.name_len = take_token(&c);
            if (p.name_len == 0)
                goto malformed;
            skip_ows(&c);
            if (*c.p == '=') {
                c.p++;
                skip_ows(&c);
                if (!take_value(&c, &p))
                    goto malformed;
            }
            if (ours)
                offer_param(&o, &p);
        }
        if (*c.p != ',' && *c.p != '\0')
            goto malformed;
        /* RFC 7692 section 5: the offers are in the client's order of
         * preference; accept the first one we can. */
        if (ours && !accepted && offer_accept(&o, policy, out)) {
            if (!write_response(&o, out, response, response_len)) {
                memset(out, 0, sizeof *out);
                response[0] = '\0';
                return WS_DEFLATE_DECLINED;
            }
            accepted = 1;
        }
    }
    return accepted ? WS_DEFLATE_ACCEPTED : WS_DEFLATE_DECLINED;

malformed:
    memset(out, 0, sizeof *out);
    response[0] = '\0';
    return WS_DEFLATE_MALFORMED;
}

/* ---------------------------------------------------------------------- */
/* zlib memory                                                            */
/* ---------------------------------------------------------------------- */

/* zlib allocates through these, with the context's byte counter as opaque.
 * Each block carries its size in front, in a header as aligned as malloc's. */
union mem_header {
    max_align_t align;
    size_t size;
};

static voidpf mem_alloc(voidpf opaque, uInt items, uInt size)
{
    size_t *counter = opaque;
    if (size && items > (SIZE_MAX - sizeof(union mem_header)) / size)
        return Z_NULL;
    size_t n = (size_t)items * size;
    union mem_header *h = malloc(sizeof *h + n);
    if (!h)
        return Z_NULL;
    h->size = n;
    *counter += n;
    return h + 1;
}

static void mem_free(voidpf opaque, voidpf p)
{
    size_t *counter = opaque;
    if (!p)
        return;
    union mem_header *h = (union mem_header *)p - 1;
    *counter -= h->size;
    free(h);
}

static const uint8_t empty_stored_block[4] = {0x00, 0x00, 0xff, 0xff};

/* Output is produced in steps of this many bytes at most. */
#define STEP (16 * 1024)

/* Put out back to the length it had before a failed call. */
static void buf_truncate(struct buf *b, size_t pending)
{
    if (pending == 0)
        buf_reset(b);
    else
        b->blk->len = b->blk->off + pending;
}

uint16_t ws_deflate_close_code(int err)
{
    switch (err) {
    case WS_ERR_TOO_BIG:
        return WS_CLOSE_TOO_BIG;
    case WS_DEFLATE_ERR_DATA:
        return WS_CLOSE_INVALID_DATA;
    default:
        return WS_CLOSE_INTERNAL;
    }
}

/* ---------------------------------------------------------------------- */
/* Inflate                                                                */
/* ---------------------------------------------------------------------- */

struct ws_inflater {
    z_stream zs;
    size_t mem; /* bytes zlib holds */
    int no_context_takeover;
};

struct ws_inflater *ws_inflater_new(int window_bits, int no_context_takeover)
{
    if (window_bits < WBITS_MIN || window_bits > WBITS_MAX)
        return NULL;
    /* zlib's own deflate cannot use 8 bits; a client that says 8 may well
     * use 9, and a larger window inflates a smaller one's data. */
    if (window_bits < WBITS_ZLIB)
        window_bits = WBITS_ZLIB;
    struct ws_inflater *z = calloc(1, sizeof *z);
    if (!z)
        return NULL;
    z->zs.zalloc = mem_alloc;
    z->zs.zfree = mem_free;
    z->zs.opaque = &z->mem;
    z->no_context_takeover = no_context_takeover;
    if (inflateInit2(&z->zs, -window_bits) != Z_OK) { /* negative: raw DEFLATE */
        free(z);
        return NULL;
    }
    return z;
}

void ws_inflater_free(struct ws_inflater *z)
{
    if (!z)
        return;
    inflateEnd(&z->zs);
    free(z);
}

void ws_inflater_reset(struct ws_inflater *z)
{
    inflateReset(&z->zs);
}

size_t ws_inflater_memory(const struct ws_inflater *z)
{
    return sizeof *z + z->mem;
}

/* The sender ended a DEFLATE stream (a block with BFINAL set). RFC 7692
 * 7.2.1: "an endpoint MAY use both DEFLATE blocks with the "BFINAL" bit set
 * to 0 and DEFLATE blocks with the "BFINAL" bit set to 1", and "The next
 * DEFLATE block follows the padded data if any". zlib stops at the end of a
 * stream, so start a new one that keeps the window: later blocks, in this
 * message or the next, may still refer back to it. */
static int inflate_restart(z_stream *zs)
{
    uint8_t window[1 << WBITS_MAX];
    uInt n = sizeof window;
    if (inflateGetDictionary(zs, window, &n) != Z_OK || inflateReset(zs) != Z_OK)
        return WS_DEFLATE_ERR_DATA;
    if (n > 0 && inflateSetDictionary(zs, window, n) != Z_OK)
        return WS_DEFLATE_ERR_DATA;
    return 0;
}

int ws_inflate_message(struct ws_inflater *z, const uint8_t *in, size_t len, struct buf *out,
                       uint64_t max)
{
    z_stream *zs = &z->zs;
    size_t before = buf_pending(out);
    uint64_t total = 0;
    int at_boundary = 0, rc;

    /* 7.2.2: "If the "agreed parameters" contain the
     * "client_no_context_takeover" extension parameter, the server MAY
     * decompress each new message with an empty LZ77 sliding window.
     * Otherwise, the server MUST decompress each new message using the LZ77
     * sliding window used to process the last compressed message." */
    if (z->no_context_takeover)
        inflateReset(zs);

    /* 7.2.2: "1. Append 4 octets of 0x00 0x00 0xff 0xff to the tail end of
     * the payload of the message. 2. Decompress the resulting data using
     * DEFLATE." The two parts are fed in turn rather than copied together. */
    const uint8_t *part[2] = {in, empty_stored_block};
    size_t part_left[2] = {len, sizeof empty_stored_block};
    int cur = 0;
    zs->avail_in = 0;
    for (;;) {
        while (zs->avail_in == 0 && cur < 2) {
            size_t n = part_left[cur] < UINT_MAX ? part_left[cur] : UINT_MAX;
            zs->next_in = (Bytef *)(uintptr_t)part[cur]; /* zlib does not write it */
            zs->avail_in = (uInt)n;
            part[cur] += n;
            part_left[cur] -= n;
            if (part_left[cur] == 0)
                cur++;
        }
        /* Never ask for more than one byte past max: a zip bomb stops there. */
        size_t room = STEP;
        if (max && max - total < room)
            room = (size_t)(max - total) + 1;
        uint8_t *w = buf_reserve(out, room);
        if (!w) {
            rc = WS_DEFLATE_ERR_NOMEM;
            goto fail;
        }
        zs->next_out = w;
        zs->avail_out = (uInt)room;
        int zrc = inflate(zs, Z_SYNC_FLUSH);
        size_t got = room - zs->avail_out;
        buf_commit(out, got);
        total += got;
        if (max && total > max) {
            rc = WS_ERR_TOO_BIG;
            goto fail;
        }
        if (zrc == Z_STREAM_END) {
            if ((rc = inflate_restart(zs)) != 0)
                goto fail;
            at_boundary = 1;
            if (zs->avail_in == 0 && cur == 2)
                break;
            continue;
        }
        if (zrc == Z_MEM_ERROR) {
            rc = WS_DEFLATE_ERR_NOMEM;
            goto fail;
        }
        if (zrc != Z_OK && zrc != Z_BUF_ERROR) { /* Z_DATA_ERROR, or a dictionary asked for */
            rc = WS_DEFLATE_ERR_DATA;
            goto fail;
        }
        /* zlib's data_type has 128 set when it stopped just before a block
         * header: the message ended where a block did. A call that made no
         * progress (Z_BUF_ERROR) tells nothing new. */
        if (zrc == Z_OK)
            at_boundary = (zs->data_type & 128) != 0;
        if (zs->avail_in == 0 && cur == 2 && zs->avail_out > 0)
            break;
    }
    /* Well-formed data ends with the empty stored block 7.2.1 leaves three
     * bits of and we completed. Ending inside a block means the message was
     * cut, and a window that kept its context would be out of step. */
    if (!at_boundary) {
        rc = WS_DEFLATE_ERR_DATA;
        goto fail;
    }
    return 0;

fail:
    buf_truncate(out, before);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Deflate                                                                */
/* ---------------------------------------------------------------------- */

struct ws_deflater {
    z_stream zs;
    size_t mem; /* bytes zlib holds */
    int no_context_takeover;
};

struct ws_deflater *ws_deflater_new(int window_bits, int mem_level, int level,
                                    int no_context_takeover)
{
    if (window_bits < WBITS_MIN || window_bits > WBITS_MAX || mem_level < 1 || mem_level > 9 ||
        level < -1 || level > 9)
        return NULL;
    /* zlib has no 8-bit window for raw deflate. Huffman coding alone makes
     * no back-references at all, so it keeps to an 8-bit window whatever
     * window zlib is given. */
    int strategy = Z_DEFAULT_STRATEGY;
    if (window_bits < WBITS_ZLIB) {
        window_bits = WBITS_ZLIB;
        strategy = Z_HUFFMAN_ONLY;
    }
    struct ws_deflater *z = calloc(1, sizeof *z);
    if (!z)
        return NULL;
    z->zs.zalloc = mem_alloc;
    z->zs.zfree = mem_free;
    z->zs.opaque = &z->mem;
    z->no_context_takeover = no_context_takeover;
    /* Negative window bits: raw DEFLATE, no zlib header or checksum. */
    if (deflateInit2(&z->zs, level, Z_DEFLATED, -window_bits, mem_level, strategy) != Z_OK) {
        free(z);
        return NULL;
    }
    return z;
}

void ws_deflater_free(struct ws_deflater *z)
{
    if (!z)
        return;
    deflateEnd(&z->zs);
    free(z);
}

size_t ws_deflater_memory(const struct ws_deflater *z)
{
    return sizeof *z + z->mem;
}

int ws_deflate_message(struct ws_deflater *z, const uint8_t *in, size_t len, struct buf *out)
{
    z_stream *zs = &z->zs;
    size_t before = buf_pending(out);

    /* 7.2.3.6: "an endpoint ... can send an empty message as the single
     * octet 0x00", an empty stored block whose last 4 octets were removed.
     * zlib would give nothing at all for it after an earlier flush, and the
     * window does not change either way. */
    if (len == 0)
        return buf_append(out, "", 1) == 0 ? 0 : WS_DEFLATE_ERR_NOMEM;

    /* 7.2.1: "If the "agreed parameters" contain the
     * "server_no_context_takeover" extension parameter, the server MUST
     * start compressing each new message with an empty LZ77 sliding
     * window." Reset before, not after, so a failed message cannot leak
     * into the next. */
    if (z->no_context_takeover)
        deflateReset(zs);

    /* 7.2.1 step 1: compress all the octets; Z_SYNC_FLUSH on the last input
     * ends the data with an empty stored block, 0x00 0x00 0xff 0xff, on a
     * byte boundary (step 2). */
    const uint8_t *p = in;
    size_t left = len;
    for (;;) {
        if (zs->avail_in == 0 && left > 0) {
            size_t n = left < UINT_MAX ? left : UINT_MAX;
            zs->next_in = (Bytef *)(uintptr_t)p; /* zlib does not write it */
            zs->avail_in = (uInt)n;
            p += n;
            left -= n;
        }
        int flush = left == 0 ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        size_t room = zs->avail_in / 2 + 64 < STEP ? zs->avail_in / 2 + 64 : STEP;
        uint8_t *w = buf_reserve(out, room);
        if (!w)
            goto nomem;
        zs->next_out = w;
        zs->avail_out = (uInt)room;
        int zrc = deflate(zs, flush);
        buf_commit(out, room - zs->avail_out);
        if (zrc != Z_OK && zrc != Z_BUF_ERROR)
            goto nomem; /* Z_STREAM_ERROR cannot happen on a valid stream */
        /* Done once the flush has had all the room it wanted. */
        if (flush == Z_SYNC_FLUSH && zs->avail_in == 0 && zs->avail_out > 0)
            break;
    }

    /* 7.2.1 step 3: "Remove 4 octets (that are 0x00 0x00 0xff 0xff) from
     * the tail end." */
    size_t got = buf_pending(out) - before;
    const uint8_t *end = buf_head(out) + buf_pending(out);
    if (got < 5 || memcmp(end - 4, empty_stored_block, 4) != 0)
        goto nomem; /* zlib always ends a sync flush so: our bug */
    out->blk->len -= 4;
    return 0;

nomem:
    zs->avail_in = 0;
    buf_truncate(out, before);
    return WS_DEFLATE_ERR_NOMEM;
}
