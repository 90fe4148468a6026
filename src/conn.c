/* conn: one WebSocket connection from accept to close. Input is read into
 * the server's shared buffer and handed, in the same callback, to the
 * handshake parser or the frame codec; the few bytes of a frame the codec
 * could not finish are kept until the next read and go first. Output is
 * queued and leaves in one write per loop iteration (server.c flushes). On a
 * wss:// server the same bytes go through OpenSSL (tls.h) instead of recv
 * and send; a plain connection pays one test of conn_tls(c) for that. Lua
 * runs only through lbridge, and after every call into Lua the state is
 * checked again: a handler may have closed this connection, or another.
 * Behind a trusted proxy (proxy.h) the client's address is replaced, once,
 * before the app sees the request: from a PROXY header, read through its
 * own io callback before anything else, or from X-Forwarded-For. */
#include "conn.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "compress.h"
#include "handshake.h"
#include "ipcount.h"
#include "lbridge.h"
#include "log.h"
#include "metrics.h"
#include "origin.h"
#include "proxy.h"
#include "pubsub.h"
#include "server.h"
#include "slab.h"
#include "snapshot.h"
#include "throttle.h"
#include "tls.h"
#include "workers.h"
#include "ws_utf8.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* Payloads queued by reference: the app's Lua string (conn_send_frame_ref)
 * or a whole frame shared by many connections (conn_send_shared) goes to
 * the socket as it is, not through a copy in c->out. Each one sits at a
 * place in the byte queue: `at` bytes of c->out go out before it. */
struct out_ref {
    size_t at;
    const uint8_t *p;
    size_t len;
    int ref; /* keeps the string alive until it is written... */
    struct conn_frame *frame; /* ...or, when not NULL, this does */
};

struct out_refs {
    unsigned n, cap;
    size_t bytes; /* of every ref's payload still to write */
    struct out_ref r[];
};

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void on_proxy_io(struct ev_loop *loop, ev_io *w, int revents);
static void enter_linger(struct conn *c);

const char *conn_peer(const struct conn *c)
{
    return c->req ? snap_peer(c->req) : "-";
}

const char *conn_path(const struct conn *c)
{
    const char *path = c->req ? snap_path(c->req) : "";
    if (*path)
        return path;
    /* A handshake that failed or timed out after its request line arrived:
     * the path from that line, without its query, cut for the log. */
    const char *target = !c->partial_len && c->hs ? hs_target_read(c->hs) : NULL;
    if (!target || !*target)
        return "-";
    static char cut[256];
    size_t n = strcspn(target, "?#");
    if (n >= sizeof cut)
        n = sizeof cut - 1;
    memcpy(cut, target, n);
    cut[n] = '\0';
    return cut;
}

/* An IPv4 or IPv6 socket address, without the room sockaddr_storage takes. */
union conn_addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* The server's end of the connection: the listening address, unless that
 * is a wildcard (0.0.0.0 or ::), which only the socket can resolve. */
static void local_addr(const struct conn *c, union conn_addr *a)
{
    socklen_t len = sizeof *a;
    if (conn_srv(c)->local_known) {
        memcpy(a, &conn_srv(c)->local, sizeof *a);
        return;
    }
    memset(a, 0, sizeof *a);
    if (getsockname(c->io.fd, &a->sa, &len) != 0)
        a->sa.sa_family = AF_UNSPEC;
}

/* A socket address is in proxy.trusted. */
static int peer_trusted(const struct config *cfg, const struct sockaddr *peer)
{
    struct proxy_addr a;
    proxy_addr_from_sockaddr(peer, &a);
    return proxy_trusted(cfg->trusted, cfg->ntrusted, &a);
}

/* The client's address as the request snapshot holds it. */
static void client_addr(const struct conn *c, struct proxy_addr *a)
{
    const struct snapshot *s = c->req;
    proxy_addr_set(a, s->client_family, s->data, s->client_port);
}

/* The client is someone else than the socket's peer (a PROXY header or a
 * trusted X-Forwarded-For said so): a fresh accept-time snapshot for a.
 * Before the handshake is complete only. Returns 0, or -1 when out of
 * memory (the old one stays). */
static int set_client(struct conn *c, const struct proxy_addr *a)
{
    struct sockaddr_in6 st;
    struct snapshot *s = snap_new(proxy_addr_to_sockaddr(a, &st), c->req->started);
    if (!s)
        return -1;
    s->scheme_fwd = c->req->scheme_fwd;
    if (log_threshold >= LOG_DEBUG) {
        char via[SNAP_HOST_MAX + 8];
        snprintf(via, sizeof via, "%s", snap_peer(c->req));
        log_debug("conn %llu: client %s, through the proxy %s", (unsigned long long)c->id,
                  snap_peer(s), via);
    }
    snap_free(c->req);
    c->req = s;
    return 0;
}

/* Every struct conn, from slabs: 192 bytes each rather than malloc's
 * 208-byte chunk, and apart from the short-lived blocks of the heap. */
static struct slab_cache conns = SLAB_CACHE_INIT(sizeof(struct conn));
struct server *conn_server;
#if defined(__x86_64__)
/* Every byte of struct conn is paid by every idle connection (conn.h). */
_Static_assert(sizeof(struct conn) <= 192, "struct conn grew past 192 bytes");
#endif

struct conn *conn_new(struct server *srv, int fd, const struct sockaddr *peer)
{
    const struct config *cfg = srv->cfg;
    struct conn *c = slab_alloc(&conns);
    if (!c)
        return NULL;
    const struct ws_limits *limits = server_limits(srv);
    /* With proxy.protocol, a trusted peer starts with a PROXY header: the
     * request's parser comes after it. */
    int proxy_wait = cfg->proxy_protocol && peer_trusted(cfg, peer);
    c->req = snap_new(peer, ev_now(srv->loop));
    c->hs = proxy_wait ? NULL : hs_new(cfg->max_head, cfg->max_headers);
    if ((!c->hs && !proxy_wait) || !c->req || !limits) {
        hs_free(c->hs);
        snap_free(c->req);
        slab_free(&conns, c);
        return NULL;
    }
    struct ssl_st *tls = NULL;
    if (srv->tls && !(tls = tls_new(srv->tls, fd))) {
        hs_free(c->hs);
        snap_free(c->req);
        slab_free(&conns, c);
        return NULL;
    }
    assert(!conn_server || conn_server == srv); /* one server per process */
    conn_server = srv;
    c->lua_ref = LUA_NOREF;
    c->id = srv->shared ? workers_next_id(srv->shared) : ++srv->next_id;
    ws_parser_init_shared(&c->parser, limits);

    c->proxy_wait = (uint8_t)proxy_wait;
    ev_io_init(&c->io, proxy_wait ? on_proxy_io : on_io, fd, EV_READ);
    c->io.data = tls; /* conn_tls() */
    c->io_events = EV_READ;
    ev_io_start(srv->loop, &c->io);
    server_conn_add(srv, c);
    return c;
}

size_t conn_out_pending(const struct conn *c)
{
    return buf_pending(&c->out) + (c->refs ? c->refs->bytes : 0);
}

struct conn_frame *conn_frame_new(uint8_t first_byte, const void *payload, size_t len)
{
    uint8_t hdr[10];
    size_t hl = ws_frame_header(hdr, first_byte, len);
    struct conn_frame *f = malloc(sizeof *f + hl + len);
    if (!f)
        return NULL;
    f->refs = 1;
    f->len = hl + len;
    memcpy(f->bytes, hdr, hl);
    if (len)
        memcpy(f->bytes + hl, payload, len);
    return f;
}

void conn_frame_release(struct conn_frame *f)
{
    if (f && --f->refs == 0)
        free(f);
}

/* A payload queued by reference has been written, or never will be. */
static void ref_release(struct conn *c, const struct out_ref *r)
{
    if (r->frame)
        conn_frame_release(r->frame);
    else
        lbridge_unref(conn_srv(c)->lb, r->ref);
}

