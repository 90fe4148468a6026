/* test_proxy: trusted ranges, X-Forwarded-For walks and the PROXY protocol
 * parser, byte by byte. Every header is parsed from the end of a page whose
 * next page is unreadable, so any read past what it was given faults; and
 * every proper prefix of a valid header must say "need more", never an
 * error or a length. */
#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "unit.h"

static uint8_t *page_end; /* one past the last readable byte */

/* p[0..n) copied right before the unreadable page. */
static const uint8_t *at_edge(const void *p, size_t n)
{
    uint8_t *dst = page_end - n;
    memcpy(dst, p, n);
    return dst;
}

static long parse(const void *p, size_t n, struct proxy_header *h, const char **why)
{
    return proxy_header_parse(at_edge(p, n), n, h, why);
}

/* Every proper prefix needs more; the whole parses to its full length. */
static void check_valid(const void *hdr, size_t n, struct proxy_header *h)
{
    const char *why;
    int prefixes_ok = 1;
    for (size_t k = 0; k < n; k++)
        if (parse(hdr, k, h, &why) != 0)
            prefixes_ok = 0, fprintf(stderr, "prefix %zu: %s\n", k, why);
    CHECK(prefixes_ok);
    CHECK_EQ(parse(hdr, n, h, &why), (long)n);
}

static void check_invalid(const void *hdr, size_t n, const char *expect_why)
{
    struct proxy_header h;
    const char *why = "";
    long r = parse(hdr, n, &h, &why);
    CHECK_EQ(r, -1);
    if (expect_why && !strstr(why, expect_why)) {
        fprintf(stderr, "expected \"%s\" in \"%s\"\n", expect_why, why);
        CHECK(0);
    }
}

static struct proxy_addr addr(const char *s)
{
    struct proxy_addr a;
    memset(&a, 0, sizeof a);
    if (proxy_addr_parse(s, strlen(s), &a))
        fprintf(stderr, "not an address: %s\n", s);
    return a;
}

static int addr_is(const struct proxy_addr *a, const char *text)
{
    struct proxy_addr b = addr(text);
    return a->family == b.family && memcmp(a->bytes, b.bytes, 16) == 0;
}

static void test_cidr(void)
{
    struct proxy_cidr c;
    CHECK_EQ(proxy_cidr_parse("10.0.0.0/8", &c), 0);
    CHECK_EQ(c.bits, 8);
    CHECK(proxy_cidr_match(&c, &(struct proxy_addr){0}) == 0);
    struct proxy_addr a = addr("10.200.3.4");
    CHECK(proxy_cidr_match(&c, &a));
    a = addr("11.0.0.1");
    CHECK(!proxy_cidr_match(&c, &a));
    /* a v4-mapped IPv6 address is its IPv4 address */
    a = addr("::ffff:10.1.2.3");
    CHECK_EQ(a.family, AF_INET);
    CHECK(proxy_cidr_match(&c, &a));
    CHECK_EQ(proxy_cidr_parse("127.0.0.1", &c), 0);
    CHECK_EQ(c.bits, 32);
    CHECK_EQ(proxy_cidr_parse("::1/128", &c), 0);
    a = addr("::1");
    CHECK(proxy_cidr_match(&c, &a));
    a = addr("127.0.0.1");
    CHECK(!proxy_cidr_match(&c, &a));
    CHECK_EQ(proxy_cidr_parse("2001:db8::/32", &c), 0);
    a = addr("2001:db8:ffff::1");
    CHECK(proxy_cidr_match(&c, &a));
    a = addr("2001:db9::1");
    CHECK(!proxy_cidr_match(&c, &a));
    /* an IPv6 range that holds mapped addresses holds the IPv4 ones */
    CHECK_EQ(proxy_cidr_parse("::ffff:0:0/96", &c), 0);
    a = addr("192.0.2.1");
    CHECK(proxy_cidr_match(&c, &a));
    /* partial bytes */
    CHECK_EQ(proxy_cidr_parse("192.168.4.0/22", &c), 0);
    a = addr("192.168.7.255");
    CHECK(proxy_cidr_match(&c, &a));
    a = addr("192.168.8.0");
    CHECK(!proxy_cidr_match(&c, &a));
    CHECK_EQ(proxy_cidr_parse("0.0.0.0/0", &c), 0);
    a = addr("8.8.8.8");
    CHECK(proxy_cidr_match(&c, &a));
    /* mistakes */
    const char *bad[] = {"", "/8", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.1.2.3/8",
                         "10.0.0.0/8x", "10.0.0.0/-1", "10.0.0/8", "example.com", "10.0.0.0/0008",
                         "::1/ 128", " 10.0.0.0/8"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int r = proxy_cidr_parse(bad[i], &c);
        if (r != -1)
            fprintf(stderr, "accepted \"%s\"\n", bad[i]);
        CHECK_EQ(r, -1);
    }
}

