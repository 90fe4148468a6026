/* lbridge: the lua_State, the apps, and every call from C into Lua. Each
 * app file runs in its own environment table whose misses fall through to
 * the shared globals, so one app's globals never leak into another's. Every
 * handler runs under lua_pcall with a traceback handler: an error is logged
 * with the app, the handler and the connection id, and then (for
 * on_message and on_drain) closes that connection with 1011. Every call is recorded
 * (lb_call) while it runs: no handler starts inside another (an on_close
 * it would cause waits until the outermost call returns), and the argument
 * errors of the C functions apps call find the app's line from it. The
 * messages of one read share one protected call (lbridge_dispatch): a small
 * Lua loop that LuaJIT compiles together with the handler. */
#include "lbridge.h"

#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <limits.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "conn.h"
#include "handshake.h"
#include "lalloc.h"
#include "log.h"
#include "lrequest.h"
#include "lwait.h"
#include "metrics.h"
#include "router.h"
#include "server.h"

static int tracked_require(lua_State *L);
static int run(struct lbridge *lb, struct lb_call *call, int nargs, int nresults);
static void drain(struct lbridge *lb);
static int dispatch_open(struct lbridge *lb);
static void waiting_free_all(struct lbridge *lb);

/* Is source (lua_Debug's) the bridge's own code, not the app's? */
static int internal_chunk(const char *source)
{
    return strcmp(source, "=" LB_DISPATCH_CHUNK) == 0 || strcmp(source, "=" LB_SEND_CHUNK) == 0 ||
           strcmp(source, "=" LB_WAIT_CHUNK) == 0;
}

/* An on_close that waits for the running call to return. It keeps its own
 * ref to the ws object: the connection may let go of it meanwhile. */
struct lb_deferred_close {
    struct app *app;
    uint64_t conn_id;
    char *path; /* for the log line of an error */
    int ws_ref;
    uint16_t code;
    uint8_t reason_len;
    char reason[123];
};

/* The bridge, for the error path of the C functions apps call (they get
 * only the lua_State). One lua_State per process, so one bridge. */
static struct lbridge *bridge;

/* Registry ref of where_tail (below), or LUA_NOREF without jit.util. */
static int where_tail_ref = LUA_NOREF;

/* where_tail(fn, name, ...): where did a tail call to method `name`, with
 * the arguments `...`, come from, when fn is the function the bridge called
 * and nothing of it is left on the stack? LuaJIT reuses the caller's frame
 * for "return ws:send(x)" (CALLT/CALLMT), so only fn's bytecode can tell: a
 * CALLT whose function register was last set by a TGETS of `name`. When
 * several do, they are told apart by their constant arguments (KSTR,
 * KSHORT, KNUM, KPRI): one that differs from the actual argument rules a
 * call out, and the calls with the most equal constants win; if more than
 * one line is left, all are named. The functions fn can reach (its
 * closures, the functions in its upvalues) are searched too, for a handler
 * that tail-calls a helper that tail-calls the method. The opcode numbers and
 * the first argument's register are read off probe functions, not assumed.
 * Returns "file:line: " to start the message with, and a note for its end.
 * Without a match: the line where fn is defined, and a note saying so. */
static const char where_tail_src[] =
    "local util, getinfo, getupvalue, floor, concat = ...\n"
    "local select, type, max, ipairs = select, type, math.max, ipairs\n"
    "local funcbc, funck, funcinfo = util.funcbc, util.funck, util.funcinfo\n"
    "local function op(i) return i % 256 end\n"
    "local function ra(i) return floor(i / 256) % 256 end\n"
    "local function rc(i) return floor(i / 65536) % 256 end\n"
    "local function rd(i) return floor(i / 65536) % 65536 end\n"
    "local function code(f)\n"
    "  local list = {}\n"
    "  while true do\n"
    "    local i = funcbc(f, #list + 1)\n"
    "    if not i then return list end\n"
    "    list[#list + 1] = i\n"
    "  end\n"
    "end\n"
    "local function setter(list, pc, reg, from)\n"
    "  for back = pc - 1, from or 1, -1 do\n"
    "    if ra(list[back]) == reg then return list[back], back end\n"
    "  end\n"
    "end\n"
    "local p1 = code(function(t) return t:m(\"s\", 1, 1.5, true) end)\n"
    "local p2 = code(function(t, ...) return t:m(...) end)\n"
    "local CALLT, CALLMT = op(p1[#p1]), op(p2[#p2])\n"
    "local base, top = ra(p1[#p1]), 0\n"
    "for pc = 1, #p1 - 1 do top = max(top, ra(p1[pc])) end\n"
    "local ARG0 = top - 4 - base\n"
    "local TGETS = op(setter(p1, #p1, base) or 0)\n"
    "local KSTR = op(setter(p1, #p1, base + ARG0 + 1) or 0)\n"
    "local KSHORT = op(setter(p1, #p1, base + ARG0 + 2) or 0)\n"
    "local KNUM = op(setter(p1, #p1, base + ARG0 + 3) or 0)\n"
    "local KPRI = op(setter(p1, #p1, base + ARG0 + 4) or 0)\n"
    "assert(CALLT ~= CALLMT and TGETS == op(setter(p2, #p2, ra(p2[#p2])) or 0) and\n"
    "       KSTR ~= KSHORT and KNUM ~= KPRI and KSHORT ~= KPRI, \"uncalibrated\")\n"
    "-- How well the call at pc fits the actual arguments: -1 if one of its\n"
    "-- constant arguments differs, else how many of them are equal.\n"
    "local function score(f, list, pc, from, args, nargs)\n"
    "  local i, equal = list[pc], 0\n"
    "  local fixed = op(i) == CALLT and rd(i) - 1 or rd(i)\n"
    "  for j = 0, fixed - 1 do\n"
    "    local s = setter(list, pc, ra(i) + ARG0 + j, from)\n"
    "    if s and j < nargs then\n"
    "      local o, d, v, k = op(s), rd(s), args[j + 1], nil\n"
    "      if o == KSTR then k = funck(f, -d - 1)\n"
    "      elseif o == KSHORT then k = d >= 32768 and d - 65536 or d\n"
    "      elseif o == KNUM then k = funck(f, d)\n"
    "      elseif o == KPRI then k = d == 2 or (d == 1 and false) or nil\n"
    "      end\n"
    "      if o == KSTR or o == KSHORT or o == KNUM or o == KPRI then\n"
    "        if k ~= v then return -1 end\n"
    "        equal = equal + 1\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return equal\n"
    "end\n"
    "-- The tail calls of `name` in f: {line = , score = } each, one per line.\n"
    "local function tail_calls(f, name, args, nargs)\n"
    "  local list, calls, seen = code(f), {}, {}\n"
    "  for pc = 1, #list do\n"
    "    local o = op(list[pc])\n"
    "    if o == CALLT or o == CALLMT then\n"
    "      local s, at = setter(list, pc, ra(list[pc]))\n"
    "      if s and op(s) == TGETS and funck(f, -rc(s) - 1) == name then\n"
    "        local line = funcinfo(f, pc).currentline\n"
    "        local sc = score(f, list, pc, at, args, nargs)\n"
    "        if not seen[line] then\n"
    "          seen[line] = {line = line, score = sc}\n"
    "          calls[#calls + 1] = seen[line]\n"
    "        elseif sc > seen[line].score then\n"
    "          seen[line].score = sc\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return calls\n"
    "end\n"
    "local function file(info) return (info.source:gsub('^[@=]', '')) end\n"
    "-- The best-fitting calls win; among functions, the first searched that has\n"
    "-- one. If every call has a differing constant, the first function's calls.\n"
    "return function(fn, name, ...)\n"
    "  local args, nargs = {...}, select('#', ...)\n"
    "  local queue, seen, n, found = {fn}, {[fn] = true}, 1, {}\n"
    "  while queue[n] and n <= 64 do\n"
    "    local f = queue[n]\n"
    "    n = n + 1\n"
    "    local info = funcinfo(f)\n"
    "    if info.source then\n"
    "      local calls = tail_calls(f, name, args, nargs)\n"
    "      if #calls > 0 then found[#found + 1] = {info = info, calls = calls} end\n"
    "      for k = -1, -65536, -1 do\n"
    "        local v = funck(f, k)\n"
    "        if v == nil then break end\n"
    "        if type(v) == 'proto' and not seen[v] then\n"
    "          seen[v] = true\n"
    "          queue[#queue + 1] = v\n"
    "        end\n"
    "      end\n"
    "      if type(f) == 'function' then\n"
    "        for u = 1, info.upvalues do\n"
    "          local _, v = getupvalue(f, u)\n"
    "          if type(v) == 'function' and not seen[v] then\n"
    "            seen[v] = true\n"
    "            queue[#queue + 1] = v\n"
    "          end\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  local best = -1\n"
    "  for _, fc in ipairs(found) do\n"
    "    for _, c in ipairs(fc.calls) do best = max(best, c.score) end\n"
    "  end\n"
    "  for _, fc in ipairs(found) do\n"
    "    local lines = {}\n"
    "    for _, c in ipairs(fc.calls) do\n"
    "      if c.score == best then lines[#lines + 1] = c.line end\n"
    "    end\n"
    "    if #lines > 0 then\n"
    "      local note = ''\n"
    "      if #lines > 1 then\n"
    "        note = ' (a tail call from one of lines ' .. concat(lines, ', ') .. ')'\n"
    "      end\n"
    "      return file(fc.info) .. ':' .. lines[1] .. ': ', note\n"
    "    end\n"
    "  end\n"
    "  local info = getinfo(fn, 'S')\n"
    "  return info.short_src .. ':' .. info.linedefined .. ': ',\n"
    "         ' (in a tail call from the function defined at line ' .. info.linedefined .. ')'\n"
    "end\n";

