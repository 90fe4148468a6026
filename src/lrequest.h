/* lrequest: the req table apps see (also ws.request). At the handshake a
 * compact snapshot of the request is taken: one allocation holding the
 * target, route captures, headers, offered subprotocols and both
 * endpoints. The Lua table, which costs several times more, is built from
 * it only when an app asks: as on_connect's argument, or on the first read
 * of ws.request. */
#ifndef MOONPORT_LREQUEST_H
#define MOONPORT_LREQUEST_H

#include <lua.h>

struct conn;
struct hs_request;
struct route_match;
struct req_snapshot;

/* Copy what req needs out of the handshake (which is freed after it).
 * NULL when out of memory. */
struct req_snapshot *lrequest_snapshot(const struct conn *c, const struct hs_request *hs,
                                       const struct route_match *m);
void lrequest_free(struct req_snapshot *s);

/* Push the req table built from a snapshot. */
void lrequest_push(lua_State *L, const struct req_snapshot *s);

#endif
