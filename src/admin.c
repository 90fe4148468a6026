/* admin: the operator's HTTP listener. See admin.h.
 *
 * It is small on purpose: one request per connection, answered whole and
 * closed, at most ADMIN_CONNS connections at once (more are closed at
 * accept), each given ADMIN_TIMEOUT seconds; a scrape of /metrics costs the
 * loop one rendering of the counts, which does not depend on how many
 * connections are open. */
#include "admin.h"

#include <dirent.h>
#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "handshake.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

#define ADMIN_CONNS 64
#define ADMIN_TIMEOUT 10.0
#define ADMIN_READ 4096

struct admin_conn {
    ev_io io;
    ev_timer timer;
    struct admin *a;
    struct admin_conn *prev, *next;
    struct hs_request *hs; /* NULL once answered */
    struct buf out;
};

struct admin {
    struct server *s;
    ev_io accept_w;
    struct admin_conn *conns;
    unsigned nconns;
};

int admin_listen(const char *addr, char *bound, size_t boundlen, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    const char *h = addr;
    size_t hlen = colon ? (size_t)(colon - addr) : 0;
    if (hlen >= 2 && addr[0] == '[' && addr[hlen - 1] == ']') { /* [::1]:9090 */
        h++;
        hlen -= 2;
    }
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || hlen == 0 || hlen >= sizeof host || colon[1] == 0 || *end || port < 0 ||
        port > 65535) {
        snprintf(err, errlen, "admin: '%s' is not HOST:PORT (say 127.0.0.1:9090)", addr);
        return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = 0;
    char why[512];
    int fd = server_open_host(host, (int)port, 0, why, sizeof why);
    if (fd < 0) {
        snprintf(err, errlen, "admin: %s", why);
        return -1;
    }
    snprintf(bound, boundlen, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, server_port_of(fd));
    return fd;
}

static void conn_end(struct admin_conn *ac)
{
    struct admin *a = ac->a;
    struct ev_loop *loop = a->s->loop;
    ev_io_stop(loop, &ac->io);
    ev_timer_stop(loop, &ac->timer);
    close(ac->io.fd);
    hs_free(ac->hs);
    buf_reset(&ac->out);
    if (ac->prev)
        ac->prev->next = ac->next;
    else
        a->conns = ac->next;
    if (ac->next)
        ac->next->prev = ac->prev;
    a->nconns--;
    free(ac);
}

/* The memory and descriptors of the workers that count in blocks. */
static void read_process(const struct metrics *blocks, unsigned n, struct metrics_process *p)
{
    long page = sysconf(_SC_PAGESIZE);
    memset(p, 0, sizeof *p);
    for (unsigned w = 0; w < n; w++) {
        int pid = __atomic_load_n(&blocks[w].pid, __ATOMIC_RELAXED);
        if (!__atomic_load_n(&blocks[w].live, __ATOMIC_RELAXED) || pid <= 0)
            continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/statm", pid);
        FILE *f = fopen(path, "r");
        unsigned long size, resident;
        if (f && fscanf(f, "%lu %lu", &size, &resident) == 2)
            p->rss_bytes += (uint64_t)resident * (uint64_t)page;
        if (f)
            fclose(f);
        snprintf(path, sizeof path, "/proc/%d/fd", pid);
        DIR *d = opendir(path);
        if (!d)
            continue;
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.')
                p->open_fds++;
        closedir(d);
    }
}

static void respond(struct admin_conn *ac, int status, const char *extra, const char *type,
                    const void *body, size_t len, int head_only)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                     status, hs_reason(status), type, len, extra ? extra : "");
    buf_reset(&ac->out);
    if (buf_append(&ac->out, head, (size_t)n) || (!head_only && buf_append(&ac->out, body, len))) {
        log_warn("admin: out of memory for an answer");
        buf_reset(&ac->out);
    }
    hs_free(ac->hs);
    ac->hs = NULL;
    ev_io_stop(ac->a->s->loop, &ac->io);
    ev_io_set(&ac->io, ac->io.fd, EV_WRITE);
    ev_io_start(ac->a->s->loop, &ac->io);
}

static void respond_text(struct admin_conn *ac, int status, const char *extra, const char *text,
                         int head_only)
{
    respond(ac, status, extra, "text/plain; charset=utf-8", text, strlen(text), head_only);
}

