/* codec_bench: how fast the pure codec is, next to the physical limit. It
 * fills a buffer with masked client frames, then times ws_parser_feed over
 * all of it (parse, unmask in place, UTF-8 check of text) and memcpy of the
 * same buffer, and reports both in GB/s of wire bytes. The parts are timed
 * alone too: ws_unmask and ws_utf8_valid. It links only src/ws_frame.c and
 * src/ws_utf8.c, and checks once per case that the parser gave back exactly
 * the payloads that were masked, so a fast wrong codec fails (exit 1). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ws_frame.h"
#include "ws_utf8.h"

enum content { BINARY, TEXT_ASCII, TEXT_UTF8 };
static const char *const content_names[] = {"binary", "text ascii", "text utf-8"};

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A payload of exactly len bytes of the given content. The UTF-8 one mixes
 * 2-, 3- and 4-byte characters (and ASCII to pad the end), so the validator
 * leaves its ASCII fast path all the time. */
static void fill_payload(uint8_t *p, size_t len, enum content what)
{
    static const char *const chars[] = {"\xc3\xa9", "\xce\xbb", "\xe2\x82\xac", "\xe6\x97\xa5",
                                        "\xf0\x9f\x98\x80", "a"};
    size_t i = 0;
    while (i < len) {
        uint64_t r = rnd();
        if (what == BINARY) {
            p[i++] = (uint8_t)(r >> 32);
        } else if (what == TEXT_ASCII) {
            p[i++] = (uint8_t)(0x20 + (r >> 32) % 95);
        } else {
            const char *ch = chars[(r >> 32) % 6];
            size_t n = strlen(ch);
            if (n > len - i)
                ch = "a", n = 1;
            memcpy(p + i, ch, n);
            i += n;
        }
    }
}

struct frames {
    uint8_t *wire;    /* masked frames, as a client sends them */
    uint8_t *plain;   /* the same payloads unmasked, back to back */
    size_t wire_len, plain_len, count;
};

/* Frames of `size` payload bytes until about `total` bytes of wire. */
static void build(struct frames *f, size_t size, size_t total, enum content what)
{
    size_t per = size + 14;
    f->count = total / per ? total / per : 1;
    f->wire = malloc(f->count * per);
    f->plain = malloc(f->count * size);
    if (!f->wire || !f->plain) {
        fprintf(stderr, "codec_bench: out of memory\n");
        exit(1);
    }
    uint8_t *w = f->wire;
    for (size_t k = 0; k < f->count; k++) {
        uint8_t *pl = f->plain + k * size;
        fill_payload(pl, size, what);
        *w++ = (uint8_t)(0x80 | (what == BINARY ? WS_OP_BINARY : WS_OP_TEXT));
        if (size < 126) {
            *w++ = (uint8_t)(0x80 | size);
        } else if (size < 65536) {
            *w++ = 0x80 | 126;
            *w++ = (uint8_t)(size >> 8);
            *w++ = (uint8_t)size;
        } else {
            *w++ = 0x80 | 127;
            for (int i = 7; i >= 0; i--)
                *w++ = (uint8_t)((uint64_t)size >> (8 * i));
        }
        uint8_t key[4];
        uint32_t r = (uint32_t)(rnd() >> 32);
        memcpy(key, &r, 4);
        memcpy(w, key, 4);
        w += 4;
        for (size_t i = 0; i < size; i++)
            w[i] = pl[i] ^ key[i & 3];
        w += size;
    }
    f->wire_len = (size_t)(w - f->wire);
    f->plain_len = f->count * size;
}

/* Parse the whole buffer; returns payload bytes seen, or -1 on an error.
 * With check set, also compares every chunk with the plain payloads. */
static long long parse_all(uint8_t *buf, size_t len, const struct frames *f, int check)
{
    struct ws_parser p;
    struct ws_chunk ch;
    ws_parser_init(&p, 0, 0);
    size_t off = 0, plain_off = 0, messages = 0;
    while (off < len) {
        long n = ws_parser_feed(&p, buf + off, len - off, &ch);
        if (n < 0) {
            fprintf(stderr, "codec_bench: parser error %ld: %s\n", n, ws_parser_error(&p));
            return -1;
        }
        off += (size_t)n;
        if (!ch.opcode) {
            /* The buffer holds whole frames: the parser may leave none of
             * them unconsumed, and an empty call would never end the loop. */
            if (off < len) {
                fprintf(stderr, "codec_bench: %zu bytes left unconsumed\n", len - off);
                return -1;
            }
            continue;
        }
        if (check && (plain_off + ch.len > f->plain_len ||
                      memcmp(ch.data, f->plain + plain_off, ch.len) != 0)) {
            fprintf(stderr, "codec_bench: payload at %zu differs from what was masked\n",
                    plain_off);
            return -1;
        }
        plain_off += ch.len;
        messages += (ch.flags & WS_CHUNK_MSG_END) != 0;
    }
    if (check && (plain_off != f->plain_len || messages != f->count)) {
        fprintf(stderr, "codec_bench: %zu messages and %zu bytes back, %zu and %zu sent\n",
                messages, plain_off, f->count, f->plain_len);
        return -1;
    }
    return (long long)plain_off;
}

