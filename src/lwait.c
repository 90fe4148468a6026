/* lwait: handlers that wait (see lwait.h for the model and the C API). It
 * owns the coroutines handlers run in (the pool, and the one running now),
 * the task records of the suspended ones, their resumption, and the two
 * functions apps get from it: moonport.sleep and moonport.spawn. What the
 * end of a task means for its connection is lbridge.c's (lbridge_task_end). */
#include "lwait.h"

#include <ev.h>
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server.h"

/* The coroutine running now (NULL: none, code runs on the main state) and
 * its task record, made by its first lwait_begin. */
static lua_State *running_co;
static struct lwait_task *running_task;
static struct lbridge *bridge;

/* Finished coroutines kept for the next run that needs one. */
#define POOL_MAX 16
static struct {
    lua_State *co;
    int ref;
} pool[POOL_MAX];
static int npool;

/* Tasks suspended now, and resumes put off to the next loop iteration. */
static long nwaiting;
static struct lwait_task *all;
static struct lwait_task *ready, **ready_tail = &ready;
static ev_timer ready_timer;

/* Registry ref of the factory that wraps a waiting C function (lwait_pushfunction). */
static int wrap_ref = LUA_NOREF;

long lwait_count(void)
{
    return nwaiting;
}

static lua_State *co_take(struct lbridge *lb, int *ref)
{
    if (npool) {
        npool--;
        *ref = pool[npool].ref;
        return pool[npool].co;
    }
    lua_State *co = lua_newthread(lb->L);
    *ref = luaL_ref(lb->L, LUA_REGISTRYINDEX);
    return co;
}

lua_State *lwait_co_take(struct lbridge *lb, int *ref)
{
    return co_take(lb, ref);
}

static void co_give(struct lbridge *lb, lua_State *co, int ref);

void lwait_co_give(struct lbridge *lb, lua_State *co, int ref)
{
    co_give(lb, co, ref);
}

static void co_give(struct lbridge *lb, lua_State *co, int ref)
{
    lua_settop(co, 0);
    if (npool < POOL_MAX) {
        pool[npool].co = co;
        pool[npool].ref = ref;
        npool++;
    } else {
        luaL_unref(lb->L, LUA_REGISTRYINDEX, ref);
    }
}

/* Raise the reason why the code running on L cannot wait. */
static int cannot_wait(lua_State *L, const char *fname)
{
    const char *why = !running_co ? "not in a handler, a timer callback or a spawned function"
                      : L != running_co
                          ? "inside a coroutine the app made"
                          : "inside a function called from C: require, a metamethod called "
                            "from C, a table.sort comparator, a string.gsub function...";
    return lb_error(L, fname, "%s: cannot wait here (%s)", fname, why);
}

static int wrapped_cannot(lua_State *L)
{
    return cannot_wait(L, luaL_checkstring(L, 1));
}

struct lwait_task *lwait_begin(lua_State *L, const char *fname)
{
    if (!running_co || L != running_co)
        cannot_wait(L, fname);
    struct lwait_task *t = running_task;
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t) {
            lb_error(L, fname, "%s: out of memory", fname);
            return NULL;
        }
        t->co = L;
        t->co_ref = LUA_NOREF;
        t->call.fn_ref = LUA_NOREF;
        running_task = t;
    }
    t->armed = 1;
    return t;
}

int lwait_yield(lua_State *L)
{
    return lua_yield(L, 0);
}

/* The message of a run that raised, or yielded without a wait, pushed on L
 * with co's traceback. */
static void push_failure(struct lbridge *lb, lua_State *co, int rc)
{
    lua_State *L = lb->L;
    if (rc == LUA_YIELD)
        lua_pushliteral(L, "a handler yielded without waiting (coroutine.yield outside a "
                           "coroutine the app made: wait with moonport.sleep and the like)");
    else
        lua_xmove(co, L, 1);
    lb_push_traceback(L, co);
}

