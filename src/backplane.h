/* backplane: topics across nodes through Redis pub/sub (config
 * backplane.redis, --backplane). It owns this worker's connections to each
 * Redis server (bpwire.h shards topics over them): a subscriber connection
 * that SUBSCRIBEs the channel of every topic with subscribers in this
 * worker (told by the topic table: topic_table_watch), and a command
 * connection for PUBLISH. Both are hiredis async contexts on the worker's
 * libev loop, so commands are written together when the loop turns and
 * nothing ever waits for a reply. A publish made in this worker goes to
 * Redis once, in an envelope naming this node; what arrives from Redis is
 * delivered to this worker's subscribers only (every worker with
 * subscribers has its own subscription), and a message this node published
 * itself is dropped, since the mesh (mesh.h) has delivered it already.
 * It reconnects with backoff, drops publishes while a server is away or
 * owes replies for more than backplane.max_pending bytes (counted in
 * struct backplane_stats), and runs no Lua. */
#ifndef MOONPORT_BACKPLANE_H
#define MOONPORT_BACKPLANE_H

#include <stddef.h>
#include <stdint.h>

struct server;
struct backplane;

/* This worker's counts since it started (moonport.backplane()). */
struct backplane_stats {
    uint64_t published;           /* messages sent to Redis */
    uint64_t received;            /* messages from Redis, from other nodes or services */
    uint64_t own;                 /* this node's own messages back from Redis: dropped */
    uint64_t delivered;           /* deliveries of received messages to connections */
    uint64_t dropped_unreachable; /* publishes not sent: the Redis server was away */
    uint64_t dropped_pending;     /* publishes not sent: over backplane.max_pending */
    uint64_t dropped_bad;         /* messages from Redis that were not deliverable */
    uint64_t reconnects;          /* connections made again after a loss */
};

/* The backplane of s->cfg, connecting (in the background) now; NULL when
 * the config has none. Call before connections can subscribe. Returns NULL
 * with err set when out of memory. */
struct backplane *backplane_new(struct server *s, char *err, size_t errlen);
/* Close the connections (what is written but unsent goes if the socket
 * takes it now) and free everything. NULL is a no-op. */
void backplane_free(struct backplane *bp);

/* Send a message published in this worker (opcode text or binary) to the
 * topic's Redis server, or count it dropped. */
void backplane_publish(struct backplane *bp, const char *topic, size_t tlen, uint8_t opcode,
                       const void *data, size_t dlen);

/* A topic table's watch function (topic.h): subscribe or unsubscribe the
 * topic's channel. ctx is the backplane. */
void backplane_watch(void *ctx, const char *name, size_t len, int exists);

const struct backplane_stats *backplane_stats(const struct backplane *bp);
/* The node's id; how many Redis servers there are, and how many of them
 * this worker is connected to now. */
const char *backplane_node(const struct backplane *bp);
unsigned backplane_servers(const struct backplane *bp);
unsigned backplane_connected(const struct backplane *bp);

#endif
