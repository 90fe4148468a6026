/* workers: the master of moonport --workers N. See workers.h.
 *
 * Everything a worker needs from the master exists before the first fork
 * and stays open in the master for as long as it runs: the listening
 * sockets, the socket pairs and the shared memory. So a worker that dies
 * is replaced by a fork that inherits the same descriptors: connections
 * that arrive meanwhile wait in its listening socket's backlog, and
 * publishes from the other workers wait in its pairs (up to their buffers,
 * then in the senders' queues, mesh.c). The master waits with poll on a
 * signalfd and the pipe the workers say "serving" on; it never blocks
 * elsewhere. */
#include "workers.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "server.h"

/* Socket buffer of each end of a pair between workers: room for bursts
 * of publishes before the sender queues them itself (the kernel caps it at
 * net.core.wmem_max). */
#define PAIR_BUFFER (4 << 20)
/* A worker that dies this soon after it started is replaced only after a
 * pause as long: one that cannot start must not make the master spin. */
#define RESTART_PAUSE 1.0

struct slot {
    pid_t pid; /* 0: not running */
    double started, restart_at; /* restart_at > 0: replace it then */
};

struct master {
    struct config *cfg;
    worker_fn serve;
    unsigned n;
    pid_t pid;
    int *lfds;  /* n listening sockets, worker k's at k - 1 */
    int *pairs; /* n * n: pairs[i * n + j] is worker i+1's end to worker j+1 */
    int ready_r, ready_w, sigfd;
    sigset_t oldmask;
    struct workers_shared *shared;
    struct slot *slots;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* In the new worker: keep only what is its own, then serve. Never returns. */
static void worker_main(struct master *m, unsigned k)
{
    sigprocmask(SIG_SETMASK, &m->oldmask, NULL);
    close(m->sigfd);
    close(m->ready_r);
    /* A master that dies takes its workers with it, gracefully (1001). */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != m->pid)
        _exit(1);
    /* Out of the terminal's process group: a Ctrl-C reaches the master,
     * which forwards it once; each worker must see it only once (a second
     * SIGINT drops every connection at once). */
    setpgid(0, 0);
    unsigned n = m->n;
    for (unsigned i = 0; i < n; i++) {
        if (i == k - 1)
            continue;
        close(m->lfds[i]);
        for (unsigned j = 0; j < n; j++)
            if (m->pairs[i * n + j] >= 0)
                close(m->pairs[i * n + j]);
    }
    log_worker = (int)k;
    struct worker_env env = {k, n, m->lfds[k - 1], m->pairs + (k - 1) * n, m->ready_w, m->shared};
    exit(m->serve(m->cfg, &env));
}

static int spawn(struct master *m, unsigned k)
{
    fflush(NULL); /* nothing buffered may be written twice */
    pid_t pid = fork();
    if (pid == 0)
        worker_main(m, k);
    struct slot *s = &m->slots[k - 1];
    s->restart_at = 0;
    if (pid < 0) {
        log_error("cannot start worker %u: %s; trying again in %.0f s", k, strerror(errno),
                  RESTART_PAUSE);
        s->restart_at = now_s() + RESTART_PAUSE;
        return -1;
    }
    s->pid = pid;
    s->started = now_s();
    log_info("worker %u started (pid %d)", k, (int)pid);
    return 0;
}

static void forward(struct master *m, int sig)
{
    for (unsigned i = 0; i < m->n; i++)
        if (m->slots[i].pid > 0)
            kill(m->slots[i].pid, sig);
}

/* Stopping: the master's copies of the listening sockets go, so that each
 * socket closes when its worker's drain closes it (after taking in what it
 * queued). Kept open, the kernel would go on queueing connections on them
 * for nobody, and reset those at the master's exit: during a rolling
 * restart they belong to the new server. */
static void close_listeners(struct master *m)
{
    for (unsigned i = 0; i < m->n; i++)
        if (m->lfds[i] >= 0) {
            close(m->lfds[i]);
            m->lfds[i] = -1;
        }
}

static unsigned running(const struct master *m)
{
    unsigned live = 0;
    for (unsigned i = 0; i < m->n; i++)
        live += m->slots[i].pid > 0;
    return live;
}

