/* test_ws_utf8: the incremental UTF-8 validator against the Autobahn 6.x
 * families and an independent reference, fed whole, in every two-piece
 * split, one byte at a time, and against an unreadable page. */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "unit.h"
#include "ws_utf8.h"

/* What a byte string is, as UTF-8: valid and complete, a valid prefix that
 * ends inside a character, or invalid from a given byte on. */
enum { VALID = -1, INCOMPLETE = -2 };

/* The reference works on code points rather than byte ranges, so it shares
 * no logic with the validator: a partial character is acceptable exactly
 * when some completion decodes to a scalar value with the right length. */
static int ref_completable(const uint8_t *s, size_t have, size_t need)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    static const uint8_t lead_bits[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t lo = s[0] & lead_bits[need], hi = lo;

    for (size_t i = 1; i < need; i++) {
        uint32_t c_lo = i < have ? (uint32_t)(s[i] & 0x3F) : 0x00;
        uint32_t c_hi = i < have ? (uint32_t)(s[i] & 0x3F) : 0x3F;
        lo = lo << 6 | c_lo;
        hi = hi << 6 | c_hi;
    }
    if (lo < min_cp[need])
        lo = min_cp[need];
    if (hi > 0x10FFFF)
        hi = 0x10FFFF;
    if (lo > hi)
        return 0;
    return !(lo >= 0xD800 && hi <= 0xDFFF);
}

static int ref_classify(const uint8_t *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint8_t b = s[i];
        size_t need;
        if (b < 0x80) {
            i++;
            continue;
        }
        if ((b & 0xE0) == 0xC0)
            need = 2;
        else if ((b & 0xF0) == 0xE0)
            need = 3;
        else if ((b & 0xF8) == 0xF0)
            need = 4;
        else
            return (int)i;
        for (size_t have = 1; have <= need; have++) {
            if (i + have > n)
                return INCOMPLETE;
            if (have > 1 && (s[i + have - 1] & 0xC0) != 0x80)
                return (int)(i + have - 1);
            if (!ref_completable(s + i, have, need))
                return (int)(i + have - 1);
        }
        i += need;
    }
    return VALID;
}

/* The validator's verdict on s fed as one call: VALID, INCOMPLETE, or the
 * first invalid byte, found as the shortest prefix that fails (a whole
 * feed cannot say where it failed, but its prefixes can). */
static int classify_whole(const uint8_t *s, size_t n)
{
    struct ws_utf8 u;

    ws_utf8_reset(&u);
    if (ws_utf8_feed(&u, s, n) == WS_UTF8_OK)
        return ws_utf8_complete(&u) ? VALID : INCOMPLETE;
    for (size_t k = 1; k <= n; k++) {
        ws_utf8_reset(&u);
        if (ws_utf8_feed(&u, s, k) != WS_UTF8_OK)
            return (int)(k - 1);
    }
    return -100; /* failed whole but no prefix fails: a bug */
}

static int classify_bytes(const uint8_t *s, size_t n)
{
    struct ws_utf8 u;

    memset(&u, 0, sizeof u); /* zero-initialised must mean "at a boundary" */
    for (size_t i = 0; i < n; i++)
        if (ws_utf8_feed(&u, s + i, 1) != WS_UTF8_OK)
            return (int)i;
    return ws_utf8_complete(&u) ? VALID : INCOMPLETE;
}

/* Two pieces split at k: the failing call must be the one holding the
 * expected byte, and a clean run must end in the same state. */
static int split_agrees(const uint8_t *s, size_t n, size_t k, int want)
{
    struct ws_utf8 u;

    ws_utf8_reset(&u);
    int r1 = ws_utf8_feed(&u, s, k);
    if (r1 != WS_UTF8_OK)
        return want >= 0 && (size_t)want < k;
    int r2 = ws_utf8_feed(&u, s + k, n - k);
    if (r2 != WS_UTF8_OK)
        return want >= 0 && (size_t)want >= k;
    return want == (ws_utf8_complete(&u) ? VALID : INCOMPLETE);
}