/* Output that will never be written: let go of the strings it holds. */
static void refs_drop(struct conn *c)
{
    if (!c->refs)
        return;
    for (unsigned i = 0; i < c->refs->n; i++)
        ref_release(c, &c->refs->r[i]);
    free(c->refs);
    c->refs = NULL;
}

/* The memory a message arriving in pieces holds, as limits.inbound_memory
 * counts it: its whole block. */
static size_t msg_memory(const struct conn *c)
{
    return c->msg.blk ? sizeof *c->msg.blk + c->msg.blk->cap : 0;
}

static void msg_reset(struct conn *c)
{
    size_t had = msg_memory(c);
    buf_reset(&c->msg);
    if (had)
        throttle_in_charge(c, had, 0);
}

static void fail_message(struct conn *c, uint16_t code, const char *why);

/* Add a fragment to the message arriving in pieces, within
 * limits.inbound_memory (which may hold c's reading, or fail c). Returns
 * 0, or -1 when c was failed. */
static int msg_append(struct conn *c, const uint8_t *p, size_t n)
{
    size_t had = msg_memory(c);
    if (buf_append(&c->msg, p, n)) {
        fail_message(c, WS_CLOSE_TOO_BIG, "out of memory for a message");
        return -1;
    }
    size_t now = msg_memory(c);
    if (now == had)
        return 0;
    const char *why = NULL;
    int code = throttle_in_check(c, had, now, &why);
    throttle_in_charge(c, had, now);
    if (code) {
        fail_message(c, (uint16_t)code, why);
        return -1;
    }
    return 0;
}

void conn_free(struct conn *c)
{
    if (!c)
        return;
    if (c->partial_len)
        free(c->partial);
    else
        hs_free(c->hs);
    msg_reset(c);
    if (c->held | c->throttled)
        throttle_conn_free(c);
    buf_reset(&c->out);
    snap_free(c->req);
    tls_free(conn_tls(c));
    slab_free(&conns, c);
}

struct conn_reply *conn_reply(const struct conn *c)
{
    return c->in_connect ? conn_srv(c)->connect_reply : NULL;
}

int conn_can_send(const struct conn *c)
{
    return c->state == CONN_OPEN || (c->state == CONN_HANDSHAKE && c->in_connect);
}

/* The close reason kept for on_close (close_reason_len bytes), or NULL. */
static const char *conn_close_reason(const struct conn *c)
{
    return c->close_reason_len && c->req ? snap_reason(c->req) : NULL;
}

/* An access log event about c (log.h). */
static struct access_event access_event(const struct conn *c, const char *event,
                                        const char *reason)
{
    return (struct access_event){.event = event,
                                 .client = conn_peer(c),
                                 .path = conn_path(c),
                                 .route = c->app ? c->app->metrics->route : NULL,
                                 .id = (unsigned long long)c->id,
                                 .reason = reason};
}

static void log_event(const struct conn *c, const char *event, const char *reason)
{
    struct access_event e = access_event(c, event, reason);
    log_access_event(&e);
}

/* Tell the app, once, that an accepted connection ended, and log it. */
static void finish(struct conn *c)
{
    if (c->per_ip) { /* its address may take another connection now */
        struct proxy_addr a;
        client_addr(c, &a);
        ipcount_put(conn_srv(c)->per_ip, &a);
        c->per_ip = 0;
    }
    pubsub_conn_end(c); /* before on_close: its publishes do not reach c */
    if (!c->accepted || c->on_close_done)
        return;
    c->on_close_done = 1;
    lbridge_settle(conn_srv(c)->lb, c); /* a handler of its batch may be ending it */
    uint16_t code = c->close_code ? c->close_code : WS_CLOSE_ABNORMAL;
    METRIC_SUB(c->app->metrics->open, 1);
    if (c->closed_by == MB_NONE) /* counted when it began, if it did */
        metrics_close(conn_srv(c)->metrics, WS_CLOSE_ABNORMAL, MB_NONE);
    struct access_event e = access_event(c, "WSDISCONNECT", NULL);
    e.code = code;
    e.duration = ev_now(conn_srv(c)->loop) - c->req->started;
    e.msgs_in = c->msgs_in;
    e.msgs_out = c->msgs_out;
    e.bytes_in = c->bytes_in;
    e.bytes_out = c->bytes_out;
    e.close_reason = conn_close_reason(c);
    e.close_reason_len = c->close_reason_len;
    log_access_event(&e);
    lbridge_close(conn_srv(c)->lb, c, code, conn_close_reason(c), c->close_reason_len);
}

void conn_abort(struct conn *c, const char *why)
{
    if (c->state == CONN_DEAD)
        return;
    if (why)
        log_debug("conn %llu: closing socket: %s", (unsigned long long)c->id, why);
    finish(c);
    if (c->state == CONN_DEAD) /* on_close cannot kill it, but be sure */
        return;
    ev_io_stop(conn_srv(c)->loop, &c->io);
    close(c->io.fd);
    ev_io_set(&c->io, -1, 0);
    buf_reset(&c->out);
    refs_drop(c);
    server_conn_dead(conn_srv(c), c);
    lbridge_release(conn_srv(c)->lb, c);
}

/* Forget the bytes kept from an incomplete frame: they have been copied
 * back into the read buffer, or will never be parsed. */
static void partial_drop(struct conn *c)
{
    if (!c->partial_len) /* then the union holds hs, or nothing */
        return;
    free(c->partial);
    c->partial = NULL;
    c->partial_len = 0;
}

/* The socket events a TLS connection waits for: OpenSSL may need the
 * socket writable to go on reading, or readable to go on writing, and the
 * close_notify of the linger state is output too. */
static int tls_events(const struct conn *c)
{
    int events = 0;
    if (!(c->read_paused | c->held | c->wait_paused))
        events |= c->tls_read_wants_write ? EV_WRITE : EV_READ;
    if (conn_out_pending(c) || (c->state == CONN_LINGER && !c->shut_wr))
        events |= c->tls_write_wants_read ? EV_READ : EV_WRITE;
    return events;
}

/* Set the socket watcher from what the connection wants now. */
static void update_io(struct conn *c)
{
    if (c->state == CONN_DEAD)
        return;
    int events = conn_tls(c) ? tls_events(c)
                        : (c->read_paused | c->held | c->wait_paused ? 0 : EV_READ) |
                              (conn_out_pending(c) ? EV_WRITE : 0);
    if (events == c->io_events)
        return;
    struct ev_loop *loop = conn_srv(c)->loop;
    ev_io_stop(loop, &c->io);
    ev_io_set(&c->io, c->io.fd, events);
    if (events)
        ev_io_start(loop, &c->io);
    c->io_events = (uint8_t)events;
}

void conn_hold(struct conn *c, int hold)
{
    c->held = hold != 0;
    update_io(c);
    /* As when the send buffer's pause ends (conn_flush): input OpenSSL
     * holds will not make the socket readable. */
    if (!hold && conn_tls(c) && c->state != CONN_DEAD && tls_pending(conn_tls(c)))
        ev_feed_event(conn_srv(c)->loop, &c->io, EV_READ);
}

static int queued(struct conn *c);

/* Append one unmasked frame to the output queue, whatever the state. */
/* Copy one unmasked frame into the output queue; 0, or -1 if out of memory
 * (nothing is queued then). */
static inline int append_frame(struct conn *c, uint8_t first_byte, const void *data, size_t len)
{
    size_t hl = ws_frame_header_size(len); /* written in place */
    uint8_t *w = buf_reserve(&c->out, hl + len);
    if (!w)
        return -1;
    ws_frame_header(w, first_byte, len);
    if (len)
        memcpy(w + hl, data, len);
    buf_commit(&c->out, hl + len);
    return 0;
}

static int queue_frame(struct conn *c, uint8_t first_byte, const void *data, size_t len)
{
    if (append_frame(c, first_byte, data, len)) {
        conn_abort(c, "out of memory for the output queue");
        return -1;
    }
    return queued(c);
}

/* Room for one more payload by reference: c->refs, or NULL when out of
 * memory. */
