/* resolve: host names to addresses without blocking the loop (see
 * resolve.h for why getaddrinfo on threads). It owns the request queue,
 * the resolver threads and the ev_async that hands answers back. The
 * threads touch nothing but the queues under the one mutex and their own
 * request: callbacks run on the loop's thread only, never inside
 * resolve_start. */
#include "resolve.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define NTHREADS 2

enum { RQ_QUEUED, RQ_RUNNING, RQ_DONE };

struct resolve_req {
    resolve_cb cb;
    void *data;
    int port;
    int state;     /* RQ_*: which list holds it (RUNNING: a thread) */
    int cancelled; /* set on the loop's thread; the loop frees it */
    const char *err;
    struct sockaddr_storage ss;
    socklen_t salen;
    struct resolve_req *next;
    char host[]; /* NUL-terminated */
};

/* The one mutex guards the two lists, `stopping` and `gen`. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct resolve_req *queued, **queued_tail = &queued; /* for the threads */
static struct resolve_req *done, **done_tail = &done;       /* for the loop */
static int stopping;
static unsigned gen;

/* The loop's side; `threads_pid` says which process started the threads
 * (a forked child has none of them). */
static struct ev_loop *rloop;
static ev_async wake;
static pthread_t threads[NTHREADS];
static int nthreads;
static pid_t threads_pid;

static void list_push(struct resolve_req ***tail, struct resolve_req *r)
{
    r->next = NULL;
    **tail = r;
    *tail = &r->next;
}

/* What a getaddrinfo failure means to an app, OpenResty-like. */
static const char *gai_message(int rc)
{
    switch (rc) {
    case EAI_NONAME:
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
#endif
        return "no such host";
    case EAI_AGAIN:
        return "temporary failure in name resolution";
    case EAI_MEMORY:
        return "out of memory";
    default:
        return "name resolution failed";
    }
}

/* Fill r's answer from the system resolver (blocking: threads only). */
static void lookup(struct resolve_req *r)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    int rc = getaddrinfo(r->host, NULL, &hints, &res);
    if (rc == EAI_NONAME || rc == EAI_ADDRFAMILY) { /* AI_ADDRCONFIG hides loopback-only hosts */
        hints.ai_flags = 0;
        rc = getaddrinfo(r->host, NULL, &hints, &res);
    }
    if (rc) {
        r->err = gai_message(rc);
        return;
    }
    const struct addrinfo *pick = NULL;
    for (const struct addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
        if (a->ai_family == AF_INET6 && !pick)
            pick = a;
    }
    if (!pick || pick->ai_addrlen > sizeof r->ss) {
        r->err = "no such host";
    } else {
        memcpy(&r->ss, pick->ai_addr, pick->ai_addrlen);
        r->salen = pick->ai_addrlen;
        if (pick->ai_family == AF_INET)
            ((struct sockaddr_in *)&r->ss)->sin_port = htons((uint16_t)r->port);
        else
            ((struct sockaddr_in6 *)&r->ss)->sin6_port = htons((uint16_t)r->port);
    }
    freeaddrinfo(res);
}

static void *thread_main(void *arg)
{
    unsigned my_gen = (unsigned)(uintptr_t)arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!queued && !stopping && gen == my_gen)
            pthread_cond_wait(&cv, &mu);
        if (stopping || gen != my_gen)
            break;
        struct resolve_req *r = queued;
        queued = r->next;
        if (!queued)
            queued_tail = &queued;
        r->state = RQ_RUNNING;
        pthread_mutex_unlock(&mu);
        lookup(r);
        pthread_mutex_lock(&mu);
        if (stopping || gen != my_gen) { /* resolve_stop gave up on us: nobody else holds r */
            free(r);
            break;
        }
        r->state = RQ_DONE;
        list_push(&done_tail, r);
        ev_async_send(rloop, &wake);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* On the loop: deliver every answer that has arrived. A callback may
 * start or cancel requests, including ones further down this batch. */
static void on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    pthread_mutex_lock(&mu);
    struct resolve_req *list = done;
    done = NULL;
    done_tail = &done;
    pthread_mutex_unlock(&mu);
    while (list) {
        struct resolve_req *r = list;
        list = r->next;
        if (!r->cancelled) {
            r->cancelled = 1; /* a cancel from inside cb is a no-op now */
            r->cb(r->data, r->err, r->err ? NULL : (struct sockaddr *)&r->ss,
                  r->err ? 0 : r->salen);
        }
        free(r);
    }
}

/* The ev_async, once per process and loop. It does not keep the loop
 * running: whoever waits for an answer has its own timer for that. */
