/* reload: the routes and their apps, kept current while the server runs.
 * Watching is by directory (inotify), not by file: editors save by rename,
 * by truncate-and-write, or in several writes, and only the directory sees
 * all of those. Events only arm a short timer; when writes have settled,
 * every app and module file is stat'ed and whatever changed is reloaded.
 * A broken version is logged (file:line) and the old one keeps serving.
 * With --workers, every worker watches and reloads for itself; the lines
 * they would all write alike are written by worker 1 (log_once), and the
 * line of an app's reload counts the workers it is live in: each other
 * worker tells worker 1 how its reload of the app went (mesh.h), and
 * worker 1 writes the line once all have, or after RELOAD_TALLY_WAIT. */
#include "reload.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "compress.h"
#include "conn.h"
#include "lbridge.h"
#include "log.h"
#include "metrics.h"
#include "mesh.h"
#include "router.h"
#include "server.h"
#include "tls.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#define SWAP(type, a, b) do { type swap_ = (a); (a) = (b); (b) = swap_; } while (0)

#define SETTLE_SECONDS 0.1 /* quiet time after the last event */
#define SETTLE_MAX 0.8     /* never wait longer than this after the first */
#define RELOAD_TALLY_WAIT 2.0 /* worker 1 waits this long for the others' word */

/* Worker 1's count of how an app's reload went in each worker, from the
 * first word of it until the line is written. Its own outcome gives the
 * line's details (version, time, reason, error). */
struct tally {
    struct tally *next;
    struct server *srv;
    ev_timer timer;
    char *name;
    unsigned ok, failed;
    uint8_t *seen; /* per worker: 0 not yet, 1 ok, 2 failed */
    int own;       /* worker 1's outcome is in: */
    int own_ok;
    char *own_file, *own_why, *own_err;
    unsigned own_version;
    double own_ms;
};

/* A NAME.lua of the apps directory and what became of it. Only a file that
 * defines a handler, and that no app or module requires, is a route: a
 * helper module next to the apps must never answer a handshake. */
enum dir_state {
    DIR_NEW,      /* not looked at yet */
    DIR_ROUTE,    /* an app, served at /NAME */
    DIR_HELPER,   /* loaded, defines no handler: not a route */
    DIR_REQUIRED, /* required by an app: not a route; it lives through require */
    DIR_REFUSED,  /* /NAME would need percent-encoding: not served */
};

struct dir_file {
    char *name; /* NAME */
    char *file; /* APPS_DIR/NAME.lua */
    char *route;
    struct app *app; /* NULL if it never ran as a possible app */
    enum dir_state state;
    struct dir_file *next;
};

