/* test_ws_deflate: unit tests for RFC 7692 permessage-deflate: the
 * section 7.2.3 examples byte for byte, round trips at every window size
 * with and without context takeover, the size limit against a zip bomb,
 * corrupt data, and the negotiation down to the exact response strings. */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "unit.h"
#include "ws_deflate.h"
#include "ws_frame.h"

/* ---- helpers ---- */

static int buf_is(const struct buf *b, const void *p, size_t n)
{
    return buf_pending(b) == n && (n == 0 || memcmp(buf_head(b), p, n) == 0);
}

/* Inflate one message into a fresh buffer and compare it with want. */
static int inflates_to(struct ws_inflater *z, const uint8_t *in, size_t len, const char *want)
{
    struct buf out = {0};
    int rc = ws_inflate_message(z, in, len, &out, 0);
    int ok = rc == 0 && buf_is(&out, want, strlen(want));
    buf_reset(&out);
    return ok;
}

static int deflates_to(struct ws_deflater *z, const char *msg, const uint8_t *want, size_t n)
{
    struct buf out = {0};
    int rc = ws_deflate_message(z, (const uint8_t *)msg, strlen(msg), &out);
    int ok = rc == 0 && buf_is(&out, want, n);
    buf_reset(&out);
    return ok;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* ---- RFC 7692 section 7.2.3 ---- */

static const uint8_t hello_one_block[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
static const uint8_t hello_again[] = {0xf2, 0x00, 0x11, 0x00, 0x00};

static void test_rfc_examples(void)
{
    struct ws_inflater *shared = ws_inflater_new(15, 1);
    struct ws_inflater *own = ws_inflater_new(15, 0);
    CHECK(shared && own);

    /* 7.2.3.1: "Hello" in one compressed block, whole and as the payload of
     * two fragments, which the caller concatenates. */
    CHECK(inflates_to(shared, hello_one_block, sizeof hello_one_block, "Hello"));
    static const uint8_t frag1[] = {0xf2, 0x48, 0xcd}, frag2[] = {0xc9, 0xc9, 0x07, 0x00};
    uint8_t joined[sizeof frag1 + sizeof frag2];
    memcpy(joined, frag1, sizeof frag1);
    memcpy(joined + sizeof frag1, frag2, sizeof frag2);
    CHECK(inflates_to(shared, joined, sizeof joined, "Hello"));

    /* 7.2.3.2: the second "Hello" refers back to the first message. */
    CHECK(inflates_to(own, hello_one_block, sizeof hello_one_block, "Hello"));
    CHECK(inflates_to(own, hello_again, sizeof hello_again, "Hello"));
    /* Without context takeover the same bytes refer to nothing. */
    CHECK(inflates_to(shared, hello_one_block, sizeof hello_one_block, "Hello"));
    struct buf out = {0};
    CHECK_EQ(ws_inflate_message(shared, hello_again, sizeof hello_again, &out, 0),
             WS_DEFLATE_ERR_DATA);
    CHECK(out.blk == NULL);

    /* 7.2.3.3: a stored block. */
    static const uint8_t stored[] = {0x00, 0x05, 0x00, 0xfa, 0xff, 0x48,
                                     0x65, 0x6c, 0x6c, 0x6f, 0x00};
    CHECK(inflates_to(shared, stored, sizeof stored, "Hello"));

    /* 7.2.3.4: a block with BFINAL set, then the 0x00 that 7.2.1 step 3
     * leaves. The window is kept past the end of the stream: the next
     * message may still refer to it. */
    static const uint8_t bfinal[] = {0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00};
    CHECK(inflates_to(shared, bfinal, sizeof bfinal, "Hello"));
    struct ws_inflater *own2 = ws_inflater_new(15, 0);
    CHECK(inflates_to(own2, bfinal, sizeof bfinal, "Hello"));
    CHECK(inflates_to(own2, hello_again, sizeof hello_again, "Hello"));
    CHECK(inflates_to(own2, hello_one_block, sizeof hello_one_block, "Hello"));
    ws_inflater_free(own2);
    /* Blocks that follow a BFINAL block in the same message. */
    static const uint8_t after_final[] = {0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00,
                                          0xf2, 0x00, 0x11, 0x00, 0x00};
    CHECK(inflates_to(shared, after_final, sizeof after_final, "HelloHello"));

    /* 7.2.3.5: two blocks in one message. */
    static const uint8_t two_blocks[] = {0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff,
                                         0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00};
    CHECK(inflates_to(shared, two_blocks, sizeof two_blocks, "Hello"));

    /* 7.2.3.6: the empty message is the single byte 0x00. */
    static const uint8_t empty[] = {0x00};
    CHECK(inflates_to(shared, empty, 1, ""));
    CHECK(inflates_to(own, empty, 1, ""));
    CHECK(inflates_to(own, hello_again, sizeof hello_again, "Hello")); /* window intact */

    /* And the deflater gives the RFC's bytes. */
    struct ws_deflater *dshared = ws_deflater_new(15, 8, -1, 1);
    struct ws_deflater *down = ws_deflater_new(15, 8, -1, 0);
    CHECK(dshared && down);
    CHECK(deflates_to(dshared, "Hello", hello_one_block, sizeof hello_one_block));
    CHECK(deflates_to(dshared, "Hello", hello_one_block, sizeof hello_one_block));
    CHECK(deflates_to(down, "Hello", hello_one_block, sizeof hello_one_block));
    CHECK(deflates_to(down, "Hello", hello_again, sizeof hello_again));
    CHECK(deflates_to(dshared, "", empty, 1));
    CHECK(deflates_to(down, "", empty, 1));
    /* zlib may code a third "Hello" another way: follow it by inflating. */
    struct ws_inflater *follow = ws_inflater_new(15, 0);
    struct ws_deflater *again = ws_deflater_new(15, 8, -1, 0);
    static const char *const seq[] = {"Hello", "Hello", "", "Hello", "", "", "Hello"};
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        struct buf z = {0};
        CHECK_EQ(ws_deflate_message(again, (const uint8_t *)seq[i], strlen(seq[i]), &z), 0);
        CHECK(i == 0 || buf_pending(&z) <= 5);
        CHECK(inflates_to(follow, buf_head(&z), buf_pending(&z), seq[i]));
        buf_reset(&z);
    }
    ws_inflater_free(follow);
    ws_deflater_free(again);

    ws_deflater_free(dshared);
    ws_deflater_free(down);
    ws_inflater_free(shared);
    ws_inflater_free(own);
}

/* ---- round trips ---- */

/* kind 0: random bytes; 1: text, random words from a small vocabulary. */
static void fill(uint8_t *p, size_t n, int kind)
{
    static const char *const words[] = {"the ", "quick ", "brown ", "fox ", "jumps ", "over ",
                                        "a ", "lazy ", "dog, ", "and ", "then ", "sleeps. "};
    size_t i = 0;
    while (i < n) {
        if (kind == 0) {
            p[i++] = (uint8_t)rng();
            continue;
        }
        const char *w = words[rng() % (sizeof words / sizeof words[0])];
        for (; *w && i < n; w++)
            p[i++] = (uint8_t)*w;
    }
}

static void round_trip(int bits, int takeover, int kind)
{
    static const size_t sizes[] = {0, 1, 5, 300, 4096, 70000, 1, 0, 200000};
    struct ws_deflater *d = ws_deflater_new(bits, 8, -1, !takeover);
    /* The inflater: the deflater's window, or the largest one. */
    struct ws_inflater *i1 = ws_inflater_new(bits, !takeover);
    struct ws_inflater *i2 = ws_inflater_new(15, !takeover);
    CHECK(d && i1 && i2);
    if (!d || !i1 || !i2)
        return;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        uint8_t *msg = malloc(n + 1);
        fill(msg, n, kind);
        struct buf z = {0}, a = {0}, b = {0};
        CHECK_EQ(ws_deflate_message(d, msg, n, &z), 0);
        CHECK_EQ(ws_inflate_message(i1, buf_head(&z), buf_pending(&z), &a, n), 0);
        CHECK_EQ(ws_inflate_message(i2, buf_head(&z), buf_pending(&z), &b, 0), 0);
        CHECK(buf_is(&a, msg, n));
        CHECK(buf_is(&b, msg, n));
        if (kind == 1 && n >= 4096 && bits > 8) /* 8: Huffman only, no matches */
            CHECK(buf_pending(&z) < n / 2);
        buf_reset(&z);
        buf_reset(&a);
        buf_reset(&b);
        free(msg);
    }
    ws_deflater_free(d);
    ws_inflater_free(i1);
    ws_inflater_free(i2);
}