static void wake_init(struct ev_loop *loop)
{
    if (rloop)
        return;
    rloop = loop;
    ev_async_init(&wake, on_wake);
    ev_async_start(loop, &wake);
    ev_unref(loop);
}

/* Start the threads in this process, with every signal blocked in them
 * so that signals still reach the loop's thread. 0 or -1. */
static int threads_start(void)
{
    if (nthreads && threads_pid == getpid())
        return 0;
    nthreads = 0; /* in a forked child, the parent's threads do not exist */
    threads_pid = getpid();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < NTHREADS; i++) {
        int rc = pthread_create(&threads[nthreads], NULL, thread_main, (void *)(uintptr_t)gen);
        if (rc) {
            log_error("resolve: cannot start a resolver thread: %s", strerror(rc));
            break;
        }
        nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return nthreads ? 0 : -1;
}

/* A numeric address, parsed here without any lookup: 1 if host is one. */
static int numeric(struct resolve_req *r)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&r->ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&r->ss;
    const char *h = r->host;
    size_t n = strlen(h);
    char bare[INET6_ADDRSTRLEN + 2];
    if (n > 2 && h[0] == '[' && h[n - 1] == ']' && n - 2 < sizeof bare) { /* [::1] */
        memcpy(bare, h + 1, n - 2);
        bare[n - 2] = 0;
        h = bare;
    }
    if (inet_pton(AF_INET, h, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)r->port);
        r->salen = sizeof *in;
        return 1;
    }
    if (inet_pton(AF_INET6, h, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)r->port);
        r->salen = sizeof *in6;
        return 1;
    }
    return 0;
}

struct resolve_req *resolve_start(struct ev_loop *loop, const char *host, int port,
                                  resolve_cb cb, void *data)
{
    size_t n = strlen(host);
    struct resolve_req *r = calloc(1, sizeof *r + n + 1);
    if (!r)
        return NULL;
    memcpy(r->host, host, n + 1);
    r->cb = cb;
    r->data = data;
    r->port = port;
    wake_init(loop);
    pthread_mutex_lock(&mu);
    stopping = 0;
    pthread_mutex_unlock(&mu);
    if (port < 0 || port > 65535) {
        r->err = "bad port";
    } else if (numeric(r) || !n || n > 253) {
        if (!r->salen)
            r->err = "no such host";
    } else if (threads_start() == 0) {
        pthread_mutex_lock(&mu);
        r->state = RQ_QUEUED;
        list_push(&queued_tail, r);
        pthread_cond_signal(&cv);
        pthread_mutex_unlock(&mu);
        return r;
    } else {
        r->err = "cannot resolve (no resolver thread)";
    }
    pthread_mutex_lock(&mu); /* answered already: the loop delivers it */
    r->state = RQ_DONE;
    list_push(&done_tail, r);
    pthread_mutex_unlock(&mu);
    ev_async_send(loop, &wake);
    return r;
}

void resolve_cancel(struct resolve_req *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&mu);
    if (r->state == RQ_QUEUED) { /* no thread has it: unlink and free now */
        struct resolve_req **p = &queued;
        while (*p != r)
            p = &(*p)->next;
        *p = r->next;
        if (queued_tail == &r->next)
            queued_tail = p;
        pthread_mutex_unlock(&mu);
        free(r);
        return;
    }
    r->cancelled = 1; /* RUNNING or DONE: freed on the loop when it arrives */
    pthread_mutex_unlock(&mu);
}

static void free_list(struct resolve_req *r)
{
    while (r) {
        struct resolve_req *next = r->next;
        free(r);
        r = next;
    }
}

void resolve_stop(void)
{
    pthread_mutex_lock(&mu);
    stopping = 1;
    gen++;
    struct resolve_req *q = queued, *d = done;
    queued = done = NULL;
    queued_tail = &queued;
    done_tail = &done;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    free_list(q);
    free_list(d);
    if (nthreads && threads_pid == getpid()) {
        /* A thread inside getaddrinfo finishes on its own (it frees its
         * request, sees `stopping` and ends); wait for it a little. */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        for (int i = 0; i < nthreads; i++) {
            if (pthread_timedjoin_np(threads[i], NULL, &until)) {
                log_warn("resolve: a name lookup is still running at exit; not waiting for it");
                pthread_detach(threads[i]);
            }
        }
    }
    nthreads = 0;
    if (rloop) {
        ev_ref(rloop);
        ev_async_stop(rloop, &wake);
        rloop = NULL;
    }
}
