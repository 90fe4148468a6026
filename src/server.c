/* server: listen, accept, and the per-iteration work of the loop. Before
 * the loop blocks (ev_prepare), it writes every connection's queued output
 * in one call each, then frees the connections that died during the
 * iteration: no callback can still be running for them. */
#include "server.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backplane.h"
#include "compress.h"
#include "conn.h"
#include "drain.h"
#include "lbridge.h"
#include "ipcount.h"
#include "log.h"
#include "metrics.h"
#include "topic.h"
#include "workers.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

int server_open(const struct config *cfg, int port_num, int reuseport, char *err, size_t errlen)
{
    return server_open_host(cfg->host, port_num, reuseport, err, errlen);
}

int server_open_host(const char *host, int port_num, int reuseport, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    char port[16];
    snprintf(port, sizeof port, "%d", port_num);
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port_num, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (reuseport)
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "cannot listen on %s:%d: %s%s", host, port_num,
                 strerror(saved), saved == EADDRINUSE ? " (another server is using the port?)" : "");
    return fd;
}

int server_port_of(int fd)
{
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        return -1;
    return ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                          : ((struct sockaddr_in *)&sa)->sin_port);
}

void server_adopt(struct server *s, int fd)
{
    const struct config *cfg = s->cfg;
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    int bound_port = server_port_of(fd);
    static const struct in6_addr any6 = IN6ADDR_ANY_INIT;
    if (sa.ss_family == AF_INET6 && len <= sizeof s->local) {
        memcpy(&s->local, &sa, len);
        s->local_known = memcmp(&s->local.sin6_addr, &any6, sizeof any6) != 0;
    } else if (sa.ss_family == AF_INET && len <= sizeof s->local) {
        memcpy(&s->local, &sa, len);
        s->local_known = ((struct sockaddr_in *)&sa)->sin_addr.s_addr != htonl(INADDR_ANY);
    }
    if (strchr(cfg->host, ':'))
        snprintf(s->bound, sizeof s->bound, "[%s]:%d", cfg->host, bound_port);
    else
        snprintf(s->bound, sizeof s->bound, "%s:%d", cfg->host, bound_port);
    s->lfd = fd;
}

int server_open_listener(const struct config *cfg, int port, char *err, size_t errlen)
{
    if (!cfg->takeover) {
        int probe = server_open(cfg, port, 0, err, errlen);
        if (probe < 0)
            return -1;
        port = server_port_of(probe); /* --port 0 picks it once, here */
        close(probe);
    }
    int fd = server_open(cfg, port, 1, err, errlen);
    if (fd < 0 && cfg->takeover)
        snprintf(err + strlen(err), errlen - strlen(err),
                 "; --takeover shares a port only with a moonport (of the same user) serving it");
    return fd;
}

int server_listen(struct server *s, char *err, size_t errlen)
{
    int fd = server_open_listener(s->cfg, s->cfg->port, err, errlen);
    if (fd < 0)
        return -1;
    server_adopt(s, fd);
    return 0;
}

/* Accept up to max connections; returns how many were taken (refused
 * ones too) before the queue was empty or an error stopped it. */
static size_t accept_some(struct server *s, size_t max)
{
    struct ev_loop *loop = s->loop;
    size_t i;
    for (i = 0; i < max; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        int fd = accept4(s->lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return i;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: stop accepting for a moment rather
                 * than spin on a listening socket that stays readable. */
                log_warn("accept: %s; pausing accepts for 100 ms", strerror(errno));
                ev_io_stop(loop, &s->accept_w);
                ev_timer_start(loop, &s->accept_retry);
                return i;
            }
            log_error("accept: %s", strerror(errno));
            return i;
        }
        if (s->shared ? !workers_admit(s->shared, s->cfg->max_connections)
                      : s->nconns >= s->cfg->max_connections) {
            /* One line a second at most, with the count: a flood of
             * refusals must not become a flood of log lines. */
            s->refused++;
            if (ev_now(loop) - s->refused_logged >= 1) {
                log_warn("refused %llu connection(s): limits.max_connections (%u) reached",
                         (unsigned long long)s->refused, s->cfg->max_connections);
                s->refused = 0;
                s->refused_logged = ev_now(loop);
            }
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (!conn_new(s, fd, (struct sockaddr *)&peer)) {
            if (s->shared)
                workers_release(s->shared);
            log_error("out of memory for a new connection");
            close(fd);
        }
    }
    return i;
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    accept_some(container_of(w, struct server, accept_w), 256); /* let other watchers run too */
}