static void test_round_trips(void)
{
    for (int bits = 8; bits <= 15; bits++)
        for (int takeover = 0; takeover <= 1; takeover++)
            for (int kind = 0; kind <= 1; kind++)
                round_trip(bits, takeover, kind);

    /* An 8-bit deflater refers back to nothing (zlib has no 8-bit window):
     * 9000 bytes of "abc" stay over a bit per byte, where a 9-bit window
     * makes them a few dozen bytes of back-references. */
    {
        static uint8_t abc[9000];
        for (size_t i = 0; i < sizeof abc; i++)
            abc[i] = (uint8_t)"abc"[i % 3];
        struct ws_deflater *d8 = ws_deflater_new(8, 8, -1, 1), *d9 = ws_deflater_new(9, 8, -1, 1);
        struct buf z8 = {0}, z9 = {0};
        CHECK(d8 && d9);
        CHECK_EQ(ws_deflate_message(d8, abc, sizeof abc, &z8), 0);
        CHECK_EQ(ws_deflate_message(d9, abc, sizeof abc, &z9), 0);
        CHECK(buf_pending(&z8) > sizeof abc / 8);
        CHECK(buf_pending(&z9) < 100);
        buf_reset(&z8);
        buf_reset(&z9);
        ws_deflater_free(d8);
        ws_deflater_free(d9);
    }

    /* A repeated message shrinks to back-references only with takeover. */
    static const char text[] = "{\"type\":\"chat\",\"room\":\"lobby\",\"text\":\"hello everyone\"}";
    struct ws_deflater *keep = ws_deflater_new(15, 8, -1, 0), *drop = ws_deflater_new(15, 8, -1, 1);
    struct buf k1 = {0}, k2 = {0}, d1 = {0}, d2 = {0};
    const uint8_t *t = (const uint8_t *)text;
    CHECK_EQ(ws_deflate_message(keep, t, sizeof text - 1, &k1), 0);
    CHECK_EQ(ws_deflate_message(keep, t, sizeof text - 1, &k2), 0);
    CHECK_EQ(ws_deflate_message(drop, t, sizeof text - 1, &d1), 0);
    CHECK_EQ(ws_deflate_message(drop, t, sizeof text - 1, &d2), 0);
    CHECK(buf_pending(&k2) < 10 && buf_pending(&k2) < buf_pending(&k1));
    CHECK(buf_pending(&d1) == buf_pending(&d2));
    CHECK(memcmp(buf_head(&d1), buf_head(&d2), buf_pending(&d1)) == 0);
    buf_reset(&k1), buf_reset(&k2), buf_reset(&d1), buf_reset(&d2);
    ws_deflater_free(keep);
    ws_deflater_free(drop);

    /* Output is appended after what out already holds. */
    struct ws_inflater *in = ws_inflater_new(15, 1);
    struct buf out = {0};
    buf_append(&out, "ab", 2);
    CHECK_EQ(ws_inflate_message(in, hello_one_block, sizeof hello_one_block, &out, 5), 0);
    CHECK(buf_is(&out, "abHello", 7));
    buf_reset(&out);
    ws_inflater_free(in);
}