static struct out_refs *refs_room(struct conn *c)
{
    struct out_refs *rs = c->refs;
    if (!rs || rs->n == rs->cap) {
        unsigned cap = rs ? rs->cap * 2 : 4;
        rs = realloc(rs, sizeof *rs + cap * sizeof rs->r[0]);
        if (!rs)
            return NULL;
        if (!c->refs)
            rs->n = 0, rs->bytes = 0;
        rs->cap = cap;
        c->refs = rs;
    }
    return rs;
}

/* Append a frame whose payload stays where it is, held by ref (taken over
 * whatever happens). */
static int queue_frame_ref(struct conn *c, uint8_t first_byte, const void *data, size_t len,
                           int ref)
{
    uint8_t hdr[10];
    size_t hl = ws_frame_header(hdr, first_byte, len);
    struct out_refs *rs = refs_room(c);
    if (!rs) {
        lbridge_unref(conn_srv(c)->lb, ref);
        conn_abort(c, "out of memory for the output queue");
        return -1;
    }
    if (buf_append(&c->out, hdr, hl)) {
        lbridge_unref(conn_srv(c)->lb, ref);
        conn_abort(c, "out of memory for the output queue");
        return -1;
    }
    rs->r[rs->n++] = (struct out_ref){buf_pending(&c->out), data, len, ref, NULL};
    rs->bytes += len;
    return queued(c);
}

/* After a frame was queued: enforce the send buffer limits, ask for a flush
 * (later: within timeouts.publish_delay, for a published frame). */
static int queued_then(struct conn *c, int later)
{
    const struct config *cfg = conn_srv(c)->cfg;
    size_t pending = conn_out_pending(c);
    if (pending > cfg->max_send_buffer) {
        log_warn("conn %llu %s: %zu bytes waiting to be sent, over limits.max_send_buffer: "
                 "dropping the connection",
                 (unsigned long long)c->id, conn_path(c), pending);
        METRIC_ADD(conn_srv(c)->metrics->send_buffer_drops, 1);
        conn_abort(c, "send buffer over limit");
        return -1;
    }
    if (pending > cfg->send_buffer && !c->read_paused) {
        /* The peer is not reading: stop reading it, so it cannot make us
         * produce more for it, until the queue drains. */
        c->read_paused = 1;
        update_io(c);
    }
    if (later)
        server_want_flush_later(conn_srv(c), c);
    else
        server_want_flush(conn_srv(c), c);
    return 0;
}

static int queued(struct conn *c)
{
    return queued_then(c, 0);
}

/* With permessage-deflate agreed, a data message goes compressed (RSV1 on
 * its frame) when that makes it smaller. Returns 1 and queues it, or 0:
 * send it as it is. */
static int send_compressed(struct conn *c, uint8_t opcode, const void *data, size_t len, int *rc)
{
    const uint8_t *z;
    size_t zlen;
    if (!c->deflate || (opcode != WS_OP_TEXT && opcode != WS_OP_BINARY) ||
        !compress_deflate(conn_srv(c)->z, conn_deflate_window(c), data, len, &z, &zlen))
        return 0;
    *rc = queue_frame(c, (uint8_t)(0x80 | 0x40 | opcode), z, zlen);
    return 1;
}

/* A text or binary message was queued: count it for the access log. */
static int count_out(struct conn *c, uint8_t opcode, size_t len, int rc)
{
    if (rc == 0 && (opcode == WS_OP_TEXT || opcode == WS_OP_BINARY)) {
        c->msgs_out++;
        c->bytes_out += len;
        METRIC_ADD(c->app->metrics->msgs_out, 1);
        METRIC_ADD(c->app->metrics->bytes_out, len);
    }
    return rc;
}

int conn_send_frame(struct conn *c, uint8_t opcode, const void *data, size_t len)
{
    int rc;
    if (!conn_can_send(c))
        return -1;
    if (!send_compressed(c, opcode, data, len, &rc))
        rc = queue_frame(c, (uint8_t)(0x80 | opcode), data, len);
    return count_out(c, opcode, len, rc);
}

int conn_send_frame_quick(struct conn *c, uint8_t opcode, const void *data, size_t len)
{
    if (!conn_can_send(c))
        return -1;
    if (c->deflate || len >= CONN_REF_MIN)
        return 1;
    const struct config *cfg = conn_srv(c)->cfg;
    size_t pending = conn_out_pending(c) + ws_frame_header_size(len) + len;
    /* Past max_send_buffer the slow path decides: it drops the connection,
     * and on_close is owed. */
    if (pending > cfg->max_send_buffer || append_frame(c, (uint8_t)(0x80 | opcode), data, len))
        return 1;
    if (pending > cfg->send_buffer)
        queued(c); /* pauses reading; within max_send_buffer: cannot fail */
    else if (!c->in_flush_list) /* under both limits: only a flush is owed */
        server_want_flush(conn_srv(c), c);
    return count_out(c, opcode, len, 0);
}

int conn_send_frame_ref(struct conn *c, uint8_t opcode, const void *data, size_t len, int ref)
{
    int rc = -1;
    if (!conn_can_send(c) || send_compressed(c, opcode, data, len, &rc)) {
        lbridge_unref(conn_srv(c)->lb, ref); /* not needed: refused, or compressed into a copy */
        return count_out(c, opcode, len, rc);
    }
    return count_out(c, opcode, len, queue_frame_ref(c, (uint8_t)(0x80 | opcode), data, len, ref));
}

int conn_send_shared(struct conn *c, struct conn_frame *f, uint8_t opcode, size_t app_len)
{
    if (!conn_can_send(c))
        return -1;
    if (f->len < CONN_REF_MIN) {
        /* A short frame is copied, as ws:send copies a short payload: its
         * bytes then leave in one write with the rest of c->out, where a
         * reference costs as much memory as the copy (an out_ref and an
         * iovec) and splits the write. */
        if (buf_append(&c->out, f->bytes, f->len)) {
            conn_abort(c, "out of memory for the output queue");
            return -1;
        }
        return count_out(c, opcode, app_len, queued_then(c, 1));
    }
    struct out_refs *rs = refs_room(c);
    if (!rs) {
        conn_abort(c, "out of memory for the output queue");
        return -1;
    }
    f->refs++;
    rs->r[rs->n++] = (struct out_ref){buf_pending(&c->out), f->bytes, f->len, LUA_NOREF, f};
    rs->bytes += f->len;
    return count_out(c, opcode, app_len, queued_then(c, 1));
}

static void queue_close(struct conn *c, uint16_t code, const char *reason, size_t rlen)
{
    uint8_t payload[125];
    size_t n = 0;
    if (code != WS_CLOSE_NO_STATUS) {
        payload[0] = (uint8_t)(code >> 8);
        payload[1] = (uint8_t)code;
        n = 2;
        if (rlen > sizeof payload - 2)
            rlen = sizeof payload - 2; /* may cut a UTF-8 sequence: see set_reason */
        if (rlen)
            memcpy(payload + 2, reason, rlen);
        n += rlen;
    }
    queue_frame(c, 0x80 | WS_OP_CLOSE, payload, n);
}

/* Keep a close reason for on_close, cut to what a close frame can carry
 * without splitting a UTF-8 sequence. */
static void set_reason(struct conn *c, uint16_t code, const char *reason, size_t len)
{
    if (len > 123) { /* what a close frame can carry */
        len = 123;
        while (len && ((unsigned char)reason[len] & 0xC0) == 0x80)
            len--; /* reason[len] exists: the reason was longer */
    }
    c->close_code = code;
    c->close_reason_len = 0;
    char *room = len && c->req ? snap_reason_room(&c->req) : NULL;
    if (room) {
        memmove(room, reason, len);
        c->close_reason_len = (uint8_t)len;
    }
}

