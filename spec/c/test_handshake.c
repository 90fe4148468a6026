/* test_handshake: the opening-handshake parser and its checks. Every
 * request is fed whole, in every two-piece split and one byte at a time,
 * and the three must describe the same request down to the byte where the
 * head ends; the inputs that must be refused are refused under every
 * chunking, and a request ending against an unreadable page parses without
 * touching it. */
#include <stdlib.h>
#include <string.h>

#include "handshake.h"
#include "unit.h"

#define LIT(s) s, sizeof(s) - 1

enum { BIG = 16384, MANY = 32 };

/* The RFC 6455 section 1.3 handshake, with a protocol list and an
 * extension offer so that every hs_upgrade field is filled. */
static const char UPGRADE[] = "GET /chat?room=1 HTTP/1.1\r\n"
                              "Host: server.example.com\r\n"
                              "Upgrade: websocket\r\n"
                              "Connection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Origin: http://example.com\r\n"
                              "Sec-WebSocket-Protocol: chat, superchat\r\n"
                              "Sec-WebSocket-Extensions: permessage-deflate\r\n"
                              "Sec-WebSocket-Version: 13\r\n"
                              "\r\n";

/* A masked text frame "Hello" (RFC 6455 5.7): what a client may send in the
 * same write as its handshake. */
static const char FRAME[] = "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";

/* Everything hs_feed reported, as text, so two chunkings compare with one
 * strcmp: result and status, and unless it failed the bytes consumed in
 * total, and for a complete head the method, target and every visible
 * header. */
struct outcome {
    int rc, status;
    size_t consumed;
    char text[BIG + 1024];
};

static void describe(struct hs_request *r, struct outcome *o)
{
    size_t n = 0, cap = sizeof o->text;

    /* After an error the bytes taken by earlier calls depend on the cuts,
     * and the request is dead anyway: only the status is compared. */
    if (o->rc == HS_ERROR) {
        snprintf(o->text, cap, "rc=%d status=%d\n", o->rc, o->status);
        return;
    }
    n += (size_t)snprintf(o->text + n, cap - n, "rc=%d status=%d consumed=%zu\n", o->rc, o->status,
                          o->consumed);
    if (o->rc != HS_DONE)
        return;
    n += (size_t)snprintf(o->text + n, cap - n, "%s %s\n", hs_method(r), hs_target(r));
    for (size_t i = 0; i < hs_header_count(r) && n < cap; i++) {
        const struct hs_header *h = hs_header_at(r, i);
        n += (size_t)snprintf(o->text + n, cap - n, "%s=[%.*s]\n", h->name, (int)h->value_len,
                              h->value);
    }
}

/* Feed s in pieces of the given sizes (the last piece takes the rest), the
 * way a connection would: stop at the first result other than NEED_MORE. */
static struct hs_request *feed_pieces(const char *s, size_t len, const size_t *pieces,
                                      size_t npieces, size_t max_head, unsigned max_headers,
                                      struct outcome *o)
{
    struct hs_request *r = hs_new(max_head, max_headers);
    size_t off = 0;

    memset(o, 0, sizeof *o);
    o->rc = HS_NEED_MORE;
    for (size_t i = 0; o->rc == HS_NEED_MORE && off < len; i++) {
        size_t n = i + 1 < npieces ? pieces[i] : len - off;
        size_t used = 0;
        if (n > len - off)
            n = len - off;
        o->rc = hs_feed(r, s + off, n, &used);
        if (used > n)
            o->consumed = (size_t)-1; /* an impossible total that no check accepts */
        else
            o->consumed += used;
        off += n;
    }
    o->status = hs_status(r);
    describe(r, o);
    return r;
}

static void whole(const char *s, size_t len, size_t max_head, unsigned max_headers,
                  struct outcome *o)
{
    size_t all = len;
    hs_free(feed_pieces(s, len, &all, 1, max_head, max_headers, o));
}

static void split(const char *s, size_t len, size_t k, size_t max_head, unsigned max_headers,
                  struct outcome *o)
{
    size_t pieces[2] = {k, len - k};
    hs_free(feed_pieces(s, len, pieces, 2, max_head, max_headers, o));
}

