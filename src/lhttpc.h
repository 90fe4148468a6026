/* lhttpc: moonport.http (lua/moonport/http.lua, built in) and the response
 * parser it uses (httpc.h as a Lua userdata). */
#ifndef MOONPORT_LHTTPC_H
#define MOONPORT_LHTTPC_H

#include <lua.h>

/* With the moonport module table on top: set moonport.http (and
 * package.loaded["moonport.http"]). The table stays on top. */
void lhttpc_open(lua_State *L);

#endif