int lb_load_with(lua_State *L, const char *module, const char *src, size_t len,
                 const char *name)
{
    int top = lua_gettop(L);
    if (luaL_loadbuffer(L, src, len, name))
        goto fail;
    lua_getglobal(L, "require");
    lua_pushstring(L, module);
    if (lua_pcall(L, 1, 1, 0) || !lua_istable(L, -1))
        goto fail;
    return 0;
fail:
    lua_settop(L, top);
    return -1;
}

/* Build where_tail, if this LuaJIT has jit.util and the probes calibrate. */
static void where_tail_open(lua_State *L)
{
    int top = lua_gettop(L);
    if (lb_load_with(L, "jit.util", where_tail_src, sizeof where_tail_src - 1, "=moonport.where"))
        return;
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "getinfo");
    lua_getfield(L, -2, "getupvalue");
    lua_remove(L, -3);
    lua_getglobal(L, "math");
    lua_getfield(L, -1, "floor");
    lua_remove(L, -2);
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "concat");
    lua_remove(L, -2);
    if (lua_pcall(L, 5, 1, 0) == 0 && lua_isfunction(L, -1))
        where_tail_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else
        log_debug("argument errors after a tail call will name the handler's line: %s",
                  lua_tostring(L, -1));
    lua_settop(L, top);
}

/* Push "file:line: " for the app code that called the running C function
 * (fname), and the note to end the message with. */
static void push_where(lua_State *L, const char *fname)
{
    lua_Debug ar;
    /* A Lua caller: its current line is the call. Past C frames too, for
     * pcall(ws.send, ws, x), and past the bridge's own Lua code (ws:send,
     * the loop that called on_message): none of it is the app's. */
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0 && !internal_chunk(ar.source)) {
            lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
            lua_pushliteral(L, "");
            return;
        }
    }
    /* None: a tail call from the function the bridge called replaced it. */
    if (fname && bridge && bridge->call && where_tail_ref != LUA_NOREF) {
        /* The call's arguments are at the bottom of the stack; whatever the
         * C function pushed since sits above them and only ever rules out
         * a call with more constant arguments than this one had. */
        int nargs = lua_gettop(L) < 8 ? lua_gettop(L) : 8;
        const char *method = strpbrk(fname, ":.");
        lua_rawgeti(L, LUA_REGISTRYINDEX, where_tail_ref);
        lua_rawgeti(L, LUA_REGISTRYINDEX, bridge->call->fn_ref);
        lua_pushstring(L, method ? method + 1 : fname);
        for (int i = 1; i <= nargs; i++)
            lua_pushvalue(L, i);
        if (lua_pcall(L, 2 + nargs, 2, 0) == 0 && lua_isstring(L, -2) && lua_isstring(L, -1))
            return;
        lua_pop(L, 1);
    }
    lua_pushliteral(L, "");
    lua_pushliteral(L, "");
}

/* Raise where .. msg .. note. */
static int raise_at(lua_State *L, const char *fname, const char *msg)
{
    push_where(L, fname);
    lua_pushstring(L, msg);
    lua_insert(L, -2);
    lua_concat(L, 3);
    return lua_error(L);
}

int lb_argerror(lua_State *L, int idx, const char *fname, const char *msg)
{
    /* A method's self is at index 1 and is not one of the arguments the app
     * wrote between the parentheses. */
    int shown = strchr(fname, ':') ? idx - 1 : idx;
    if (shown == 0)
        return raise_at(L, fname,
                        lua_pushfstring(L, "calling '%s' on bad self (%s; call it as %s(...))",
                                        fname, msg, fname));
    return raise_at(L, fname,
                    lua_pushfstring(L, "bad argument #%d to '%s' (%s)", shown, fname, msg));
}

int lb_typeerror(lua_State *L, int idx, const char *fname, const char *expected)
{
    return lb_argerror(L, idx, fname,
                       lua_pushfstring(L, "%s expected, got %s", expected,
                                       luaL_typename(L, idx)));
}

int lb_error(lua_State *L, const char *fname, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const char *msg = lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return raise_at(L, fname, msg);
}

