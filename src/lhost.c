/* lhost: the moonport module apps require: log, now, after, every,
 * worker and workers (where the app runs: workers.h), backplane (its counts: backplane.h),
 * sleep and spawn (handlers that wait: lwait.h), tcp (ltcp.h), http (lhttpc.h),
 * redis and null (lredis.h),
 * publish, subscribers (topics: pubsub.h; their argument checks are
 * lconn.c's, shared with ws:publish), and the timer type, which ws:after
 * and ws:every (lconn.c) share. A timer is a userdata holding its
 * ev_timer; while it is armed, the registry holds the timer and its
 * callback (and, for a connection's timer, the ws object), and those refs
 * are dropped when it fires for the last time or is cancelled. A timer
 * belongs to the app whose code created it, or to the connection it was
 * made on: its callback runs as that app's code (lbridge_timer), and its
 * error is logged with that app's name (and the connection's id), never
 * fatal; an `every` timer keeps running after an error. A log line names
 * the app, and the connection whose handler or timer wrote it. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backplane.h"
#include "lbridge.h"
#include "lhttpc.h"
#include "ltcp.h"
#include "log.h"
#include "lredis.h"
#include "lwait.h"
#include "pubsub.h"
#include "server.h"

#define LTIMER_MT "moonport.timer"

struct ltimer {
    ev_timer w;
    lua_State *L;
    struct server *srv;
    struct app *app; /* whose code created it, or the connection's app
                        (apps are never freed) */
    uint64_t conn_id; /* a ws:after/every timer's connection; 0: none */
    int self_ref, fn_ref; /* LUA_NOREF when not armed */
    int ws_ref; /* a ws:after/every timer's ws object while armed, else LUA_NOREF */
};

static struct server *host_server(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* moonport.log(level, ...) */
static int lhost_log(lua_State *L)
{
    const char *name = lb_checklstring(L, 1, "moonport.log", NULL);
    int level = log_level_parse(name);
    if (level < 0)
        return lb_argerror(L, 1, "moonport.log", "level must be error, warn, info or debug");
    if (level > log_threshold)
        return 0;
    int n = lua_gettop(L);
    lua_getglobal(L, "tostring");
    int tostr = n + 1, parts = 0;
    for (int i = 2; i <= n; i++) {
        if (i > 2) {
            lua_pushliteral(L, " ");
            parts++;
        }
        lua_pushvalue(L, tostr);
        lua_pushvalue(L, i);
        lua_call(L, 1, 1);
        parts++;
    }
    lua_concat(L, parts);
    const struct lb_call *call = host_server(L)->lb->call;
    if (call && call->app && call->conn_id)
        log_msg(level, "app %s conn %llu: %s", call->app->name,
                (unsigned long long)call->conn_id, lua_tostring(L, -1));
    else if (call && call->app)
        log_msg(level, "app %s: %s", call->app->name, lua_tostring(L, -1));
    else
        log_msg(level, "app: %s", lua_tostring(L, -1));
    return 0;
}

/* moonport.backplane(): this worker's backplane counts, or nil without one. */
static int lhost_backplane(lua_State *L)
{
    const struct backplane *bp = host_server(L)->bp;
    if (!bp) {
        lua_pushnil(L);
        return 1;
    }
    const struct backplane_stats *st = backplane_stats(bp);
    const struct {
        const char *name;
        uint64_t v;
    } counts[] = {
        {"published", st->published},
        {"received", st->received},
        {"own", st->own},
        {"delivered", st->delivered},
        {"dropped_unreachable", st->dropped_unreachable},
        {"dropped_pending", st->dropped_pending},
        {"dropped_bad", st->dropped_bad},
        {"reconnects", st->reconnects},
        {"servers", backplane_servers(bp)},
        {"connected", backplane_connected(bp)},
    };
    lua_createtable(L, 0, (int)(sizeof counts / sizeof counts[0]) + 1);
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        lua_pushnumber(L, (lua_Number)counts[i].v);
        lua_setfield(L, -2, counts[i].name);
    }
    lua_pushstring(L, backplane_node(bp));
    lua_setfield(L, -2, "node");
    return 1;
}

/* moonport.publish(topic, data [, kind]): how many it was queued to. */
static int lhost_publish(lua_State *L)
{
    return lconn_fanout(L, 1, "moonport.publish", host_server(L), NULL);
}

/* moonport.subscribers(topic): how many connections are subscribed. */
static int lhost_subscribers(lua_State *L)
{
    size_t len;
    const char *topic = lconn_checktopic(L, 1, "moonport.subscribers", &len);
    lua_pushinteger(L, (lua_Integer)pubsub_subscribers(host_server(L), topic, len));
    return 1;
}

/* moonport.now(): monotonic seconds. */
static int lhost_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