struct reload {
    struct server *srv;
    struct dir_file *files;
    int ifd; /* inotify, or -1 */
    ev_io inotify_w;
    ev_timer settle_w;
    ev_signal hup_w;
    ev_tstamp first_event;
    int ran; /* app code was loaded since the last flush of compiled code */
    struct tally *tallies; /* worker 1, with workers: reloads being counted */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Route pattern -> app, remembered on the app so a deleted file that comes
 * back gets its routes back. */
static int serve(struct server *s, struct app *a, const char *pattern, char *err, size_t errlen)
{
    if (router_add(s->router, pattern, a, err, errlen))
        return -1;
    for (size_t i = 0; i < a->npatterns; i++)
        if (strcmp(a->patterns[i], pattern) == 0)
            return 0;
    char **p = realloc(a->patterns, (a->npatterns + 1) * sizeof *p);
    if (!p || !(p[a->npatterns] = strdup(pattern))) {
        if (p)
            a->patterns = p;
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    a->patterns = p;
    a->npatterns++;
    metrics_app_routes(a->metrics, a->patterns, a->npatterns);
    return 0;
}

/* Take a route back from an app: the inverse of serve(). */
static void unserve(struct server *s, struct app *a, const char *pattern)
{
    router_remove(s->router, pattern);
    for (size_t i = 0; i < a->npatterns; i++) {
        if (strcmp(a->patterns[i], pattern) == 0) {
            free(a->patterns[i]);
            a->patterns[i] = a->patterns[--a->npatterns];
            metrics_app_routes(a->metrics, a->patterns, a->npatterns);
            return;
        }
    }
}

static int is_app_file(const char *name)
{
    size_t l = strlen(name);
    return l > 4 && name[0] != '.' && strcmp(name + l - 4, ".lua") == 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The NAME of every NAME.lua in dir, sorted; NULL-terminated. */
static char **list_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char **names = calloc(1, sizeof *names);
    size_t n = 0;
    struct dirent *e;
    while (names && (e = readdir(d))) {
        if (!is_app_file(e->d_name))
            continue;
        char **nn = realloc(names, (n + 2) * sizeof *nn);
        if (!nn)
            break;
        names = nn;
        names[n] = strndup(e->d_name, strlen(e->d_name) - 4);
        names[++n] = NULL;
    }
    closedir(d);
    if (names)
        qsort(names, n, sizeof *names, by_name);
    return names;
}

static void free_list(char **names)
{
    for (char **p = names; p && *p; p++)
        free(*p);
    free(names);
}

/* The first character of NAME that a request path would percent-encode,
 * or NULL: /NAME is only reachable when there is none. */
static const char *unroutable_char(const char *name)
{
    for (const char *p = name; *p; p++)
        if (!route_char(*p))
            return p;
    return NULL;
}

/* The record of a module that an app or another module requires from
 * file, or NULL. */
static const struct module *required(const struct lbridge *lb, const char *file)
{
    for (const struct module *m = lb->modules; m; m = m->next)
        if ((m->nusers || m->nparents) && strcmp(m->file, file) == 0)
            return m;
    return NULL;
}

static const char *required_by(const struct module *m)
{
    return m->nusers ? m->users[0]->file : m->parents[0]->file;
}

static int has_handler(const struct app *a)
{
    for (int i = 0; i < 3; i++)
        if (a->handler_ref[i] != LUA_NOREF)
            return 1;
    return 0;
}

static struct dir_file *dir_file_of_app(const struct reload *r, const struct app *a)
{
    for (struct dir_file *f = r->files; f; f = f->next)
        if (f->app == a)
            return f;
    return NULL;
}

static void dir_file_free(struct dir_file *f)
{
    if (!f)
        return;
    free(f->name);
    free(f->file);
    free(f->route);
    free(f);
}

static void close_app_conns(struct server *s, const struct app *a, const char *why)
{
    size_t n = 0;
    for (struct conn *c = s->open.head, *next; c; c = next) {
        next = c->next; /* conn_close moves c to the closing list (or drops it) */
        if (c->app == a && c->state == CONN_OPEN) {
            conn_close(c, WS_CLOSE_GOING_AWAY, why);
            n++;
        }
    }
    log_info("app %s (%s) %s: its routes answer 404; %zu connection(s) closed with 1001",
             a->name, a->file, why, n);
}

static void tally_free(struct tally *t)
{
    free(t->name);
    free(t->seen);
    free(t->own_file);
    free(t->own_why);
    free(t->own_err);
    free(t);
}

/* Write t's line and forget t. */
static void tally_write(struct reload *r, struct tally *t)
{
    struct server *s = t->srv;
    for (struct tally **pp = &r->tallies; *pp; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    ev_timer_stop(s->loop, &t->timer);
    unsigned n = s->nworkers, silent = n - t->ok - t->failed;
    char where[96];
    if (t->ok == n || t->failed == n)
        snprintf(where, sizeof where, " in %u workers", n);
    else if (t->ok)
        snprintf(where, sizeof where, " in %u of %u workers (%u failed, %u did not answer)", t->ok,
                 n, t->failed, silent);
    else
        snprintf(where, sizeof where, " in %u of %u workers (%u did not answer)", t->failed, n,
                 silent);
    if (!t->own)
        log_msg(t->failed || silent ? LOG_ERROR : LOG_INFO,
                "reload %s: ok%s; worker 1 did not reload it", t->name, where);
    else if (t->own_ok)
        log_msg(t->failed || silent ? LOG_ERROR : LOG_INFO, "reload %s (%s) v%u ok in %.1f ms (%s)%s",
                t->name, t->own_file, t->own_version, t->own_ms, t->own_why, where);
    else
        log_msg(LOG_ERROR, "reload %s (%s) failed in %.1f ms, v%u keeps serving%s: %s", t->name,
                t->own_file, t->own_ms, t->own_version, where, t->own_err);
    tally_free(t);
}

static void on_tally_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct tally *t = container_of(w, struct tally, timer);
    tally_write(t->srv->reload, t);
}

/* Worker w's reload of app name went ok or not: count it (worker 1 only).
 * The tally for name is the newest not yet written: a worker's second word
 * before the line is written replaces its first. */
static struct tally *tally_count(struct server *s, unsigned w, const char *name, size_t len, int ok)
{
    struct reload *r = s->reload;
    if (!r || w < 1 || w > s->nworkers)
        return NULL;
    struct tally *t = r->tallies;
    while (t && !(strlen(t->name) == len && memcmp(t->name, name, len) == 0))
        t = t->next;
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t || !(t->seen = calloc(s->nworkers, 1)) || !(t->name = strndup(name, len))) {
            if (t)
                tally_free(t);
            log_warn("reload %.*s: no memory to count the workers' reloads", (int)len, name);
            return NULL;
        }
        t->srv = s;
        ev_timer_init(&t->timer, on_tally_timer, RELOAD_TALLY_WAIT, 0);
        ev_timer_start(s->loop, &t->timer);
        t->next = r->tallies;
        r->tallies = t;
    }
    uint8_t *seen = &t->seen[w - 1];
    if (*seen == 1)
        t->ok--;
    else if (*seen == 2)
        t->failed--;
    *seen = ok ? 1 : 2;
    if (ok)
        t->ok++;
    else
        t->failed++;
    return t;
}

