/* resolve: host names to addresses without blocking the loop.
 *
 * getaddrinfo(3) runs on a small pool of threads (two), started lazily in
 * the process that first resolves a name (so a worker starts its own after
 * the fork) and joined by resolve_stop; the answers come back to the loop
 * through an ev_async. Why getaddrinfo rather than c-ares: it is the
 * system's own resolver, so /etc/hosts, nsswitch (and whatever the
 * operator configured there) behave exactly as for every other program,
 * and it adds no dependency; a backend name is resolved once per connect
 * (pooled connections skip it), so a thread hop costs nothing that shows.
 * Numeric IPv4/IPv6 addresses are answered without a thread, still later
 * from the loop.
 *
 * The answer is one address: the first IPv4 one when the name has any
 * (as nginx's resolver does by default: "localhost" is 127.0.0.1 even
 * where ::1 sorts first), otherwise the first IPv6 one.
 *
 * Everything here belongs to the loop's thread: call it from there only. */
#ifndef MOONPORT_RESOLVE_H
#define MOONPORT_RESOLVE_H

#include <ev.h>
#include <sys/socket.h>

struct resolve_req;

/* err is 0, or a short message ("no such host", "timeout" ...) that stays
 * valid during the call; sa (salen bytes, the port set) is valid during
 * the call only. */
typedef void (*resolve_cb)(void *data, const char *err, const struct sockaddr *sa, socklen_t salen);

/* Starts resolving host (a name or a numeric IPv4/IPv6 address) for port;
 * cb is always called later from the loop (never inside resolve_start),
 * exactly once unless cancelled. Returns NULL only when out of memory. */
struct resolve_req *resolve_start(struct ev_loop *loop, const char *host, int port,
                                  resolve_cb cb, void *data);

/* cb is never called after this; r is freed (now, or when a thread that
 * is resolving it finishes). */
void resolve_cancel(struct resolve_req *r);

/* At exit: drops every request (no callback), stops the threads and
 * frees everything. A thread still waiting on a slow DNS server is given
 * a second, then left to the process's exit. Safe to call when nothing
 * was ever resolved; resolving may start again afterwards. */
void resolve_stop(void);

#endif