static uint8_t *guard_page;
static size_t page_size;

static void guard_init(void)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    guard_page = mmap(NULL, 2 * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    CHECK(guard_page != MAP_FAILED);
    CHECK(mprotect(guard_page + page_size, page_size, PROT_NONE) == 0);
}

/* Copy s so that its last byte is the last readable one. */
static const uint8_t *guard_place(const uint8_t *s, size_t n)
{
    uint8_t *dst = guard_page + page_size - n;
    memcpy(dst, s, n);
    return dst;
}

/* Check one input every way; want is its known classification. */
static void check_input(const uint8_t *s, size_t n, int want, int line)
{
    int whole = classify_whole(s, n), bytes = classify_bytes(s, n), ref = ref_classify(s, n);
    const uint8_t *g = guard_place(s, n);
    int guarded = classify_whole(g, n), guarded_bytes = classify_bytes(g, n);
    int splits_ok = 1;

    for (size_t k = 0; k <= n; k++)
        splits_ok &= split_agrees(s, n, k, want);
    if (whole != want || bytes != want || ref != want || guarded != want ||
        guarded_bytes != want || !splits_ok)
        fprintf(stderr, "  input at line %d: want %d whole %d bytes %d ref %d guard %d/%d\n",
                line, want, whole, bytes, ref, guarded, guarded_bytes);
    CHECK_EQ(whole, want);
    CHECK_EQ(bytes, want);
    CHECK_EQ(ref, want);
    CHECK_EQ(guarded, want);
    CHECK_EQ(guarded_bytes, want);
    CHECK(splits_ok);
    CHECK_EQ(ws_utf8_valid(s, n), want == VALID);
    CHECK_EQ(ws_utf8_valid(g, n), want == VALID);
}

#define T(str, want) check_input((const uint8_t *)(str), sizeof(str) - 1, (want), __LINE__)

#define KOSME "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"

