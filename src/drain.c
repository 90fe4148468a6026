/* drain: the graceful end of a server and the lifetime of a connection.
 * See drain.h. It never frees or aborts a connection of its own accord: it
 * begins closing handshakes, and the server's lists and timers do the
 * rest. Its state is a few fields of struct server; a connection pays no
 * memory for it (its lifetime jitter comes from its id). */
#include "drain.h"

#include <signal.h>
#include <stdint.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "snapshot.h"
#include "ws_frame.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* The drain's timer ticks once per connection's share of the window, but
 * not more often than this (a big server closes several per tick) nor less
 * (a tick is also how soon a handshake that finishes during the drain is
 * closed). */
#define TICK_MIN 0.005
#define TICK_MAX 0.1

/* splitmix64: a well-mixed 64-bit value from any seed. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Uniform in [0, 1). */
static double unit(uint64_t x)
{
    return (double)(mix(x) >> 11) / 9007199254740992.0;
}

static void next_tick(struct server *s)
{
    double slot = s->drain_planned ? s->drain_window / (double)s->drain_planned : TICK_MAX;
    slot = slot < TICK_MIN ? TICK_MIN : slot > TICK_MAX ? TICK_MAX : slot;
    /* Jitter: ticks of 0.5 to 1.5 slots, so the closes of two servers
     * draining at once do not fall in step. */
    double wait = slot * (0.5 + unit(s->drain_seed++));
    ev_timer_set(&s->drain_w, wait, 0);
    ev_timer_start(s->loop, &s->drain_w);
}

/* Close as many open connections, oldest first, as the pace says are due
 * by now: the k-th of n in the middle of its slot, (k - 0.5) * window / n
 * after the signal; every one left once the window is over (a handshake
 * that finished late, too). */
static void on_drain_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct server *s = container_of(w, struct server, drain_w);
    double elapsed = ev_now(loop) - s->drain_began;
    int over = elapsed >= s->drain_window;
    size_t due = over ? SIZE_MAX
                      : (size_t)((double)s->drain_planned * elapsed / s->drain_window + 0.5);
    const char *reason = s->drain_code == WS_CLOSE_RESTART ? "server restarting"
                                                           : "server shutting down";
    while (s->open.head && (over || s->drain_closed < due)) {
        s->drain_closed++;
        METRIC_ADD(s->metrics->drain_closes, 1);
        conn_close(s->open.head, s->drain_code, reason); /* off the open list */
    }
    if (s->open.head || s->handshaking.head)
        next_tick(s);
}

void drain_begin(struct server *s, int signum)
{
    struct ev_loop *loop = s->loop;
    const struct config *cfg = s->cfg;
    s->shutting_down = 1; /* /healthz: 503 from now on */
    s->drain_code = signum == SIGUSR2 ? WS_CLOSE_RESTART : WS_CLOSE_GOING_AWAY;
    /* What the listening socket queued would be reset by its close: take
     * it in, to finish its handshake and be closed in its turn. */
    size_t queued = server_accept_pending(s);
    ev_io_stop(loop, &s->accept_w);
    ev_timer_stop(loop, &s->accept_retry);
    if (s->lfd >= 0)
        close(s->lfd);
    s->lfd = -1;
    size_t n = s->open.n + s->handshaking.n;
    double window = cfg->drain;
    if (window > (double)n / DRAIN_MIN_RATE)
        window = (double)n / DRAIN_MIN_RATE;
    s->drain_began = ev_now(loop);
    s->drain_window = window;
    s->drain_planned = n;
    s->drain_closed = 0;
    s->drain_seed = mix((uint64_t)getpid() ^ (uint64_t)(ev_time() * 1e6));
    log_info("%s: closing %zu connection(s) with %u over %.3g s (%zu taken from the listen "
             "queue), then exiting",
             signum == SIGINT ? "SIGINT" : signum == SIGUSR2 ? "SIGUSR2" : "SIGTERM", n,
             (unsigned)s->drain_code, window, queued);
    /* A connection whose close is all sent waits only for the peer's FIN:
     * nothing is lost by not waiting for it. */
    for (struct conn *c = s->closing.head, *next; c; c = next) {
        next = c->next;
        if (c->state == CONN_LINGER && c->shut_wr)
            conn_abort(c, "shutdown");
    }
    ev_init(&s->drain_w, on_drain_tick);
    if (n)
        next_tick(s);
    /* The bound on it all: the window, then the last closing handshakes. */
    ev_timer_set(&s->shutdown_w, window + cfg->close_timeout + 0.5, 0);
    ev_timer_start(loop, &s->shutdown_w);
}

int drain_lifetime_check(struct server *s, struct conn *c)
{
    double lifetime = s->cfg->lifetime;
    if (lifetime <= 0 || c->state != CONN_OPEN)
        return 0;
    double age = ev_now(s->loop) - c->req->started;
    /* Up to 10% more, the same for a connection at every look, different
     * between connections: those that came together leave spread out. */
    if (age < lifetime * (1 + 0.1 * unit(c->id)))
        return 0;
    log_info("conn %llu %s: open for %.1fs, over timeouts.lifetime (%gs): closing with 1001",
             (unsigned long long)c->id, conn_path(c), age, lifetime);
    METRIC_ADD(s->metrics->lifetime_closes, 1);
    conn_close(c, WS_CLOSE_GOING_AWAY, "lifetime over");
    return 1;
}