static void describe_status(int st, char *out, size_t len)
{
    if (WIFSIGNALED(st))
        snprintf(out, len, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(out, len, "exited with status %d", WEXITSTATUS(st));
}

static int setup(struct master *m, char *err, size_t errlen)
{
    unsigned n = m->n;
    m->lfds = malloc(n * sizeof *m->lfds);
    m->pairs = malloc((size_t)n * n * sizeof *m->pairs);
    m->slots = calloc(n, sizeof *m->slots);
    m->shared = mmap(NULL, sizeof *m->shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    if (!m->lfds || !m->pairs || !m->slots || m->shared == MAP_FAILED) {
        m->shared = NULL;
        snprintf(err, errlen, "out of memory for %u workers", n);
        return -1;
    }
    for (unsigned i = 0; i < n; i++)
        m->lfds[i] = -1;
    for (size_t i = 0; i < (size_t)n * n; i++)
        m->pairs[i] = -1;
    /* The first as with one worker: it fails when anyone holds the port,
     * unless --takeover (SO_REUSEPORT alone would join another server's
     * group), and it picks the port once for --port 0. */
    if ((m->lfds[0] = server_open_listener(m->cfg, m->cfg->port, err, errlen)) < 0)
        return -1;
    int port = server_port_of(m->lfds[0]);
    for (unsigned i = 1; i < n; i++)
        if ((m->lfds[i] = server_open(m->cfg, port, 1, err, errlen)) < 0)
            return -1;
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = i + 1; j < n; j++) {
            int sv[2];
            if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv)) {
                snprintf(err, errlen, "cannot connect the workers: %s", strerror(errno));
                return -1;
            }
            int size = PAIR_BUFFER;
            for (int e = 0; e < 2; e++) {
                setsockopt(sv[e], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
                setsockopt(sv[e], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
            }
            m->pairs[i * n + j] = sv[0];
            m->pairs[j * n + i] = sv[1];
        }
    int ready[2];
    if (pipe2(ready, O_CLOEXEC)) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    m->ready_r = ready[0];
    m->ready_w = ready[1];
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, &m->oldmask);
    m->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (m->sigfd < 0) {
        snprintf(err, errlen, "signalfd: %s", strerror(errno));
        return -1;
    }
    m->pid = getpid();
    return 0;
}

static void teardown(struct master *m)
{
    for (unsigned i = 0; m->lfds && i < m->n; i++)
        if (m->lfds[i] >= 0)
            close(m->lfds[i]);
    for (size_t i = 0; m->pairs && i < (size_t)m->n * m->n; i++)
        if (m->pairs[i] >= 0)
            close(m->pairs[i]);
    free(m->lfds);
    free(m->pairs);
    free(m->slots);
    if (m->shared)
        munmap(m->shared, sizeof *m->shared);
}

