/* ltcp: moonport.tcp(), a TCP client whose connect, send and receive wait
 * without blocking the loop (lwait.h), with TLS (OpenSSL, certificates
 * verified against the system store by default) and a per-worker
 * keepalive pool. It owns the socket objects (a userdata each, holding its
 * fd, SSL, watchers and buffers), the pool of idle connections and the
 * client SSL_CTXs; all of them belong to the Lua state and go with it.
 * It knows nothing of WebSocket connections: a wait on a socket ends with
 * the socket's own result whatever happens to the handler's connection.
 *
 * Conventions (OpenResty's): a runtime failure returns nil and a short
 * reason ("timeout", "connection refused", "closed", "no such host",
 * "certificate verify failed: ..."); misuse raises, naming the method as
 * the app writes it ("sock:receive"). Every wait has a timeout: connect,
 * send and read timeouts, 60 s each unless set. One operation at a time
 * per socket: a second one from another task meanwhile gets nil, "busy". */
#include "ltcp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <lauxlib.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lbridge.h"
#include "log.h"
#include "lwait.h"
#include "resolve.h"
#include "server.h"

#define LTCP_MT "moonport.tcp"
#define LTCP_STATE_MT "moonport.tcp.state"

#define DEFAULT_TIMEOUT 60.0           /* seconds, as OpenResty's lua_socket_*_timeout */
#define DEFAULT_LIMIT (1024 * 1024)    /* what "*l" and "*a" may buffer */
#define DEFAULT_IDLE 60.0              /* seconds a pooled connection may idle */
#define DEFAULT_POOL 30                /* pooled connections per host:port */
#define READ_CHUNK 16384
#define KEEP_RBUF 65536                /* an empty receive buffer larger than this is freed */

enum { OP_NONE, OP_RESOLVE, OP_CONNECT, OP_HANDSHAKE, OP_SEND, OP_RECV };
enum { RM_N, RM_LINE, RM_ALL };

/* An idle connection in the keepalive pool, watched for the peer closing
 * it (or sending anything: then it is not reusable either) and for its
 * idle time. */
struct pooled {
    struct ltcp_state *st;
    int fd;
    SSL *ssl;
    int reused;
    ev_io io;
    ev_timer idle;
    struct pooled *prev, *next;
    char key[];
};

/* Per Lua state (so per worker): the pool and the client TLS contexts,
 * made when first needed. A userdata in the registry: its __gc frees them. */
struct ltcp_state {
    struct ev_loop *loop;
    SSL_CTX *verify_ctx, *noverify_ctx;
    struct pooled *pool;
};

struct ltcp {
    struct ev_loop *loop;
    int fd;                  /* -1: closed */
    SSL *ssl;
    ev_io io;
    ev_timer timer;
    struct lwait_task *t;    /* the task waiting on this socket, or NULL */
    int self_ref;            /* while t waits: the registry holds the object (no Lua
                                frame may: `return sock:receive()` is a tail call) */
    uint8_t op;              /* OP_*: what t waits for */
    uint8_t rmode;           /* RM_*: what the receive under way wants */
    int reused;              /* times the connection came from the pool */
    double tconnect, tsend, tread; /* seconds */
    size_t limit;
    struct resolve_req *rr;  /* during OP_RESOLVE */
    /* during a connect with TLS: the context and the name to verify */
    SSL_CTX *ctx;
    char *sni;
    char *key;               /* the pool key of the connection (host:port...) */
    /* received and not yet returned: rbuf[rpos, rlen); rscan: bytes after
     * rpos already searched for a line end */
    char *rbuf;
    size_t rpos, rlen, rcap, rscan, rwant;
    /* what a waiting send still has to write: sbuf[soff, slen) of stotal */
    char *sbuf;
    size_t soff, slen, stotal;
};

/* ---- Small helpers ---- */

static struct ltcp *check_sock(lua_State *L, const char *fname)
{
    struct ltcp *s = luaL_testudata(L, 1, LTCP_MT);
    if (!s)
        lb_typeerror(L, 1, fname, "tcp socket");
    return s;
}