/* ---- the size limit ---- */

static void test_limit(void)
{
    /* 10 MB of zeros deflate to about 10 KB. */
    size_t big = 10u * 1000 * 1000;
    uint8_t *zeros = calloc(1, big);
    struct ws_deflater *d = ws_deflater_new(15, 8, 9, 1);
    struct ws_inflater *z = ws_inflater_new(15, 1);
    struct buf bomb = {0}, out = {0};
    CHECK_EQ(ws_deflate_message(d, zeros, big, &bomb), 0);
    CHECK(buf_pending(&bomb) < 20000);

    /* Over the limit: fails, and stops near it. A byte already in out keeps
     * the block, so its size shows how far the output grew. */
    uint64_t max = 100000;
    buf_append(&out, "x", 1);
    CHECK_EQ(ws_inflate_message(z, buf_head(&bomb), buf_pending(&bomb), &out, max),
             WS_ERR_TOO_BIG);
    CHECK(buf_is(&out, "x", 1));
    CHECK(out.blk->cap <= 2 * (max + 16 * 1024));
    CHECK_EQ(ws_deflate_close_code(WS_ERR_TOO_BIG), 1009);
    buf_reset(&out);

    /* Exactly at the limit passes, one byte under fails. */
    struct buf m = {0};
    CHECK_EQ(ws_deflate_message(d, zeros, 50000, &m), 0);
    CHECK_EQ(ws_inflate_message(z, buf_head(&m), buf_pending(&m), &out, 50000), 0);
    CHECK_EQ(buf_pending(&out), 50000);
    buf_reset(&out);
    CHECK_EQ(ws_inflate_message(z, buf_head(&m), buf_pending(&m), &out, 49999), WS_ERR_TOO_BIG);
    CHECK(out.blk == NULL);
    /* The shared inflater still works after a failure. */
    CHECK(inflates_to(z, hello_one_block, sizeof hello_one_block, "Hello"));
    /* A limit of 1 and a message of 1. */
    CHECK_EQ(ws_inflate_message(z, hello_one_block, sizeof hello_one_block, &out, 4),
             WS_ERR_TOO_BIG);
    CHECK_EQ(ws_inflate_message(z, hello_one_block, sizeof hello_one_block, &out, 5), 0);
    buf_reset(&out);

    buf_reset(&m);
    buf_reset(&bomb);
    free(zeros);
    ws_deflater_free(d);
    ws_inflater_free(z);
}

