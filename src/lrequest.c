/* lrequest: the req table, built from the connection's request snapshot
 * (snapshot.c) only when an app asks for it: the table costs a kilobyte or
 * two, the snapshot a handful of bytes more than the request head. */
#include "lrequest.h"

#include <lauxlib.h>
#include <string.h>

#include "handshake.h"
#include "snapshot.h"

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Push s[0..len) percent-decoded ('+' is a space in query arguments). */
static void push_decoded(lua_State *L, const char *s, size_t len, int plus_is_space)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = hexval(s[i + 1])) >= 0 &&
            (lo = hexval(s[i + 2])) >= 0) {
            luaL_addchar(&b, (char)(hi * 16 + lo));
            i += 2;
        } else if (s[i] == '+' && plus_is_space) {
            luaL_addchar(&b, ' ');
        } else {
            luaL_addchar(&b, s[i]);
        }
    }
    luaL_pushresult(&b);
}

/* req.args: a=1&b=x%20y -> {a="1", b="x y"}; a repeated key keeps the last. */
static void push_args(lua_State *L, const char *q)
{
    lua_newtable(L);
    while (q && *q) {
        size_t n = strcspn(q, "&");
        const char *eq = memchr(q, '=', n);
        if (n) {
            size_t kl = eq ? (size_t)(eq - q) : n;
            push_decoded(L, q, kl, 1);
            if (eq)
                push_decoded(L, eq + 1, n - kl - 1, 1);
            else
                lua_pushboolean(L, 1);
            lua_rawset(L, -3);
        }
        q += n;
        if (*q == '&')
            q++;
    }
}

static void push_endpoint(lua_State *L, const char *host, int port)
{
    lua_createtable(L, 0, 2);
    lua_pushstring(L, host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, port);
    lua_setfield(L, -2, "port");
}

struct list_ctx {
    lua_State *L;
    int n;
};

static void push_list_item(const char *item, size_t len, void *ud)
{
    struct list_ctx *x = ud;
    lua_pushlstring(x->L, item, len);
    lua_rawseti(x->L, -2, ++x->n);
}

void lrequest_push(lua_State *L, const struct snapshot *s, const char *scheme)
{
    const char *p = snap_strings(s);
    const char *path = snap_next(&p);
    const char *rest = snap_next(&p);

    lua_createtable(L, 0, 11);
    lua_pushliteral(L, "GET"); /* the handshake accepts nothing else */
    lua_setfield(L, -2, "method");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    const char *q = strchr(rest, '?');
    lua_pushstring(L, q ? q + 1 : "");
    lua_setfield(L, -2, "query");
    push_args(L, q ? q + 1 : NULL);
    lua_setfield(L, -2, "args");

    lua_createtable(L, 0, s->nparams);
    for (unsigned i = 0; i < s->nparams; i++) {
        const char *name = snap_next(&p);
        const char *value = snap_next(&p);
        lua_pushstring(L, name);
        push_decoded(L, value, strlen(value), 0);
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "params");

    /* Headers: lowercase names; a repeated header's values joined by ", ". */
    lua_createtable(L, 0, s->nheaders);
    for (unsigned i = 0; i < s->nheaders; i++) {
        const char *name = snap_header_name(snap_next(&p));
        const char *value = snap_header_value(snap_next(&p));
        lua_getfield(L, -1, name);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushstring(L, value);
        } else {
            lua_pushliteral(L, ", ");
            lua_pushstring(L, value);
            lua_concat(L, 3);
        }
        lua_setfield(L, -2, name);
    }
    lua_setfield(L, -2, "headers");

    char host[SNAP_HOST_MAX];
    int port;
    snap_client(s, host, &port);
    push_endpoint(L, host, port);
    lua_setfield(L, -2, "client");
    snap_server(s, host, &port);
    push_endpoint(L, host, port);
    lua_setfield(L, -2, "server");
    lua_pushstring(L, s->scheme_fwd == SNAP_SCHEME_WSS  ? "wss"
                      : s->scheme_fwd == SNAP_SCHEME_WS ? "ws"
                                                        : scheme);
    lua_setfield(L, -2, "scheme");
    /* Offered subprotocols, in order, from every Sec-WebSocket-Protocol line. */
    lua_newtable(L);
    lua_getfield(L, -2, "headers");
    lua_getfield(L, -1, "sec-websocket-protocol");
    const char *protocols = lua_tostring(L, -1);
    lua_pushvalue(L, -3);
    struct list_ctx x = {L, 0};
    hs_list_each(protocols, push_list_item, &x);
    lua_pop(L, 3);
    lua_setfield(L, -2, "subprotocols");
}
