/* lredis: Redis from handlers, waiting without blocking (moonport.redis,
 * moonport.null). See lredis.c. */
#ifndef MOONPORT_LREDIS_H
#define MOONPORT_LREDIS_H

#include <lua.h>

struct server;

/* Register moonport.redis and moonport.null in the module table on top. */
void lredis_open(lua_State *L, struct server *srv);

#endif