/* The message of the error value at idx, as a string pushed or in place. */
static const char *error_message(lua_State *L, int idx)
{
    const char *msg = lua_tostring(L, idx);
    if (!msg) {
        if (luaL_callmeta(L, idx, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
    }
    return msg;
}

/* The traceback on L's top, without the bridge's own Lua code
 * (internal_chunk): the app's code is what a traceback is for. */
static void strip_own_frames(lua_State *L)
{
    const char *tb = lua_tostring(L, -1);
    static const char *const own[] = {"\n\t" LB_DISPATCH_CHUNK ":", "\n\t" LB_SEND_CHUNK ":",
                                      "\n\t" LB_WAIT_CHUNK ":"};
    for (size_t k = 0; k < sizeof own / sizeof own[0]; k++) {
        if (!strstr(tb, own[k]))
            continue;
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (const char *p = tb, *hit;;) {
            hit = strstr(p, own[k]);
            luaL_addlstring(&b, p, hit ? (size_t)(hit - p) : strlen(p));
            if (!hit)
                break;
            p = hit + 1;
            p += strcspn(p, "\n"); /* the rest of that line; its \n starts the next */
        }
        luaL_pushresult(&b);
        tb = lua_tostring(L, -1);
    }
}

static int traceback(lua_State *L)
{
    luaL_traceback(L, L, error_message(L, 1), 1);
    strip_own_frames(L);
    return 1;
}

void lb_push_traceback(lua_State *L, lua_State *co)
{
    int top = lua_gettop(L);
    luaL_traceback(L, co, error_message(L, top), 0);
    strip_own_frames(L);
    lua_replace(L, top);
    lua_settop(L, top);
}

/* The traceback handler, made once: pushing a C function allocates a new
 * closure each time, and this runs for every message. One lua_State per
 * process, so one ref. */
static int traceback_ref = LUA_NOREF;

int lb_pcall(lua_State *L, int nargs, int nresults, const char *what)
{
    int base = lua_gettop(L) - nargs; /* the function */
    lua_rawgeti(L, LUA_REGISTRYINDEX, traceback_ref);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    if (rc == 0)
        return 0;
    if (what) {
        log_error("%s: %s", what, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    return -1;
}

/* The message of a failed pcall without its traceback: its first line. */
static void first_line(const char *msg, char *out, size_t outlen)
{
    size_t n = strcspn(msg, "\n");
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, msg, n);
    out[n] = '\0';
}

/* An error outside any protected call: a bug in moonport, not in an app. */
static int panic(lua_State *L)
{
    log_error("unprotected Lua error: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    abort();
}

struct lbridge *lbridge_new(struct server *srv, const char *apps_dir, char *err, size_t errlen)
{
    struct lbridge *lb = calloc(1, sizeof *lb);
    if (lb)
        lalloc_init(&lb->alloc);
    if (!lb || !(lb->L = lua_newstate(lalloc_f, &lb->alloc))) {
        free(lb);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    lua_State *L = lb->L;
    lua_atpanic(L, panic); /* as luaL_newstate would */
    lb->srv = srv;
    luaL_openlibs(L);
    if (apps_dir) { /* apps may require modules that sit next to them */
        lua_getglobal(L, "package");
        lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", apps_dir, apps_dir);
        lua_getfield(L, -2, "path");
        lua_concat(L, 2);
        lua_setfield(L, -2, "path");
        lua_pop(L, 1);
    }
    lua_pushcfunction(L, traceback);
    traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushliteral(L, "text");
    lb->text_str = lua_tostring(L, -1); /* stable: the registry holds the string */
    lb->text_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushliteral(L, "binary");
    lb->binary_str = lua_tostring(L, -1);
    lb->binary_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    where_tail_open(L);
    if (dispatch_open(lb)) {
        snprintf(err, errlen, "cannot build the message loop: LuaJIT's FFI is missing");
        lua_close(L);
        free(lb);
        return NULL;
    }
    lua_getglobal(L, "require");
    lua_pushlightuserdata(L, lb);
    lua_pushcclosure(L, tracked_require, 2);
    lua_setglobal(L, "require");
    lconn_open(L);
    lhost_open(L, srv);
    lb->co = lua_newthread(L);
    lb->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    bridge = lb;
    return lb;
}

static void app_free(struct app *a);

void lbridge_free(struct lbridge *lb)
{
    if (!lb)
        return;
    lwait_close(lb);
    waiting_free_all(lb);
    lua_close(lb->L); /* timers' __gc stop their watchers */
    for (struct app *a = lb->apps, *next; a; a = next) {
        next = a->next;
        app_free(a);
    }
    for (struct module *m = lb->modules, *next; m; m = next) {
        next = m->next;
        free(m->name);
        free(m->file);
        free(m->users);
        free(m->parents);
        free(m);
    }
    for (size_t i = 0; i < lb->ndeferred; i++) /* none: every call drains them */
        free(lb->deferred[i].path);
    free(lb->deferred);
    for (size_t i = 0; i < lb->nwatched; i++)
        free(lb->watched[i]);
    free(lb->watched);
    free(lb);
}

/* The handlers an app table may define; the first LB_HANDLERS have refs in
 * app->handler_ref, in this order (H_CONNECT...). */
static const char *const handler_names[] = {"on_connect", "on_message", "on_close",
                                            "on_drain",   "on_reload",  NULL};
#define LB_HANDLERS 4

int file_sig_read(const char *path, struct file_sig *sig)
{
    struct stat st;
    memset(sig, 0, sizeof *sig);
    if (stat(path, &st))
        return -1;
    sig->mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    sig->ctime_ns = (long long)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec;
    sig->size = (long long)st.st_size;
    sig->ino = (unsigned long long)st.st_ino;
    return 0;
}

int file_sig_equal(const struct file_sig *a, const struct file_sig *b)
{
    return a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns && a->size == b->size &&
           a->ino == b->ino;
}

void lbridge_watch_dir(struct lbridge *lb, const char *dir)
{
    for (size_t i = 0; i < lb->nwatched; i++)
        if (strcmp(lb->watched[i], dir) == 0)
            return;
    char **w = realloc(lb->watched, (lb->nwatched + 1) * sizeof *w);
    if (!w)
        return;
    lb->watched = w;
    lb->watched[lb->nwatched] = strdup(dir);
    if (lb->watched[lb->nwatched])
        lb->nwatched++;
}

static int under_watched(const struct lbridge *lb, const char *file)
{
    for (size_t i = 0; i < lb->nwatched; i++) {
        size_t n = strlen(lb->watched[i]);
        if (strncmp(file, lb->watched[i], n) == 0 && file[n] == '/')
            return 1;
    }
    return 0;
}

static int add_ptr(void ***arr, size_t *n, void *p)
{
    for (size_t i = 0; i < *n; i++)
        if ((*arr)[i] == p)
            return 0;
    void **a = realloc(*arr, (*n + 1) * sizeof *a);
    if (!a)
        return -1;
    *arr = a;
    a[(*n)++] = p;
    return 0;
}

/* The module record for file, created on first sight. */
static struct module *module_of(struct lbridge *lb, const char *name, const char *file)
{
    struct module *m;
    for (m = lb->modules; m; m = m->next)
        if (strcmp(m->file, file) == 0)
            return m;
    m = calloc(1, sizeof *m);
    if (!m || !(m->name = strdup(name)) || !(m->file = strdup(file))) {
        if (m)
            free(m->name);
        free(m);
        return NULL;
    }
    file_sig_read(file, &m->sig);
    m->next = lb->modules;
    lb->modules = m;
    return m;
}

/* The global require, wrapped: when the module's file is in a watched
 * directory, note who required it, read off the caller's chunk name (an
 * app's file, or another watched module's), so a change to the module
 * reloads the apps that depend on it. Then the real require does the work
 * and stays in charge of package.loaded.
 * upvalues: 1 = the real require, 2 = the bridge. */
static int tracked_require(lua_State *L)
{
    struct lbridge *lb = lua_touserdata(L, lua_upvalueindex(2));
    const char *name = luaL_checkstring(L, 1);
    struct module *m = NULL;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchpath");
    if (lua_isfunction(L, -1)) {
        lua_pushvalue(L, 1);
        lua_getfield(L, -3, "path");
        lua_call(L, 2, 1); /* searchpath(name, package.path): file or nil */
        if (lua_isstring(L, -1) && under_watched(lb, lua_tostring(L, -1)))
            m = module_of(lb, name, lua_tostring(L, -1));
    }
    lua_settop(L, 1);
    lua_Debug ar;
    if (m && lua_getstack(L, 1, &ar) && lua_getinfo(L, "S", &ar) && ar.source[0] == '@') {
        const char *caller = ar.source + 1;
        struct app *a = lbridge_find(lb, caller);
        if (a) {
            add_ptr((void ***)&m->users, &m->nusers, a);
        } else {
            for (struct module *p = lb->modules; p; p = p->next)
                if (p != m && strcmp(p->file, caller) == 0)
                    add_ptr((void ***)&m->parents, &m->nparents, p);
        }
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 1, 1);
    return 1;
}

/* The number of the file's last line (1 for an empty file). */
static int last_line(const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f)
        return 1;
    int lines = 1, ch, prev = '\n';
    while ((ch = getc(f)) != EOF) {
        if (ch == '\n')
            lines++;
        prev = ch;
    }
    fclose(f);
    /* A final newline ends the last line; it does not start another. */
    return prev == '\n' && lines > 1 ? lines - 1 : lines;
}

/* Run file in a fresh environment; push the table it returns. On failure
 * push nothing and fill err. */
static int load_app_table(struct lbridge *lb, struct app *a, char *err, size_t errlen)
{
    lua_State *L = lb->L;
    int top = lua_gettop(L);
    if (luaL_loadfile(L, a->file)) {
        first_line(lua_tostring(L, -1), err, errlen);
        goto fail;
    }
    /* env = setmetatable({}, {__index = _G}) */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushvalue(L, LUA_GLOBALSINDEX);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setfenv(L, -2);
    struct lb_call call = {a, 0, LUA_NOREF, NULL}; /* module level */
    if (run(lb, &call, 0, 1)) {
        char msg[400];
        first_line(lua_tostring(L, -1), msg, sizeof msg);
        snprintf(err, errlen, "%s (while loading %s)", msg, a->file);
        log_debug("%s", lua_tostring(L, -1));
        goto fail;
    }
    if (!lua_istable(L, -1)) {
        /* Point at the end of the file, where the return belongs. */
        snprintf(err, errlen, "%s:%d: an app must return a table of handlers, not %s", a->file,
                 last_line(a->file), luaL_typename(L, -1));
        goto fail;
    }
    for (const char *const *h = handler_names; *h; h++) {
        lua_getfield(L, -1, *h);
        int t = lua_type(L, -1);
        lua_pop(L, 1);
        if (t != LUA_TNIL && t != LUA_TFUNCTION) {
            snprintf(err, errlen, "%s: %s must be a function, not %s", a->file, *h,
                     lua_typename(L, t));
            goto fail;
        }
    }
    return 0;
fail:
    lua_settop(L, top);
    return -1;
}

void lbridge_forget_module(struct lbridge *lb, const char *name)
{
    lua_State *L = lb->L;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_pushnil(L);
    lua_setfield(L, -2, name);
    lua_pop(L, 2);
}

void lbridge_provide(struct lbridge *lb, const struct app *a, const char *name)
{
    lua_State *L = lb->L;
    int top = lua_gettop(L);
    lua_getglobal(L, "package");
    lua_getfield(L, top + 1, "searchpath");
    if (lua_isfunction(L, -1)) {
        lua_pushstring(L, name);
        lua_getfield(L, top + 1, "path");
        /* searchpath(name, package.path): the file require would run */
        if (lua_pcall(L, 2, 1, 0) == 0 && lua_isstring(L, -1) &&
            strcmp(lua_tostring(L, -1), a->file) == 0) {
            lua_getfield(L, top + 1, "loaded");
            lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref);
            lua_setfield(L, -2, name);
        }
    }
    lua_settop(L, top);
}

struct app *lbridge_find(struct lbridge *lb, const char *file)
{
    for (struct app *a = lb->apps; a; a = a->next)
        if (strcmp(a->file, file) == 0)
            return a;
    return NULL;
}

enum { H_CONNECT, H_MESSAGE, H_CLOSE, H_DRAIN };
_Static_assert(H_MESSAGE == 1, "lbridge_message (lbridge.h) reads handler_ref[1]");

/* Take refs to the handlers of the table on top of the stack, dropping the
 * previous version's: an event then costs one registry read, not a table
 * lookup by name. */
static void take_handlers(lua_State *L, struct app *a)
{
    for (int i = 0; i < LB_HANDLERS; i++) {
        luaL_unref(L, LUA_REGISTRYINDEX, a->handler_ref[i]);
        lua_getfield(L, -1, handler_names[i]);
        a->handler_ref[i] = lua_isfunction(L, -1) ? luaL_ref(L, LUA_REGISTRYINDEX) : LUA_NOREF;
        if (a->handler_ref[i] == LUA_NOREF)
            lua_pop(L, 1);
    }
}

static void app_free(struct app *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->npatterns; i++)
        free(a->patterns[i]);
    free(a->patterns);
    free(a->name);
    free(a->file);
    free(a);
}

struct app *lbridge_app(struct lbridge *lb, const char *file, const char *name, char *err,
                        size_t errlen)
{
    struct app *a = lbridge_find(lb, file);
    if (a)
        return a;
    a = calloc(1, sizeof *a);
    for (int i = 0; a && i < LB_HANDLERS; i++)
        a->handler_ref[i] = LUA_NOREF;
    if (!a || !(a->name = strdup(name)) || !(a->file = strdup(file))) {
        app_free(a);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    file_sig_read(file, &a->sig);
    a->metrics = metrics_app(lb->srv->metrics, a->name);
    /* Listed while its file runs, so its requires are recorded as its own. */
    a->next = lb->apps;
    lb->apps = a;
    if (load_app_table(lb, a, err, errlen)) {
        lb->apps = a->next;
        for (struct module *m = lb->modules; m; m = m->next) /* forget it as a user */
            for (size_t i = 0; i < m->nusers; i++)
                if (m->users[i] == a)
                    m->users[i--] = m->users[--m->nusers];
        app_free(a);
        drain(lb);
        return NULL;
    }
    take_handlers(lb->L, a);
    a->ref = luaL_ref(lb->L, LUA_REGISTRYINDEX);
    a->version = 1;
    drain(lb);
    return a;
}

static int reload(struct lbridge *lb, struct app *a, char *err, size_t errlen)
{
    lua_State *L = lb->L;
    int top = lua_gettop(L);
    /* The signature from before the load: a write during it reloads again. */
    file_sig_read(a->file, &a->sig);
    if (load_app_table(lb, a, err, errlen))
        return -1;
    lua_getfield(L, -1, "on_reload");
    if (lua_isfunction(L, -1)) {
        /* Before any event reaches the new version, it may adopt the old
         * one's state. */
        lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref);
        struct lb_call call = {a, 0, LUA_NOREF, NULL};
        if (run(lb, &call, 1, 0)) {
            char msg[400];
            first_line(lua_tostring(L, -1), msg, sizeof msg);
            snprintf(err, errlen, "%s (in on_reload of %s)", msg, a->file);
            log_debug("%s", lua_tostring(L, -1));
            lua_settop(L, top);
            return -1;
        }
    } else {
        lua_pop(L, 1);
    }
    take_handlers(L, a);
    luaL_unref(L, LUA_REGISTRYINDEX, a->ref);
    a->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    a->version++;
    lua_settop(L, top);
    return 0;
}

int lbridge_reload(struct lbridge *lb, struct app *a, char *err, size_t errlen)
{
    int rc = reload(lb, a, err, errlen);
    drain(lb); /* the on_close calls the new code's loading caused */
    return rc;
}

/* Push one of the app's handlers; returns 0 (nothing pushed) if it has none. */
static int push_handler(lua_State *L, const struct app *app, int which)
{
    if (app->handler_ref[which] == LUA_NOREF)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, app->handler_ref[which]);
    return 1;
}

static void log_handler_error(lua_State *L, const struct app *app, const char *path,
                              uint64_t conn_id, const char *handler)
{
    METRIC_ADD(app->metrics->lua_errors, 1);
    log_error("app %s (%s) conn %llu: error in %s: %s", app->name, path,
              (unsigned long long)conn_id, handler, lua_tostring(L, -1));
    lua_pop(L, 1);
}

/* Push c's ws object, making it on first use: a connection whose app has
 * not been called yet costs no Lua memory. */
static void push_ws(lua_State *L, struct conn *c)
{
    if (c->lua_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->lua_ref);
        return;
    }
    lconn_new(L, c);
}

