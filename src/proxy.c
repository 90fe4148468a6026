/* proxy: trusted ranges, X-Forwarded-For/-Proto and the PROXY protocol
 * header. See proxy.h. Nothing here allocates; every parser bounds what it
 * reads by the length it is given (inputs are not NUL-terminated). */
#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* An IPv4-mapped IPv6 address becomes the IPv4 address. */
static void normalize(struct proxy_addr *a)
{
    if (a->family == AF_INET6 && memcmp(a->bytes, v4_mapped_prefix, 12) == 0) {
        memmove(a->bytes, a->bytes + 12, 4);
        memset(a->bytes + 4, 0, 12);
        a->family = AF_INET;
    }
}

int proxy_addr_parse(const char *s, size_t len, struct proxy_addr *out)
{
    char text[INET6_ADDRSTRLEN];
    if (len == 0 || len >= sizeof text || memchr(s, '\0', len))
        return -1;
    memcpy(text, s, len);
    text[len] = '\0';
    struct proxy_addr a;
    memset(&a, 0, sizeof a);
    if (inet_pton(AF_INET, text, a.bytes) == 1)
        a.family = AF_INET;
    else if (inet_pton(AF_INET6, text, a.bytes) == 1)
        a.family = AF_INET6;
    else
        return -1;
    normalize(&a);
    *out = a;
    return 0;
}

int proxy_cidr_parse(const char *s, struct proxy_cidr *out)
{
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    char text[INET6_ADDRSTRLEN];
    if (alen == 0 || alen >= sizeof text)
        return -1;
    memcpy(text, s, alen);
    text[alen] = '\0';
    struct proxy_cidr c;
    memset(&c, 0, sizeof c);
    unsigned max;
    if (inet_pton(AF_INET, text, c.bytes) == 1)
        c.family = AF_INET, max = 32;
    else if (inet_pton(AF_INET6, text, c.bytes) == 1)
        c.family = AF_INET6, max = 128;
    else
        return -1;
    unsigned bits = max;
    if (slash) {
        const char *d = slash + 1;
        if (!*d || strlen(d) > 3)
            return -1;
        bits = 0;
        for (; *d; d++) {
            if (*d < '0' || *d > '9')
                return -1;
            bits = bits * 10 + (unsigned)(*d - '0');
        }
        if (bits > max)
            return -1;
    }
    c.bits = (uint8_t)bits;
    /* No bit may be set past the prefix. */
    for (unsigned i = bits; i < max; i++)
        if (c.bytes[i / 8] & (0x80 >> (i % 8)))
            return -1;
    *out = c;
    return 0;
}

void proxy_addr_set(struct proxy_addr *a, int family, const void *bytes, uint16_t port)
{
    memset(a, 0, sizeof *a);
    if (family != AF_INET && family != AF_INET6)
        return;
    a->family = (uint8_t)family;
    a->port = port;
    memcpy(a->bytes, bytes, family == AF_INET ? 4 : 16);
    normalize(a);
}

void proxy_addr_from_sockaddr(const struct sockaddr *sa, struct proxy_addr *out)
{
    memset(out, 0, sizeof *out);
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        out->family = AF_INET;
        out->port = ntohs(in->sin_port);
        memcpy(out->bytes, &in->sin_addr, 4);
    } else if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        out->family = AF_INET6;
        out->port = ntohs(in6->sin6_port);
        memcpy(out->bytes, &in6->sin6_addr, 16);
        normalize(out);
    }
}

struct sockaddr *proxy_addr_to_sockaddr(const struct proxy_addr *a, struct sockaddr_in6 *storage)
{
    memset(storage, 0, sizeof *storage);
    if (a->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)storage;
        in->sin_family = AF_INET;
        in->sin_port = htons(a->port);
        memcpy(&in->sin_addr, a->bytes, 4);
        return (struct sockaddr *)storage;
    }
    if (a->family == AF_INET6) {
        storage->sin6_family = AF_INET6;
        storage->sin6_port = htons(a->port);
        memcpy(&storage->sin6_addr, a->bytes, 16);
        return (struct sockaddr *)storage;
    }
    return NULL;
}

/* The first bits of a and b are equal. */
static int prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, whole) != 0)
        return 0;
    if (!rest)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

int proxy_cidr_match(const struct proxy_cidr *c, const struct proxy_addr *a)
{
    if (c->family == a->family)
        return prefix_equal(c->bytes, a->bytes, c->bits);
    if (c->family == AF_INET6 && a->family == AF_INET) { /* as ::ffff:a.b.c.d */
        uint8_t mapped[16];
        memcpy(mapped, v4_mapped_prefix, 12);
        memcpy(mapped + 12, a->bytes, 4);
        return prefix_equal(c->bytes, mapped, c->bits);
    }
    return 0;
}

