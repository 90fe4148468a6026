/* conn: the one connection state machine. A conn owns its socket (and its
 * TLS session, on a wss:// server), its libev watcher, its output queue, its pending message, its
 * frame parser state, the bytes of a frame that has not all arrived, and
 * its handshake while that lasts. Everything that ends a connection goes
 * through conn_fail (the peer broke a rule), conn_close (the server wants to
 * close) or the peer's own close frame. A conn is never freed inside its own
 * callbacks: it is marked dead and the server frees it at a safe point
 * (server_sweep). */
#ifndef MOONPORT_CONN_H
#define MOONPORT_CONN_H

#include <ev.h>
#include <netinet/in.h>
#include <stdint.h>

#include "buf.h"
#include "router.h"
#include "ws_frame.h"

struct server;
struct app;
struct hs_request;
struct snapshot;
struct out_refs;
struct ssl_st;

enum conn_state {
    CONN_HANDSHAKE, /* reading the request head */
    CONN_OPEN,      /* 101 sent: messages flow both ways */
    CONN_CLOSING,   /* our close frame is queued: waiting for the peer's */
    CONN_LINGER,    /* finished: flush, half-close, wait briefly for EOF */
    CONN_DEAD,      /* closed; freed at the next sweep */
};

/* What on_connect decided. Filled by ws:accept / ws:reject. */
struct conn_reply {
    int status;        /* 0 = accept (101); else the HTTP status */
    char *protocol;    /* chosen subprotocol or NULL */
    struct buf headers; /* extra header lines, "Name: value\r\n" each */
    struct buf body;
};

/* 192 bytes on x86-64, from slabs (slab.h) rather than malloc: every byte
 * here is paid by every idle connection, so state that only some
 * connections need lives elsewhere until they need it (the handshake's in
 * hs, a split frame header in partial, queued output in out and refs, a
 * close reason in the request block: snap_reason), and what every
 * connection of the process shares is not repeated here (the server:
 * conn_srv). */
struct conn {
    struct conn *prev, *next; /* the server's list for its state (server.h);
                                 once dead, next links srv->dead_list */
    /* The socket (io.fd): EV_READ unless paused, EV_WRITE while output
     * waits. io.data, libev's word for its user, holds the TLS session:
     * conn_tls(). */
    ev_io io;
    uint64_t id;
    /* For the access log's WSDISCONNECT: text and binary messages, and
     * their payload bytes as the app sees them (before compression). */
    uint64_t bytes_in, bytes_out;
    uint32_t msgs_in, msgs_out;

    /* While the handshake lasts, its parser (hs); once open, the start of
     * a frame header or control frame that has not all arrived (partial):
     * the parser leaves those bytes unconsumed, and the next read presents
     * them again. partial is malloc'd only while one is pending, so an idle
     * connection keeps no input bytes. The two never live at once: partial
     * when partial_len > 0, else hs (NULL once the handshake is over). */
    union {
        struct hs_request *hs;
        uint8_t *partial;
    };
    struct app *app;          /* the app of the route, NULL before routing */
    /* The client's address and when it connected, from accept; the whole
     * request once the handshake is done. Never NULL. When the connection
     * ends, a ws object that outlives it may take it (lconn_detach). */
    struct snapshot *req;

    struct buf msg;     /* a message arriving in pieces */
    struct buf out;     /* bytes queued for the socket */
    struct out_refs *refs; /* payloads queued by reference, in between; NULL if none */
    struct ws_parser parser;