static void tally_check(struct server *s, struct tally *t)
{
    if (t && t->own && t->ok + t->failed == s->nworkers)
        tally_write(s->reload, t);
}

void reload_note(struct server *s, unsigned worker, const char *name, size_t len, int ok)
{
    tally_check(s, tally_count(s, worker, name, len, ok));
}

static void reload_app(struct server *s, struct app *a, const char *why)
{
    char err[1024];
    double t0 = now_ms();
    s->reload->ran = 1;
    int rc = lbridge_reload(s->lb, a, err, sizeof err);
    double ms = now_ms() - t0;
    if (s->worker == 1) /* one count per reload, as one log line, however many workers */
        METRIC_ADD(*(rc == 0 ? &s->metrics->reloads_ok : &s->metrics->reloads_failed), 1);
    struct dir_file *f = rc == 0 ? dir_file_of_app(s->reload, a) : NULL;
    if (f) /* require(NAME) gets this version, without running it again */
        lbridge_provide(s->lb, a, f->name);
    if (s->nworkers > 1 && s->worker == 1) { /* the line waits for the others' word */
        struct tally *t = tally_count(s, 1, a->name, strlen(a->name), rc == 0);
        if (t) {
            free(t->own_file);
            free(t->own_why);
            free(t->own_err);
            t->own = 1;
            t->own_ok = rc == 0;
            t->own_file = strdup(a->file);
            t->own_why = strdup(why);
            t->own_err = strdup(rc == 0 ? "" : err);
            t->own_version = a->version;
            t->own_ms = ms;
            if (!t->own_file || !t->own_why || !t->own_err) {
                tally_write(s->reload, t); /* says less, but says it now */
                return;
            }
            tally_check(s, t);
            return;
        }
    } else if (s->nworkers > 1 && s->mesh) {
        mesh_note_reload(s->mesh, 1, a->name, strlen(a->name), rc == 0);
    }
    if (rc == 0)
        log_once(LOG_INFO, "reload %s (%s) v%u ok in %.1f ms (%s)%s", a->name, a->file, a->version,
                 ms, why, log_in_workers());
    else
        log_once(LOG_ERROR, "reload %s (%s) failed in %.1f ms, v%u keeps serving%s: %s", a->name,
                 a->file, ms, a->version, log_in_workers(), err);
}

/* Put a file that ran as a possible app where it belongs now: a route if
 * it defines a handler and nothing requires it, otherwise not (a file only
 * ever gains requirers while the server runs: an app that stops requiring
 * it leaves it a module until the next start). */