static void bytewise(const char *s, size_t len, size_t max_head, unsigned max_headers,
                     struct outcome *o)
{
    size_t *ones = malloc((len ? len : 1) * sizeof *ones);
    for (size_t i = 0; i < len; i++)
        ones[i] = 1;
    hs_free(feed_pieces(s, len, ones, len, max_head, max_headers, o));
    free(ones);
}

/* Whole, every two-piece split and byte by byte agree with each other;
 * returns the whole feed's outcome for further checks. Counts one failed
 * check per disagreeing chunking, not one per byte. */
static void agree(const char *s, size_t len, size_t max_head, unsigned max_headers,
                  struct outcome *want)
{
    static struct outcome got;
    size_t bad_split = 0;

    whole(s, len, max_head, max_headers, want);
    for (size_t k = 0; k <= len; k++) {
        split(s, len, k, max_head, max_headers, &got);
        if (strcmp(got.text, want->text) != 0 && !bad_split++)
            fprintf(stderr, "split at %zu:\n%s--- whole:\n%s", k, got.text, want->text);
    }
    CHECK_EQ(bad_split, 0);
    bytewise(s, len, max_head, max_headers, &got);
    if (strcmp(got.text, want->text) != 0)
        fprintf(stderr, "byte by byte:\n%s--- whole:\n%s", got.text, want->text);
    CHECK(strcmp(got.text, want->text) == 0);
}

static void test_valid_request(void)
{
    static struct outcome o;
    size_t len = sizeof UPGRADE - 1;

    agree(UPGRADE, len, BIG, MANY, &o);
    CHECK_EQ(o.rc, HS_DONE);
    CHECK_EQ(o.consumed, len);
    CHECK(strcmp(o.text, "rc=1 status=0 consumed=283\n"
                         "GET /chat?room=1\n"
                         "host=[server.example.com]\n"
                         "upgrade=[websocket]\n"
                         "connection=[Upgrade]\n"
                         "sec-websocket-key=[dGhlIHNhbXBsZSBub25jZQ==]\n"
                         "origin=[http://example.com]\n"
                         "sec-websocket-protocol=[chat, superchat]\n"
                         "sec-websocket-extensions=[permessage-deflate]\n"
                         "sec-websocket-version=[13]\n") == 0);

    /* A head that is not complete yet takes every byte and asks for more. */
    struct hs_request *r = hs_new(BIG, MANY);
    size_t used = 99;
    CHECK_EQ(hs_feed(r, UPGRADE, len - 1, &used), HS_NEED_MORE);
    CHECK_EQ(used, len - 1);
    CHECK_EQ(hs_feed(r, UPGRADE + len - 1, 0, &used), HS_NEED_MORE);
    CHECK_EQ(used, 0);
    CHECK_EQ(hs_feed(r, UPGRADE + len - 1, 1, &used), HS_DONE);
    CHECK_EQ(used, 1);
    CHECK_EQ(hs_status(r), 0);
    CHECK(strcmp(hs_error(r), "") == 0);
    /* Once done, more bytes are the caller's: none are taken. */
    CHECK_EQ(hs_feed(r, FRAME, sizeof FRAME - 1, &used), HS_DONE);
    CHECK_EQ(used, 0);
    CHECK(hs_header_at(r, hs_header_count(r)) == NULL);
    CHECK(hs_header_get(r, "Host") == NULL); /* lookups take lowercase names */
    CHECK(strcmp(hs_header_get(r, "host"), "server.example.com") == 0);
    hs_free(r);
    hs_free(NULL);
}

/* The frame bytes that follow the head in the same write are never taken,
 * however the head was cut. */