size_t server_accept_pending(struct server *s)
{
    return s->lfd >= 0 ? accept_some(s, SIZE_MAX) : 0;
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct server *s = container_of(w, struct server, accept_retry);
    if (!s->shutting_down)
        ev_io_start(loop, &s->accept_w);
}

void server_want_flush(struct server *s, struct conn *c)
{
    if (c->in_flush_list || c->state == CONN_DEAD)
        return;
    c->in_flush_list = 1;
    if (c == s->reading) /* server_read_end writes it */
        return;
    if (s->nflush == s->flush_cap) {
        size_t cap = s->flush_cap ? s->flush_cap * 2 : 64;
        struct conn **f = realloc(s->flush, cap * sizeof *f);
        if (!f) {
            s->flush_all = 1;
            return;
        }
        s->flush = f;
        s->flush_cap = cap;
    }
    s->flush[s->nflush++] = c;
}

void server_want_flush_later(struct server *s, struct conn *c)
{
    double delay = s->cfg->publish_delay;
    if (delay <= 0 || c->in_flush_list) { /* leaves in this loop turn anyway */
        server_want_flush(s, c);
        return;
    }
    if (c->in_later_list || c->state == CONN_DEAD)
        return;
    if (s->nlater == s->later_cap) {
        size_t cap = s->later_cap ? s->later_cap * 2 : 64;
        struct conn **l = realloc(s->later, cap * sizeof *l);
        if (!l) {
            server_want_flush(s, c);
            return;
        }
        s->later = l;
        s->later_cap = cap;
    }
    c->in_later_list = 1;
    s->later[s->nlater++] = c;
    if (!ev_is_active(&s->publish_w)) {
        ev_timer_set(&s->publish_w, delay, 0);
        ev_timer_start(s->loop, &s->publish_w);
    }
}

/* The waiting published output is due: it leaves before the loop blocks.
 * Dead conns are only let go of (the sweep frees them). */
static void release_later(struct server *s, int flush)
{
    for (size_t i = 0; i < s->nlater; i++) {
        struct conn *c = s->later[i];
        c->in_later_list = 0;
        if (flush && c->state != CONN_DEAD)
            server_want_flush(s, c);
    }
    s->nlater = 0;
    if (s->later_cap > 4096) { /* after a burst, do not keep a large array */
        free(s->later);
        s->later = NULL;
        s->later_cap = 0;
    }
}

/* Twice a second: how late this runs is the loop's lag (the time handlers
 * and I/O held the loop past when it was due), and the topic gauges. */
#define METRICS_TICK 0.5

static void on_metrics_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct server *s = container_of(w, struct server, metrics_w);
    double late = ev_time() - s->metrics_due;
    metrics_lag(s->metrics, late > 0 ? late : 0);
    size_t topics = 0, owners = 0, subscriptions = 0;
    if (s->topics)
        topic_table_stats(s->topics, &topics, &owners, &subscriptions);
    METRIC_SET(s->metrics->topics, topics);
    METRIC_SET(s->metrics->subscriptions, subscriptions);
    if (s->bp) {
        const struct backplane_stats *st = backplane_stats(s->bp);
        struct metrics *m = s->metrics;
        METRIC_SET(m->bp_servers, backplane_servers(s->bp));
        METRIC_SET(m->bp_connected, backplane_connected(s->bp));
        METRIC_SET(m->bp_published, st->published);
        METRIC_SET(m->bp_received, st->received);
        METRIC_SET(m->bp_delivered, st->delivered);
        METRIC_SET(m->bp_dropped_unreachable, st->dropped_unreachable);
        METRIC_SET(m->bp_dropped_pending, st->dropped_pending);
        METRIC_SET(m->bp_dropped_bad, st->dropped_bad);
        METRIC_SET(m->bp_reconnects, st->reconnects);
    }
    s->metrics_due = ev_now(loop) + METRICS_TICK;
    ev_timer_set(w, METRICS_TICK, 0);
    ev_timer_start(loop, w);
}

