/* lredis: Redis from handlers, waiting without blocking. moonport.redis(url)
 * makes a client: one hiredis async connection (its libev adapter), opened
 * by the first command and again by the first one after it was lost. Every
 * command, from any handler, goes out on that connection back to back, so
 * many handlers pipeline naturally; each waits (lwait.h) for its reply, its
 * timeout or the end of the connection, whichever comes first.
 *
 * It owns the clients, their requests and their connections. A request is
 * on its client's list while a task waits on it; once the task is let go
 * (answered, timed out, failed) it leaves the list at once and is freed
 * when hiredis has called back for each of its commands, so a late reply
 * resumes nothing. While a request waits, the registry holds its client
 * (a yielded C function's arguments are not on the coroutine's stack any
 * more). Lua code runs only at the end of a callback of this file (one
 * resume, and nothing of ours touched after it): where several tasks must
 * be let go at once, each gets its answer pushed and its own timer set to
 * fire now. It never blocks the loop: host names go through the shared
 * resolver (resolve.h), never hiredis's own getaddrinfo; commands made
 * while it works wait on the list unsent, in order. */
#include "lredis.h"

#include <arpa/inet.h>
#include <ev.h>
#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bpwire.h"
#include "lbridge.h"
#include "log.h"
#include "lwait.h"
#include "resolve.h"
#include "server.h"

#define LREDIS_MT "moonport.redis"
#define LPIPE_MT "moonport.redis.pipeline"
#define DEFAULT_TIMEOUT 5.0  /* seconds, for the connect and for each command */
#define MAX_INFLIGHT 100000  /* commands that may wait for a reply on one connection */
#define MAX_PENDING ((size_t)64 << 20) /* bytes of them: a server that reads nothing
                                          holds this much in hiredis's buffer at most */
#define CACHE_MAX 512        /* command closures kept per type (r:get, p:set ...) */

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

struct rreq;

struct rclient {
    struct ev_loop *loop;
    redisAsyncContext *ac;  /* NULL: none; the next command connects */
    struct resolve_req *resolving; /* the host's address is coming: commands wait unsent */
    ev_timer connect_timer; /* while ac connects */
    double timeout;         /* seconds */
    int up;                 /* ac has connected */
    int self_ref;           /* the registry holds the client while a request waits */
    long inflight;          /* callbacks hiredis owes on ac (ours and AUTH/SELECT) */
    size_t pending;         /* bytes of our commands on ac without all their replies */
    struct rreq *head, *tail; /* requests a task waits on, oldest first */
    struct bp_url url;
};

struct rreq {
    struct rclient *c;     /* while on c's list */
    struct lwait_task *t;  /* NULL once its task was let go */
    ev_timer timer;        /* its timeout; set to fire now when done is set */
    int want, got;         /* replies it waits for, and has */
    int inflight;          /* callbacks hiredis still owes it */
    size_t bytes;          /* of its commands, counted in its client's pending once sent */
    uint8_t pipeline;      /* its answer is a table of want replies */
    uint8_t pushed;        /* that table is on the task's stack */
    uint8_t done;          /* results (this many) already pushed: the timer ends it */
    char *cmds;            /* unsent commands, formatted, back to back; or NULL */
    size_t *lens;          /* their lengths (want of them): &len1 for one command */
    size_t len1;
    struct rreq *prev, *next;
};

/* The pipeline object: commands recorded, sent by p:commit(). */
struct rpipe {
    char *cmds;
    size_t len, cap;
    size_t *lens;
    int n, cap_n;
    int in_multi; /* a MULTI is recorded without its EXEC or DISCARD yet */
};

/* ---- requests ---- */

static void req_free(struct rreq *r)
{
    free(r->cmds);
    if (r->lens != &r->len1)
        free(r->lens);
    free(r);
}

static void req_link(lua_State *L, int self, struct rclient *c, struct rreq *r)
{
    r->c = c;
    r->next = NULL;
    r->prev = c->tail;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    if (c->self_ref == LUA_NOREF) {
        lua_pushvalue(L, self);
        c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
}

/* Off its client's list; the client may be collected once its list is empty. */
static void req_unlink(lua_State *L, struct rreq *r)
{
    struct rclient *c = r->c;
    if (!c)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else
        c->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        c->tail = r->prev;
    r->c = NULL;
    r->prev = r->next = NULL;
    if (!c->head && c->self_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, c->self_ref);
        c->self_ref = LUA_NOREF;
    }
}