static void settle(struct server *s, struct dir_file *f)
{
    struct app *a = f->app;
    if (!a || a->removed || f->state == DIR_REFUSED)
        return;
    const struct module *m = required(s->lb, f->file);
    enum dir_state want = m ? DIR_REQUIRED : has_handler(a) ? DIR_ROUTE : DIR_HELPER;
    if (want == f->state)
        return;
    enum dir_state was = f->state;
    f->state = want;
    char err[1024];
    if (want == DIR_ROUTE) {
        if (serve(s, a, f->route, err, sizeof err)) {
            log_once(LOG_ERROR, "%s: not served: %s", f->file, err);
            f->state = DIR_HELPER;
        } else if (was != DIR_NEW) {
            log_once(LOG_INFO, "%s: now an app at %s (it defines a handler)", f->file, f->route);
        }
        return;
    }
    if (was == DIR_ROUTE) {
        unserve(s, a, f->route);
        if (!a->npatterns)
            close_app_conns(s, a, "is a module now");
    }
    if (m)
        log_once(LOG_INFO, "%s: a module, not a route (required by %s)", f->file, required_by(m));
    else
        log_once(LOG_INFO, "%s: a module, not a route (it defines none of on_connect, on_message, "
                 "on_close)", f->file);
}

/* The first look at a file of the apps directory: refused, a module an app
 * has required already, or run as a possible app. Returns 0, or -1 with err
 * set if it is a possible app that fails to load. */
static int examine(struct server *s, struct dir_file *f, char *err, size_t errlen)
{
    const char *bad = unroutable_char(f->name);
    if (bad) {
        f->state = DIR_REFUSED;
        log_once(LOG_WARN, "%s: not served: its route %s would need percent-encoding ('%c' is byte "
                 "0x%02X), so no request could reach it; name apps with letters, digits, "
                 "- . _ ~", f->file, f->route,
                 (unsigned char)*bad >= 0x20 && (unsigned char)*bad < 0x7f ? *bad : '?',
                 (unsigned char)*bad);
        return 0;
    }
    const struct module *m = required(s->lb, f->file);
    if (m) { /* an app required it first: it has run, through require */
        f->state = DIR_REQUIRED;
        log_once(LOG_INFO, "%s: a module, not a route (required by %s)", f->file, required_by(m));
        return 0;
    }
    s->reload->ran = 1;
    f->app = lbridge_app(s->lb, f->file, f->name, err, errlen);
    if (!f->app)
        return -1;
    lbridge_provide(s->lb, f->app, f->name);
    return 0; /* the caller settles it, once every file has been looked at */
}

static struct dir_file *dir_file_new(struct server *s, const char *name)
{
    struct dir_file *f = calloc(1, sizeof *f);
    const char *dir = s->cfg->apps_dir;
    if (!f || !(f->name = strdup(name)) || !(f->file = malloc(strlen(dir) + strlen(name) + 6)) ||
        !(f->route = malloc(strlen(name) + 2))) {
        dir_file_free(f);
        return NULL;
    }
    sprintf(f->file, "%s/%s.lua", dir, name);
    sprintf(f->route, "/%s", strcmp(name, "index") ? name : "");
    return f;
}

/* New files become routes (or not, see settle); files that reappeared get
 * their routes back; apps whose file is gone lose their routes and their
 * connections. */
static void sync_dir(struct server *s)
{
    const char *dir = s->cfg->apps_dir;
    char **names = dir ? list_dir(dir) : NULL;
    struct reload *r = s->reload;
    for (char **p = names; p && *p; p++) {
        char err[1024];
        struct dir_file *f = r->files;
        while (f && strcmp(f->name, *p) != 0)
            f = f->next;
        if (!f) {
            if (!(f = dir_file_new(s, *p)))
                continue;
            if (examine(s, f, err, sizeof err)) {
                log_once(LOG_ERROR, "new app %s not served: %s", f->file, err);
                dir_file_free(f); /* looked at again on the next change */
                continue;
            }
            f->next = r->files;
            r->files = f;
            settle(s, f);
            if (f->state == DIR_ROUTE)
                log_once(LOG_INFO, "new app %s (%s) at %s", f->app->name, f->file, f->route);
            continue;
        }
        struct app *a = f->app;
        if (a && a->removed) {
            if (f->state != DIR_REQUIRED) /* a module comes back through require */
                reload_app(s, a, "file is back");
            a->removed = 0;
            for (size_t i = 0; i < a->npatterns; i++)
                if (router_add(s->router, a->patterns[i], a, err, sizeof err))
                    log_once(LOG_ERROR, "app %s: %s", a->name, err);
        }
    }
    /* A file that never ran as an app is forgotten when it goes, so that
     * a new one of that name is looked at afresh. */
    for (struct dir_file **pf = &r->files, *f; (f = *pf);) {
        struct stat st;
        if (!f->app && stat(f->file, &st) != 0 && errno == ENOENT) {
            *pf = f->next;
            dir_file_free(f);
        } else {
            pf = &f->next;
        }
    }
    free_list(names);
    for (struct app *a = s->lb->apps; a; a = a->next) {
        struct stat st;
        if (a->removed || stat(a->file, &st) == 0 || errno != ENOENT)
            continue;
        a->removed = 1;
        router_remove_app(s->router, a);
        if (a->npatterns)
            close_app_conns(s, a, "removed");
    }
}

