/* lbridge: the only place C calls into Lua. It owns the lua_State, loads
 * each app file into its own environment, and runs the handlers through one
 * protected call with a traceback, so that a Lua error is a log line and a
 * closed connection, never an unwound C frame. The ws userdata (lconn.c)
 * and the moonport module (lhost.c) are the Lua-visible types. */
#ifndef MOONPORT_LBRIDGE_H
#define MOONPORT_LBRIDGE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "conn.h"
#include "lalloc.h"

struct server;
struct conn;
struct metrics_app;
struct route_match;

/* What a file looked like when it was loaded: a change means reload. */
struct file_sig {
    long long mtime_ns, ctime_ns, size;
    unsigned long long ino;
};

/* An app: one Lua file, shared by every route that names it. Apps are never
 * freed before exit: a connection may still point at a deleted one. */
struct app {
    char *name;  /* for logs: "echo" */
    char *file;  /* path of the Lua file */
    int ref;     /* registry ref of the current handlers table */
    /* on_connect, on_message, on_close, on_drain as loaded, or LUA_NOREF.
     * The first three make a file of the apps directory a route (reload.c). */
    int handler_ref[4];
    unsigned version;
    struct file_sig sig;
    int removed;      /* its file is gone: no routes lead to it */
    int dirty;        /* a module it requires changed: reload it */
    char **patterns;  /* the routes that serve it, to restore them */
    size_t npatterns;
    struct metrics_app *metrics; /* its counts (metrics.h): never NULL once made */
    struct app *next;
};

/* A module required from a watched directory, by an app or by another
 * module: who uses it is what a change to it must reload. */
struct module {
    char *name;  /* as given to require */
    char *file;
    struct file_sig sig;
    struct app **users;       /* apps that required it while loading */
    size_t nusers;
    struct module **parents;  /* modules that required it */
    size_t nparents;
    int stale;                /* scratch for reload.c */
    struct module *next;
};

/* What Lua code is running, and for whom: the bridge sets it around every
 * call into Lua. moonport.log names the app and connection from it, a timer
 * belongs to the app whose code created it, an argument error that a tail
 * call has left without a Lua caller is traced back to the function the
 * bridge called, and while one is set, no other handler may start (an
 * on_close it would cause waits: see lbridge_close). */
struct lb_call {
    struct app *app;     /* the app whose code runs (NULL only for a timer
                            made outside any app's code: none today) */
    uint64_t conn_id;    /* the connection whose handler (or ws:after/every
                            timer) runs; 0: none (module level, on_reload,
                            a moonport.after/every callback) */
    int fn_ref;          /* registry ref of the function called */
    struct lb_call *prev;
};

/* For C code that may end connections outside any Lua call, and must not
 * run Lua meanwhile (a publish from another worker, mesh.c): between
 * lbridge_hold and lbridge_unhold, an on_close waits as it does inside a
 * call, and lbridge_unhold runs those that waited. */
struct lbridge;
void lbridge_hold(struct lbridge *lb, struct lb_call *hold);
void lbridge_unhold(struct lbridge *lb, struct lb_call *hold);

struct lb_deferred_close; /* lbridge.c */
struct lb_waiting;        /* lbridge.c */
struct lwait_task;        /* lwait.h */
struct conn_connect;      /* conn.c */

/* lbridge_connect: on_connect waits (lwait.h); conn.c then hands over what
 * the answer needs (lbridge_connect_kept). */
#define LB_WAITING 1

/* Messages per protected call at most (see lbridge_message). */
#define LB_BATCH_MAX 64

/* The messages one read brought from one connection, waiting to be handed
 * to on_message together: one protected call runs a small Lua loop that
 * calls on_message once per message. The first part is read and written by
 * that loop through LuaJIT's FFI, which declares the same layout
 * (lbridge.c): keep the two in step. */
struct lb_batch_shared {
    const uint8_t *state; /* &conn->state: the loop stops once it is not CONN_OPEN */
    int32_t cur;          /* the message on_message has now, from 1; 0 outside a batch */
    uint8_t binary[LB_BATCH_MAX]; /* each message's kind */
    /* Each message's bytes where they stay put until the batch is
     * dispatched (the read buffer, so under 4 GiB), which the loop makes
     * the Lua string from; NULL: the message is a Lua string already, in
     * the batch table. A 32-bit length, as a number the loop reads without
     * boxing it when it runs interpreted. */
    const uint8_t *bytes[LB_BATCH_MAX];
    uint32_t bytes_len[LB_BATCH_MAX];
};