int lwait_run(struct lbridge *lb, lua_State *co, int co_ref, struct lb_call *call, int nargs,
              int kind, struct lwait_task **task)
{
    lua_State *L = lb->L;
    bridge = lb;
    int temp_ref = LUA_NOREF;
    if (call->fn_ref == LUA_NOREF) {
        lua_pushvalue(co, -nargs - 1);
        call->fn_ref = temp_ref = luaL_ref(co, LUA_REGISTRYINDEX);
    }
    lua_State *prev_co = running_co;
    struct lwait_task *prev_task = running_task;
    running_co = co;
    running_task = NULL;
    call->prev = lb->call;
    lb->call = call;
    int rc = lua_resume(co, nargs);
    lb->call = call->prev;
    struct lwait_task *t = running_task;
    running_co = prev_co;
    running_task = prev_task;
    if (rc == 0) {
        free(t); /* a wait that began and was called off (out of memory) */
        luaL_unref(L, LUA_REGISTRYINDEX, temp_ref);
        if (co == lb->co)
            lua_settop(co, 0);
        else
            co_give(lb, co, co_ref);
        return 0;
    }
    if (rc == LUA_YIELD && t && t->armed) {
        t->co = co;
        t->co_ref = co_ref;
        t->call = *call;
        t->call.prev = NULL;
        if (temp_ref != LUA_NOREF) {
            t->call.fn_ref = temp_ref;
        } else { /* its own: a reload may let go of the app's */
            lua_rawgeti(L, LUA_REGISTRYINDEX, call->fn_ref);
            t->call.fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        }
        t->kind = (uint8_t)kind;
        nwaiting++;
        t->all_prev = NULL;
        t->all_next = all;
        if (all)
            all->all_prev = t;
        all = t;
        if (co == lb->co)
            lb->co = co_take(lb, &lb->co_ref);
        *task = t;
        return LB_WAITING;
    }
    free(t); /* a wait began and raised before it yielded: never resumed */
    push_failure(lb, co, rc);
    luaL_unref(L, LUA_REGISTRYINDEX, temp_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, co_ref); /* dead, or stuck in a yield */
    if (co == lb->co)
        lb->co = co_take(lb, &lb->co_ref);
    return -1;
}

static void task_free(struct lbridge *lb, struct lwait_task *t, int reuse)
{
    if (t->all_prev)
        t->all_prev->all_next = t->all_next;
    else
        all = t->all_next;
    if (t->all_next)
        t->all_next->all_prev = t->all_prev;
    luaL_unref(lb->L, LUA_REGISTRYINDEX, t->call.fn_ref);
    if (reuse)
        co_give(lb, t->co, t->co_ref);
    else
        luaL_unref(lb->L, LUA_REGISTRYINDEX, t->co_ref);
    free(t->path);
    free(t);
}

static void on_ready(struct ev_loop *loop, ev_timer *w, int revents);

void lwait_resume(struct lwait_task *t, int nresults)
{
    struct lbridge *lb = bridge;
    if (!t->armed) {
        log_error("lwait: a task resumed that was not waiting (a bug in moonport)");
        return;
    }
    if (lb->call) { /* Lua code runs now: no handler starts inside another */
        t->queued = 1;
        t->nresults = nresults;
        t->next = NULL;
        *ready_tail = t;
        ready_tail = &t->next;
        if (!ev_is_active(&ready_timer)) {
            ev_timer_init(&ready_timer, on_ready, 0, 0);
            ev_timer_start(lb->srv->loop, &ready_timer);
        }
        return;
    }
    t->armed = 0;
    lua_State *prev_co = running_co;
    struct lwait_task *prev_task = running_task;
    running_co = t->co;
    running_task = t;
    t->call.prev = lb->call;
    lb->call = &t->call;
    lbridge_task_enter(lb, t, 1);
    int rc = lua_resume(t->co, nresults);
    lbridge_task_enter(lb, t, 0);
    lb->call = t->call.prev;
    running_co = prev_co;
    running_task = prev_task;
    if (rc == LUA_YIELD && t->armed)
        return; /* waits again */
    nwaiting--;
    if (rc)
        push_failure(lb, t->co, rc);
    lbridge_task_end(lb, t, rc ? -1 : 0);
    task_free(lb, t, rc == 0);
}

static void on_ready(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    struct lwait_task *list = ready;
    ready = NULL;
    ready_tail = &ready;
    while (list) {
        struct lwait_task *t = list;
        list = t->next;
        t->queued = 0;
        lwait_resume(t, t->nresults);
    }
}

uint64_t lwait_conn_id(const struct lwait_task *t)
{
    return t->call.conn_id;
}

int lwait_conn_open(const struct lwait_task *t)
{
    return lbridge_conn_open(bridge, t->call.conn_id);
}

/* ---- moonport.sleep ---- */

struct sleeper {
    ev_timer w;
    struct lwait_task *t;
    struct sleeper *prev, *next; /* all of them, to free at exit */
};
static struct sleeper *sleepers;

static void on_wake(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct sleeper *s = (struct sleeper *)w;
    ev_timer_stop(loop, w);
    struct lwait_task *t = s->t;
    if (s->prev)
        s->prev->next = s->next;
    else
        sleepers = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
    lwait_resume(t, 0);
}

/* moonport.sleep(seconds): returns nothing, after seconds (0: the loop's
 * next iteration). */