static void on_publish_delay(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    release_later(container_of(w, struct server, publish_w), 1);
}

struct limits_gen {
    struct ws_limits l;
    struct limits_gen *next;
};

const struct ws_limits *server_limits(struct server *s)
{
    struct limits_gen *g = s->limits;
    if (g && g->l.max_message == s->cfg->max_message &&
        g->l.max_fragments == s->cfg->max_fragments)
        return &g->l;
    if (!(g = malloc(sizeof *g)))
        return NULL;
    g->l.max_message = s->cfg->max_message;
    g->l.max_fragments = s->cfg->max_fragments;
    g->next = s->limits;
    s->limits = g;
    return &g->l;
}

void server_limits_free(struct server *s)
{
    while (s->limits) {
        struct limits_gen *g = s->limits;
        s->limits = g->next;
        free(g);
    }
}

static void flush_one(struct conn *c)
{
    if (!c->in_flush_list)
        return;
    c->in_flush_list = 0;
    if (c->state != CONN_DEAD)
        conn_flush(c);
}

void server_read_begin(struct server *s, struct conn *c) { s->reading = c; }

/* With a thousand connections read in one loop turn, their conns and
 * output blocks left the cache before a flush at the turn's end reached
 * them: written while still warm, moonport's own code went from 8% to 4%
 * of the server's time at 1000 x 1, with the same system calls. c may
 * also be in the flush array from earlier in the turn: flush_one writes
 * it now either way, and finds nothing owed when the array reaches it. */
void server_read_end(struct server *s, struct conn *c)
{
    s->reading = NULL;
    flush_one(c);
}

/* Out of memory for the flush array: look at every conn. */
static void flush_every(struct server *s)
{
    struct conn_list *lists[] = {&s->handshaking, &s->open, &s->closing};
    s->flush_all = 0;
    for (int i = 0; i < 3; i++)
        for (struct conn *c = lists[i]->head, *next; c; c = next) {
            next = c->next;
            flush_one(c);
        }
    for (struct conn *c = s->dead_list; c; c = c->next)
        c->in_flush_list = 0; /* nothing to write any more */
}

static struct conn_list *list_of(struct server *s, int state)
{
    switch (state) {
    case CONN_HANDSHAKE:
        return &s->handshaking;
    case CONN_OPEN:
        return &s->open;
    case CONN_CLOSING:
    case CONN_LINGER:
        return &s->closing;
    }
    return NULL;
}

static void list_remove(struct conn_list *l, struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    l->n--;
}

static void list_append(struct conn_list *l, struct conn *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->n++;
}

/* A list's timer wakes when its head falls due. */
static void arm(struct server *s, ev_timer *w, const struct conn_list *l, double timeout)
{
    if (!l->head) {
        ev_timer_stop(s->loop, w);
        return;
    }
    double wait = timeout - server_since(s, l->head->stamp);
    ev_timer_stop(s->loop, w);
    ev_timer_set(w, wait > 0.001 ? wait : 0.001, 0);
    ev_timer_start(s->loop, w);
}

/* Keepalive looks at every open connection this often: a few times per
 * timeouts.ping (or idle), so a ping goes out at most a quarter of that
 * late, and no more than once a second nor less than every 5 s; and ten
 * times per timeouts.lifetime, as precise as its jitter. */
