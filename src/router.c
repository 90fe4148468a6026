/* router: a short list of routes matched segment by segment. The list is
 * small (one entry per app route) and matched once per handshake, so a
 * linear scan is the clear choice. */
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct router {
    struct route *routes;
    size_t n, cap;
};

struct router *router_new(void)
{
    return calloc(1, sizeof(struct router));
}

void router_free(struct router *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        free(r->routes[i].pattern);
    free(r->routes);
    free(r);
}

int router_add(struct router *r, const char *pattern, struct app *app, char *err, size_t errlen)
{
    if (pattern[0] != '/') {
        snprintf(err, errlen, "route \"%s\" must start with /", pattern);
        return -1;
    }
    unsigned segs = 0, params = 0;
    for (const char *p = pattern; *p; p++) {
        if (*p != '/')
            continue;
        segs++;
        if (p[1] == ':') {
            if (p[2] == '\0' || p[2] == '/') {
                snprintf(err, errlen, "route \"%s\": a capture needs a name", pattern);
                return -1;
            }
            params++;
        }
    }
    if (params > ROUTE_MAX_PARAMS) {
        snprintf(err, errlen, "route \"%s\": more than %d captures", pattern, ROUTE_MAX_PARAMS);
        return -1;
    }
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->routes[i].pattern, pattern) == 0) {
            r->routes[i].app = app;
            return 0;
        }
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 8;
        struct route *nr = realloc(r->routes, cap * sizeof *nr);
        if (!nr) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        r->routes = nr;
        r->cap = cap;
    }
    char *copy = strdup(pattern);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    r->routes[r->n++] = (struct route){
        .pattern = copy, .app = app, .nsegs = segs, .exact = params == 0};
    return 0;
}

static void remove_at(struct router *r, size_t i)
{
    free(r->routes[i].pattern);
    memmove(&r->routes[i], &r->routes[i + 1], (r->n - i - 1) * sizeof *r->routes);
    r->n--;
}

int router_remove(struct router *r, const char *pattern)
{
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->routes[i].pattern, pattern) == 0) {
            remove_at(r, i);
            return 1;
        }
    }
    return 0;
}

size_t router_remove_app(struct router *r, const struct app *app)
{
    size_t removed = 0;
    for (size_t i = r->n; i-- > 0;) {
        if (r->routes[i].app == app) {
            remove_at(r, i);
            removed++;
        }
    }
    return removed;
}

/* Match one pattern against path, segment by segment. */
static int match_one(const struct route *rt, const char *path, size_t len, struct route_match *m)
{
    const char *p = rt->pattern, *s = path, *end = path + len;
    m->nparams = 0;
    while (*p && s < end) {
        if (*p != '/' || *s != '/')
            return 0;
        p++;
        s++;
        const char *pe = strchr(p, '/');
        if (!pe)
            pe = p + strlen(p);
        const char *se = memchr(s, '/', (size_t)(end - s));
        if (!se)
            se = end;
        if (*p == ':') {
            if (se == s)
                return 0; /* a capture matches a non-empty segment */
            struct route_param *rp = &m->params[m->nparams++];
            *rp = (struct route_param){p + 1, s, (size_t)(pe - p - 1), (size_t)(se - s)};
        } else if ((size_t)(pe - p) != (size_t)(se - s) || memcmp(p, s, (size_t)(se - s)) != 0) {
            return 0;
        }
        p = pe;
        s = se;
    }
    if (*p || s != end)
        return 0;
    m->route = rt;
    return 1;
}

int router_match(const struct router *r, const char *path, size_t len, struct route_match *m)
{
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < r->n; i++) {
            const struct route *rt = &r->routes[i];
            if (rt->exact != (pass == 0) || !rt->app)
                continue;
            if (match_one(rt, path, len, m))
                return 1;
        }
    }
    return 0;
}

size_t router_count(const struct router *r)
{
    return r->n;
}

const struct route *router_at(const struct router *r, size_t i)
{
    return i < r->n ? &r->routes[i] : NULL;
}
