/* test_sha1: our SHA-1 against the standard's examples and, on many
 * lengths around the block boundaries, against OpenSSL's. */
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "sha1.h"
#include "unit.h"

static void hex(const uint8_t d[SHA1_LEN], char out[2 * SHA1_LEN + 1])
{
    for (int i = 0; i < SHA1_LEN; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static int digest_is(const void *data, size_t len, const char *want)
{
    uint8_t d[SHA1_LEN];
    char h[2 * SHA1_LEN + 1];
    sha1(data, len, d);
    hex(d, h);
    return strcmp(h, want) == 0;
}

static void test_examples(void)
{
    CHECK(digest_is("", 0, "da39a3ee5e6b4b0d3255bfef95601890afd80709"));
    CHECK(digest_is("abc", 3, "a9993e364706816aba3e25717850c26c9cd0d89d"));
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 448 bits */
    CHECK(digest_is(two, strlen(two), "84983e441c3bd26ebaae4aa1f95129e5e54670f1"));
    size_t n = 1000000;
    char *a = malloc(n);
    memset(a, 'a', n);
    CHECK(digest_is(a, n, "34aa973cd4c4daa4f61eeb2bdbad27316534016f"));
    free(a);
}

static void test_against_openssl(void)
{
    uint8_t data[300];
    unsigned seed = 12345;
    for (size_t i = 0; i < sizeof data; i++) {
        seed = seed * 1103515245u + 12345u;
        data[i] = (uint8_t)(seed >> 16);
    }
    int same = 0;
    for (size_t len = 0; len <= sizeof data; len++) {
        uint8_t ours[SHA1_LEN], theirs[SHA_DIGEST_LENGTH];
        sha1(data, len, ours);
        SHA1(data, len, theirs);
        same += memcmp(ours, theirs, SHA1_LEN) == 0;
    }
    CHECK_EQ(same, sizeof data + 1);
}

int main(void)
{
    test_examples();
    test_against_openssl();
    return unit_done("sha1");
}