/* Let the task go on with the n values pushed on its stack. Lua runs inside
 * (unless some runs now): the caller touches nothing of this file after. */
static void req_finish(struct rreq *r, int n)
{
    struct lwait_task *t = r->t;
    ev_timer_stop(r->c->loop, &r->timer);
    r->t = NULL;
    req_unlink(lwait_thread(t), r);
    if (!r->inflight)
        req_free(r);
    lwait_resume(t, n);
}

/* Push nil, why for r's task now, and end its wait from its own timer:
 * for a caller that lets several tasks go, or that Lua code runs under. */
static void req_end_soon(struct rreq *r, const char *why)
{
    lua_State *co = lwait_thread(r->t);
    if (r->pushed)
        lua_pop(co, 1);
    r->pushed = 0;
    lua_pushnil(co);
    lua_pushstring(co, why);
    r->done = 2;
    ev_timer_stop(r->c->loop, &r->timer);
    ev_timer_set(&r->timer, 0, 0);
    ev_timer_start(r->c->loop, &r->timer);
}

static void req_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct rreq *r = container_of(w, struct rreq, timer);
    int n = r->done;
    if (!n) {
        lua_State *co = lwait_thread(r->t);
        if (r->pushed)
            lua_pop(co, 1);
        lua_pushnil(co);
        lua_pushliteral(co, "timeout");
        n = 2;
    }
    req_finish(r, n);
}

/* ---- replies ---- */

/* A Redis reply as a Lua value: status and bulk strings as strings,
 * integers as numbers, nil as moonport.null, arrays as tables; an error
 * inside an array as {false, "ERR ..."} (as lua-resty-redis does). */
static void push_reply(lua_State *co, const redisReply *rep)
{
    switch (rep->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(co, rep->str, rep->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(co, (lua_Number)rep->integer);
        break;
    case REDIS_REPLY_ARRAY:
        lua_checkstack(co, 4);
        lua_createtable(co, (int)rep->elements, 0);
        for (size_t i = 0; i < rep->elements; i++) {
            push_reply(co, rep->element[i]);
            lua_rawseti(co, -2, (int)i + 1);
        }
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(co, 2, 0);
        lua_pushboolean(co, 0);
        lua_rawseti(co, -2, 1);
        lua_pushlstring(co, rep->str, rep->len);
        lua_rawseti(co, -2, 2);
        break;
    default: /* REDIS_REPLY_NIL */
        lua_pushlightuserdata(co, NULL);
        break;
    }
}

/* Why a connection ended, in OpenResty's words: "closed" when the server
 * closed it or we did, else hiredis's message ("connection refused"). */
static const char *conn_error(const redisAsyncContext *ac)
{
    static char buf[sizeof ac->c.errstr];
    if (!ac->c.err || ac->c.err == REDIS_ERR_EOF || !ac->c.errstr[0])
        return "closed";
    snprintf(buf, sizeof buf, "%s", ac->c.errstr);
    if (buf[0] >= 'A' && buf[0] <= 'Z' && buf[1] >= 'a' && buf[1] <= 'z')
        buf[0] = (char)(buf[0] - 'A' + 'a');
    return buf;
}

static void detach(struct rclient *c, const char *why, int lost);

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rreq *r = priv;
    struct rclient *c = ac->data;
    const redisReply *rep = reply;
    if (c)
        c->inflight--;
    if (!--r->inflight && c)
        c->pending -= r->bytes;
    if (!r->t || r->done) { /* let go already: nothing waits for this */
        if (!r->t && !r->inflight)
            req_free(r);
        return;
    }
    lua_State *co = lwait_thread(r->t);
    if (!rep) { /* the connection ended: hiredis calls back for each command */
        const char *why = conn_error(ac);
        if (c)
            detach(c, why, 1); /* so that a command the task makes next connects again */
        if (r->pushed)
            lua_pop(co, 1);
        r->pushed = 0;
        lua_pushnil(co);
        lua_pushstring(co, why);
        req_finish(r, 2);
        return;
    }
    if (!r->pipeline) {
        if (rep->type == REDIS_REPLY_ERROR) {
            lua_pushboolean(co, 0);
            lua_pushlstring(co, rep->str, rep->len);
            req_finish(r, 2);
        } else {
            push_reply(co, rep);
            req_finish(r, 1);
        }
        return;
    }
    if (!r->pushed) {
        lua_createtable(co, r->want, 0);
        r->pushed = 1;
    }
    push_reply(co, rep);
    lua_rawseti(co, -2, ++r->got);
    if (r->got == r->want)
        req_finish(r, 1);
}