/* Call the function below its nargs arguments as call says (fn_ref
 * LUA_NOREF: this takes a ref of the function for as long as it runs).
 * Returns 0, or -1 with the error message on the stack. */
static int run(struct lbridge *lb, struct lb_call *call, int nargs, int nresults)
{
    lua_State *L = lb->L;
    int temp_ref = LUA_NOREF;
    if (call->fn_ref == LUA_NOREF) {
        lua_pushvalue(L, -nargs - 1);
        call->fn_ref = temp_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    call->prev = lb->call;
    lb->call = call;
    int rc = lb_pcall(L, nargs, nresults, NULL);
    lb->call = call->prev;
    luaL_unref(L, LUA_REGISTRYINDEX, temp_ref);
    return rc;
}

/* A coroutine for a handler that starts now: the reused one, unless Lua
 * code runs on it (then one of lwait's pool). */
static lua_State *entry_co(struct lbridge *lb, int *ref)
{
    if (lb->call)
        return lwait_co_take(lb, ref);
    *ref = lb->co_ref;
    return lb->co;
}

static void entry_co_unused(struct lbridge *lb, lua_State *co, int ref)
{
    if (co != lb->co)
        lwait_co_give(lb, co, ref);
}

/* Run on_close (on co's stack with its 3 arguments) as a task: it may wait;
 * nothing of its connection follows it. path is taken over. */
static void run_on_close(struct lbridge *lb, lua_State *co, int ref, struct app *app,
                         uint64_t conn_id, char *path)
{
    struct lb_call call = {app, conn_id, app->handler_ref[H_CLOSE], NULL};
    struct lwait_task *t;
    int rc = lwait_run(lb, co, ref, &call, 3, LW_CLOSE, &t);
    if (rc == LB_WAITING) {
        t->path = path;
        return;
    }
    if (rc)
        log_handler_error(lb->L, app, path ? path : "-", conn_id, "on_close");
    free(path);
}

static void call_on_close(struct lbridge *lb, struct lb_deferred_close *d)
{
    lua_State *L = lb->L;
    int ref;
    lua_State *co = entry_co(lb, &ref);
    if (push_handler(co, d->app, H_CLOSE)) {
        lua_rawgeti(co, LUA_REGISTRYINDEX, d->ws_ref);
        lua_pushinteger(co, d->code);
        lua_pushlstring(co, d->reason, d->reason_len);
        run_on_close(lb, co, ref, d->app, d->conn_id, d->path);
        d->path = NULL;
    } else {
        entry_co_unused(lb, co, ref);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, d->ws_ref);
    free(d->path);
}

/* A connection whose handler waits (lwait.h): its later events wait here
 * until the handler returns. Messages queue (reading pauses past a bound:
 * LB_QUEUE_MSGS or LB_QUEUE_BYTES); on_drain and on_close are owed. Found
 * by the connection's id, in a small hash made on the first wait: a
 * connection that never waits has none, and pays nothing for it. */
struct lb_qmsg {
    struct lb_qmsg *next;
    size_t len;
    int binary;
    uint8_t data[];
};

struct lb_waiting {
    uint64_t id;
    struct conn *c;          /* NULL once it is gone (lbridge_release) */
    struct lwait_task *task; /* the handler that waits; NULL while its queue runs */
    struct conn_connect *cc; /* a waiting on_connect's answer, kept by conn.c */
    struct lb_qmsg *head, **tail;
    size_t nq, qbytes;
    struct lb_deferred_close close; /* owed if close_owed */
    int close_owed, drain_owed;
    /* Once c is gone with messages still queued: what delivers them. */
    struct app *app;
    int ws_ref;
    char *path;
    struct lb_waiting *next; /* the hash bucket */
};

#define LB_WAITING_BUCKETS 256
#define LB_QUEUE_MSGS 64
#define LB_QUEUE_BYTES (256 * 1024)

static struct lb_waiting **bucket(struct lbridge *lb, uint64_t id)
{
    return &lb->waiting[(id * 0x9E3779B97F4A7C15ull) >> 56];
}

static struct lb_waiting *waiting_find(struct lbridge *lb, uint64_t id)
{
    if (!lb->nwaiting)
        return NULL;
    for (struct lb_waiting *w = *bucket(lb, id); w; w = w->next)
        if (w->id == id)
            return w;
    return NULL;
}

static void waiting_free(struct lbridge *lb, struct lb_waiting *w)
{
    for (struct lb_qmsg *m = w->head, *next; m; m = next) {
        next = m->next;
        free(m);
    }
    if (w->close_owed) /* only at exit: the registry goes with the state */
        free(w->close.path);
    if (w->cc) /* only at exit: an on_connect still waits */
        conn_connect_done(NULL, w->cc, 0);
    if (w->ws_ref != LUA_NOREF)
        luaL_unref(lb->L, LUA_REGISTRYINDEX, w->ws_ref);
    free(w->path);
    free(w);
}

static void waiting_free_all(struct lbridge *lb)
{
    for (size_t i = 0; lb->waiting && i < LB_WAITING_BUCKETS; i++) {
        for (struct lb_waiting *w = lb->waiting[i], *next; w; w = next) {
            next = w->next;
            waiting_free(lb, w);
        }
    }
    free(lb->waiting);
    lb->waiting = NULL;
    lb->nwaiting = 0;
}

static void waiting_remove(struct lbridge *lb, struct lb_waiting *w)
{
    for (struct lb_waiting **p = bucket(lb, w->id); *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            lb->nwaiting--;
            break;
        }
    }
    w->close_owed = 0; /* handed on by the caller */
    waiting_free(lb, w);
}

