/* reload: which app serves which route, and keeping that current while the
 * server runs. At start it loads the apps directory (NAME.lua at /NAME,
 * index.lua at /) and the config's routes. Then it watches the directories
 * those files live in with inotify, waits until a burst of writes settles,
 * and reloads what changed: a changed app, every app that requires a changed
 * module, a new file (a new route if it is an app), a deleted file (its
 * routes answer 404, its connections are closed with 1001). A file of the
 * apps directory is a route only if it defines a handler, no app requires
 * it, and /NAME needs no percent-encoding. SIGHUP reloads every app, the
 * config file and the TLS certificate and key. A version that fails to load
 * changes nothing. */
#ifndef MOONPORT_RELOAD_H
#define MOONPORT_RELOAD_H

#include <stddef.h>

struct server;

/* Load every route; start watching if cfg->reload, and handle SIGHUP.
 * Returns 0, or -1 with err set (a broken app at start: file:line). */
int reload_start(struct server *s, char *err, size_t errlen);
void reload_stop(struct server *s);

/* Reload everything now, as SIGHUP does. */
void reload_all(struct server *s);

/* With workers, in worker 1: worker's reload of the app name (len bytes)
 * went ok or not (its word, through the mesh). */
void reload_note(struct server *s, unsigned worker, const char *name, size_t len, int ok);

#endif