static void test_pipelined(void)
{
    static char buf[sizeof UPGRADE + sizeof FRAME];
    static struct outcome o;
    size_t head = sizeof UPGRADE - 1, len = head + sizeof FRAME - 1;

    memcpy(buf, UPGRADE, head);
    memcpy(buf + head, FRAME, sizeof FRAME - 1);
    agree(buf, len, BIG, MANY, &o);
    CHECK_EQ(o.rc, HS_DONE);
    CHECK_EQ(o.consumed, head);

    /* The head in pieces, its last three bytes arriving with the frame. */
    struct hs_request *r = hs_new(BIG, MANY);
    size_t used = 0;
    CHECK_EQ(hs_feed(r, buf, 100, &used), HS_NEED_MORE);
    CHECK_EQ(used, 100);
    CHECK_EQ(hs_feed(r, buf + 100, head - 103, &used), HS_NEED_MORE);
    CHECK_EQ(used, head - 103);
    CHECK_EQ(hs_feed(r, buf + head - 3, len - (head - 3), &used), HS_DONE);
    CHECK_EQ(used, 3);
    hs_free(r);

    /* A frame that begins with bytes that could extend a head (a space, a
     * CR LF, a letter) still belongs to the frame. */
    static const char tails[][4] = {" ", "\r\n", "G", "\t"};
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        size_t n = strlen(tails[i]);
        memcpy(buf + head, tails[i], n);
        agree(buf, head + n, BIG, MANY, &o);
        CHECK_EQ(o.rc, HS_DONE);
        CHECK_EQ(o.consumed, head);
    }
}

static void test_header_forms(void)
{
    static const char req[] = "GET /a%20b?x=1&y HTTP/1.1\r\n"
                              "X-Mixed-CASE:   spaced  value \t \r\n"
                              "Accept: one\r\n"
                              "X_Forwarded_For: 10.0.0.1\r\n"
                              "Sec_WebSocket_Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
                              "Accept:two\r\n"
                              "Empty:\r\n"
                              "Blank: \t \r\n"
                              "Obs-Text: caf\xc3\xa9\r\n"
                              "~Odd!#$%&'*+-.^`|: token chars\r\n"
                              "\r\n";
    static struct outcome o;

    agree(LIT(req), BIG, MANY, &o);
    CHECK_EQ(o.rc, HS_DONE);
    CHECK(strcmp(o.text, "rc=1 status=0 consumed=228\n"
                         "GET /a%20b?x=1&y\n"
                         "x-mixed-case=[spaced  value]\n"
                         "accept=[one]\n"
                         "accept=[two]\n"
                         "empty=[]\n"
                         "blank=[]\n"
                         "obs-text=[caf\xc3\xa9]\n"
                         "~odd!#$%&'*+-.^`|=[token chars]\n") == 0);

    struct hs_request *r = hs_new(BIG, MANY);
    size_t used;
    CHECK_EQ(hs_feed(r, LIT(req), &used), HS_DONE);
    CHECK_EQ(hs_header_count(r), 7);
    const struct hs_header *h = hs_header_at(r, 0);
    CHECK_EQ(h->value_len, strlen("spaced  value"));
    CHECK_EQ(h->value[h->value_len], '\0');
    CHECK(strcmp(hs_header_get(r, "accept"), "one") == 0);
    CHECK(strcmp(hs_header_at(r, 2)->value, "two") == 0);
    CHECK(strcmp(hs_header_get(r, "empty"), "") == 0);
    CHECK_EQ(hs_header_at(r, 3)->value_len, 0);
    /* Names with '_' are gone whatever case they are asked for in. */
    CHECK(hs_header_get(r, "x_forwarded_for") == NULL);
    CHECK(hs_header_get(r, "sec_websocket_key") == NULL);
    CHECK(hs_header_get(r, "sec-websocket-key") == NULL);
    for (size_t i = 0; i < hs_header_count(r); i++)
        CHECK(strchr(hs_header_at(r, i)->name, '_') == NULL);
    hs_free(r);
}

