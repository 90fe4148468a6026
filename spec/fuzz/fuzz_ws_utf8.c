/* fuzz_ws_utf8: libFuzzer target for the UTF-8 validator. The first input
 * byte picks a split point, the rest is the text. Fed whole, split in two
 * and one byte at a time, the validator must agree with itself and with a
 * slow reference that reasons on code points, down to the byte where the
 * input becomes invalid. Any disagreement aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ref_utf8.h"
#include "ws_utf8.h"

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)


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
    long want = ref_utf8_classify(s, n);
    struct ws_utf8 u;

    /* Whole. */
    int ok = feed_ok(s, n, &u);
    CHECK(ok == (want == REF_UTF8_VALID || want == REF_UTF8_INCOMPLETE));
    if (ok)
        CHECK(ws_utf8_complete(&u) == (want == REF_UTF8_VALID));
    CHECK(ws_utf8_valid(s, n) == (want == REF_UTF8_VALID));

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
        CHECK(failed_at == -1 && ws_utf8_complete(&u) == (want == REF_UTF8_VALID));

    /* Two pieces. */
    ws_utf8_reset(&u);
    if (ws_utf8_feed(&u, s, k) != WS_UTF8_OK) {
        CHECK(want >= 0 && (size_t)want < k);
    } else if (ws_utf8_feed(&u, s + k, n - k) != WS_UTF8_OK) {
        CHECK(want >= 0 && (size_t)want >= k);
    } else {
        CHECK(want < 0);
        CHECK(ws_utf8_complete(&u) == (want == REF_UTF8_VALID));
    }
    return 0;
}