static int push_fail(lua_State *L, const char *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* errno as an app sees it: OpenResty's lower-case words. */
static const char *errno_message(int e)
{
    switch (e) {
    case ECONNREFUSED:
        return "connection refused";
    case ECONNRESET:
        return "connection reset by peer";
    case ETIMEDOUT:
        return "timeout";
    case EPIPE:
        return "closed";
    case EHOSTUNREACH:
        return "no route to host";
    case ENETUNREACH:
        return "network is unreachable";
    case EADDRNOTAVAIL:
        return "address not available";
    default:
        return strerror(e);
    }
}

static void ssl_free_conn(SSL *ssl, int fd)
{
    if (ssl) {
        ERR_clear_error();
        SSL_shutdown(ssl); /* one try at close_notify, never waiting for the peer's */
        SSL_free(ssl);
        ERR_clear_error();
    }
    if (fd >= 0)
        close(fd);
}

/* Close the connection and stop everything it runs; the waiting task, if
 * any, is the caller's to resume. The socket object stays usable (connect
 * again). */
static void sock_shut(struct ltcp *s)
{
    ev_io_stop(s->loop, &s->io);
    ev_timer_stop(s->loop, &s->timer);
    if (s->rr) {
        resolve_cancel(s->rr);
        s->rr = NULL;
    }
    ssl_free_conn(s->ssl, s->fd);
    s->ssl = NULL;
    s->fd = -1;
    if (s->ctx) {
        SSL_CTX_free(s->ctx);
        s->ctx = NULL;
    }
    free(s->sni);
    s->sni = NULL;
    free(s->key);
    s->key = NULL;
    free(s->rbuf);
    s->rbuf = NULL;
    s->rpos = s->rlen = s->rcap = s->rscan = 0;
    free(s->sbuf);
    s->sbuf = NULL;
    s->soff = s->slen = 0;
}

/* The wait ends: the results are on lwait_thread(s->t) already. */
static void finish(struct ltcp *s, int nresults)
{
    ev_io_stop(s->loop, &s->io);
    ev_timer_stop(s->loop, &s->timer);
    struct lwait_task *t = s->t;
    s->t = NULL;
    s->op = OP_NONE;
    luaL_unref(lwait_thread(t), LUA_REGISTRYINDEX, s->self_ref); /* s lives on: a result holds it or not */
    s->self_ref = LUA_NOREF;
    lwait_resume(t, nresults);
}

static void finish_fail(struct ltcp *s, const char *err, int shut)
{
    lua_State *co = lwait_thread(s->t);
    lua_pushnil(co);
    lua_pushstring(co, err);
    if (shut)
        sock_shut(s);
    finish(s, 2);
}

/* Wait for events on the fd (and the timer, started by the caller). */
static void want_io(struct ltcp *s, int events)
{
    if (ev_is_active(&s->io) && (s->io.events & (EV_READ | EV_WRITE)) == events)
        return;
    ev_io_stop(s->loop, &s->io);
    ev_io_set(&s->io, s->fd, events);
    ev_io_start(s->loop, &s->io);
}

/* A wait that began and is called off before the yield (out of memory). */
static void cancel_wait(lua_State *L, struct ltcp *s)
{
    s->t->armed = 0;
    s->t = NULL;
    s->op = OP_NONE;
    ev_timer_stop(s->loop, &s->timer);
    luaL_unref(L, LUA_REGISTRYINDEX, s->self_ref);
    s->self_ref = LUA_NOREF;
}

/* Begin a wait on the socket at stack index 1. */
static void begin_wait(lua_State *L, struct ltcp *s, const char *fname, int op, double timeout)
{
    s->t = lwait_begin(L, fname);
    lua_pushvalue(L, 1);
    s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->op = (uint8_t)op;
    ev_timer_set(&s->timer, timeout, 0);
    ev_timer_start(s->loop, &s->timer);
}

/* ---- TLS ---- */

static SSL_CTX *client_ctx_new(int verify, const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF); /* an EOF is an EOF, as with TCP */
#endif
    if (verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                         : SSL_CTX_set_default_verify_paths(ctx);
        if (!ok) {
            unsigned long e = ERR_get_error();
            snprintf(err, errlen, "cannot load %s: %s", ca_file ? ca_file : "the system's CAs",
                     e ? ERR_reason_error_string(e) : "unknown error");
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}

static int is_ip_literal(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* Why a handshake failed, for the app. */
static void tls_failure(const struct ltcp *s, int rc, char *err, size_t errlen)
{
    long v = SSL_get_verify_result(s->ssl);
    unsigned long e = ERR_peek_error();
    if (v != X509_V_OK) {
        snprintf(err, errlen, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    } else if (e) {
        const char *r = ERR_reason_error_string(e);
        snprintf(err, errlen, "tls handshake failed: %s", r ? r : "unknown error");
    } else if (rc == SSL_ERROR_SYSCALL && errno) {
        snprintf(err, errlen, "%s", errno_message(errno));
    } else {
        snprintf(err, errlen, "tls handshake failed: closed");
    }
    ERR_clear_error();
}

static void connect_done(struct ltcp *s)
{
    free(s->sni);
    s->sni = NULL;
    if (s->ctx) {
        SSL_CTX_free(s->ctx);
        s->ctx = NULL;
    }
    lua_pushinteger(lwait_thread(s->t), 1);
    finish(s, 1);
}

static void handshake_step(struct ltcp *s)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_connect(s->ssl);
    if (r == 1) {
        connect_done(s);
        return;
    }
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        want_io(s, EV_READ);
    } else if (e == SSL_ERROR_WANT_WRITE) {
        want_io(s, EV_WRITE);
    } else {
        char err[256];
        tls_failure(s, e, err, sizeof err);
        finish_fail(s, err, 1);
    }
}

static void handshake_start(struct ltcp *s)
{
    s->ssl = SSL_new(s->ctx);
    if (!s->ssl || !SSL_set_fd(s->ssl, s->fd)) {
        finish_fail(s, "out of memory", 1);
        return;
    }
    int verify = SSL_CTX_get_verify_mode(s->ctx) != SSL_VERIFY_NONE;
    if (is_ip_literal(s->sni)) {
        if (verify)
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), s->sni);
    } else {
        SSL_set_tlsext_host_name(s->ssl, s->sni);
        if (verify)
            SSL_set1_host(s->ssl, s->sni);
    }
    s->op = OP_HANDSHAKE;
    handshake_step(s);
}

