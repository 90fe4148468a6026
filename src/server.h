/* server: the event loop's owner. It listens, accepts, keeps the lists of
 * connections and runs their timeouts, flushes their output once per loop
 * iteration (so frames queued by one handler leave in one write), frees
 * dead connections at a safe point, and shuts down on SIGINT/SIGTERM (or
 * SIGUSR2) through drain.c, which closes every connection, spread out.
 *
 * Timeouts cost a connection nothing of its own: every connection in a
 * state with a fixed timeout (the handshake, the closing handshake and the
 * linger after it) sits in that state's list in the order it entered, which
 * is the order its timeout falls due, and one timer per list wakes for the
 * head. Open connections are swept for keepalive a few times per
 * timeouts.ping. */
#ifndef MOONPORT_SERVER_H
#define MOONPORT_SERVER_H

#include <ev.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "throttle.h"

struct conn;
struct router;
struct lbridge;

#define SERVER_READ_BUF (64 * 1024)

struct reload;
struct compress;
struct topic_table;
struct ssl_ctx_st;
struct workers_shared;
struct mesh;
struct metrics;
struct admin;
struct backplane;
struct ipcount;

/* Connections in the order they entered a state. */
struct conn_list {
    struct conn *head, *tail;
    size_t n;
};

struct server {
    struct ev_loop *loop;
    struct config *cfg;
    struct router *router;
    struct lbridge *lb;
    struct reload *reload;
    struct compress *z; /* permessage-deflate contexts, shared */
    struct topic_table *topics; /* pubsub.h: NULL until the first subscribe */
    struct conn_reply *connect_reply; /* the decision of the on_connect running now */
    struct ssl_ctx_st *tls; /* TLS for new connections (tls.h), or NULL: plain ws:// */
    unsigned worker, nworkers; /* this worker, 1..N, and N: 1 and 1 without --workers */
    struct workers_shared *shared; /* workers.h: counts across workers; NULL with one */
    struct mesh *mesh; /* mesh.h: publishes to the other workers; NULL with one */
    struct metrics *metrics; /* metrics.h: this worker's counts */
    struct metrics *metrics_all; /* every worker's, for /metrics: metrics_n of them */
    unsigned metrics_n;
    struct admin *admin; /* admin.h: the admin listener, in worker 1; else NULL */
    struct throttle throttle; /* throttle.h: rate limits and memory budgets */
    struct ipcount *per_ip; /* ipcount.h: open connections per client address,
                               made at the first with limits.max_connections_per_ip */
    ev_timer metrics_w;  /* samples gauges and the loop's lag twice a second */
    ev_tstamp metrics_due;
    struct backplane *bp; /* backplane.h: topics across nodes; NULL without one */
    int argc; /* kept for SIGHUP, which reads the options and config again */
    char **argv;

    int lfd;
    ev_io accept_w;
    ev_timer accept_retry; /* after EMFILE: try accepting again later */
    ev_signal sigint_w, sigterm_w, sigusr2_w;
    ev_prepare prepare_w; /* flush output and sweep dead conns */
    ev_timer shutdown_w;  /* bound on the graceful shutdown */
    /* The drain (drain.h): its pace, and how far it has gone. */
    ev_timer drain_w;
    ev_tstamp drain_began, drain_window;
    size_t drain_planned, drain_closed;
    uint64_t drain_seed; /* the jitter of its ticks */
    uint16_t drain_code; /* 1001, or 1012 for SIGUSR2 */

