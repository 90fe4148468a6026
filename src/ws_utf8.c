/* ws_utf8: an incremental UTF-8 validator (RFC 3629). It owns nothing but the
 * three bytes of struct ws_utf8, so a text message can be checked piece by
 * piece as reads and fragments arrive. It must never allocate, never read
 * past len, and never accept a byte sequence RFC 3629 forbids. */
#include "ws_utf8.h"

#include <string.h>

/* The state machine keeps, between bytes, how many continuation bytes the
 * current character still needs and the range the next one must fall in.
 * The range is what rejects the hard cases: after E0 the next byte must be
 * A0..BF (below is overlong), after ED 80..9F (above is a surrogate), after
 * F0 90..BF (below is overlong), after F4 80..8F (above is over U+10FFFF).
 * Every later continuation byte is plain 80..BF. */

#define ASCII_MASK UINT64_C(0x8080808080808080)

void ws_utf8_reset(struct ws_utf8 *u)
{
    u->need = 0;
    u->lo = 0x80;
    u->hi = 0xBF;
}

/* Start a character with lead byte b (known to be >= 0x80). Returns 0, or -1
 * if b cannot start a character: a stray continuation byte, C0/C1 (which can
 * only start overlong encodings) or F5..FF (beyond U+10FFFF). */
static int utf8_lead(struct ws_utf8 *u, uint8_t b)
{
    u->lo = 0x80;
    u->hi = 0xBF;
    if (b < 0xC2)
        return -1;
    if (b < 0xE0) {
        u->need = 1;
    } else if (b < 0xF0) {
        u->need = 2;
        if (b == 0xE0)
            u->lo = 0xA0;
        else if (b == 0xED)
            u->hi = 0x9F;
    } else if (b < 0xF5) {
        u->need = 3;
        if (b == 0xF0)
            u->lo = 0x90;
        else if (b == 0xF4)
            u->hi = 0x8F;
    } else {
        return -1;
    }
    return 0;
}

int ws_utf8_feed(struct ws_utf8 *u, const uint8_t *p, size_t len)
{
    size_t i = 0;

    while (i < len) {
        if (u->need == 0) {
            /* At a character boundary: skip ASCII a word at a time. memcpy
             * keeps the load legal at any alignment and never reads past
             * len, because a word is only loaded when 8 bytes remain. */
            while (len - i >= 8) {
                uint64_t w;
                memcpy(&w, p + i, sizeof w);
                if (w & ASCII_MASK)
                    break;
                i += 8;
            }
            while (i < len && p[i] < 0x80)
                i++;
            if (i == len)
                break;
            if (utf8_lead(u, p[i]) < 0)
                return WS_UTF8_INVALID;
            i++;
            continue;
        }
        uint8_t b = p[i];
        if (b < u->lo || b > u->hi)
            return WS_UTF8_INVALID;
        u->need--;
        u->lo = 0x80;
        u->hi = 0xBF;
        i++;
    }
    return WS_UTF8_OK;
}

int ws_utf8_complete(const struct ws_utf8 *u)
{
    return u->need == 0;
}

int ws_utf8_valid(const uint8_t *p, size_t len)
{
    struct ws_utf8 u;

    ws_utf8_reset(&u);
    return ws_utf8_feed(&u, p, len) == WS_UTF8_OK && ws_utf8_complete(&u);
}