/* c's handler t waits: from now on c's events wait for it. */
static struct lb_waiting *conn_waits(struct lbridge *lb, struct conn *c, struct lwait_task *t)
{
    t->path = strdup(conn_path(c));
    if (!lb->waiting && !(lb->waiting = calloc(LB_WAITING_BUCKETS, sizeof *lb->waiting)))
        return NULL;
    struct lb_waiting *w = waiting_find(lb, c->id);
    if (!w) {
        if (!(w = calloc(1, sizeof *w)))
            return NULL; /* its events then do not wait: out of memory */
        w->id = c->id;
        w->tail = &w->head;
        w->ws_ref = LUA_NOREF;
        struct lb_waiting **b = bucket(lb, c->id);
        w->next = *b;
        *b = w;
        lb->nwaiting++;
    }
    w->c = c->state == CONN_DEAD ? NULL : c;
    w->task = t;
    return w;
}

/* Messages from..n-1 of the batch join w's queue. */
static void queue_batch(struct lbridge *lb, struct lb_waiting *w, int from, int n)
{
    struct lb_batch *b = &lb->batch;
    lua_State *L = lb->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, lb->batch_ref);
    for (int i = from; i < n; i++) {
        const uint8_t *data = b->shared.bytes[i];
        if (!data) {
            lua_rawgeti(L, -1, i + 1);
            data = (const uint8_t *)lua_tostring(L, -1);
        }
        struct lb_qmsg *m = malloc(sizeof *m + b->len[i]);
        if (m) {
            m->next = NULL;
            m->len = b->len[i];
            m->binary = b->shared.binary[i];
            memcpy(m->data, data, m->len);
            *w->tail = m;
            w->tail = &m->next;
            w->nq++;
            w->qbytes += m->len;
        }
        if (!b->shared.bytes[i]) {
            lua_pop(L, 1);
            lua_pushnil(L);
            lua_rawseti(L, -2, i + 1);
        }
    }
    lua_pop(L, 1);
    if (w->c && (w->nq >= LB_QUEUE_MSGS || w->qbytes >= LB_QUEUE_BYTES))
        conn_wait_pause(w->c, 1);
}

int lbridge_conn_open(struct lbridge *lb, uint64_t id)
{
    struct lb_waiting *w = waiting_find(lb, id);
    return w && w->c && conn_can_send(w->c);
}

/* A queued message of a connection that is closing or gone: on_message
 * still gets it, with ws closed (its methods return nil, "closed"), since
 * the peer sent it before it closed. Its handler may wait in turn. */
static void deliver_late(struct lbridge *lb, struct lb_waiting *w, const struct lb_qmsg *m)
{
    struct conn *c = w->c;
    struct app *app = c ? c->app : w->app;
    if (!app || (!c && w->ws_ref == LUA_NOREF) || app->handler_ref[H_MESSAGE] == LUA_NOREF)
        return;
    if (c) {
        c->msgs_in++;
        c->bytes_in += m->len;
    }
    METRIC_ADD(app->metrics->msgs_in, 1);
    METRIC_ADD(app->metrics->bytes_in, m->len);
    int ref;
    lua_State *co = entry_co(lb, &ref);
    push_handler(co, app, H_MESSAGE);
    if (c)
        push_ws(co, c);
    else
        lua_rawgeti(co, LUA_REGISTRYINDEX, w->ws_ref);
    lua_pushlstring(co, (const char *)m->data, m->len);
    lua_rawgeti(co, LUA_REGISTRYINDEX, m->binary ? lb->binary_ref : lb->text_ref);
    struct lb_call call = {app, w->id, app->handler_ref[H_MESSAGE], NULL};
    struct lwait_task *t;
    const char *path = c ? conn_path(c) : w->path ? w->path : "-";
    int rc = lwait_run(lb, co, ref, &call, 3, LW_MESSAGE, &t);
    if (rc == LB_WAITING) {
        t->path = strdup(path);
        w->task = t;
    } else if (rc) {
        log_handler_error(lb->L, app, path, w->id, "on_message");
        if (c)
            conn_close(c, WS_CLOSE_INTERNAL, "internal error");
    }
}