static void test_autobahn_families(void)
{
    /* 6.1, 6.2: empty and the Greek word. */
    T("", VALID);
    T("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!", VALID);
    T(KOSME, VALID);
    /* 6.3: the word followed by a surrogate: fails on its second byte. */
    T(KOSME "\xed\xa0\x80" "edited", 12);
    /* 6.6: every prefix of the word. */
    {
        static const uint8_t kosme[] = KOSME;
        static const int verdict[12] = {VALID,      INCOMPLETE, VALID,      INCOMPLETE,
                                        INCOMPLETE, VALID,      INCOMPLETE, VALID,
                                        INCOMPLETE, VALID,      INCOMPLETE, VALID};
        for (size_t k = 0; k < sizeof kosme; k++)
            check_input(kosme, k, verdict[k], __LINE__);
    }
    /* 6.7: first code point of each length. */
    T("\x00", VALID);
    T("\xc2\x80", VALID);
    T("\xe0\xa0\x80", VALID);
    T("\xf0\x90\x80\x80", VALID);
    /* 6.8, 6.10: five- and six-byte forms and F5..FF leads never start anything. */
    T("\xf8\x88\x80\x80\x80", 0);
    T("\xfc\x84\x80\x80\x80\x80", 0);
    T("\xf7\xbf\xbf\xbf", 0);
    T("\xfb\xbf\xbf\xbf\xbf", 0);
    T("\xfd\xbf\xbf\xbf\xbf\xbf", 0);
    T("\xf5\x80\x80\x80", 0);
    /* 6.9: last code point of each length. */
    T("\x7f", VALID);
    T("\xdf\xbf", VALID);
    T("\xef\xbf\xbf", VALID);
    T("\xf4\x8f\xbf\xbf", VALID);
    /* 6.11: other boundaries, U+10FFFF + 1 fails on its second byte. */
    T("\xed\x9f\xbf", VALID);
    T("\xee\x80\x80", VALID);
    T("\xef\xbf\xbd", VALID);
    T("\xf4\x90\x80\x80", 1);
    T("a\xf4\x90", 2);
    /* 6.12: stray continuation bytes. */
    T("\x80", 0);
    T("\xbf", 0);
    T("\x80\xbf", 0);
    T("ab\x80\xbf\x80", 2);
    T("\xc2\x80\x80", 2);
    /* 6.13: lone start bytes followed by a space. */
    T("\xc2\x20", 1);
    T("\xdf\x20", 1);
    T("\xe0\x20", 1);
    T("\xef\x20", 1);
    T("\xf0\x20", 1);
    T("\xf4\x20", 1);
    T("\xe1\x80\x20", 2);
    /* 6.14, 6.15: sequences with the last byte missing are only incomplete
     * at the end, invalid once anything else follows. */
    T("\xc2", INCOMPLETE);
    T("\xe0\xa0", INCOMPLETE);
    T("\xf0\x90\x80", INCOMPLETE);
    T("\xf4\x8f\xbf", INCOMPLETE);
    T("\xe0\xa0" "a", 2);
    T("\xf0\x90\x80\xc2\x80", 3);
    /* 6.16: impossible bytes. */
    T("\xfe", 0);
    T("\xff", 0);
    T("\xfe\xfe\xff\xff", 0);
    /* 6.17 - 6.19: overlong forms of '/', of the largest value that fits,
     * and of NUL. C0 and C1 fail at once; E0 and F0 on the next byte. */
    T("\xc0\xaf", 0);
    T("\xe0\x80\xaf", 1);
    T("\xf0\x80\x80\xaf", 1);
    T("\xc1\xbf", 0);
    T("\xe0\x9f\xbf", 1);
    T("\xf0\x8f\xbf\xbf", 1);
    T("\xc0\x80", 0);
    T("\xe0\x80\x80", 1);
    T("\xf0\x80\x80\x80", 1);
    /* 6.20, 6.21: single and paired UTF-16 surrogates. */
    T("\xed\xa0\x80", 1);
    T("\xed\xad\xbf", 1);
    T("\xed\xae\x80", 1);
    T("\xed\xaf\xbf", 1);
    T("\xed\xb0\x80", 1);
    T("\xed\xbe\x80", 1);
    T("\xed\xbf\xbf", 1);
    T("\xed\xa0\x80\xed\xb0\x80", 1);
    T("\xed\xaf\xbf\xed\xbf\xbf", 1);
    /* 6.22, 6.23: noncharacters are valid scalar values, as is U+FFFD. */
    T("\xef\xbf\xbe", VALID);
    T("\xef\xbf\xbf", VALID);
    T("\xf0\x9f\xbf\xbe", VALID);
    T("\xf4\x8f\xbf\xbe", VALID);
    T("\xef\xb7\x90", VALID);
    T("\xef\xbf\xbd", VALID);
}

/* The ASCII fast path skips eight bytes at a time: a bad byte at every
 * offset of a long ASCII run, and a multi-byte character straddling every
 * word boundary, must be found exactly where they are. */
static void test_fast_path_positions(void)
{
    uint8_t buf[80];

    for (size_t at = 0; at < 64; at++) {
        memset(buf, 'a', sizeof buf);
        buf[at] = 0xff;
        check_input(buf, 70, (int)at, __LINE__);
        buf[at] = 0x80;
        check_input(buf, 70, (int)at, __LINE__);
    }
    for (size_t at = 0; at < 64; at++) {
        memset(buf, 'a', sizeof buf);
        memcpy(buf + at, "\xf0\x9f\x98\x80", 4);
        check_input(buf, 70, VALID, __LINE__);
        check_input(buf, at + 3, INCOMPLETE, __LINE__);
        buf[at + 2] = 'a';
        check_input(buf, 70, (int)at + 2, __LINE__);
    }
    /* A long valid mixture: ASCII runs of every length between characters. */
    {
        uint8_t big[2048];
        size_t n = 0;
        for (size_t run = 0; n + run + 4 < sizeof big; run++) {
            memset(big + n, 'x', run);
            n += run;
            memcpy(big + n, "\xe2\x82\xac", 3);
            n += 3;
        }
        check_input(big, n, VALID, __LINE__);
        big[n - 1] = 'x';
        check_input(big, n, (int)n - 1, __LINE__);
    }
}