void conn_close(struct conn *c, uint16_t code, const char *reason)
{
    if (c->state != CONN_OPEN)
        return;
    if (!reason)
        reason = "";
    set_reason(c, code, reason, strlen(reason));
    c->close_code = 0; /* on_close reports the peer's answer, not our request */
    c->closed_by = MB_SERVER;
    metrics_close(conn_srv(c)->metrics, code, MB_SERVER);
    queue_close(c, code, conn_close_reason(c), c->close_reason_len);
    if (c->state != CONN_OPEN) /* the queue overflowed and dropped it */
        return;
    server_conn_enter(conn_srv(c), c, CONN_CLOSING);
    /* The peer's close frame must be read; its data is dropped from now
     * on, so neither a rate nor a budget has a reason to hold it. */
    if (c->held)
        throttle_release(c);
}

/* The peer broke a rule: send the close code that says which, and close. */
static void conn_fail(struct conn *c, uint16_t code, const char *why)
{
    lbridge_dispatch(conn_srv(c)->lb); /* the messages before the fault go first */
    log_info("conn %llu %s: failing the connection with %u: %s", (unsigned long long)c->id,
             conn_path(c), code, why);
    if (c->state == CONN_OPEN)
        queue_close(c, code, why, strlen(why));
    if (c->state == CONN_OPEN) {
        c->closed_by = MB_SERVER;
        metrics_close(conn_srv(c)->metrics, code, MB_SERVER);
    }
    if (c->state == CONN_OPEN || c->state == CONN_CLOSING) {
        set_reason(c, code, why, strlen(why));
        enter_linger(c);
    }
}

/* The closing handshake is over (or failed): tell the app, send what is
 * queued, half-close, and give the peer a moment to close its side, so the
 * close frame is not lost to a reset. */
static void enter_linger(struct conn *c)
{
    if (c->state == CONN_LINGER || c->state == CONN_DEAD)
        return;
    server_conn_enter(conn_srv(c), c, CONN_LINGER);
    msg_reset(c);
    if (c->held) /* from now on it reads only to see the peer's EOF */
        throttle_release(c);
    partial_drop(c); /* no frame is parsed from now on */
    finish(c);
    if (c->state == CONN_DEAD)
        return;
    if (c->read_paused | c->wait_paused) {
        c->read_paused = 0;
        c->wait_paused = 0;
        update_io(c);
    }
    server_want_flush(conn_srv(c), c);
}

/* Answer the handshake with an HTTP error (or an app's rejection) and close. */
static void http_reply(struct conn *c, int status, const char *why, const char *headers,
                       size_t headers_len, const void *body, size_t body_len)
{
    char head[512];
    char dflt[256];
    if (!body) { /* the status and the short reason: fixed strings, never the client's bytes */
        int m = snprintf(dflt, sizeof dflt, "%d %s%s%s\n", status, hs_reason(status),
                         why ? ": " : "", why ? why : "");
        body_len = m < 0 ? 0 : (size_t)m < sizeof dflt ? (size_t)m : sizeof dflt - 1;
        body = dflt;
    }
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\nConnection: close\r\n%s",
                     status, hs_reason(status), body_len,
                     headers_len && memmem(headers, headers_len, "Content-Type:", 13) ? ""
                                                                 : "Content-Type: text/plain\r\n");
    struct metrics_app *ma = c->app ? c->app->metrics : metrics_no_app(conn_srv(c)->metrics);
    METRIC_ADD(ma->handshakes[metrics_status_of(status)], 1);
    struct access_event e = access_event(c, "WSREJECT", why);
    e.status = status;
    log_access_event(&e);
    buf_reset(&c->out); /* frames an app queued in on_connect never go out */
    refs_drop(c);
    buf_append(&c->out, head, (size_t)n);
    if (headers_len)
        buf_append(&c->out, headers, headers_len);
    buf_append(&c->out, "\r\n", 2);
    buf_append(&c->out, body, body_len);
    hs_free(c->hs);
    c->hs = NULL;
    enter_linger(c);
}

static void http_error(struct conn *c, int status, const char *why)
{
    static const char upgrade[] = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
    static const char allow[] = "Allow: GET\r\n";
    if (status == 426)
        http_reply(c, status, why, upgrade, sizeof upgrade - 1, NULL, 0);
    else if (status == 405) /* RFC 9110 15.5.6: a 405 names the allowed methods */
        http_reply(c, status, why, allow, sizeof allow - 1, NULL, 0);
    else
        http_reply(c, status, why, NULL, 0, NULL, 0);
}

static void frames_input(struct conn *c, uint8_t *buf, size_t n);
static void frames_parse(struct conn *c, uint8_t *buf, size_t n);

void conn_keepalive(struct conn *c)
{
    const struct config *cfg = conn_srv(c)->cfg;
    if (c->state != CONN_OPEN)
        return;
    ev_tstamp silent = server_since(conn_srv(c), c->stamp);
    if (cfg->idle_timeout > 0 && silent >= cfg->idle_timeout) {
        log_info("conn %llu %s: nothing from the client for %gs: closing with 1001",
                 (unsigned long long)c->id, conn_path(c), silent);
        conn_close(c, WS_CLOSE_GOING_AWAY, "idle timeout");
        return;
    }
    if (cfg->ping_interval > 0 && !c->pinged && silent >= cfg->ping_interval) {
        c->pinged = 1;
        queue_frame(c, 0x80 | WS_OP_PING, NULL, 0);
    }
}

/* Accept: the 101 goes out before any frame on_connect queued. */
static void send_101(struct conn *c, const char *key, const struct conn_reply *reply,
                     const char *extensions)
{
    char accept[29];
    hs_accept_key(key, accept);
    struct buf head = {0};
    char line[256];
    int n = snprintf(line, sizeof line,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
                     accept);
    buf_append(&head, line, (size_t)n);
    if (*extensions) {
        buf_append(&head, "Sec-WebSocket-Extensions: ", 26);
        buf_append(&head, extensions, strlen(extensions));
        buf_append(&head, "\r\n", 2);
    }
    if (reply->protocol) {
        buf_append(&head, "Sec-WebSocket-Protocol: ", 24);
        buf_append(&head, reply->protocol, strlen(reply->protocol));
        buf_append(&head, "\r\n", 2);
    }
    if (buf_pending(&reply->headers))
        buf_append(&head, buf_head(&reply->headers), buf_pending(&reply->headers));
    buf_append(&head, "\r\n", 2);
    for (unsigned i = 0; c->refs && i < c->refs->n; i++)
        c->refs->r[i].at += buf_pending(&head); /* the 101 goes before them */
    if (buf_pending(&c->out))
        buf_append(&head, buf_head(&c->out), buf_pending(&c->out));
    buf_reset(&c->out);
    c->out = head;
    server_want_flush(conn_srv(c), c);
}

static void reply_free(struct conn_reply *r)
{
    free(r->protocol);
    buf_reset(&r->headers);
    buf_reset(&r->body);
}

/* A trusted peer (proxy.trusted) may say who the client is and which
 * scheme it used: X-Forwarded-For, read from the right to the first
 * address not trusted (every line of it, the last line first), and
 * X-Forwarded-Proto. From anyone else these headers are only headers.
 * Returns 0, or -1 when out of memory. */
static int forwarded(struct conn *c)
{
    const struct config *cfg = conn_srv(c)->cfg;
    struct proxy_addr peer, client;
    client_addr(c, &peer);
    if (!proxy_trusted(cfg->trusted, cfg->ntrusted, &peer))
        return 0;
    const char *proto = hs_header_get(c->hs, "x-forwarded-proto");
    const char *scheme = proto ? proxy_forwarded_scheme(proto) : NULL;
    if (scheme)
        c->req->scheme_fwd = scheme[2] ? SNAP_SCHEME_WSS : SNAP_SCHEME_WS;
    memset(&client, 0, sizeof client);
    for (size_t i = hs_header_count(c->hs); i-- > 0;) {
        const struct hs_header *h = hs_header_at(c->hs, i);
        if (strcmp(h->name, "x-forwarded-for") != 0)
            continue;
        int r = proxy_xff_walk(cfg->trusted, cfg->ntrusted, h->value, h->value_len, &client);
        if (r == PROXY_XFF_BAD)
            log_debug("conn %llu from %s: X-Forwarded-For has an entry that is not an address: "
                      "the client is the hop that sent it", (unsigned long long)c->id,
                      conn_peer(c));
        if (r != PROXY_XFF_TRUSTED)
            break;
    }
    return client.family ? set_client(c, &client) : 0;
}