int proxy_trusted(const struct proxy_cidr *list, size_t n, const struct proxy_addr *a)
{
    if (!a->family)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (proxy_cidr_match(&list[i], a))
            return 1;
    return 0;
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* One X-Forwarded-For entry, whitespace trimmed: an address, maybe in
 * brackets, maybe with a port. */
static int xff_entry(const char *s, size_t len, struct proxy_addr *out)
{
    if (len && s[0] == '[') { /* "[v6]" or "[v6]:port" */
        const char *close = memchr(s, ']', len);
        if (!close)
            return -1;
        size_t after = len - (size_t)(close - s) - 1;
        if (after && (close[1] != ':' || after == 1))
            return -1;
        for (size_t i = 2; i <= after; i++)
            if (close[i] < '0' || close[i] > '9')
                return -1;
        return proxy_addr_parse(s + 1, (size_t)(close - s) - 1, out);
    }
    const char *colon = memchr(s, ':', len);
    if (colon && !memchr(colon + 1, ':', len - (size_t)(colon - s) - 1)) {
        /* one colon: "v4:port", 1 to 5 digits */
        size_t plen = len - (size_t)(colon - s) - 1;
        if (plen == 0 || plen > 5)
            return -1;
        for (const char *d = colon + 1; d < s + len; d++)
            if (*d < '0' || *d > '9')
                return -1;
        if (proxy_addr_parse(s, (size_t)(colon - s), out) || out->family != AF_INET)
            return -1;
        return 0;
    }
    return proxy_addr_parse(s, len, out);
}

int proxy_xff_walk(const struct proxy_cidr *trusted, size_t n, const char *list, size_t len,
                   struct proxy_addr *client)
{
    size_t end = len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && list[start - 1] != ',')
            start--;
        size_t a = start, b = end;
        while (a < b && is_space(list[a]))
            a++;
        while (b > a && is_space(list[b - 1]))
            b--;
        end = start ? start - 1 : 0;
        if (a == b)
            continue; /* an empty entry: "a,,b" */
        struct proxy_addr addr;
        if (xff_entry(list + a, b - a, &addr))
            return PROXY_XFF_BAD;
        addr.port = 0;
        *client = addr;
        if (!proxy_trusted(trusted, n, &addr))
            return PROXY_XFF_CLIENT;
    }
    return PROXY_XFF_TRUSTED;
}

const char *proxy_forwarded_scheme(const char *value)
{
    const char *comma = strrchr(value, ',');
    const char *s = comma ? comma + 1 : value;
    while (is_space(*s))
        s++;
    size_t n = strlen(s);
    while (n && is_space(s[n - 1]))
        n--;
    if ((n == 5 && strncasecmp(s, "https", 5) == 0) || (n == 3 && strncasecmp(s, "wss", 3) == 0))
        return "wss";
    if ((n == 4 && strncasecmp(s, "http", 4) == 0) || (n == 2 && strncasecmp(s, "ws", 2) == 0))
        return "ws";
    return NULL;
}

/* ---- The PROXY protocol (haproxy.org/download/2.9/doc/proxy-protocol.txt) ---- */

static const uint8_t v1_sig[6] = {'P', 'R', 'O', 'X', 'Y', ' '};
static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
#define V1_MAX 107

int proxy_header_like(const uint8_t *p, size_t n)
{
    if (n == 0)
        return 0;
    if (p[0] == 'P')
        return memcmp(p, v1_sig, n < 6 ? n : 6) == 0;
    if (p[0] == 0x0D)
        return memcmp(p, v2_sig, n < 12 ? n : 12) == 0;
    return 0;
}

/* A decimal port, 1 to 5 digits, at most 65535. */
static int v1_port(const char *s, size_t len, uint16_t *out)
{
    if (len == 0 || len > 5)
        return -1;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535 || (len > 1 && s[0] == '0'))
        return -1;
    *out = (uint16_t)v;
    return 0;
}