/* c's handler has returned: hand over what waited for it, in order: the
 * queued messages, then on_drain or on_close if owed. Messages the peer
 * sent before it closed are still delivered (ws is closed by then); those
 * behind the app's own ws:close() were dropped then (lbridge_app_closes),
 * as in a batch. A message's handler may wait in turn: the rest wait
 * again. */
static void waiting_done(struct lbridge *lb, struct lb_waiting *w)
{
    w->task = NULL;
    while (w->head && !w->task) {
        struct lb_qmsg *m = w->head;
        w->head = m->next;
        if (!w->head)
            w->tail = &w->head;
        w->nq--;
        w->qbytes -= m->len;
        if (w->c && w->c->state == CONN_OPEN) {
            lbridge_message(lb, w->c, m->data, m->len, m->binary, 0);
            lbridge_dispatch(lb);
        } else {
            deliver_late(lb, w, m);
        }
        free(m);
    }
    if (w->task)
        return;
    struct conn *c = w->c;
    if (c)
        conn_wait_pause(c, 0);
    struct lb_deferred_close d = w->close;
    int close = w->close_owed, drain_owed = w->drain_owed;
    waiting_remove(lb, w);
    if (close)
        call_on_close(lb, &d);
    else if (drain_owed && c && c->state == CONN_OPEN && c->accepted)
        lbridge_drain(lb, c);
}

void lbridge_task_enter(struct lbridge *lb, struct lwait_task *t, int enter)
{
    static const uint8_t not_open = CONN_DEAD;
    if (t->kind == LW_MESSAGE) {
        /* The loop that called on_message stops when it returns: the rest
         * of its batch has been queued (lbridge_dispatch). */
        lb->batch.shared.state = enter ? &not_open : NULL;
    } else if (t->kind == LW_CONNECT) {
        struct lb_waiting *w = waiting_find(lb, t->call.conn_id);
        if (!enter) /* also when the connection went while it ran */
            conn_connect_leave(lb->srv, w ? w->c : NULL);
        else if (w && w->c && w->cc)
            conn_connect_enter(w->c, w->cc);
    }
}

void lbridge_task_failed(struct lbridge *lb, struct app *app, uint64_t conn_id, int kind)
{
    lua_State *L = lb->L;
    const char *what = kind == LW_SPAWN ? "a spawned function" : "a timer callback";
    if (app)
        METRIC_ADD(app->metrics->lua_errors, 1);
    if (conn_id)
        log_error("app %s conn %llu: error in %s: %s", app ? app->name : "?",
                  (unsigned long long)conn_id, what, lua_tostring(L, -1));
    else
        log_error("app %s: error in %s: %s", app ? app->name : "?", what, lua_tostring(L, -1));
    lua_pop(L, 1);
}

void lbridge_task_end(struct lbridge *lb, struct lwait_task *t, int rc)
{
    static const char *const names[] = {"on_connect", "on_message", "on_close", "on_drain"};
    struct app *app = t->call.app;
    uint64_t id = t->call.conn_id;
    if (t->kind == LW_TIMER || t->kind == LW_SPAWN) {
        if (rc)
            lbridge_task_failed(lb, app, id, t->kind);
        drain(lb);
        return;
    }
    if (rc)
        log_handler_error(lb->L, app, t->path ? t->path : "-", id, names[t->kind]);
    struct lb_waiting *w = t->kind == LW_CLOSE ? NULL : waiting_find(lb, id);
    if (w && w->task == t) {
        if (t->kind == LW_CONNECT) {
            struct conn_connect *cc = w->cc;
            w->cc = NULL;
            w->task = NULL; /* the frames that came with the head are not queued */
            if (cc)
                conn_connect_done(w->c, cc, rc);
        } else if (rc && w->c) {
            conn_close(w->c, WS_CLOSE_INTERNAL, "internal error");
        }
        waiting_done(lb, w);
    }
    drain(lb);
}

/* Once the outermost call has returned: run the on_close calls that waited
 * for it, in the order they were owed, and those they cause in turn. An
 * on_close owed to a connection whose handler waits waits for it too. */
static void drain(struct lbridge *lb)
{
    static int draining;
    if (lb->call || draining)
        return;
    draining = 1;
    for (size_t i = 0; i < lb->ndeferred; i++) {
        struct lb_deferred_close d = lb->deferred[i]; /* the array may move */
        struct lb_waiting *w = waiting_find(lb, d.conn_id);
        if (w && w->task && !w->close_owed) {
            w->close = d;
            w->close_owed = 1;
            continue;
        }
        call_on_close(lb, &d);
    }
    lb->ndeferred = 0;
    draining = 0;
}

void lbridge_hold(struct lbridge *lb, struct lb_call *hold)
{
    *hold = (struct lb_call){NULL, 0, LUA_NOREF, lb->call};
    lb->call = hold;
}

void lbridge_unhold(struct lbridge *lb, struct lb_call *hold)
{
    lb->call = hold->prev;
    drain(lb);
}

static void close_fill(struct lbridge *lb, struct lb_deferred_close *d, struct conn *c,
                       uint16_t code, const char *reason, size_t reason_len);

/* Queue c's on_close until the running call returns; 0, or -1 if out of
 * memory. */
static int defer_close(struct lbridge *lb, struct conn *c, uint16_t code, const char *reason,
                       size_t reason_len)
{
    if (lb->ndeferred == lb->deferred_cap) {
        size_t cap = lb->deferred_cap ? lb->deferred_cap * 2 : 4;
        struct lb_deferred_close *d = realloc(lb->deferred, cap * sizeof *d);
        if (!d)
            return -1;
        lb->deferred = d;
        lb->deferred_cap = cap;
    }
    close_fill(lb, &lb->deferred[lb->ndeferred], c, code, reason, reason_len);
    lb->ndeferred++;
    return 0;
}

/* What on_close needs when it runs later: the ws object, code, reason. */
static void close_fill(struct lbridge *lb, struct lb_deferred_close *d, struct conn *c,
                       uint16_t code, const char *reason, size_t reason_len)
{
    if (reason_len > sizeof d->reason)
        reason_len = sizeof d->reason;
    d->app = c->app;
    d->conn_id = c->id;
    d->path = strdup(conn_path(c));
    d->code = code;
    d->reason_len = (uint8_t)reason_len;
    if (reason_len) /* reason may be NULL then */
        memcpy(d->reason, reason, reason_len);
    push_ws(lb->L, c);
    d->ws_ref = luaL_ref(lb->L, LUA_REGISTRYINDEX);
}

int lbridge_connect(struct lbridge *lb, struct conn *c)
{
    int ref;
    lua_State *co = entry_co(lb, &ref);
    if (!push_handler(co, c->app, H_CONNECT)) {
        entry_co_unused(lb, co, ref);
        return 0;
    }
    push_ws(co, c);
    lconn_push_request(co, lua_gettop(co));
    struct lb_call call = {c->app, c->id, c->app->handler_ref[H_CONNECT], NULL};
    struct lwait_task *t;
    int rc = lwait_run(lb, co, ref, &call, 2, LW_CONNECT, &t);
    if (rc == LB_WAITING) {
        conn_waits(lb, c, t);
    } else if (rc) {
        log_handler_error(lb->L, c->app, conn_path(c), c->id, "on_connect");
        rc = -1;
    }
    drain(lb);
    return rc;
}

void lbridge_connect_kept(struct lbridge *lb, struct conn *c, struct conn_connect *cc)
{
    struct lb_waiting *w = waiting_find(lb, c->id);
    if (w)
        w->cc = cc;
    else if (cc) /* out of memory for the record: answer as it is now */
        conn_connect_done(c, cc, 0);
}

void lbridge_message_slow(struct lbridge *lb, struct conn *c, const uint8_t *data, size_t len,
                          int binary, int stable)
{
    struct lb_batch *b = &lb->batch;
    if (c->app->handler_ref[H_MESSAGE] == LUA_NOREF) { /* counted, never delivered */
        c->msgs_in++;
        c->bytes_in += len;
        METRIC_ADD(c->app->metrics->msgs_in, 1);
        METRIC_ADD(c->app->metrics->bytes_in, len);
        return;
    }
    if (b->n && b->c != c) /* another connection's: the caller forgot to dispatch */
        lbridge_dispatch(lb);
    if (!stable || len > UINT32_MAX) {
        lua_State *L = lb->L;
        lua_rawgeti(L, LUA_REGISTRYINDEX, lb->batch_ref);
        lua_pushlstring(L, (const char *)data, len);
        lua_rawseti(L, -2, b->n + 1);
        lua_pop(L, 1);
        data = NULL;
    }
    lb_batch_add(b, c, data, len, binary);
    if (b->n == LB_BATCH_MAX)
        lbridge_dispatch(lb);
}

