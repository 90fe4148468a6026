/* lhttpc: HTTP/1.1 response parsing for moonport.http, with llhttp. It
 * owns the Lua face of the parser (httpc.h: a userdata that frees its
 * parser when collected) and loads moonport.http itself, which is Lua
 * (lua/moonport/http.lua, compiled into the binary as text: build/gen/)
 * and reaches the parser only through the constructor it is handed here;
 * apps never see the parser. Nothing here does I/O: moonport.http reads
 * and writes through moonport.tcp. */
#include <lauxlib.h>
#include <string.h>

#include "httpc.h"
#include "lhttpc.h"

#define LHTTPC_MT "moonport.httpc"

/* lua/moonport/http.lua as a C string (the Makefile writes it). */
static const char http_lua[] =
#include "http_lua.h"
    ;

struct lhttpc {
    struct httpc *p;
};

static struct httpc *check(lua_State *L)
{
    struct lhttpc *u = luaL_checkudata(L, 1, LHTTPC_MT);
    if (!u->p)
        luaL_error(L, "httpc: parser freed");
    return u->p;
}

/* new(max_head, max_body, no_body) -> parser */
static int lhttpc_new(lua_State *L)
{
    lua_Number head = luaL_checknumber(L, 1), body = luaL_checknumber(L, 2);
    int no_body = lua_toboolean(L, 3);
    luaL_argcheck(L, head >= 1 && head <= (lua_Number)(1 << 30), 1, "out of range");
    luaL_argcheck(L, body >= 0 && body <= (lua_Number)((size_t)1 << 40), 2, "out of range");
    struct lhttpc *u = lua_newuserdata(L, sizeof *u);
    u->p = NULL;
    luaL_getmetatable(L, LHTTPC_MT);
    lua_setmetatable(L, -2);
    u->p = httpc_new((size_t)head, (size_t)body, no_body);
    if (!u->p)
        return luaL_error(L, "not enough memory");
    return 1;
}

/* p:feed(data) -> true, extra (complete; extra: bytes of data after the
 * response) | false (needs more) | nil, err */
static int lhttpc_feed(lua_State *L)
{
    struct httpc *p = check(L);
    size_t len, used;
    const char *data = luaL_checklstring(L, 2, &len);
    int rc = httpc_feed(p, data, len, &used);
    if (rc == HTTPC_NEED_MORE) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (rc == HTTPC_DONE) {
        lua_pushboolean(L, 1);
        lua_pushinteger(L, (lua_Integer)(len - used));
        return 2;
    }
    lua_pushnil(L);
    lua_pushstring(L, httpc_error(p));
    return 2;
}

/* p:eof() -> true | nil, err: the backend closed the connection. */
static int lhttpc_eof(lua_State *L)
{
    struct httpc *p = check(L);
    if (httpc_eof(p) == HTTPC_DONE) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, httpc_error(p));
    return 2;
}

/* p:want(cap) -> 0 (read a line) or how many bytes at most to read next. */
static int lhttpc_want(lua_State *L)
{
    struct httpc *p = check(L);
    lua_Number cap = luaL_checknumber(L, 2);
    luaL_argcheck(L, cap >= 1 && cap <= (lua_Number)(1 << 30), 2, "out of range");
    lua_pushinteger(L, (lua_Integer)httpc_want(p, (size_t)cap));
    return 1;
}

/* p:keepalive() -> whether the connection may carry another request. */
static int lhttpc_keepalive(lua_State *L)
{
    lua_pushboolean(L, httpc_keep_alive(check(L)));
    return 1;
}

/* p:response() -> { status = n, headers = {...}, body = "..." }. A header
 * that appears more than once is joined with ", " as RFC 9110 5.3 allows,
 * except set-cookie, whose values cannot be joined (RFC 9110 5.3, RFC 6265
 * 3): it is always a list of strings. */
static int lhttpc_response(lua_State *L)
{
    struct httpc *p = check(L);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, httpc_status(p));
    lua_setfield(L, -2, "status");
    lua_newtable(L);
    const char *cursor = NULL, *name, *value;
    size_t vlen;
    while (httpc_header_next(p, &cursor, &name, &value, &vlen)) {
        lua_getfield(L, -1, name);
        if (strcmp(name, "set-cookie") == 0) {
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_newtable(L);
                lua_pushvalue(L, -1);
                lua_setfield(L, -3, name);
            }
            lua_pushlstring(L, value, vlen);
            lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
            lua_pop(L, 1);
            continue;
        }
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, value, vlen);
        } else {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, value, vlen);
            lua_concat(L, 3);
        }
        lua_setfield(L, -2, name);
    }
    lua_setfield(L, -2, "headers");
    size_t blen;
    const char *body = httpc_body(p, &blen);
    lua_pushlstring(L, body, blen);
    lua_setfield(L, -2, "body");
    return 1;
}

static int lhttpc_gc(lua_State *L)
{
    struct lhttpc *u = luaL_checkudata(L, 1, LHTTPC_MT);
    httpc_free(u->p);
    u->p = NULL;
    return 0;
}

/* The moonport table is on top: set its http field (and
 * package.loaded["moonport.http"]) to what http.lua returns, given the
 * moonport table and the parser constructor. */
void lhttpc_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"feed", lhttpc_feed},     {"eof", lhttpc_eof},
        {"want", lhttpc_want},     {"keepalive", lhttpc_keepalive},
        {"response", lhttpc_response}, {NULL, NULL},
    };
    luaL_newmetatable(L, LHTTPC_MT);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lhttpc_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    int moonport = lua_gettop(L);
    if (luaL_loadbuffer(L, http_lua, sizeof http_lua - 1, "=moonport.http")) {
        /* Our own file, checked by the specs: a syntax error is our bug. */
        lua_error(L);
    }
    lua_pushvalue(L, moonport);
    lua_pushcfunction(L, lhttpc_new);
    lua_call(L, 2, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, moonport, "http");
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "moonport.http");
    lua_settop(L, moonport);
}