static int keepalive_on(const struct config *cfg)
{
    return cfg->ping_interval > 0 || cfg->idle_timeout > 0 || cfg->lifetime > 0;
}

static double keepalive_period(const struct config *cfg)
{
    double t = cfg->ping_interval > 0 ? cfg->ping_interval : cfg->idle_timeout;
    if (cfg->idle_timeout > 0 && cfg->idle_timeout < t)
        t = cfg->idle_timeout;
    t /= 4;
    if (cfg->lifetime > 0 && (t <= 0 || cfg->lifetime / 10 < t))
        t = cfg->lifetime / 10;
    return t < 0.01 ? 0.01 : t > 5 ? 5 : t;
}

static void start_keepalive(struct server *s)
{
    const struct config *cfg = s->cfg;
    if (ev_is_active(&s->keepalive_w) || !keepalive_on(cfg))
        return;
    double period = keepalive_period(cfg);
    ev_timer_set(&s->keepalive_w, period, period);
    ev_timer_start(s->loop, &s->keepalive_w);
}

void server_conn_add(struct server *s, struct conn *c)
{
    c->state = CONN_HANDSHAKE;
    c->stamp = server_ms(s);
    list_append(&s->handshaking, c);
    s->nconns++;
    if (s->shared)
        workers_conn_added(s->shared, s->worker);
    if (!ev_is_active(&s->handshake_w))
        arm(s, &s->handshake_w, &s->handshaking, s->cfg->handshake_timeout);
}

void server_conn_enter(struct server *s, struct conn *c, int state)
{
    list_remove(list_of(s, c->state), c);
    c->state = (uint8_t)state;
    c->stamp = server_ms(s);
    list_append(list_of(s, state), c);
    if (state == CONN_OPEN)
        start_keepalive(s);
    else if (!ev_is_active(&s->closing_w))
        arm(s, &s->closing_w, &s->closing, s->cfg->close_timeout);
}

void server_conn_dead(struct server *s, struct conn *c)
{
    list_remove(list_of(s, c->state), c);
    c->state = CONN_DEAD;
    s->nconns--;
    if (s->shared)
        workers_conn_gone(s->shared, s->worker);
    c->next = s->dead_list; /* out of every list, so next links the dead */
    s->dead_list = c;
}

/* The handshake timeout of the connections at the head of the list. */
static void on_handshake_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct server *s = container_of(w, struct server, handshake_w);
    double timeout = s->cfg->handshake_timeout;
    while (s->handshaking.head && server_since(s, s->handshaking.head->stamp) + 0.001 >= timeout)
        conn_timeout(s->handshaking.head);
    arm(s, w, &s->handshaking, timeout);
}

static void on_closing_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct server *s = container_of(w, struct server, closing_w);
    double timeout = s->cfg->close_timeout;
    while (s->closing.head && server_since(s, s->closing.head->stamp) + 0.001 >= timeout)
        conn_timeout(s->closing.head);
    arm(s, w, &s->closing, timeout);
}

/* Every open connection gets a look: each one looked at goes to the tail,
 * so the sweep ends after as many as there were, whatever the handlers it
 * runs do to other connections. */
static void on_keepalive(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct server *s = container_of(w, struct server, keepalive_w);
    const struct config *cfg = s->cfg;
    size_t n = 0;
    for (struct conn *c = s->open.head; c; c = c->next)
        n++;
    for (; n && s->open.head; n--) {
        struct conn *c = s->open.head;
        list_remove(&s->open, c);
        list_append(&s->open, c);
        if (!drain_lifetime_check(s, c))
            conn_keepalive(c);
    }
    if (!s->open.head || !keepalive_on(cfg)) {
        ev_timer_stop(loop, w);
        return;
    }
    w->repeat = keepalive_period(cfg); /* SIGHUP may have changed it */
    ev_timer_again(loop, w);
}

