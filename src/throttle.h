/* throttle: the limits that hold a connection's reading back, apart from its
 * own send buffer: the per-connection rates (limits.messages_per_second and
 * limits.bytes_per_second, token buckets) and the server-wide memory budgets
 * (limits.inbound_memory for partial messages, limits.outbound_memory for
 * output waiting for the socket). It decides when reading stops and when it
 * resumes (conn_hold), or that the connection must go.
 *
 * A connection pays nothing here while it uses none of it: its bucket and
 * its output charge live in a side table, made when the connection first
 * needs one (its first read past the handshake with a rate set; output left
 * after a flush); three bits of struct conn say what it has here. Reads are
 * charged once per read, not per message, so the echo path pays one test of
 * rate_on per read when no rate is set. Never calls into Lua. */
#ifndef MOONPORT_THROTTLE_H
#define MOONPORT_THROTTLE_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

struct server;
struct conn;
struct throttle_slot;
struct throttle_held;

struct throttle {
    struct server *srv;
    int rate_on; /* a rate is set: conn.c charges each read */
    /* The connection being read now and its message count before the read
     * (throttle_read_room notes them, throttle_read charges the difference). */
    const struct conn *reading;
    uint32_t msgs_before;
    /* The budgets of this worker (the configured totals divided among the
     * workers), what is charged to them now, and how many connections hold
     * a charge. */
    size_t in_budget, in_used, in_holders;
    size_t out_budget, out_used, out_holders;
    /* Side state of connections that have some, by conn address (open
     * addressing): rate buckets, output charges. */
    struct throttle_slot *slots;
    size_t nslots, cap;
    /* Connections whose reading is held, and why. */
    struct throttle_held *held;
    size_t nheld, held_cap;
    size_t held_in, held_out; /* of them, waiting for each budget */
    ev_timer rate_w;          /* the next held connection whose bucket refills */
    ev_timer sweep_w;         /* gives up slots that hold nothing any more */
};

/* Set up from s->cfg; again after a SIGHUP changed it. */
void throttle_init(struct throttle *t, struct server *s);
void throttle_configure(struct throttle *t);
void throttle_free(struct throttle *t);

/* Called before each read of c while a rate is set: how many bytes c may
 * read now, at most room. With limits.bytes_per_second, what its byte
 * bucket holds (at least a little, so that reading goes on), so that one
 * read cannot take much more than the rate allows. */
size_t throttle_read_room(struct conn *c, size_t room);

/* After that read: c read n bytes (and delivered the messages they
 * completed): charge its buckets; past them, hold its reading or close it
 * (limits.rate_action). */
void throttle_read(struct conn *c, size_t n);

/* c's partial message has grown from `have` bytes of memory to `want`: 0
 * to go on (the caller then charges it with throttle_in_charge; c's
 * reading may be held meanwhile), or the close code to fail c with (1009:
 * its message alone needs more than the whole budget; 1013: c would hold
 * more than its share of an exhausted budget), *why saying so. */
int throttle_in_check(struct conn *c, size_t have, size_t want, const char **why);
/* Charge (or, with want < have, give back) c's partial message memory. */
void throttle_in_charge(struct conn *c, size_t have, size_t want);

/* After a flush, c has `pending` bytes still queued: charge them to the
 * outbound budget. 0, or -1 when c was dropped for it. */
int throttle_out(struct conn *c, size_t pending);

/* c reads only to close from now on (closing, lingering): let go of its
 * hold. */
void throttle_release(struct conn *c);
/* c is freed: let go of everything it has here but its partial message,
 * which the caller gives back (throttle_in_charge). */
void throttle_conn_free(struct conn *c);

#endif
