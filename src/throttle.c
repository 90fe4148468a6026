/* throttle: rate limits per connection and the memory budgets of the
 * server (see throttle.h). The side table is keyed by the conn's address;
 * a held connection is in the held array with the reasons it waits for,
 * and resumes (conn_hold) when the last of them is gone: its bucket has
 * refilled (one timer for all, at the earliest), or the budget it waits for
 * has room again. */
#include "throttle.h"

#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "ws_frame.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* What a connection has here. An empty slot has c == NULL. */
struct throttle_slot {
    struct conn *c;
    double bytes;       /* tokens of the byte bucket (negative: in debt) */
    double msgs;        /* tokens of the message bucket */
    uint32_t stamp;     /* server_ms() of the last refill */
    uint8_t logged;     /* its going over a rate was logged */
    size_t out;         /* output charged to the outbound budget */
};

enum { HELD_RATE = 1, HELD_IN = 2, HELD_OUT = 4 };

struct throttle_held {
    struct conn *c;
    uint32_t due; /* HELD_RATE: server_ms() when its buckets are out of debt */
    uint8_t why;
};

/* Hold back until usage is this far under the budget, so that a resumed
 * connection has room for more than one read before it is held again. */
#define LOW_WATER(budget) ((budget) - (budget) / 8)

static void on_rate(struct ev_loop *loop, ev_timer *w, int revents);
static void on_sweep(struct ev_loop *loop, ev_timer *w, int revents);

/* How often slots that hold nothing any more (full buckets, no output
 * charge, not held) are given up, so that a connection that was busy and
 * is idle again costs nothing here. */
#define SWEEP_EVERY 2.0

void throttle_init(struct throttle *t, struct server *s)
{
    memset(t, 0, sizeof *t);
    t->srv = s;
    ev_init(&t->rate_w, on_rate);
    ev_init(&t->sweep_w, on_sweep);
    throttle_configure(t);
}

void throttle_configure(struct throttle *t)
{
    const struct config *cfg = t->srv->cfg;
    unsigned n = t->srv->nworkers ? t->srv->nworkers : 1;
    t->rate_on = cfg->messages_per_second > 0 || cfg->bytes_per_second > 0;
    t->in_budget = cfg->inbound_memory / n;
    t->out_budget = cfg->outbound_memory / n;
    struct metrics *m = t->srv->metrics;
    METRIC_SET(m->budget_bytes[0], t->in_budget);
    METRIC_SET(m->budget_bytes[1], t->out_budget);
}

void throttle_free(struct throttle *t)
{
    ev_timer_stop(t->srv->loop, &t->rate_w);
    ev_timer_stop(t->srv->loop, &t->sweep_w);
    free(t->slots);
    free(t->held);
    t->slots = NULL;
    t->held = NULL;
    t->cap = t->nslots = t->held_cap = t->nheld = 0;
}

/* ---- The side table ---- */

static size_t hash(const struct conn *c, size_t mask)
{
    return (size_t)(((uintptr_t)c >> 4) * 0x9E3779B97F4A7C15ull >> 20) & mask;
}

static struct throttle_slot *slot_find(struct throttle *t, const struct conn *c)
{
    if (!t->cap)
        return NULL;
    size_t mask = t->cap - 1;
    for (size_t i = hash(c, mask);; i = (i + 1) & mask) {
        if (t->slots[i].c == c)
            return &t->slots[i];
        if (!t->slots[i].c)
            return NULL;
    }
}

/* Rehash into cap slots (a power of two, over twice nslots). */
static int slots_resize(struct throttle *t, size_t cap)
{
    struct throttle_slot *old = t->slots, *fresh = calloc(cap, sizeof *fresh);
    if (!fresh)
        return -1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!old[i].c)
            continue;
        size_t j = hash(old[i].c, cap - 1);
        while (fresh[j].c)
            j = (j + 1) & (cap - 1);
        fresh[j] = old[i];
    }
    free(old);
    t->slots = fresh;
    t->cap = cap;
    return 0;
}

static int slots_grow(struct throttle *t)
{
    if (slots_resize(t, t->cap ? t->cap * 2 : 64))
        return -1;
    if (!ev_is_active(&t->sweep_w)) {
        ev_timer_set(&t->sweep_w, SWEEP_EVERY, SWEEP_EVERY);
        ev_timer_start(t->srv->loop, &t->sweep_w);
    }
    return 0;
}

/* c's slot, made (with full buckets) if it has none; NULL when out of
 * memory. */