/* The route's origins (a config route's own, else the global list) allow
 * the handshake's Origin; else answer 403 and return 0. */
static int origin_ok(struct conn *c, const struct route *route)
{
    const struct config *cfg = conn_srv(c)->cfg;
    const struct origin_list *allowed = cfg->origins;
    for (size_t i = 0; i < cfg->nroutes; i++)
        if (cfg->routes[i].origins && strcmp(cfg->routes[i].pattern, route->pattern) == 0)
            allowed = cfg->routes[i].origins;
    if (!allowed && !cfg->origins_required)
        return 1;
    const char *origin = hs_header_get(c->hs, "origin");
    if (!origin) {
        if (!cfg->origins_required)
            return 1;
        METRIC_ADD(conn_srv(c)->metrics->refusals[MR_ORIGIN], 1);
        http_error(c, 403, "no Origin header (origins_required)");
        return 0;
    }
    if (!allowed || origin_allowed(allowed, origin))
        return 1;
    /* The reply and the access log name no byte the client chose; the
     * Origin goes to the server log, which reads it from the request. */
    log_info("conn %llu %s from %s: Origin \"%.200s\" is not in origins: refused with 403",
             (unsigned long long)c->id, conn_path(c), conn_peer(c), origin);
    METRIC_ADD(conn_srv(c)->metrics->refusals[MR_ORIGIN], 1);
    http_error(c, 403, "origin not allowed");
    return 0;
}

/* Count the connection against limits.max_connections_per_ip, by the
 * client's address after any proxy said who it is; past it answer 429 and
 * return 0. */
static int per_ip_ok(struct conn *c)
{
    struct server *srv = conn_srv(c);
    unsigned limit = srv->cfg->max_connections_per_ip;
    if (!limit)
        return 1;
    if (!srv->per_ip) {
        uint64_t seed;
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
            seed = (uint64_t)getpid() << 32 ^ (uint64_t)(ev_time() * 1e6);
        if (!(srv->per_ip = ipcount_new(seed))) {
            http_error(c, 503, "out of memory");
            return 0;
        }
    }
    struct proxy_addr a;
    client_addr(c, &a);
    int r = ipcount_take(srv->per_ip, &a, limit);
    if (r > 0) {
        c->per_ip = 1;
        return 1;
    }
    if (r < 0) {
        http_error(c, 503, "out of memory");
    } else {
        METRIC_ADD(srv->metrics->refusals[MR_PER_IP], 1);
        http_error(c, 429, "too many connections from this address (limits.max_connections_per_ip)");
    }
    return 0;
}

/* on_connect has returned (rc -1: raised): answer the handshake as it
 * decided. rest: the client's first frames, which came with the head. */
static void connect_answer(struct conn *c, struct conn_reply *reply, const char *key,
                           const char *extensions, uint8_t *rest, size_t nrest, int rc)
{
    if (c->state != CONN_HANDSHAKE) { /* dropped while on_connect ran */
        reply_free(reply);
        return;
    }
    if (rc < 0) {
        http_error(c, 500, "on_connect raised an error");
    } else if (reply->status) {
        const uint8_t *body = buf_head(&reply->body);
        http_reply(c, reply->status, "rejected by the app", (const char *)buf_head(&reply->headers),
                   buf_pending(&reply->headers), body ? body : (const uint8_t *)"",
                   buf_pending(&reply->body));
    } else {
        send_101(c, key, reply, extensions);
        server_conn_enter(conn_srv(c), c, CONN_OPEN);
        c->accepted = 1;
        METRIC_ADD(c->app->metrics->handshakes[MS_101], 1);
        METRIC_ADD(c->app->metrics->open, 1);
        log_event(c, "WSCONNECT", NULL);
        hs_free(c->hs);
        c->hs = NULL;
        if (nrest) /* the client's first frames came with the head */
            frames_input(c, rest, nrest);
        /* Write the 101 now rather than before the loop blocks: a burst of
         * handshakes then reuses one pooled output block instead of
         * holding one per handshake in the iteration (each a 2 KiB block
         * that the buffer pool keeps afterwards). */
        if (c->state != CONN_DEAD)
            conn_flush(c);
    }
    reply_free(reply);
}

/* What the answer to a handshake needs while on_connect runs: on the stack,
 * or on the heap when it waits. */
struct conn_connect {
    struct conn_reply reply;
    char key[25]; /* Sec-WebSocket-Key: 24 base64 characters */
    char extensions[WS_DEFLATE_RESPONSE_MAX];
    size_t nrest;
    uint8_t rest[]; /* the frames that came with the head */
};

static void handshake_input(struct conn *c, uint8_t *buf, size_t n)
{
    size_t used = 0;
    int r = hs_feed(c->hs, (const char *)buf, n, &used);
    if (r == HS_NEED_MORE)
        return;
    if (r == HS_ERROR) {
        /* A PROXY header where none is believed: say so rather than
         * "bad request", so the operator sees proxy.trusted is missing it. */
        if (conn_srv(c)->cfg->proxy_protocol && !hs_target_read(c->hs) && proxy_header_like(buf, n)) {
            log_info("conn %llu from %s: PROXY header from a peer not in proxy.trusted: refused",
                     (unsigned long long)c->id, conn_peer(c));
            METRIC_ADD(conn_srv(c)->metrics->refusals[MR_PROXY_HEADER], 1);
            http_error(c, 400, "PROXY header from an untrusted peer");
            return;
        }
        http_error(c, hs_status(c->hs), hs_error(c->hs));
        return;
    }
    if (conn_srv(c)->cfg->ntrusted && forwarded(c)) {
        http_error(c, 500, "out of memory for the request");
        return;
    }
    const char *target = hs_target(c->hs);
    struct route_match m;
    m.route = NULL; /* router_match sets it when it matches; say so to the compiler */
    int routed = router_match(conn_srv(c)->router, target, strcspn(target, "?#"), &m);
    union conn_addr local;
    local_addr(c, &local);
    if (!routed)
        m.nparams = 0;
    if (snap_complete(&c->req, &local.sa, target, &m, c->hs)) {
        http_error(c, 500, "out of memory for the request");
        return;
    }
    if (!routed) {
        http_error(c, 404, "no route");
        return;
    }
    c->app = m.route->app; /* from here, the app's: its handshakes are counted as its own */
    struct hs_upgrade up;
    const char *why;
    int status = hs_check_upgrade(c->hs, &up, &why);
    if (status) {
        http_error(c, status, why);
        return;
    }
    if (!origin_ok(c, m.route) || !per_ip_ok(c))
        return;
    char extensions[WS_DEFLATE_RESPONSE_MAX];
    int window;
    int deflate = compress_negotiate(conn_srv(c)->z, up.extensions, &window, extensions);
    if (deflate == WS_DEFLATE_MALFORMED) { /* RFC 6455 9.1: fail the connection */
        http_error(c, 400, "malformed Sec-WebSocket-Extensions");
        return;
    }
    if (deflate == WS_DEFLATE_ACCEPTED) {
        c->deflate = 1;
        c->deflate_window8 = (uint8_t)(window - 8);
        c->parser.rsv_allowed = 0x40; /* RSV1: "compressed", RFC 7692 section 6 */
    }
    log_event(c, "WSCONNECTING", NULL);

    struct conn_connect cx = {.reply = {0}};
    conn_srv(c)->connect_reply = &cx.reply;
    c->in_connect = 1;
    int rc = lbridge_connect(conn_srv(c)->lb, c);
    c->in_connect = 0;
    conn_srv(c)->connect_reply = NULL;
    if (rc == LB_WAITING) {
        /* on_connect waits: keep what the answer needs, and the frames
         * that came with the head, until it returns (conn_connect_done). */
        size_t rest = n - used;
        struct conn_connect *cc = malloc(sizeof *cc + rest);
        if (!cc) { /* the handler still runs; the client gets the 500 */
            lbridge_connect_kept(conn_srv(c)->lb, c, NULL);
            reply_free(&cx.reply);
            http_error(c, 500, "out of memory for a waiting on_connect");
            return;
        }
        *cc = cx;
        memcpy(cc->key, up.key, sizeof cc->key - 1);
        cc->key[sizeof cc->key - 1] = '\0';
        memcpy(cc->extensions, extensions, sizeof cc->extensions);
        cc->nrest = rest;
        memcpy(cc->rest, buf + used, rest);
        conn_wait_pause(c, 1); /* the request is whole: nothing to read until the answer */
        lbridge_connect_kept(conn_srv(c)->lb, c, cc);
        return;
    }
    connect_answer(c, &cx.reply, up.key, extensions, buf + used, n - used, rc);
}

