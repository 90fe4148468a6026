/* main: the moonport command. Reads the options and the config file, loads
 * every app through reload.c (a broken one stops the start with file:line),
 * binds, and runs the loop. A mistake at start is one line on stderr and exit status 1
 * (2 for a bad command line). With --workers N > 1 the start goes through
 * workers.c, which forks N copies of the server this file runs; the node's
 * backplane id is made before that, so they share it. `moonport publish`
 * is bpcli.c's. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <sys/mman.h>

#include "admin.h"
#include "backplane.h"
#include "bpcli.h"
#include "buf.h"
#include "compress.h"
#include "config.h"
#include "conn.h"
#include "handshake.h"
#include "lbridge.h"
#include "log.h"
#include "mesh.h"
#include "metrics.h"
#include "pubsub.h"
#include "reload.h"
#include "resolve.h"
#include "router.h"
#include "server.h"
#include "tls.h"
#include "workers.h"

/* Each connection is a descriptor: take the hard limit, not the soft 1024
 * most shells start with, so thousands of clients fit. */
static int main_argc; /* for SIGHUP, which reads the options again */
static char **main_argv;
/* Made before any worker starts, so every worker has them: the admin
 * listener (worker 1 serves it) and each worker's block of counts. */
static int admin_fd = -1;
static struct metrics *metric_blocks;

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Today's server, in this process: with one worker, the whole of it; with
 * --workers, one worker of it (env: what the master gave it). Returns the
 * exit status. */
static int serve(struct config *cfg, const struct worker_env *env)
{
    static struct server srv;
    char err[1024];
    srv.cfg = cfg;
    srv.argc = main_argc;
    srv.argv = main_argv;
    srv.worker = env ? env->worker : 1;
    srv.nworkers = env ? env->nworkers : 1;
    srv.shared = env ? env->shared : NULL;
    srv.metrics_all = metric_blocks;
    srv.metrics_n = srv.nworkers;
    srv.metrics = &metric_blocks[srv.worker - 1];
    metrics_init(srv.metrics, (int)getpid());
    srv.loop = ev_default_loop(EVFLAG_AUTO);
    srv.lfd = -1;
    srv.router = router_new();
    srv.lb = srv.router ? lbridge_new(&srv, cfg->apps_dir, err, sizeof err) : NULL;
    srv.z = compress_new(cfg);
    int rc = 1;
    if (!srv.lb || !srv.z) {
        fprintf(stderr, "moonport: out of memory\n");
        goto out;
    }
    if (cfg->tls_cert && !(srv.tls = tls_ctx_new(cfg->tls_cert, cfg->tls_key, err, sizeof err))) {
        fprintf(stderr, "moonport: %s\n", err);
        goto out;
    }
    if (cfg->nbackplane && !(srv.bp = backplane_new(&srv, err, sizeof err))) {
        fprintf(stderr, "moonport: %s\n", err);
        goto out;
    }
    if (env) {
        server_adopt(&srv, env->lfd);
        if (!(srv.mesh = mesh_new(&srv, env->peers))) {
            fprintf(stderr, "moonport: out of memory\n");
            goto out;
        }
    }
    if (reload_start(&srv, err, sizeof err) || (!env && server_listen(&srv, err, sizeof err))) {
        fprintf(stderr, "moonport: %s\n", err);
        goto out;
    }
    if (admin_fd >= 0 && srv.worker == 1 && !(srv.admin = admin_start(&srv, admin_fd))) {
        fprintf(stderr, "moonport: out of memory\n");
        goto out;
    } else if (admin_fd >= 0 && srv.worker != 1) {
        close(admin_fd);
    }
    admin_fd = -1; /* the admin owns it now */
    for (size_t i = 0; i < router_count(srv.router); i++) {
        const struct route *r = router_at(srv.router, i);
        log_once(LOG_INFO, "route %s -> %s", r->pattern, r->app->file);
    }
    if (env) { /* the master writes the line when every worker serves */
        struct worker_ready ready = {env->worker, (unsigned)router_count(srv.router), ""};
        snprintf(ready.bound, sizeof ready.bound, "%s", srv.bound);
        if (write(env->ready_fd, &ready, sizeof ready) != (ssize_t)sizeof ready)
            log_warn("cannot tell the master this worker serves: %s", strerror(errno));
    } else {
        /* The one line every run prints, whatever the level: tools wait for it. */
        int level = log_threshold;
        log_threshold = LOG_INFO;
        log_info("moonport %s listening on %s://%s/ (%zu routes)", MOONPORT_VERSION,
                 srv.tls ? "wss" : "ws", srv.bound, router_count(srv.router));
        log_threshold = level;
    }
    rc = server_run(&srv);
out:
    admin_free(srv.admin);
    reload_stop(&srv);
    backplane_free(srv.bp);
    srv.bp = NULL;
    mesh_free(srv.mesh);
    lbridge_free(srv.lb);
    resolve_stop(); /* after the Lua state: its sockets cancel their lookups */
    router_free(srv.router);
    compress_free(srv.z);
    pubsub_free(&srv);
    tls_ctx_free(srv.tls);
    free(srv.flush);
    free(srv.later);
    server_limits_free(&srv);
    buf_pool_drain();
    hs_pool_drain();
    return rc;
}

/* The node's id for the backplane: random, made once before any worker is
 * forked, so every worker of the node has the same. */
static void make_node_id(struct config *cfg)
{
    uint64_t r;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)clock();
    snprintf(cfg->node_id, sizeof cfg->node_id, "%016llx", (unsigned long long)r);
}

int main(int argc, char **argv)
{
    static struct config cfg;
    char err[1024];
    if (argc > 1 && strcmp(argv[1], "publish") == 0)
        return bpcli_publish(argc - 1, argv + 1);
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
    make_node_id(&cfg);
    log_json = cfg.log_json;
    raise_fd_limit();
    main_argc = argc;
    main_argv = argv;
    size_t metrics_size = cfg.workers * sizeof *metric_blocks; /* SIGHUP may change cfg */
    metric_blocks = mmap(NULL, metrics_size, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (metric_blocks == MAP_FAILED) {
        fprintf(stderr, "moonport: out of memory for the metrics\n");
        config_free(&cfg);
        return 1;
    }
    if (cfg.admin) {
        char bound[300];
        if ((admin_fd = admin_listen(cfg.admin, bound, sizeof bound, err, sizeof err)) < 0) {
            fprintf(stderr, "moonport: %s\n", err);
            config_free(&cfg);
            return 1;
        }
        int level = log_threshold;
        log_threshold = LOG_INFO; /* tools wait for this line, as for "listening" */
        log_info("admin listening on http://%s/ (/metrics, /healthz)", bound);
        log_threshold = level;
    }
    rc = cfg.workers > 1 ? workers_master(&cfg, serve) : serve(&cfg, NULL);
    if (admin_fd >= 0)
        close(admin_fd);
    munmap(metric_blocks, metrics_size);
    config_free(&cfg);
    return rc;
}