struct lb_batch {
    struct lb_batch_shared shared;
    int n;                /* messages waiting */
    int counted;          /* of those delivered, how many c->msgs_in counts */
    struct conn *c;       /* whose they are; NULL when none wait */
    size_t len[LB_BATCH_MAX];
};

struct lbridge {
    lua_State *L;
    struct lalloc alloc; /* L's heap */
    struct lb_call *call; /* NULL between calls */
    struct lb_deferred_close *deferred; /* on_close calls waiting for the
                                           running call to return */
    size_t ndeferred, deferred_cap;
    /* The messages waiting for on_message, and the one it has now: a text
     * message was checked as UTF-8 on its way in, so ws:send of this very
     * string need not check it again (lb_checked_text). */
    struct lb_batch batch;
    int batch_ref;    /* registry ref of the table holding the waiting strings */
    int dispatch_ref; /* registry ref of the Lua loop that hands them over */
    int text_ref, binary_ref; /* the kind strings, "text" and "binary" */
    const char *text_str, *binary_str; /* their bytes: Lua strings are interned,
                                          so a kind is recognised by address */
    int gc_pause;                      /* the pause last given to the collector */
    /* Messages and their bytes handed to on_message since start, as
     * lbridge_tune_gc last saw them, and their mean size, recently. */
    uint64_t gc_msgs, gc_bytes, gc_seen_msgs, gc_seen_bytes;
    size_t gc_msg_size;
    size_t gc_trim_kib; /* malloc's trim threshold as last raised; 0: glibc's */
    long gc_trim_below; /* malloc_trim once the Lua heap is down to this (KiB); 0: no */
    double gc_trimmed;  /* when malloc_trim last ran (ev_now) */
    /* The coroutine handlers run in while nobody waits (lwait.h): reused
     * from call to call, replaced when a handler waits in it. */
    lua_State *co;
    int co_ref;
    /* Connections whose handler waits (lbridge.c), by id: their later
     * events queue there. nwaiting is 0 on the fast path. */
    struct lb_waiting **waiting;
    size_t nwaiting;
    struct server *srv;
    struct app *apps;
    struct module *modules;
    char **watched; /* directories whose modules are tracked */
    size_t nwatched;
};

struct lbridge *lbridge_new(struct server *srv, const char *apps_dir, char *err, size_t errlen);
void lbridge_free(struct lbridge *lb);

/* Load (once per file) the app in file. On error returns NULL with err set
 * to "file:line: message". */
struct app *lbridge_app(struct lbridge *lb, const char *file, const char *name, char *err,
                        size_t errlen);

/* Run the app's file again in a fresh environment. If it loads, returns a
 * table, and its on_reload(old_app) (if any) succeeds, the new table
 * replaces the old for every connection from its next event on. Otherwise
 * nothing changes. Returns 0, or -1 with err set to file:line and why. */
int lbridge_reload(struct lbridge *lb, struct app *a, char *err, size_t errlen);

/* Make require(name) return the app's current table, if name leads to the
 * app's file: a file of the apps directory then runs once per version, not
 * once as an app and again through require. */
void lbridge_provide(struct lbridge *lb, const struct app *a, const char *name);

/* Drop a module from package.loaded, so the next require runs its file. */
void lbridge_forget_module(struct lbridge *lb, const char *name);

/* The app loaded from file, or NULL. */
struct app *lbridge_find(struct lbridge *lb, const char *file);

/* Track modules required from this directory (and below). */
void lbridge_watch_dir(struct lbridge *lb, const char *dir);

/* Read a file's signature; 0, or -1 if it cannot be stat'ed. */
int file_sig_read(const char *path, struct file_sig *sig);
int file_sig_equal(const struct file_sig *a, const struct file_sig *b);

