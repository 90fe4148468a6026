/* ws_utf8: an incremental UTF-8 validator (RFC 3629). It owns nothing but the
 * one byte of struct ws_utf8, so a text message can be checked piece by piece
 * as reads and fragments arrive. It must never allocate, never read past len,
 * and never accept a byte sequence RFC 3629 forbids. */
#include "ws_utf8.h"

#include <string.h>

/* A table-driven automaton: each byte falls in one of 12 classes, and
 * (state, class) gives the next state. One table lookup per byte and no
 * branch on the byte's value, so mixed-length text does not pay a branch
 * misprediction per character. The states that follow E0, ED, F0 and F4
 * narrow the next byte's range: that is what rejects overlongs (E0 80..9F,
 * F0 80..8F), surrogates (ED A0..BF) and code points over U+10FFFF
 * (F4 90..BF). */

enum { /* byte classes */
    C_ASCII, C_CONT_LO, C_CONT_MID, C_CONT_HI, C_BAD, C_LEAD2,
    C_E0, C_LEAD3, C_ED, C_F0, C_LEAD4, C_F4, NCLASS,
};

static const uint8_t byte_class[256] = {
    [0x00 ... 0x7F] = C_ASCII,   [0x80 ... 0x8F] = C_CONT_LO, [0x90 ... 0x9F] = C_CONT_MID,
    [0xA0 ... 0xBF] = C_CONT_HI, [0xC0 ... 0xC1] = C_BAD,     [0xC2 ... 0xDF] = C_LEAD2,
    [0xE0] = C_E0,               [0xE1 ... 0xEC] = C_LEAD3,   [0xED] = C_ED,
    [0xEE ... 0xEF] = C_LEAD3,   [0xF0] = C_F0,               [0xF1 ... 0xF3] = C_LEAD4,
    [0xF4] = C_F4,               [0xF5 ... 0xFF] = C_BAD,
};

/* States, stored premultiplied by NCLASS so a step is one add and a load. */
enum {
    S_BOUNDARY = 0 * NCLASS, /* between characters: the only accepting state */
    S_NEED1 = 1 * NCLASS,    /* one more continuation byte, 80..BF */
    S_NEED2 = 2 * NCLASS,
    S_NEED3 = 3 * NCLASS,
    S_E0 = 4 * NCLASS,       /* after E0: A0..BF, then one more */
    S_ED = 5 * NCLASS,       /* after ED: 80..9F, then one more */
    S_F0 = 6 * NCLASS,       /* after F0: 90..BF, then two more */
    S_F4 = 7 * NCLASS,       /* after F4: 80..8F, then two more */
    S_BAD = 8 * NCLASS,      /* invalid, for good */
};

#define ROW(ascii, lo, mid, hi, bad, l2, e0, l3, ed, f0, l4, f4) \
    ascii, lo, mid, hi, bad, l2, e0, l3, ed, f0, l4, f4
#define X S_BAD
static const uint8_t next_state[9 * NCLASS] = {
    /* boundary */ ROW(S_BOUNDARY, X, X, X, X, S_NEED1, S_E0, S_NEED2, S_ED, S_F0, S_NEED3, S_F4),
    /* need1 */ ROW(X, S_BOUNDARY, S_BOUNDARY, S_BOUNDARY, X, X, X, X, X, X, X, X),
    /* need2 */ ROW(X, S_NEED1, S_NEED1, S_NEED1, X, X, X, X, X, X, X, X),
    /* need3 */ ROW(X, S_NEED2, S_NEED2, S_NEED2, X, X, X, X, X, X, X, X),
    /* e0 */ ROW(X, X, X, S_NEED1, X, X, X, X, X, X, X, X),
    /* ed */ ROW(X, S_NEED1, S_NEED1, X, X, X, X, X, X, X, X, X),
    /* f0 */ ROW(X, X, S_NEED2, S_NEED2, X, X, X, X, X, X, X, X),
    /* f4 */ ROW(X, S_NEED2, X, X, X, X, X, X, X, X, X, X),
    /* bad */ ROW(X, X, X, X, X, X, X, X, X, X, X, X),
};
#undef X
#undef ROW

#define ASCII_MASK UINT64_C(0x8080808080808080)

void ws_utf8_reset(struct ws_utf8 *u)
{
    u->state = S_BOUNDARY;
}

int ws_utf8_feed(struct ws_utf8 *u, const uint8_t *p, size_t len)
{
    unsigned state = u->state;
    size_t i = 0;

    while (i < len) {
        if (state == S_BOUNDARY) {
            /* Between characters: skip ASCII two words, then one word, at
             * a time. memcpy keeps the loads legal at any alignment, and a
             * word is only loaded when its 8 bytes remain. */
            while (len - i >= 16) {
                uint64_t w[2];
                memcpy(w, p + i, sizeof w);
                if ((w[0] | w[1]) & ASCII_MASK)
                    break;
                i += 16;
            }
            while (len - i >= 8) {
                uint64_t w;
                memcpy(&w, p + i, sizeof w);
                if (w & ASCII_MASK)
                    break;
                i += 8;
            }
            if (i == len)
                break;
        }
        /* Then a stretch of bytes through the automaton, with no test in
         * the loop but its bound; back to the word test after it. */
        size_t end = len - i > 32 ? i + 32 : len;
        while (i < end)
            state = next_state[state + byte_class[p[i++]]];
    }
    u->state = (uint8_t)state;
    return state == S_BAD ? WS_UTF8_INVALID : WS_UTF8_OK;
}

int ws_utf8_complete(const struct ws_utf8 *u)
{
    return u->state == S_BOUNDARY;
}

int ws_utf8_valid(const uint8_t *p, size_t len)
{
    struct ws_utf8 u;

    ws_utf8_reset(&u);
    return ws_utf8_feed(&u, p, len) == WS_UTF8_OK && ws_utf8_complete(&u);
}