/* Reload what changed (or everything, when forced). A changed module is
 * stale, and so is every module that requires a stale one (it holds the
 * old value); every app that requires a stale module reloads. */
static void check_changes(struct server *s, int force)
{
    struct lbridge *lb = s->lb;
    for (struct module *m = lb->modules; m; m = m->next) {
        struct file_sig sig;
        file_sig_read(m->file, &sig);
        m->stale = force || !file_sig_equal(&sig, &m->sig);
        m->sig = sig;
        if (m->stale && !force)
            log_once(LOG_INFO, "module %s (%s) changed", m->name, m->file);
    }
    /* A module that ran first as a possible app (see examine) is recorded
     * as an app by the modules it required: treat it as their parent. */
    for (int spread = 1; spread;) {
        spread = 0;
        for (struct module *m = lb->modules; m; m = m->next) {
            for (size_t i = 0; m->stale && i < m->nparents; i++)
                if (!m->parents[i]->stale)
                    spread = m->parents[i]->stale = 1;
            for (size_t i = 0; m->stale && i < m->nusers; i++) {
                struct dir_file *f = dir_file_of_app(s->reload, m->users[i]);
                if (!f || f->state != DIR_REQUIRED)
                    continue;
                for (struct module *p = lb->modules; p; p = p->next)
                    if (!p->stale && strcmp(p->file, f->file) == 0)
                        spread = p->stale = 1;
            }
        }
    }
    for (struct module *m = lb->modules; m; m = m->next) {
        if (!m->stale)
            continue;
        lbridge_forget_module(lb, m->name);
        for (size_t i = 0; i < m->nusers; i++)
            m->users[i]->dirty = 1;
    }
    for (struct app *a = lb->apps; a; a = a->next) {
        struct dir_file *f = dir_file_of_app(s->reload, a);
        if (a->removed || (f && f->state == DIR_REQUIRED))
            continue; /* a required module reloads through require */
        struct file_sig sig;
        file_sig_read(a->file, &sig);
        int changed = !file_sig_equal(&sig, &a->sig);
        if (force || changed || a->dirty)
            reload_app(s, a, force ? "SIGHUP" : changed ? "file changed" : "a module changed");
        a->dirty = 0;
    }
    /* A reload may have added or dropped handlers, or required a file. */
    for (struct dir_file *f = s->reload->files; f; f = f->next)
        settle(s, f);
}

static void watch_dir(struct reload *r, const char *dir)
{
    if (r->ifd < 0)
        return;
    uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE |
                    IN_MODIFY | IN_ATTRIB;
    if (inotify_add_watch(r->ifd, dir, mask) < 0)
        log_once(LOG_WARN, "cannot watch %s for changes: %s", dir, strerror(errno));
}

/* The directory part of a path ("." for none). */
static void dir_of(const char *file, char *out, size_t len)
{
    const char *slash = strrchr(file, '/');
    if (!slash)
        snprintf(out, len, ".");
    else
        snprintf(out, len, "%.*s", (int)(slash - file), file);
}

/* Directories to watch and to track modules in: the apps directory and
 * the directories of the config's route files. */
static void watch_all(struct server *s)
{
    struct reload *r = s->reload;
    if (s->cfg->apps_dir) {
        lbridge_watch_dir(s->lb, s->cfg->apps_dir);
        watch_dir(r, s->cfg->apps_dir);
    }
    for (size_t i = 0; i < s->cfg->nroutes; i++) {
        char dir[4096];
        dir_of(s->cfg->routes[i].file, dir, sizeof dir);
        lbridge_watch_dir(s->lb, dir);
        watch_dir(r, dir);
    }
}

