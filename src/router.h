/* router: request path -> route. A route is an exact path ("/echo") or a
 * pattern whose ":name" segments capture one non-empty path segment
 * ("/rooms/:room"). Exact routes win over patterns; among patterns, the one
 * added first wins. The router owns its routes; the apps they point to
 * belong to the Lua bridge. */
#ifndef MOONPORT_ROUTER_H
#define MOONPORT_ROUTER_H

#include <stddef.h>

struct app;

#define ROUTE_MAX_PARAMS 8

struct route {
    char *pattern;
    struct app *app;
    unsigned nsegs;
    int exact; /* no ":name" segment */
};

struct route_param {
    const char *name, *value; /* name points into the pattern, value into the path */
    size_t name_len, value_len;
};

struct route_match {
    const struct route *route;
    unsigned nparams;
    struct route_param params[ROUTE_MAX_PARAMS];
};

struct router;

struct router *router_new(void);
void router_free(struct router *r);

/* Add a route; a pattern already present is replaced. Returns 0, or -1 with
 * err set (bad pattern, too many captures, out of memory). */
int router_add(struct router *r, const char *pattern, struct app *app, char *err, size_t errlen);

/* Remove the route with this pattern; returns 1 if there was one. */
int router_remove(struct router *r, const char *pattern);

/* Remove every route that leads to app; returns how many. */
size_t router_remove_app(struct router *r, const struct app *app);

/* Match path (without the query). Returns 1 and fills *m, or 0. */
int router_match(const struct router *r, const char *path, size_t len, struct route_match *m);

size_t router_count(const struct router *r);
const struct route *router_at(const struct router *r, size_t i);

#endif