/* ---- connect ---- */

static void connected(struct ltcp *s)
{
    if (s->ctx)
        handshake_start(s);
    else
        connect_done(s);
}

static void on_resolved(void *data, const char *err, const struct sockaddr *sa, socklen_t salen)
{
    struct ltcp *s = data;
    s->rr = NULL;
    if (err) {
        finish_fail(s, err, 1);
        return;
    }
    s->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        finish_fail(s, errno_message(errno), 1);
        return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s->fd, sa, salen) == 0) {
        connected(s);
    } else if (errno == EINPROGRESS) {
        s->op = OP_CONNECT;
        want_io(s, EV_WRITE);
    } else {
        finish_fail(s, errno_message(errno), 1);
    }
}

static void connect_ready(struct ltcp *s)
{
    int e = 0;
    socklen_t len = sizeof e;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
        e = errno;
    if (e)
        finish_fail(s, errno_message(e), 1);
    else
        connected(s);
}

/* ---- The keepalive pool ---- */

static void pooled_free(struct pooled *p)
{
    struct ltcp_state *st = p->st;
    ev_io_stop(st->loop, &p->io);
    ev_timer_stop(st->loop, &p->idle);
    if (p->prev)
        p->prev->next = p->next;
    else
        st->pool = p->next;
    if (p->next)
        p->next->prev = p->prev;
    ssl_free_conn(p->ssl, p->fd);
    free(p);
}

/* A pooled connection turned readable: the peer closed it or sent
 * something nobody asked for. TLS 1.3 session tickets are the exception:
 * OpenSSL takes them and has nothing for us. */
static void on_pooled_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct pooled *p = (struct pooled *)((char *)w - offsetof(struct pooled, io));
    char c;
    if (p->ssl) {
        ERR_clear_error();
        int r = SSL_read(p->ssl, &c, 1);
        if (r <= 0 && SSL_get_error(p->ssl, r) == SSL_ERROR_WANT_READ) {
            ERR_clear_error();
            return;
        }
        ERR_clear_error();
    } else {
        ssize_t n = recv(p->fd, &c, 1, MSG_PEEK);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
    }
    pooled_free(p);
}

static void on_pooled_idle(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    pooled_free((struct pooled *)((char *)w - offsetof(struct pooled, idle)));
}

/* Take a pooled connection for key, if there is one: 1. The newest first
 * (the one least likely to have been closed by the peer's idle timeout). */
static int pool_take(struct ltcp_state *st, struct ltcp *s, const char *key)
{
    for (struct pooled *p = st->pool; p; p = p->next) {
        if (strcmp(p->key, key))
            continue;
        s->fd = p->fd;
        s->ssl = p->ssl;
        s->reused = p->reused + 1;
        p->fd = -1;
        p->ssl = NULL;
        pooled_free(p);
        return 1;
    }
    return 0;
}

/* The pool key: everything that makes two connections interchangeable. */
static char *pool_key(const char *host, int port, int tls, const char *sni, int verify,
                      const char *ca_file)
{
    char *key;
    int n = tls ? asprintf(&key, "%s:%d tls %s %d %s", host, port, sni, verify,
                           ca_file ? ca_file : "-")
                : asprintf(&key, "%s:%d", host, port);
    return n < 0 ? NULL : key;
}

/* ---- Methods ---- */