static int lwait_sleep(lua_State *L)
{
    lua_Number secs = lb_checknumber(L, 1, "moonport.sleep");
    if (!(secs >= 0) || isinf(secs))
        return lb_argerror(L, 1, "moonport.sleep", "seconds must be a finite number, 0 or more");
    struct server *srv = lua_touserdata(L, lua_upvalueindex(1));
    struct lwait_task *t = lwait_begin(L, "moonport.sleep"); /* raises where it cannot wait */
    struct sleeper *s = malloc(sizeof *s);
    if (!s) {
        t->armed = 0; /* no wait began after all */
        return lb_error(L, "moonport.sleep", "moonport.sleep: out of memory");
    }
    s->t = t;
    s->prev = NULL;
    s->next = sleepers;
    if (sleepers)
        sleepers->prev = s;
    sleepers = s;
    ev_timer_init(&s->w, on_wake, secs, 0);
    ev_timer_start(srv->loop, &s->w);
    return lwait_yield(L);
}

/* ---- moonport.spawn ---- */

/* moonport.spawn(fn, ...): fn(...) runs now, in its own task, and goes on
 * in the background once it waits; returns true. */
static int lwait_spawn(lua_State *L)
{
    lb_checktype(L, 1, "moonport.spawn", LUA_TFUNCTION);
    struct lbridge *lb = ((struct server *)lua_touserdata(L, lua_upvalueindex(1)))->lb;
    int nargs = lua_gettop(L) - 1, ref;
    lua_State *co = co_take(lb, &ref);
    lua_xmove(L, co, nargs + 1);
    struct lb_call call = {lb->call ? lb->call->app : NULL, 0, LUA_NOREF, NULL};
    struct lwait_task *t;
    if (lwait_run(lb, co, ref, &call, nargs, LW_SPAWN, &t) < 0)
        lbridge_task_failed(lb, call.app, 0, LW_SPAWN);
    lua_pushboolean(L, 1);
    return 1;
}

/* moonport.waiting(): how many tasks wait now (for tests and leak checks). */
static int lwait_waiting(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)nwaiting);
    return 1;
}

/* The wrapper around each waiting C function: coroutine.isyieldable() is
 * the only reliable test for a C boundary on the stack (require, a
 * metamethod called from C), and only Lua code can call it meaningfully. */
static const char wrap_src[] = "local isyieldable, cannot = ...\n"
                               "return function(f, name)\n"
                               "  return function(...)\n"
                               "    if not isyieldable() then cannot(name) end\n"
                               "    return f(...)\n"
                               "  end\n"
                               "end\n";

void lwait_pushfunction(lua_State *L, lua_CFunction f, const char *fname, int nup)
{
    lua_pushcclosure(L, f, nup);
    lua_rawgeti(L, LUA_REGISTRYINDEX, wrap_ref);
    lua_insert(L, -2);
    lua_pushstring(L, fname);
    lua_call(L, 2, 1);
}

void lwait_open(lua_State *L, struct server *srv)
{
    if (wrap_ref == LUA_NOREF) {
        if (luaL_loadbuffer(L, wrap_src, sizeof wrap_src - 1, "=" LB_WAIT_CHUNK))
            abort(); /* our own code: cannot fail to compile */
        lua_getglobal(L, "coroutine");
        lua_getfield(L, -1, "isyieldable");
        lua_remove(L, -2);
        lua_pushcfunction(L, wrapped_cannot);
        lua_call(L, 2, 1);
        wrap_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushlightuserdata(L, srv);
    lwait_pushfunction(L, lwait_sleep, "moonport.sleep", 1);
    lua_setfield(L, -2, "sleep");
    lua_pushlightuserdata(L, srv);
    lua_pushcclosure(L, lwait_spawn, 1);
    lua_setfield(L, -2, "spawn");
    lua_pushcfunction(L, lwait_waiting);
    lua_setfield(L, -2, "waiting");
}

void lwait_close(struct lbridge *lb)
{
    while (sleepers) {
        struct sleeper *s = sleepers;
        sleepers = s->next;
        ev_timer_stop(lb->srv->loop, &s->w);
        free(s);
    }
    if (ev_is_active(&ready_timer))
        ev_timer_stop(lb->srv->loop, &ready_timer);
    while (all) {
        struct lwait_task *t = all;
        all = t->all_next;
        free(t->path);
        free(t);
    }
    ready = NULL;
    ready_tail = &ready;
    npool = 0;
    nwaiting = 0;
    running_co = NULL;
    running_task = NULL;
    wrap_ref = LUA_NOREF;
}