/* Modules may sit in subdirectories (apps/lib/util.lua): watch those too. */
static void watch_modules(struct server *s)
{
    for (struct module *m = s->lb->modules; m; m = m->next) {
        char dir[4096];
        dir_of(m->file, dir, sizeof dir);
        watch_dir(s->reload, dir);
    }
}

/* The end of a round of reloads: the code compiled for the versions it
 * replaced (or for a broken one, or a file that turned out not to load)
 * would stay allocated for good (lbridge_flush_jit). Once per round, not
 * per app: a SIGHUP reloads them all. */
static void reloads_done(struct server *s)
{
    if (!s->reload->ran)
        return;
    s->reload->ran = 0;
    lbridge_flush_jit(s->lb);
}

static void on_settled(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct reload *r = container_of(w, struct reload, settle_w);
    ev_timer_stop(loop, w); /* one scan per burst of events */
    r->first_event = 0;
    sync_dir(r->srv);
    check_changes(r->srv, 0);
    watch_modules(r->srv);
    reloads_done(r->srv);
}

static void on_inotify(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct reload *r = container_of(w, struct reload, inotify_w);
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    while (read(r->ifd, buf, sizeof buf) > 0)
        ; /* the events only say "look again"; the scan finds what changed */
    ev_tstamp now = ev_now(loop);
    if (!r->first_event)
        r->first_event = now;
    /* Wait for quiet, but not forever under a steady stream of writes. */
    if (now - r->first_event < SETTLE_MAX || !ev_is_active(&r->settle_w))
        ev_timer_again(loop, &r->settle_w);
}

static void watching(struct server *s, int on)
{
    struct reload *r = s->reload;
    if (on && r->ifd < 0) {
        r->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (r->ifd < 0) {
            log_once(LOG_WARN, "cannot watch app files (inotify: %s); SIGHUP still reloads",
                     strerror(errno));
            return;
        }
        ev_io_init(&r->inotify_w, on_inotify, r->ifd, EV_READ);
        ev_io_start(s->loop, &r->inotify_w);
        watch_all(s);
    } else if (!on && r->ifd >= 0) {
        ev_io_stop(s->loop, &r->inotify_w);
        ev_timer_stop(s->loop, &r->settle_w);
        close(r->ifd);
        r->ifd = -1;
    }
}

/* Read the options and the config file again and apply what can change
 * while running. */
