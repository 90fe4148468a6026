/* lconn: the ws object apps see. It is a small box pointing at the C
 * connection. ws.data and ws.request live in an environment table that is
 * only made when an app first touches them, so an idle connection of an app
 * that never does costs the box alone. When the connection ends, C clears
 * the pointer (lconn_detach) and every method returns nil, "closed" from
 * then on; if the app never read ws.request, the box takes the request
 * snapshot then, and __gc frees it. Its ws:after/every timers (lhost.c's
 * type) are listed in that environment table too, only once it has one, and
 * are cancelled when the connection ends, before on_close runs. Misuse (a
 * wrong argument)
 * raises, through lb_argerror: the error names the method as the app writes
 * it ("ws:accept"), counts arguments without self, and says where in the
 * app the call was; a runtime failure returns nil and a reason. ws:send
 * is Lua code that reaches C through LuaJIT's FFI in the usual case, so a
 * handler that sends compiles into one trace (send_src). */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "handshake.h"
#include "lbridge.h"
#include "lrequest.h"
#include "pubsub.h"
#include "server.h"
#include "snapshot.h"
#include "topic.h"
#include "ws_utf8.h"

#define LCONN_MT "moonport.ws"

struct lconn {
    struct conn *c;        /* NULL once the connection has ended */
    double id;
    struct snapshot *req;  /* the request, once the connection has ended,
                              until ws.request is built from it */
    uint8_t has_env;       /* the environment table exists */
    uint8_t has_request;   /* ws.request has been built */
    uint8_t tls;           /* the connection is wss://: req.scheme */
    uint8_t has_timers;    /* ws:after/every made a timer set (in the
                              environment table, at TIMERS_KEY) */
};

/* The environment table's key for the set of timers ws:after/every made:
 * a weak-keyed table, so that a timer that has fired or been cancelled
 * leaves it with the garbage collector. An armed timer is held by the
 * registry (lhost.c). */
#define TIMERS_KEY "timers"

/* The ws metatable's address. Tables do not move, and the registry holds
 * this one for the life of the process (one lua_State per process). */
static const void *ws_mt;

static __attribute__((noinline, cold)) void bad_self(lua_State *L, const char *fname)
{
    lb_typeerror(L, 1, fname, "ws");
}

/* Argument 1 of method fname must be a ws object: a userdata whose
 * metatable is ws_mt. Comparing addresses is a pointer test, where
 * luaL_checkudata would look the metatable up by name on every call.
 * Inlined, so that fname stays a constant of the caller's error path
 * rather than a register ws:send saves and restores. */
static inline __attribute__((always_inline)) struct lconn *check_box(lua_State *L,
                                                                    const char *fname)
{
    struct lconn *box = lua_touserdata(L, 1);
    if (!box || !lua_getmetatable(L, 1))
        bad_self(L, fname);
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt != ws_mt)
        bad_self(L, fname);
    return box;
}

static int closed(lua_State *L)
{
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
}

/* The data and kind arguments of ws:send or a publish, at idx and idx + 1
 * (lb may be NULL): the opcode, with *data and *len. UTF-8 is checked by
 * check_text, once the connection is known open. */
static uint8_t check_message(lua_State *L, int idx, const char *fname, const struct lbridge *lb,
                             const char **data, size_t *len)
{
    *data = lb_checklstring(L, idx, fname, len);
    const char *kind = lb_optlstring(L, idx + 1, fname, "text", NULL);
    int binary = lb && kind == lb->binary_str;
    if (!binary && !(lb && kind == lb->text_str)) {
        binary = strcmp(kind, "binary") == 0;
        if (!binary && strcmp(kind, "text") != 0)
            lb_argerror(L, idx + 1, fname, "kind must be \"text\" or \"binary\"");
    }
    return binary ? WS_OP_BINARY : WS_OP_TEXT;
}

static void check_text(lua_State *L, int idx, const char *fname, const struct lbridge *lb,
                       uint8_t op, const char *data, size_t len)
{
    if (op == WS_OP_TEXT && !lb_checked_text(lb, data, len) &&
        !ws_utf8_valid((const uint8_t *)data, len))
        lb_argerror(L, idx, fname, "text is not valid UTF-8 (send it as \"binary\")");
}

