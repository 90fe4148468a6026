/* ref_utf8.h: the slow reference UTF-8 classifier both fuzz targets check
 * the codec against. It reasons on code points, not on byte ranges, so it
 * shares no logic with src/ws_utf8.c: a bug would have to be made twice,
 * differently, to go unseen. Header-only: each fuzzer is one program. */
#ifndef MOONPORT_REF_UTF8_H
#define MOONPORT_REF_UTF8_H

#include <stddef.h>
#include <stdint.h>

enum { REF_UTF8_VALID = -1, REF_UTF8_INCOMPLETE = -2 };

/* A partial character is acceptable when some completion of it decodes to
 * a scalar value of its length: the code points it can still become form
 * one range, which must reach past the overlong minimum, stay at or below
 * U+10FFFF and not lie wholly among the surrogates. */
static int ref_utf8_completable(const uint8_t *s, size_t have, size_t need)
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

/* REF_UTF8_VALID, REF_UTF8_INCOMPLETE (valid so far, ends inside a
 * character), or the index of the first byte no valid text continues
 * through. */
static long ref_utf8_classify(const uint8_t *s, size_t n)
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
                return REF_UTF8_INCOMPLETE;
            if (have > 1 && (s[i + have - 1] & 0xC0) != 0x80)
                return (long)(i + have - 1);
            if (!ref_utf8_completable(s + i, have, need))
                return (long)(i + have - 1);
        }
        i += need;
    }
    return REF_UTF8_VALID;
}

#endif
