/* lrequest: the request snapshot and the req table built from it. The
 * snapshot is a header and NUL-terminated strings in one block: a handful
 * of bytes more than the request head itself, where the Lua table would
 * be a kilobyte or two per idle connection. */
#include "lrequest.h"

#include <arpa/inet.h>
#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "handshake.h"
#include "router.h"

struct req_snapshot {
    uint16_t nparams, nheaders;
    int client_port, server_port;
    /* target, client host, server host, then nparams (name, value) pairs,
     * then nheaders (name, value) pairs. */
    char data[];
};

static char *put(char *w, const char *s, size_t n)
{
    memcpy(w, s, n);
    w[n] = '\0';
    return w + n + 1;
}

struct req_snapshot *lrequest_snapshot(const struct conn *c, const struct hs_request *hs,
                                       const struct route_match *m)
{
    char client[INET6_ADDRSTRLEN], server[INET6_ADDRSTRLEN];
    int client_port, server_port;
    conn_addr_text(&c->client, client, sizeof client, &client_port);
    struct conn_addr local;
    conn_local_addr(c, &local);
    conn_addr_text(&local, server, sizeof server, &server_port);
    const char *target = hs_target(hs);
    size_t nh = hs_header_count(hs);
    size_t size = strlen(target) + strlen(client) + strlen(server) + 3;
    for (unsigned i = 0; i < m->nparams; i++)
        size += m->params[i].name_len + m->params[i].value_len + 2;
    for (size_t i = 0; i < nh; i++) {
        const struct hs_header *h = hs_header_at(hs, i);
        size += strlen(h->name) + h->value_len + 2;
    }
    struct req_snapshot *s = malloc(sizeof *s + size);
    if (!s)
        return NULL;
    s->nparams = (uint16_t)m->nparams;
    s->nheaders = (uint16_t)nh;
    s->client_port = client_port;
    s->server_port = server_port;
    char *w = s->data;
    w = put(w, target, strlen(target));
    w = put(w, client, strlen(client));
    w = put(w, server, strlen(server));
    for (unsigned i = 0; i < m->nparams; i++) {
        w = put(w, m->params[i].name, m->params[i].name_len);
        w = put(w, m->params[i].value, m->params[i].value_len);
    }
    for (size_t i = 0; i < nh; i++) {
        const struct hs_header *h = hs_header_at(hs, i);
        w = put(w, h->name, strlen(h->name));
        w = put(w, h->value, h->value_len);
    }
    return s;
}

void lrequest_free(struct req_snapshot *s)
{
    free(s);
}

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

/* Read the next string of a snapshot. */
static const char *next(const char **p)
{
    const char *s = *p;
    *p += strlen(s) + 1;
    return s;
}

void lrequest_push(lua_State *L, const struct req_snapshot *s)
{
    const char *p = s->data;
    const char *target = next(&p);
    const char *client = next(&p);
    const char *server = next(&p);

    lua_createtable(L, 0, 11);
    lua_pushliteral(L, "GET"); /* the handshake accepts nothing else */
    lua_setfield(L, -2, "method");
    size_t plen = strcspn(target, "?#");
    lua_pushlstring(L, target, plen);
    lua_setfield(L, -2, "path");
    const char *q = strchr(target, '?');
    lua_pushstring(L, q ? q + 1 : "");
    lua_setfield(L, -2, "query");
    push_args(L, q ? q + 1 : NULL);
    lua_setfield(L, -2, "args");

    lua_createtable(L, 0, s->nparams);
    for (unsigned i = 0; i < s->nparams; i++) {
        const char *name = next(&p);
        const char *value = next(&p);
        lua_pushstring(L, name);
        push_decoded(L, value, strlen(value), 0);
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "params");

    /* Headers: lowercase names; a repeated header's values joined by ", ". */
    lua_createtable(L, 0, s->nheaders);
    for (unsigned i = 0; i < s->nheaders; i++) {
        const char *name = next(&p);
        const char *value = next(&p);
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

    push_endpoint(L, client, s->client_port);
    lua_setfield(L, -2, "client");
    push_endpoint(L, server, s->server_port);
    lua_setfield(L, -2, "server");
    lua_pushliteral(L, "ws");
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
