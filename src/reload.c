/* reload: the routes and their apps, kept current while the server runs.
 * Watching is by directory (inotify), not by file: editors save by rename,
 * by truncate-and-write, or in several writes, and only the directory sees
 * all of those. Events only arm a short timer; when writes have settled,
 * every app and module file is stat'ed and whatever changed is reloaded.
 * A broken version is logged (file:line) and the old one keeps serving. */
#include "reload.h"

#include <dirent.h>
#include <errno.h>
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
#include "router.h"
#include "server.h"
#include "tls.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

#define SETTLE_SECONDS 0.1 /* quiet time after the last event */
#define SETTLE_MAX 0.8     /* never wait longer than this after the first */

struct reload {
    struct server *srv;
    int ifd; /* inotify, or -1 */
    ev_io inotify_w;
    ev_timer settle_w;
    ev_signal hup_w;
    ev_tstamp first_event;
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
    return 0;
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

static void dir_route(const char *name, char *route, size_t len)
{
    snprintf(route, len, "/%s", strcmp(name, "index") ? name : "");
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
    log_info("app %s (%s) removed: its routes answer 404; %zu connection(s) closed with 1001",
             a->name, a->file, n);
}

static void reload_app(struct server *s, struct app *a, const char *why)
{
    char err[1024];
    double t0 = now_ms();
    int rc = lbridge_reload(s->lb, a, err, sizeof err);
    double ms = now_ms() - t0;
    if (rc == 0)
        log_info("reload %s (%s) v%u ok in %.1f ms (%s)", a->name, a->file, a->version, ms, why);
    else
        log_error("reload %s (%s) failed in %.1f ms, v%u keeps serving: %s", a->name, a->file, ms,
                  a->version, err);
}

/* New files become routes; files that reappeared get theirs back; apps
 * whose file is gone lose their routes and their connections. */
static void sync_dir(struct server *s)
{
    const char *dir = s->cfg->apps_dir;
    char **names = dir ? list_dir(dir) : NULL;
    for (char **p = names; p && *p; p++) {
        char file[4096], route[512], err[1024];
        snprintf(file, sizeof file, "%s/%s.lua", dir, *p);
        dir_route(*p, route, sizeof route);
        struct app *a = lbridge_find(s->lb, file);
        if (!a) {
            a = lbridge_app(s->lb, file, *p, err, sizeof err);
            if (!a) {
                log_error("new app %s not served: %s", file, err);
            } else if (serve(s, a, route, err, sizeof err)) {
                log_error("new app %s not served: %s", file, err);
            } else {
                log_info("new app %s (%s) at %s", a->name, a->file, route);
            }
        } else if (a->removed) {
            reload_app(s, a, "file is back");
            a->removed = 0;
            for (size_t i = 0; i < a->npatterns; i++)
                if (router_add(s->router, a->patterns[i], a, err, sizeof err))
                    log_error("app %s: %s", a->name, err);
        }
    }
    free_list(names);
    for (struct app *a = s->lb->apps; a; a = a->next) {
        struct stat st;
        if (a->removed || stat(a->file, &st) == 0 || errno != ENOENT)
            continue;
        a->removed = 1;
        router_remove_app(s->router, a);
        close_app_conns(s, a, "app removed");
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
            log_info("module %s (%s) changed", m->name, m->file);
    }
    for (int spread = 1; spread;) {
        spread = 0;
        for (struct module *m = lb->modules; m; m = m->next)
            for (size_t i = 0; m->stale && i < m->nparents; i++)
                if (!m->parents[i]->stale)
                    spread = m->parents[i]->stale = 1;
    }
    for (struct module *m = lb->modules; m; m = m->next) {
        if (!m->stale)
            continue;
        lbridge_forget_module(lb, m->name);
        for (size_t i = 0; i < m->nusers; i++)
            m->users[i]->dirty = 1;
    }
    for (struct app *a = lb->apps; a; a = a->next) {
        if (a->removed)
            continue;
        struct file_sig sig;
        file_sig_read(a->file, &sig);
        int changed = !file_sig_equal(&sig, &a->sig);
        if (force || changed || a->dirty)
            reload_app(s, a, force ? "SIGHUP" : changed ? "file changed" : "a module changed");
        a->dirty = 0;
    }
}

static void watch_dir(struct reload *r, const char *dir)
{
    if (r->ifd < 0)
        return;
    uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE |
                    IN_MODIFY | IN_ATTRIB;
    if (inotify_add_watch(r->ifd, dir, mask) < 0)
        log_warn("cannot watch %s for changes: %s", dir, strerror(errno));
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

static void on_settled(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct reload *r = container_of(w, struct reload, settle_w);
    ev_timer_stop(loop, w); /* one scan per burst of events */
    r->first_event = 0;
    sync_dir(r->srv);
    check_changes(r->srv, 0);
    watch_modules(r->srv);
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
            log_warn("cannot watch app files (inotify: %s); SIGHUP still reloads",
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
        log_error("SIGHUP: config not reloaded, the running one stays: %s", err);
        config_free(&fresh);
        return;
    }
    if (strcmp(fresh.host, c->host) != 0 || (fresh.port != c->port && fresh.port != 0))
        log_warn("SIGHUP: the listen address changed to %s:%d; it takes effect on restart",
                 fresh.host, fresh.port);
    if ((fresh.apps_dir == NULL) != (c->apps_dir == NULL) ||
        (fresh.apps_dir && strcmp(fresh.apps_dir, c->apps_dir) != 0))
        log_warn("SIGHUP: the apps directory changed; it takes effect on restart");
    if (!fresh.tls_cert != !c->tls_cert) {
        log_warn("SIGHUP: TLS was turned %s; it takes effect on restart",
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
    c->max_message = fresh.max_message;
    c->max_fragments = fresh.max_fragments;
    c->max_head = fresh.max_head;
    c->max_headers = fresh.max_headers;
    c->send_buffer = fresh.send_buffer;
    c->max_send_buffer = fresh.max_send_buffer;
    c->max_connections = fresh.max_connections;
    c->handshake_timeout = fresh.handshake_timeout;
    c->close_timeout = fresh.close_timeout;
    c->ping_interval = fresh.ping_interval;
    c->idle_timeout = fresh.idle_timeout;
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
            log_info("SIGHUP: route %s removed", c->routes[i].pattern);
    }
    for (size_t i = 0; i < fresh.nroutes; i++) {
        const char *file = fresh.routes[i].file;
        const char *base = strrchr(file, '/');
        char name[256];
        base = base ? base + 1 : file;
        snprintf(name, sizeof name, "%.*s", (int)strcspn(base, "."), base);
        struct app *a = lbridge_app(s->lb, file, name, err, sizeof err);
        if (!a || serve(s, a, fresh.routes[i].pattern, err, sizeof err))
            log_error("SIGHUP: route %s not served: %s", fresh.routes[i].pattern, err);
    }
    for (size_t i = 0; i < c->nroutes; i++) {
        free(c->routes[i].pattern);
        free(c->routes[i].file);
    }
    free(c->routes);
    c->routes = fresh.routes;
    c->nroutes = fresh.nroutes;
    fresh.routes = NULL;
    fresh.nroutes = 0;
    c->reload = fresh.reload;
    config_free(&fresh);
    log_info("SIGHUP: config %s reloaded", c->config_file);
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
        log_error("SIGHUP: TLS certificate not reloaded, the running one stays: %s", err);
        return;
    }
    tls_ctx_free(s->tls);
    s->tls = fresh;
    log_info("SIGHUP: TLS certificate %s and key %s reloaded", c->tls_cert, c->tls_key);
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
}

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    struct reload *r = container_of(w, struct reload, hup_w);
    log_info("SIGHUP: reloading the config and every app");
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
        for (char **p = names; *p && !rc; p++) {
            char file[4096], route[512];
            snprintf(file, sizeof file, "%s/%s.lua", cfg->apps_dir, *p);
            dir_route(*p, route, sizeof route);
            struct app *a = lbridge_app(s->lb, file, *p, err, errlen);
            rc = !a || serve(s, a, route, err, errlen);
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
    if (router_count(s->router) == 0) {
        snprintf(err, errlen, "no apps to serve: %s has no .lua files",
                 cfg->apps_dir ? cfg->apps_dir : "the config");
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
    free(r);
    s->reload = NULL;
}
