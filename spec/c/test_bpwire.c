/* test_bpwire: the backplane's wire format (bpwire.h). Backplane URLs in
 * every form a config may hold and the ones it must refuse (with an error
 * that never shows the password); the shard of known topics against FNV-1a
 * values computed apart from this code (Python, when this test was
 * written); envelopes that go round trip; and every way a payload from
 * Redis can be malformed. Every decoded input sits in a buffer of exactly
 * its size, so ASan reports any read past its end. */
#include "bpwire.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

/* ---- URLs ---- */

static struct bp_url url;
static char err[200];

static int parse(const char *s)
{
    err[0] = '\0';
    return bp_url_parse(s, &url, err, sizeof err);
}

static void url_ok(const char *s, const char *host, int port, int db, const char *user,
                   const char *password)
{
    int rc = parse(s);
    if (rc != 0)
        fprintf(stderr, "url %s: %s\n", s, err);
    CHECK_EQ(rc, 0);
    CHECK(strcmp(url.host, host) == 0);
    CHECK_EQ(url.port, port);
    CHECK_EQ(url.db, db);
    CHECK(strcmp(url.user, user) == 0);
    CHECK(strcmp(url.password, password) == 0);
}

/* A refused URL: -1, a one-line error that says what (want), and never the
 * secret, if the URL holds one. */
static void url_bad(const char *s, const char *want, const char *secret)
{
    int rc = parse(s);
    if (rc != -1 || !strstr(err, want))
        fprintf(stderr, "url %s: rc %d, err \"%s\", want \"%s\"\n", s ? s : "(null)", rc, err,
                want);
    CHECK_EQ(rc, -1);
    CHECK(strstr(err, want) != NULL);
    CHECK(strchr(err, '\n') == NULL);
    if (secret)
        CHECK(strstr(err, secret) == NULL);
}

static void test_urls(void)
{
    url_ok("redis://127.0.0.1", "127.0.0.1", 6379, 0, "", "");
    url_ok("redis://localhost:6380/2", "localhost", 6380, 2, "", "");
    url_ok("redis://redis-1.internal_net.example:1", "redis-1.internal_net.example", 1, 0, "", "");
    url_ok("redis://h:65535/0", "h", 65535, 0, "", "");
    url_ok("redis://h/", "h", 6379, 0, "", "");
    url_ok("redis://h/15", "h", 6379, 15, "", "");
    url_ok("REDIS://H:7000", "H", 7000, 0, "", "");
    url_ok("redis://[::1]:7000/3", "::1", 7000, 3, "", "");
    url_ok("redis://[fe80::1]", "fe80::1", 6379, 0, "", "");
    /* a password alone, and a user with a password (Redis 6 ACLs) */
    url_ok("redis://:secret@h:1/0", "h", 1, 0, "", "secret");
    url_ok("redis://alice:secret@h", "h", 6379, 0, "alice", "secret");
    /* percent-escapes in both, upper and lower case hex */
    url_ok("redis://al%69ce:p%40ss%2Fw%3ard%25@h", "h", 6379, 0, "alice", "p@ss/w:rd%");
    url_ok("redis://:%C3%A9t%C3%A9@h", "h", 6379, 0, "", "\xC3\xA9t\xC3\xA9");
    /* unescaped '@', ':' and '/' in a password: the last '@' ends it */
    url_ok("redis://:p@ss:w/rd@h:6390/1", "h", 6390, 1, "", "p@ss:w/rd");

    /* the longest user and password that fit, and one byte more */
    char big[600], pw[300];
    memset(pw, 'p', 255);
    pw[255] = '\0';
    snprintf(big, sizeof big, "redis://:%s@h", pw);
    url_ok(big, "h", 6379, 0, "", pw);
    snprintf(big, sizeof big, "redis://:%sp@h", pw);
    url_bad(big, "password is too long", NULL);
    char user[200];
    memset(user, 'u', 127);
    user[127] = '\0';
    snprintf(big, sizeof big, "redis://%s:x@h", user);
    url_ok(big, "h", 6379, 0, user, "x");
    snprintf(big, sizeof big, "redis://%su:x@h", user);
    url_bad(big, "user name is too long", NULL);
    char host[300];
    memset(host, 'h', 255);
    host[255] = '\0';
    snprintf(big, sizeof big, "redis://%s", host);
    url_ok(big, host, 6379, 0, "", "");
    snprintf(big, sizeof big, "redis://%sh", host);
    url_bad(big, "host is too long", NULL);

    url_bad(NULL, "no URL", NULL);
    url_bad("", "not a redis:// URL", NULL);
    url_bad("http://h", "not a redis:// URL", NULL);
    url_bad("redis:/h", "not a redis:// URL", NULL);
    url_bad("unix:///tmp/redis.sock", "not a redis:// URL", NULL);
    url_bad("rediss://h", "TLS", NULL);
    url_bad("redis://", "no host", NULL);
    url_bad("redis://:6379", "no host", NULL);
    url_bad("redis://:pw@", "no host", "pw");
    url_bad("redis://h:0", "port", NULL);
    url_bad("redis://h:65536", "port", NULL);
    url_bad("redis://h:99999999999999999999", "port", NULL);
    url_bad("redis://h:", "port", NULL);
    url_bad("redis://h:-1", "port", NULL);
    url_bad("redis://h:6a", "port", NULL);
    url_bad("redis://h/x", "database", NULL);
    url_bad("redis://h/1/2", "database", NULL);
    url_bad("redis://h/-1", "database", NULL);
    url_bad("redis://h/99999999999", "database", NULL);
    url_bad("redis://h?db=1", "query", NULL);
    url_bad("redis://h#x", "query", NULL);
    url_bad("redis://h x", "space", NULL);
    url_bad("redis://h\t", "control", NULL);
    url_bad("redis://h,k", "cannot be in a host", NULL);
    url_bad("redis://[::1", "no ']'", NULL);
    url_bad("redis://[zz::1]", "IPv6", NULL);
    url_bad("redis://[::1]x", "cannot be in a host", NULL);
    url_bad("redis://hunter2@h", "no ':'", "hunter2");
    url_bad("redis://:@h", "empty password", NULL);
    url_bad("redis://alice:@h", "empty password", NULL);
    url_bad("redis://:hunter2%zz@h", "percent-escape in the password", "hunter2");
    url_bad("redis://:hunter2%4@h", "percent-escape in the password", "hunter2");
    url_bad("redis://:hunter2%@h", "percent-escape in the password", "hunter2");
    url_bad("redis://:hunter2%00x@h", "NUL", "hunter2");
    url_bad("redis://bob%g1:hunter2@h", "percent-escape in the user name", "hunter2");

    /* no room for the error, or none at all: still -1, no write past it */
    char tiny[4] = "abc";
    CHECK_EQ(bp_url_parse("nope", &url, tiny, 1), -1);
    CHECK_EQ(tiny[0], '\0');
    CHECK_EQ(tiny[1], 'b');
    CHECK_EQ(bp_url_parse("nope", &url, NULL, 0), -1);
}