static struct throttle_slot *slot_get(struct throttle *t, struct conn *c)
{
    struct throttle_slot *s = c->throttled ? slot_find(t, c) : NULL;
    if (s)
        return s;
    if ((t->nslots + 1) * 2 > t->cap && slots_grow(t))
        return NULL;
    size_t mask = t->cap - 1, i = hash(c, mask);
    while (t->slots[i].c)
        i = (i + 1) & mask;
    s = &t->slots[i];
    const struct config *cfg = t->srv->cfg;
    *s = (struct throttle_slot){.c = c,
                                .bytes = cfg->burst_bytes,
                                .msgs = cfg->burst_messages,
                                .stamp = server_ms(t->srv)};
    t->nslots++;
    c->throttled = 1;
    return s;
}

/* Remove a slot, shifting the ones after it back so that probing needs no
 * tombstones. */
static void slot_remove(struct throttle *t, struct throttle_slot *s)
{
    size_t mask = t->cap - 1, i = (size_t)(s - t->slots);
    s->c->throttled = 0;
    t->slots[i].c = NULL;
    t->nslots--;
    for (size_t j = (i + 1) & mask; t->slots[j].c; j = (j + 1) & mask) {
        size_t home = hash(t->slots[j].c, mask);
        /* Move j into the hole at i unless its home lies in (i, j]. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->slots[i] = t->slots[j];
            t->slots[j].c = NULL;
            i = j;
        }
    }
}

/* What s's buckets hold at now: refilled at the rates, up to the bursts. */
static void refill(const struct config *cfg, const struct throttle_slot *s, uint32_t now,
                   double *msgs, double *bytes)
{
    double dt = (uint32_t)(now - s->stamp) / 1000.0;
    *msgs = s->msgs + dt * cfg->messages_per_second;
    if (*msgs > cfg->burst_messages)
        *msgs = cfg->burst_messages;
    *bytes = s->bytes + dt * cfg->bytes_per_second;
    if (*bytes > cfg->burst_bytes)
        *bytes = cfg->burst_bytes;
}

/* Give up the slots that hold nothing, and the table's room when few are
 * left. */
static void on_sweep(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct throttle *t = container_of(w, struct throttle, sweep_w);
    const struct config *cfg = t->srv->cfg;
    uint32_t now = server_ms(t->srv);
    for (size_t i = 0; i < t->cap;) {
        struct throttle_slot *s = &t->slots[i];
        double msgs, bytes;
        if (s->c)
            refill(cfg, s, now, &msgs, &bytes);
        if (!s->c || s->out || s->c->held || msgs < cfg->burst_messages ||
            bytes < cfg->burst_bytes) {
            i++;
            continue;
        }
        slot_remove(t, s); /* a later slot may have moved into i: look at it again */
    }
    if (t->nslots == 0) {
        free(t->slots);
        t->slots = NULL;
        t->cap = 0;
        ev_timer_stop(loop, w);
    } else if (t->cap > 64 && t->nslots * 8 < t->cap) {
        size_t cap = t->cap;
        while (cap > 64 && t->nslots * 8 < cap)
            cap /= 2;
        slots_resize(t, cap); /* out of memory: keep the larger table */
    }
}

/* ---- Holding ---- */

static struct throttle_held *held_find(struct throttle *t, const struct conn *c)
{
    for (size_t i = 0; i < t->nheld; i++)
        if (t->held[i].c == c)
            return &t->held[i];
    return NULL;
}

static void rate_arm(struct throttle *t, uint32_t due)
{
    struct server *s = t->srv;
    double after = (int32_t)(due - server_ms(s)) / 1000.0;
    if (after < 0.001)
        after = 0.001;
    if (ev_is_active(&t->rate_w) && ev_timer_remaining(s->loop, &t->rate_w) <= after)
        return;
    ev_timer_stop(s->loop, &t->rate_w);
    ev_timer_set(&t->rate_w, after, 0);
    ev_timer_start(s->loop, &t->rate_w);
}

/* Hold c's reading for why (until due, for HELD_RATE). 0, or -1 when out
 * of memory to remember it (then it is not held). */
static int hold(struct throttle *t, struct conn *c, uint8_t why, uint32_t due)
{
    struct throttle_held *h = c->held ? held_find(t, c) : NULL;
    if (!h) {
        if (t->nheld == t->held_cap) {
            size_t cap = t->held_cap ? t->held_cap * 2 : 16;
            struct throttle_held *g = realloc(t->held, cap * sizeof *g);
            if (!g)
                return -1;
            t->held = g;
            t->held_cap = cap;
        }
        h = &t->held[t->nheld++];
        *h = (struct throttle_held){c, 0, 0};
        conn_hold(c, 1);
    }
    if ((why & HELD_IN) && !(h->why & HELD_IN))
        t->held_in++;
    if ((why & HELD_OUT) && !(h->why & HELD_OUT))
        t->held_out++;
    h->why |= why;
    if (why & HELD_RATE) {
        h->due = due;
        rate_arm(t, due);
    }
    return 0;
}

/* h no longer waits for why; resume its connection when it waits for
 * nothing. Returns 1 if h was removed (the entry at its place is another). */
static int unhold(struct throttle *t, struct throttle_held *h, uint8_t why)
{
    if ((why & HELD_IN) && (h->why & HELD_IN))
        t->held_in--;
    if ((why & HELD_OUT) && (h->why & HELD_OUT))
        t->held_out--;
    h->why &= (uint8_t)~why;
    if (h->why)
        return 0;
    struct conn *c = h->c;
    *h = t->held[--t->nheld];
    conn_hold(c, 0);
    return 1;
}

/* A budget has room again: resume what waits for it. */
static void resume_all(struct throttle *t, uint8_t why)
{
    for (size_t i = 0; i < t->nheld;)
        if (!(t->held[i].why & why) || !unhold(t, &t->held[i], why))
            i++;
}

static void on_rate(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct throttle *t = container_of(w, struct throttle, rate_w);
    uint32_t now = server_ms(t->srv);
    int more = 0;
    uint32_t next = 0;
    for (size_t i = 0; i < t->nheld;) {
        struct throttle_held *h = &t->held[i];
        if (!(h->why & HELD_RATE)) {
            i++;
        } else if ((int32_t)(h->due - now) <= 0) {
            if (!unhold(t, h, HELD_RATE))
                i++;
        } else {
            if (!more || (int32_t)(h->due - next) < 0)
                next = h->due;
            more = 1;
            i++;
        }
    }
    if (more)
        rate_arm(t, next);
}

void throttle_release(struct conn *c)
{
    struct throttle *t = &conn_srv(c)->throttle;
    struct throttle_held *h = c->held ? held_find(t, c) : NULL;
    if (h)
        unhold(t, h, HELD_RATE | HELD_IN | HELD_OUT);
}

void throttle_conn_free(struct conn *c)
{
    struct throttle *t = &conn_srv(c)->throttle;
    throttle_release(c);
    if (c->out_charged)
        throttle_out(c, 0);
    struct throttle_slot *s = c->throttled ? slot_find(t, c) : NULL;
    if (s)
        slot_remove(t, s);
}

/* ---- Rates ---- */

/* The least a read may ask for: enough for a frame header and some of its
 * payload, so that even a tiny rate makes progress. */
#define READ_ROOM_MIN 256

size_t throttle_read_room(struct conn *c, size_t room)
{
    const struct config *cfg = conn_srv(c)->cfg;
    struct throttle *t = &conn_srv(c)->throttle;
    /* A read that begins in the handshake is not charged: an idle
     * connection then never has a slot. */
    t->reading = c->state == CONN_OPEN ? c : NULL;
    t->msgs_before = c->msgs_in;
    if (c->state != CONN_OPEN || cfg->bytes_per_second <= 0)
        return room;
    struct throttle_slot *s = c->throttled ? slot_find(t, c) : NULL;
    double msgs, tokens = cfg->burst_bytes;
    if (s)
        refill(cfg, s, server_ms(conn_srv(c)), &msgs, &tokens);
    size_t may = tokens < READ_ROOM_MIN ? READ_ROOM_MIN : (size_t)tokens;
    return may < room ? may : room;
}

void throttle_read(struct conn *c, size_t n)
{
    struct throttle *t = &conn_srv(c)->throttle;
    const struct config *cfg = conn_srv(c)->cfg;
    if (c->state != CONN_OPEN || t->reading != c)
        return; /* the handshake and the closing handshake are not charged */
    t->reading = NULL;
    uint32_t msgs = c->msgs_in - t->msgs_before;
    struct throttle_slot *s = slot_get(t, c);
    if (!s)
        return; /* out of memory: the limit is not enforced for c, c goes on */
    uint32_t now = server_ms(conn_srv(c));
    double m, b, wait = 0;
    refill(cfg, s, now, &m, &b);
    s->stamp = now;
    if (cfg->messages_per_second > 0) {
        m -= msgs;
        if (m < 0)
            wait = -m / cfg->messages_per_second;
    }
    if (cfg->bytes_per_second > 0) {
        b -= (double)n;
        if (b < 0 && -b / cfg->bytes_per_second > wait)
            wait = -b / cfg->bytes_per_second;
    }
    s->msgs = m;
    s->bytes = b;
    if (wait <= 0)
        return;
    struct metrics *mt = conn_srv(c)->metrics;
    if (cfg->rate_close) {
        METRIC_ADD(mt->rate_limited[1], 1);
        log_info("conn %llu %s from %s: over the rate limit (limits.%s): closing with 1008",
                 (unsigned long long)c->id, conn_path(c), conn_peer(c),
                 s->msgs < 0 ? "messages_per_second" : "bytes_per_second");
        conn_close(c, WS_CLOSE_POLICY, "rate limit exceeded");
        return;
    }
    METRIC_ADD(mt->rate_limited[0], 1);
    if (!s->logged) {
        s->logged = 1;
        log_info("conn %llu %s from %s: over the rate limit (limits.%s): reading paused until "
                 "it is back under (logged once per connection)",
                 (unsigned long long)c->id, conn_path(c), conn_peer(c),
                 s->msgs < 0 ? "messages_per_second" : "bytes_per_second");
    }
    uint32_t ms = (uint32_t)(wait * 1000.0) + 1;
    hold(t, c, HELD_RATE, now + ms);
}

/* ---- Memory budgets ---- */

int throttle_in_check(struct conn *c, size_t have, size_t want, const char **why)
{
    struct throttle *t = &conn_srv(c)->throttle;
    if (want <= have || t->in_used + (want - have) <= t->in_budget)
        return 0;
    struct metrics *m = conn_srv(c)->metrics;
    if (want > t->in_budget) {
        METRIC_ADD(m->budget_failed[0], 1);
        *why = "message too big for limits.inbound_memory";
        return WS_CLOSE_TOO_BIG;
    }
    size_t holders = t->in_holders + (have == 0);
    if (want > t->in_budget / holders) {
        METRIC_ADD(m->budget_failed[0], 1);
        *why = "over its share of limits.inbound_memory: try again later";
        return WS_CLOSE_TRY_AGAIN;
    }
    /* Under its share: these bytes are read already and are kept, but no
     * more until the budget has room. */
    METRIC_ADD(m->budget_held[0], 1);
    hold(t, c, HELD_IN, 0);
    return 0;
}

void throttle_in_charge(struct conn *c, size_t have, size_t want)
{
    struct throttle *t = &conn_srv(c)->throttle;
    if (have == want)
        return;
    t->in_holders += (want != 0) - (have != 0);
    t->in_used += want - have; /* wraps right when it shrinks */
    METRIC_SET(conn_srv(c)->metrics->budget_used[0], t->in_used);
    if (want < have && t->held_in && t->in_used <= LOW_WATER(t->in_budget))
        resume_all(t, HELD_IN);
}

int throttle_out(struct conn *c, size_t pending)
{
    struct throttle *t = &conn_srv(c)->throttle;
    struct throttle_slot *s = slot_get(t, c);
    if (!s) /* out of memory: not charged, which only makes the budget looser */
        return 0;
    size_t had = s->out;
    s->out = pending;
    c->out_charged = pending != 0;
    t->out_holders += (pending != 0) - (had != 0);
    t->out_used += pending - had;
    METRIC_SET(conn_srv(c)->metrics->budget_used[1], t->out_used);
    if (pending < had) {
        if (!pending && !t->rate_on)
            slot_remove(t, s); /* nothing left here: the slot goes */
        if (t->held_out && t->out_used <= LOW_WATER(t->out_budget))
            resume_all(t, HELD_OUT);
        return 0;
    }
    if (t->out_used <= t->out_budget || c->state == CONN_DEAD)
        return 0;
    struct metrics *m = conn_srv(c)->metrics;
    if (pending > t->out_budget / t->out_holders) {
        METRIC_ADD(m->budget_failed[1], 1);
        log_warn("conn %llu %s: %zu bytes waiting to be sent, over its share of "
                 "limits.outbound_memory (%zu of %zu bytes used): dropping the connection",
                 (unsigned long long)c->id, conn_path(c), pending, t->out_used, t->out_budget);
        conn_abort(c, "over its share of limits.outbound_memory");
        return -1;
    }
    METRIC_ADD(m->budget_held[1], 1);
    hold(t, c, HELD_OUT, 0);
    return 0;
}
