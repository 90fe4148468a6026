/* origin: matching an Origin header against the allow-list. See origin.h. */
#include "origin.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* SCHEME://HOST[:PORT] split in place-free pieces (pointers and lengths). */
struct parts {
    const char *scheme, *host, *port;
    size_t scheme_len, host_len, port_len;
};

static int split(const char *s, struct parts *p)
{
    const char *sep = strstr(s, "://");
    if (!sep || sep == s)
        return -1;
    p->scheme = s;
    p->scheme_len = (size_t)(sep - s);
    for (size_t i = 0; i < p->scheme_len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (i && ((ch >= '0' && ch <= '9') || ch == '+' || ch == '-' || ch == '.'))))
            return -1;
    }
    const char *h = sep + 3;
    const char *end = h + strlen(h);
    const char *colon = NULL;
    if (*h == '[') { /* an IPv6 literal */
        const char *close = strchr(h, ']');
        if (!close)
            return -1;
        colon = close[1] == ':' ? close + 1 : NULL;
        if (close[1] && !colon)
            return -1;
    } else {
        colon = strrchr(h, ':');
    }
    p->host = h;
    p->host_len = (size_t)((colon ? colon : end) - h);
    p->port = colon ? colon + 1 : end;
    p->port_len = (size_t)(end - p->port);
    if (!p->host_len || (colon && !p->port_len))
        return -1;
    for (size_t i = 0; i < p->host_len; i++) /* no path, no user, no spaces */
        if (strchr("/?#@ \t\\", h[i]))
            return -1;
    for (size_t i = 0; i < p->port_len; i++)
        if (p->port[i] < '0' || p->port[i] > '9')
            return -1;
    return 0;
}

int origin_pattern_check(const char *pattern, const char **why)
{
    if (strcmp(pattern, "*") == 0 || strcmp(pattern, "null") == 0)
        return 0;
    size_t n = strlen(pattern);
    struct parts p;
    char copy[512];
    if (n >= sizeof copy) {
        *why = "too long";
        return -1;
    }
    memcpy(copy, pattern, n + 1);
    if (n > 2 && strcmp(copy + n - 2, ":*") == 0)
        copy[n - 2] = '\0'; /* any port: check the rest */
    if (split(copy, &p)) {
        *why = "not SCHEME://HOST[:PORT] (no path, no trailing slash)";
        return -1;
    }
    const char *star = memchr(p.host, '*', p.host_len);
    if (star && (star != p.host || p.host_len < 3 || p.host[1] != '.' ||
                 memchr(p.host + 1, '*', p.host_len - 1))) {
        *why = "a '*' in the host must be its first label (\"*.example.com\")";
        return -1;
    }
    return 0;
}

struct origin_list *origin_list_new(const char *const *patterns, size_t n)
{
    struct origin_list *l = calloc(1, sizeof *l + n * sizeof l->patterns[0]);
    if (!l)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (!(l->patterns[i] = strdup(patterns[i]))) {
            origin_list_free(l);
            return NULL;
        }
        l->n = i + 1;
    }
    return l;
}

void origin_list_free(struct origin_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->patterns[i]);
    free(l);
}

static int default_port(const char *scheme, size_t len, const char *port, size_t plen)
{
    const char *d = (len == 5 && strncasecmp(scheme, "https", 5) == 0) ||
                            (len == 3 && strncasecmp(scheme, "wss", 3) == 0)
                        ? "443"
                    : (len == 4 && strncasecmp(scheme, "http", 4) == 0) ||
                            (len == 2 && strncasecmp(scheme, "ws", 2) == 0)
                        ? "80"
                        : NULL;
    return d && strlen(d) == plen && memcmp(d, port, plen) == 0;
}

static int match(const char *pattern, const char *origin, const struct parts *o)
{
    if (strcmp(pattern, "*") == 0)
        return 1;
    if (strcmp(pattern, "null") == 0)
        return strcmp(origin, "null") == 0;
    char copy[512];
    size_t n = strlen(pattern);
    if (n >= sizeof copy)
        return 0;
    memcpy(copy, pattern, n + 1);
    int any_port = n > 2 && strcmp(copy + n - 2, ":*") == 0;
    if (any_port)
        copy[n - 2] = '\0';
    struct parts p;
    if (split(copy, &p))
        return 0;
    if (p.scheme_len != o->scheme_len || strncasecmp(p.scheme, o->scheme, p.scheme_len) != 0)
        return 0;
    if (p.host[0] == '*') { /* "*.example.com": at least one label before ".example.com" */
        size_t suffix = p.host_len - 1;
        if (o->host_len <= suffix ||
            strncasecmp(o->host + o->host_len - suffix, p.host + 1, suffix) != 0)
            return 0;
    } else if (p.host_len != o->host_len || strncasecmp(p.host, o->host, p.host_len) != 0) {
        return 0;
    }
    if (any_port)
        return 1;
    /* the same port, or the scheme's default written on one side only */
    if (p.port_len == o->port_len && memcmp(p.port, o->port, p.port_len) == 0)
        return 1;
    if (!p.port_len)
        return default_port(o->scheme, o->scheme_len, o->port, o->port_len);
    if (!o->port_len)
        return default_port(p.scheme, p.scheme_len, p.port, p.port_len);
    return 0;
}

int origin_allowed(const struct origin_list *l, const char *origin)
{
    struct parts o;
    int parsed = !strchr(origin, '*') && split(origin, &o) == 0;
    for (size_t i = 0; i < l->n; i++) {
        const char *pat = l->patterns[i];
        if (strcmp(pat, "*") == 0 || strcmp(pat, "null") == 0) {
            if (match(pat, origin, &o))
                return 1;
        } else if (parsed && match(pat, origin, &o)) {
            return 1;
        }
    }
    return 0;
}
