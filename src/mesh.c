/* mesh: publishes between workers. See mesh.h.
 *
 * A message travels as one or more packets of at most MESH_CHUNK bytes of
 * payload, each with a header; the first carries the topic. A SEQPACKET
 * receive reads one whole packet, so a worker that replaces a dead one
 * (and reads what was sent to its predecessor) finds packet boundaries:
 * it drops the tail of a message whose start it never saw. */
#include "mesh.h"

#include <errno.h>
#include <ev.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lbridge.h"
#include "log.h"
#include "pubsub.h"
#include "reload.h"
#include "server.h"
#include "topic.h"

#define MESH_CHUNK (32 * 1024)
#define FIRST 1
#define LAST 2

struct packet_head {
    uint8_t flags, opcode;
    uint16_t tlen;
    uint32_t unused;
    uint64_t dlen; /* the whole message's payload */
};

#define PACKET_MAX (sizeof(struct packet_head) + TOPIC_NAME_MAX + MESH_CHUNK)

/* A packet the link could not take yet. */
struct packet {
    struct packet *next;
    size_t len;
    uint8_t bytes[];
};

struct peer {
    struct mesh *m;
    unsigned worker;
    int fd; /* -1: this worker */
    ev_io rw, ww;
    struct packet *head, *tail;
    size_t queued; /* bytes in the queue */
    uint64_t dropped; /* messages dropped since the last log line */
    ev_tstamp dropped_logged;
    /* A message arriving in several packets: topic then payload so far. */
    uint8_t *part;
    size_t part_len, part_size;
    uint16_t part_tlen;
    uint8_t part_opcode;
};

struct mesh {
    struct server *s;
    unsigned n;
    uint8_t *rbuf; /* PACKET_MAX */
    struct peer peers[];
};

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

static void drop_part(struct peer *p)
{
    free(p->part);
    p->part = NULL;
    p->part_len = p->part_size = 0;
}

/* The opcode of a packet that is no publish: a worker's word on a reload,
 * to worker 1 (reload_note): the "topic" is the app's name, the payload one
 * byte, 1 if the reload went well. */
#define NOTE_RELOAD 0

static void deliver(struct mesh *m, const uint8_t *topic, size_t tlen, uint8_t opcode,
                    const uint8_t *data, size_t dlen)
{
    struct lb_call hold;
    lbridge_hold(m->s->lb, &hold);
    pubsub_deliver(m->s, (const char *)topic, tlen, opcode, data, dlen, NULL);
    lbridge_unhold(m->s->lb, &hold);
}

static void take_packet(struct peer *p, const uint8_t *b, size_t len)
{
    struct packet_head h;
    if (len < sizeof h)
        return;
    memcpy(&h, b, sizeof h);
    b += sizeof h;
    len -= sizeof h;
    if (h.flags & FIRST) {
        drop_part(p);
        if (h.tlen == 0 || h.tlen > TOPIC_NAME_MAX || len < h.tlen)
            return;
        if (h.flags & LAST) {
            if (len - h.tlen != h.dlen)
                return;
            if (h.opcode == NOTE_RELOAD) {
                if (h.dlen == 1)
                    reload_note(p->m->s, p->worker, (const char *)b, h.tlen, b[h.tlen] == 1);
                return;
            }
            deliver(p->m, b, h.tlen, h.opcode, b + h.tlen, h.dlen); /* no copy */
            return;
        }
        if (h.opcode == NOTE_RELOAD)
            return; /* a note is one packet */
        if (h.dlen > SIZE_MAX - h.tlen || !(p->part = malloc(h.tlen + h.dlen))) {
            log_error("publish from worker %u: no memory for a message of %llu bytes; dropped",
                      p->worker, (unsigned long long)h.dlen);
            return;
        }
        p->part_size = h.tlen + h.dlen;
        p->part_tlen = h.tlen;
        p->part_opcode = h.opcode;
    } else if (!p->part) {
        return; /* the rest of a message this worker did not see begin */
    }
    if (len > p->part_size - p->part_len) {
        drop_part(p);
        return;
    }
    memcpy(p->part + p->part_len, b, len);
    p->part_len += len;
    if (h.flags & LAST) {
        if (p->part_len == p->part_size)
            deliver(p->m, p->part, p->part_tlen, p->part_opcode, p->part + p->part_tlen,
                    p->part_size - p->part_tlen);
        drop_part(p);
    }
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct peer *p = container_of(w, struct peer, rw);
    for (int i = 0; i < 256; i++) { /* bounded: let the connections run too */
        ssize_t r = recv(p->fd, p->m->rbuf, PACKET_MAX, MSG_DONTWAIT);
        if (r < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                log_error("link to worker %u: %s; no more publishes from it", p->worker,
                          strerror(errno));
                ev_io_stop(loop, w);
            }
            return;
        }
        if (r == 0) { /* only when the master is gone: this worker is ending */
            ev_io_stop(loop, w);
            return;
        }
        take_packet(p, p->m->rbuf, (size_t)r);
    }
}

static void free_queue(struct peer *p)
{
    while (p->head) {
        struct packet *k = p->head;
        p->head = k->next;
        free(k);
    }
    p->tail = NULL;
    p->queued = 0;
}