void conn_wait_pause(struct conn *c, int pause)
{
    if (c->state == CONN_DEAD || c->wait_paused == (pause != 0))
        return;
    c->wait_paused = pause != 0;
    update_io(c);
    /* As when the send buffer's pause ends (conn_flush). */
    if (!pause && conn_tls(c) && !(c->read_paused | c->held) && tls_pending(conn_tls(c)))
        ev_feed_event(conn_srv(c)->loop, &c->io, EV_READ);
}

void conn_connect_enter(struct conn *c, struct conn_connect *cc)
{
    if (c->state != CONN_HANDSHAKE) /* answered meanwhile (a 504): ws calls see it closed */
        return;
    conn_srv(c)->connect_reply = &cc->reply;
    c->in_connect = 1;
}

void conn_connect_leave(struct server *srv, struct conn *c)
{
    if (c)
        c->in_connect = 0;
    srv->connect_reply = NULL;
}

void conn_connect_done(struct conn *c, struct conn_connect *cc, int rc)
{
    if (c && c->state == CONN_HANDSHAKE) {
        conn_wait_pause(c, 0);
        connect_answer(c, &cc->reply, cc->key, cc->extensions, cc->rest, cc->nrest, rc);
    } else {
        reply_free(&cc->reply);
    }
    free(cc);
}
/* The message joins the read's batch; lbridge counts it in msgs_in when it
 * reaches the app. stable: data is in the buffer of the read being parsed,
 * which nothing touches until the batch is dispatched (frames_input). */
static void deliver(struct conn *c, uint8_t op, const uint8_t *data, size_t len, int stable)
{
    if (!data) /* an empty message that never needed a buffer */
        data = (const uint8_t *)"";
    lbridge_message(conn_srv(c)->lb, c, data, len, op == WS_OP_BINARY, stable);
}

/* Run the batch waiting for the app; 1 if c is still open after it. */
static int dispatch(struct conn *c)
{
    lbridge_dispatch(conn_srv(c)->lb);
    return c->state == CONN_OPEN;
}

/* A data message cannot be delivered. Had the messages before it closed
 * the connection, it would have been dropped unread: run them first. */
static void fail_message(struct conn *c, uint16_t code, const char *why)
{
    if (dispatch(c))
        conn_fail(c, code, why);
}

static void on_close_frame(struct conn *c, const struct ws_chunk *ch)
{
    uint16_t code;
    const uint8_t *reason;
    size_t rlen;
    int err = ws_close_parse(ch->data, ch->len, &code, &reason, &rlen);
    if (err) {
        conn_fail(c, ws_frame_error_code(err),
                  err == WS_ERR_UTF8 ? "close reason is not UTF-8" : "invalid close frame");
        return;
    }
    if (c->state == CONN_OPEN) { /* echo the peer's code, as RFC 6455 5.5.1 asks */
        c->closed_by = MB_CLIENT;
        metrics_close(conn_srv(c)->metrics, code, MB_CLIENT);
        queue_close(c, code, NULL, 0);
    }
    set_reason(c, code, (const char *)reason, rlen);
    enter_linger(c);
}

/* A compressed message is whole: inflate it (at most limits.max_message
 * bytes of it), check its text, hand it over. */
