/* fuzz_bpwire: libFuzzer target for what the backplane reads from others:
 * bp_decode (anything PUBLISHed on a topic's channel) and bp_url_parse
 * (a config's URL). The first byte picks which, and for bp_decode the
 * max_len. Decoding checks its result against the bytes: a message lies
 * wholly inside the input, within max_len, a text payload is valid UTF-8
 * by the reference classifier (ref_utf8.h, which shares no code with
 * ws_utf8.c), an envelope encodes back to the very same bytes, and a
 * refusal always has a reason. A parsed URL, written back out with its
 * user and password percent-escaped, parses to the same values. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpwire.h"
#include "ref_utf8.h"

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)

static void fuzz_decode(const uint8_t *data, size_t size, uint64_t max_len)
{
    /* exactly size bytes on the heap: ASan sees any read past the end */
    char *p = malloc(size ? size : 1);
    CHECK(p);
    if (size)
        memcpy(p, data, size);
    struct bp_message m;
    const char *why = NULL;
    int rc = bp_decode(p, size, max_len, &m, &why);
    if (rc != 0) {
        CHECK(rc == -1 && why && *why);
        free(p);
        return;
    }
    CHECK(m.kind == BP_TEXT || m.kind == BP_BINARY);
    CHECK(m.len <= max_len);
    CHECK(m.len <= size && m.data >= p && m.data + m.len == p + size);
    if (m.kind == BP_TEXT)
        CHECK(ref_utf8_classify((const uint8_t *)m.data, m.len) == REF_UTF8_VALID);
    if (size == 0 || (uint8_t)p[0] != BP_ENVELOPE_MARK) {
        /* plain: all of it, as text */
        CHECK(m.kind == BP_TEXT && m.origin == NULL && m.origin_len == 0 && m.data == p);
    } else {
        CHECK(m.origin == p + 3 && m.origin_len <= BP_ORIGIN_MAX);
        CHECK(m.data == m.origin + m.origin_len);
        size_t n = bp_envelope_size(&m);
        CHECK(n == size);
        char *q = malloc(n);
        CHECK(q);
        CHECK(bp_encode(q, &m) == n);
        CHECK(memcmp(p, q, n) == 0);
        free(q);
    }
    free(p);
}

/* Append s to out, %XX-escaping all but unreserved characters. */
static size_t escape(char *out, size_t at, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~')
            out[at++] = (char)c;
        else
            at += (size_t)sprintf(out + at, "%%%02X", c);
    }
    return at;
}

static void fuzz_url(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    CHECK(s);
    memcpy(s, data, size);
    s[size] = '\0';
    struct bp_url u, v;
    char err[128];
    memset(err, 'x', sizeof err);
    int rc = bp_url_parse(s, &u, err, sizeof err);
    free(s);
    if (rc != 0) {
        CHECK(memchr(err, '\0', sizeof err) != NULL);
        CHECK(rc == -1 && err[0] && !strchr(err, '\n'));
        return;
    }
    CHECK(memchr(u.host, '\0', sizeof u.host) && u.host[0]);
    CHECK(memchr(u.user, '\0', sizeof u.user) && memchr(u.password, '\0', sizeof u.password));
    CHECK(u.port >= 1 && u.port <= 65535 && u.db >= 0);
    CHECK(u.user[0] == '\0' || u.password[0] != '\0');

    /* write it back out and parse it again: the same values */
    char out[3 * (sizeof u.user + sizeof u.password) + sizeof u.host + 64];
    size_t at = (size_t)sprintf(out, "redis://");
    if (u.password[0]) {
        at = escape(out, at, u.user);
        out[at++] = ':';
        at = escape(out, at, u.password);
        out[at++] = '@';
    }
    at += (size_t)sprintf(out + at, strchr(u.host, ':') ? "[%s]:%d/%d" : "%s:%d/%d", u.host,
                          u.port, u.db);
    CHECK(at < sizeof out);
    CHECK(bp_url_parse(out, &v, err, sizeof err) == 0);
    CHECK(strcmp(u.host, v.host) == 0 && strcmp(u.user, v.user) == 0 &&
          strcmp(u.password, v.password) == 0 && u.port == v.port && u.db == v.db);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    if (mode & 1) {
        fuzz_url(data, size);
    } else {
        /* max_len: small ones (so the limit is hit), or no limit at all */
        uint64_t max_len = (mode & 2) ? UINT64_MAX : (uint64_t)(mode >> 2);
        fuzz_decode(data, size, max_len);
    }
    return 0;
}