    /* The small fields last, together, so the struct has no padding holes:
     * every byte here is paid once per connection. */
    /* Open: when the client last sent anything (for ping and idle). Other
     * states: when the state began; its timeout runs from then. In
     * server_ms() (milliseconds, 4 bytes rather than a double's 8). */
    uint32_t stamp;
    int lua_ref; /* registry ref of the ws userdata, or LUA_NOREF */
    uint16_t close_code; /* for on_close: the peer's code, ours, or 1006 */
    uint8_t state; /* enum conn_state */
    uint8_t close_reason_len : 7; /* of the reason kept in req (snap_reason): <= 123 */
    uint8_t pinged : 1;        /* a keepalive ping went out since stamp */
    uint8_t partial_len; /* at most WS_FRAME_TAIL_MAX */
    uint8_t io_events : 2;      /* what io is set to: EV_READ | EV_WRITE */
    uint8_t deflate : 1;        /* permessage-deflate was agreed */
    uint8_t deflate_window8 : 3; /* ...with server_max_window_bits 8 + this
                                    (8..15): conn_deflate_window() */
    uint8_t msg_compressed : 1; /* the message arriving has RSV1: inflate it */
    uint8_t per_ip : 1; /* counted in srv->per_ip (limits.max_connections_per_ip) */
    uint8_t in_flush_list : 1;
    uint8_t read_paused : 1;   /* output over send_buffer: not reading, and
                                  on_drain is owed once it drains */
    uint8_t held : 1;          /* not reading, held by throttle.h (a rate or a
                                  memory budget): next to read_paused, so that
                                  one test reads both */
    uint8_t wait_paused : 1;   /* not reading: a handler of it waits (lwait.h)
                                  and its queued events reached their bound,
                                  or on_connect waits; next to the other two */
    uint8_t accepted : 1;      /* on_connect accepted: on_close is owed */
    uint8_t on_close_done : 1;
    uint8_t in_connect : 1;    /* inside on_connect */
    uint8_t shut_wr : 1;       /* our side is half-closed */
    /* TLS: OpenSSL can need the other direction's readiness to go on. */
    uint8_t tls_read_wants_write : 1; /* the last read needs the socket writable */
    uint8_t tls_write_wants_read : 1; /* the last write needs the socket readable */
    uint8_t in_later_list : 1; /* published output waits: server_want_flush_later */
    uint8_t closed_by : 2;     /* who began the closing handshake: metrics.h's MB_ */
    /* throttle.h: a slot in its side table, output charged there. */
    uint8_t throttled : 1;
    uint8_t out_charged : 1;
    /* Behind proxies (proxy.h): a PROXY header must come first, and until
     * it has, io runs on_proxy_io, hs is NULL and partial holds the
     * header's first bytes if it came split. */
    uint8_t proxy_wait : 1;
};

/* The server of every connection in this process: there is one per process
 * (each worker is a process of its own), so a conn does not spend 8 bytes
 * saying which. Set by the first conn_new. */
extern struct server *conn_server;
static inline struct server *conn_srv(const struct conn *c)
{
    (void)c;
    return conn_server;
}

/* The server_max_window_bits agreed for permessage-deflate (8..15). */
static inline int conn_deflate_window(const struct conn *c) { return 8 + c->deflate_window8; }

/* The TLS session (tls.h) on a wss:// server; NULL: plain. */
static inline struct ssl_st *conn_tls(const struct conn *c) { return (struct ssl_st *)c->io.data; }

/* What on_connect has decided so far, while it runs on c (NULL otherwise).
 * One on_connect runs at a time, so the server holds it, not the conn. */
struct conn_reply *conn_reply(const struct conn *c);

/* Take ownership of an accepted socket; peer is the address accept gave. */
struct conn *conn_new(struct server *srv, int fd, const struct sockaddr *peer);

/* Queue a frame (fin + opcode, payload). Returns 0, or -1 if the
 * connection cannot take it (not open, or over max_send_buffer: then the
 * connection is dropped, and if Lua code is running its on_close waits
 * until that returns: lbridge_close). */
int conn_send_frame(struct conn *c, uint8_t opcode, const void *data, size_t len);

/* conn_send_frame for a caller that must not run Lua code or touch the
 * lua_State (ws:send's fast path, called through LuaJIT's FFI): a data
 * frame whose queueing cannot end the connection is queued as
 * conn_send_frame would (returns 0); -1 if the connection cannot take it
 * (not open); 1, with nothing done, when conn_send_frame must do it (the
 * queue would come within a frame header of max_send_buffer, out of memory,
 * permessage-deflate, a payload queued by reference). */