static volatile uint8_t sink;

struct result {
    double parse, copy, unmask, utf8; /* seconds, best of the repeats */
};

static struct result run_case(const struct frames *f, uint8_t *work, int reps, enum content what)
{
    struct result r = {1e9, 1e9, 1e9, 1e9};
    for (int i = 0; i < reps; i++) {
        /* The parser unmasks in place: start every round from the masked copy. */
        memcpy(work, f->wire, f->wire_len);
        double t = now_s();
        long long got = parse_all(work, f->wire_len, f, 0);
        t = now_s() - t;
        if (got < 0)
            exit(1);
        if (t < r.parse)
            r.parse = t;

        t = now_s();
        memcpy(work, f->wire, f->wire_len);
        t = now_s() - t;
        sink = work[f->wire_len / 2];
        if (t < r.copy)
            r.copy = t;

        uint8_t key[4] = {0x12, 0x34, 0x56, 0x78}, pos = 0;
        t = now_s();
        ws_unmask(work, f->wire_len, key, &pos);
        t = now_s() - t;
        sink = work[f->wire_len / 3];
        if (t < r.unmask)
            r.unmask = t;

        if (what != BINARY) {
            t = now_s();
            int ok = ws_utf8_valid(f->plain, f->plain_len);
            t = now_s() - t;
            if (!ok) {
                fprintf(stderr, "codec_bench: valid text rejected\n");
                exit(1);
            }
            if (t < r.utf8)
                r.utf8 = t;
        }
    }
    return r;
}

int main(int argc, char **argv)
{
    size_t total = 8u << 20;
    int reps = 7, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            total = 256u << 10;
            reps = 1;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--buffer") && i + 1 < argc) {
            total = (size_t)strtoull(argv[++i], NULL, 10) << 20;
        } else {
            fprintf(stderr, "usage: codec_bench [--quick] [--json] [--buffer MIB]\n");
            return 2;
        }
    }
    static const size_t sizes[] = {64, 1024, 16384, 1u << 20};
    uint8_t *work = malloc(total + (2u << 20));
    if (!work)
        return 1;
    if (!json)
        printf("codec: %zu MiB of masked frames, best of %d; GB/s of wire bytes\n"
               "%-8s %-11s %9s %9s %8s %9s %9s %9s\n",
               total >> 20, reps, "payload", "kind", "parse", "memcpy", "of copy", "unmask",
               "utf-8", "ns/frame");
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        for (int w = BINARY; w <= TEXT_UTF8; w++) {
            struct frames f;
            build(&f, sizes[s], total, (enum content)w);
            /* Check once that the codec gives back what was masked. */
            memcpy(work, f.wire, f.wire_len);
            if (parse_all(work, f.wire_len, &f, 1) < 0)
                return 1;
            struct result r = run_case(&f, work, reps, (enum content)w);
            double gb = (double)f.wire_len / 1e9;
            double utf8 = w == BINARY ? 0 : (double)f.plain_len / 1e9 / r.utf8;
            char utf8_col[16] = "-";
            if (w != BINARY)
                snprintf(utf8_col, sizeof utf8_col, "%.2f", utf8);
            if (json)
                printf("{\"payload\": %zu, \"kind\": \"%s\", \"parse_gbs\": %.2f, "
                       "\"memcpy_gbs\": %.2f, \"unmask_gbs\": %.2f, \"utf8_gbs\": %.2f, "
                       "\"ns_per_frame\": %.1f}\n",
                       sizes[s], content_names[w], gb / r.parse, gb / r.copy, gb / r.unmask, utf8,
                       r.parse * 1e9 / (double)f.count);
            else
                printf("%-8zu %-11s %9.2f %9.2f %7.0f%% %9.2f %9s %9.1f\n", sizes[s],
                       content_names[w], gb / r.parse, gb / r.copy, 100 * r.copy / r.parse,
                       gb / r.unmask, utf8_col, r.parse * 1e9 / (double)f.count);
            free(f.wire);
            free(f.plain);
        }
    }
    free(work);
    return 0;
}
