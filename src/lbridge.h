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

/* An app: one Lua file, shared by every route that names it. */
struct app {
    char *name;  /* for logs: "echo" */
    char *file;  /* path of the Lua file */
    int ref;     /* registry ref of the handlers table */
    unsigned version;
    struct app *next;
};

struct lbridge {
    lua_State *L;
    struct server *srv;
    struct app *apps;
    int traceback_ref; /* unused slot kept for symmetry: see lb_pcall */
};

struct lbridge *lbridge_new(struct server *srv, const char *apps_dir, char *err, size_t errlen);
void lbridge_free(struct lbridge *lb);

/* Load (once per file) the app in file. On error returns NULL with err set
 * to "file:line: message". */
struct app *lbridge_app(struct lbridge *lb, const char *file, const char *name, char *err,
                        size_t errlen);

/* Handshake done and routed: create the ws object and run on_connect.
 * Afterwards c->reply says accept or reject. Returns 0, or -1 if the app
 * raised (answer 500). */
int lbridge_connect(struct lbridge *lb, struct conn *c, const struct route_match *m,
                    const char *target, const char *protocols);

void lbridge_message(struct lbridge *lb, struct conn *c, const uint8_t *data, size_t len,
                     int binary);
void lbridge_close(struct lbridge *lb, struct conn *c, uint16_t code, const char *reason,
                   size_t reason_len);

/* The conn is going away: detach its ws object (methods then return
 * nil, "closed") and drop its refs. */
void lbridge_release(struct lbridge *lb, struct conn *c);

/* Protected call for anything in the bridge: nargs arguments above the
 * function on the stack. Logs the traceback with what (route, conn id).
 * Returns 0 or -1 (the error is logged and popped). */
int lb_pcall(lua_State *L, int nargs, int nresults, const char *what);

/* lconn.c */
void lconn_open(lua_State *L);
/* Push a new ws object for c; returns its registry ref (also pushed). */
int lconn_new(lua_State *L, struct conn *c);
void lconn_detach(lua_State *L, int ref);

/* lhost.c: register package.preload.moonport */
void lhost_open(lua_State *L, struct server *srv);

#endif
