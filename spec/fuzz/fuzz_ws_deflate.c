/* fuzz_ws_deflate: libFuzzer target for permessage-deflate. The first input
 * byte picks the mode and the second the settings; the rest is the data.
 * Mode 0 negotiates the data as a Sec-WebSocket-Extensions header: an
 * accepted response must be in range and, offered back, give the same
 * parameters and the same response. Mode 1 inflates the data as a client's
 * message, twice, under a small limit: never more output than the limit,
 * and out unchanged on an error. Mode 2 deflates the data as one to three
 * messages and inflates them back: they must come back unchanged. Any
 * broken rule aborts; ASan catches leaks and overreads. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "ws_deflate.h"
#include "ws_frame.h"

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)

static void fuzz_negotiate(uint8_t settings, const uint8_t *data, size_t size)
{
    struct ws_deflate_policy p;
    ws_deflate_policy_init(&p);
    p.server_no_context_takeover = settings & 1;
    p.client_no_context_takeover = (settings >> 1) & 1;
    p.server_max_window_bits = 8 + (settings >> 2) % 8;  /* 8..15: the policy's 8 is clamped to 9 */
    p.client_max_window_bits = 8 + (settings >> 5);      /* 8..15 */

    /* The header as a string of exactly its bytes, so a read past its NUL
     * is caught. An embedded NUL just ends it early, as in a C string. */
    char *header = malloc(size + 1);
    CHECK(header);
    memcpy(header, data, size);
    header[size] = '\0';

    struct ws_deflate_params a;
    char resp[WS_DEFLATE_RESPONSE_MAX];
    int rc = ws_deflate_negotiate(header, &p, &a, resp, sizeof resp);
    CHECK(rc == WS_DEFLATE_ACCEPTED || rc == WS_DEFLATE_DECLINED || rc == WS_DEFLATE_MALFORMED);
    CHECK(strlen(resp) < sizeof resp);
    if (rc != WS_DEFLATE_ACCEPTED) {
        static const struct ws_deflate_params zero;
        CHECK(resp[0] == '\0' && memcmp(&a, &zero, sizeof a) == 0);
        free(header);
        return;
    }
    CHECK(a.server_max_window_bits >= 8 && a.server_max_window_bits <= 15);
    CHECK(a.client_max_window_bits >= 8 && a.client_max_window_bits <= 15);
    CHECK(a.server_max_window_bits <= (p.server_max_window_bits < 9 ? 9 : p.server_max_window_bits));
    CHECK(a.server_no_context_takeover <= 1 && a.client_no_context_takeover <= 1);
    CHECK(a.server_no_context_takeover >= p.server_no_context_takeover);
    CHECK(a.client_no_context_takeover >= p.client_no_context_takeover);
    CHECK(strncmp(resp, "permessage-deflate", 18) == 0);

    /* The response, offered back, gives the same parameters and itself. */
    struct ws_deflate_params b;
    char again[WS_DEFLATE_RESPONSE_MAX];
    CHECK(ws_deflate_negotiate(resp, &p, &b, again, sizeof again) == WS_DEFLATE_ACCEPTED);
    CHECK(memcmp(&a, &b, sizeof a) == 0);
    CHECK(strcmp(resp, again) == 0);
    free(header);
}

static void inflate_once(struct ws_inflater *z, const uint8_t *data, size_t size, uint64_t max)
{
    struct buf out = {0};
    buf_append(&out, "k", 1); /* what was there before must stay */
    int rc = ws_inflate_message(z, data, size, &out, max);
    CHECK(rc == 0 || rc == WS_DEFLATE_ERR_DATA || rc == WS_ERR_TOO_BIG);
    CHECK(buf_pending(&out) >= 1 && buf_head(&out)[0] == 'k');
    if (rc == 0)
        CHECK(buf_pending(&out) - 1 <= max);
    else
        CHECK(buf_pending(&out) == 1);
    if (rc != 0)
        CHECK(ws_deflate_close_code(rc) == (rc == WS_ERR_TOO_BIG ? 1009 : 1007));
    buf_reset(&out);
}

static void fuzz_inflate(uint8_t settings, const uint8_t *data, size_t size)
{
    int bits = 8 + settings % 8;
    uint64_t max = 1 + (uint64_t)(settings >> 3) * 2048; /* 1 .. about 64 KiB */
    struct ws_inflater *shared = ws_inflater_new(bits, 1);
    struct ws_inflater *own = ws_inflater_new(bits, 0);
    CHECK(shared && own);
    inflate_once(shared, data, size, max);
    inflate_once(shared, data, size, max);
    inflate_once(own, data, size, max);
    inflate_once(own, data, size, max);
    ws_inflater_free(shared);
    ws_inflater_free(own);
}

static void fuzz_round_trip(uint8_t settings, const uint8_t *data, size_t size)
{
    int bits = 8 + settings % 8; /* 8: Huffman coding only */
    int takeover = (settings >> 3) & 1;
    int mem_level = 1 + ((settings >> 4) & 7); /* 1..8 */
    int level = (settings >> 7) ? 1 : -1;
    struct ws_deflater *d = ws_deflater_new(bits, mem_level, level, !takeover);
    struct ws_inflater *z = ws_inflater_new(bits, !takeover);
    struct ws_inflater *big = ws_inflater_new(15, !takeover);
    CHECK(d && z && big);

    /* Up to three messages, cut where the data says. */
    size_t cut1 = size ? data[0] % (size + 1) : 0;
    size_t cut2 = size > 1 ? cut1 + data[1] % (size - cut1 + 1) : size;
    size_t bounds[4] = {0, cut1, cut2, size};
    for (int m = 0; m < 3; m++) {
        const uint8_t *msg = data + bounds[m];
        size_t n = bounds[m + 1] - bounds[m];
        struct buf c = {0}, a = {0}, b = {0};
        CHECK(ws_deflate_message(d, msg, n, &c) == 0);
        CHECK(buf_pending(&c) >= 1);
        CHECK(ws_inflate_message(z, buf_head(&c), buf_pending(&c), &a, n) == 0);
        CHECK(ws_inflate_message(big, buf_head(&c), buf_pending(&c), &b, 0) == 0);
        CHECK(buf_pending(&a) == n && (n == 0 || memcmp(buf_head(&a), msg, n) == 0));
        CHECK(buf_pending(&b) == n && (n == 0 || memcmp(buf_head(&b), msg, n) == 0));
        if (n > 1 && !takeover) {
            /* Each message stands alone: one byte under its length as the
             * limit must fail, and leave nothing behind. */
            struct buf t = {0};
            struct ws_inflater *once = ws_inflater_new(15, 1);
            CHECK(once);
            CHECK(ws_inflate_message(once, buf_head(&c), buf_pending(&c), &t, n - 1) ==
                  WS_ERR_TOO_BIG);
            CHECK(t.blk == NULL);
            ws_inflater_free(once);
        }
        buf_reset(&c);
        buf_reset(&a);
        buf_reset(&b);
    }
    ws_deflater_free(d);
    ws_inflater_free(z);
    ws_inflater_free(big);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t mode = data[0] % 3, settings = data[1];
    data += 2;
    size -= 2;
    if (mode == 0)
        fuzz_negotiate(settings, data, size);
    else if (mode == 1)
        fuzz_inflate(settings, data, size);
    else
        fuzz_round_trip(settings, data, size);
    buf_pool_drain();
    return 0;
}