/* ws:send(data [, kind]) */
static int lconn_send(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:send");
    size_t len;
    const char *data;
    const struct lbridge *lb = box->c ? conn_srv(box->c)->lb : NULL;
    uint8_t op = check_message(L, 2, "ws:send", lb, &data, &len);
    if (!box->c || !conn_can_send(box->c))
        return closed(L);
    check_text(L, 2, "ws:send", lb, op, data, len);
    int rc;
    if (len >= CONN_REF_MIN) { /* the string itself goes out: no copy */
        lua_pushvalue(L, 2);
        rc = conn_send_frame_ref(box->c, op, data, len, luaL_ref(L, LUA_REGISTRYINDEX));
    } else {
        rc = conn_send_frame(box->c, op, data, len);
    }
    if (rc)
        return closed(L);
    lua_pushboolean(L, 1);
    return 1;
}

/* ws:send's fast path, called by the Lua ws:send (send_src) through the FFI
 * once its arguments are known to be a ws object, a string and a valid
 * kind. It must not touch the lua_State: 0 sent, -1 closed, 1 when
 * lconn_send must do it (raise an error, say, or drop the connection). */
static int lconn_send_quick(struct lconn *box, const char *data, size_t len, int binary)
{
    struct conn *c = box->c;
    if (!c)
        return -1;
    if (!binary && conn_can_send(c) && !lb_checked_text(conn_srv(c)->lb, data, len) &&
        !ws_utf8_valid((const uint8_t *)data, len))
        return 1;
    return conn_send_frame_quick(c, binary ? WS_OP_BINARY : WS_OP_TEXT, data, len);
}

/* ws:send in Lua, so that LuaJIT compiles it into the handler's trace (a
 * call of a C function through the Lua API ends a trace). It takes the
 * usual case to lconn_send_quick and everything else, errors included, to
 * lconn_send, with the arguments as the app gave them: the errors stay the
 * same, and their location skips this frame (lbridge.c, push_where).
 * A ws object is recognised by its metatable's __metatable field, which only
 * the debug library could forge. */
static const char send_src[] =
    "local ffi, slow, quick = ...\n"
    "quick = ffi.cast('int (*)(void *, const char *, size_t, int)', quick)\n"
    "local type, getmetatable = type, getmetatable\n"
    "return function(...)\n"
    "  local ws, data, kind = ...\n"
    "  if type(ws) == 'userdata' and getmetatable(ws) == 'moonport.ws'\n"
    "     and type(data) == 'string' then\n"
    "    local binary = kind == 'binary' and 1 or (kind == nil or kind == 'text') and 0\n"
    "    if binary then\n"
    "      local r = quick(ws, data, #data, binary)\n"
    "      if r == 0 then return true end\n"
    "      if r < 0 then return nil, 'closed' end\n"
    "    end\n"
    "  end\n"
    "  return slow(...)\n"
    "end\n";

/* Replace methods.send (the table on top of the stack) with the Lua ws:send,
 * if the FFI is there. */
static void send_open(lua_State *L)
{
    int top = lua_gettop(L);
    if (lb_load_with(L, "ffi", send_src, sizeof send_src - 1, "=" LB_SEND_CHUNK))
        return;
    lua_pushcfunction(L, lconn_send);
    /* A data pointer carries the function pointer: POSIX (dlsym) requires
     * the two to convert both ways. */
    lua_pushlightuserdata(L, (void *)lconn_send_quick);
    if (lua_pcall(L, 3, 1, 0) || !lua_isfunction(L, -1)) {
        lua_settop(L, top);
        return;
    }
    lua_setfield(L, top, "send");
    lua_settop(L, top);
}

/* ws:ping([data]) */
static int lconn_ping(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:ping");
    size_t len = 0;
    const char *data = lb_optlstring(L, 2, "ws:ping", "", &len);
    if (len > 125)
        return lb_argerror(L, 2, "ws:ping", "a ping carries at most 125 bytes");
    if (!box->c || !conn_can_send(box->c))
        return closed(L);
    if (conn_send_frame(box->c, WS_OP_PING, data, len))
        return closed(L);
    lua_pushboolean(L, 1);
    return 1;
}