static double check_timeout(lua_State *L, int idx, const char *fname)
{
    lua_Number ms = lb_checknumber(L, idx, fname);
    if (!(ms > 0) || isinf(ms))
        lb_argerror(L, idx, fname, "timeout must be a finite number of milliseconds above 0");
    return ms / 1000.0;
}

static const char *opt_string(lua_State *L, int idx, const char *field, const char *fname)
{
    lua_getfield(L, idx, field);
    const char *v = NULL;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) {
            char msg[96];
            snprintf(msg, sizeof msg, "opts.%s must be a string", field);
            lb_argerror(L, idx, fname, msg);
        }
        v = lua_tostring(L, -1); /* opts holds it */
    }
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, int idx, const char *field, int def, const char *fname)
{
    lua_getfield(L, idx, field);
    int v = def;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TBOOLEAN) {
            char msg[96];
            snprintf(msg, sizeof msg, "opts.%s must be a boolean", field);
            lb_argerror(L, idx, fname, msg);
        }
        v = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

/* sock:connect(host, port [, opts]) -> 1 | nil, err */
static int ltcp_connect(lua_State *L)
{
    static const char fname[] = "sock:connect";
    struct ltcp *s = check_sock(L, fname);
    struct ltcp_state *st = lua_touserdata(L, lua_upvalueindex(1));
    size_t hlen;
    const char *host = lb_checklstring(L, 2, fname, &hlen);
    if (hlen == 0 || hlen > 253 || strlen(host) != hlen)
        lb_argerror(L, 2, fname, "host must be a name or an address of 1 to 253 bytes");
    lua_Number portn = lb_checknumber(L, 3, fname);
    if (!(portn >= 1 && portn <= 65535) || portn != floor(portn))
        lb_argerror(L, 3, fname, "port must be an integer from 1 to 65535");
    int port = (int)portn;
    int tls = 0, verify = 1;
    const char *sni = host, *ca_file = NULL;
    if (!lua_isnoneornil(L, 4)) {
        if (!lua_istable(L, 4))
            lb_typeerror(L, 4, fname, "table");
        tls = opt_bool(L, 4, "tls", 0, fname);
        verify = opt_bool(L, 4, "verify", 1, fname);
        const char *name = opt_string(L, 4, "server_name", fname);
        ca_file = opt_string(L, 4, "ca_file", fname);
        if (name) {
            if (!*name || strlen(name) > 253)
                lb_argerror(L, 4, fname, "opts.server_name must be 1 to 253 bytes");
            sni = name;
        }
    }
    if (s->t)
        return push_fail(L, "busy");
    sock_shut(s); /* a connected socket connects anew, as in OpenResty */
    s->reused = 0;
    s->key = pool_key(host, port, tls, sni, verify, ca_file);
    if (!s->key)
        return push_fail(L, "out of memory");
    if (pool_take(st, s, s->key)) {
        lua_pushinteger(L, 1);
        return 1;
    }
    if (tls) {
        char err[512];
        SSL_CTX **shared = verify ? &st->verify_ctx : &st->noverify_ctx;
        if (ca_file && verify) {
            s->ctx = client_ctx_new(1, ca_file, err, sizeof err);
        } else {
            if (!*shared)
                *shared = client_ctx_new(verify, NULL, err, sizeof err);
            if (*shared && SSL_CTX_up_ref(*shared))
                s->ctx = *shared;
        }
        s->sni = strdup(sni);
        if (!s->ctx || !s->sni) {
            if (!s->ctx)
                log_warn("sock:connect: %s", err);
            sock_shut(s);
            return push_fail(L, s->ctx ? "out of memory" : err);
        }
    }
    /* The arguments are checked: from here nothing raises until the yield. */
    begin_wait(L, s, fname, OP_RESOLVE, s->tconnect);
    s->rr = resolve_start(s->loop, host, port, on_resolved, s);
    if (!s->rr) {
        cancel_wait(L, s);
        sock_shut(s);
        return push_fail(L, "out of memory");
    }
    return lwait_yield(L);
}

/* Write what it can: > 0 bytes, 0 (would block: *want says on what) or
 * -1 (*err says why). */
static ssize_t sock_write(struct ltcp *s, const char *p, size_t len, int *want, const char **err)
{
    if (s->ssl) {
        ERR_clear_error();
        int r = SSL_write(s->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
        if (r > 0)
            return r;
        int e = SSL_get_error(s->ssl, r);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            *want = e == SSL_ERROR_WANT_WRITE ? EV_WRITE : EV_READ;
            return 0;
        }
        *err = e == SSL_ERROR_SYSCALL && errno ? errno_message(errno) : "closed";
        return -1;
    }
    for (;;) {
        ssize_t n = send(s->fd, p, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n ? n : 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *want = EV_WRITE;
            return 0;
        }
        *err = errno_message(errno);
        return -1;
    }
}

