/* fuzz_ws_utf8: libFuzzer target for the UTF-8 validator. The first input
 * byte picks a split point, the rest is the text. Fed whole, split in two
 * and one byte at a time, the validator must agree with itself and with a
 * slow reference that reasons on code points, down to the byte where the
 * input becomes invalid. Any disagreement aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws_utf8.h"

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)

enum { VALID = -1, INCOMPLETE = -2 };

/* A partial character is acceptable when some completion of it decodes to
 * a scalar value of its length: the code points it can still become form
 * one range, which must reach past the overlong minimum, stay at or below
 * U+10FFFF and not lie wholly among the surrogates. */
static int ref_completable(const uint8_t *s, size_t have, size_t need)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    static const uint8_t lead_bits[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t lo = s[0] & lead_bits[need], hi = lo;

    for (size_t i = 1; i < need; i++) {
        lo = lo << 6 | (i < have ? (uint32_t)(s[i] & 0x3F) : 0x00);
        hi = hi << 6 | (i < have ? (uint32_t)(s[i] & 0x3F) : 0x3F);
    }
    if (lo < min_cp[need])
        lo = min_cp[need];
    if (hi > 0x10FFFF)
        hi = 0x10FFFF;
    return lo <= hi && !(lo >= 0xD800 && hi <= 0xDFFF);
}

/* VALID, INCOMPLETE, or the index of the first byte that no valid text can
 * continue through. */
static long ref_classify(const uint8_t *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        size_t need;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        if ((s[i] & 0xE0) == 0xC0)
            need = 2;
        else if ((s[i] & 0xF0) == 0xE0)
            need = 3;
        else if ((s[i] & 0xF8) == 0xF0)
            need = 4;
        else
            return (long)i;
        for (size_t have = 1; have <= need; have++) {
            if (i + have > n)
                return INCOMPLETE;
            if (have > 1 && (s[i + have - 1] & 0xC0) != 0x80)
                return (long)(i + have - 1);
            if (!ref_completable(s + i, have, need))
                return (long)(i + have - 1);
        }
        i += need;
    }
    return VALID;
}

static int feed_ok(const uint8_t *s, size_t n, struct ws_utf8 *u)
{
    ws_utf8_reset(u);
    return ws_utf8_feed(u, s, n) == WS_UTF8_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *s = data + 1;
    size_t n = size - 1, k = data[0] % (n + 1);
    long want = ref_classify(s, n);
    struct ws_utf8 u;

    /* Whole. */
    int ok = feed_ok(s, n, &u);
    CHECK(ok == (want == VALID || want == INCOMPLETE));
    if (ok)
        CHECK(ws_utf8_complete(&u) == (want == VALID));
    CHECK(ws_utf8_valid(s, n) == (want == VALID));

    /* The shortest failing prefix, found by bisection over whole feeds
     * (failure is monotonic in the prefix length), is the reference's. */
    if (!ok) {
        size_t lo = 0, hi = n; /* prefix lo passes, prefix hi fails */
        while (hi - lo > 1) {
            size_t mid = lo + (hi - lo) / 2;
            if (feed_ok(s, mid, &u))
                lo = mid;
            else
                hi = mid;
        }
        CHECK((long)hi - 1 == want);
    }

    /* One byte at a time: the call that fails is the one with the bad byte. */
    memset(&u, 0, sizeof u);
    long failed_at = -1;
    for (size_t i = 0; i < n; i++)
        if (ws_utf8_feed(&u, s + i, 1) != WS_UTF8_OK) {
            failed_at = (long)i;
            break;
        }
    if (want >= 0)
        CHECK(failed_at == want);
    else
        CHECK(failed_at == -1 && ws_utf8_complete(&u) == (want == VALID));

    /* Two pieces. */
    ws_utf8_reset(&u);
    if (ws_utf8_feed(&u, s, k) != WS_UTF8_OK) {
        CHECK(want >= 0 && (size_t)want < k);
    } else if (ws_utf8_feed(&u, s + k, n - k) != WS_UTF8_OK) {
        CHECK(want >= 0 && (size_t)want >= k);
    } else {
        CHECK(want < 0);
        CHECK(ws_utf8_complete(&u) == (want == VALID));
    }
    return 0;
}