/* Inputs that must end in HS_ERROR with 400 however they are chunked. */
static const struct bad {
    const char *what;
    const char *s;
    size_t len;
} BAD[] = {
    {"space inside a name", LIT("GET / HTTP/1.1\r\nX Y: 1\r\n\r\n")},
    {"'(' in a name", LIT("GET / HTTP/1.1\r\nX(: 1\r\n\r\n")},
    {"space before the colon", LIT("GET / HTTP/1.1\r\nX : 1\r\n\r\n")},
    {"empty name", LIT("GET / HTTP/1.1\r\n: 1\r\n\r\n")},
    {"no colon", LIT("GET / HTTP/1.1\r\nX\r\n\r\n")},
    {"NUL in a value", LIT("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n")},
    {"lone CR in a value", LIT("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n")},
    {"lone LF in a value", LIT("GET / HTTP/1.1\r\nX: a\nb: c\r\n\r\n")},
    {"bare LF after a header", LIT("GET / HTTP/1.1\r\nX: a\n\r\n")},
    {"bare LF everywhere", LIT("GET / HTTP/1.1\nHost: a\n\n")},
    {"VT in a value", LIT("GET / HTTP/1.1\r\nX: a\x0b"
                          "b\r\n\r\n")},
    {"FF in a value", LIT("GET / HTTP/1.1\r\nX: a\x0c"
                          "b\r\n\r\n")},
    {"FS in a value", LIT("GET / HTTP/1.1\r\nX: a\x1c"
                          "b\r\n\r\n")},
    {"GS in a value", LIT("GET / HTTP/1.1\r\nX: a\x1d"
                          "b\r\n\r\n")},
    {"RS in a value", LIT("GET / HTTP/1.1\r\nX: a\x1e"
                          "b\r\n\r\n")},
    {"DEL in a value", LIT("GET / HTTP/1.1\r\nX: a\x7f"
                           "b\r\n\r\n")},
    {"SOH in a value", LIT("GET / HTTP/1.1\r\nX: a\x01"
                           "b\r\n\r\n")},
    {"obs-fold with SP", LIT("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n")},
    {"obs-fold with HTAB", LIT("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n")},
    {"obs-fold after an empty value", LIT("GET / HTTP/1.1\r\nX:\r\n b\r\n\r\n")},
    {"obs-fold of the key",
     LIT("GET / HTTP/1.1\r\nSec-WebSocket-Key:\r\n \tdGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")},
    {"obs-fold after a bare LF", LIT("GET / HTTP/1.1\r\nX: a\n b\r\n\r\n")},
    {"a header line starting with SP", LIT("GET / HTTP/1.1\r\n X: 1\r\n\r\n")},
    {"garbage request line", LIT("HELLO THERE\r\n\r\n")},
    {"TLS ClientHello", LIT("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")},
    {"CR alone after the version", LIT("GET / HTTP/1.1\rX: 1\r\n\r\n")},
    {"control char in the target", LIT("GET /a\x01 HTTP/1.1\r\n\r\n")},
    {"lowercase method", LIT("get / HTTP/1.1\r\n\r\n")},
    {"unknown transfer coding", LIT("GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")},
    {"two content lengths",
     LIT("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")},
};

static void test_bad_requests(void)
{
    static struct outcome o;

    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        size_t before = (size_t)unit_failed;
        agree(BAD[i].s, BAD[i].len, BIG, MANY, &o);
        CHECK_EQ(o.rc, HS_ERROR);
        CHECK_EQ(o.status, 400);
        if ((size_t)unit_failed != before)
            fprintf(stderr, "  in BAD[%zu]: %s\n", i, BAD[i].what);

        /* An error sticks: more bytes change nothing. */
        struct hs_request *r = hs_new(BIG, MANY);
        size_t used;
        hs_feed(r, BAD[i].s, BAD[i].len, &used);
        CHECK(used <= BAD[i].len);
        CHECK(hs_error(r)[0] != '\0');
        CHECK_EQ(hs_feed(r, LIT("\r\n\r\n"), &used), HS_ERROR);
        CHECK_EQ(used, 0);
        CHECK_EQ(hs_status(r), 400);
        hs_free(r);
    }
}

/* The error text says which layer refused, which shows that our own checks
 * matter for these inputs (llhttp 8.1 lets them through). */