/* ws:close([code [, reason]]) */
static int lconn_close(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:close");
    lua_Integer code = lb_optinteger(L, 2, "ws:close", WS_CLOSE_NORMAL);
    size_t rlen = 0;
    const char *reason = lb_optlstring(L, 3, "ws:close", "", &rlen);
    if (!ws_close_code_valid((unsigned)code) || code > 65535)
        return lb_argerror(L, 2, "ws:close", "not a close code an endpoint may send");
    if (rlen > 123)
        return lb_argerror(L, 3, "ws:close", "a close reason is at most 123 bytes");
    if (!ws_utf8_valid((const uint8_t *)reason, rlen))
        return lb_argerror(L, 3, "ws:close", "a close reason must be UTF-8");
    struct conn *c = box->c;
    if (c && c->in_connect) { /* closing before the 101 is a rejection */
        if (!conn_reply(c)->status)
            conn_reply(c)->status = 403;
        lua_pushboolean(L, 1);
        return 1;
    }
    if (!c || c->state != CONN_OPEN)
        return closed(L);
    if (conn_srv(c)->lb->nwaiting)
        lbridge_app_closes(conn_srv(c)->lb, c);
    conn_close(c, (uint16_t)code, reason);
    lua_pushboolean(L, 1);
    return 1;
}

/* Header names must be tokens and values must not hold control characters:
 * an app must not be able to split the response. */
static void check_headers(lua_State *L, int idx, int argn, const char *fname)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            lb_argerror(L, argn, fname, "headers must map names to string values");
        const char *name = lua_tostring(L, -2);
        for (const char *p = name; *p; p++)
            if (!(((*p | 32) >= 'a' && (*p | 32) <= 'z') || (*p >= '0' && *p <= '9') ||
                  strchr("!#$%&'*+-.^_`|~", *p)))
                lb_argerror(L, argn, fname, lua_pushfstring(L, "bad header name \"%s\"", name));
        if (!*name)
            lb_argerror(L, argn, fname, "empty header name");
        size_t vl;
        const char *v = lua_tolstring(L, -1, &vl);
        for (size_t i = 0; i < vl; i++)
            if (((unsigned char)v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f)
                lb_argerror(L, argn, fname,
                            lua_pushfstring(L, "control character in header \"%s\"", name));
        lua_pop(L, 1);
    }
}

/* Append the checked headers at idx to out as "Name: value\r\n" lines. */
static void add_headers(lua_State *L, int idx, struct buf *out)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t nl, vl;
        const char *n = lua_tolstring(L, -2, &nl);
        const char *v = lua_tolstring(L, -1, &vl);
        buf_append(out, n, nl);
        buf_append(out, ": ", 2);
        buf_append(out, v, vl);
        buf_append(out, "\r\n", 2);
        lua_pop(L, 1);
    }
}

static struct conn *connecting(lua_State *L, struct lconn *box, const char *fname)
{
    if (!box->c || !box->c->in_connect)
        lb_error(L, fname, "%s can only be called in on_connect", fname);
    return box->c;
}

/* ws:reject([status [, body [, headers]]]) */
static int lconn_reject(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:reject");
    lua_Integer status = lb_optinteger(L, 2, "ws:reject", 403);
    size_t blen = 0;
    const char *body = lb_optlstring(L, 3, "ws:reject", NULL, &blen);
    if (status < 400 || status > 599)
        return lb_argerror(L, 2, "ws:reject", "status must be from 400 to 599");
    if (!lua_isnoneornil(L, 4)) {
        lb_checktype(L, 4, "ws:reject", LUA_TTABLE);
        check_headers(L, 4, 4, "ws:reject");
    }
    struct conn *c = connecting(L, box, "ws:reject");
    /* Everything is checked: only now change the reply. */
    conn_reply(c)->status = (int)status;
    buf_reset(&conn_reply(c)->headers);
    buf_reset(&conn_reply(c)->body);
    if (!lua_isnoneornil(L, 4))
        add_headers(L, 4, &conn_reply(c)->headers);
    if (body)
        buf_append(&conn_reply(c)->body, body, blen);
    lua_pushboolean(L, 1);
    return 1;
}

struct offered {
    const char *want;
    size_t want_len;
    int found;
};

static void match_offered(const char *item, size_t len, void *ud)
{
    struct offered *o = ud;
    if (len == o->want_len && memcmp(item, o->want, len) == 0)
        o->found = 1;
}