/* ---- shards ---- */

/* 32-bit FNV-1a of each topic, from Python:
 *   h = 2166136261; for c in b: h ^= c; h = (h * 16777619) & 0xffffffff
 * (the values for "a" and "foobar" are FNV-1a's published test vectors). */
static const struct {
    const char *topic;
    size_t len;
    uint32_t fnv;
    unsigned mod2, mod3, mod7;
} shards[] = {
    {"", 0, 2166136261u, 1, 1, 2},
    {"a", 1, 3826002220u, 0, 1, 5},
    {"news", 4, 1271381062u, 0, 1, 0},
    {"room/1", 6, 3531632858u, 0, 2, 5},
    {"chat:lobby", 10, 894957657u, 1, 0, 6},
    {"caf\xC3\xA9", 5, 2821410889u, 1, 1, 3},
    {"x\0y", 3, 3397130420u, 0, 2, 5},
    {"foobar", 6, 3214735720u, 0, 1, 0},
};

static void test_shards(void)
{
    for (size_t i = 0; i < sizeof shards / sizeof shards[0]; i++) {
        const char *t = shards[i].topic;
        size_t n = shards[i].len;
        CHECK_EQ(bp_shard(t, n, 1), 0);
        CHECK_EQ(bp_shard(t, n, 2), shards[i].mod2);
        CHECK_EQ(bp_shard(t, n, 3), shards[i].mod3);
        CHECK_EQ(bp_shard(t, n, 7), shards[i].mod7);
        /* modulo UINT_MAX is the hash itself for all of these (none is
         * 0xFFFFFFFF), which checks all 32 bits */
        CHECK_EQ(bp_shard(t, n, UINT_MAX), shards[i].fnv);
    }
    /* the length counts, not a NUL: "x\0y" and "x" differ */
    CHECK(bp_shard("x\0y", 3, UINT_MAX) != bp_shard("x\0y", 1, UINT_MAX));
    /* n = 0 is a caller's bug; it must not divide by zero */
    CHECK_EQ(bp_shard("news", 4, 0), 0);
}

