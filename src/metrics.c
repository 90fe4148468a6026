/* metrics: the counts' slots and their Prometheus exposition. See metrics.h.
 * Pure: no sockets, no libev; the exposition is text appended to a buf. */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"

static const int status_codes[] = {
#define X(n) n,
    METRICS_STATUSES(X)
#undef X
};

/* Upper bounds of the lag buckets, seconds. */
static const double lag_bounds[METRICS_LAG_BUCKETS] = {0.001, 0.0025, 0.005, 0.01,
                                                        0.025, 0.05,   0.1,   1.0};

void metrics_init(struct metrics *m, int pid)
{
    memset(m, 0, sizeof *m);
    m->pid = pid;
    m->live = 1;
    snprintf(m->apps[METRICS_APPS].app, METRICS_APP_NAME, "(none)");
}

struct metrics_app *metrics_app(struct metrics *m, const char *name)
{
    for (uint32_t i = 0; i < m->napps; i++)
        if (strncmp(m->apps[i].app, name, METRICS_APP_NAME - 1) == 0)
            return &m->apps[i];
    if (m->napps == METRICS_APPS)
        return &m->apps[METRICS_APPS];
    struct metrics_app *a = &m->apps[m->napps];
    snprintf(a->app, METRICS_APP_NAME, "%s", name);
    /* Readers take napps, then read the slots below it: the name first. */
    __atomic_store_n(&m->napps, m->napps + 1, __ATOMIC_RELEASE);
    return a;
}

void metrics_app_routes(struct metrics_app *a, char *const *patterns, size_t n)
{
    char route[METRICS_ROUTE_NAME];
    size_t len = 0;
    route[0] = 0;
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(route + len, sizeof route - len, "%s%s", i ? "," : "", patterns[i]);
        if (w < 0 || (size_t)w >= sizeof route - len)
            break; /* cut at a whole pattern */
        len += (size_t)w;
    }
    route[len] = 0;
    if (strcmp(route, a->route) != 0)
        memcpy(a->route, route, len + 1);
}

enum metrics_status metrics_status_of(int status)
{
    for (int i = 0; i < MS_OTHER; i++)
        if (status_codes[i] == status)
            return (enum metrics_status)i;
    return MS_OTHER;
}

unsigned metrics_close_of(unsigned code)
{
    if (code >= 1000 && code < 1000 + MC_RFC)
        return code - 1000;
    if (code >= 3000 && code <= 3999)
        return MC_3XXX;
    if (code >= 4000 && code <= 4999)
        return MC_4XXX;
    return MC_OTHER;
}

void metrics_lag(struct metrics *m, double seconds)
{
    unsigned i = 0;
    while (i < METRICS_LAG_BUCKETS && seconds > lag_bounds[i])
        i++;
    METRIC_ADD(m->lag_buckets[i], 1);
    METRIC_ADD(m->lag_count, 1);
    METRIC_ADD(m->lag_sum_us, (uint64_t)(seconds * 1e6 + 0.5));
}

/* The exposition. Every append checks for memory; the first failure sticks. */
struct out {
    struct buf *b;
    int failed;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line || buf_append(o->b, line, (size_t)n))
        o->failed = 1;
}

/* A label value as the text format wants it: \ " and newline escaped. */
static void escape(char *dst, size_t cap, const char *src)
{
    size_t j = 0;
    for (; *src && j + 3 < cap; src++) {
        if (*src == '\\' || *src == '"' || *src == '\n') {
            dst[j++] = '\\';
            dst[j++] = *src == '\n' ? 'n' : *src;
        } else {
            dst[j++] = *src;
        }
    }
    dst[j] = 0;
}