static void test_xff(void)
{
    struct proxy_cidr t[2];
    proxy_cidr_parse("10.0.0.0/8", &t[0]);
    proxy_cidr_parse("::1/128", &t[1]);
    struct proxy_addr c;
#define WALK(s) proxy_xff_walk(t, 2, s, strlen(s), &c)
    memset(&c, 0, sizeof c);
    CHECK_EQ(WALK("203.0.113.7"), PROXY_XFF_CLIENT);
    CHECK(addr_is(&c, "203.0.113.7"));
    /* right-most untrusted: a forged left part is never reached */
    CHECK_EQ(WALK("1.1.1.1, 203.0.113.7, 10.0.0.2"), PROXY_XFF_CLIENT);
    CHECK(addr_is(&c, "203.0.113.7"));
    CHECK_EQ(WALK("1.1.1.1,203.0.113.7,10.0.0.2,::1"), PROXY_XFF_CLIENT);
    CHECK(addr_is(&c, "203.0.113.7"));
    /* all trusted: the left-most */
    CHECK_EQ(WALK("10.1.1.1, 10.0.0.2"), PROXY_XFF_TRUSTED);
    CHECK(addr_is(&c, "10.1.1.1"));
    memset(&c, 0, sizeof c);
    CHECK_EQ(WALK(""), PROXY_XFF_TRUSTED);
    CHECK_EQ(c.family, 0);
    CHECK_EQ(WALK(" , ,"), PROXY_XFF_TRUSTED);
    CHECK_EQ(c.family, 0);
    /* ports and brackets */
    CHECK_EQ(WALK("198.51.100.9:4711"), PROXY_XFF_CLIENT);
    CHECK(addr_is(&c, "198.51.100.9"));
    CHECK_EQ(c.port, 0);
    CHECK_EQ(WALK("[2001:db8::5]:443"), PROXY_XFF_CLIENT);
    CHECK(addr_is(&c, "2001:db8::5"));
    CHECK_EQ(WALK("[2001:db8::6]"), PROXY_XFF_CLIENT);
    CHECK(addr_is(&c, "2001:db8::6"));
    CHECK_EQ(WALK("2001:db8::7"), PROXY_XFF_CLIENT);
    CHECK(addr_is(&c, "2001:db8::7"));
    CHECK_EQ(WALK("::ffff:198.51.100.1"), PROXY_XFF_CLIENT);
    CHECK(addr_is(&c, "198.51.100.1"));
    CHECK_EQ(c.family, AF_INET);
    /* garbage stops the walk at the hop that passed it on */
    memset(&c, 0, sizeof c);
    CHECK_EQ(WALK("unknown"), PROXY_XFF_BAD);
    CHECK_EQ(c.family, 0);
    CHECK_EQ(WALK("evil, 10.0.0.3"), PROXY_XFF_BAD);
    CHECK(addr_is(&c, "10.0.0.3"));
    const char *bad[] = {"1.2.3.4:", "1.2.3.4:x", "[::1", "[::1]x", "[::1]:", "1.2.3.4.5",
                         "300.1.1.1", "[1.2.3.4]:80x", "a\"b"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int r = WALK(bad[i]);
        if (r != PROXY_XFF_BAD)
            fprintf(stderr, "accepted xff \"%s\"\n", bad[i]);
        CHECK_EQ(r, PROXY_XFF_BAD);
    }
    /* the length bounds the walk: no NUL needed */
    CHECK_EQ(proxy_xff_walk(t, 2, "9.9.9.9, 8.8.8.8", 7, &c), PROXY_XFF_CLIENT);
    CHECK(addr_is(&c, "9.9.9.9"));
#undef WALK
}

static int scheme_is(const char *value, const char *want)
{
    const char *got = proxy_forwarded_scheme(value);
    return got && strcmp(got, want) == 0;
}

static void test_scheme(void)
{
    CHECK(scheme_is("https", "wss"));
    CHECK(scheme_is("HTTPS", "wss"));
    CHECK(scheme_is("wss", "wss"));
    CHECK(scheme_is("http", "ws"));
    CHECK(scheme_is(" ws ", "ws"));
    CHECK(scheme_is("http, https", "wss"));
    CHECK(scheme_is("https, http", "ws"));
    CHECK(proxy_forwarded_scheme("ftp") == NULL);
    CHECK(proxy_forwarded_scheme("") == NULL);
    CHECK(proxy_forwarded_scheme("httpss") == NULL);
}

