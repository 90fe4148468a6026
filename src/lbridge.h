/* lbridge: the only place C calls into Lua. It owns the lua_State, loads
 * each app file into its own environment, and runs the handlers through one
 * protected call with a traceback, so that a Lua error is a log line and a
 * closed connection, never an unwound C frame. The ws userdata (lconn.c)
 * and the moonport module (lhost.c) are the Lua-visible types. */
#ifndef MOONPORT_LBRIDGE_H
#define MOONPORT_LBRIDGE_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

struct server;
struct conn;
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
    int handler_ref[3]; /* on_connect, on_message, on_close as loaded, or LUA_NOREF */
    unsigned version;
    struct file_sig sig;
    int removed;      /* its file is gone: no routes lead to it */
    int dirty;        /* a module it requires changed: reload it */
    char **patterns;  /* the routes that serve it, to restore them */
    size_t npatterns;
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

struct lbridge {
    lua_State *L;
    /* The text message being handed to on_message, already checked as
     * UTF-8: ws:send of this very string need not check it again. */
    const char *checked_text;
    size_t checked_len;
    int text_ref, binary_ref; /* the kind strings, "text" and "binary" */
    const char *text_str, *binary_str; /* their bytes: Lua strings are interned,
                                          so a kind is recognised by address */
    int gc_pause;                      /* the pause last given to the collector */
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
 * Returns 0, or -1 if the app raised (answer 500). */
int lbridge_connect(struct lbridge *lb, struct conn *c);

void lbridge_message(struct lbridge *lb, struct conn *c, const uint8_t *data, size_t len,
                     int binary);
void lbridge_close(struct lbridge *lb, struct conn *c, uint16_t code, const char *reason,
                   size_t reason_len);

/* Once per event-loop iteration: keep the garbage collector's pause in
 * step with the size of the Lua heap (see lbridge.c). */
void lbridge_tune_gc(struct lbridge *lb);

/* The conn is going away: detach its ws object (methods then return
 * nil, "closed") and drop its refs. */
void lbridge_release(struct lbridge *lb, struct conn *c);

/* Let go of a registry ref that kept a queued payload alive. */
void lbridge_unref(struct lbridge *lb, int ref);

/* Protected call for anything in the bridge: nargs arguments above the
 * function on the stack, with a traceback handler. Returns 0, or -1 on an
 * error: with what, the error is logged as "what: message" and popped;
 * with what NULL, the message (with its traceback) is left on the stack for
 * the caller to log and pop. */
int lb_pcall(lua_State *L, int nargs, int nresults, const char *what);

/* lconn.c */
void lconn_open(lua_State *L);
/* Push a new ws object for c; returns its registry ref (the object is also
 * pushed). */
int lconn_new(lua_State *L, struct conn *c);
/* Push ws.request of the ws object at index ud. */
void lconn_push_request(lua_State *L, int ud);
/* The connection ended: the ws object forgets it and drops its registry
 * ref. If the app has not read ws.request yet, the object takes c->req, so
 * that it still can. */
void lconn_detach(lua_State *L, struct conn *c);

/* lhost.c: register package.preload.moonport */
void lhost_open(lua_State *L, struct server *srv);

#endif