static void timer_disarm(struct ltimer *t)
{
    ev_timer_stop(t->srv->loop, &t->w);
    luaL_unref(t->L, LUA_REGISTRYINDEX, t->fn_ref);
    luaL_unref(t->L, LUA_REGISTRYINDEX, t->self_ref);
    luaL_unref(t->L, LUA_REGISTRYINDEX, t->ws_ref);
    t->fn_ref = t->self_ref = t->ws_ref = LUA_NOREF;
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ltimer *t = (struct ltimer *)w;
    lua_State *L = t->L;
    int top = lua_gettop(L);
    int nargs = 1;
    if (t->ws_ref != LUA_NOREF) {
        /* Cancelled when its connection ends (lconn_cancel_timers); this
         * only makes sure that no path is ever missed. */
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->ws_ref);
        if (!lconn_timers_allowed(L, -1)) {
            timer_disarm(t);
            lua_settop(L, top);
            return;
        }
        nargs = 2;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->self_ref); /* keeps t alive during the call */
    int self = lua_gettop(L);
    if (w->repeat == 0)
        timer_disarm(t); /* a one-shot is done before its callback runs */
    lua_pushvalue(L, self - 1); /* fn(timer), or fn(ws, timer) */
    if (nargs == 2)
        lua_pushvalue(L, top + 1);
    lua_pushvalue(L, self);
    lbridge_timer(t->srv->lb, t->app, t->conn_id, nargs);
    lua_settop(L, top);
}

double lhost_timer_check(lua_State *L, int idx, const char *fname, int repeat)
{
    double after = lb_checknumber(L, idx, fname);
    lb_checktype(L, idx + 1, fname, LUA_TFUNCTION);
    if (!(after >= 0))
        return lb_argerror(L, idx, fname, "seconds must be 0 or more");
    if (repeat && !(after > 0))
        return lb_argerror(L, idx, fname, "an every() interval must be more than 0");
    return after;
}

void lhost_timer_start(lua_State *L, struct server *srv, double after, int repeat, int fn,
                       int ws, struct app *app, uint64_t conn_id)
{
    int top = lua_gettop(L); /* fn and ws as absolute indexes: pushes follow */
    fn = fn < 0 ? top + fn + 1 : fn;
    ws = ws < 0 ? top + ws + 1 : ws;
    struct ltimer *t = lua_newuserdata(L, sizeof *t);
    memset(t, 0, sizeof *t);
    t->L = srv->lb ? srv->lb->L : L; /* the main state: L may be a handler's coroutine */
    t->srv = srv;
    t->app = app;
    t->conn_id = conn_id;
    t->fn_ref = t->self_ref = t->ws_ref = LUA_NOREF;
    luaL_getmetatable(L, LTIMER_MT);
    lua_setmetatable(L, -2);
    ev_timer_init(&t->w, on_timer, after, repeat ? after : 0);
    lua_pushvalue(L, fn);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (ws) {
        lua_pushvalue(L, ws);
        t->ws_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushvalue(L, -1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ev_timer_start(srv->loop, &t->w);
}

static int start_timer(lua_State *L, int repeat)
{
    const char *fname = repeat ? "moonport.every" : "moonport.after";
    double after = lhost_timer_check(L, 1, fname, repeat);
    struct server *srv = host_server(L);
    lhost_timer_start(L, srv, after, repeat, 2, 0, srv->lb->call ? srv->lb->call->app : NULL, 0);
    return 1;
}

static int lhost_after(lua_State *L)
{
    return start_timer(L, 0);
}

static int lhost_every(lua_State *L)
{
    return start_timer(L, 1);
}

int lhost_timer_cancel(lua_State *L, int idx)
{
    struct ltimer *t = luaL_testudata(L, idx, LTIMER_MT);
    if (!t || t->self_ref == LUA_NOREF)
        return 0;
    timer_disarm(t);
    return 1;
}

/* timer:cancel(): true if it was armed. */
static int ltimer_cancel(lua_State *L)
{
    if (!luaL_testudata(L, 1, LTIMER_MT))
        return lb_typeerror(L, 1, "timer:cancel", "timer");
    lua_pushboolean(L, lhost_timer_cancel(L, 1));
    return 1;
}

static int ltimer_gc(lua_State *L)
{
    struct ltimer *t = luaL_checkudata(L, 1, LTIMER_MT);
    if (t->srv)
        ev_timer_stop(t->srv->loop, &t->w);
    return 0;
}

void lhost_open(lua_State *L, struct server *srv)
{
    luaL_newmetatable(L, LTIMER_MT);
    lua_newtable(L);
    lua_pushcfunction(L, ltimer_cancel);
    lua_setfield(L, -2, "cancel");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ltimer_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    static const luaL_Reg fns[] = {
        {"log", lhost_log}, {"now", lhost_now}, {"after", lhost_after}, {"every", lhost_every},
        {"publish", lhost_publish}, {"subscribers", lhost_subscribers},
        {"backplane", lhost_backplane}, {NULL, NULL},
    };
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_newtable(L);
    for (const luaL_Reg *f = fns; f->name; f++) {
        lua_pushlightuserdata(L, srv);
        lua_pushcclosure(L, f->func, 1);
        lua_setfield(L, -2, f->name);
    }
    lua_pushliteral(L, MOONPORT_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushinteger(L, (lua_Integer)srv->worker);
    lua_setfield(L, -2, "worker");
    lua_pushinteger(L, (lua_Integer)srv->nworkers);
    lua_setfield(L, -2, "workers");
    lwait_open(L, srv);
    ltcp_open(L, srv);
    lhttpc_open(L);
    lredis_open(L, srv);
    lua_setfield(L, -2, "moonport");
    lua_pop(L, 2);
}
