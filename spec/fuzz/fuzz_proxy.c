/* fuzz_proxy: libFuzzer target for proxy.c. The input is parsed as a PROXY
 * protocol header (each prefix must say "need more" when the whole says a
 * length, and a length never passes the input or PROXY_HEADER_MAX; a
 * decision never changes when more bytes follow), walked as an
 * X-Forwarded-For value (the client found is a real address, and an
 * untrusted one when the walk says so), and read as a range (which holds
 * its own network address); split at its first newline it is an origin
 * pattern and an Origin (origin.h: a pattern the config accepts never
 * crashes the match, and "*" allows anything). ASan and UBSan catch any
 * read out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "origin.h"
#include "proxy.h"

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)

static void header(const uint8_t *data, size_t size)
{
    /* an exact copy, so ASan sees the end of the input */
    uint8_t *p = malloc(size ? size : 1);
    memcpy(p, data, size);
    struct proxy_header h;
    const char *why;
    long r = proxy_header_parse(p, size, &h, &why);
    CHECK(r >= -1 && r <= (long)size && r <= PROXY_HEADER_MAX);
    if (r == -1)
        CHECK(why && *why);
    if (r == 0)
        CHECK(size < PROXY_HEADER_MAX);
    if (r > 0) {
        CHECK(h.version == 1 || h.version == 2);
        if (!h.local)
            CHECK(h.src.family == AF_INET || h.src.family == AF_INET6);
        struct proxy_header h2;
        for (size_t k = 0; k < (size_t)r; k++)
            CHECK(proxy_header_parse(p, k, &h2, &why) == 0);
    }
    if (r != 0 && size > 0) {
        /* decided: a shorter input that still holds the decision agrees */
        struct proxy_header h2;
        size_t k = r > 0 ? (size_t)r : size;
        long r2 = proxy_header_parse(p, k, &h2, &why);
        CHECK(r2 == r || (r == -1 && r2 == 0));
        if (r > 0)
            CHECK(memcmp(&h, &h2, sizeof h) == 0);
    }
    free(p);
}

static void xff(const uint8_t *data, size_t size)
{
    struct proxy_cidr t[3];
    CHECK(proxy_cidr_parse("10.0.0.0/8", &t[0]) == 0);
    CHECK(proxy_cidr_parse("::1/128", &t[1]) == 0);
    CHECK(proxy_cidr_parse("192.168.0.0/16", &t[2]) == 0);
    char *s = malloc(size ? size : 1);
    memcpy(s, data, size);
    struct proxy_addr c;
    memset(&c, 0, sizeof c);
    int r = proxy_xff_walk(t, 3, s, size, &c);
    CHECK(r >= -1 && r <= 1);
    if (r == PROXY_XFF_CLIENT) {
        CHECK(c.family == AF_INET || c.family == AF_INET6);
        CHECK(!proxy_trusted(t, 3, &c));
    }
    if (c.family)
        CHECK(c.port == 0);
    free(s);
}

static void cidr(const uint8_t *data, size_t size)
{
    char s[64];
    if (size >= sizeof s)
        return;
    memcpy(s, data, size);
    s[size] = '\0';
    struct proxy_cidr c;
    if (proxy_cidr_parse(s, &c))
        return;
    CHECK(c.bits <= (c.family == AF_INET ? 32 : 128));
    struct proxy_addr a;
    memset(&a, 0, sizeof a);
    a.family = c.family;
    memcpy(a.bytes, c.bytes, 16);
    if (c.family == AF_INET6 && c.bits >= 96 && memcmp(a.bytes, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
        memmove(a.bytes, a.bytes + 12, 4); /* as proxy.c keeps it */
        memset(a.bytes + 4, 0, 12);
        a.family = AF_INET;
    }
    CHECK(proxy_cidr_match(&c, &a));
}

static void origins(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    char *nl = strchr(s, '\n');
    const char *origin = nl ? nl + 1 : "";
    if (nl)
        *nl = '\0';
    const char *why;
    if (origin_pattern_check(s, &why) == 0) {
        const char *pats[2] = {s, "*"};
        struct origin_list *one = origin_list_new(pats, 1), *any = origin_list_new(pats, 2);
        CHECK(one && any);
        int r = origin_allowed(one, origin);
        CHECK(r == 0 || r == 1);
        CHECK(origin_allowed(any, origin) == 1);
        origin_list_free(one);
        origin_list_free(any);
    } else {
        CHECK(why && *why);
    }
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    header(data, size);
    xff(data, size);
    cidr(data, size);
    origins(data, size);
    return 0;
}
