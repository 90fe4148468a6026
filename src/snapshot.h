/* snapshot: what a connection keeps of its request, in one block (from
 * slabs of its size class, which this module keeps: one loop, no lock). At
 * accept it holds the client's address and the time; when the handshake is
 * done it grows to hold the server's address, the path and the rest of the
 * target, the route's captures and every header, all as NUL-terminated
 * strings. Common header names and values are stored as a one-byte code
 * (as HPACK's static table does), since a handshake's headers are mostly
 * the same few names and values ("Upgrade: websocket"); Sec-WebSocket-Key,
 * used up by the handshake, is not kept. Logs read the peer and the path from it; lrequest builds the req
 * table from it only when an app asks. Pure: no sockets, no Lua. */
#ifndef MOONPORT_SNAPSHOT_H
#define MOONPORT_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct hs_request;
struct route_match;

struct snapshot {
    double started; /* when the connection was accepted */
    uint16_t nheaders;
    uint16_t client_port, server_port;
    uint8_t nparams : 4; /* at most ROUTE_MAX_PARAMS (8) */
    uint8_t has_reason : 1; /* room for a close reason follows the strings */
    /* req.scheme as a trusted proxy's X-Forwarded-Proto said (proxy.h):
     * SNAP_SCHEME_WS or _WSS; 0: the server's own. */
    uint8_t scheme_fwd : 2;
    /* AF_INET, AF_INET6, or 0: not an IP socket. 4 bits each, so that the
     * strings start 16 bytes in: every byte here is paid per connection. */
    uint8_t client_family : 4, server_family : 4;
    /* The client's address bytes (4 or 16, none for family 0), the server's,
     * then the strings: path, rest of the target ("?query" or ""), nparams
     * (name, value) pairs, nheaders (name, value) pairs. */
    char data[];
};

enum { SNAP_SCHEME_OWN, SNAP_SCHEME_WS, SNAP_SCHEME_WSS };

/* At accept. NULL when out of memory. */
struct snapshot *snap_new(const struct sockaddr *client, double started);

/* When the handshake is done: add the server's address, the target, the
 * captures of the route and the request's headers. Returns 0, or -1 when
 * out of memory (then *sp is untouched). */
int snap_complete(struct snapshot **sp, const struct sockaddr *server, const char *target,
                  const struct route_match *m, const struct hs_request *hs);

void snap_free(struct snapshot *s);

/* A close reason is kept in the same block, after the strings: most
 * connections never have one, and a connection pays nothing for it until
 * then. snap_reason_room makes room for SNAP_REASON_MAX bytes the first
 * time (the block moves) and returns it, or NULL when out of memory (then
 * *sp is untouched); snap_reason is that room, or NULL. The reason's
 * length is the caller's to keep. */
#define SNAP_REASON_MAX 123
char *snap_reason_room(struct snapshot **sp);
const char *snap_reason(const struct snapshot *s);

/* The request path without the query ("" before the handshake is done). */
const char *snap_path(const struct snapshot *s);

/* An endpoint as text ("unix" for a non-IP socket) and its port. */
#define SNAP_HOST_MAX 46 /* INET6_ADDRSTRLEN */
void snap_client(const struct snapshot *s, char host[SNAP_HOST_MAX], int *port);
void snap_server(const struct snapshot *s, char host[SNAP_HOST_MAX], int *port);

/* "host:port" of the client, for log lines; valid until the next call. */
const char *snap_peer(const struct snapshot *s);

/* Reading the strings in order: start at the path, then snap_next() gives
 * each string and steps past it. */
static inline const char *snap_strings(const struct snapshot *s)
{
    return s->data + (s->client_family == AF_INET6 ? 16 : s->client_family ? 4 : 0) +
           (s->server_family == AF_INET6 ? 16 : s->server_family ? 4 : 0);
}
const char *snap_next(const char **p);

/* A header name as stored (a code or the name itself) as the name. */
const char *snap_header_name(const char *stored);
/* A header value as stored (a code or the value itself) as the value. */
const char *snap_header_value(const char *stored);

#endif
