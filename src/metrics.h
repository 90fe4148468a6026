/* metrics: what the server counts for its operator, and the Prometheus text
 * exposition of it (served by admin.c on the admin listener).
 *
 * Each worker counts in a block of its own, which only it writes: a count
 * is a plain load, add and store (no lock, no atomic read-modify-write, no
 * syscall), so counting costs the message path a few instructions. With
 * --workers the blocks sit in memory the master maps shared before it forks
 * (workers.c), one per worker, and the worker that serves /metrics sums
 * them, with each worker's memory and descriptors read from /proc; a reader may see a count a moment old, never a torn one (aligned
 * 8-byte stores are single stores on the machines moonport runs on).
 *
 * Per-app counts (connections, handshakes, messages, bytes, Lua errors) are
 * labelled with the app and its route(s); an app's slot is found once and
 * kept in struct app. Topics and subscriptions are sampled twice a second
 * by the worker's tick, which also measures how late the loop runs it: the
 * event-loop lag. */
#ifndef MOONPORT_METRICS_H
#define MOONPORT_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct buf;

#define METRICS_APPS 64         /* apps with counts of their own; the rest share "(none)" */
#define METRICS_APP_NAME 64
#define METRICS_ROUTE_NAME 192

/* Handshake outcomes: the statuses moonport answers with. */
#define METRICS_STATUSES(X) X(101) X(400) X(403) X(404) X(405) X(426) X(429) X(431) X(500) \
    X(503) X(504)
enum metrics_status {
#define X(n) MS_##n,
    METRICS_STATUSES(X)
#undef X
    MS_OTHER,
    MS_N
};

/* Close codes: 1000-1015 each, then the ranges apps use. */
enum { MC_RFC = 16, MC_3XXX = MC_RFC, MC_4XXX, MC_OTHER, MC_N };
/* Who began the closing handshake: none means there was none (1006). */
enum metrics_closer { MB_NONE, MB_CLIENT, MB_SERVER, MB_N };

/* Handshakes moonport refused for the operator's rules (proxy.h, origin.h,
 * ipcount.h), apart from the same statuses an app may answer with. */
enum metrics_refusal { MR_ORIGIN, MR_PER_IP, MR_PROXY_HEADER, MR_N };

/* Event-loop lag buckets, in seconds (upper bounds; +Inf after). */
#define METRICS_LAG_BUCKETS 8

struct metrics_app {
    char app[METRICS_APP_NAME];
    char route[METRICS_ROUTE_NAME]; /* its patterns, comma-separated */
    uint64_t open;                  /* connections open now */
    uint64_t handshakes[MS_N];
    uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
    uint64_t lua_errors;
};

struct metrics {
    int32_t pid;    /* this worker's process, for its memory and descriptors */
    uint32_t live;  /* 1 once a worker runs in this block */
    /* From here to napps, only uint64_t counts (and arrays of them):
     * metrics_render sums the workers' blocks word by word. */
    uint64_t closes[MC_N][MB_N];
    uint64_t send_buffer_drops; /* connections dropped over limits.max_send_buffer */
    uint64_t reloads_ok, reloads_failed;
    uint64_t publishes;               /* moonport.publish / ws:publish calls */
    uint64_t drain_closes;    /* connections the drain closed (drain.h) */
    uint64_t lifetime_closes; /* connections closed at timeouts.lifetime */
    uint64_t refusals[MR_N];          /* 403 origin, 429 per address, 400 PROXY header */
    uint64_t topics, subscriptions;   /* now (sampled) */
    /* The Redis backplane (backplane.h), copied from its counts by the
     * tick; servers 0 when there is none. */
    uint64_t bp_servers, bp_connected;
    uint64_t bp_published, bp_received, bp_delivered, bp_dropped_unreachable, bp_dropped_pending,
        bp_dropped_bad, bp_reconnects;
    uint64_t lag_buckets[METRICS_LAG_BUCKETS + 1];
    uint64_t lag_count, lag_sum_us;
    /* throttle.h: connections over a rate ([0] paused, [1] closed); for the
     * inbound [0] and outbound [1] memory budgets: connections held, failed
     * or dropped, bytes charged now, and the budget of this worker. */
    uint64_t rate_limited[2];
    uint64_t budget_held[2], budget_failed[2], budget_used[2], budget_bytes[2];
    uint32_t napps, unused;
    struct metrics_app apps[METRICS_APPS + 1]; /* the last: "(none)", and handshakes with no app */
};

/* Add n to a count only this worker writes: a plain add, stored whole. */
#define METRIC_ADD(field, n) \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define METRIC_SUB(field, n) METRIC_ADD(field, -(uint64_t)(n))
#define METRIC_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)

void metrics_init(struct metrics *m, int pid);

/* The slot of an app (by name), made on first use; the shared "(none)"
 * one when all are taken. Never NULL. */
struct metrics_app *metrics_app(struct metrics *m, const char *name);
/* The slot of handshakes that reached no app (bad requests, no route). */
static inline struct metrics_app *metrics_no_app(struct metrics *m)
{
    return &m->apps[METRICS_APPS];
}
/* Set an app slot's route label from its patterns. */
void metrics_app_routes(struct metrics_app *a, char *const *patterns, size_t n);

enum metrics_status metrics_status_of(int status);
unsigned metrics_close_of(unsigned code);

/* A connection's close began (by MB_CLIENT or MB_SERVER, with its code),
 * or it ended with no closing handshake (MB_NONE, 1006). */
static inline void metrics_close(struct metrics *m, unsigned code, enum metrics_closer by)
{
    METRIC_ADD(m->closes[metrics_close_of(code)][by], 1);
}

/* One event-loop lag sample, in seconds. */
void metrics_lag(struct metrics *m, double seconds);

/* What the workers' processes hold, read from /proc when /metrics is asked. */
struct metrics_process {
    uint64_t rss_bytes, open_fds;
};

/* The exposition of n workers' blocks, summed, appended to out. draining:
 * the server is shutting down. Returns 0, or -1 when out of memory. */
int metrics_render(struct buf *out, const struct metrics *blocks, unsigned n,
                   const struct metrics_process *proc, int draining);

#endif