static void count_drop(struct peer *p, const char *why)
{
    p->dropped++;
    ev_tstamp now = ev_now(p->m->s->loop);
    if (now - p->dropped_logged >= 1) { /* a line a second at most, with the count */
        log_warn("publish to worker %u: %llu message(s) dropped: %s", p->worker,
                 (unsigned long long)p->dropped, why);
        p->dropped = 0;
        p->dropped_logged = now;
    }
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct peer *p = container_of(w, struct peer, ww);
    while (p->head) {
        struct packet *k = p->head;
        ssize_t r = send(p->fd, k->bytes, k->len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            log_error("link to worker %u: %s; %zu queued bytes dropped", p->worker,
                      strerror(errno), p->queued);
            free_queue(p);
            break;
        }
        p->head = k->next;
        p->queued -= k->len;
        free(k);
    }
    p->tail = NULL;
    ev_io_stop(loop, w);
}

static int enqueue(struct peer *p, const struct iovec *iov, int niov)
{
    size_t len = 0;
    for (int i = 0; i < niov; i++)
        len += iov[i].iov_len;
    struct packet *k = malloc(sizeof *k + len);
    if (!k)
        return -1;
    k->next = NULL;
    k->len = len;
    size_t off = 0;
    for (int i = 0; i < niov; i++) {
        memcpy(k->bytes + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    if (p->tail)
        p->tail->next = k;
    else
        p->head = k;
    p->tail = k;
    p->queued += len;
    return 0;
}

static void send_to(struct peer *p, const char *topic, size_t tlen, uint8_t opcode,
                    const uint8_t *data, size_t dlen)
{
    size_t npackets = dlen ? (dlen + MESH_CHUNK - 1) / MESH_CHUNK : 1;
    size_t total = npackets * sizeof(struct packet_head) + tlen + dlen;
    if (p->queued && (total > MESH_QUEUE_MAX || p->queued > MESH_QUEUE_MAX - total)) {
        count_drop(p, "the worker does not keep up (its queue is full)");
        return;
    }
    int queue = p->head != NULL; /* behind what waits: keep the order */
    size_t off = 0;
    for (size_t i = 0; i < npackets; i++) {
        size_t chunk = dlen - off < MESH_CHUNK ? dlen - off : MESH_CHUNK;
        struct packet_head h = {(uint8_t)((i == 0 ? FIRST : 0) | (i == npackets - 1 ? LAST : 0)),
                                opcode, (uint16_t)tlen, 0, dlen};
        struct iovec iov[3] = {{&h, sizeof h},
                               {(void *)topic, i == 0 ? tlen : 0},
                               {(void *)(data + off), chunk}};
        off += chunk;
        if (!queue) {
            struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 3};
            if (sendmsg(p->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                count_drop(p, strerror(errno));
                return;
            }
            queue = 1;
            if (total > MESH_QUEUE_MAX) { /* never fits: drop the rest */
                count_drop(p, "larger than a worker's queue");
                return;
            }
        }
        if (enqueue(p, iov, 3)) {
            count_drop(p, "out of memory");
            return;
        }
    }
    if (queue && !ev_is_active(&p->ww))
        ev_io_start(p->m->s->loop, &p->ww);
}

void mesh_publish(struct mesh *m, const char *topic, size_t tlen, uint8_t opcode,
                  const void *data, size_t dlen)
{
    for (unsigned i = 0; i < m->n; i++)
        if (m->peers[i].fd >= 0)
            send_to(&m->peers[i], topic, tlen, opcode, data, dlen);
}

void mesh_note_reload(struct mesh *m, unsigned worker, const char *name, size_t len, int ok)
{
    uint8_t b = ok ? 1 : 0;
    if (worker < 1 || worker > m->n || m->peers[worker - 1].fd < 0 || len == 0)
        return;
    if (len > TOPIC_NAME_MAX)
        len = TOPIC_NAME_MAX;
    send_to(&m->peers[worker - 1], name, len, NOTE_RELOAD, &b, 1);
}

struct mesh *mesh_new(struct server *s, const int *fds)
{
    struct mesh *m = calloc(1, sizeof *m + s->nworkers * sizeof m->peers[0]);
    if (!m || !(m->rbuf = malloc(PACKET_MAX))) {
        free(m);
        return NULL;
    }
    m->s = s;
    m->n = s->nworkers;
    for (unsigned i = 0; i < m->n; i++) {
        struct peer *p = &m->peers[i];
        p->m = m;
        p->worker = i + 1;
        p->fd = fds[i];
        if (p->fd < 0)
            continue;
        ev_io_init(&p->rw, on_read, p->fd, EV_READ);
        ev_io_init(&p->ww, on_write, p->fd, EV_WRITE);
        ev_io_start(s->loop, &p->rw);
    }
    return m;
}

void mesh_free(struct mesh *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < m->n; i++) {
        struct peer *p = &m->peers[i];
        if (p->fd < 0)
            continue;
        ev_io_stop(m->s->loop, &p->rw);
        ev_io_stop(m->s->loop, &p->ww);
        close(p->fd);
        free_queue(p);
        drop_part(p);
    }
    free(m->rbuf);
    free(m);
}