/* Read what is there into buf: > 0 bytes, 0 at the end of the stream, -1
 * would block (*want), -2 failed (*err). */
static ssize_t sock_read(struct ltcp *s, char *buf, size_t len, int *want, const char **err)
{
    if (s->ssl) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_read(s->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
        if (r > 0)
            return r;
        int e = SSL_get_error(s->ssl, r);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            *want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
            return -1;
        }
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !errno))
            return 0;
        *err = e == SSL_ERROR_SYSCALL ? errno_message(errno) : "tls error";
        return -2;
    }
    for (;;) {
        ssize_t n = recv(s->fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *want = EV_READ;
            return -1;
        }
        *err = errno_message(errno);
        return -2;
    }
}

/* The data to send, at idx: a string, or a table (an array) of strings
 * and numbers, joined. Pushes the string and returns it. */
static const char *send_data(lua_State *L, int idx, size_t *len)
{
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        lua_pushvalue(L, idx);
        return lua_tolstring(L, -1, len);
    }
    if (t != LUA_TTABLE)
        lb_typeerror(L, idx, "sock:send", "string or table of strings");
    luaL_Buffer b;
    size_t n = lua_objlen(L, idx);
    for (size_t i = 1; i <= n; i++) { /* check first: a luaL_Buffer must not raise midway */
        lua_rawgeti(L, idx, (int)i);
        int it = lua_type(L, -1);
        lua_pop(L, 1);
        if (it != LUA_TSTRING && it != LUA_TNUMBER) {
            char msg[96];
            snprintf(msg, sizeof msg, "element %zu of the table is a %s, not a string", i,
                     lua_typename(L, it));
            lb_argerror(L, idx, "sock:send", msg);
        }
    }
    luaL_buffinit(L, &b);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    return lua_tolstring(L, -1, len);
}

static void send_step(struct ltcp *s)
{
    while (s->soff < s->slen) {
        int want = 0;
        const char *err = NULL;
        ssize_t n = sock_write(s, s->sbuf + s->soff, s->slen - s->soff, &want, &err);
        if (n < 0) {
            finish_fail(s, err, 1);
            return;
        }
        if (n == 0) {
            want_io(s, want);
            return;
        }
        s->soff += (size_t)n;
    }
    free(s->sbuf);
    s->sbuf = NULL;
    s->soff = s->slen = 0;
    lua_pushinteger(lwait_thread(s->t), (lua_Integer)s->stotal);
    finish(s, 1);
}

/* sock:send(data) -> bytes sent | nil, err */
static int ltcp_send(lua_State *L)
{
    static const char fname[] = "sock:send";
    struct ltcp *s = check_sock(L, fname);
    if (lua_isnone(L, 2))
        lb_typeerror(L, 2, fname, "string or table of strings");
    size_t len;
    const char *data = send_data(L, 2, &len);
    if (s->t)
        return push_fail(L, "busy");
    if (s->fd < 0)
        return push_fail(L, "closed");
    size_t off = 0;
    while (off < len) {
        int want = 0;
        const char *err = NULL;
        ssize_t n = sock_write(s, data + off, len - off, &want, &err);
        if (n < 0) {
            sock_shut(s);
            return push_fail(L, err);
        }
        if (n == 0) { /* the kernel's buffer is full: keep the rest and wait */
            begin_wait(L, s, fname, OP_SEND, s->tsend); /* may raise: before the copy */
            s->sbuf = malloc(len - off);
            if (!s->sbuf) {
                cancel_wait(L, s);
                sock_shut(s); /* part of it went: the stream is of no use now */
                return push_fail(L, "out of memory");
            }
            memcpy(s->sbuf, data + off, len - off);
            s->soff = 0;
            s->slen = len - off;
            s->stotal = len;
            want_io(s, want);
            return lwait_yield(L);
        }
        off += (size_t)n;
    }
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
}

/* ---- receive ---- */

static void rbuf_consume(struct ltcp *s, size_t n)
{
    s->rpos += n;
    s->rscan = 0;
    if (s->rpos == s->rlen) {
        s->rpos = s->rlen = 0;
        if (s->rcap > KEEP_RBUF) {
            free(s->rbuf);
            s->rbuf = NULL;
            s->rcap = 0;
        }
    }
}

