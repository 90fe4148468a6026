/* workers: moonport --workers N, N > 1. The process that starts is the
 * master: it opens the listening sockets (one per worker, SO_REUSEPORT on
 * one port, so the kernel spreads connections), the socket pairs between
 * workers (mesh.h) and a page of shared memory for what the server counts
 * as a whole; it forks the workers, forwards SIGHUP, SIGINT, SIGTERM and SIGUSR2 to
 * them, logs a worker that dies and starts another in its place, and runs
 * no Lua and no event loop of its own. Each worker is today's server, in
 * its own process: its own libev loop, Lua state and apps, so nothing in
 * the core is shared between workers but the memory below. With one worker
 * none of this runs: no fork, no shared memory. */
#ifndef MOONPORT_WORKERS_H
#define MOONPORT_WORKERS_H

#include <stdint.h>

#include "config.h"

/* In memory every worker maps (MAP_SHARED, made before the forks); only
 * touched with atomic operations, which work across processes. */
struct workers_shared {
    uint64_t next_id; /* connection ids, unique in the whole server */
    uint64_t conns;   /* open connections in all workers, against max_connections */
    uint64_t conns_of[CONFIG_WORKERS_MAX]; /* ... and in each (index worker - 1) */
};

/* What a worker is given by the master. */
struct worker_env {
    unsigned worker, nworkers;
    int lfd;        /* its listening socket */
    int *peers;     /* nworkers entries: its end of the pair to each worker, -1 for itself */
    int ready_fd;   /* write a struct worker_ready here when serving */
    struct workers_shared *shared;
};

/* A worker's word that it serves: the master writes the "listening" line. */
struct worker_ready {
    unsigned worker;
    unsigned routes;
    char bound[80];
};

/* A worker: runs the server until it stops and returns the exit status. */
typedef int (*worker_fn)(struct config *cfg, const struct worker_env *env);

/* The master: returns the exit status of the whole server. */
int workers_master(struct config *cfg, worker_fn serve);

/* One more connection, if the server has room for it under max: 1 (it
 * counts now), else 0. workers_release gives back one that did not become
 * a connection. */
static inline int workers_admit(struct workers_shared *sh, unsigned max)
{
    if (__atomic_add_fetch(&sh->conns, 1, __ATOMIC_RELAXED) <= max)
        return 1;
    __atomic_sub_fetch(&sh->conns, 1, __ATOMIC_RELAXED);
    return 0;
}
static inline void workers_release(struct workers_shared *sh)
{
    __atomic_sub_fetch(&sh->conns, 1, __ATOMIC_RELAXED);
}
/* A connection admitted by worker began, or ended (it leaves the count). */
static inline void workers_conn_added(struct workers_shared *sh, unsigned worker)
{
    __atomic_add_fetch(&sh->conns_of[worker - 1], 1, __ATOMIC_RELAXED);
}
static inline void workers_conn_gone(struct workers_shared *sh, unsigned worker)
{
    __atomic_sub_fetch(&sh->conns_of[worker - 1], 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&sh->conns, 1, __ATOMIC_RELAXED);
}
static inline uint64_t workers_next_id(struct workers_shared *sh)
{
    return __atomic_add_fetch(&sh->next_id, 1, __ATOMIC_RELAXED);
}

#endif