static void test_our_checks(void)
{
    static const struct {
        const char *s;
        size_t len;
        const char *why;
    } cases[] = {
        {LIT("GET / HTTP/1.1\r\nX Y: 1\r\n\r\n"), "header name is not a token"},
        {LIT("GET / HTTP/1.1\r\nX : 1\r\n\r\n"), "header name is not a token"},
        {LIT("GET / HTTP/1.1\r\n: 1\r\n\r\n"), "empty header name"},
        {LIT("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"), "obsolete line folding in a header"},
        {LIT("GET / HTTP/1.1\r\nX:\r\n b\r\n\r\n"), "obsolete line folding in a header"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct hs_request *r = hs_new(BIG, MANY);
        size_t used;
        CHECK_EQ(hs_feed(r, cases[i].s, cases[i].len, &used), HS_ERROR);
        CHECK(strcmp(hs_error(r), cases[i].why) == 0);
        hs_free(r);
    }
}

/* A line that ends in a bare LF is named as such, however the bytes are
 * split (the LF first in a feed looks back at the previous one), and a
 * well-formed CRLF split between feeds is not mistaken for one. */
static void test_bare_lf(void)
{
    static const char req[] = "GET /a HTTP/1.1\r\nHost: x\nUpgrade: websocket\r\n\r\n";
    const char *want = "a line ends in a bare LF; HTTP lines end with CRLF";
    for (size_t split = 1; split < sizeof req - 1; split++) {
        struct hs_request *r = hs_new(BIG, MANY);
        size_t used;
        int rc = hs_feed(r, req, split, &used);
        if (rc == HS_NEED_MORE)
            rc = hs_feed(r, req + split, sizeof req - 1 - split, &used);
        CHECK_EQ(rc, HS_ERROR);
        CHECK_EQ(hs_status(r), 400);
        if (strcmp(hs_error(r), want) != 0) {
            fprintf(stderr, "  split at %zu: %s\n", split, hs_error(r));
            CHECK(0);
        }
        /* The target was read before the mistake, for the log. */
        CHECK(hs_target_read(r) && strcmp(hs_target_read(r), "/a") == 0);
        hs_free(r);
    }
    /* Another llhttp error keeps llhttp's reason behind a prefix. */
    struct hs_request *r = hs_new(BIG, MANY);
    size_t used;
    CHECK_EQ(hs_feed(r, LIT("GET /a HTTP/1.1\r\nX: a\x01b\r\n\r\n"), &used), HS_ERROR);
    CHECK(strncmp(hs_error(r), "malformed request head: ", 24) == 0 && strlen(hs_error(r)) > 24);
    hs_free(r);
    /* Nothing read yet: no target. */
    r = hs_new(BIG, MANY);
    CHECK_EQ(hs_feed(r, LIT("GET /a"), &used), HS_NEED_MORE);
    CHECK(hs_target_read(r) == NULL);
    hs_free(r);
}

/* A request whose head is exactly len bytes: pad one header to size. */
static size_t padded(char *buf, size_t len)
{
    static const char pre[] = "GET / HTTP/1.1\r\nX-Pad: ", post[] = "\r\n\r\n";
    size_t fill = len - (sizeof pre - 1) - (sizeof post - 1);

    memcpy(buf, pre, sizeof pre - 1);
    memset(buf + sizeof pre - 1, 'a', fill);
    memcpy(buf + sizeof pre - 1 + fill, post, sizeof post - 1);
    return len;
}

/* A request with lines header lines, every other one dropped for its
 * '_', then last. */
static size_t many_headers(char *buf, size_t cap, unsigned lines, const char *last)
{
    size_t n = (size_t)snprintf(buf, cap, "GET / HTTP/1.1\r\n");
    for (unsigned k = 0; k < lines; k++)
        n += (size_t)snprintf(buf + n, cap - n, "%s-%u: v\r\n", k % 2 ? "X_U" : "X-H", k);
    n += (size_t)snprintf(buf + n, cap - n, "%s", last);
    return n;
}

static void test_too_large(void)
{
    static char buf[4096];
    static struct outcome o;

    /* Exactly max_head is still a head; one byte more is not. */
    agree(buf, padded(buf, 1024), 1024, MANY, &o);
    CHECK_EQ(o.rc, HS_DONE);
    CHECK_EQ(o.consumed, 1024);
    agree(buf, padded(buf, 1025), 1024, MANY, &o);
    CHECK_EQ(o.rc, HS_ERROR);
    CHECK_EQ(o.status, 431);

    /* A 2000-byte header, whole and byte by byte: refused as soon as the
     * limit is reached, before the end of the line is even sent. */
    size_t len = padded(buf, 2048);
    whole(buf, len, 1024, MANY, &o);
    CHECK_EQ(o.rc, HS_ERROR);
    CHECK_EQ(o.status, 431);
    struct hs_request *r = hs_new(1024, MANY);
    size_t used, i;
    int rc = HS_NEED_MORE;
    for (i = 0; i < len && rc == HS_NEED_MORE; i++)
        rc = hs_feed(r, buf + i, 1, &used);
    CHECK_EQ(rc, HS_ERROR);
    CHECK_EQ(i, 1024);
    CHECK_EQ(hs_status(r), 431);
    hs_free(r);

    /* A head of exactly max_head with frame bytes behind it in one write. */
    padded(buf, 1024);
    memcpy(buf + 1024, FRAME, sizeof FRAME - 1);
    agree(buf, 1024 + sizeof FRAME - 1, 1024, MANY, &o);
    CHECK_EQ(o.rc, HS_DONE);
    CHECK_EQ(o.consumed, 1024);

    /* max_headers counts header lines, the dropped ones too. */
    for (unsigned lines = 31; lines <= 33; lines++) {
        agree(buf, many_headers(buf, sizeof buf, lines, "X-Last: v\r\n\r\n"), BIG, 32, &o);
        if (lines < 32) {
            CHECK_EQ(o.rc, HS_DONE);
        } else {
            CHECK_EQ(o.rc, HS_ERROR);
            CHECK_EQ(o.status, 431);
        }
    }
    /* A line past the limit whose name llhttp refuses mid-name is a 400
     * however the bytes came: the count is not taken before the name is. */
    agree(buf, many_headers(buf, sizeof buf, 32, "X(Y: v\r\n\r\n"), BIG, 32, &o);
    CHECK_EQ(o.rc, HS_ERROR);
    CHECK_EQ(o.status, 400);
}

/* Parse head whole (it must complete) and run the upgrade check. */
static int upgrade_status(const char *head, struct hs_upgrade *up, const char **why)
{
    struct hs_request *r = hs_new(BIG, MANY);
    size_t used;
    int rc = hs_feed(r, head, strlen(head), &used);
    CHECK_EQ(rc, HS_DONE);
    if (rc != HS_DONE) {
        hs_free(r);
        return -1;
    }
    int status = hs_check_upgrade(r, up, why);
    if (status == 0) {
        /* The pointers must outlive nothing but the request: copy out. */
        static char key[64], protocols[256], extensions[256];
        snprintf(key, sizeof key, "%s", up->key);
        snprintf(protocols, sizeof protocols, "%s", up->protocols ? up->protocols : "(none)");
        snprintf(extensions, sizeof extensions, "%s", up->extensions ? up->extensions : "(none)");
        up->key = key;
        up->protocols = protocols;
        up->extensions = extensions;
    }
    hs_free(r);
    return status;
}

#define H_LINE "GET /chat HTTP/1.1\r\n"
#define H_HOST "Host: example.com\r\n"
#define H_UPG "Upgrade: websocket\r\n"
#define H_CONN "Connection: Upgrade\r\n"
#define H_KEY "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#define H_VER "Sec-WebSocket-Version: 13\r\n"
#define H_END "\r\n"

static void test_check_upgrade(void)
{
    static const struct {
        const char *head;
        int status;
    } cases[] = {
        {H_LINE H_HOST H_UPG H_CONN H_KEY H_VER H_END, 0},
        {"POST /chat HTTP/1.1\r\n" H_HOST H_UPG H_CONN H_KEY H_VER H_END, 405},
        {"HEAD /chat HTTP/1.1\r\n" H_HOST H_UPG H_CONN H_KEY H_VER H_END, 405},
        {H_LINE H_HOST H_END, 426},
        {H_LINE H_HOST H_UPG H_CONN H_KEY "Sec-WebSocket-Version: 12\r\n" H_END, 426},
        {H_LINE H_HOST H_UPG H_CONN H_KEY H_END, 426},
        {H_LINE H_HOST H_UPG H_CONN H_KEY H_VER H_VER H_END, 426},
        {H_LINE H_HOST H_UPG H_CONN H_KEY "Sec-WebSocket-Version: 13, 8\r\n" H_END, 426},
        {H_LINE H_HOST "Upgrade: h2c\r\n" H_CONN H_KEY H_VER H_END, 400},
        {H_LINE H_HOST "Upgrade: websocket2\r\n" H_CONN H_KEY H_VER H_END, 400},
        {H_LINE H_HOST H_CONN H_KEY H_VER H_END, 400},
        {H_LINE H_HOST H_UPG "Connection: keep-alive\r\n" H_KEY H_VER H_END, 400},
        {H_LINE H_HOST H_UPG H_KEY H_VER H_END, 400},
        {H_LINE H_HOST H_UPG "Connection: keep-alive, Upgrade\r\n" H_KEY H_VER H_END, 0},
        {H_LINE H_HOST H_UPG "Connection: keep-alive\r\nConnection: upgrade\r\n" H_KEY H_VER H_END,
         0},
        {H_LINE H_HOST "Upgrade: WebSocket\r\nConnection: UPGRADE\r\n" H_KEY H_VER H_END, 0},
        {H_LINE H_HOST "Upgrade: foo, websocket\r\n" H_CONN H_KEY H_VER H_END, 0},
        {"GET /chat HTTP/1.0\r\n" H_HOST H_UPG H_CONN H_KEY H_VER H_END, 400},
        {H_LINE H_HOST H_UPG H_CONN H_VER H_END, 400},
        {H_LINE H_HOST H_UPG H_CONN H_KEY H_KEY H_VER H_END, 400},
        {H_LINE H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\n" H_VER H_END,
         400},
        {H_LINE H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ===\r\n" H_VER H_END,
         400},
        {H_LINE H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ*==\r\n" H_VER H_END,
         400},
        {H_LINE H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQAA\r\n" H_VER H_END,
         400},
        {H_LINE H_HOST H_UPG H_CONN "Sec-WebSocket-Key:\r\n" H_VER H_END, 400},
        {H_LINE H_HOST H_UPG H_CONN H_KEY H_VER "Content-Length: 5\r\n" H_END "hello", 400},
        {H_LINE H_HOST H_UPG H_CONN H_KEY H_VER "Content-Length: 0\r\n" H_END, 0},
        {H_LINE H_HOST H_UPG H_CONN H_KEY H_VER "Transfer-Encoding: chunked\r\n" H_END "0\r\n\r\n",
         400},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct hs_upgrade up;
        const char *why = "unset";
        int status = upgrade_status(cases[i].head, &up, &why);
        CHECK_EQ(status, cases[i].status);
        if (status != cases[i].status)
            fprintf(stderr, "  in case %zu (%s)\n", i, why ? why : "accepted");
        if (cases[i].status == 0) {
            CHECK(why == NULL);
        } else {
            CHECK(why != NULL && why[0] != '\0');
            CHECK(up.key == NULL && up.protocols == NULL && up.extensions == NULL);
        }
    }

    /* Success fills every field from the request. */
    struct hs_upgrade up;
    const char *why;
    CHECK_EQ(upgrade_status(UPGRADE, &up, &why), 0);
    CHECK(strcmp(up.key, "dGhlIHNhbXBsZSBub25jZQ==") == 0);
    CHECK(strcmp(up.protocols, "chat, superchat") == 0);
    CHECK(strcmp(up.extensions, "permessage-deflate") == 0);
    CHECK_EQ(upgrade_status(H_LINE H_UPG H_CONN H_KEY H_VER H_END, &up, &why), 0);
    CHECK(strcmp(up.protocols, "(none)") == 0);
    CHECK(strcmp(up.extensions, "(none)") == 0);

    /* A key behind an underscored name does not exist. */
    CHECK_EQ(upgrade_status(H_LINE H_UPG H_CONN
                            "Sec_WebSocket_Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" H_VER H_END,
                            &up, &why),
             400);
}

static void test_key_valid(void)
{
    CHECK(hs_key_valid("dGhlIHNhbXBsZSBub25jZQ=="));
    CHECK(hs_key_valid("AAAAAAAAAAAAAAAAAAAAAA=="));
    CHECK(hs_key_valid("+/+/+/+/+/+/+/+/+/+/+w=="));
    CHECK(!hs_key_valid(""));
    CHECK(!hs_key_valid("dGhlIHNhbXBsZSBub25jZQ="));   /* 23 */
    CHECK(!hs_key_valid("dGhlIHNhbXBsZSBub25jZQ===")); /* 25 */
    CHECK(!hs_key_valid("dGhlIHNhbXBsZSBub25jZ*=="));  /* not base64 */
    CHECK(!hs_key_valid("dGhlIHNhbXBsZSBub25jZ-=="));  /* base64url is not base64 */
    CHECK(!hs_key_valid("dGhlIHNhbXBsZSBub25jZQAA"));  /* 18 bytes, no padding */
    CHECK(!hs_key_valid("dGhlIHNhbXBsZSBub25j=Q=="));  /* padding inside */
    CHECK(!hs_key_valid("dGhlIHNhbXBsZSBub25jZQ= "));
}

static void test_accept_key(void)
{
    char out[29];

    memset(out, 'x', sizeof out);
    hs_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out); /* RFC 6455 section 1.3 */
    CHECK(strcmp(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
}

static void collect(const char *item, size_t len, void *ud)
{
    char *out = ud;
    strncat(out, item, len);
    strcat(out, "|");
}

static void test_list_each(void)
{
    static const struct {
        const char *list, *want;
    } cases[] = {
        {"a, b,,c ,", "a|b|c|"},
        {"chat, superchat", "chat|superchat|"},
        {"\tx\t,\t y z ", "x|y z|"},
        {"single", "single|"},
        {"", ""},
        {" , ,\t,", ""},
    };
    char out[64];

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        out[0] = '\0';
        hs_list_each(cases[i].list, collect, out);
        CHECK(strcmp(out, cases[i].want) == 0);
    }
    out[0] = '\0';
    hs_list_each(NULL, collect, out);
    CHECK(strcmp(out, "") == 0);
}

static void test_reason(void)
{
    CHECK(strcmp(hs_reason(101), "Switching Protocols") == 0);
    CHECK(strcmp(hs_reason(426), "Upgrade Required") == 0);
    CHECK(strcmp(hs_reason(431), "Request Header Fields Too Large") == 0);
    CHECK(strcmp(hs_reason(299), "Unknown") == 0);
}

/* Each input ends at the last readable byte before a PROT_NONE page: fed
 * whole, and fed one byte at a time with each byte moved to that last
 * readable address. A read past what was given faults. */
static void test_guard_page(void)
{
    char *end = unit_guard_page();
    if (!end)
        return;

    static const struct {
        const char *s;
        size_t len;
        int rc;
    } cases[] = {
        {UPGRADE, sizeof UPGRADE - 1, HS_DONE},
        {LIT("GET / HTTP/1.1\r\nHost: a\r\n"), HS_NEED_MORE},
        {LIT("GET / HTTP/1.1\r\nHost: a\r\n\r"), HS_NEED_MORE},
        {LIT("GET / HTTP/1.1\r\nX: a\r\n"), HS_NEED_MORE},
        {LIT("GET / HTTP/1.1\r\nX: a\r\n "), HS_ERROR},
        {LIT("GET / HTTP/1.1\r\nX: a\x7f"), HS_ERROR},
        {LIT("GET / HTTP/1.1\r\nX Y"), HS_NEED_MORE},
        {LIT("GET /chat?q"), HS_NEED_MORE},
        {LIT("GE"), HS_NEED_MORE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = cases[i].len, used;
        memcpy(end - len, cases[i].s, len);
        struct hs_request *r = hs_new(BIG, MANY);
        CHECK_EQ(hs_feed(r, end - len, len, &used), cases[i].rc);
        hs_free(r);

        r = hs_new(BIG, MANY);
        int rc = HS_NEED_MORE;
        for (size_t k = 0; k < len && rc == HS_NEED_MORE; k++) {
            end[-1] = cases[i].s[k];
            rc = hs_feed(r, end - 1, 1, &used);
        }
        CHECK_EQ(rc, cases[i].rc);
        hs_free(r);
    }
    unit_guard_free(end);
}

int main(void)
{
    test_valid_request();
    test_pipelined();
    test_header_forms();
    test_bad_requests();
    test_our_checks();
    test_bare_lf();
    test_too_large();
    test_check_upgrade();
    test_key_valid();
    test_accept_key();
    test_list_each();
    test_reason();
    test_guard_page();
    return unit_done("handshake");
}