int conn_send_frame_quick(struct conn *c, uint8_t opcode, const void *data, size_t len);

/* Payloads at least this long are queued by reference rather than copied. */
#define CONN_REF_MIN 4096

/* Queue a frame whose payload is not copied: it must stay valid and
 * unchanged until the server lets go of ref (lbridge_unref: a Lua registry
 * ref that keeps the string alive), which it always does, also when it
 * returns -1. Otherwise as conn_send_frame. */
int conn_send_frame_ref(struct conn *c, uint8_t opcode, const void *data, size_t len, int ref);

/* One frame, header and payload, made once and queued to many connections
 * (a publish, pubsub.h): each queue that holds it counts in refs. */
struct conn_frame {
    size_t refs;
    size_t len;
    uint8_t bytes[];
};

/* A frame with first_byte (FIN, RSV1 for a compressed payload, opcode) and
 * the payload copied in; refs is 1, the caller's. NULL when out of memory. */
struct conn_frame *conn_frame_new(uint8_t first_byte, const void *payload, size_t len);
/* Let go of one reference; the last frees it. NULL is a no-op. */
void conn_frame_release(struct conn_frame *f);

/* Queue f as a text or binary message (opcode) that was app_len bytes for
 * the app: by reference (holding one while it waits) from CONN_REF_MIN
 * bytes, copied below that, as ws:send does. Returns as conn_send_frame:
 * 0, or -1 if the connection cannot take it. */
int conn_send_shared(struct conn *c, struct conn_frame *f, uint8_t opcode, size_t app_len);

/* Bytes queued and not yet written. */
size_t conn_out_pending(const struct conn *c);

/* The server closes: queue a close frame with code and reason, wait up to
 * timeouts.close for the peer's close. No-op unless open. */
void conn_close(struct conn *c, uint16_t code, const char *reason);

/* Write queued output now; called by the server before the loop blocks,
 * and when the socket is writable. A queue that was over limits.send_buffer
 * and is now at half of it or below resumes reading and runs the app's
 * on_drain (lbridge_drain): c may be closing or dead afterwards. */
void conn_flush(struct conn *c);

/* Close the socket at once, without a closing handshake (on_close gets
 * code 1006 if it is owed). */
void conn_abort(struct conn *c, const char *why);

/* The timeout of c's state has passed (handshake, close or linger): the
 * server's timers call this. */
void conn_timeout(struct conn *c);

/* The keepalive sweep: ping c after timeouts.ping of silence, close it
 * after timeouts.idle. */
void conn_keepalive(struct conn *c);

/* Stop (hold 1) or resume (0) reading c for throttle.h, apart from the
 * send buffer's pause. */
void conn_hold(struct conn *c, int hold);

/* Stop (1) or resume (0) reading c while a handler of it waits (lbridge.c:
 * its later events queue, up to a bound). */
void conn_wait_pause(struct conn *c, int pause);

/* An on_connect that waits (lbridge.c): what the handshake needs to finish
 * once it returns, kept off the C stack. conn_connect_enter / _leave make
 * its reply the one ws:accept and ws:reject fill while it runs again;
 * conn_connect_done answers (101, the app's rejection, or 500 when rc < 0)
 * unless c has ended meanwhile (c NULL: it is gone), and frees cc. */
struct conn_connect;
void conn_connect_enter(struct conn *c, struct conn_connect *cc);
void conn_connect_leave(struct server *srv, struct conn *c); /* c NULL: gone meanwhile */
void conn_connect_done(struct conn *c, struct conn_connect *cc, int rc);

/* Free a dead conn. Only the server's sweep calls this. */
void conn_free(struct conn *c);

/* "host:port" of the client, for log lines; valid until the next call. */
const char *conn_peer(const struct conn *c);

/* The request path, for log lines: "-" before the handshake is done. */
const char *conn_path(const struct conn *c);

/* 1 while the app may send on it: open, or inside on_connect. */
int conn_can_send(const struct conn *c);

#endif