static void test_v1(void)
{
    struct proxy_header h;
    const char *s = "PROXY TCP4 203.0.113.9 10.0.0.1 51234 8080\r\n";
    check_valid(s, strlen(s), &h);
    CHECK_EQ(h.version, 1);
    CHECK_EQ(h.local, 0);
    CHECK(addr_is(&h.src, "203.0.113.9"));
    CHECK_EQ(h.src.port, 51234);
    CHECK(addr_is(&h.dst, "10.0.0.1"));
    CHECK_EQ(h.dst.port, 8080);

    /* the bytes after the header are not the parser's */
    const char *more = "PROXY TCP6 2001:db8::1 ::1 1 65535\r\nGET / HTTP/1.1\r\n";
    const char *why;
    CHECK_EQ(parse(more, strlen(more), &h, &why), 36);
    CHECK(addr_is(&h.src, "2001:db8::1"));
    CHECK_EQ(h.src.port, 1);
    CHECK_EQ(h.dst.port, 65535);

    s = "PROXY UNKNOWN\r\n";
    check_valid(s, strlen(s), &h);
    CHECK_EQ(h.local, 1);
    s = "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    check_valid(s, strlen(s), &h);
    CHECK_EQ(h.local, 1);

    /* the longest valid line, 107 bytes */
    char longest[128];
    int n = snprintf(longest, sizeof longest, "PROXY TCP6 %s %s 65535 65535\r\n",
                     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    CHECK_EQ(n, 104);
    check_valid(longest, (size_t)n, &h);
    char over[160];
    memset(over, 'A', sizeof over);
    memcpy(over, "PROXY UNKNOWN ", 14);
    memcpy(over + 105, "\r\n", 2); /* 107 bytes: the most */
    CHECK_EQ(parse(over, 107, &h, &why), 107);
    memcpy(over + 105, "AA\r\n", 4); /* 109 */
    check_invalid(over, 109, "longer than 107");
    check_invalid(over, 106, "longer than 107"); /* known to be too long at 106, no CR */

    check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", 32, "CR without LF");
    check_invalid("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", 33, "empty field");
    check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", 33, "empty field");
    check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 30, "number of fields");
    check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", 34, "too many");
    check_invalid("PROXY TCP4 ::1 5.6.7.8 1 2\r\n", 28, "bad address");
    check_invalid("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", 28, "bad address");
    check_invalid("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", 30, "bad address");
    check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", 36, "bad port");
    check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", 33, "bad port");
    check_invalid("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", 33, "bad port");
    check_invalid("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 32, "not TCP4");
    check_invalid("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", 32, "control byte");
    check_invalid("PROXY TCP4 1.2.3.4\0", 19, "control byte");
    check_invalid("PROXY\r\n", 7, "not a PROXY");
    check_invalid("proxy TCP4", 10, "not a PROXY");
    check_invalid("GET / HTTP/1.1\r\n", 16, "not a PROXY");
    check_invalid("PROXY \r\n", 8, NULL);
}

/* A v2 header: signature, version/command, family/protocol, length, body. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const void *body, size_t len)
{
    static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    memcpy(out, sig, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (uint8_t)(len >> 8);
    out[15] = (uint8_t)len;
    memcpy(out + 16, body, len);
    return 16 + len;
}

static void test_v2(void)
{
    struct proxy_header h;
    const char *why;
    uint8_t b[600];
    uint8_t v4[12] = {198, 51, 100, 7, 10, 0, 0, 1, 0xC8, 0x1F, 0x1F, 0x90};
    size_t n = v2(b, 0x21, 0x11, v4, sizeof v4);
    check_valid(b, n, &h);
    CHECK_EQ(h.version, 2);
    CHECK_EQ(h.local, 0);
    CHECK(addr_is(&h.src, "198.51.100.7"));
    CHECK_EQ(h.src.port, 0xC81F);
    CHECK(addr_is(&h.dst, "10.0.0.1"));
    CHECK_EQ(h.dst.port, 8080);

    uint8_t v6[36 + 20];
    memset(v6, 0, sizeof v6);
    struct in6_addr a6;
    inet_pton(AF_INET6, "2001:db8::42", &a6);
    memcpy(v6, &a6, 16);
    inet_pton(AF_INET6, "::1", &a6);
    memcpy(v6 + 16, &a6, 16);
    v6[32] = 0x12, v6[33] = 0x34, v6[34] = 0x1F, v6[35] = 0x90;
    /* TLVs after the addresses are read past: ALPN "h2", then a NOOP */
    uint8_t tlvs[] = {0x01, 0x00, 0x02, 'h', '2', 0x04, 0x00, 0x03, 0, 0, 0};
    memcpy(v6 + 36, tlvs, sizeof tlvs);
    n = v2(b, 0x21, 0x21, v6, 36 + sizeof tlvs);
    check_valid(b, n, &h);
    CHECK(addr_is(&h.src, "2001:db8::42"));
    CHECK_EQ(h.src.port, 0x1234);

    /* a v4-mapped source in a TCP6 header is IPv4 */
    inet_pton(AF_INET6, "::ffff:203.0.113.5", &a6);
    memcpy(v6, &a6, 16);
    n = v2(b, 0x21, 0x21, v6, 36);
    CHECK_EQ(parse(b, n, &h, &why), (long)n);
    CHECK_EQ(h.src.family, AF_INET);
    CHECK(addr_is(&h.src, "203.0.113.5"));

    /* LOCAL: the proxy's own connection; UNSPEC and AF_UNIX: no address */
    n = v2(b, 0x20, 0x00, "", 0);
    check_valid(b, n, &h);
    CHECK_EQ(h.local, 1);
    n = v2(b, 0x20, 0x11, v4, sizeof v4);
    CHECK_EQ(parse(b, n, &h, &why), (long)n);
    CHECK_EQ(h.local, 1);
    uint8_t unixb[216] = {0};
    n = v2(b, 0x21, 0x31, unixb, sizeof unixb);
    CHECK_EQ(parse(b, n, &h, &why), (long)n);
    CHECK_EQ(h.local, 1);

    /* the data after the header stays */
    n = v2(b, 0x21, 0x11, v4, sizeof v4);
    memcpy(b + n, "GET /", 5);
    CHECK_EQ(parse(b, n + 5, &h, &why), (long)n);

    /* the most that is taken: 255 bytes; one more is refused at once,
     * from the 16 bytes that say it */
    uint8_t big[255 - 16];
    memset(big, 0, sizeof big);
    memcpy(big, v4, sizeof v4);
    n = v2(b, 0x21, 0x11, big, sizeof big);
    CHECK_EQ(n, 255);
    check_valid(b, n, &h);
    n = v2(b, 0x21, 0x11, big, 0);
    b[14] = 0, b[15] = 240;
    check_invalid(b, 16, "longer than 255");
    b[14] = 0xFF, b[15] = 0xFF;
    check_invalid(b, 16, "longer than 255");

    n = v2(b, 0x11, 0x11, v4, sizeof v4);
    check_invalid(b, n, "version");
    n = v2(b, 0x22, 0x11, v4, sizeof v4);
    check_invalid(b, n, "command");
    n = v2(b, 0x21, 0x12, v4, sizeof v4);
    check_invalid(b, n, "not a TCP");
    n = v2(b, 0x21, 0x41, v4, sizeof v4);
    check_invalid(b, n, "family");
    n = v2(b, 0x21, 0x13, v4, sizeof v4);
    check_invalid(b, n, "family");
    n = v2(b, 0x21, 0x11, v4, 11);
    check_invalid(b, n, "too short");
    n = v2(b, 0x21, 0x21, v6, 35);
    check_invalid(b, n, "too short");
    /* a wrong signature byte, at each place */
    for (size_t i = 0; i < 12; i++) {
        n = v2(b, 0x21, 0x11, v4, sizeof v4);
        b[i] ^= 0x20;
        check_invalid(b, n, "not a PROXY");
        check_invalid(b, i + 1, "not a PROXY");
    }
    CHECK(proxy_header_like((const uint8_t *)"\r\n\r\n", 4));
    CHECK(proxy_header_like((const uint8_t *)"PRO", 3));
    CHECK(!proxy_header_like((const uint8_t *)"GET", 3));
    CHECK(!proxy_header_like((const uint8_t *)"", 0));
    CHECK_EQ(parse("", 0, &h, &why), 0);
}