/* ---- connections ---- */

static void on_connect(const redisAsyncContext *ac, int status);
static void on_disconnect(const redisAsyncContext *ac, int status);

/* The client forgets its connection (hiredis is ending it, or we will). */
static void detach(struct rclient *c, const char *why, int lost)
{
    redisAsyncContext *ac = c->ac;
    if (!ac)
        return;
    if (lost && c->up)
        log_warn("redis: lost the connection to %s:%d (%s); the next command connects again",
                 c->url.host, c->url.port, why);
    ac->data = NULL;
    c->ac = NULL;
    c->up = 0;
    c->inflight = 0;
    c->pending = 0;
    ev_timer_stop(c->loop, &c->connect_timer);
}

/* End c's connection for why: each command waiting on it returns nil, why.
 * Lua may run inside (the NULL replies): the caller touches nothing after. */
static void conn_fail(struct rclient *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    detach(c, why, 0);
    ac->c.err = REDIS_ERR_OTHER;
    snprintf(ac->c.errstr, sizeof ac->c.errstr, "%s", why);
    redisAsyncFree(ac); /* inside one of its callbacks, hiredis frees it after */
}

static void connect_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct rclient *c = container_of(w, struct rclient, connect_timer);
    if (c->ac)
        conn_fail(c, "timeout");
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rclient *c = ac->data;
    if (!c)
        return;
    if (status != REDIS_OK) { /* hiredis then calls back each command with NULL */
        detach(c, conn_error(ac), 0);
        return;
    }
    c->up = 1;
    ev_timer_stop(c->loop, &c->connect_timer);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct rclient *c = ac->data;
    if (c)
        detach(c, conn_error(ac), 1);
}

/* The answer to AUTH or SELECT, sent first on each connection: refused, the
 * connection is no good, and the commands behind fail with why. */
static void on_setup(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rclient *c = ac->data;
    const redisReply *rep = reply;
    if (c)
        c->inflight--;
    if (!c || !rep || rep->type != REDIS_REPLY_ERROR)
        return;
    char why[sizeof ac->c.errstr];
    snprintf(why, sizeof why, "%s failed: %.*s", (const char *)priv, (int)rep->len, rep->str);
    log_warn("redis: %s:%d: %s", c->url.host, c->url.port, why);
    conn_fail(c, why);
}

/* Open c's connection to addr, a numeric address (hiredis would resolve a
 * name with getaddrinfo on the loop's thread). 0, or -1 with why in err. */