/* ws:accept{protocol = "chat.v2", headers = {...}} */
static int lconn_accept(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:accept");
    const char *protocol = NULL;
    size_t plen = 0;
    int headers = 0;
    if (!lua_isnoneornil(L, 2)) {
        lb_checktype(L, 2, "ws:accept", LUA_TTABLE);
        lua_getfield(L, 2, "protocol");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return lb_argerror(L, 2, "ws:accept", "protocol must be a string");
            protocol = lua_tolstring(L, -1, &plen);
        }
        lua_getfield(L, 2, "headers");
        if (!lua_isnil(L, -1)) {
            if (!lua_istable(L, -1))
                return lb_argerror(L, 2, "ws:accept", "headers must be a table");
            headers = lua_gettop(L);
            check_headers(L, headers, 2, "ws:accept");
        }
    }
    struct conn *c = connecting(L, box, "ws:accept");
    if (protocol) {
        struct offered o = {protocol, plen, 0};
        for (size_t i = 0; i < hs_header_count(c->hs); i++) {
            const struct hs_header *h = hs_header_at(c->hs, i);
            if (strcmp(h->name, "sec-websocket-protocol") == 0)
                hs_list_each(h->value, match_offered, &o);
        }
        if (!o.found)
            return lb_argerror(
                L, 2, "ws:accept",
                lua_pushfstring(L, "protocol \"%s\" was not offered by the client", protocol));
    }
    conn_reply(c)->status = 0;
    free(conn_reply(c)->protocol);
    conn_reply(c)->protocol = protocol ? strdup(protocol) : NULL;
    buf_reset(&conn_reply(c)->headers);
    if (headers)
        add_headers(L, headers, &conn_reply(c)->headers);
    lua_pushboolean(L, 1);
    return 1;
}

/* The topic argument at idx of fname: a string of 1 to TOPIC_NAME_MAX bytes. */
const char *lconn_checktopic(lua_State *L, int idx, const char *fname, size_t *len)
{
    const char *name = lb_checklstring(L, idx, fname, len);
    if (*len == 0 || *len > TOPIC_NAME_MAX)
        lb_argerror(L, idx, fname, "a topic is a string of 1 to 256 bytes");
    return name;
}

int lconn_fanout(lua_State *L, int idx, const char *fname, struct server *srv, struct conn *skip)
{
    size_t tlen, len;
    const char *topic = lconn_checktopic(L, idx, fname, &tlen);
    const char *data;
    uint8_t op = check_message(L, idx + 1, fname, srv->lb, &data, &len);
    if (skip && !conn_can_send(skip))
        return closed(L);
    check_text(L, idx + 1, fname, srv->lb, op, data, len);
    lua_pushinteger(L, (lua_Integer)pubsub_publish(srv, topic, tlen, op, data, len, skip));
    return 1;
}

/* The connection of box if it may still send (and so subscribe), or NULL. */
static struct conn *live(const struct lconn *box)
{
    return box->c && conn_can_send(box->c) ? box->c : NULL;
}