/* Room for at least `room` more bytes after rlen. 0 or -1. */
static int rbuf_reserve(struct ltcp *s, size_t room)
{
    if (s->rpos && s->rcap - s->rlen < room) { /* move what is left to the front first */
        memmove(s->rbuf, s->rbuf + s->rpos, s->rlen - s->rpos);
        s->rlen -= s->rpos;
        s->rpos = 0;
    }
    if (s->rcap - s->rlen >= room)
        return 0;
    size_t cap = s->rcap ? s->rcap : READ_CHUNK;
    while (cap - s->rlen < room)
        cap *= 2;
    char *b = realloc(s->rbuf, cap);
    if (!b)
        return -1;
    s->rbuf = b;
    s->rcap = cap;
    return 0;
}

/* Push what is buffered as the partial result and consume it. */
static void push_partial(lua_State *L, struct ltcp *s)
{
    lua_pushlstring(L, s->rbuf ? s->rbuf + s->rpos : "", s->rlen - s->rpos);
    rbuf_consume(s, s->rlen - s->rpos);
}

/* Try to complete the receive under way from the buffer and the socket.
 * Returns the number of results pushed on L, or 0: wait for *want. */
static int recv_step(lua_State *L, struct ltcp *s, int *want)
{
    for (;;) {
        size_t avail = s->rlen - s->rpos;
        if (s->rmode == RM_N && avail >= s->rwant) {
            lua_pushlstring(L, s->rbuf ? s->rbuf + s->rpos : "", s->rwant);
            rbuf_consume(s, s->rwant);
            return 1;
        }
        if (s->rmode == RM_LINE && avail > s->rscan) {
            char *start = s->rbuf + s->rpos;
            char *nl = memchr(start + s->rscan, '\n', avail - s->rscan);
            if (nl && (size_t)(nl - start) <= s->limit) {
                size_t n = (size_t)(nl - start);
                lua_pushlstring(L, start, n && nl[-1] == '\r' ? n - 1 : n);
                rbuf_consume(s, n + 1);
                return 1;
            }
            s->rscan = avail; /* a line end past the limit is caught just below */
        }
        if (s->rmode != RM_N && avail > s->limit) {
            lua_pushnil(L);
            lua_pushstring(L, s->rmode == RM_LINE ? "line too long" : "too large");
            sock_shut(s); /* the rest of the stream cannot be made sense of */
            return 2;
        }
        size_t room = READ_CHUNK;
        if (s->rmode == RM_N && s->rwant - avail > room)
            room = s->rwant - avail < 4 * 1024 * 1024 ? s->rwant - avail : 4 * 1024 * 1024;
        if (rbuf_reserve(s, room)) {
            lua_pushnil(L);
            lua_pushliteral(L, "out of memory");
            return 2;
        }
        const char *err = NULL;
        ssize_t n = sock_read(s, s->rbuf + s->rlen, s->rcap - s->rlen, want, &err);
        if (n > 0) {
            s->rlen += (size_t)n;
            continue;
        }
        if (n == -1)
            return 0;
        if (n == 0 && s->rmode == RM_ALL) { /* "*a": everything to the end */
            push_partial(L, s);
            sock_shut(s);
            return 1;
        }
        lua_pushnil(L);
        lua_pushstring(L, n == 0 ? "closed" : err);
        push_partial(L, s);
        sock_shut(s);
        return 3;
    }
}

static void recv_ready(struct ltcp *s)
{
    lua_State *co = lwait_thread(s->t);
    int want = 0;
    int n = recv_step(co, s, &want);
    if (n)
        finish(s, n);
    else
        want_io(s, want);
}

/* sock:receive([pattern]) -> data | nil, err, partial. pattern: a byte
 * count, "*l" (a line, without its CR LF or LF: the default) or "*a"
 * (everything until the peer closes). */
static int ltcp_receive(lua_State *L)
{
    static const char fname[] = "sock:receive";
    struct ltcp *s = check_sock(L, fname);
    int mode = RM_LINE;
    size_t want_n = 0;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, 2);
        if (!(n >= 0 && n <= (lua_Number)INT32_MAX) || n != floor(n))
            lb_argerror(L, 2, fname, "size must be an integer from 0 to 2^31 - 1");
        mode = RM_N;
        want_n = (size_t)n;
    } else if (!lua_isnoneornil(L, 2)) {
        const char *p = lua_tostring(L, 2);
        if (!p)
            lb_typeerror(L, 2, fname, "number or string");
        if (!strcmp(p, "*l") || !strcmp(p, "l"))
            mode = RM_LINE;
        else if (!strcmp(p, "*a") || !strcmp(p, "a"))
            mode = RM_ALL;
        else
            lb_argerror(L, 2, fname, "pattern must be a size, \"*l\" or \"*a\"");
    }
    if (s->t)
        return push_fail(L, "busy");
    if (s->fd < 0)
        return push_fail(L, "closed");
    s->rmode = (uint8_t)mode;
    s->rwant = want_n;
    s->rscan = 0;
    int want = 0;
    int n = recv_step(L, s, &want);
    if (n)
        return n;
    begin_wait(L, s, fname, OP_RECV, s->tread);
    want_io(s, want);
    return lwait_yield(L);
}