/* Runs before the loop blocks: flush, then free the dead. */
static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    struct server *s = container_of(w, struct server, prepare_w);
    /* A flush can end a conn, and its on_close can queue output on others:
     * they are appended, and this loop reaches them too. */
    for (size_t i = 0; i < s->nflush; i++)
        flush_one(s->flush[i]);
    size_t used = s->nflush;
    s->nflush = 0;
    if (s->flush_all)
        flush_every(s);
    /* After a burst, do not keep a large array for good. */
    if (s->flush_cap > 4096 && used <= 64) {
        free(s->flush);
        s->flush = NULL;
        s->flush_cap = 0;
    }
    lbridge_tune_gc(s->lb);
    compress_trim(s->z);
    if (s->shutting_down && s->nconns == 0) { /* nothing waits any more */
        ev_timer_stop(loop, &s->publish_w);
        release_later(s, 0);
    }
    struct conn *kept = NULL; /* dead, but still in the later list */
    while (s->dead_list) {
        struct conn *c = s->dead_list;
        s->dead_list = c->next;
        if (c->in_flush_list) /* cannot be: the flush list was just emptied */
            continue;
        if (c->in_later_list) {
            c->next = kept;
            kept = c;
            continue;
        }
        conn_free(c);
    }
    s->dead_list = kept;
    if (s->shutting_down && s->nconns == 0)
        ev_break(loop, EVBREAK_ALL);
}

static void drop_all(struct server *s)
{
    struct conn_list *lists[] = {&s->handshaking, &s->open, &s->closing};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        while (lists[i]->head)
            conn_abort(lists[i]->head, "shutdown");
}

static void on_shutdown_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct server *s = container_of(w, struct server, shutdown_w);
    log_warn("shutdown: %zu connection(s) did not finish closing; dropping them", s->nconns);
    drop_all(s);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    struct server *s = w->signum == SIGINT    ? container_of(w, struct server, sigint_w)
                       : w->signum == SIGUSR2 ? container_of(w, struct server, sigusr2_w)
                                              : container_of(w, struct server, sigterm_w);
    if (s->shutting_down) {
        log_warn("second signal: dropping every connection now");
        drop_all(s);
        return;
    }
    drain_begin(s, w->signum);
}

int server_run(struct server *s)
{
    struct ev_loop *loop = s->loop;
    s->epoch = ev_now(loop);
    throttle_init(&s->throttle, s);
    signal(SIGPIPE, SIG_IGN);
    ev_io_init(&s->accept_w, on_accept, s->lfd, EV_READ);
    ev_io_start(loop, &s->accept_w);
    ev_timer_init(&s->accept_retry, on_accept_retry, 0.1, 0);
    ev_signal_init(&s->sigint_w, on_signal, SIGINT);
    ev_signal_init(&s->sigterm_w, on_signal, SIGTERM);
    ev_signal_init(&s->sigusr2_w, on_signal, SIGUSR2);
    ev_signal_start(loop, &s->sigint_w);
    ev_signal_start(loop, &s->sigterm_w);
    ev_signal_start(loop, &s->sigusr2_w);
    ev_prepare_init(&s->prepare_w, on_prepare);
    ev_prepare_start(loop, &s->prepare_w);
    ev_init(&s->shutdown_w, on_shutdown_timeout);
    ev_init(&s->handshake_w, on_handshake_timeout);
    ev_init(&s->closing_w, on_closing_timeout);
    ev_init(&s->keepalive_w, on_keepalive);
    ev_init(&s->publish_w, on_publish_delay);
    ev_timer_init(&s->metrics_w, on_metrics_tick, METRICS_TICK, 0);
    s->metrics_due = ev_now(loop) + METRICS_TICK;
    ev_timer_start(loop, &s->metrics_w);
    /* Timers and signals must not keep a finished loop alive. */
    ev_run(loop, 0);
    throttle_free(&s->throttle);
    ipcount_free(s->per_ip); /* every connection is gone */
    s->per_ip = NULL;
    log_info("stopped");
    return 0;
}