/* Handshake done and routed (c->req holds the request): create the ws
 * object and run on_connect. Afterwards conn_reply(c) says accept or reject.
 * Returns 0, -1 if the app raised (answer 500), or LB_WAITING if it waits:
 * then the caller passes what the answer needs with lbridge_connect_kept,
 * and the bridge calls conn_connect_done once on_connect has returned. */
int lbridge_connect(struct lbridge *lb, struct conn *c);
void lbridge_connect_kept(struct lbridge *lb, struct conn *c, struct conn_connect *cc);

/* lwait.c's calls into the bridge. A task's code runs again (enter 1) or
 * has stopped running (0): set up what its kind needs meanwhile. */
void lbridge_task_enter(struct lbridge *lb, struct lwait_task *t, int enter);
/* A task's function has ended (rc 0), or raised (-1: the message and its
 * traceback on lb->L, which this pops): log it, and let its connection's
 * queued events go on. */
void lbridge_task_end(struct lbridge *lb, struct lwait_task *t, int rc);
/* Log a timer's or a spawned function's error (on lb->L's top, popped). */
void lbridge_task_failed(struct lbridge *lb, struct app *app, uint64_t conn_id, int kind);
/* Is the connection id, whose handler waits, still one that can be sent to? */
int lbridge_conn_open(struct lbridge *lb, uint64_t id);
/* Push the traceback of the coroutine co that failed, with the message on
 * L's top (which it replaces); the bridge's own frames are left out. */
void lb_push_traceback(lua_State *L, lua_State *co);

/* A whole message arrived on c and waits, with the others of the same
 * read, for lbridge_dispatch; when LB_BATCH_MAX wait, they are dispatched
 * at once. If stable, data stays as it is until then (the read buffer): the
 * dispatch loop makes the Lua string from it. Otherwise the string is made
 * now (data may be overwritten as soon as this returns). The connection
 * code must dispatch before anything else that writes to c or closes it (a
 * control frame, a protocol error, the end of the read), so that frames go
 * out in the order of one call per message. */
void lbridge_message_slow(struct lbridge *lb, struct conn *c, const uint8_t *data, size_t len,
                          int binary, int stable);
/* The usual case inline, as it comes once per message: a message in the
 * read buffer joining its connection's batch, with room for one more after
 * it. (1 is app->handler_ref's on_message: see lbridge.c's H_MESSAGE.) */
/* One more message in c's batch: bytes are where the dispatch loop makes
 * its string, or NULL when the string is made already (batch_ref). */
static inline void lb_batch_add(struct lb_batch *b, struct conn *c, const uint8_t *bytes,
                                size_t len, int binary)
{
    int n = b->n;
    b->shared.bytes[n] = bytes;
    b->shared.bytes_len[n] = (uint32_t)len; /* read only with bytes, when it fits */
    b->len[n] = len;
    b->shared.binary[n] = (uint8_t)(binary != 0);
    b->c = c;
    b->n = n + 1;
}
static inline void lbridge_message(struct lbridge *lb, struct conn *c, const uint8_t *data,
                                   size_t len, int binary, int stable)
{
    struct lb_batch *b = &lb->batch;
    int n = b->n;
    if (stable && len <= UINT32_MAX && (n == 0 || b->c == c) && n < LB_BATCH_MAX - 1 &&
        c->app->handler_ref[1] != LUA_NOREF) {
        lb_batch_add(b, c, data, len, binary);
        return;
    }
    lbridge_message_slow(lb, c, data, len, binary, stable);
}

/* Hand the waiting messages to on_message, in order, in one protected call.
 * After each, delivery stops if the connection is no longer open (the
 * handler closed it, say): the rest are dropped, as data after our close
 * frame is. An error in one is logged and closes the connection with 1011;
 * no later message reaches the app. Does nothing if none wait. */
void lbridge_dispatch(struct lbridge *lb);

/* Count, in c->msgs_in and c->bytes_in, the messages of c's batch that have
 * reached on_message so far (the access log reads them, and a connection
 * can end inside a handler). */
void lbridge_settle(struct lbridge *lb, struct conn *c);

/* Is (data, len) a copy of the text message on_message has now, checked
 * UTF-8 on its way in? Compared by content, not by address: the handler may
 * have let go of its string, and another taken its place. Only messages
 * whose checked bytes are still in place (stable) are known. */