static void head(struct out *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* An app's counts summed over the workers, keyed by its name. */
struct app_sum {
    const struct metrics_app *first; /* for its labels */
    struct metrics_app sum;
};

static const char *const closer_names[MB_N] = {"none", "client", "server"};

static uint64_t get(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* The worker-wide counts: every field of struct metrics from closes up to
 * napps is a uint64_t (metrics.h says so), summed word by word, so a new
 * count needs no line of its own here. */
#define COUNTS_FIRST offsetof(struct metrics, closes)
#define COUNTS_N ((offsetof(struct metrics, napps) - COUNTS_FIRST) / sizeof(uint64_t))
_Static_assert((offsetof(struct metrics, napps) - COUNTS_FIRST) % sizeof(uint64_t) == 0,
               "struct metrics: only uint64_t counts between closes and napps");

static void add_app(struct metrics_app *to, const struct metrics_app *a)
{
    to->open += get(&a->open);
    for (int s = 0; s < MS_N; s++)
        to->handshakes[s] += get(&a->handshakes[s]);
    to->msgs_in += get(&a->msgs_in);
    to->msgs_out += get(&a->msgs_out);
    to->bytes_in += get(&a->bytes_in);
    to->bytes_out += get(&a->bytes_out);
    to->lua_errors += get(&a->lua_errors);
}

static void app_counter(struct out *o, const struct app_sum *sums, size_t n, const char *name,
                        const char *type, const char *help, size_t field)
{
    head(o, name, type, help);
    for (size_t i = 0; i < n; i++) {
        char app[2 * METRICS_APP_NAME], route[2 * METRICS_ROUTE_NAME];
        escape(app, sizeof app, sums[i].first->app);
        escape(route, sizeof route, sums[i].first->route);
        uint64_t v;
        memcpy(&v, (const char *)&sums[i].sum + field, sizeof v);
        put(o, "%s{app=\"%s\",route=\"%s\"} %llu\n", name, app, route, (unsigned long long)v);
    }
}

int metrics_render(struct buf *out, const struct metrics *blocks, unsigned n,
                   const struct metrics_process *proc, int draining)
{
    struct out o = {out, 0};
    static struct app_sum sums[METRICS_APPS + 1];
    size_t nsums = 0;
    struct metrics total;
    memset(&total, 0, sizeof total);
    unsigned live = 0;

    for (unsigned w = 0; w < n; w++) {
        const struct metrics *m = &blocks[w];
        if (!__atomic_load_n(&m->live, __ATOMIC_ACQUIRE))
            continue;
        live++;
        uint32_t napps = __atomic_load_n(&m->napps, __ATOMIC_ACQUIRE);
        for (uint32_t i = 0; i <= napps; i++) {
            const struct metrics_app *a = i == napps ? &m->apps[METRICS_APPS] : &m->apps[i];
            size_t k = 0;
            while (k < nsums && strcmp(sums[k].first->app, a->app) != 0)
                k++;
            if (k == nsums) {
                if (nsums == METRICS_APPS + 1)
                    continue; /* more names than slots in all: cannot happen, each has 64 */
                memset(&sums[k], 0, sizeof sums[k]);
                sums[k].first = a;
                nsums++;
            }
            add_app(&sums[k].sum, a);
        }
        const uint64_t *from = (const uint64_t *)((const char *)m + COUNTS_FIRST);
        uint64_t *to = (uint64_t *)((char *)&total + COUNTS_FIRST);
        for (size_t i = 0; i < COUNTS_N; i++)
            to[i] += get(&from[i]);
    }

#define APP_FIELD(f) offsetof(struct metrics_app, f)
    app_counter(&o, sums, nsums, "moonport_connections", "gauge",
                "WebSocket connections open now, by app and route.", APP_FIELD(open));
    head(&o, "moonport_handshakes_total", "counter",
         "Opening handshakes answered, by app, route and HTTP status (101: accepted).");
    for (size_t i = 0; i < nsums; i++) {
        char app[2 * METRICS_APP_NAME], route[2 * METRICS_ROUTE_NAME];
        escape(app, sizeof app, sums[i].first->app);
        escape(route, sizeof route, sums[i].first->route);
        for (int s = 0; s < MS_N; s++) {
            if (!sums[i].sum.handshakes[s] && s != MS_101)
                continue; /* statuses never answered are left out, 101 always shown */
            char status[16];
            if (s == MS_OTHER)
                snprintf(status, sizeof status, "other");
            else
                snprintf(status, sizeof status, "%d", status_codes[s]);
            put(&o, "moonport_handshakes_total{app=\"%s\",route=\"%s\",status=\"%s\"} %llu\n", app,
                route, status, (unsigned long long)sums[i].sum.handshakes[s]);
        }
    }
    app_counter(&o, sums, nsums, "moonport_messages_received_total", "counter",
                "Text and binary messages received and handed to the app.", APP_FIELD(msgs_in));
    app_counter(&o, sums, nsums, "moonport_messages_sent_total", "counter",
                "Text and binary messages queued to clients (sends and publishes).",
                APP_FIELD(msgs_out));
    app_counter(&o, sums, nsums, "moonport_received_bytes_total", "counter",
                "Payload bytes of the messages received, as the app sees them.",
                APP_FIELD(bytes_in));
    app_counter(&o, sums, nsums, "moonport_sent_bytes_total", "counter",
                "Payload bytes of the messages sent, before compression.", APP_FIELD(bytes_out));
    app_counter(&o, sums, nsums, "moonport_lua_errors_total", "counter",
                "Errors raised by the app's handlers and timers.", APP_FIELD(lua_errors));
#undef APP_FIELD

    head(&o, "moonport_closes_total", "counter",
         "Connections ended, by close code and by who began the close (none: no closing "
         "handshake).");
    for (int c = 0; c < MC_N; c++) {
        char code[16];
        if (c < MC_RFC)
            snprintf(code, sizeof code, "%d", 1000 + c);
        else
            snprintf(code, sizeof code, "%s",
                     c == MC_3XXX ? "3000-3999" : c == MC_4XXX ? "4000-4999" : "other");
        for (int b = 0; b < MB_N; b++)
            if (total.closes[c][b])
                put(&o, "moonport_closes_total{code=\"%s\",by=\"%s\"} %llu\n", code,
                    closer_names[b], (unsigned long long)total.closes[c][b]);
    }
    head(&o, "moonport_send_buffer_drops_total", "counter",
         "Connections dropped because their output queue went over limits.max_send_buffer.");
    put(&o, "moonport_send_buffer_drops_total %llu\n", (unsigned long long)total.send_buffer_drops);
    head(&o, "moonport_handshake_refusals_total", "counter",
         "Handshakes refused by the server's rules: origin (403, origins), per_ip (429, "
         "limits.max_connections_per_ip), proxy_header (400, a bad or unexpected PROXY header).");
    static const char *const refusal_names[MR_N] = {"origin", "per_ip", "proxy_header"};
    for (int r = 0; r < MR_N; r++)
        put(&o, "moonport_handshake_refusals_total{reason=\"%s\"} %llu\n", refusal_names[r],
            (unsigned long long)total.refusals[r]);
    head(&o, "moonport_reloads_total", "counter", "App reloads, by result.");
    put(&o, "moonport_reloads_total{result=\"ok\"} %llu\n", (unsigned long long)total.reloads_ok);
    put(&o, "moonport_reloads_total{result=\"failed\"} %llu\n",
        (unsigned long long)total.reloads_failed);
    head(&o, "moonport_topics", "gauge", "Topics with subscribers, summed over the workers.");
    put(&o, "moonport_topics %llu\n", (unsigned long long)total.topics);
    head(&o, "moonport_subscriptions", "gauge", "Subscriptions of connections to topics.");
    put(&o, "moonport_subscriptions %llu\n", (unsigned long long)total.subscriptions);
    head(&o, "moonport_publishes_total", "counter", "Calls of moonport.publish and ws:publish.");
    put(&o, "moonport_publishes_total %llu\n", (unsigned long long)total.publishes);

    if (total.bp_servers) { /* only with a backplane configured */
        head(&o, "moonport_backplane_connections", "gauge",
             "Redis servers of the backplane connected, summed over the workers (each worker "
             "connects to every server).");
        put(&o, "moonport_backplane_connections{state=\"up\"} %llu\n",
            (unsigned long long)total.bp_connected);
        put(&o, "moonport_backplane_connections{state=\"down\"} %llu\n",
            (unsigned long long)(total.bp_servers - total.bp_connected));
        head(&o, "moonport_backplane_messages_total", "counter",
             "Backplane messages: published to Redis, received from it, delivered to "
             "connections.");
        put(&o, "moonport_backplane_messages_total{direction=\"published\"} %llu\n",
            (unsigned long long)total.bp_published);
        put(&o, "moonport_backplane_messages_total{direction=\"received\"} %llu\n",
            (unsigned long long)total.bp_received);
        put(&o, "moonport_backplane_messages_total{direction=\"delivered\"} %llu\n",
            (unsigned long long)total.bp_delivered);
        head(&o, "moonport_backplane_dropped_total", "counter",
             "Backplane messages dropped, by reason: Redis away, too many replies owed "
             "(backplane.max_pending), or not deliverable.");
        put(&o, "moonport_backplane_dropped_total{reason=\"unreachable\"} %llu\n",
            (unsigned long long)total.bp_dropped_unreachable);
        put(&o, "moonport_backplane_dropped_total{reason=\"pending\"} %llu\n",
            (unsigned long long)total.bp_dropped_pending);
        put(&o, "moonport_backplane_dropped_total{reason=\"bad\"} %llu\n",
            (unsigned long long)total.bp_dropped_bad);
        head(&o, "moonport_backplane_reconnects_total", "counter",
             "Connections to Redis made again after a loss.");
        put(&o, "moonport_backplane_reconnects_total %llu\n",
            (unsigned long long)total.bp_reconnects);
    }

    head(&o, "moonport_event_loop_lag_seconds", "histogram",
         "How late the event loop runs a timer due every half second: time spent in "
         "handlers and I/O between turns of the loop.");
    uint64_t cum = 0;
    for (int i = 0; i < METRICS_LAG_BUCKETS; i++) {
        cum += total.lag_buckets[i];
        put(&o, "moonport_event_loop_lag_seconds_bucket{le=\"%g\"} %llu\n", lag_bounds[i],
            (unsigned long long)cum);
    }
    cum += total.lag_buckets[METRICS_LAG_BUCKETS];
    put(&o, "moonport_event_loop_lag_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    put(&o, "moonport_event_loop_lag_seconds_sum %.6f\n", (double)total.lag_sum_us / 1e6);
    put(&o, "moonport_event_loop_lag_seconds_count %llu\n", (unsigned long long)total.lag_count);

    static const char *const actions[2] = {"pause", "close"};
    static const char *const directions[2] = {"inbound", "outbound"};
    head(&o, "moonport_rate_limited_total", "counter",
         "Times a connection went over limits.messages_per_second or limits.bytes_per_second, "
         "by what was done (limits.rate_action).");
    for (int i = 0; i < 2; i++)
        put(&o, "moonport_rate_limited_total{action=\"%s\"} %llu\n", actions[i],
            (unsigned long long)total.rate_limited[i]);
    head(&o, "moonport_memory_budget_bytes", "gauge",
         "limits.inbound_memory (partial messages) and limits.outbound_memory (output waiting "
         "for the socket), summed over the workers.");
    for (int i = 0; i < 2; i++)
        put(&o, "moonport_memory_budget_bytes{direction=\"%s\"} %llu\n", directions[i],
            (unsigned long long)total.budget_bytes[i]);
    head(&o, "moonport_memory_budget_used_bytes", "gauge",
         "Memory charged to each budget now.");
    for (int i = 0; i < 2; i++)
        put(&o, "moonport_memory_budget_used_bytes{direction=\"%s\"} %llu\n", directions[i],
            (unsigned long long)total.budget_used[i]);
    head(&o, "moonport_memory_budget_holds_total", "counter",
         "Times a connection's reading was held until a memory budget had room.");
    for (int i = 0; i < 2; i++)
        put(&o, "moonport_memory_budget_holds_total{direction=\"%s\"} %llu\n", directions[i],
            (unsigned long long)total.budget_held[i]);
    head(&o, "moonport_memory_budget_failures_total", "counter",
         "Connections failed (inbound: 1009 or 1013) or dropped (outbound) for a memory budget.");
    for (int i = 0; i < 2; i++)
        put(&o, "moonport_memory_budget_failures_total{direction=\"%s\"} %llu\n",
            directions[i], (unsigned long long)total.budget_failed[i]);

    head(&o, "moonport_workers", "gauge", "Worker processes serving now.");
    put(&o, "moonport_workers %u\n", live);
    head(&o, "moonport_draining", "gauge", "1 while the server shuts down (/healthz answers 503).");
    put(&o, "moonport_draining %d\n", draining ? 1 : 0);
    head(&o, "moonport_drain_closes_total", "counter",
         "Connections closed by a drain (SIGTERM, SIGINT: 1001; SIGUSR2: 1012).");
    put(&o, "moonport_drain_closes_total %llu\n", (unsigned long long)total.drain_closes);
    head(&o, "moonport_lifetime_closes_total", "counter",
         "Connections closed with 1001 after timeouts.lifetime.");
    put(&o, "moonport_lifetime_closes_total %llu\n", (unsigned long long)total.lifetime_closes);
    head(&o, "process_resident_memory_bytes", "gauge",
         "Resident memory of the worker processes, summed.");
    put(&o, "process_resident_memory_bytes %llu\n", (unsigned long long)proc->rss_bytes);
    head(&o, "process_open_fds", "gauge", "Open file descriptors of the worker processes, summed.");
    put(&o, "process_open_fds %llu\n", (unsigned long long)proc->open_fds);
    return o.failed ? -1 : 0;
}
