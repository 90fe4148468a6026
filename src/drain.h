/* drain: how a server ends without dropping its clients all at once, and
 * how long a connection may stay (timeouts.lifetime).
 *
 * SIGTERM and SIGINT drain with 1001 ("going away"), SIGUSR2 with 1012
 * ("service restart": the service comes back, reconnect). A drain makes
 * /healthz answer 503, takes in the connections the listening socket has
 * already queued (closing it would reset them) and closes it, then closes
 * the open connections a few at a time, at an even pace with jitter, over
 * timeouts.drain: their clients reconnect spread over that window, not in
 * one instant. Handshakes under way finish and are closed in their turn.
 * The loop ends, and the process exits 0, once every connection has ended.
 * A drain only begins closing handshakes (conn_close): the closing list
 * bounds each by timeouts.close, and shutdown_w bounds the whole; a second
 * signal drops every connection at once.
 *
 * The pace is at least DRAIN_MIN_RATE connections a second (per worker):
 * a few connections make no herd, and must not hold a stop for the whole
 * window. */
#ifndef MOONPORT_DRAIN_H
#define MOONPORT_DRAIN_H

struct server;
struct conn;

#define DRAIN_MIN_RATE 10.0

/* Begin the drain for signal signum (SIGTERM, SIGINT or SIGUSR2). */
void drain_begin(struct server *s, int signum);

/* timeouts.lifetime: 1 when c has been open longer than its lifetime
 * (timeouts.lifetime plus a jitter of up to 10% drawn from its id), and
 * then c is closing with 1001; else 0. The keepalive sweep asks. */
int drain_lifetime_check(struct server *s, struct conn *c);

#endif