/* ---- envelopes ---- */

/* Decode n bytes copied into a buffer of exactly n bytes. */
static int decode(const char *p, size_t n, uint64_t max, struct bp_message *m, const char **why,
                  char **keep)
{
    char *copy = malloc(n ? n : 1);
    if (n)
        memcpy(copy, p, n);
    *why = NULL;
    int rc = bp_decode(copy, n, max, m, why);
    *keep = copy; /* m points into it: the caller frees it */
    return rc;
}

static void round_trip(enum bp_kind kind, const char *origin, size_t olen, const char *data,
                       size_t len)
{
    struct bp_message in = {kind, origin, olen, data, len}, out;
    size_t size = bp_envelope_size(&in);
    size_t want_olen = origin ? (olen > BP_ORIGIN_MAX ? BP_ORIGIN_MAX : olen) : 0;
    CHECK_EQ(size, 3 + want_olen + len);
    char *buf = malloc(size + 1);
    buf[size] = 'Z'; /* a canary: encode writes exactly size bytes */
    CHECK_EQ(bp_encode(buf, &in), size);
    CHECK_EQ(buf[size], 'Z');
    CHECK_EQ((unsigned char)buf[0], BP_ENVELOPE_MARK);
    CHECK_EQ(buf[1], kind == BP_BINARY ? 'b' : 't');
    CHECK_EQ((unsigned char)buf[2], want_olen);

    const char *why;
    char *copy;
    CHECK_EQ(decode(buf, size, len, &out, &why, &copy), 0);
    CHECK_EQ(out.kind, kind);
    CHECK_EQ(out.origin_len, want_olen);
    CHECK(out.origin != NULL);
    CHECK(want_olen == 0 || memcmp(out.origin, origin, want_olen) == 0);
    CHECK_EQ(out.len, len);
    CHECK(len == 0 || memcmp(out.data, data, len) == 0);
    CHECK(out.data == copy + 3 + want_olen);
    free(copy);
    /* one byte under the payload's size as the limit: refused */
    if (len) {
        CHECK_EQ(decode(buf, size, len - 1, &out, &why, &copy), -1);
        CHECK(why && strstr(why, "max_message"));
        free(copy);
    }
    /* every prefix of it decodes or is refused, and never reads past its end */
    for (size_t k = 0; k < size; k++) {
        int rc = decode(buf, k, len, &out, &why, &copy);
        if (k == 0) /* nothing at all is an empty plain text */
            CHECK(rc == 0 && out.origin == NULL && out.len == 0);
        else if (k < 3 + want_olen)
            CHECK_EQ(rc, -1);
        else if (kind == BP_BINARY)
            CHECK_EQ(rc, 0);
        free(copy);
    }
    free(buf);
}

static void test_round_trips(void)
{
    const char node[] = "0123456789abcdef";
    char origin[BP_ORIGIN_MAX + 10];
    memset(origin, 'o', sizeof origin);
    char bin[300];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (char)(255 - i % 256); /* 0xFF first, NULs, invalid UTF-8 */

    round_trip(BP_TEXT, node, 16, "hello", 5);
    round_trip(BP_TEXT, node, 16, "", 0);
    round_trip(BP_TEXT, NULL, 0, "caf\xC3\xA9", 5);
    round_trip(BP_TEXT, node, 0, "\xFFnot", 0); /* a zero-length origin that is not NULL */
    round_trip(BP_BINARY, node, 16, bin, sizeof bin);
    round_trip(BP_BINARY, NULL, 0, bin, 1);
    round_trip(BP_BINARY, origin, BP_ORIGIN_MAX, bin, 10);
    /* past BP_ORIGIN_MAX is the caller's bug: cut to it, size and bytes agree */
    round_trip(BP_BINARY, origin, BP_ORIGIN_MAX + 5, bin, 10);
    /* a text envelope whose payload starts with 0xFF-free text */
    round_trip(BP_TEXT, node, 16, "\xE2\x82\xAC euro", 8);
}

static void plain_ok(const char *p, size_t n, uint64_t max)
{
    struct bp_message m;
    const char *why;
    char *copy;
    CHECK_EQ(decode(p, n, max, &m, &why, &copy), 0);
    CHECK_EQ(m.kind, BP_TEXT);
    CHECK(m.origin == NULL);
    CHECK_EQ(m.origin_len, 0);
    CHECK_EQ(m.len, n);
    CHECK(n == 0 || m.data == copy);
    free(copy);
}