static inline int lb_checked_text(const struct lbridge *lb, const char *data, size_t len)
{
    const struct lb_batch_shared *b = &lb->batch.shared;
    int i = b->cur - 1;
    return i >= 0 && !b->binary[i] && b->bytes[i] && len == b->bytes_len[i] &&
           memcmp(data, b->bytes[i], len) == 0;
}

/* Run c's on_close. A handler is never entered from inside another call into
 * Lua: when Lua code is running (a ws:send of its overflowed c's queue, say),
 * the call waits, with the ws object, code and reason, until the outermost
 * running call returns, and runs then. By that time the ws object may be
 * detached from c (its methods return nil, "closed"); ws.id, ws.data and
 * ws.request are as they were. */
void lbridge_close(struct lbridge *lb, struct conn *c, uint16_t code, const char *reason,
                   size_t reason_len);

/* c's output queue went over limits.send_buffer and has drained (conn.c
 * says how far): run its app's on_drain(ws), if it has one. Only from the
 * server's own callbacks, never inside another call into Lua. An error is
 * logged and closes c with 1011, as for on_message. */
void lbridge_drain(struct lbridge *lb, struct conn *c);

/* Run a timer's callback, on the stack below its nargs arguments, as app's
 * code, for connection conn_id (0: a moonport.after/every timer, which
 * belongs to no connection). An error is logged ("app NAME: error in a
 * timer callback: ...", or "app NAME conn ID: ...") and is never fatal. */
void lbridge_timer(struct lbridge *lb, struct app *app, uint64_t conn_id, int nargs);

/* Free the machine code of every compiled trace (see lbridge.c): after a
 * reload, the old version's code would otherwise stay for good. */
void lbridge_flush_jit(struct lbridge *lb);

/* Once per event-loop iteration: keep the garbage collector's pause in
 * step with the size of the Lua heap (see lbridge.c). */
void lbridge_tune_gc(struct lbridge *lb);

/* The app closes c (ws:close): messages of c still queued behind a waiting
 * handler are dropped, as the rest of a batch is after a close. */
void lbridge_app_closes(struct lbridge *lb, struct conn *c);

/* The conn is going away: detach its ws object (methods then return
 * nil, "closed") and drop its refs; messages still queued behind its
 * waiting handler keep the ws object for their late on_message. */
void lbridge_release(struct lbridge *lb, struct conn *c);

/* Let go of a registry ref that kept a queued payload alive. */
void lbridge_unref(struct lbridge *lb, int ref);

/* Protected call for anything in the bridge: nargs arguments above the
 * function on the stack, with a traceback handler. Returns 0, or -1 on an
 * error: with what, the error is logged as "what: message" and popped;
 * with what NULL, the message (with its traceback) is left on the stack for
 * the caller to log and pop. */
int lb_pcall(lua_State *L, int nargs, int nresults, const char *what);

/* Argument errors, for the C functions apps call. fname is the name as the
 * app writes it: "ws:send" (a method: its self is not counted, so the
 * argument at stack index 2 is #1) or "moonport.after". The message starts
 * with the file:line of the app's code that made the call, also when a tail
 * call ("return ws:reject(...)") has left no Lua caller on the stack: then
 * the function the bridge called (and the functions it can reach) is
 * searched for a tail call of that method. Only this error path pays.
 * Each raises and never returns. */
int lb_argerror(lua_State *L, int idx, const char *fname, const char *msg);
int lb_typeerror(lua_State *L, int idx, const char *fname, const char *expected);
/* Raise "file:line: msg" located as lb_argerror does; fname may be NULL. */
int lb_error(lua_State *L, const char *fname, const char *fmt, ...);

/* luaL_check* and luaL_opt* that name fname in their errors. */
static inline const char *lb_checklstring(lua_State *L, int idx, const char *fname, size_t *len)
{
    const char *s = lua_tolstring(L, idx, len);
    if (!s)
        lb_typeerror(L, idx, fname, "string");
    return s;
}

/* One API call when the argument is given (ws:send's kind is, on the hot
 * path), a second only when it is not a string. */
