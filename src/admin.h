/* admin: the operator's HTTP listener (`--admin ADDR`), apart from the
 * public port. GET /metrics answers the Prometheus exposition (metrics.h),
 * GET /healthz 200 while the server serves and 503 once it shuts down;
 * any other path 404, another method 405, a malformed request 400 (the
 * request head is parsed by handshake.c, the one HTTP parser moonport has).
 * Each request gets one answer and the connection closes. With --workers,
 * worker 1 serves it and sums every worker's counts. */
#ifndef MOONPORT_ADMIN_H
#define MOONPORT_ADMIN_H

#include <stddef.h>

struct server;
struct admin;

/* A listening socket on addr ("host:port", "[v6]:port"; port 0 picks one),
 * or -1 with err set. *bound gets "host:port" as bound. */
int admin_listen(const char *addr, char *bound, size_t boundlen, char *err, size_t errlen);

/* Serve the admin requests that come to fd in s's loop. NULL when out of
 * memory (fd is then closed). */
struct admin *admin_start(struct server *s, int fd);
void admin_free(struct admin *a);

#endif