/* A refused payload: -1 and a reason holding want. */
static void bad(const char *p, size_t n, uint64_t max, const char *want)
{
    struct bp_message m;
    const char *why;
    char *copy;
    int rc = decode(p, n, max, &m, &why, &copy);
    if (rc != -1 || !why || !strstr(why, want))
        fprintf(stderr, "decode of %zu bytes: rc %d, why \"%s\", want \"%s\"\n", n, rc,
                why ? why : "(null)", want);
    CHECK_EQ(rc, -1);
    CHECK(why != NULL && strstr(why, want) != NULL);
    free(copy);
}

static void test_plain_and_malformed(void)
{
    plain_ok("hello", 5, 1 << 20);
    plain_ok("", 0, 1 << 20);
    plain_ok("", 0, 0);
    plain_ok("caf\xC3\xA9", 5, 5); /* exactly max_len */
    plain_ok("\xF0\x9F\x98\x80", 4, 100);
    plain_ok("a\0b", 3, 100); /* NUL is valid UTF-8 */

    bad("caf\xC3\xA9", 5, 4, "max_message");
    bad("\xC3", 1, 100, "plain payload is not UTF-8");
    bad("ok\xC3\x28", 4, 100, "plain payload is not UTF-8");
    bad("\xED\xA0\x80", 3, 100, "plain payload is not UTF-8"); /* a surrogate */
    bad("\xFE", 1, 100, "plain payload is not UTF-8");
    bad("\xC0\x80", 2, 100, "plain payload is not UTF-8"); /* overlong NUL */

    bad("\xFF", 1, 100, "too short");
    bad("\xFFt", 2, 100, "too short");
    bad("\xFFx\x00", 3, 100, "kind");
    bad("\xFFT\x00hi", 5, 100, "kind");
    bad("\xFF\x00\x00hi", 5, 100, "kind");
    bad("\xFFt\x41", 3, 1000, "longer than 64"); /* 65 */
    bad("\xFFt\xFF", 3, 1000, "longer than 64");
    bad("\xFFt\x05" "abc", 6, 100, "past the end");
    bad("\xFFt\x01", 3, 100, "past the end");
    bad("\xFFt\x00\xC3", 4, 100, "text payload is not UTF-8");
    bad("\xFFt\x02nn\xFF", 6, 100, "text payload is not UTF-8");
    bad("\xFFt\x00toolong", 10, 6, "max_message");
    bad("\xFF" "b\x00" "toolong", 10, 6, "max_message");

    /* the limit is on the payload, not on the envelope around it */
    struct bp_message m;
    const char *why;
    char *copy;
    CHECK_EQ(decode("\xFF" "b\x02" "ab" "xyz", 8, 3, &m, &why, &copy), 0);
    CHECK_EQ(m.kind, BP_BINARY);
    CHECK_EQ(m.len, 3);
    CHECK(memcmp(m.data, "xyz", 3) == 0);
    CHECK(memcmp(m.origin, "ab", 2) == 0);
    free(copy);
    /* an origin of exactly 64 bytes that ends the buffer: empty payload */
    char env[3 + BP_ORIGIN_MAX];
    env[0] = (char)0xFF;
    env[1] = 'b';
    env[2] = BP_ORIGIN_MAX;
    memset(env + 3, 'o', BP_ORIGIN_MAX);
    CHECK_EQ(decode(env, sizeof env, 0, &m, &why, &copy), 0);
    CHECK_EQ(m.origin_len, BP_ORIGIN_MAX);
    CHECK_EQ(m.len, 0);
    free(copy);
    /* binary payloads need not be UTF-8; an envelope from outside may have
     * no origin (a backend's binary message) */
    CHECK_EQ(decode("\xFF" "b\x00\xC3\xFF", 5, 100, &m, &why, &copy), 0);
    CHECK_EQ(m.kind, BP_BINARY);
    CHECK_EQ(m.origin_len, 0);
    CHECK_EQ(m.len, 2);
    free(copy);
    /* why may be NULL */
    CHECK_EQ(bp_decode("\xFF", 1, 100, &m, NULL), -1);
}

int main(void)
{
    test_urls();
    test_shards();
    test_round_trips();
    test_plain_and_malformed();
    return unit_done("test_bpwire");
}