static void deliver_compressed(struct conn *c, uint8_t op, const uint8_t *data, size_t len)
{
    const uint8_t *msg;
    size_t n;
    struct compress *z = conn_srv(c)->z;
    int r = compress_inflate(z, data, len, conn_srv(c)->cfg->max_message, &msg, &n);
    if (r) {
        fail_message(c, ws_deflate_close_code(r),
                  r == WS_ERR_TOO_BIG      ? "inflated message over the size limit"
                  : r == WS_DEFLATE_ERR_DATA ? "invalid compressed data"
                                             : "out of memory inflating a message");
        return;
    }
    if (op == WS_OP_TEXT && !ws_utf8_valid(msg, n))
        fail_message(c, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in text message");
    else
        deliver(c, op, msg, n, 0);
    compress_inflated_done(z);
}

static void handle_chunk(struct conn *c, const struct ws_chunk *ch)
{
    switch (ch->opcode) {
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        if (c->state != CONN_OPEN)
            return; /* after our close, data is read and dropped */
        if (ch->flags & WS_CHUNK_MSG_START) /* RFC 7692 6: RSV1 of the first frame */
            c->msg_compressed = (ch->rsv & 0x40) != 0;
        if ((ch->flags & WS_CHUNK_MSG_START) && (ch->flags & WS_CHUNK_MSG_END)) {
            /* straight from the read buffer */
            if (c->msg_compressed)
                deliver_compressed(c, ch->opcode, ch->data, ch->len);
            else
                deliver(c, ch->opcode, ch->data, ch->len, 1);
            return;
        }
        if (msg_append(c, ch->data, ch->len))
            return;
        if (ch->flags & WS_CHUNK_MSG_END) {
            if (c->msg_compressed)
                deliver_compressed(c, ch->opcode, buf_head(&c->msg), buf_pending(&c->msg));
            else
                deliver(c, ch->opcode, buf_head(&c->msg), buf_pending(&c->msg), 0);
            msg_reset(c);
        }
        return;
    case WS_OP_PING:
        if (dispatch(c))
            queue_frame(c, 0x80 | WS_OP_PONG, ch->data, ch->len);
        return;
    case WS_OP_PONG:
        return;
    case WS_OP_CLOSE:
        lbridge_dispatch(conn_srv(c)->lb);
        on_close_frame(c, ch);
        return;
    }
}

/* The codec stopped inside a frame header or a control frame: keep those
 * bytes until the next read brings the rest. */
static void partial_keep(struct conn *c, const uint8_t *p, size_t n)
{
    assert(!c->partial && n <= WS_FRAME_TAIL_MAX);
    c->partial = malloc(n);
    if (!c->partial) {
        conn_fail(c, WS_CLOSE_INTERNAL, "out of memory for a partial frame");
        return;
    }
    memcpy(c->partial, p, n);
    c->partial_len = (uint8_t)n;
}

/* The messages of one read are delivered together (lbridge_dispatch), at
 * the latest when the read is used up; before that whenever a control
 * frame or a fault comes, so that frames still go out in the order in
 * which they were caused. */
static void frames_input(struct conn *c, uint8_t *buf, size_t n)
{
    frames_parse(c, buf, n);
    lbridge_dispatch(conn_srv(c)->lb);
}

static void frames_parse(struct conn *c, uint8_t *buf, size_t n)
{
    size_t off = 0;
    /* Any bytes count as a sign of life; the keepalive sweep reads this.
     * Once closing, stamp is when that began: its timeout runs from then. */
    if (c->state == CONN_OPEN) {
        c->stamp = server_ms(conn_srv(c));
        c->pinged = 0;
    }
    while (c->state == CONN_OPEN || c->state == CONN_CLOSING) {
        struct ws_chunk ch;
        long r = ws_parser_feed(&c->parser, buf + off, n - off, &ch);
        if (r < 0) {
            conn_fail(c, ws_frame_error_code((int)r), ws_parser_error(&c->parser));
            return;
        }
        off += (size_t)r;
        if (!ch.opcode) {
            if (off < n)
                partial_keep(c, buf + off, n - off);
            return;
        }
        handle_chunk(c, &ch);
    }
}

/* The peer closed its side: no more input will come. */
static void peer_closed(struct conn *c)
{
    if (c->state == CONN_HANDSHAKE)
        log_debug("conn %llu: closed before the handshake completed", (unsigned long long)c->id);
    conn_abort(c, "peer closed the connection");
}

/* OpenSSL failed on this connection: log why, and close the socket (after a
 * failed TLS handshake no HTTP answer can reach the client). */
static void tls_failed(struct conn *c)
{
    if (!tls_handshake_done(conn_tls(c)))
        log_info("conn %llu from %s: TLS handshake failed: %s: closing", (unsigned long long)c->id,
                 conn_peer(c), tls_error());
    else
        log_info("conn %llu %s from %s: TLS error: %s: closing", (unsigned long long)c->id,
                 conn_path(c), conn_peer(c), tls_error());
    conn_abort(c, "TLS error");
}

/* len bytes are in buf, starting with the kept partial frame, if any. */
static void input(struct conn *c, uint8_t *buf, size_t len)
{
    partial_drop(c); /* its bytes are in buf now */
    switch (c->state) {
    case CONN_HANDSHAKE: /* nothing is kept before the handshake is done */
        handshake_input(c, buf, len);
        break;
    case CONN_OPEN:
    case CONN_CLOSING:
        frames_input(c, buf, len);
        break;
    case CONN_LINGER: /* waiting for EOF: input is dropped */
    case CONN_DEAD:
        break;
    }
}

/* An incomplete frame from the last read goes first, so the codec sees it
 * again followed by what arrives now, in the writable buffer it unmasks in
 * place. Returns how many bytes it takes at the start of buf. */
static size_t take_partial(struct conn *c, uint8_t *buf)
{
    size_t kept = c->partial_len;
    if (kept)
        memcpy(buf, c->partial, kept);
    return kept;
}

/* Read through OpenSSL (the handshake happens inside the first reads). A
 * TLS record can hold more than the socket says: OpenSSL may keep bytes it
 * has taken from the socket, which will never make it readable again, so
 * read while it holds some. */
static void on_readable_tls(struct conn *c)
{
    uint8_t *buf = conn_srv(c)->rbuf;
    do {
        size_t kept = take_partial(c, buf);
        size_t room = SERVER_READ_BUF - kept;
        if (conn_srv(c)->throttle.rate_on)
            room = throttle_read_room(c, room);
        long n = tls_read(conn_tls(c), buf + kept, room);
        if (n == TLS_WANT_READ || n == TLS_WANT_WRITE) {
            c->tls_read_wants_write = n == TLS_WANT_WRITE;
            update_io(c);
            return;
        }
        c->tls_read_wants_write = 0;
        if (n == TLS_CLOSED) {
            peer_closed(c);
            return;
        }
        if (n < 0) {
            tls_failed(c);
            return;
        }
        input(c, buf, kept + (size_t)n);
        if (conn_srv(c)->throttle.rate_on)
            throttle_read(c, (size_t)n);
    } while (c->state != CONN_DEAD && !(c->read_paused | c->held | c->wait_paused) &&
             tls_pending(conn_tls(c)));
}

static void on_readable(struct conn *c)
{
    if (conn_tls(c)) {
        on_readable_tls(c);
        return;
    }
    uint8_t *buf = conn_srv(c)->rbuf;
    size_t kept = take_partial(c, buf);
    size_t room = SERVER_READ_BUF - kept;
    if (conn_srv(c)->throttle.rate_on)
        room = throttle_read_room(c, room);
    ssize_t n = recv(c->io.fd, buf + kept, room, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        conn_abort(c, strerror(errno));
        return;
    }
    if (n == 0) {
        peer_closed(c);
        return;
    }
    input(c, buf, kept + (size_t)n);
    if (conn_srv(c)->throttle.rate_on) /* once per read, not per message */
        throttle_read(c, (size_t)n);
}

/* The output in write order: c->out's bytes with the refs at their places.
 * Returns the number of iovecs filled. */
static int out_iov(const struct conn *c, struct iovec *iov, int max)
{
    const uint8_t *head = buf_head(&c->out);
    size_t pos = 0;
    int k = 0;
    for (unsigned i = 0; i < c->refs->n; i++) {
        const struct out_ref *r = &c->refs->r[i];
        if (k + 2 > max)
            return k; /* the bytes after r must wait for it */
        if (r->at > pos) {
            iov[k++] = (struct iovec){(void *)(head + pos), r->at - pos};
            pos = r->at;
        }
        iov[k++] = (struct iovec){(void *)r->p, r->len};
    }
    if (buf_pending(&c->out) > pos)
        iov[k++] = (struct iovec){(void *)(head + pos), buf_pending(&c->out) - pos};
    return k;
}

/* n bytes of the output were written: consume them in write order. */
static void out_consume(struct conn *c, size_t n)
{
    struct out_refs *rs = c->refs;
    while (n) {
        struct out_ref *r = rs->n ? &rs->r[0] : NULL;
        if (!r || r->at) { /* bytes of c->out come first */
            size_t k = r && r->at < n ? r->at : n;
            buf_consume(&c->out, k);
            for (unsigned i = 0; i < rs->n; i++)
                rs->r[i].at -= k;
            n -= k;
            continue;
        }
        size_t k = r->len < n ? r->len : n;
        r->p += k;
        r->len -= k;
        rs->bytes -= k;
        n -= k;
        if (!r->len) {
            ref_release(c, r);
            memmove(&rs->r[0], &rs->r[1], --rs->n * sizeof rs->r[0]);
        }
    }
    if (!rs->n) {
        free(rs);
        c->refs = NULL;
    }
}

/* The largest TLS record's payload: output in smaller pieces than this is
 * copied together, so a frame header and its payload, or many short
 * frames, make one record and one write rather than one each. */
#define TLS_STAGE 16384

/* One SSL_write of the output, in order: bytes written, 0 if the socket
 * must be ready first (c->io is set for it), -1 if the connection was
 * dropped. A retry after 0 offers the same first bytes again, at least as
 * many, as OpenSSL requires: the queue only grows at its end meanwhile. */
static long write_tls(struct conn *c)
{
    struct iovec iov[64];
    int k = 1;
    if (c->refs)
        k = out_iov(c, iov, 64);
    else
        iov[0] = (struct iovec){(void *)buf_head(&c->out), buf_pending(&c->out)};
    const void *p = iov[0].iov_base;
    size_t len = iov[0].iov_len;
    uint8_t stage[TLS_STAGE];
    if (k > 1 && len < sizeof stage) {
        len = 0;
        for (int i = 0; i < k && len < sizeof stage; i++) {
            size_t m = iov[i].iov_len < sizeof stage - len ? iov[i].iov_len : sizeof stage - len;
            memcpy(stage + len, iov[i].iov_base, m);
            len += m;
        }
        p = stage;
    }
    long n = tls_write(conn_tls(c), p, len);
    c->tls_write_wants_read = n == TLS_WANT_READ;
    if (n > 0)
        return n;
    if (n == TLS_WANT_READ || n == TLS_WANT_WRITE)
        return 0;
    if (n == TLS_CLOSED)
        conn_abort(c, "peer closed the connection");
    else
        tls_failed(c);
    return -1;
}

/* Before the half-close, a TLS connection says close_notify. 0 once it is
 * out; -1 to wait for the socket to be writable (tls_events asks for it
 * while the linger state has not shut down) or if the connection failed. */
static int tls_close_notify(struct conn *c)
{
    int r = tls_shutdown(conn_tls(c));
    if (r == 0)
        return 0;
    if (r != TLS_WANT_WRITE)
        tls_failed(c);
    return -1;
}

void conn_flush(struct conn *c)
{
    while (conn_out_pending(c)) {
        ssize_t n;
        if (conn_tls(c)) {
            n = write_tls(c);
            if (n < 0)
                return;
            if (n == 0)
                break;
        } else if (!c->refs) {
            n = send(c->io.fd, buf_head(&c->out), buf_pending(&c->out), MSG_NOSIGNAL);
        } else {
            struct iovec iov[64];
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)out_iov(c, iov, 64)};
            n = sendmsg(c->io.fd, &mh, MSG_NOSIGNAL);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_abort(c, strerror(errno));
            return;
        }
        if (c->refs)
            out_consume(c, (size_t)n);
        else
            buf_consume(&c->out, (size_t)n);
    }
    size_t pending = conn_out_pending(c);
    /* Output the socket would not take counts in limits.outbound_memory. */
    if ((pending || c->out_charged) && throttle_out(c, pending))
        return;
    int resumed = 0;
    /* Back at half of send_buffer, not just under it: reading resumes, and
     * on_drain runs, only once there is room for a good part of the queue
     * again, rather than at every write that goes a byte under. */
    if (c->read_paused && pending <= conn_srv(c)->cfg->send_buffer / 2) {
        c->read_paused = 0;
        resumed = 1;
    }
    if (!pending && c->state == CONN_LINGER && !c->shut_wr &&
        (!conn_tls(c) || tls_close_notify(c) == 0)) {
        c->shut_wr = 1;
        shutdown(c->io.fd, SHUT_WR);
    }
    update_io(c);
    /* Input OpenSSL took from the socket while reading was paused will not
     * make the socket readable: have the loop read it. After update_io,
     * which would forget the event. */
    if (resumed && conn_tls(c) && c->state != CONN_DEAD && tls_pending(conn_tls(c)))
        ev_feed_event(conn_srv(c)->loop, &c->io, EV_READ);
    /* Last: the app's on_drain may send, close, or drop this connection. */
    if (resumed && c->state == CONN_OPEN && c->accepted)
        lbridge_drain(conn_srv(c)->lb, c);
}

