/* pubsub: topics for connections. See pubsub.h.
 *
 * Compression. moonport always agrees to permessage-deflate with
 * server_no_context_takeover (compress.h): every message it sends is
 * compressed on its own, from an empty window, so a compressed frame does
 * not depend on what the connection was sent before and one frame is valid
 * for every connection that agreed to compression. What can differ is the
 * window a client allowed (server_max_window_bits, 8 to 15): a message
 * compressed with a window of w bits is valid for any connection that
 * allowed w or more (RFC 7692 7.1.2.1 limits what the server may use, not
 * what it must). So a publish compresses once, with the smallest window
 * among the topic's compressing subscribers (the topic counts its
 * subscribers per window: topic_classes), and that frame, with RSV1, goes
 * to all of them; the others, and everyone when compression would not make
 * the message smaller or it is under compression.threshold, get the plain
 * frame. Each frame is made only if someone gets it. */
#include "pubsub.h"

#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "backplane.h"
#include "compress.h"
#include "conn.h"
#include "mesh.h"
#include "metrics.h"
#include "server.h"
#include "topic.h"

/* A connection's class in the topic table: its deflate window (8..15), or
 * 0 when it did not agree to compression. */
static unsigned conn_class(const struct conn *c)
{
    return c->deflate ? (unsigned)conn_deflate_window(c) : 0;
}

static struct topic_table *table(struct server *s)
{
    if (!s->topics) {
        uint64_t seed;
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
            seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
        s->topics = topic_table_new(seed);
        if (s->topics && s->bp) /* subscribe in Redis what has subscribers here */
            topic_table_watch(s->topics, backplane_watch, s->bp);
    }
    return s->topics;
}

int pubsub_subscribe(struct server *s, struct conn *c, const char *name, size_t len)
{
    struct topic_table *tt = table(s);
    return tt ? topic_subscribe(tt, c, conn_class(c), name, len) : -1;
}

int pubsub_unsubscribe(struct server *s, struct conn *c, const char *name, size_t len)
{
    return s->topics ? topic_unsubscribe(s->topics, c, name, len) : 0;
}

int pubsub_subscribed(const struct server *s, const struct conn *c, const char *name, size_t len)
{
    return s->topics ? topic_is_subscribed(s->topics, c, name, len) : 0;
}

size_t pubsub_count(const struct server *s, const struct conn *c)
{
    return topic_owner_count(s->topics, c);
}

const char *pubsub_topic(const struct server *s, const struct conn *c, size_t i, size_t *len)
{
    return s->topics ? topic_owner_topic(s->topics, c, i, len) : NULL;
}

size_t pubsub_subscribers(const struct server *s, const char *name, size_t len)
{
    return topic_subscribers(s->topics, name, len);
}

struct fanout {
    uint8_t opcode;
    const void *data;
    size_t dlen;
    struct conn_frame *plain; /* made at the first subscriber that needs it */
    struct conn_frame *zframe; /* compressed, or NULL: everyone gets plain */
    int plain_failed;
};

static int deliver(void *ctx, void *owner, unsigned cls)
{
    struct fanout *f = ctx;
    struct conn *c = owner;
    struct conn_frame *frame = cls && f->zframe ? f->zframe : f->plain;
    if (!frame) {
        if (f->plain_failed)
            return 0;
        frame = f->plain = conn_frame_new((uint8_t)(0x80 | f->opcode), f->data, f->dlen);
        if (!frame) {
            f->plain_failed = 1;
            return 0;
        }
    }
    return conn_send_shared(c, frame, f->opcode, f->dlen) == 0;
}

size_t pubsub_deliver(struct server *s, const char *name, size_t len, uint8_t opcode,
                      const void *data, size_t dlen, struct conn *skip)
{
    struct topic *t = topic_find(s->topics, name, len);
    if (!t)
        return 0;
    struct fanout f = {opcode, data, dlen, NULL, NULL, 0};
    unsigned windows = topic_classes(t) & ~1u; /* bits 8..15: who compresses */
    if (windows) {
        int w = __builtin_ctz(windows);
        const uint8_t *z;
        size_t zlen;
        if (compress_deflate(s->z, w, data, dlen, &z, &zlen))
            f.zframe = conn_frame_new((uint8_t)(0x80 | 0x40 | opcode), z, zlen);
    }
    size_t n = topic_publish(s->topics, t, skip, deliver, &f);
    conn_frame_release(f.plain);
    conn_frame_release(f.zframe);
    return n;
}

size_t pubsub_publish(struct server *s, const char *name, size_t len, uint8_t opcode,
                      const void *data, size_t dlen, struct conn *skip)
{
    METRIC_ADD(s->metrics->publishes, 1);
    size_t n = pubsub_deliver(s, name, len, opcode, data, dlen, skip);
    if (s->mesh) /* the other workers' subscribers (--workers) */
        mesh_publish(s->mesh, name, len, opcode, data, dlen);
    if (s->bp) /* the other nodes' (backplane.h), through Redis */
        backplane_publish(s->bp, name, len, opcode, data, dlen);
    return n;
}

void pubsub_conn_end(struct conn *c)
{
    topic_leave_all(conn_srv(c)->topics, c);
}

void pubsub_free(struct server *s)
{
    topic_table_free(s->topics);
    s->topics = NULL;
}