/* "PROXY TCP4 src dst sport dport\r\n", line (without CRLF) len bytes. */
static long parse_v1(const char *line, size_t len, struct proxy_header *h, const char **why)
{
    const char *f[6];
    size_t fl[6];
    size_t nf = 0, i = 0;
    while (i < len) { /* fields separated by exactly one space */
        if (nf == 6) {
            *why = "PROXY v1: too many fields";
            return -1;
        }
        size_t j = i;
        while (j < len && line[j] != ' ')
            j++;
        f[nf] = line + i;
        fl[nf++] = j - i;
        if (j == i) {
            *why = "PROXY v1: empty field";
            return -1;
        }
        i = j + (j < len);
        if (j < len && i == len) {
            *why = "PROXY v1: empty field";
            return -1;
        }
    }
    if (nf >= 2 && fl[1] == 7 && memcmp(f[1], "UNKNOWN", 7) == 0) {
        h->local = 1; /* the rest of the line may say anything */
        return 0;
    }
    int family;
    if (nf >= 2 && fl[1] == 4 && memcmp(f[1], "TCP4", 4) == 0)
        family = AF_INET;
    else if (nf >= 2 && fl[1] == 4 && memcmp(f[1], "TCP6", 4) == 0)
        family = AF_INET6;
    else {
        *why = "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN";
        return -1;
    }
    if (nf != 6) {
        *why = "PROXY v1: wrong number of fields";
        return -1;
    }
    struct proxy_addr src, dst;
    if (proxy_addr_parse(f[2], fl[2], &src) || proxy_addr_parse(f[3], fl[3], &dst) ||
        (family == AF_INET) != (memchr(f[2], ':', fl[2]) == NULL) ||
        (family == AF_INET) != (memchr(f[3], ':', fl[3]) == NULL)) {
        *why = "PROXY v1: bad address";
        return -1;
    }
    if (v1_port(f[4], fl[4], &src.port) || v1_port(f[5], fl[5], &dst.port)) {
        *why = "PROXY v1: bad port";
        return -1;
    }
    h->src = src;
    h->dst = dst;
    return 0;
}

static long parse_v2(const uint8_t *p, size_t n, struct proxy_header *h, const char **why)
{
    if (n < 16)
        return 0;
    if ((p[12] >> 4) != 2) {
        *why = "PROXY v2: unsupported version";
        return -1;
    }
    unsigned cmd = p[12] & 0x0F;
    if (cmd > 1) {
        *why = "PROXY v2: unknown command";
        return -1;
    }
    size_t len = (size_t)p[14] << 8 | p[15];
    if (16 + len > PROXY_HEADER_MAX) {
        *why = "PROXY v2: header longer than 255 bytes";
        return -1;
    }
    if (n < 16 + len)
        return 0;
    unsigned fam = p[13] >> 4, proto = p[13] & 0x0F;
    if (fam > 3 || proto > 2) {
        *why = "PROXY v2: unknown address family or protocol";
        return -1;
    }
    h->version = 2;
    const uint8_t *a = p + 16;
    if (cmd == 0 || fam == 0 || fam == 3) { /* LOCAL, UNSPEC, AF_UNIX */
        h->local = 1;
        return (long)(16 + len);
    }
    if (proto != 1) {
        *why = "PROXY v2: not a TCP connection";
        return -1;
    }
    size_t alen = fam == 1 ? 4 : 16;
    if (len < 2 * alen + 4) {
        *why = "PROXY v2: address block too short";
        return -1;
    }
    h->src.family = h->dst.family = fam == 1 ? AF_INET : AF_INET6;
    memcpy(h->src.bytes, a, alen);
    memcpy(h->dst.bytes, a + alen, alen);
    h->src.port = (uint16_t)(a[2 * alen] << 8 | a[2 * alen + 1]);
    h->dst.port = (uint16_t)(a[2 * alen + 2] << 8 | a[2 * alen + 3]);
    normalize(&h->src);
    normalize(&h->dst);
    return (long)(16 + len);
}

long proxy_header_parse(const uint8_t *p, size_t n, struct proxy_header *h, const char **why)
{
    memset(h, 0, sizeof *h);
    *why = "";
    if (n == 0)
        return 0;
    if (!proxy_header_like(p, n)) {
        *why = "not a PROXY protocol header";
        return -1;
    }
    if (p[0] == 0x0D)
        return parse_v2(p, n, h, why);
    /* v1: a line of at most 107 bytes with its CRLF, printable ASCII: the
     * CR is one of the first 106. */
    size_t lim = n < V1_MAX - 1 ? n : V1_MAX - 1;
    for (size_t i = 0; i < lim; i++) {
        if (p[i] == '\r') {
            if (i + 1 == n)
                return 0;
            if (p[i + 1] != '\n') {
                *why = "PROXY v1: CR without LF";
                return -1;
            }
            h->version = 1;
            if (parse_v1((const char *)p, i, h, why))
                return -1;
            return (long)(i + 2);
        }
        if (p[i] < 0x20 || p[i] > 0x7e) {
            *why = "PROXY v1: control byte in the line";
            return -1;
        }
    }
    if (n >= V1_MAX - 1) {
        *why = "PROXY v1: line longer than 107 bytes";
        return -1;
    }
    return 0;
}