/* ---- Watchers ---- */

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ltcp *s = (struct ltcp *)((char *)w - offsetof(struct ltcp, io));
    switch (s->op) {
    case OP_CONNECT:
        connect_ready(s);
        break;
    case OP_HANDSHAKE:
        handshake_step(s);
        break;
    case OP_SEND:
        send_step(s);
        break;
    case OP_RECV:
        recv_ready(s);
        break;
    default:
        ev_io_stop(s->loop, w);
    }
}

static void on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ltcp *s = (struct ltcp *)((char *)w - offsetof(struct ltcp, timer));
    if (!s->t)
        return;
    if (s->op == OP_RECV) { /* the socket stays usable, as in OpenResty */
        lua_State *co = lwait_thread(s->t);
        lua_pushnil(co);
        lua_pushliteral(co, "timeout");
        push_partial(co, s);
        finish(s, 3);
        return;
    }
    finish_fail(s, "timeout", 1); /* connect, send: the stream's state is unknown */
}

/* ---- Methods that do not wait ---- */

/* sock:close() -> 1 | nil, "closed". A wait on the socket (from another
 * task) ends with nil, "closed". */
static int ltcp_close(lua_State *L)
{
    struct ltcp *s = check_sock(L, "sock:close");
    if (s->t) {
        lua_State *co = lwait_thread(s->t);
        int partial = s->op == OP_RECV;
        lua_pushnil(co);
        lua_pushliteral(co, "closed");
        if (partial)
            push_partial(co, s);
        sock_shut(s);
        finish(s, partial ? 3 : 2);
        lua_pushinteger(L, 1);
        return 1;
    }
    if (s->fd < 0)
        return push_fail(L, "closed");
    sock_shut(s);
    lua_pushinteger(L, 1);
    return 1;
}

/* sock:settimeout(ms): connect, send and read timeouts at once. */
static int ltcp_settimeout(lua_State *L)
{
    struct ltcp *s = check_sock(L, "sock:settimeout");
    s->tconnect = s->tsend = s->tread = check_timeout(L, 2, "sock:settimeout");
    return 0;
}

/* sock:settimeouts(connect_ms, send_ms, read_ms) */
static int ltcp_settimeouts(lua_State *L)
{
    static const char fname[] = "sock:settimeouts";
    struct ltcp *s = check_sock(L, fname);
    double c = check_timeout(L, 2, fname), w = check_timeout(L, 3, fname),
           r = check_timeout(L, 4, fname);
    s->tconnect = c;
    s->tsend = w;
    s->tread = r;
    return 0;
}

/* sock:setreceivelimit(bytes): the most "*l" and "*a" may buffer. */
static int ltcp_setreceivelimit(lua_State *L)
{
    static const char fname[] = "sock:setreceivelimit";
    struct ltcp *s = check_sock(L, fname);
    lua_Number n = lb_checknumber(L, 2, fname);
    if (!(n >= 1 && n <= (lua_Number)INT32_MAX))
        lb_argerror(L, 2, fname, "limit must be from 1 to 2^31 - 1 bytes");
    s->limit = (size_t)n;
    return 0;
}

/* sock:getreusedtimes() -> how many times this connection came from the pool. */
static int ltcp_getreusedtimes(lua_State *L)
{
    struct ltcp *s = check_sock(L, "sock:getreusedtimes");
    if (s->fd < 0)
        return push_fail(L, "closed");
    lua_pushinteger(L, s->reused);
    return 1;
}

/* sock:setkeepalive([idle_ms [, pool_size]]) -> 1 | nil, err: the
 * connection goes to this worker's pool and the object is closed. */
