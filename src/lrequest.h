/* lrequest: the req table apps see (also ws.request), built from the
 * connection's request snapshot (snapshot.h) only when an app asks: as
 * on_connect's argument, or on the first read of ws.request. */
#ifndef MOONPORT_LREQUEST_H
#define MOONPORT_LREQUEST_H

#include <lua.h>

struct snapshot;

/* Push the req table built from a snapshot; scheme is "ws" or "wss". */
void lrequest_push(lua_State *L, const struct snapshot *s, const char *scheme);

#endif