static void answer(struct admin_conn *ac)
{
    struct server *s = ac->a->s;
    const char *method = hs_method(ac->hs), *target = hs_target(ac->hs);
    size_t plen = strcspn(target, "?#");
    int head_only = strcmp(method, "HEAD") == 0;
    int metrics = plen == 8 && memcmp(target, "/metrics", 8) == 0;
    int healthz = plen == 8 && memcmp(target, "/healthz", 8) == 0;
    if (!metrics && !healthz) {
        respond_text(ac, 404, NULL, "not found: the admin port serves /metrics and /healthz\n",
                     head_only);
        return;
    }
    if (strcmp(method, "GET") != 0 && !head_only) {
        respond_text(ac, 405, "Allow: GET, HEAD\r\n", "only GET and HEAD\n", 0);
        return;
    }
    if (healthz) {
        if (s->shutting_down)
            respond_text(ac, 503, NULL, "draining\n", head_only);
        else
            respond_text(ac, 200, NULL, "ok\n", head_only);
        return;
    }
    struct metrics_process proc;
    read_process(s->metrics_all, s->metrics_n, &proc);
    struct buf body = {0};
    if (metrics_render(&body, s->metrics_all, s->metrics_n, &proc, s->shutting_down)) {
        buf_reset(&body);
        respond_text(ac, 500, NULL, "out of memory\n", head_only);
        return;
    }
    respond(ac, 200, NULL, "text/plain; version=0.0.4; charset=utf-8", buf_head(&body),
            buf_pending(&body), head_only);
    buf_reset(&body);
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct admin_conn *ac = (struct admin_conn *)w;
    if (ac->hs) { /* reading the request */
        char data[ADMIN_READ];
        ssize_t n = recv(w->fd, data, sizeof data, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            conn_end(ac);
            return;
        }
        size_t used;
        int r = hs_feed(ac->hs, data, (size_t)n, &used);
        if (r == HS_ERROR) {
            log_info("admin: bad request: %d %s", hs_status(ac->hs), hs_error(ac->hs));
            char text[256];
            snprintf(text, sizeof text, "%d %s\n", hs_status(ac->hs), hs_reason(hs_status(ac->hs)));
            respond_text(ac, hs_status(ac->hs), NULL, text, 0);
        } else if (r == HS_DONE) {
            answer(ac);
        }
        return;
    }
    while (buf_pending(&ac->out)) { /* writing the answer */
        ssize_t n = send(w->fd, buf_head(&ac->out), buf_pending(&ac->out), MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n < 0)
            break;
        buf_consume(&ac->out, (size_t)n);
    }
    conn_end(ac);
}

static void on_conn_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct admin_conn *ac = (struct admin_conn *)((char *)w - offsetof(struct admin_conn, timer));
    log_info("admin: a request took over %.0f s: closing", ADMIN_TIMEOUT);
    conn_end(ac);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct admin *a = (struct admin *)((char *)w - offsetof(struct admin, accept_w));
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                log_warn("admin: accept: %s", strerror(errno));
            return;
        }
        struct admin_conn *ac = a->nconns < ADMIN_CONNS ? calloc(1, sizeof *ac) : NULL;
        const struct config *cfg = a->s->cfg;
        if (ac && !(ac->hs = hs_new(cfg->max_head, cfg->max_headers))) {
            free(ac);
            ac = NULL;
        }
        if (!ac) {
            log_warn("admin: %s: closing a request unread",
                     a->nconns < ADMIN_CONNS ? "out of memory" : "too many admin requests at once");
            close(fd);
            continue;
        }
        ac->a = a;
        ac->next = a->conns;
        if (a->conns)
            a->conns->prev = ac;
        a->conns = ac;
        a->nconns++;
        ev_io_init(&ac->io, on_conn_io, fd, EV_READ);
        ev_io_start(loop, &ac->io);
        ev_timer_init(&ac->timer, on_conn_timeout, ADMIN_TIMEOUT, 0);
        ev_timer_start(loop, &ac->timer);
    }
}

struct admin *admin_start(struct server *s, int fd)
{
    struct admin *a = calloc(1, sizeof *a);
    if (!a) {
        close(fd);
        return NULL;
    }
    a->s = s;
    ev_io_init(&a->accept_w, on_accept, fd, EV_READ);
    ev_io_start(s->loop, &a->accept_w);
    return a;
}

void admin_free(struct admin *a)
{
    if (!a)
        return;
    while (a->conns)
        conn_end(a->conns);
    ev_io_stop(a->s->loop, &a->accept_w);
    close(a->accept_w.fd);
    free(a);
}