static void test_sockaddr(void)
{
    struct sockaddr_in6 st, in6;
    memset(&in6, 0, sizeof in6);
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(4242);
    inet_pton(AF_INET6, "::ffff:192.0.2.33", &in6.sin6_addr);
    struct proxy_addr a;
    proxy_addr_from_sockaddr((struct sockaddr *)&in6, &a);
    CHECK_EQ(a.family, AF_INET);
    CHECK_EQ(a.port, 4242);
    CHECK(addr_is(&a, "192.0.2.33"));
    struct sockaddr *sa = proxy_addr_to_sockaddr(&a, &st);
    CHECK(sa && sa->sa_family == AF_INET);
    CHECK_EQ(ntohs(((struct sockaddr_in *)sa)->sin_port), 4242);
    a = addr("2001:db8::9");
    a.port = 7;
    sa = proxy_addr_to_sockaddr(&a, &st);
    CHECK(sa && sa->sa_family == AF_INET6);
    CHECK_EQ(ntohs(st.sin6_port), 7);
    memset(&a, 0, sizeof a);
    CHECK(proxy_addr_to_sockaddr(&a, &st) == NULL);
}

int main(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    uint8_t *m = mmap(NULL, (size_t)ps * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m + ps, (size_t)ps, PROT_NONE))
        return 2;
    page_end = m + ps;
    test_cidr();
    test_xff();
    test_scheme();
    test_v1();
    test_v2();
    test_sockaddr();
    return unit_done("proxy");
}