/* The brief's example: the failure is reported by the call that feeds the
 * bad byte, not later. */
static void test_fail_on_the_call(void)
{
    struct ws_utf8 u;

    ws_utf8_reset(&u);
    CHECK_EQ(ws_utf8_feed(&u, (const uint8_t *)"\xce", 1), WS_UTF8_OK);
    CHECK(!ws_utf8_complete(&u));
    CHECK_EQ(ws_utf8_feed(&u, (const uint8_t *)"\x41", 1), WS_UTF8_INVALID);

    ws_utf8_reset(&u);
    CHECK_EQ(ws_utf8_feed(&u, (const uint8_t *)"\xce", 1), WS_UTF8_OK);
    CHECK_EQ(ws_utf8_feed(&u, (const uint8_t *)"\xba", 1), WS_UTF8_OK);
    CHECK(ws_utf8_complete(&u));
    CHECK_EQ(ws_utf8_feed(&u, NULL, 0), WS_UTF8_OK);
    CHECK(ws_utf8_complete(&u));
}

/* Every string of up to four bytes drawn from the bytes where the rules
 * change, against the reference, whole and byte by byte. */
static void test_exhaustive_boundaries(void)
{
    static const uint8_t alphabet[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0,
                                       0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec,
                                       0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5,
                                       0xf7, 0xf8, 0xfe, 0xff};
    const size_t na = sizeof alphabet;
    long mismatches = 0, valid = 0, total = 0;
    uint8_t s[4];

    for (size_t len = 1; len <= 4; len++) {
        size_t count = 1;
        for (size_t i = 0; i < len; i++)
            count *= na;
        for (size_t v = 0; v < count; v++) {
            size_t x = v;
            for (size_t i = 0; i < len; i++) {
                s[i] = alphabet[x % na];
                x /= na;
            }
            int want = ref_classify(s, len);
            if (classify_whole(s, len) != want || classify_bytes(s, len) != want) {
                if (mismatches++ < 5)
                    fprintf(stderr, "  mismatch on %zu bytes %02x %02x %02x %02x\n", len, s[0],
                            len > 1 ? s[1] : 0, len > 2 ? s[2] : 0, len > 3 ? s[3] : 0);
            }
            valid += want == VALID;
            total++;
        }
    }
    CHECK_EQ(mismatches, 0);
    /* The reference must not be vacuous: it accepts some and rejects some. */
    CHECK(valid > 1000);
    CHECK(valid < total / 2);
}

/* Every scalar value encodes to something the validator accepts, and every
 * surrogate encoded the same way is rejected at its second byte. */
static void test_all_code_points(void)
{
    long bad = 0;

    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        uint8_t s[4];
        size_t n;
        if (cp < 0x80) {
            s[0] = (uint8_t)cp;
            n = 1;
        } else if (cp < 0x800) {
            s[0] = (uint8_t)(0xC0 | cp >> 6);
            s[1] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 2;
        } else if (cp < 0x10000) {
            s[0] = (uint8_t)(0xE0 | cp >> 12);
            s[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            s[2] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 3;
        } else {
            s[0] = (uint8_t)(0xF0 | cp >> 18);
            s[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
            s[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            s[3] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 4;
        }
        int surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        if (ws_utf8_valid(s, n) != !surrogate)
            bad++;
    }
    CHECK_EQ(bad, 0);
}

int main(void)
{
    guard_init();
    test_autobahn_families();
    test_fast_path_positions();
    test_fail_on_the_call();
    test_exhaustive_boundaries();
    test_all_code_points();
    return unit_done("ws_utf8");
}