void lbridge_settle(struct lbridge *lb, struct conn *c)
{
    struct lb_batch *b = &lb->batch;
    if (b->c != c || b->counted >= b->shared.cur)
        return;
    uint64_t bytes = 0;
    int from = b->counted;
    for (; b->counted < b->shared.cur; b->counted++)
        bytes += b->len[b->counted];
    c->msgs_in += (uint32_t)(b->counted - from);
    c->bytes_in += bytes;
    lb->gc_msgs += (uint64_t)(b->counted - from);
    lb->gc_bytes += bytes;
    METRIC_ADD(c->app->metrics->msgs_in, (uint64_t)(b->counted - from));
    METRIC_ADD(c->app->metrics->bytes_in, bytes);
}

/* The Lua side of lbridge_dispatch, made once: on_message once per waiting
 * message, stopping when the connection is no longer open. A message still
 * in the read buffer becomes its Lua string here, where LuaJIT compiles
 * ffi.string into the loop; one that is a string already is taken out of
 * the table. A plain loop, so LuaJIT compiles it, and the handler with it.
 * Called as dispatch(on_message, ws, n). */
static const char dispatch_src[] =
    "local ffi, msgs, shared, text, binary, OPEN, max = ...\n"
    "local string = ffi.string\n"
    "local b = ffi.cast(ffi.typeof('struct { const uint8_t *state; int32_t cur;'\n"
    "                              .. ' uint8_t binary[$]; const char *bytes[$];'\n"
    "                              .. ' uint32_t len[$]; } *', max, max, max), shared)\n"
    "return function(on_message, ws, n)\n"
    "  for i = 1, n do\n"
    "    b.cur = i\n"
    "    local data, p = nil, b.bytes[i - 1]\n"
    "    if p ~= nil then\n"
    "      data = string(p, b.len[i - 1])\n"
    "    else\n"
    "      data = msgs[i]\n"
    "      msgs[i] = nil\n"
    "    end\n"
    "    on_message(ws, data, b.binary[i - 1] ~= 0 and binary or text)\n"
    "    if b.state[0] ~= OPEN then return end\n"
    "  end\n"
    "end\n";

/* Build the loop of dispatch_src; -1 if it cannot be (no FFI). */
static int dispatch_open(struct lbridge *lb)
{
    lua_State *L = lb->L;
    int top = lua_gettop(L);
    if (lb_load_with(L, "ffi", dispatch_src, sizeof dispatch_src - 1, "=" LB_DISPATCH_CHUNK))
        return -1;
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lb->batch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, &lb->batch.shared);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lb->text_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lb->binary_ref);
    lua_pushinteger(L, CONN_OPEN);
    lua_pushinteger(L, LB_BATCH_MAX);
    if (lua_pcall(L, 7, 1, 0) || !lua_isfunction(L, -1)) {
        lua_settop(L, top);
        return -1;
    }
    lb->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, top);
    return 0;
}

void lbridge_dispatch(struct lbridge *lb)
{
    struct lb_batch *b = &lb->batch;
    int n = b->n;
    if (!n)
        return;
    b->n = 0; /* whatever the handlers cause, these are dispatched once */
    struct conn *c = b->c;
    if (lb->nwaiting) { /* its handler waits: these wait for it */
        struct lb_waiting *w = waiting_find(lb, c->id);
        if (w && w->task) {
            queue_batch(lb, w, 0, n);
            b->c = NULL;
            return;
        }
    }
    lua_State *L = lb->L, *co = lb->co;
    struct app *app = c->app;
    /* [dispatch] [on_message] [ws] [n], on the coroutine handlers run in:
     * no call runs now, on_message is only ever called from the loop. */
    lua_rawgeti(co, LUA_REGISTRYINDEX, lb->dispatch_ref);
    push_handler(co, app, H_MESSAGE); /* a batch is only made when there is one */
    push_ws(co, c);
    lua_pushinteger(co, n);
    b->shared.state = &c->state;
    struct lb_call call = {app, c->id, app->handler_ref[H_MESSAGE], NULL};
    struct lwait_task *t;
    int rc = lwait_run(lb, co, lb->co_ref, &call, 3, LW_MESSAGE, &t);
    lbridge_settle(lb, c);
    int delivered = b->shared.cur;
    b->shared.cur = 0;
    b->shared.state = NULL;
    b->counted = 0;
    b->c = NULL;
    if (rc == LB_WAITING) { /* the rest of the batch waits with c's later events */
        struct lb_waiting *w = conn_waits(lb, c, t);
        if (w && delivered < n)
            queue_batch(lb, w, delivered, n);
        delivered = w ? n : delivered;
    } else if (rc) {
        log_handler_error(L, app, conn_path(c), c->id, "on_message");
        conn_close(c, WS_CLOSE_INTERNAL, "internal error");
    }
    if (delivered < n) { /* dropped: let go of the strings among them */
        lua_rawgeti(L, LUA_REGISTRYINDEX, lb->batch_ref);
        for (int i = delivered + 1; i <= n; i++) {
            if (b->shared.bytes[i - 1])
                continue;
            lua_pushnil(L);
            lua_rawseti(L, -2, i);
        }
        lua_pop(L, 1);
    }
    if (lb->ndeferred)
        drain(lb);
}

void lbridge_close(struct lbridge *lb, struct conn *c, uint16_t code, const char *reason,
                   size_t reason_len)
{
    lua_State *L = lb->L;
    /* Its ws:after/every timers end first: none fires once on_close has
     * started, also when on_close has to wait. */
    if (c->lua_ref != LUA_NOREF)
        lconn_cancel_timers(L, c);
    if (c->app->handler_ref[H_CLOSE] == LUA_NOREF)
        return;
    /* Its handler waits: on_close follows when that returns. */
    struct lb_waiting *w = waiting_find(lb, c->id);
    if (w && w->task && !w->close_owed) {
        close_fill(lb, &w->close, c, code, reason, reason_len);
        w->close_owed = 1;
        return;
    }
    /* Inside a call (a ws:send that overflowed c's queue, say): the running
     * handler must not be re-entered, so on_close waits for it. */
    if (lb->call && defer_close(lb, c, code, reason, reason_len) == 0)
        return;
    int ref;
    lua_State *co = entry_co(lb, &ref);
    push_handler(co, c->app, H_CLOSE);
    push_ws(co, c);
    lua_pushinteger(co, code);
    lua_pushlstring(co, reason, reason_len);
    run_on_close(lb, co, ref, c->app, c->id, strdup(conn_path(c)));
    drain(lb);
}

void lbridge_drain(struct lbridge *lb, struct conn *c)
{
    lua_State *L = lb->L;
    /* conn_flush runs from the server's callbacks, between calls into Lua;
     * should that ever change, a handler is still never re-entered. */
    if (lb->call || c->app->handler_ref[H_DRAIN] == LUA_NOREF)
        return;
    struct lb_waiting *w = waiting_find(lb, c->id);
    if (w && w->task) { /* its handler waits: on_drain follows it */
        w->drain_owed = 1;
        return;
    }
    lua_State *co = lb->co;
    push_handler(co, c->app, H_DRAIN);
    push_ws(co, c);
    struct lb_call call = {c->app, c->id, c->app->handler_ref[H_DRAIN], NULL};
    struct lwait_task *t;
    int rc = lwait_run(lb, co, lb->co_ref, &call, 1, LW_DRAIN, &t);
    if (rc == LB_WAITING) {
        conn_waits(lb, c, t);
    } else if (rc) {
        log_handler_error(L, c->app, conn_path(c), c->id, "on_drain");
        conn_close(c, WS_CLOSE_INTERNAL, "internal error");
    }
    drain(lb);
}

