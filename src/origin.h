/* origin: the Origin allow-list (config `origins`, globally and per
 * route), checked before an app sees a handshake: a browser page from a
 * site not on the list must not open a WebSocket that carries the user's
 * cookies (cross-site WebSocket hijacking). Pure: strings in, a yes or a
 * no out. */
#ifndef MOONPORT_ORIGIN_H
#define MOONPORT_ORIGIN_H

#include <stddef.h>

/* The allowed origins, as the config gave them. */
struct origin_list {
    size_t n;
    char *patterns[];
};

/* A pattern is "*" (any origin), "null" (what sandboxed pages and file://
 * send), or SCHEME://HOST[:PORT] where HOST may start with "*." (any
 * subdomain, not the domain itself) and PORT may be "*" (any port, or
 * none). Without a port, the scheme's default port (80 for http and ws,
 * 443 for https and wss) or no port matches. Returns 0, or -1 with *why. */
int origin_pattern_check(const char *pattern, const char **why);

/* A list of n patterns (copied); NULL when out of memory. */
struct origin_list *origin_list_new(const char *const *patterns, size_t n);
void origin_list_free(struct origin_list *l);

/* 1 if the Origin header value matches a pattern of l; schemes and hosts
 * compare without regard to case. */
int origin_allowed(const struct origin_list *l, const char *origin);

#endif