/* ws:subscribe(topic): true if subscribed now, false if it already was. */
static int lconn_subscribe(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:subscribe");
    size_t len;
    const char *topic = lconn_checktopic(L, 2, "ws:subscribe", &len);
    struct conn *c = live(box);
    if (!c)
        return closed(L);
    int r = pubsub_subscribe(conn_srv(c), c, topic, len);
    if (r < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    lua_pushboolean(L, r);
    return 1;
}

/* ws:unsubscribe(topic): true if it was subscribed, false if not. */
static int lconn_unsubscribe(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:unsubscribe");
    size_t len;
    const char *topic = lconn_checktopic(L, 2, "ws:unsubscribe", &len);
    if (!box->c)
        return closed(L);
    lua_pushboolean(L, pubsub_unsubscribe(conn_srv(box->c), box->c, topic, len));
    return 1;
}

/* ws:subscribed(topic) */
static int lconn_subscribed(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:subscribed");
    size_t len;
    const char *topic = lconn_checktopic(L, 2, "ws:subscribed", &len);
    if (!box->c)
        return closed(L);
    lua_pushboolean(L, pubsub_subscribed(conn_srv(box->c), box->c, topic, len));
    return 1;
}

/* ws:topics(): a list of the connection's topics, in no particular order. */
static int lconn_topics(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:topics");
    if (!box->c)
        return closed(L);
    const struct server *srv = conn_srv(box->c);
    size_t n = pubsub_count(srv, box->c);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        const char *name = pubsub_topic(srv, box->c, i, &len);
        lua_pushlstring(L, name, len); /* may raise: the table is unchanged */
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* ws:publish(topic, data [, kind]): moonport.publish that skips ws. */
static int lconn_publish(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:publish");
    if (!box->c) { /* misuse raises all the same */
        size_t len;
        const char *data;
        lconn_checktopic(L, 2, "ws:publish", &len);
        check_message(L, 3, "ws:publish", NULL, &data, &len);
        return closed(L);
    }
    return lconn_fanout(L, 2, "ws:publish", conn_srv(box->c), box->c);
}

/* ws:buffered(): bytes queued for this connection and not yet sent, and
 * whether the queue is over limits.send_buffer (reading is paused, and
 * on_drain will run once it drains). */
static int lconn_buffered(lua_State *L)
{
    struct lconn *box = check_box(L, "ws:buffered");
    if (!box->c)
        return closed(L);
    lua_pushinteger(L, (lua_Integer)conn_out_pending(box->c));
    lua_pushboolean(L, box->c->read_paused);
    return 2;
}

static void push_env(lua_State *L, int ud, struct lconn *box);

static int timers_allowed(const struct lconn *box)
{
    return box->c && conn_can_send(box->c) && !box->c->on_close_done;
}

int lconn_timers_allowed(lua_State *L, int idx)
{
    const struct lconn *box = lua_touserdata(L, idx);
    return box && timers_allowed(box);
}

/* ws:after(seconds, fn) and ws:every(seconds, fn): a timer that calls
 * fn(ws, timer), as the connection's app, for as long as the connection
 * is open. */
static int start_timer(lua_State *L, const char *fname, int repeat)
{
    struct lconn *box = check_box(L, fname);
    double seconds = lhost_timer_check(L, 2, fname, repeat);
    if (!timers_allowed(box))
        return closed(L);
    struct conn *c = box->c;
    lhost_timer_start(L, conn_srv(c), seconds, repeat, 3, 1, c->app, c->id);
    int timer = lua_gettop(L);
    push_env(L, 1, box);
    lua_getfield(L, -1, TIMERS_KEY);
    if (lua_isnil(L, -1)) { /* the first timer: setmetatable({}, {__mode = "k"}) */
        lua_pop(L, 1);
        lua_newtable(L);
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, TIMERS_KEY);
        box->has_timers = 1;
    }
    lua_pushvalue(L, timer);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_settop(L, timer);
    return 1;
}

static int lconn_after(lua_State *L)
{
    return start_timer(L, "ws:after", 0);
}

static int lconn_every(lua_State *L)
{
    return start_timer(L, "ws:every", 1);
}

/* Cancel every timer of the box at ud, and forget the set. */
static void cancel_timers(lua_State *L, int ud, struct lconn *box)
{
    if (!box->has_timers)
        return;
    box->has_timers = 0;
    push_env(L, ud, box);
    lua_getfield(L, -1, TIMERS_KEY);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            lhost_timer_cancel(L, -1); /* only disarms: the table stays as it is */
        }
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setfield(L, -2, TIMERS_KEY);
    lua_pop(L, 1);
}

void lconn_cancel_timers(lua_State *L, struct conn *c)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->lua_ref);
    struct lconn *box = lua_touserdata(L, -1);
    if (box)
        cancel_timers(L, lua_gettop(L), box);
    lua_pop(L, 1);
}

static const luaL_Reg methods[] = {
    {"send", lconn_send},       {"ping", lconn_ping},     {"close", lconn_close},
    {"reject", lconn_reject},   {"accept", lconn_accept}, {"buffered", lconn_buffered},
    {"after", lconn_after},     {"every", lconn_every},
    {"subscribe", lconn_subscribe}, {"unsubscribe", lconn_unsubscribe},
    {"subscribed", lconn_subscribed}, {"topics", lconn_topics}, {"publish", lconn_publish},
    {NULL, NULL},
};

/* Push the box's environment table, making it on first use. */
static void push_env(lua_State *L, int ud, struct lconn *box)
{
    if (!box->has_env) {
        lua_createtable(L, 0, 2);
        lua_pushvalue(L, -1);
        lua_setfenv(L, ud);
        box->has_env = 1;
        return;
    }
    lua_getfenv(L, ud);
}