void lbridge_timer(struct lbridge *lb, struct app *app, uint64_t conn_id, int nargs)
{
    int ref;
    lua_State *co = entry_co(lb, &ref);
    lua_xmove(lb->L, co, nargs + 1);
    struct lb_call call = {app, conn_id, LUA_NOREF, NULL};
    struct lwait_task *t;
    if (lwait_run(lb, co, ref, &call, nargs, LW_TIMER, &t) < 0)
        lbridge_task_failed(lb, app, conn_id, LW_TIMER);
    drain(lb);
}

void lbridge_unref(struct lbridge *lb, int ref)
{
    luaL_unref(lb->L, LUA_REGISTRYINDEX, ref);
}

/* LuaJIT hands out machine code from its areas like a stack and takes none
 * back when a trace dies: only a flush of every trace frees the areas. The
 * traces of an app's old version die with it (the collector frees them),
 * but their code stays, and OpenResty's LuaJIT lets the areas grow to
 * 40 MiB (maxmcode=40960) before it flushes by itself: every reload left
 * its compiled code behind, a few hundred bytes to kilobytes of RSS each.
 * A flush after the reloads ends that; hot code recompiles within a few
 * hundred calls, as it did after the reload anyway. */
void lbridge_flush_jit(struct lbridge *lb)
{
    luaJIT_setmode(lb->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_FLUSH);
}

/* Every message is a new Lua string, so the collector's cost per message
 * is set by how much garbage it lets pile up between cycles: each cycle
 * marks the whole live heap, and with the default pause (a cycle starts
 * when the heap has doubled) a small heap means a cycle every few hundred
 * messages. So the pause lets the heap grow by a slack beyond what is in
 * use (estimated by the heap's size now, garbage included, which only
 * errs towards a smaller pause), and never by less than the default
 * doubling. A heap over the slack gets the default; a small one spends at
 * most the slack in more memory. The pause is read when a cycle ends, so
 * setting it once per loop iteration is soon enough.
 *
 * The slack is GC_SLACK_KIB, small on purpose: new strings are written to
 * memory the last sweep freed, and garbage that fits in a core's L2 cache
 * keeps those writes cheap. A larger slack saves a few more instructions
 * and loses more to cache misses (see the commit that set it). But large
 * messages fill it in a few dozen: with 16 KiB messages a cycle came every
 * ~60, and the collector took ~6,900 instructions per message. So the
 * slack is also GC_SLACK_MSGS times the mean size of the messages handed
 * to on_message lately, up to GC_SLACK_MAX_KIB. Only the messages
 * themselves count: a handler that makes large tables per message (a
 * thousand-key reply, say) keeps the small slack, since what it keeps
 * alive is no garbage and its garbage is its own to pace. */
#define GC_SLACK_KIB 512
#define GC_SLACK_MSGS 256
#define GC_SLACK_MAX_KIB 8192
#define GC_PAUSE_DEFAULT 200

/* A large slack frees the strings of large messages by the megabyte, and
 * glibc gives memory at the top of its heap back to the system once 128
 * KiB of it is free, for the next messages to fault it in again, page by
 * page: 0.06 page faults per 16 KiB message, more with larger ones. So
 * while the slack is grown, malloc keeps twice the slack mapped (setting
 * that threshold stops glibc from moving its mmap threshold on its own,
 * so that one is set too: blocks up to GC_MMAP_MIB come from the heap).
 * When large messages stop (their mean falls to half of what grows the
 * slack: the gap keeps a mix near the edge from going to and fro), glibc's
 * threshold comes back, and once the collector has freed the last large
 * strings (the heap has shrunk by half the old slack), malloc_trim gives
 * the freed heap back, from the middle of the heap too. A server that
 * never sees large messages keeps glibc's defaults. */
#define GC_MMAP_MIB 4
#define GC_TRIM_DEFAULT_KIB 128 /* glibc's own */
#define GC_TRIM_EVERY 10.0

static void keep_mapped(struct lbridge *lb, size_t slack_kib, long heap_kib)
{
#ifdef __GLIBC__
    if (slack_kib > GC_SLACK_KIB) { /* grown: keep twice the slack */
        size_t want = slack_kib * 2;
        if (want <= lb->gc_trim_kib)
            return;
        if (!lb->gc_trim_kib)
            mallopt(M_MMAP_THRESHOLD, GC_MMAP_MIB << 20);
        mallopt(M_TRIM_THRESHOLD, (int)(want * 1024));
        lb->gc_trim_kib = want;
        lb->gc_trim_below = 0;
    } else if (lb->gc_trim_kib && slack_kib < GC_SLACK_KIB / 2) {
        mallopt(M_TRIM_THRESHOLD, GC_TRIM_DEFAULT_KIB * 1024);
        /* Trim once the collector has freed the large strings: the heap
         * down by half the old slack. One not that much over the small
         * slack has freed them already: trim now. */
        long below = heap_kib - (long)(lb->gc_trim_kib / 4);
        lb->gc_trim_below = below > GC_SLACK_KIB ? below : LONG_MAX;
        lb->gc_trim_kib = 0;
    }
    if (lb->gc_trim_below && heap_kib <= lb->gc_trim_below) {
        /* At most every GC_TRIM_EVERY s: a mix of sizes that crosses the
         * gap back and forth must not make the loop walk the heap each time */
        double now = ev_now(lb->srv->loop);
        if (now - lb->gc_trimmed >= GC_TRIM_EVERY) {
            malloc_trim(0);
            lb->gc_trimmed = now;
        }
        lb->gc_trim_below = 0;
    }
#else
    (void)lb;
    (void)slack_kib;
    (void)heap_kib;
#endif
}

void lbridge_tune_gc(struct lbridge *lb)
{
    /* Over the loop iterations since the last look; one without messages
     * (a timer's, a reload's) leaves the mean as it was. */
    uint64_t msgs = lb->gc_msgs - lb->gc_seen_msgs;
    if (msgs) {
        size_t size = (size_t)((lb->gc_bytes - lb->gc_seen_bytes) / msgs);
        lb->gc_msg_size = (lb->gc_msg_size * 7 + size) / 8; /* the last dozen or so */
        lb->gc_seen_msgs = lb->gc_msgs;
        lb->gc_seen_bytes = lb->gc_bytes;
    }
    size_t slack = lb->gc_msg_size * GC_SLACK_MSGS / 1024;
    if (slack > GC_SLACK_MAX_KIB)
        slack = GC_SLACK_MAX_KIB;
    long kib = lua_gc(lb->L, LUA_GCCOUNT, 0);
    keep_mapped(lb, slack, kib);
    if (slack < GC_SLACK_KIB)
        slack = GC_SLACK_KIB;
    int pause = GC_PAUSE_DEFAULT;
    if (kib > 0 && kib < (long)slack)
        pause = (int)(100 * (kib + (long)slack) / kib);
    if (pause != lb->gc_pause) {
        lua_gc(lb->L, LUA_GCSETPAUSE, pause);
        lb->gc_pause = pause;
    }
}

void lbridge_app_closes(struct lbridge *lb, struct conn *c)
{
    struct lb_waiting *w = waiting_find(lb, c->id);
    if (!w)
        return;
    for (struct lb_qmsg *m = w->head, *next; m; m = next) {
        next = m->next;
        free(m);
    }
    w->head = NULL;
    w->tail = &w->head;
    w->nq = w->qbytes = 0;
}

void lbridge_release(struct lbridge *lb, struct conn *c)
{
    struct lb_waiting *w = waiting_find(lb, c->id);
    if (w) { /* its waiting handler goes on without it */
        if (w->head && c->lua_ref != LUA_NOREF && w->ws_ref == LUA_NOREF) {
            push_ws(lb->L, c); /* for the messages still queued */
            w->ws_ref = luaL_ref(lb->L, LUA_REGISTRYINDEX);
            w->app = c->app;
            w->path = strdup(conn_path(c));
        }
        w->c = NULL;
    }
    if (c->lua_ref == LUA_NOREF)
        return;
    lconn_detach(lb->L, c);
    c->lua_ref = LUA_NOREF;
}
