/* ltcp: moonport.tcp(), the non-blocking TCP (and TLS) client apps get,
 * in the style of OpenResty's cosockets. See ltcp.c. */
#ifndef MOONPORT_LTCP_H
#define MOONPORT_LTCP_H

#include <lua.h>

struct server;

/* Set moonport.tcp in the module table on top of L. Everything it makes
 * (sockets, the keepalive pool, TLS contexts) belongs to L and goes with
 * lua_close. */
void ltcp_open(lua_State *L, struct server *srv);

#endif
