/* proxy: who the client really is when moonport sits behind a proxy or a
 * load balancer. It parses trusted address ranges (CIDR, IPv4 and IPv6),
 * walks X-Forwarded-For from the right to the first address not in them,
 * reads X-Forwarded-Proto, and parses the PROXY protocol header (v1 text
 * and v2 binary) that HAProxy and cloud balancers put before the bytes of
 * a connection. Pure: no sockets, no libev, no Lua, no allocation; it
 * never decides whom to trust, the caller says whose headers it reads. */
#ifndef MOONPORT_PROXY_H
#define MOONPORT_PROXY_H

#include <stddef.h>
#include <stdint.h>

struct sockaddr;
struct sockaddr_in6;

/* An IP address. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is kept as
 * the IPv4 address it maps, so it matches IPv4 ranges. */
struct proxy_addr {
    uint8_t family;    /* AF_INET (bytes[0..3]) or AF_INET6 (bytes[0..15]); 0: none */
    uint16_t port;     /* 0 when not known (an X-Forwarded-For entry) */
    uint8_t bytes[16];
};

/* A range: family, prefix length, the network's bytes. */
struct proxy_cidr {
    uint8_t family;
    uint8_t bits;
    uint8_t bytes[16];
};

/* "10.0.0.0/8", "::1/128", or a bare address (a range of one). Returns 0,
 * or -1 if s is not one (host bits set beyond the prefix are an error
 * too: "10.1.2.3/8" is a typo more often than a wish). */
int proxy_cidr_parse(const char *s, struct proxy_cidr *out);

/* An address as text ("192.0.2.1", "2001:db8::1"), len bytes, no port.
 * Returns 0 or -1. */
int proxy_addr_parse(const char *s, size_t len, struct proxy_addr *out);

/* From a family (AF_INET, AF_INET6, else none) and its 4 or 16 bytes. */
void proxy_addr_set(struct proxy_addr *a, int family, const void *bytes, uint16_t port);
/* From a socket address (AF_INET or AF_INET6, v4-mapped made AF_INET);
 * family 0 for anything else. */
void proxy_addr_from_sockaddr(const struct sockaddr *sa, struct proxy_addr *out);
/* Back to a socket address (sockaddr_in in the same storage for IPv4);
 * returns the sockaddr, or NULL for family 0. */
struct sockaddr *proxy_addr_to_sockaddr(const struct proxy_addr *a, struct sockaddr_in6 *storage);

/* 1 if a is in range c (an IPv4 address is also in the IPv6 range that
 * holds its mapped form: ::ffff:0:0/96). */
int proxy_cidr_match(const struct proxy_cidr *c, const struct proxy_addr *a);
/* 1 if a is in any of the n ranges. */
int proxy_trusted(const struct proxy_cidr *list, size_t n, const struct proxy_addr *a);

/* proxy_xff_walk results. */
enum {
    PROXY_XFF_CLIENT = 1,  /* *client is the right-most address not trusted */
    PROXY_XFF_TRUSTED = 0, /* every address was trusted (or there was none):
                              *client is the left-most one; go on with the
                              header line before this one, if any */
    PROXY_XFF_BAD = -1,    /* an entry is not an address: the walk stops,
                              *client is the last address walked (the hop that
                              handed us the garbage), untouched if none */
};

/* Walk one X-Forwarded-For value (len bytes: "a, b, c") from the right,
 * skipping addresses in the n trusted ranges. Entries may be "1.2.3.4",
 * "1.2.3.4:port", "2001:db8::1", "[2001:db8::1]" or "[2001:db8::1]:port"
 * (the port is not kept); empty entries are skipped. */
int proxy_xff_walk(const struct proxy_cidr *trusted, size_t n, const char *list, size_t len,
                   struct proxy_addr *client);

/* The scheme an X-Forwarded-Proto value says, as req.scheme names it:
 * "https" or "wss" -> "wss", "http" or "ws" -> "ws" (any case); NULL for
 * anything else. A list ("https, http": each proxy appended its own) is
 * read at its right-most entry, the one the nearest proxy wrote. */
const char *proxy_forwarded_scheme(const char *value);

/* The PROXY protocol. A header longer than this is refused: a v1 header
 * is at most 107 bytes, and a v2 header's addresses take 52 at most,
 * which leaves 203 bytes for its TLVs (which are read past, not used). */
#define PROXY_HEADER_MAX 255

struct proxy_header {
    int version;         /* 1 or 2 */
    int local;           /* LOCAL (v2), UNKNOWN (v1), or not TCP over IP:
                            the connection is the proxy's own (a health
                            check): keep the socket's peer address */
    struct proxy_addr src, dst;
};

/* Parse a PROXY header at the start of p[0..n). Returns its length in
 * bytes (> 0) and fills *h; 0 if the n bytes are the start of a valid
 * header that has not all arrived; -1 if they are not (a wrong signature,
 * a malformed line, an unsupported version or command, over
 * PROXY_HEADER_MAX): *why says which. The decision never waits for more
 * bytes than the header holds. */
long proxy_header_parse(const uint8_t *p, size_t n, struct proxy_header *h, const char **why);

/* 1 if p[0..n) starts like a PROXY header (v1 or v2), for a clearer error
 * when one comes from a peer that may not send it. n may be short. */
int proxy_header_like(const uint8_t *p, size_t n);

#endif
