/* lwait: handlers that wait. Every handler (on_connect, on_message,
 * on_close, on_drain), timer callback and spawned function runs in a Lua
 * coroutine (a "task"), so a C function it calls can suspend it until the
 * event loop has an answer, while the loop serves everyone else. A handler
 * that never waits runs in the bridge's one reused coroutine and costs no
 * allocation; only a wait makes a task record (lwait_task) and hands that
 * coroutine to it, and the bridge takes another from a small pool.
 *
 * Writing a C function that waits (moonport.sleep is the example: lwait.c):
 *
 *   static int my_read(lua_State *L)            -- pushed by lwait_pushfunction
 *   {
 *       ...check the arguments, raising with lb_argerror...
 *       struct lwait_task *t = lwait_begin(L, "sock:receive"); -- raises if it may not wait
 *       ...arm a libev watcher that remembers t...
 *       return lwait_yield(L);
 *   }
 *   static void on_ready(struct ev_loop *loop, ev_io *w, int revents)
 *   {
 *       ...stop the watcher...
 *       lua_State *co = lwait_thread(t);
 *       lua_pushnil(co); lua_pushliteral(co, "timeout");   -- what my_read returns
 *       lwait_resume(t, 2);                                -- t may be freed now
 *   }
 *
 * Rules: each lwait_begin is followed by exactly one lwait_resume of that
 * task (a wait must always end: give it a timeout); resume only from a
 * libev callback (no Lua code running; if some is, the resume is put off
 * to the next loop iteration); results are pushed onto lwait_thread(t) and
 * become the C function's return values. A wait that concerns a
 * connection (a later ws method) should return nil, "closed" once
 * lwait_conn_open(t) is 0; one that does not (moonport.sleep) just returns.
 * What happens when the task's function ends (finished, raised, waits
 * again) is the bridge's business (lbridge.c): the caller of lwait_resume
 * need not care. */
#ifndef MOONPORT_LWAIT_H
#define MOONPORT_LWAIT_H

#include <lua.h>
#include <stdint.h>

#include "lbridge.h"

struct server;

/* What a task runs, which says what its end means (lbridge_task_end). */
enum lwait_kind { LW_CONNECT, LW_MESSAGE, LW_CLOSE, LW_DRAIN, LW_TIMER, LW_SPAWN };

struct lwait_task {
    lua_State *co;       /* its coroutine */
    int co_ref;          /* registry ref that keeps co alive */
    struct lb_call call; /* as recorded while it runs; fn_ref is its own ref */
    uint8_t kind;        /* enum lwait_kind */
    uint8_t armed;       /* a wait began (lwait_begin) and has not ended */
    uint8_t queued;      /* on the ready list: resumed at the next iteration */
    int nresults;        /* for a queued resume */
    char *path;          /* a connection handler's request path, for its log lines */
    struct lwait_task *next; /* the ready list */
    struct lwait_task *all_prev, *all_next; /* every suspended task, to free at exit */
};

/* ---- For C functions that wait ---- */

/* Push a Lua function that apps call as fname ("moonport.sleep"): it
 * raises "fname: cannot wait here (...)" where a wait is impossible (at
 * load time, inside a function called from C such as require, tostring or
 * table.sort's comparator, or in a coroutine the app made), and otherwise
 * calls f with the same arguments, returning what f returns. f may then
 * call lwait_begin and lwait_yield. nup values on the stack become f's
 * upvalues (popped). */
void lwait_pushfunction(lua_State *L, lua_CFunction f, const char *fname, int nup);

/* Inside such an f: the running task, marked as waiting. Raises (the
 * message names fname) if this code may not wait. Check the arguments
 * first: between lwait_begin and lwait_yield nothing may raise (the task
 * would be marked as waiting and never resumed). */
struct lwait_task *lwait_begin(lua_State *L, const char *fname);

/* Inside such an f, after lwait_begin and arming what will end the wait:
 * `return lwait_yield(L);` suspends the task. */
int lwait_yield(lua_State *L);

/* Where the results of the wait go: push them here, then lwait_resume. */
static inline lua_State *lwait_thread(struct lwait_task *t)
{
    return t->co;
}

/* End the wait: the task goes on with the top nresults values of
 * lwait_thread(t) as f's return values. t may be freed when this returns. */
void lwait_resume(struct lwait_task *t, int nresults);

/* The connection whose handler the task runs (0: none: a moonport timer,
 * a spawned function), and, for a waiting on_connect, on_message or
 * on_drain, whether that connection can still be sent to (0 once it is
 * closing or gone; always 0 for other tasks: a wait that concerns a ws
 * object should ask the object). */
uint64_t lwait_conn_id(const struct lwait_task *t);
int lwait_conn_open(const struct lwait_task *t);

/* ---- For the bridge ---- */

/* Register moonport.sleep and moonport.spawn in the module table on top. */
void lwait_open(lua_State *L, struct server *srv);

/* Run the function below nargs arguments on co (the bridge's reused
 * coroutine, lb->co with lb->co_ref, or one from lwait_co_take) as call says. Returns 0
 * (done: co is ready for reuse, its stack emptied), -1 (raised: the message
 * with its traceback is pushed on lb->L, co is dropped and lb->co replaced
 * if it was that one) or LB_WAITING (*task holds co now, with kind; if co
 * was lb->co, lb->co is a fresh coroutine). */
int lwait_run(struct lbridge *lb, lua_State *co, int co_ref, struct lb_call *call, int nargs,
              int kind, struct lwait_task **task);

/* A coroutine (and its registry ref) for a run that cannot use lb->co,
 * which Lua code is running on; lwait_co_give returns one not used. */
lua_State *lwait_co_take(struct lbridge *lb, int *ref);
void lwait_co_give(struct lbridge *lb, lua_State *co, int ref);

/* Tasks now suspended: for tests and the leak check (moonport.waiting). */
long lwait_count(void);

/* Free everything at exit: every suspended task (their coroutines go with
 * the Lua state). Whoever armed a wait stops its own watchers. */
void lwait_close(struct lbridge *lb);

#endif