static int ltcp_setkeepalive(lua_State *L)
{
    static const char fname[] = "sock:setkeepalive";
    struct ltcp *s = check_sock(L, fname);
    struct ltcp_state *st = lua_touserdata(L, lua_upvalueindex(1));
    double idle = lua_isnoneornil(L, 2) ? DEFAULT_IDLE : check_timeout(L, 2, fname);
    lua_Integer size = lb_optinteger(L, 3, fname, DEFAULT_POOL);
    if (size < 1 || size > 100000)
        lb_argerror(L, 3, fname, "pool size must be from 1 to 100000");
    if (s->t)
        return push_fail(L, "busy");
    if (s->fd < 0)
        return push_fail(L, "closed");
    if (s->rlen > s->rpos || (s->ssl && SSL_pending(s->ssl))) {
        sock_shut(s); /* not reusable: what follows is someone else's answer */
        return push_fail(L, "unread data in buffer");
    }
    size_t klen = strlen(s->key);
    struct pooled *p = malloc(sizeof *p + klen + 1);
    if (!p) {
        sock_shut(s);
        return push_fail(L, "out of memory");
    }
    memcpy(p->key, s->key, klen + 1);
    p->st = st;
    p->fd = s->fd;
    p->ssl = s->ssl;
    p->reused = s->reused;
    s->fd = -1;
    s->ssl = NULL;
    sock_shut(s);
    /* Over the pool's size for this key: the oldest goes. */
    struct pooled *last = NULL;
    long n = 0;
    for (struct pooled *q = st->pool; q; q = q->next) {
        if (!strcmp(q->key, p->key)) {
            n++;
            last = q;
        }
    }
    if (n >= size && last)
        pooled_free(last);
    p->prev = NULL;
    p->next = st->pool;
    if (st->pool)
        st->pool->prev = p;
    st->pool = p;
    ev_io_init(&p->io, on_pooled_readable, p->fd, EV_READ);
    ev_io_start(st->loop, &p->io);
    ev_timer_init(&p->idle, on_pooled_idle, idle, 0);
    ev_timer_start(st->loop, &p->idle);
    lua_pushinteger(L, 1);
    return 1;
}

static int ltcp_gc(lua_State *L)
{
    struct ltcp *s = luaL_checkudata(L, 1, LTCP_MT);
    sock_shut(s); /* a task still waiting here is being freed with the state */
    s->t = NULL;
    return 0;
}

static int ltcp_tostring(lua_State *L)
{
    struct ltcp *s = luaL_checkudata(L, 1, LTCP_MT);
    lua_pushfstring(L, "tcp socket (%s): %p", s->fd >= 0 ? "connected" : "closed", (void *)s);
    return 1;
}

/* moonport.tcp() -> a new, closed socket object. */
static int ltcp_new(lua_State *L)
{
    struct ltcp_state *st = lua_touserdata(L, lua_upvalueindex(1));
    struct ltcp *s = lua_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    s->loop = st->loop;
    s->fd = -1;
    s->self_ref = LUA_NOREF;
    s->tconnect = s->tsend = s->tread = DEFAULT_TIMEOUT;
    s->limit = DEFAULT_LIMIT;
    ev_io_init(&s->io, on_io, -1, EV_READ);
    ev_timer_init(&s->timer, on_timeout, 0, 0);
    luaL_getmetatable(L, LTCP_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int state_gc(lua_State *L)
{
    struct ltcp_state *st = lua_touserdata(L, 1);
    while (st->pool)
        pooled_free(st->pool);
    SSL_CTX_free(st->verify_ctx);
    SSL_CTX_free(st->noverify_ctx);
    st->verify_ctx = st->noverify_ctx = NULL;
    return 0;
}

void ltcp_open(lua_State *L, struct server *srv)
{
    struct ltcp_state *st = lua_newuserdata(L, sizeof *st); /* the module table is below */
    memset(st, 0, sizeof *st);
    st->loop = srv->loop;
    luaL_newmetatable(L, LTCP_STATE_MT);
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    luaL_ref(L, LUA_REGISTRYINDEX); /* for the life of the state */

    luaL_newmetatable(L, LTCP_MT);
    lua_newtable(L); /* __index */
    lua_pushvalue(L, -3);
    lwait_pushfunction(L, ltcp_connect, "sock:connect", 1);
    lua_setfield(L, -2, "connect");
    lwait_pushfunction(L, ltcp_send, "sock:send", 0);
    lua_setfield(L, -2, "send");
    lwait_pushfunction(L, ltcp_receive, "sock:receive", 0);
    lua_setfield(L, -2, "receive");
    static const luaL_Reg plain[] = {
        {"close", ltcp_close},
        {"settimeout", ltcp_settimeout},
        {"settimeouts", ltcp_settimeouts},
        {"setreceivelimit", ltcp_setreceivelimit},
        {"getreusedtimes", ltcp_getreusedtimes},
        {NULL, NULL},
    };
    for (const luaL_Reg *f = plain; f->name; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -2, f->name);
    }
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, ltcp_setkeepalive, 1);
    lua_setfield(L, -2, "setkeepalive");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ltcp_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, ltcp_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "tcp socket");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1); /* the metatable */

    lua_pushcclosure(L, ltcp_new, 1); /* st */
    lua_setfield(L, -2, "tcp");
}
