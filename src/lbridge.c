/* lbridge: the lua_State, the apps, and every call from C into Lua. Each
 * app file runs in its own environment table whose misses fall through to
 * the shared globals, so one app's globals never leak into another's. Every
 * handler runs under lua_pcall with a traceback handler: an error is logged
 * with the app, the handler and the connection id, and then (for
 * on_message) closes that connection with 1011. */
#include "lbridge.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "conn.h"
#include "handshake.h"
#include "log.h"
#include "lrequest.h"
#include "router.h"
#include "server.h"

static int tracked_require(lua_State *L);

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
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

struct lbridge *lbridge_new(struct server *srv, const char *apps_dir, char *err, size_t errlen)
{
    struct lbridge *lb = calloc(1, sizeof *lb);
    if (!lb || !(lb->L = luaL_newstate())) {
        free(lb);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    lua_State *L = lb->L;
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
    lua_getglobal(L, "require");
    lua_pushlightuserdata(L, lb);
    lua_pushcclosure(L, tracked_require, 2);
    lua_setglobal(L, "require");
    lconn_open(L);
    lhost_open(L, srv);
    return lb;
}

static void app_free(struct app *a);

void lbridge_free(struct lbridge *lb)
{
    if (!lb)
        return;
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
    for (size_t i = 0; i < lb->nwatched; i++)
        free(lb->watched[i]);
    free(lb->watched);
    free(lb);
}

static const char *const handler_names[] = {"on_connect", "on_message", "on_close", "on_reload",
                                            NULL};

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
    lua_pushcfunction(L, traceback);
    lua_insert(L, -2);
    if (lua_pcall(L, 0, 1, -2)) {
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
    lua_replace(L, top + 1); /* the table, where the traceback function was */
    lua_settop(L, top + 1);
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

enum { H_CONNECT, H_MESSAGE, H_CLOSE };

/* Take refs to the handlers of the table on top of the stack, dropping the
 * previous version's: an event then costs one registry read, not a table
 * lookup by name. */
static void take_handlers(lua_State *L, struct app *a)
{
    for (int i = 0; i < 3; i++) {
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
    if (a)
        a->handler_ref[0] = a->handler_ref[1] = a->handler_ref[2] = LUA_NOREF;
    if (!a || !(a->name = strdup(name)) || !(a->file = strdup(file))) {
        app_free(a);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    file_sig_read(file, &a->sig);
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
        return NULL;
    }
    take_handlers(lb->L, a);
    a->ref = luaL_ref(lb->L, LUA_REGISTRYINDEX);
    a->version = 1;
    return a;
}

int lbridge_reload(struct lbridge *lb, struct app *a, char *err, size_t errlen)
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
        if (lb_pcall(L, 1, 0, NULL)) {
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

/* Push one of the app's handlers; returns 0 (nothing pushed) if it has none. */
static int push_handler(lua_State *L, const struct app *app, int which)
{
    if (app->handler_ref[which] == LUA_NOREF)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, app->handler_ref[which]);
    return 1;
}

static void log_handler_error(lua_State *L, const struct conn *c, const char *handler)
{
    log_error("app %s (%s) conn %llu: error in %s: %s", c->app->name, conn_path(c),
              (unsigned long long)c->id, handler, lua_tostring(L, -1));
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

int lbridge_connect(struct lbridge *lb, struct conn *c)
{
    lua_State *L = lb->L;
    if (!push_handler(L, c->app, H_CONNECT))
        return 0;
    push_ws(L, c);
    lconn_push_request(L, lua_gettop(L));
    if (lb_pcall(L, 2, 0, NULL)) {
        log_handler_error(L, c, "on_connect");
        return -1;
    }
    return 0;
}

void lbridge_message(struct lbridge *lb, struct conn *c, const uint8_t *data, size_t len,
                     int binary)
{
    lua_State *L = lb->L;
    if (c->app->handler_ref[H_MESSAGE] == LUA_NOREF)
        return;
    /* The hot path, so the stack is built in call order rather than through
     * lb_pcall's inserts:
     *   [message] [traceback] [on_message] [ws] [message] [kind]
     * The first copy of the message keeps it alive for the whole call, so
     * its address cannot be reused while it counts as checked. */
    int base = lua_gettop(L);
    lua_pushlstring(L, (const char *)data, len);
    lua_rawgeti(L, LUA_REGISTRYINDEX, traceback_ref);
    push_handler(L, c->app, H_MESSAGE);
    push_ws(L, c);
    lua_pushvalue(L, base + 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, binary ? lb->binary_ref : lb->text_ref);
    if (!binary) {
        lb->checked_text = lua_tostring(L, base + 1);
        lb->checked_len = len;
    }
    int rc = lua_pcall(L, 3, 0, base + 2);
    lb->checked_text = NULL;
    if (rc) {
        log_handler_error(L, c, "on_message");
        conn_close(c, WS_CLOSE_INTERNAL, "internal error");
    }
    lua_settop(L, base);
}

void lbridge_close(struct lbridge *lb, struct conn *c, uint16_t code, const char *reason,
                   size_t reason_len)
{
    lua_State *L = lb->L;
    if (!push_handler(L, c->app, H_CLOSE))
        return;
    push_ws(L, c);
    lua_pushinteger(L, code);
    lua_pushlstring(L, reason, reason_len);
    if (lb_pcall(L, 3, 0, NULL))
        log_handler_error(L, c, "on_close");
}

void lbridge_unref(struct lbridge *lb, int ref)
{
    luaL_unref(lb->L, LUA_REGISTRYINDEX, ref);
}

/* Every message is a new Lua string, so the collector's cost per message
 * is set by how much garbage it lets pile up between cycles: each cycle
 * marks the whole live heap, and with the default pause (a cycle starts
 * when the heap has doubled) a small heap means a cycle every few hundred
 * messages. So the pause lets the heap grow by GC_SLACK_KIB beyond what is
 * in use (estimated by the heap's size now, garbage included, which only
 * errs towards a smaller pause), and never by less than the default
 * doubling. A heap over GC_SLACK_KIB gets the default; a small one spends
 * at most GC_SLACK_KIB more memory. The pause is read when a cycle ends,
 * so setting it once per loop iteration is soon enough.
 * The slack is small on purpose: new strings are written to memory the
 * last sweep freed, and garbage that fits in a core's L2 cache keeps those
 * writes cheap. A larger slack saves a few more instructions and loses
 * more to cache misses (see the commit that set it). */
#define GC_SLACK_KIB 512
#define GC_PAUSE_DEFAULT 200

void lbridge_tune_gc(struct lbridge *lb)
{
    long kib = lua_gc(lb->L, LUA_GCCOUNT, 0);
    int pause = GC_PAUSE_DEFAULT;
    if (kib > 0 && kib < GC_SLACK_KIB)
        pause = (int)(100 * (kib + GC_SLACK_KIB) / kib);
    if (pause != lb->gc_pause) {
        lua_gc(lb->L, LUA_GCSETPAUSE, pause);
        lb->gc_pause = pause;
    }
}

void lbridge_release(struct lbridge *lb, struct conn *c)
{
    if (c->lua_ref == LUA_NOREF)
        return;
    lconn_detach(lb->L, c);
    c->lua_ref = LUA_NOREF;
}