/* One watcher per socket: readable unless paused, writable while output
 * waits for room. */
static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct conn *c = container_of(w, struct conn, io);
    if (conn_tls(c)) {
        /* Each direction goes on when the event OpenSSL asked for came. */
        int write_ready = revents & (c->tls_write_wants_read ? EV_READ : EV_WRITE);
        int read_ready = revents & (c->tls_read_wants_write ? EV_WRITE : EV_READ);
        if (write_ready)
            conn_flush(c);
        if (read_ready && c->state != CONN_DEAD && !(c->read_paused | c->held | c->wait_paused)) {
            server_read_begin(conn_srv(c), c);
            on_readable_tls(c);
            server_read_end(conn_srv(c), c);
        }
        return;
    }
    if (revents & EV_WRITE)
        conn_flush(c);
    if ((revents & EV_READ) && c->state != CONN_DEAD &&
        !(c->read_paused | c->held | c->wait_paused)) {
        server_read_begin(conn_srv(c), c);
        on_readable(c);
        server_read_end(conn_srv(c), c);
    }
}

/* A PROXY header that cannot be one: refuse the connection. Over plain
 * ws:// the answer is a 400; with TLS the client expects a TLS handshake,
 * which never began, so the socket is closed. */
static void proxy_refuse(struct conn *c, const char *why)
{
    log_info("conn %llu from %s: bad PROXY protocol header: %s: closing",
             (unsigned long long)c->id, conn_peer(c), why);
    c->proxy_wait = 0;
    ev_set_cb(&c->io, on_io); /* the linger state's reads and writes */
    METRIC_ADD(conn_srv(c)->metrics->refusals[MR_PROXY_HEADER], 1);
    if (conn_tls(c)) {
        log_access("%s \"WSREJECT -\" id=%llu status=400 reason=bad PROXY header: %s",
                   conn_peer(c), (unsigned long long)c->id, why);
        METRIC_ADD(metrics_no_app(conn_srv(c)->metrics)->handshakes[MS_400], 1);
        conn_abort(c, "bad PROXY header");
        return;
    }
    http_error(c, 400, why);
}

/* Read the PROXY header that a trusted peer sends first (proxy.protocol).
 * The socket is peeked, and only the header's own bytes are taken from
 * it: what follows (the HTTP request, or a TLS ClientHello that OpenSSL
 * must read itself) stays for on_io. A header split over reads is kept in
 * partial meanwhile; it is at most PROXY_HEADER_MAX bytes. */
static void proxy_read(struct conn *c)
{
    uint8_t *buf = conn_srv(c)->rbuf;
    size_t kept = take_partial(c, buf);
    ssize_t n = recv(c->io.fd, buf + kept, PROXY_HEADER_MAX - kept, MSG_PEEK);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_abort(c, strerror(errno));
        return;
    }
    if (n == 0) {
        log_info("conn %llu from %s: closed before its PROXY header was complete",
                 (unsigned long long)c->id, conn_peer(c));
        conn_abort(c, "peer closed the connection");
        return;
    }
    size_t have = kept + (size_t)n;
    struct proxy_header h;
    const char *why;
    long len = proxy_header_parse(buf, have, &h, &why);
    if (len < 0) {
        partial_drop(c);
        proxy_refuse(c, proxy_header_like(buf, have) ? why
                        : "no PROXY protocol header first (proxy.protocol is on for this peer)");
        return;
    }
    /* Take what belongs to the header: all of it if it is not complete. */
    size_t take = len > 0 ? (size_t)len - kept : (size_t)n;
    uint8_t sink[PROXY_HEADER_MAX];
    ssize_t got = recv(c->io.fd, sink, take, 0);
    if (got != (ssize_t)take) { /* the peeked bytes are there: cannot happen */
        conn_abort(c, "PROXY header: short read");
        return;
    }
    if (len == 0) {
        uint8_t *p = malloc(have);
        if (!p) {
            conn_abort(c, "out of memory for a PROXY header");
            return;
        }
        memcpy(p, buf, have);
        partial_drop(c);
        c->partial = p;
        c->partial_len = (uint8_t)have;
        return;
    }
    partial_drop(c);
    c->proxy_wait = 0;
    if (!h.local && set_client(c, &h.src)) {
        conn_abort(c, "out of memory for the request");
        return;
    }
    if (!(c->hs = hs_new(conn_srv(c)->cfg->max_head, conn_srv(c)->cfg->max_headers))) {
        conn_abort(c, "out of memory for the request");
        return;
    }
    ev_set_cb(&c->io, on_io);
    /* What came after the header is still in the socket, which stays
     * readable: the loop calls on_io for it. (A TLS connection may have
     * nothing yet: then it waits for the ClientHello as usual.) */
}

/* io's callback until the PROXY header is in. */
static void on_proxy_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct conn *c = container_of(w, struct conn, io);
    if (revents & EV_READ)
        proxy_read(c);
}

void conn_timeout(struct conn *c)
{
    switch (c->state) {
    case CONN_HANDSHAKE:
        if (c->wait_paused) { /* on_connect waits: the client hears why */
            log_info("conn %llu %s: on_connect did not return within %gs: 504",
                     (unsigned long long)c->id, conn_path(c), conn_srv(c)->cfg->handshake_timeout);
            http_error(c, 504, "on_connect did not return within timeouts.handshake");
            break;
        }
        log_info("conn %llu from %s: handshake not complete after %gs: closing",
                 (unsigned long long)c->id, conn_peer(c), conn_srv(c)->cfg->handshake_timeout);
        char why[80];
        snprintf(why, sizeof why, "handshake not complete after %gs",
                 conn_srv(c)->cfg->handshake_timeout);
        log_event(c, "WSTIMEOUT", why);
        conn_abort(c, "handshake timeout");
        break;
    case CONN_CLOSING:
        log_info("conn %llu %s: no close frame from the peer after %gs: closing",
                 (unsigned long long)c->id, conn_path(c), conn_srv(c)->cfg->close_timeout);
        c->close_code = WS_CLOSE_ABNORMAL;
        conn_abort(c, "close timeout");
        break;
    default:
        conn_abort(c, "linger timeout");
        break;
    }
}