    struct conn_list handshaking; /* CONN_HANDSHAKE: timeouts.handshake from accept */
    struct conn_list open;        /* CONN_OPEN: swept for keepalive */
    struct conn_list closing;     /* CONN_CLOSING, CONN_LINGER: timeouts.close from entering */
    ev_timer handshake_w, closing_w, keepalive_w;
    size_t nconns;
    ev_tstamp epoch; /* when server_run started: server_ms() counts from it */
    /* Conns with output to write before the loop blocks. An array, not a
     * link in each conn: it grows to the most conns written in one loop
     * iteration, not with the conns that are open. If it cannot grow,
     * flush_all has every conn looked at instead. */
    /* Message limits for new connections' parsers, newest first: one per
     * value they have had since start (a SIGHUP can change them, and a
     * connection keeps those it opened with). Freed at exit. */
    struct limits_gen *limits;
    struct conn **flush;
    size_t nflush, flush_cap;
    /* The conn whose input is being read (server_read_begin): output it
     * queues meanwhile is written as soon as the read ends, while its
     * memory is still in the cache, rather than with the flush array's. */
    struct conn *reading;
    /* Conns with published output that may wait for more, up to
     * timeouts.publish_delay (publish_w), to leave in fewer writes. A dead
     * one is not freed while it is here. */
    struct conn **later;
    size_t nlater, later_cap;
    ev_timer publish_w;
    int flush_all;
    struct conn *dead_list;
    uint64_t next_id;
    uint64_t refused;         /* connections refused since the last log line */
    ev_tstamp refused_logged; /* when that line was written */
    int shutting_down;
    char bound[80]; /* "host:port" actually bound */
    struct sockaddr_in6 local; /* the bound address (IPv4 or IPv6), when ... */
    int local_known;           /* ...it is not a wildcard: every conn's server end */

    /* One read buffer for every connection: bytes are parsed as soon as
     * they are read, so a connection keeps none of them. */
    uint8_t rbuf[SERVER_READ_BUF];
};

/* Bind and listen. Returns 0, or -1 with err set ("port in use"...). */
int server_listen(struct server *s, char *err, size_t errlen);
/* The parts of it: a listening socket on cfg's host and port (with
 * SO_REUSEPORT when reuseport: workers share the port), or -1 with err
 * set; its port; and the server using fd as its listener. */
int server_open(const struct config *cfg, int port, int reuseport, char *err, size_t errlen);
int server_open_host(const char *host, int port, int reuseport, char *err, size_t errlen);
int server_port_of(int fd);
/* The first listener of a server: shared (SO_REUSEPORT), so that a new
 * moonport started with --takeover can accept beside it during a rolling
 * restart. Without cfg->takeover a plain bind is tried first, and fails as
 * before when anyone holds the port, a moonport or not; with it, only a
 * listener opened for sharing (a moonport's) lets it in. */
int server_open_listener(const struct config *cfg, int port, char *err, size_t errlen);
void server_adopt(struct server *s, int fd);
/* Accept every connection the listening socket has queued, until it has
 * none (or no room): the drain does this before it closes the socket.
 * Returns how many it accepted. */
size_t server_accept_pending(struct server *s);

/* Run the loop until shutdown. Returns the exit status. */
int server_run(struct server *s);

/* Connection bookkeeping for conn.c. */
void server_want_flush(struct server *s, struct conn *c);
/* Around the reading of c's input: output queued for c in between is
 * written by server_read_end (output queued for others still waits for
 * the end of the loop turn). */
void server_read_begin(struct server *s, struct conn *c);
void server_read_end(struct server *s, struct conn *c);
/* The same for output that may wait up to timeouts.publish_delay (a
 * published message): other publishes in that time leave in the same write.
 * Anything else queued for c meanwhile flushes it all in the loop turn. */
void server_want_flush_later(struct server *s, struct conn *c);

/* The message limits (config) for a new connection's parser; valid until
 * server_limits_free. NULL when out of memory. */
struct ws_limits;
const struct ws_limits *server_limits(struct server *s);
void server_limits_free(struct server *s);
/* The loop's time in milliseconds since the server started, wrapping after
 * 49 days, for conn stamps; server_since() is how long ago a stamp was (the
 * wrap does not matter to that while it is under 49 days). */
static inline uint32_t server_ms(const struct server *s)
{
    return (uint32_t)(uint64_t)((ev_now(s->loop) - s->epoch) * 1000.0 + 0.5);
}
static inline double server_since(const struct server *s, uint32_t stamp)
{
    return (uint32_t)(server_ms(s) - stamp) / 1000.0;
}

/* A new connection: CONN_HANDSHAKE, its timeout running from now. */
void server_conn_add(struct server *s, struct conn *c);
/* c enters state (CONN_OPEN, CONN_CLOSING or CONN_LINGER): c->stamp is now,
 * and the state's timeout runs from now. */
void server_conn_enter(struct server *s, struct conn *c, int state);
/* c is dead: out of its list, on the list to free at the next safe point. */
void server_conn_dead(struct server *s, struct conn *c);

#endif
