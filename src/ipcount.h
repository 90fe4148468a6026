/* ipcount: open connections per client address, for
 * limits.max_connections_per_ip. A small open-addressing hash table keyed
 * by the address (an IPv4 address as its v4-mapped IPv6 form), holding
 * only addresses that have a connection now: it grows with the distinct
 * clients, and an entry goes when its count reaches 0. The hash is keyed
 * with a seed, so no client can choose addresses that collide. Pure: no
 * sockets, no libev. */
#ifndef MOONPORT_IPCOUNT_H
#define MOONPORT_IPCOUNT_H

#include <stddef.h>
#include <stdint.h>

struct proxy_addr;
struct ipcount;

/* NULL when out of memory. */
struct ipcount *ipcount_new(uint64_t seed);
void ipcount_free(struct ipcount *t);

/* One more connection from a, unless a has limit already. Returns 1
 * (counted), 0 (at the limit: not counted), or -1 (out of memory: not
 * counted). An address of family 0 (a Unix socket) is never limited and
 * never counted: 1, and ipcount_put ignores it too. */
int ipcount_take(struct ipcount *t, const struct proxy_addr *a, unsigned limit);
/* One connection from a is gone (one that ipcount_take counted). */
void ipcount_put(struct ipcount *t, const struct proxy_addr *a);

/* Connections from a now; distinct addresses now. */
unsigned ipcount_get(const struct ipcount *t, const struct proxy_addr *a);
size_t ipcount_size(const struct ipcount *t);

#endif
