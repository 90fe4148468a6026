/* main: the moonport command. Reads the options and the config file, loads
 * every app (a broken one stops the start with file:line), binds, and runs
 * the loop. A mistake at start is one line on stderr and exit status 1
 * (2 for a bad command line). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "config.h"
#include "conn.h"
#include "lbridge.h"
#include "log.h"
#include "router.h"
#include "server.h"

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every NAME.lua in dir becomes /NAME (index.lua becomes /). */
static int load_dir(struct server *s, const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "cannot read the apps directory %s: %m", dir);
        return -1;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l <= 4 || strcmp(e->d_name + l - 4, ".lua") != 0 || e->d_name[0] == '.')
            continue;
        char **nn = realloc(names, (n + 1) * sizeof *nn);
        if (!nn)
            break;
        names = nn;
        names[n++] = strndup(e->d_name, l - 4);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char file[4096], route[512];
        snprintf(file, sizeof file, "%s/%s.lua", dir, names[i]);
        snprintf(route, sizeof route, "/%s", strcmp(names[i], "index") ? names[i] : "");
        struct app *a = rc ? NULL : lbridge_app(s->lb, file, names[i], err, errlen);
        if (!rc && (!a || router_add(s->router, route, a, err, errlen)))
            rc = -1;
        free(names[i]);
    }
    free(names);
    return rc;
}

static int load_routes(struct server *s, const struct config *cfg, char *err, size_t errlen)
{
    if (cfg->apps_dir && load_dir(s, cfg->apps_dir, err, errlen))
        return -1;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const char *file = cfg->routes[i].file;
        const char *base = strrchr(file, '/');
        base = base ? base + 1 : file;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(base, "."), base);
        struct app *a = lbridge_app(s->lb, file, name, err, errlen);
        if (!a || router_add(s->router, cfg->routes[i].pattern, a, err, errlen))
            return -1;
    }
    if (router_count(s->router) == 0) {
        snprintf(err, errlen, "no apps to serve: %s has no .lua files",
                 cfg->apps_dir ? cfg->apps_dir : "the config");
        return -1;
    }
    return 0;
}

/* Each connection is a descriptor: take the hard limit, not the soft 1024
 * most shells start with, so thousands of clients fit. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    static struct config cfg;
    static struct server srv;
    char err[1024];
    config_init(&cfg);
    int rc = config_load(&cfg, argc, argv, err, sizeof err);
    if (rc != CONFIG_OK) {
        if (rc == CONFIG_ERROR)
            fprintf(stderr, "moonport: %s\n", err);
        config_free(&cfg);
        return rc == CONFIG_EXIT_OK ? 0 : 2;
    }
    log_threshold = cfg.log_level;
    log_access_on = cfg.log_access;
    raise_fd_limit();

    srv.cfg = &cfg;
    srv.loop = ev_default_loop(EVFLAG_AUTO);
    srv.lfd = -1;
    srv.router = router_new();
    srv.lb = srv.router ? lbridge_new(&srv, cfg.apps_dir, err, sizeof err) : NULL;
    rc = 1;
    if (!srv.lb) {
        fprintf(stderr, "moonport: out of memory\n");
        goto out;
    }
    if (load_routes(&srv, &cfg, err, sizeof err) || server_listen(&srv, err, sizeof err)) {
        fprintf(stderr, "moonport: %s\n", err);
        goto out;
    }
    for (size_t i = 0; i < router_count(srv.router); i++) {
        const struct route *r = router_at(srv.router, i);
        log_info("route %s -> %s", r->pattern, r->app->file);
    }
    /* The one line every run prints, whatever the level: tools wait for it. */
    int level = log_threshold;
    log_threshold = LOG_INFO;
    log_info("moonport %s listening on ws://%s/ (%zu routes)", MOONPORT_VERSION, srv.bound,
             router_count(srv.router));
    log_threshold = level;
    rc = server_run(&srv);
out:
    lbridge_free(srv.lb);
    router_free(srv.router);
    config_free(&cfg);
    return rc;
}
