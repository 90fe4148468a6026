/* fuzz_httpc: libFuzzer target for moonport.http's response parser (a
 * backend's bytes are untrusted). The first input byte picks the limits,
 * whether the request was HEAD and whether the connection ends after the
 * input; with the second it picks where to split. Fed whole, in two pieces,
 * one byte at a time (when short) and the way moonport.http reads (a line,
 * or what httpc_want allows, which never reads past the end), the parser must reach the same result, error,
 * status, headers, body and end. A response complete without the end of
 * the connection must parse the same without the bytes after it, and not
 * complete one byte short. Whatever it accepts must hold lower-case token
 * names, values free of CR, LF, NUL and surrounding white space, a final
 * status, and a body within the limit. Any violation aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpc.h"

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)

enum { BYTEWISE_MAX = 512, TEXT = 1 << 16 };

struct run {
    int rc;
    size_t used;
    char text[TEXT];
};

static size_t max_head, max_body;
static int no_body, eof;

static int is_lower_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Check what a parser holds and describe it as text. */
static void describe(struct httpc *p, struct run *r)
{
    size_t n = 0, cap = sizeof r->text;
    const char *err = httpc_error(p);
    if (r->rc == HTTPC_ERROR) {
        CHECK(err[0] != '\0');
        CHECK(strcmp(err, "closed") == 0 || strcmp(err, "body too large") == 0 ||
              strncmp(err, "bad response: ", 14) == 0);
        /* Which of two faults in one response is named can depend on the
         * cuts (llhttp hands a header name over when it ends, or when the
         * input does, and stops at a bad byte without handing over what it
         * had): "bad response" is all that must agree. */
        snprintf(r->text, cap, "error %s", strncmp(err, "bad response: ", 14) ? err : "bad response");
        return;
    }
    CHECK(err[0] == '\0');
    if (r->rc == HTTPC_DONE) {
        int s = httpc_status(p);
        CHECK(s >= 100 && s <= 999 && (s >= 200 || s == 101));
    } else {
        CHECK(!httpc_keep_alive(p));
    }
    n += (size_t)snprintf(r->text + n, cap - n, "rc=%d used=%zu status=%d ka=%d\n", r->rc,
                          r->used, httpc_status(p), httpc_keep_alive(p));
    const char *cur = NULL, *name, *value;
    size_t vlen;
    while (httpc_header_next(p, &cur, &name, &value, &vlen)) {
        CHECK(name[0] != '\0');
        for (const char *c = name; *c; c++)
            CHECK(is_lower_tchar((unsigned char)*c));
        CHECK(strlen(value) == vlen);
        CHECK(strpbrk(value, "\r\n") == NULL);
        if (vlen) {
            CHECK(value[0] != ' ' && value[0] != '\t');
            CHECK(value[vlen - 1] != ' ' && value[vlen - 1] != '\t');
        }
        if (n < cap - 1)
            n += (size_t)snprintf(r->text + n, cap - n, "[%s]=[%s]\n", name, value);
    }
    size_t blen;
    const char *body = httpc_body(p, &blen);
    CHECK(blen <= max_body);
    CHECK(!no_body || blen == 0);
    uint32_t sum = 0;
    for (size_t i = 0; i < blen; i++)
        sum = sum * 31 + (unsigned char)body[i];
    if (n < cap - 1)
        snprintf(r->text + n, cap - n, "body %zu %08x", blen, sum);
}

/* Feed: the first piece, then step at a time (0: the rest at once). */
static void feed(struct run *r, const char *s, size_t len, size_t first, size_t step, int at_eof)
{
    struct httpc *p = httpc_new(max_head, max_body, no_body);
    CHECK(p != NULL);
    size_t off = 0, used;
    r->rc = HTTPC_NEED_MORE;
    r->used = 0;
    for (int call = 0; r->rc == HTTPC_NEED_MORE && (call == 0 || off < len); call++) {
        size_t n = call == 0 ? first : step ? step : len - off;
        if (n > len - off)
            n = len - off;
        r->rc = httpc_feed(p, s + off, n, &used);
        CHECK(used <= n);
        if (r->rc == HTTPC_NEED_MORE)
            CHECK(used == n);
        CHECK(r->rc == HTTPC_NEED_MORE || r->rc == HTTPC_DONE || r->rc == HTTPC_ERROR);
        r->used += used;
        off += n;
    }
    if (r->rc == HTTPC_NEED_MORE && at_eof)
        r->rc = httpc_eof(p);
    describe(p, r);
    httpc_free(p);
}

/* Read as moonport.http does; it never reads past the response's end. */
static void feed_wanted(struct run *r, const char *s, size_t len, size_t cap)
{
    struct httpc *p = httpc_new(max_head, max_body, no_body);
    CHECK(p != NULL);
    size_t off = 0, used;
    r->rc = HTTPC_NEED_MORE;
    r->used = 0;
    while (r->rc == HTTPC_NEED_MORE && off < len) {
        size_t want = httpc_want(p, cap), n;
        CHECK(want <= cap);
        if (want == 0) {
            const char *nl = memchr(s + off, '\n', len - off);
            n = nl ? (size_t)(nl - (s + off)) + 1 : len - off;
        } else {
            n = want < len - off ? want : len - off;
        }
        r->rc = httpc_feed(p, s + off, n, &used);
        /* A counted read never goes past the end; a line may, when llhttp
         * ends the head at a bare CR or LF inside it (moonport.http then
         * closes the connection rather than keep it). */
        if (r->rc == HTTPC_DONE && want)
            CHECK(used == n);
        r->used += used;
        off += n;
    }
    if (r->rc == HTTPC_NEED_MORE && eof)
        r->rc = httpc_eof(p);
    describe(p, r);
    httpc_free(p);
}

static struct run whole, other;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    max_head = data[0] & 1 ? 256 : HTTPC_MAX_HEAD;
    max_body = data[0] & 2 ? 64 : 1 << 20;
    no_body = (data[0] >> 2) & 1;
    eof = (data[0] >> 3) & 1;
    const char *s = (const char *)data + 2;
    size_t len = size - 2;
    size_t k = ((size_t)(data[0] >> 4) << 8 | data[1]) % (len + 1);

    feed(&whole, s, len, len, 0, eof);
    if (whole.rc == HTTPC_DONE && whole.used < len)
        CHECK(whole.used > 0);

    feed(&other, s, len, k, 0, eof);
    CHECK(strcmp(whole.text, other.text) == 0);
    if (len <= BYTEWISE_MAX) {
        feed(&other, s, len, 1, 1, eof);
        CHECK(strcmp(whole.text, other.text) == 0);
    }
    feed_wanted(&other, s, len, 1 + (size_t)data[1] % 100);
    CHECK(strcmp(whole.text, other.text) == 0);

    /* A response that ended by itself delimits itself. */
    feed(&other, s, len, len, 0, 0);
    if (other.rc == HTTPC_DONE) {
        size_t end = other.used;
        char keep[TEXT];
        memcpy(keep, other.text, sizeof keep);
        feed(&other, s, end, end, 0, 0);
        CHECK(strcmp(keep, other.text) == 0);
        feed(&other, s, end - 1, end - 1, 0, 0);
        CHECK(other.rc == HTTPC_NEED_MORE);
    }
    return 0;
}
