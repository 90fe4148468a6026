/* main: the moonport command. Reads the options and the config file, loads
 * every app through reload.c (a broken one stops the start with file:line),
 * binds, and runs the loop. A mistake at start is one line on stderr and exit status 1
 * (2 for a bad command line). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "buf.h"
#include "compress.h"
#include "config.h"
#include "conn.h"
#include "handshake.h"
#include "lbridge.h"
#include "log.h"
#include "pubsub.h"
#include "reload.h"
#include "router.h"
#include "server.h"
#include "tls.h"

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
        if (rc != CONFIG_EXIT_OK)
            fprintf(stderr, "moonport: %s\n", err);
        config_free(&cfg);
        return rc == CONFIG_EXIT_OK ? 0 : rc == CONFIG_ERROR ? 2 : 1;
    }
    log_threshold = cfg.log_level;
    log_access_on = cfg.log_access;
    raise_fd_limit();

    srv.cfg = &cfg;
    srv.argc = argc;
    srv.argv = argv;
    srv.loop = ev_default_loop(EVFLAG_AUTO);
    srv.lfd = -1;
    srv.router = router_new();
    srv.lb = srv.router ? lbridge_new(&srv, cfg.apps_dir, err, sizeof err) : NULL;
    srv.z = compress_new(&cfg);
    rc = 1;
    if (!srv.lb || !srv.z) {
        fprintf(stderr, "moonport: out of memory\n");
        goto out;
    }
    if (cfg.tls_cert && !(srv.tls = tls_ctx_new(cfg.tls_cert, cfg.tls_key, err, sizeof err))) {
        fprintf(stderr, "moonport: %s\n", err);
        goto out;
    }
    if (reload_start(&srv, err, sizeof err) || server_listen(&srv, err, sizeof err)) {
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
    log_info("moonport %s listening on %s://%s/ (%zu routes)", MOONPORT_VERSION,
             srv.tls ? "wss" : "ws", srv.bound, router_count(srv.router));
    log_threshold = level;
    rc = server_run(&srv);
out:
    reload_stop(&srv);
    lbridge_free(srv.lb);
    router_free(srv.router);
    compress_free(srv.z);
    pubsub_free(&srv);
    tls_ctx_free(srv.tls);
    free(srv.flush);
    free(srv.later);
    server_limits_free(&srv);
    buf_pool_drain();
    hs_pool_drain();
    config_free(&cfg);
    return rc;
}
