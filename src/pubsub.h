/* pubsub: topics for connections. It owns the server's topic table (made
 * at the first subscribe, so a server whose apps never subscribe pays
 * nothing) and the publish path: a message is framed once, compressed at
 * most once, and every subscriber's output queue holds a reference to the
 * same frame (conn_send_shared). It runs no Lua code: a subscriber dropped
 * for limits.max_send_buffer during a fan-out has its on_close deferred by
 * the bridge, as for ws:send. The Lua API is in lconn.c and lhost.c. */
#ifndef MOONPORT_PUBSUB_H
#define MOONPORT_PUBSUB_H

#include <stddef.h>
#include <stdint.h>

struct server;
struct conn;

/* Names are 1 to TOPIC_NAME_MAX (topic.h) bytes: the callers check. */

/* 1 subscribed now, 0 already was, -1 out of memory. */
int pubsub_subscribe(struct server *s, struct conn *c, const char *name, size_t len);
/* 1 was subscribed and is not any more, 0 was not. */
int pubsub_unsubscribe(struct server *s, struct conn *c, const char *name, size_t len);
int pubsub_subscribed(const struct server *s, const struct conn *c, const char *name, size_t len);
/* c's topics: how many, and the i-th (in no particular order). */
size_t pubsub_count(const struct server *s, const struct conn *c);
const char *pubsub_topic(const struct server *s, const struct conn *c, size_t i, size_t *len);
size_t pubsub_subscribers(const struct server *s, const char *name, size_t len);

/* Queue a text or binary message (opcode) to every subscriber of name but
 * skip (NULL: none) that can take it, in this worker and (mesh.h) in every
 * other, and send it to the other nodes (backplane.h) when there is a
 * backplane. Returns how many it was queued to in this worker: the others
 * deliver it later, on their own. With permessage-deflate, see pubsub.c
 * for which frame each gets. */
size_t pubsub_publish(struct server *s, const char *name, size_t len, uint8_t opcode,
                      const void *data, size_t dlen, struct conn *skip);
/* The same in this worker only: a message another worker or node published. */
size_t pubsub_deliver(struct server *s, const char *name, size_t len, uint8_t opcode,
                      const void *data, size_t dlen, struct conn *skip);

/* c is ending: it leaves every topic (before its on_close runs). */
void pubsub_conn_end(struct conn *c);

/* At exit. */
void pubsub_free(struct server *s);

#endif