/* ---- corrupt data ---- */

static void test_corrupt(void)
{
    struct ws_inflater *z = ws_inflater_new(15, 1);
    struct buf out = {0};
    static const uint8_t reserved_btype[] = {0x07, 0x00};       /* BTYPE 11 */
    static const uint8_t bad_nlen[] = {0x00, 0x05, 0x00, 0x00, 0x00, 'H', 'e', 'l', 'l', 'o', 0x00};
    static const uint8_t far_back[] = {0x02, 0x01, 0x00};      /* fixed block, distance past the start */
    static const uint8_t cut[] = {0xf2, 0x48, 0xcd};           /* "Hello" cut short */
    static const uint8_t final_only[] = {0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}; /* no 0x00 after */
    static const uint8_t ones[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    const struct {
        const uint8_t *p;
        size_t n;
    } cases[] = {
        {reserved_btype, sizeof reserved_btype}, {bad_nlen, sizeof bad_nlen},
        {far_back, sizeof far_back},             {cut, sizeof cut},
        {final_only, sizeof final_only},         {ones, sizeof ones},
        {NULL, 0}, /* an empty payload: the empty message is 0x00 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK_EQ(ws_inflate_message(z, cases[i].p, cases[i].n, &out, 0), WS_DEFLATE_ERR_DATA);
        CHECK(out.blk == NULL);
        /* and the shared inflater recovers for the next message */
        CHECK(inflates_to(z, hello_one_block, sizeof hello_one_block, "Hello"));
    }
    /* Garbage of every length, from a fixed seed: never a crash, and out
     * holds what was there before on any error. */
    uint8_t noise[64];
    for (int round = 0; round < 2000; round++) {
        size_t n = rng() % sizeof noise;
        for (size_t i = 0; i < n; i++)
            noise[i] = (uint8_t)rng();
        buf_append(&out, "k", 1);
        int rc = ws_inflate_message(z, noise, n, &out, 1000);
        CHECK(rc == 0 || rc == WS_DEFLATE_ERR_DATA || rc == WS_ERR_TOO_BIG);
        if (rc != 0)
            CHECK(buf_is(&out, "k", 1));
        else
            CHECK(buf_pending(&out) <= 1001);
        buf_reset(&out);
    }
    CHECK_EQ(ws_deflate_close_code(WS_DEFLATE_ERR_DATA), 1007);
    CHECK_EQ(ws_deflate_close_code(WS_DEFLATE_ERR_NOMEM), 1011);
    ws_inflater_free(z);
}

/* ---- construction and memory ---- */

static void test_new_and_memory(void)
{
    CHECK(ws_inflater_new(7, 1) == NULL);
    CHECK(ws_inflater_new(16, 1) == NULL);
    CHECK(ws_deflater_new(7, 8, -1, 1) == NULL);
    CHECK(ws_deflater_new(16, 8, -1, 1) == NULL);
    CHECK(ws_deflater_new(15, 0, -1, 1) == NULL);
    CHECK(ws_deflater_new(15, 10, -1, 1) == NULL);
    CHECK(ws_deflater_new(15, 8, 10, 1) == NULL);
    ws_inflater_free(NULL);
    ws_deflater_free(NULL);

    /* An 8-bit client window is inflated with 9 bits. */
    struct ws_inflater *z8 = ws_inflater_new(8, 0);
    CHECK(z8 != NULL);
    CHECK(inflates_to(z8, hello_one_block, sizeof hello_one_block, "Hello"));
    ws_inflater_free(z8);

    /* The window is allocated at the first message, not before. */
    struct ws_inflater *z = ws_inflater_new(15, 0);
    size_t idle = ws_inflater_memory(z);
    CHECK(inflates_to(z, hello_one_block, sizeof hello_one_block, "Hello"));
    size_t busy = ws_inflater_memory(z);
    CHECK(idle < 16 * 1024);
    CHECK(busy >= idle + 32768 && busy < idle + 32768 + 1024);
    ws_inflater_reset(z);
    CHECK(inflates_to(z, hello_one_block, sizeof hello_one_block, "Hello"));
    CHECK_EQ(ws_inflater_memory(z), busy);

    struct ws_deflater *d = ws_deflater_new(15, 8, -1, 1);
    size_t dmem = ws_deflater_memory(d);
    CHECK(dmem > 256 * 1024 && dmem < 300 * 1024);
    struct ws_deflater *small = ws_deflater_new(9, 1, -1, 1);
    CHECK(ws_deflater_memory(small) < 16 * 1024);
    printf("ws_deflate: inflater %zu bytes idle, %zu after a message (15 bits); "
           "deflater %zu bytes (15 bits, memLevel 8), %zu (9 bits, memLevel 1)\n",
           idle, busy, dmem, ws_deflater_memory(small));
    ws_deflater_free(small);
    ws_deflater_free(d);
    ws_inflater_free(z);
}

/* ---- negotiation ---- */

/* Negotiate offers under policy p and compare the result and the response. */
static int neg_is(const char *offers, const struct ws_deflate_policy *p, int want_rc,
                  const char *want_response)
{
    struct ws_deflate_params a;
    char resp[WS_DEFLATE_RESPONSE_MAX];
    int rc = ws_deflate_negotiate(offers, p, &a, resp, sizeof resp);
    if (rc != want_rc || strcmp(resp, want_response) != 0) {
        fprintf(stderr, "  offer [%s]: got %d [%s], want %d [%s]\n", offers ? offers : "(null)",
                rc, resp, want_rc, want_response);
        return 0;
    }
    if (rc == WS_DEFLATE_ACCEPTED) {
        /* The response is itself an offer that gives the same parameters. */
        struct ws_deflate_params b;
        char again[WS_DEFLATE_RESPONSE_MAX];
        if (ws_deflate_negotiate(resp, p, &b, again, sizeof again) != WS_DEFLATE_ACCEPTED ||
            memcmp(&a, &b, sizeof a) != 0 || strcmp(resp, again) != 0)
            return 0;
    }
    return 1;
}

#define PMD "permessage-deflate"
#define SNCT "; server_no_context_takeover"
#define CNCT "; client_no_context_takeover"

static void test_negotiate(void)
{
    struct ws_deflate_policy def, plain;
    ws_deflate_policy_init(&def);
    ws_deflate_policy_init(&plain);
    plain.server_no_context_takeover = 0;
    plain.client_no_context_takeover = 0;
    int A = WS_DEFLATE_ACCEPTED, D = WS_DEFLATE_DECLINED, M = WS_DEFLATE_MALFORMED;

    /* No header, nothing of ours. */
    CHECK(neg_is(NULL, &def, D, ""));
    CHECK(neg_is("", &def, D, ""));
    CHECK(neg_is("  ,  , ", &def, D, ""));
    CHECK(neg_is("x-webkit-deflate-frame", &def, D, ""));
    CHECK(neg_is("foo; bar=1, baz; q=\"x\"", &def, D, ""));
    CHECK(neg_is("permessage-deflated", &def, D, ""));

    /* A plain offer: our defaults ask both sides to drop context
     * (7.1.1.1 and 7.1.1.2 let the server include both unasked). */
    CHECK(neg_is(PMD, &def, A, PMD SNCT CNCT));
    CHECK(neg_is(PMD, &plain, A, PMD));
    CHECK(neg_is("  Permessage-Deflate  ", &plain, A, PMD));
    struct ws_deflate_params a;
    char resp[WS_DEFLATE_RESPONSE_MAX];
    CHECK_EQ(ws_deflate_negotiate(PMD, &plain, &a, resp, sizeof resp), A);
    CHECK(a.server_max_window_bits == 15 && a.client_max_window_bits == 15);
    CHECK(a.server_no_context_takeover == 0 && a.client_no_context_takeover == 0);

    /* Each parameter. */
    CHECK(neg_is(PMD SNCT, &plain, A, PMD SNCT));
    CHECK(neg_is(PMD CNCT, &plain, A, PMD CNCT));
    CHECK(neg_is(PMD "; server_max_window_bits=10", &plain, A, PMD "; server_max_window_bits=10"));
    CHECK(neg_is(PMD "; server_max_window_bits=15", &plain, A, PMD "; server_max_window_bits=15"));
    CHECK(neg_is(PMD "; server_max_window_bits=9", &plain, A, PMD "; server_max_window_bits=9"));
    CHECK(neg_is(PMD "; client_max_window_bits", &plain, A, PMD "; client_max_window_bits=15"));
    CHECK(neg_is(PMD "; client_max_window_bits=8", &plain, A, PMD "; client_max_window_bits=8"));
    CHECK(neg_is(PMD "; client_max_window_bits=12", &plain, A, PMD "; client_max_window_bits=12"));
    CHECK_EQ(ws_deflate_negotiate(PMD "; client_max_window_bits=12", &plain, &a, resp, sizeof resp), A);
    CHECK_EQ(a.client_max_window_bits, 12);
    CHECK(neg_is(PMD "; server_no_context_takeover; client_no_context_takeover; "
                     "server_max_window_bits=11; client_max_window_bits=13",
                 &plain, A,
                 PMD SNCT CNCT "; server_max_window_bits=11; client_max_window_bits=13"));
    CHECK(neg_is("permessage-deflate;client_max_window_bits;server_no_context_takeover", &def, A,
                 PMD SNCT CNCT "; client_max_window_bits=15"));
    /* Chrome's and Firefox's offers. */
    CHECK(neg_is("permessage-deflate; client_max_window_bits", &def, A,
                 PMD SNCT CNCT "; client_max_window_bits=15"));

    /* The server's own limits. */
    struct ws_deflate_policy lim = plain;
    lim.server_max_window_bits = 12;
    lim.client_max_window_bits = 10;
    CHECK(neg_is(PMD, &lim, A, PMD "; server_max_window_bits=12"));
    CHECK(neg_is(PMD "; server_max_window_bits=14", &lim, A, PMD "; server_max_window_bits=12"));
    CHECK(neg_is(PMD "; server_max_window_bits=10", &lim, A, PMD "; server_max_window_bits=10"));
    CHECK(neg_is(PMD "; client_max_window_bits", &lim, A,
                 PMD "; server_max_window_bits=12; client_max_window_bits=10"));
    CHECK(neg_is(PMD "; client_max_window_bits=9", &lim, A,
                 PMD "; server_max_window_bits=12; client_max_window_bits=9"));
    lim.server_max_window_bits = 3; /* clamped to 9 */
    CHECK(neg_is(PMD, &lim, A, PMD "; server_max_window_bits=9"));
    struct ws_deflate_policy off = def;
    off.enabled = 0;
    CHECK(neg_is(PMD, &off, D, ""));

    /* Quoted values (RFC 6455 9.1: a token once unescaped). */
    CHECK(neg_is(PMD "; server_max_window_bits=\"15\"", &plain, A, PMD "; server_max_window_bits=15"));
    CHECK(neg_is(PMD "; client_max_window_bits=\"1\\0\"", &plain, A, PMD "; client_max_window_bits=10"));
    CHECK(neg_is(PMD "; server_max_window_bits=\"\"", &plain, M, ""));
    CHECK(neg_is(PMD "; server_max_window_bits=\"1 5\"", &plain, M, ""));
    CHECK(neg_is(PMD "; server_max_window_bits=\"15", &plain, M, ""));
    CHECK(neg_is(PMD "; server_max_window_bits=\"15\\", &plain, M, ""));

    /* Invalid values and parameters: the offer is declined. */
    static const char *const declined[] = {
        PMD "; server_max_window_bits",
        PMD "; server_max_window_bits=7",
        PMD "; server_max_window_bits=16",
        PMD "; server_max_window_bits=015",
        PMD "; server_max_window_bits=0x0f",
        PMD "; server_max_window_bits=99999999999999999999",
        PMD "; client_max_window_bits=7",
        PMD "; client_max_window_bits=16",
        PMD "; client_max_window_bits=09",
        PMD "; client_max_window_bits=\"\\16\"",
        PMD "; server_no_context_takeover=1",
        PMD "; client_no_context_takeover=\"\"x",
        PMD "; server_no_context_takeover; server_no_context_takeover",
        PMD "; client_no_context_takeover; client_no_context_takeover",
        PMD "; server_max_window_bits=10; server_max_window_bits=10",
        PMD "; client_max_window_bits; client_max_window_bits=10",
        PMD "; client_max_window_bits=10; Client_Max_Window_Bits=10",
        PMD "; unknown",
        PMD "; mux=1",
    };
    for (size_t i = 0; i < sizeof declined / sizeof declined[0]; i++) {
        struct ws_deflate_params z;
        char r[WS_DEFLATE_RESPONSE_MAX];
        int rc = ws_deflate_negotiate(declined[i], &def, &z, r, sizeof r);
        CHECK(rc == D || rc == M);
        CHECK(r[0] == '\0' && z.server_max_window_bits == 0);
        if (rc == A)
            fprintf(stderr, "  accepted: %s\n", declined[i]);
    }
    CHECK(neg_is(PMD "; server_max_window_bits=8", &def, A,
                 PMD SNCT CNCT "; server_max_window_bits=8"));
    CHECK(neg_is(PMD "; client_no_context_takeover=\"\"x", &def, M, ""));

    /* Several offers: the first acceptable one wins. */
    CHECK(neg_is(PMD "; server_max_window_bits=7, " PMD "; client_max_window_bits", &plain, A,
                 PMD "; client_max_window_bits=15"));
    CHECK(neg_is(PMD "; foo, " PMD SNCT ", " PMD CNCT, &plain, A, PMD SNCT));
    CHECK(neg_is("x-webkit-deflate-frame, " PMD "; server_max_window_bits=12, " PMD, &plain, A,
                 PMD "; server_max_window_bits=12"));
    CHECK(neg_is(PMD "; server_max_window_bits=7, " PMD "; server_max_window_bits=16", &plain, D, ""));
    CHECK(neg_is(PMD "; server_max_window_bits=\"10\"\t,\t" PMD, &plain, A,
                 PMD "; server_max_window_bits=10"));

    /* Malformed headers: reported, nothing accepted, wherever the fault. */
    static const char *const malformed[] = {
        ";",
        PMD ";",
        PMD "; ",
        PMD "; =1",
        PMD "; a=",
        PMD "; a==1",
        PMD " x",
        PMD "; a b",
        PMD ", ;",
        PMD ", foo; bar=\"unterminated",
        PMD "; server_max_window_bits=\"1\x7f\"",
        "\"" PMD "\"",
        PMD "/1",
        PMD "\x01",
    };
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        CHECK(neg_is(malformed[i], &def, M, ""));
        if (!neg_is(malformed[i], &def, M, ""))
            fprintf(stderr, "  not malformed: %s\n", malformed[i]);
    }

    /* A response buffer too small to be safe: declined. */
    char tiny[8];
    CHECK_EQ(ws_deflate_negotiate(PMD, &def, &a, tiny, sizeof tiny), D);
    CHECK(tiny[0] == '\0');
    /* The longest response fits. */
    CHECK(neg_is(PMD "; server_no_context_takeover; client_no_context_takeover; "
                     "server_max_window_bits=10; client_max_window_bits=10",
                 &def, A, PMD SNCT CNCT "; server_max_window_bits=10; client_max_window_bits=10"));
}

int main(void)
{
    test_rfc_examples();
    test_round_trips();
    test_limit();
    test_corrupt();
    test_new_and_memory();
    test_negotiate();
    buf_pool_drain();
    return unit_done("ws_deflate");
}