static void reload_config(struct server *s)
{
    struct config *c = s->cfg;
    if (!c->config_file)
        return;
    struct config fresh;
    char err[1024];
    config_init(&fresh);
    if (config_load(&fresh, s->argc, s->argv, err, sizeof err) != CONFIG_OK) {
        log_once(LOG_ERROR, "SIGHUP: config not reloaded, the running one stays: %s", err);
        config_free(&fresh);
        return;
    }
    if (strcmp(fresh.host, c->host) != 0 || (fresh.port != c->port && fresh.port != 0))
        log_once(LOG_WARN, "SIGHUP: the listen address changed to %s:%d; it takes effect on restart",
                 fresh.host, fresh.port);
    if (fresh.workers != c->workers)
        log_once(LOG_WARN, "SIGHUP: workers changed to %u; it takes effect on restart",
                 fresh.workers);
    int bp_same = fresh.nbackplane == c->nbackplane &&
                  strcmp(fresh.backplane_prefix, c->backplane_prefix) == 0;
    for (size_t i = 0; bp_same && i < c->nbackplane; i++)
        bp_same = strcmp(fresh.backplane[i], c->backplane[i]) == 0;
    if (!bp_same)
        log_once(LOG_WARN, "SIGHUP: the backplane changed; it takes effect on restart");
    c->backplane_max_pending = fresh.backplane_max_pending;
    if ((fresh.apps_dir == NULL) != (c->apps_dir == NULL) ||
        (fresh.apps_dir && strcmp(fresh.apps_dir, c->apps_dir) != 0))
        log_once(LOG_WARN, "SIGHUP: the apps directory changed; it takes effect on restart");
    if (!fresh.tls_cert != !c->tls_cert) {
        log_once(LOG_WARN, "SIGHUP: TLS was turned %s; it takes effect on restart",
                 fresh.tls_cert ? "on" : "off");
    } else if (fresh.tls_cert) { /* reload_tls reads them */
        free(c->tls_cert);
        free(c->tls_key);
        c->tls_cert = fresh.tls_cert;
        c->tls_key = fresh.tls_key;
        fresh.tls_cert = fresh.tls_key = NULL;
    }
    c->log_level = fresh.log_level;
    c->log_access = fresh.log_access;
    log_threshold = c->log_level;
    log_access_on = c->log_access;
    c->log_json = fresh.log_json;
    log_json = c->log_json;
    c->max_message = fresh.max_message;
    c->max_fragments = fresh.max_fragments;
    c->max_head = fresh.max_head;
    c->max_headers = fresh.max_headers;
    c->send_buffer = fresh.send_buffer;
    c->max_send_buffer = fresh.max_send_buffer;
    c->max_connections = fresh.max_connections;
    c->messages_per_second = fresh.messages_per_second;
    c->bytes_per_second = fresh.bytes_per_second;
    c->burst_messages = fresh.burst_messages;
    c->burst_bytes = fresh.burst_bytes;
    c->rate_close = fresh.rate_close;
    c->inbound_memory = fresh.inbound_memory;
    c->outbound_memory = fresh.outbound_memory;
    throttle_configure(&s->throttle);
    c->handshake_timeout = fresh.handshake_timeout;
    c->close_timeout = fresh.close_timeout;
    c->ping_interval = fresh.ping_interval;
    c->idle_timeout = fresh.idle_timeout;
    c->publish_delay = fresh.publish_delay;
    /* Proxies, origins and the per-address limit: for handshakes from now
     * on (fresh's old ones are freed with it). */
    SWAP(struct proxy_cidr *, c->trusted, fresh.trusted);
    SWAP(size_t, c->ntrusted, fresh.ntrusted);
    SWAP(struct origin_list *, c->origins, fresh.origins);
    c->proxy_protocol = fresh.proxy_protocol;
    c->origins_required = fresh.origins_required;
    c->max_connections_per_ip = fresh.max_connections_per_ip;
    c->compression = fresh.compression; /* for connections from now on */
    c->compression_threshold = fresh.compression_threshold;
    c->compression_level = fresh.compression_level;
    c->compression_window = fresh.compression_window;
    c->compression_mem_level = fresh.compression_mem_level;
    struct compress *z = compress_new(c); /* connections hold no pointer into it */
    if (z) {
        compress_free(s->z);
        s->z = z;
    }
    /* Routes: drop those the config no longer names, add the new ones. */
    for (size_t i = 0; i < c->nroutes; i++) {
        size_t j = 0;
        while (j < fresh.nroutes && strcmp(fresh.routes[j].pattern, c->routes[i].pattern) != 0)
            j++;
        if (j == fresh.nroutes && router_remove(s->router, c->routes[i].pattern))
            log_once(LOG_INFO, "SIGHUP: route %s removed", c->routes[i].pattern);
    }
    for (size_t i = 0; i < fresh.nroutes; i++) {
        const char *file = fresh.routes[i].file;
        const char *base = strrchr(file, '/');
        char name[256];
        base = base ? base + 1 : file;
        snprintf(name, sizeof name, "%.*s", (int)strcspn(base, "."), base);
        struct app *a = lbridge_app(s->lb, file, name, err, sizeof err);
        if (!a || serve(s, a, fresh.routes[i].pattern, err, sizeof err))
            log_once(LOG_ERROR, "SIGHUP: route %s not served: %s", fresh.routes[i].pattern, err);
    }
    for (size_t i = 0; i < c->nroutes; i++)
        config_route_free(&c->routes[i]);
    free(c->routes);
    c->routes = fresh.routes;
    c->nroutes = fresh.nroutes;
    fresh.routes = NULL;
    fresh.nroutes = 0;
    c->reload = fresh.reload;
    config_free(&fresh);
    log_once(LOG_INFO, "SIGHUP: config %s reloaded", c->config_file);
}

/* Read the certificate and key again (renewed, say): connections from now
 * on use them, open ones keep theirs. A broken pair keeps the old one. */