static inline const char *lb_optlstring(lua_State *L, int idx, const char *fname,
                                        const char *def, size_t *len)
{
    const char *s = lua_tolstring(L, idx, len);
    if (s)
        return s;
    if (!lua_isnoneornil(L, idx))
        lb_typeerror(L, idx, fname, "string");
    if (len)
        *len = def ? strlen(def) : 0;
    return def;
}

static inline lua_Number lb_checknumber(lua_State *L, int idx, const char *fname)
{
    if (!lua_isnumber(L, idx))
        lb_typeerror(L, idx, fname, "number");
    return lua_tonumber(L, idx);
}

static inline lua_Integer lb_optinteger(lua_State *L, int idx, const char *fname,
                                        lua_Integer def)
{
    if (lua_isnoneornil(L, idx))
        return def;
    if (!lua_isnumber(L, idx))
        lb_typeerror(L, idx, fname, "number");
    return lua_tointeger(L, idx);
}

static inline void lb_checktype(lua_State *L, int idx, const char *fname, int type)
{
    if (lua_type(L, idx) != type)
        lb_typeerror(L, idx, fname, lua_typename(L, type));
}

/* The chunk names of the bridge's own Lua code that runs between the app's
 * frames: on_message's loop (lbridge.c) and ws:send (lconn.c). Error
 * locations and tracebacks leave their frames out. */
#define LB_DISPATCH_CHUNK "moonport.batch"
#define LB_SEND_CHUNK "moonport.send"
#define LB_WAIT_CHUNK "moonport.wait"

/* Load a chunk of the bridge's own Lua, src (len bytes, named name), and
 * require(module) for it: pushes the chunk, then the module's value, its
 * first argument. Returns 0, or -1 with the stack as it was (the module is
 * missing, or is not a table). */
int lb_load_with(lua_State *L, const char *module, const char *src, size_t len,
                 const char *name);

/* lconn.c */
void lconn_open(lua_State *L);
/* Push a new ws object for c; returns its registry ref (the object is also
 * pushed). */
int lconn_new(lua_State *L, struct conn *c);
/* The topic argument at idx of the function fname (a string of 1 to
 * TOPIC_NAME_MAX bytes), or raise. */
const char *lconn_checktopic(lua_State *L, int idx, const char *fname, size_t *len);
/* A publish whose topic, data and kind are at idx, idx + 1, idx + 2: check
 * them (raising as ws:send does), queue the message to the topic's
 * subscribers but skip, push how many (or nil, "closed" when skip can no
 * longer send). */
int lconn_fanout(lua_State *L, int idx, const char *fname, struct server *srv,
                 struct conn *skip);
/* Push ws.request of the ws object at index ud. */
void lconn_push_request(lua_State *L, int ud);
/* The connection ended: the ws object forgets it and drops its registry
 * ref. If the app has not read ws.request yet, the object takes c->req, so
 * that it still can. */
void lconn_detach(lua_State *L, struct conn *c);
/* Cancel the ws:after/every timers of c's ws object (c->lua_ref is set). */
void lconn_cancel_timers(lua_State *L, struct conn *c);
/* May the ws object at idx have timers fire, or be given new ones: as for
 * ws:send, its connection is open (or in on_connect: not once the server
 * has sent its close frame), and on_close has not started. */
int lconn_timers_allowed(lua_State *L, int idx);

/* lhost.c: register package.preload.moonport */
void lhost_open(lua_State *L, struct server *srv);
/* Check a timer's arguments, seconds at idx and the function after it, for
 * fname ("ws:every"); raises on misuse, else returns the seconds. */
double lhost_timer_check(lua_State *L, int idx, const char *fname, int repeat);
/* Push a new armed timer that calls the function at index fn after
 * seconds (and every seconds, if repeat) as app's code: fn(timer), or
 * fn(ws, timer) when ws (an index, or 0) is a ws object, whose connection
 * (conn_id) it then belongs to (see lconn_timers_allowed). */
void lhost_timer_start(lua_State *L, struct server *srv, double seconds, int repeat, int fn,
                       int ws, struct app *app, uint64_t conn_id);
/* Disarm the timer at idx, if it is one and armed: 1 if it was, else 0. */
int lhost_timer_cancel(lua_State *L, int idx);

#endif