static int conn_open(struct rclient *c, const char *addr, char *err, size_t errlen)
{
    redisAsyncContext *ac = redisAsyncConnect(addr, c->url.port);
    if (!ac) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (ac->c.err) {
        snprintf(err, errlen, "%s", conn_error(ac));
        redisAsyncFree(ac);
        return -1;
    }
    ac->data = c;
    redisLibevAttach(c->loop, ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->up = 0;
    c->inflight = 0;
    c->pending = 0;
    /* A server that vanished without a word (a partition) is noticed. */
    redisEnableKeepAlive(&ac->c);
    ev_timer_set(&c->connect_timer, c->timeout, 0);
    ev_timer_start(c->loop, &c->connect_timer);
    if (c->url.password[0]) {
        const char *argv[3] = {"AUTH"};
        size_t lens[3] = {4};
        int argc = 1;
        if (c->url.user[0]) {
            argv[argc] = c->url.user;
            lens[argc++] = strlen(c->url.user);
        }
        argv[argc] = c->url.password;
        lens[argc++] = strlen(c->url.password);
        if (redisAsyncCommandArgv(ac, on_setup, "AUTH", argc, argv, lens) == REDIS_OK)
            c->inflight++;
    }
    if (c->url.db) {
        char db[16];
        snprintf(db, sizeof db, "%d", c->url.db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, strlen(db)};
        if (redisAsyncCommandArgv(ac, on_setup, "SELECT", 2, argv, lens) == REDIS_OK)
            c->inflight++;
    }
    return 0;
}

static void on_resolved(void *data, const char *err, const struct sockaddr *sa, socklen_t salen);

/* Queue r's commands on c's connection, opening it if there is none (an
 * address at once; a name once the resolver answers: r stays unsent, and
 * on_resolved sends it). 0, or -1 with why in err (nothing of r was sent). */
static int req_send(struct rclient *c, struct rreq *r, char *err, size_t errlen)
{
    if (!c->ac && !c->resolving) {
        unsigned char tmp[sizeof(struct in6_addr)];
        const char *h = c->url.host;
        if (inet_pton(AF_INET, h, tmp) == 1 || inet_pton(AF_INET6, h, tmp) == 1) {
            if (conn_open(c, h, err, errlen) < 0)
                return -1;
        } else if (!(c->resolving = resolve_start(c->loop, h, c->url.port, on_resolved, c))) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    if (!c->ac)
        return 0;
    size_t bytes = 0;
    for (int i = 0; i < r->want; i++)
        bytes += r->lens[i];
    if (c->inflight + r->want > MAX_INFLIGHT || c->pending + bytes > MAX_PENDING) {
        snprintf(err, errlen, "too many commands in flight");
        return -1;
    }
    const char *p = r->cmds;
    for (int i = 0; i < r->want; i++) {
        if (redisAsyncFormattedCommand(c->ac, on_reply, r, p, r->lens[i]) != REDIS_OK) {
            if (i == 0) {
                snprintf(err, errlen, "closed");
                return -1;
            }
            r->want = i; /* cannot happen: a context refuses all or nothing */
            break;
        }
        p += r->lens[i];
        r->inflight++;
        c->inflight++;
        r->bytes += r->lens[i];
    }
    c->pending += r->bytes;
    free(r->cmds);
    if (r->lens != &r->len1)
        free(r->lens);
    r->cmds = NULL;
    r->lens = NULL;
    return 0;
}

/* The host's address, or why there is none: send the commands that waited
 * for it, or end their waits. No Lua runs here (req_end_soon). */
static void on_resolved(void *data, const char *err, const struct sockaddr *sa, socklen_t salen)
{
    (void)salen;
    struct rclient *c = data;
    char why[160], addr[INET6_ADDRSTRLEN];
    c->resolving = NULL;
    int ok = 0;
    if (err) {
        snprintf(why, sizeof why, "%s", err);
    } else if (!inet_ntop(sa->sa_family,
                          sa->sa_family == AF_INET6
                              ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                              : (const void *)&((const struct sockaddr_in *)sa)->sin_addr,
                          addr, sizeof addr)) {
        snprintf(why, sizeof why, "no such host");
    } else {
        ok = conn_open(c, addr, why, sizeof why) == 0;
    }
    for (struct rreq *r = c->head; r; r = r->next) {
        if (!r->cmds || r->done)
            continue;
        char send_err[160];
        if (!ok)
            req_end_soon(r, why);
        else if (req_send(c, r, send_err, sizeof send_err) < 0)
            req_end_soon(r, send_err);
    }
}

/* ---- arguments ---- */

/* Commands that change the connection for every handler sharing it, or
 * that break hiredis's pairing of replies with commands: why each is
 * refused, or NULL. In a pipeline (inpipe), MULTI, EXEC and DISCARD are
 * fine (nothing of another handler's can come between them there). */
/* With L NULL: whether name may be refused at all (r:get never is: its
 * closure skips the check). */
static const char *refused(lua_State *L, const char *name, int first, int inpipe)
{
    static const struct {
        const char *name, *why;
        int pipe_ok;
    } list[] = {
        {"subscribe", "pub/sub: use topics, which the backplane carries across nodes", 0},
        {"psubscribe", "pub/sub: use topics, which the backplane carries across nodes", 0},
        {"ssubscribe", "pub/sub: use topics, which the backplane carries across nodes", 0},
        {"unsubscribe", "pub/sub: use topics, which the backplane carries across nodes", 0},
        {"punsubscribe", "pub/sub: use topics, which the backplane carries across nodes", 0},
        {"sunsubscribe", "pub/sub: use topics, which the backplane carries across nodes", 0},
        {"monitor", "it would take the connection over", 0},
        {"select", "the connection is shared: name the db in the URL", 0},
        {"auth", "the connection is shared: put the user and password in the URL", 0},
        {"hello", "the connection is shared and speaks RESP2", 0},
        {"reset", "the connection is shared", 0},
        {"watch", "the connection is shared: another handler's commands would come between", 0},
        {"unwatch", "the connection is shared", 0},
        {"multi", "the connection is shared: send MULTI ... EXEC in a pipeline", 1},
        {"exec", "the connection is shared: send MULTI ... EXEC in a pipeline", 1},
        {"discard", "the connection is shared: send MULTI ... DISCARD in a pipeline", 1},
    };
    if (!L) /* only asked whether name is one that may be refused */
        inpipe = 0;
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
        if (strcasecmp(name, list[i].name) == 0)
            return inpipe && list[i].pipe_ok ? NULL : list[i].why;
    if (strcasecmp(name, "client") == 0 &&
        (!L || (lua_type(L, first) == LUA_TSTRING &&
                strcasecmp(lua_tostring(L, first), "reply") == 0)))
        return "replies are how commands and their waits are paired";
    return NULL;
}

/* Check the command made of *name (or, when it is NULL, the argument at
 * *first: then *name and *first are set past it) and the arguments from
 * *first to the top, each a string or a number (numbers are made strings in
 * place). Raises on a bad one; returns how many words the command has. */
static int check_command(lua_State *L, const char **name, int *first, const char *fname,
                         int inpipe, int maybe)
{
    int top = lua_gettop(L);
    if (!*name) {
        size_t n;
        if (lua_type(L, *first) != LUA_TSTRING)
            lb_typeerror(L, *first, fname, "string (a command name)");
        *name = lua_tolstring(L, *first, &n);
        if (n == 0)
            lb_argerror(L, *first, fname, "the command name is empty");
        (*first)++;
    }
    const char *why = maybe ? refused(L, *name, *first, inpipe) : NULL;
    if (why)
        lb_error(L, fname, "%s: %s is not available on moonport.redis (%s)", fname, *name, why);
    for (int i = *first; i <= top; i++) {
        int type = lua_type(L, i);
        if (type == LUA_TNUMBER) { /* integers as integers: 1e15, not "1e+15" */
            lua_Number x = lua_tonumber(L, i);
            char buf[32];
            if (x == floor(x) && fabs(x) < 9007199254740992.0)
                snprintf(buf, sizeof buf, "%lld", (long long)x);
            else
                snprintf(buf, sizeof buf, "%.17g", x);
            lua_pushstring(L, buf);
            lua_replace(L, i);
        } else if (type != LUA_TSTRING) {
            lb_typeerror(L, i, fname, "string or number");
        }
    }
    return 1 + (top >= *first ? top - *first + 1 : 0);
}

static char *put_count(char *p, char type, size_t n)
{
    char digits[24];
    int i = 0;
    do
        digits[i++] = (char)('0' + n % 10);
    while ((n /= 10));
    *p++ = type;
    while (i)
        *p++ = digits[--i];
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

static char *put_word(char *p, const char *s, size_t n)
{
    p = put_count(p, '$', n);
    memcpy(p, s, n);
    p += n;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* The checked command (check_command) in RESP for the wire: a malloc'd
 * string and its length in *len, or NULL when out of memory. Never raises.
 * (hiredis's own formatter spends more on sprintf than this does in all.) */
static char *format_command(lua_State *L, const char *name, int first, int argc, size_t *len)
{
    enum { HEAD = 1 + 20 + 2 }; /* "$" or "*", a count, CRLF */
    size_t nlen = strlen(name), total = HEAD + HEAD + nlen + 2, n;
    for (int i = 1; i < argc; i++) {
        lua_tolstring(L, first + i - 1, &n);
        total += HEAD + n + 2;
    }
    char *cmd = malloc(total);
    if (!cmd)
        return NULL;
    char *p = put_count(cmd, '*', (size_t)argc);
    p = put_word(p, name, nlen);
    for (int i = 1; i < argc; i++) {
        const char *s = lua_tolstring(L, first + i - 1, &n);
        p = put_word(p, s, n);
    }
    *len = (size_t)(p - cmd);
    return cmd;
}

/* ---- the client ---- */

static struct rclient *check_client(lua_State *L, const char *fname)
{
    struct rclient *c = luaL_testudata(L, 1, LREDIS_MT);
    if (!c)
        lb_typeerror(L, 1, fname, "redis client");
    return c;
}

/* Task t waits for r (its commands formatted in r->cmds) on c: the results
 * of the commands, or nil, err at once when they cannot be sent. */
static int client_wait(lua_State *L, struct lwait_task *t, struct rclient *c, struct rreq *r)
{
    char err[160];
    if (req_send(c, r, err, sizeof err) < 0) {
        t->armed = 0; /* no wait began after all */
        req_free(r);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    r->t = t;
    req_link(L, 1, c, r);
    ev_timer_init(&r->timer, req_timer, c->timeout, 0);
    ev_timer_start(c->loop, &r->timer);
    return lwait_yield(L);
}

/* r:get(...), r:set(...) and every command: upvalue 1 is its name, 2 the
 * name apps see ("redis:get"), 3 whether the name may be one refused
 * (refused); r:call(cmd, ...) has no upvalue 1. */
static int lredis_command(lua_State *L)
{
    const char *fname = lua_tostring(L, lua_upvalueindex(2));
    const char *name = lua_tostring(L, lua_upvalueindex(1));
    struct rclient *c = check_client(L, fname);
    int first = 2;
    int argc = check_command(L, &name, &first, fname, 0, lua_toboolean(L, lua_upvalueindex(3)));
    struct lwait_task *t = lwait_begin(L, fname); /* raises where it cannot wait */
    size_t len;
    char *cmd = format_command(L, name, first, argc, &len);
    struct rreq *r = cmd ? calloc(1, sizeof *r) : NULL;
    if (!r) {
        free(cmd);
        t->armed = 0; /* no wait began after all */
        return lb_error(L, fname, "%s: out of memory", fname);
    }
    r->cmds = cmd;
    r->lens = &r->len1;
    r->len1 = len;
    r->want = 1;
    return client_wait(L, t, c, r);
}

/* r:settimeout(ms): for the connect and each command made after. */
static int lredis_settimeout(lua_State *L)
{
    struct rclient *c = check_client(L, "redis:settimeout");
    lua_Number ms = lb_checknumber(L, 2, "redis:settimeout");
    if (!(ms > 0) || isinf(ms))
        return lb_argerror(L, 2, "redis:settimeout", "milliseconds must be a finite number over 0");
    c->timeout = ms / 1000.0;
    return 0;
}

/* End every wait on c with nil, "closed" (soon: see req_end_soon), and its
 * connection. */
static void client_close(struct rclient *c)
{
    if (c->resolving) {
        resolve_cancel(c->resolving);
        c->resolving = NULL;
    }
    for (struct rreq *r = c->head; r; r = r->next)
        if (!r->done)
            req_end_soon(r, "closed");
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        detach(c, "closed", 0);
        redisAsyncFree(ac); /* calls back each command: they are done */
    }
}

/* r:close(): waits on it return nil, "closed"; the next command connects
 * again. Returns true. */
static int lredis_close(lua_State *L)
{
    client_close(check_client(L, "redis:close"));
    lua_pushboolean(L, 1);
    return 1;
}

static int lredis_gc(lua_State *L)
{
    struct rclient *c = lua_touserdata(L, 1);
    /* A waiting task holds its client (self_ref): one can be collected with
     * requests only when the Lua state closes, after lwait_close has freed
     * every task. Let them go without resuming anything. */
    while (c->head) {
        struct rreq *r = c->head;
        ev_timer_stop(c->loop, &r->timer);
        r->t = NULL;
        req_unlink(L, r);
        if (!r->inflight)
            req_free(r);
    }
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        detach(c, "closed", 0);
        redisAsyncFree(ac);
    }
    if (c->resolving)
        resolve_cancel(c->resolving);
    ev_timer_stop(c->loop, &c->connect_timer);
    return 0;
}

static int lredis_tostring(lua_State *L)
{
    struct rclient *c = lua_touserdata(L, 1);
    lua_pushfstring(L, "redis client (%s:%d)", c->url.host, c->url.port);
    return 1;
}

/* ---- pipelines ---- */

static struct rpipe *check_pipe(lua_State *L, const char *fname)
{
    struct rpipe *p = luaL_testudata(L, 1, LPIPE_MT);
    if (!p)
        lb_typeerror(L, 1, fname, "redis pipeline");
    return p;
}

static void pipe_reset(struct rpipe *p)
{
    free(p->cmds);
    free(p->lens);
    memset(p, 0, sizeof *p);
}

/* p:get(...), p:set(...) and every command, and p:call(cmd, ...): recorded
 * for p:commit(); returns nothing. */
static int lpipe_command(lua_State *L)
{
    const char *fname = lua_tostring(L, lua_upvalueindex(2));
    const char *name = lua_tostring(L, lua_upvalueindex(1));
    struct rpipe *p = check_pipe(L, fname);
    if (p->n >= MAX_INFLIGHT)
        return lb_error(L, fname, "%s: a pipeline holds %d commands at most", fname,
                        MAX_INFLIGHT);
    int first = 2;
    int maybe = lua_toboolean(L, lua_upvalueindex(3));
    int argc = check_command(L, &name, &first, fname, 1, maybe);
    int multi = maybe && strcasecmp(name, "multi") == 0;
    int ends = maybe && (strcasecmp(name, "exec") == 0 || strcasecmp(name, "discard") == 0);
    if (multi && p->in_multi)
        return lb_error(L, fname, "%s: MULTI inside MULTI", fname);
    if (ends && !p->in_multi)
        return lb_error(L, fname, "%s: %s without MULTI", fname, name);
    size_t len;
    char *cmd = format_command(L, name, first, argc, &len);
    if (!cmd)
        return lb_error(L, fname, "%s: out of memory", fname);
    if (p->n == p->cap_n) {
        int cap = p->cap_n ? p->cap_n * 2 : 8;
        size_t *lens = realloc(p->lens, (size_t)cap * sizeof *lens);
        if (!lens) {
            free(cmd);
            return lb_error(L, fname, "%s: out of memory", fname);
        }
        p->lens = lens;
        p->cap_n = cap;
    }
    if (p->len + len > p->cap) {
        size_t cap = p->cap ? p->cap : 256;
        while (cap < p->len + len)
            cap *= 2;
        char *cmds = realloc(p->cmds, cap);
        if (!cmds) {
            free(cmd);
            return lb_error(L, fname, "%s: out of memory", fname);
        }
        p->cmds = cmds;
        p->cap = cap;
    }
    memcpy(p->cmds + p->len, cmd, len);
    free(cmd);
    p->len += len;
    p->lens[p->n++] = len;
    if (multi || ends)
        p->in_multi = multi;
    return 0;
}

/* p:commit(): sends the recorded commands back to back and waits once:
 * a table of their replies in order (an error reply as {false, "ERR ..."}),
 * or nil, err. The pipeline is empty again after. */
static int lpipe_commit(lua_State *L)
{
    struct rpipe *p = check_pipe(L, "pipeline:commit");
    if (p->in_multi)
        return lb_error(L, "pipeline:commit",
                        "pipeline:commit: a MULTI without its EXEC or DISCARD (the connection "
                        "is shared: the transaction must end in the pipeline)");
    lua_getfenv(L, 1);
    lua_rawgeti(L, -1, 1);
    struct rclient *c = luaL_testudata(L, -1, LREDIS_MT);
    if (!c)
        return lb_error(L, "pipeline:commit", "pipeline:commit: the pipeline has no client");
    lua_replace(L, 1); /* the client is self from here on */
    lua_settop(L, 1);
    if (!p->n) {
        lua_newtable(L);
        return 1;
    }
    struct lwait_task *t = lwait_begin(L, "pipeline:commit"); /* raises where it cannot wait */
    struct rreq *r = calloc(1, sizeof *r);
    if (!r) {
        t->armed = 0;
        return lb_error(L, "pipeline:commit", "pipeline:commit: out of memory");
    }
    r->cmds = p->cmds;
    r->lens = p->lens;
    r->want = p->n;
    r->pipeline = 1;
    memset(p, 0, sizeof *p); /* r owns its commands now */
    return client_wait(L, t, c, r);
}

/* p:cancel(): forgets the recorded commands. */
static int lpipe_cancel(lua_State *L)
{
    pipe_reset(check_pipe(L, "pipeline:cancel"));
    return 0;
}

static int lpipe_gc(lua_State *L)
{
    pipe_reset(lua_touserdata(L, 1));
    return 0;
}

/* r:pipeline(): a new, empty pipeline on r. */
static int lredis_pipeline(lua_State *L)
{
    check_client(L, "redis:pipeline");
    struct rpipe *p = lua_newuserdata(L, sizeof *p);
    memset(p, 0, sizeof *p);
    luaL_getmetatable(L, LPIPE_MT);
    lua_setmetatable(L, -2);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    lua_setfenv(L, -2);
    return 1;
}

/* __index of both types: the methods (upvalue 1), else a closure for the
 * command of that name, kept in the cache (upvalue 2) up to CACHE_MAX names.
 * Upvalue 3 is the type's prefix ("redis", "pipeline"); upvalue 4 is true
 * when the closures wait (the client's); upvalue 5 counts the cache. */
static int lindex(lua_State *L)
{
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    if (!lua_isnil(L, -1) || lua_type(L, 2) != LUA_TSTRING)
        return 1;
    lua_pop(L, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(2));
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    const char *prefix = lua_tostring(L, lua_upvalueindex(3));
    int waits = lua_toboolean(L, lua_upvalueindex(4));
    const char *fname = lua_pushfstring(L, "%s:%s", prefix, lua_tostring(L, 2));
    lua_pushvalue(L, 2);
    lua_insert(L, -2); /* name, fname */
    lua_pushboolean(L, refused(NULL, lua_tostring(L, 2), 0, 0) != NULL);
    if (waits)
        lwait_pushfunction(L, lredis_command, fname, 3);
    else
        lua_pushcclosure(L, lpipe_command, 3);
    lua_Integer n = lua_tointeger(L, lua_upvalueindex(5));
    if (n < CACHE_MAX) { /* past it, a name (made up at run time?) costs a closure per call */
        lua_pushvalue(L, 2);
        lua_pushvalue(L, -2);
        lua_rawset(L, lua_upvalueindex(2));
        lua_pushinteger(L, n + 1);
        lua_replace(L, lua_upvalueindex(5));
    }
    return 1;
}

/* moonport.redis(url): a client; it connects at its first command. */
static int lredis_new(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return lb_typeerror(L, 1, "moonport.redis", "string");
    const char *url = lua_tostring(L, 1);
    struct bp_url u;
    char err[200];
    if (bp_url_parse(url, &u, err, sizeof err) < 0)
        return lb_argerror(L, 1, "moonport.redis", err);
    struct server *srv = lua_touserdata(L, lua_upvalueindex(1));
    struct rclient *c = lua_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->loop = srv->loop;
    c->timeout = DEFAULT_TIMEOUT;
    c->self_ref = LUA_NOREF;
    c->url = u;
    ev_timer_init(&c->connect_timer, connect_timeout, DEFAULT_TIMEOUT, 0);
    luaL_getmetatable(L, LREDIS_MT);
    lua_setmetatable(L, -2);
    return 1;
}

/* A metatable with the lindex above over methods. */
static void new_type(lua_State *L, const char *mt, const char *prefix, int waits,
                     const luaL_Reg *methods, const luaL_Reg *waiting, lua_CFunction gc,
                     lua_CFunction tostring)
{
    luaL_newmetatable(L, mt);
    lua_newtable(L); /* methods */
    for (const luaL_Reg *m = methods; m && m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    for (const luaL_Reg *m = waiting; m && m->name; m++) {
        lua_pushfstring(L, "%s:%s", prefix, m->name);
        lwait_pushfunction(L, m->func, lua_tostring(L, -1), 0);
        lua_remove(L, -2);
        lua_setfield(L, -2, m->name);
    }
    /* call: a command named by its first argument */
    lua_pushboolean(L, 0); /* upvalue 1: no name */
    lua_pushfstring(L, "%s:call", prefix);
    lua_pushboolean(L, 1); /* upvalue 3: check the name it is given */
    if (waits)
        lwait_pushfunction(L, lredis_command, lua_tostring(L, -2), 3);
    else
        lua_pushcclosure(L, lpipe_command, 3);
    lua_setfield(L, -2, "call");
    lua_newtable(L); /* the cache */
    lua_pushstring(L, prefix);
    lua_pushboolean(L, waits);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, lindex, 5);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    if (tostring) {
        lua_pushcfunction(L, tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
}

void lredis_open(lua_State *L, struct server *srv)
{
    static const luaL_Reg client_methods[] = {
        {"settimeout", lredis_settimeout}, {"close", lredis_close},
        {"pipeline", lredis_pipeline}, {NULL, NULL},
    };
    static const luaL_Reg pipe_methods[] = {
        {"cancel", lpipe_cancel}, {NULL, NULL},
    };
    static const luaL_Reg pipe_waiting[] = {
        {"commit", lpipe_commit}, {NULL, NULL},
    };
    new_type(L, LREDIS_MT, "redis", 1, client_methods, NULL, lredis_gc, lredis_tostring);
    new_type(L, LPIPE_MT, "pipeline", 0, pipe_methods, pipe_waiting, lpipe_gc, NULL);
    lua_pushlightuserdata(L, srv);
    lua_pushcclosure(L, lredis_new, 1);
    lua_setfield(L, -2, "redis");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
}