/* Push ws.request, building it from the snapshot the first time: the
 * connection's while it lasts, the box's own after. */
static void push_request(lua_State *L, int ud, struct lconn *box)
{
    push_env(L, ud, box);
    lua_getfield(L, -1, "request");
    const struct snapshot *s = box->c ? box->c->req : box->req;
    if (!box->has_request && s) {
        lua_pop(L, 1);
        lrequest_push(L, s, box->tls ? "wss" : "ws");
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "request");
        box->has_request = 1;
        snap_free(box->req);
        box->req = NULL;
    }
    lua_remove(L, -2);
}

/* ws.key: a method, else id, data (made on first use) or request. */
static int lconn_index(lua_State *L)
{
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    if (!lua_isnil(L, -1))
        return 1;
    struct lconn *box = lua_touserdata(L, 1);
    const char *key = lua_tostring(L, 2);
    if (!key)
        return 1; /* nil */
    if (strcmp(key, "id") == 0) {
        lua_pushnumber(L, box->id);
    } else if (strcmp(key, "request") == 0) {
        push_request(L, 1, box);
    } else if (strcmp(key, "data") == 0) {
        push_env(L, 1, box);
        lua_getfield(L, -1, "data");
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, -3, "data");
        }
    } else {
        lua_pushnil(L);
    }
    return 1;
}

static int lconn_newindex(lua_State *L)
{
    const char *key = lua_tostring(L, 2);
    if (!key || strcmp(key, "data") != 0)
        return lb_error(L, NULL, "ws.%s cannot be set: keep per-connection state in ws.data",
                        key ? key : "?");
    push_env(L, 1, lua_touserdata(L, 1));
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "data");
    return 0;
}

static int lconn_gc(lua_State *L)
{
    struct lconn *box = lua_touserdata(L, 1);
    snap_free(box->req);
    box->req = NULL;
    return 0;
}

static int lconn_tostring(lua_State *L)
{
    struct lconn *box = check_box(L, "tostring");
    lua_pushnumber(L, box->id);
    lua_pushfstring(L, "ws#%s%s", lua_tostring(L, -1), box->c ? "" : " (closed)");
    return 1;
}

void lconn_open(lua_State *L)
{
    luaL_newmetatable(L, LCONN_MT);
    int mt = lua_gettop(L);
    ws_mt = lua_topointer(L, mt);
    lua_newtable(L);
    for (const luaL_Reg *r = methods; r->name; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);
    }
    send_open(L);
    /* __index is a Lua function, so that the JIT compiles ws:send's
     * lookup into the caller's trace; only the fields that are not methods
     * reach C. */
    static const char index_src[] = "local methods, fields = ...\n"
                                    "return function(ws, key)\n"
                                    "  local m = methods[key]\n"
                                    "  if m ~= nil then return m end\n"
                                    "  return fields(ws, key)\n"
                                    "end\n";
    if (luaL_loadbuffer(L, index_src, sizeof index_src - 1, "=moonport.ws"))
        lua_error(L);
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, lconn_index, 1);
    lua_call(L, 2, 1);
    lua_setfield(L, mt, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, lconn_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, lconn_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, lconn_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "moonport.ws");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

int lconn_new(lua_State *L, struct conn *c)
{
    struct lconn *box = lua_newuserdata(L, sizeof *box);
    box->c = c;
    box->tls = conn_tls(c) != NULL;
    box->id = (double)c->id;
    box->req = NULL;
    box->has_env = 0;
    box->has_request = 0;
    box->has_timers = 0;
    luaL_getmetatable(L, LCONN_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    c->lua_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return c->lua_ref;
}

void lconn_push_request(lua_State *L, int ud)
{
    push_request(L, ud, lua_touserdata(L, ud));
}

void lconn_detach(lua_State *L, struct conn *c)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->lua_ref);
    struct lconn *box = lua_touserdata(L, -1);
    if (box) {
        cancel_timers(L, lua_gettop(L), box); /* a rejected handshake's, say */
        box->c = NULL;
        if (!box->has_request) {
            box->req = c->req;
            c->req = NULL;
        }
    }
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, c->lua_ref);
}