static void reload_tls(struct server *s)
{
    const struct config *c = s->cfg;
    if (!s->tls)
        return;
    char err[1024];
    struct ssl_ctx_st *fresh = tls_ctx_new(c->tls_cert, c->tls_key, err, sizeof err);
    if (!fresh) {
        log_once(LOG_ERROR, "SIGHUP: TLS certificate not reloaded, the running one stays: %s", err);
        return;
    }
    tls_ctx_free(s->tls);
    s->tls = fresh;
    log_once(LOG_INFO, "SIGHUP: TLS certificate %s and key %s reloaded", c->tls_cert, c->tls_key);
}

void reload_all(struct server *s)
{
    reload_config(s);
    reload_tls(s);
    watching(s, s->cfg->reload);
    if (s->cfg->reload)
        watch_all(s);
    sync_dir(s);
    check_changes(s, 1);
    watch_modules(s);
    reloads_done(s);
}

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    struct reload *r = container_of(w, struct reload, hup_w);
    log_once(LOG_INFO, "SIGHUP: reloading the config and every app");
    reload_all(r->srv);
}

/* The first load: any error stops the start. */
static int load_initial(struct server *s, char *err, size_t errlen)
{
    const struct config *cfg = s->cfg;
    if (cfg->apps_dir) {
        char **names = list_dir(cfg->apps_dir);
        if (!names) {
            snprintf(err, errlen, "cannot read the apps directory %s: %s", cfg->apps_dir,
                     strerror(errno));
            return -1;
        }
        int rc = 0;
        struct dir_file **tail = &s->reload->files;
        for (char **p = names; *p && !rc; p++) {
            struct dir_file *f = dir_file_new(s, *p);
            if (!f) {
                snprintf(err, errlen, "out of memory");
                rc = -1;
                break;
            }
            *tail = f; /* in name order, for the log */
            tail = &f->next;
            rc = examine(s, f, err, errlen);
        }
        free_list(names);
        if (rc)
            return -1;
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const char *file = cfg->routes[i].file;
        const char *base = strrchr(file, '/');
        char name[256];
        base = base ? base + 1 : file;
        snprintf(name, sizeof name, "%.*s", (int)strcspn(base, "."), base);
        struct app *a = lbridge_app(s->lb, file, name, err, errlen);
        if (!a || serve(s, a, cfg->routes[i].pattern, err, errlen))
            return -1;
    }
    /* An app loaded after a file may have required it. */
    for (struct dir_file *f = s->reload->files; f; f = f->next)
        settle(s, f);
    if (router_count(s->router) == 0) {
        snprintf(err, errlen, "no apps to serve: %s has no app (a .lua file that defines a "
                 "handler and that no app requires)", cfg->apps_dir ? cfg->apps_dir : "the config");
        return -1;
    }
    return 0;
}

int reload_start(struct server *s, char *err, size_t errlen)
{
    struct reload *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    r->srv = s;
    r->ifd = -1;
    s->reload = r;
    ev_init(&r->settle_w, on_settled);
    r->settle_w.repeat = SETTLE_SECONDS;
    /* Track modules before the first load, so its requires are recorded. */
    if (s->cfg->apps_dir)
        lbridge_watch_dir(s->lb, s->cfg->apps_dir);
    for (size_t i = 0; i < s->cfg->nroutes; i++) {
        char dir[4096];
        dir_of(s->cfg->routes[i].file, dir, sizeof dir);
        lbridge_watch_dir(s->lb, dir);
    }
    if (load_initial(s, err, errlen))
        return -1;
    watching(s, s->cfg->reload);
    watch_modules(s);
    ev_signal_init(&r->hup_w, on_hup, SIGHUP);
    ev_signal_start(s->loop, &r->hup_w);
    return 0;
}

void reload_stop(struct server *s)
{
    struct reload *r = s->reload;
    if (!r)
        return;
    watching(s, 0);
    ev_signal_stop(s->loop, &r->hup_w);
    while (r->tallies) /* stopping: what has been counted is said now */
        tally_write(r, r->tallies);
    for (struct dir_file *f = r->files, *next; f; f = next) {
        next = f->next;
        dir_file_free(f);
    }
    free(r);
    s->reload = NULL;
}
