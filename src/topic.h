/* topic: the topic table of publish/subscribe. It maps a topic's name to
 * the set of its subscribers, and each subscriber to the set of its
 * topics (redis's pubsub.c keeps the same two-sided index), so subscribing,
 * unsubscribing and a subscriber leaving cost O(1) per subscription, never a
 * scan. A subscriber is an opaque pointer (the server uses its struct conn)
 * with a small class number the publisher reads back (the server uses the
 * connection's deflate window). Pure: no libev, no Lua, no sockets, no
 * frames; it never calls out except to the deliver function of
 * topic_publish, which may unsubscribe anyone, itself included, or make a
 * subscriber leave, while the fan-out runs. */
#ifndef MOONPORT_TOPIC_H
#define MOONPORT_TOPIC_H

#include <stddef.h>
#include <stdint.h>

/* A topic's name is 1 to TOPIC_NAME_MAX bytes, any bytes. */
#define TOPIC_NAME_MAX 256
/* Subscriber classes are 0 to TOPIC_CLASSES - 1. */
#define TOPIC_CLASSES 16

struct topic_table;
struct topic;

/* An empty table; seed keys its string hash (pick it at random, so names
 * chosen by a client cannot be made to collide). NULL when out of memory.
 * topic_table_free(NULL) is a no-op; freeing drops every subscription. */
struct topic_table *topic_table_new(uint64_t seed);
void topic_table_free(struct topic_table *tt);

/* Subscribe owner, of class cls, to the topic name (len bytes, 1 to
 * TOPIC_NAME_MAX: the caller checks). Returns 1 when it is subscribed now,
 * 0 when it already was (its class unchanged), -1 when out of memory
 * (nothing changed). */
int topic_subscribe(struct topic_table *tt, void *owner, unsigned cls, const void *name,
                    size_t len);

/* Returns 1 when owner was subscribed to name and is not any more, else 0. */
int topic_unsubscribe(struct topic_table *tt, void *owner, const void *name, size_t len);

/* 1 if owner is subscribed to name, else 0. */
int topic_is_subscribed(const struct topic_table *tt, const void *owner, const void *name,
                        size_t len);

/* Owner ends: unsubscribe it from every topic, and forget it. Costs
 * nothing but a lookup for an owner that never subscribed. */
void topic_leave_all(struct topic_table *tt, const void *owner);

/* How many topics owner is subscribed to; the i-th of them (0 <= i < that
 * count, in no particular order, valid until the table next changes). */
size_t topic_owner_count(const struct topic_table *tt, const void *owner);
const char *topic_owner_topic(const struct topic_table *tt, const void *owner, size_t i,
                              size_t *len);

/* How many subscribers the topic name has (0 when no such topic). */
size_t topic_subscribers(const struct topic_table *tt, const void *name, size_t len);

/* The topic name, or NULL when it has no subscriber (a topic exists only
 * while someone is subscribed to it). */
struct topic *topic_find(const struct topic_table *tt, const void *name, size_t len);

/* Which classes the topic's subscribers are in: bit k is set when at least
 * one subscriber has class k. */
unsigned topic_classes(const struct topic *t);

/* Called once per subscriber by topic_publish: returns 1 when it delivered,
 * 0 when not (counted as not). It may call topic_subscribe,
 * topic_unsubscribe and topic_leave_all on the same table, for anyone. */
typedef int (*topic_deliver_fn)(void *ctx, void *owner, unsigned cls);

/* Call deliver for every subscriber of t but skip (NULL: none), in the
 * order they subscribed in as far as nobody left since. A subscriber that
 * leaves before its turn is not called; one that joins during the fan-out
 * is not called either. Returns how many deliver calls returned 1. t may
 * be freed by the time this returns (if the fan-out emptied it): do not use
 * it after. */
size_t topic_publish(struct topic_table *tt, struct topic *t, const void *skip,
                     topic_deliver_fn deliver, void *ctx);

/* Tell fn when a topic comes to exist (exists 1: its first subscriber
 * joined) and just before it goes (exists 0: its last left, and no fan-out
 * runs over it), so that a table can be mirrored elsewhere (the backplane
 * subscribes a topic in Redis while it exists here). fn must not change the
 * table. Not called by topic_table_free. fn NULL: nobody is told. */
typedef void (*topic_watch_fn)(void *ctx, const char *name, size_t len, int exists);
void topic_table_watch(struct topic_table *tt, topic_watch_fn fn, void *ctx);

/* Call fn for every topic that exists, in no particular order. fn must not
 * change the table. */
void topic_each(const struct topic_table *tt, void (*fn)(void *ctx, const char *name, size_t len),
                void *ctx);

/* Totals, for tests and for the leak check: topics, subscribers with at
 * least one topic, subscriptions. */
void topic_table_stats(const struct topic_table *tt, size_t *topics, size_t *owners,
                       size_t *subscriptions);

#endif