int workers_master(struct config *cfg, worker_fn serve)
{
    static struct master m; /* static: a worker forks from inside it */
    char err[512];
    m.cfg = cfg;
    m.serve = serve;
    m.n = cfg->workers;
    m.ready_r = m.ready_w = m.sigfd = -1;
    log_worker = 0;
    log_nworkers = (int)m.n;
    if (setup(&m, err, sizeof err)) {
        fprintf(stderr, "moonport: %s\n", err);
        teardown(&m);
        return 1;
    }
    /* Worker 1 alone first: an app that does not load stops the start
     * with its one error, before any other worker tries it too. */
    int status = 0, serving = 0, stopping = 0;
    unsigned ready = 0;
    spawn(&m, 1);
    while (!(stopping && running(&m) == 0)) {
        double now = now_s(), wait = -1;
        for (unsigned i = 0; i < m.n; i++)
            if (!stopping && m.slots[i].restart_at > 0) {
                double in = m.slots[i].restart_at - now;
                if (in <= 0) {
                    spawn(&m, i + 1);
                    in = m.slots[i].restart_at > 0 ? m.slots[i].restart_at - now : -1;
                }
                if (in > 0 && (wait < 0 || in < wait))
                    wait = in;
            }
        struct pollfd pf[2] = {{m.sigfd, POLLIN, 0}, {m.ready_r, POLLIN, 0}};
        int r = poll(pf, 2, wait < 0 ? -1 : (int)(wait * 1000) + 1);
        if (r < 0 && errno != EINTR) {
            log_error("poll: %s", strerror(errno));
            break;
        }
        struct worker_ready rec;
        while (!stopping && (pf[1].revents & POLLIN) &&
               read(m.ready_r, &rec, sizeof rec) == (ssize_t)sizeof rec) {
            if (serving) {
                log_info("worker %u serving again (pid %d)", rec.worker,
                         (int)m.slots[rec.worker - 1].pid);
                break;
            }
            if (++ready == 1)
                for (unsigned k = 2; k <= m.n; k++)
                    spawn(&m, k);
            if (ready == m.n) {
                serving = 1;
                /* The one line every run prints, whatever the level. */
                int level = log_threshold;
                log_threshold = LOG_INFO;
                rec.bound[sizeof rec.bound - 1] = '\0';
                log_info("moonport %s listening on %s://%s/ (%u routes, %u workers)",
                         MOONPORT_VERSION, cfg->tls_cert ? "wss" : "ws", rec.bound, rec.routes,
                         m.n);
                log_threshold = level;
            }
            break; /* one record per poll: the pipe is never left half read */
        }
        struct signalfd_siginfo si;
        while ((pf[0].revents & POLLIN) && read(m.sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
            int sig = (int)si.ssi_signo;
            if (sig == SIGHUP) {
                log_debug("SIGHUP: forwarded to %u workers", running(&m));
                forward(&m, SIGHUP);
            } else if (sig == SIGINT || sig == SIGTERM || sig == SIGUSR2) {
                /* SIGUSR2: the same drain, with 1012 (drain.h). */
                if (!stopping)
                    log_info("%s: stopping %u workers", sig == SIGINT    ? "SIGINT"
                                                        : sig == SIGUSR2 ? "SIGUSR2"
                                                                         : "SIGTERM",
                             running(&m));
                stopping = 1;
                forward(&m, sig); /* a second one drops every connection, as with one */
                close_listeners(&m);
            } else if (sig == SIGCHLD) {
                int st;
                pid_t pid;
                while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
                    unsigned k = 0;
                    for (unsigned i = 0; i < m.n; i++)
                        if (m.slots[i].pid == pid)
                            k = i + 1;
                    if (!k)
                        continue;
                    struct slot *s = &m.slots[k - 1];
                    s->pid = 0;
                    /* Its connections are gone with it: they leave the count. */
                    uint64_t lost = __atomic_exchange_n(&m.shared->conns_of[k - 1], 0,
                                                        __ATOMIC_RELAXED);
                    __atomic_sub_fetch(&m.shared->conns, lost, __ATOMIC_RELAXED);
                    char how[96];
                    describe_status(st, how, sizeof how);
                    if (!serving && !stopping) {
                        /* It said why on stderr; the start fails with it. */
                        status = WIFEXITED(st) && WEXITSTATUS(st) ? WEXITSTATUS(st) : 1;
                        log_debug("worker %u (pid %d) %s while starting", k, (int)pid, how);
                        stopping = 1;
                        forward(&m, SIGTERM);
                    } else if (!stopping) {
                        double lived = now_s() - s->started;
                        log_error("worker %u (pid %d) %s; %llu connection(s) lost with it; "
                                  "starting another%s", k, (int)pid, how,
                                  (unsigned long long)lost,
                                  lived < RESTART_PAUSE ? " in 1 s" : "");
                        if (lived < RESTART_PAUSE)
                            s->restart_at = now_s() + RESTART_PAUSE;
                        else
                            spawn(&m, k);
                    } else if (!WIFEXITED(st) || WEXITSTATUS(st)) {
                        /* As a server of one process would have exited. */
                        log_error("worker %u (pid %d) %s while stopping", k, (int)pid, how);
                        status = 1;
                    }
                }
            }
        }
    }
    if (serving)
        log_info("stopped");
    teardown(&m);
    close(m.ready_r);
    close(m.ready_w);
    close(m.sigfd);
    return status;
}
