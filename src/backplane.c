/* backplane: topics across nodes through Redis. See backplane.h.
 *
 * A link is this worker's pair of connections to one Redis server. It is
 * DOWN (a retry timer runs), CONNECTING (both contexts exist, commands
 * queue in them; the same timer gives up on a server that accepts the
 * connection but does not answer within CONNECT_TIMEOUT) or UP (both have answered their first command, so any
 * AUTH went through: publishes go out). Any failure of
 * either connection tears the pair down and retries both, with backoff
 * from 0.1 s doubling to 5 s and jitter, so a server restarting does not
 * see every node at the same instant. A new pair subscribes every topic
 * that has subscribers in this worker, in a few commands of many channels.
 *
 * hiredis 0.14 asserts (and so aborts) when a subscribe reply arrives
 * while it believes the connection left subscribed mode, which it does as
 * soon as an UNSUBSCRIBE reply counts zero subscriptions, even if a
 * SUBSCRIBE is already in flight behind it (a topic's last subscriber
 * leaving and a new one joining at once). The subscriber connection
 * therefore holds one pattern subscription (ANCHOR: a literal name no
 * channel matches) for its whole life: the count never reaches zero.
 *
 * Memory: a PUBLISH counts its bytes in the link's pending until its reply
 * arrives; past backplane.max_pending it is dropped instead of written, so
 * a Redis that reads nothing (SIGSTOP) holds moonport to that many bytes in
 * hiredis's buffers. Subscription commands are counted the same way; a
 * server that owes more than max_pending of them is dropped and retried
 * (the reconnect re-subscribes from the topic table, so nothing is lost). */
#include "backplane.h"

#include <ev.h>
#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "bpwire.h"
#include "lbridge.h"
#include "log.h"
#include "pubsub.h"
#include "server.h"
#include "topic.h"

#define ANCHOR "__moonport_anchor__"
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0
#define CONNECT_TIMEOUT 5.0 /* a pair that has not answered by then is given up and retried */
#define SUB_COST 32     /* bytes counted per channel of a (UN)SUBSCRIBE, over its name */
#define PUB_COST 64     /* bytes counted per PUBLISH, over its channel and payload */
#define RESUB_BATCH 256 /* channels per SUBSCRIBE on reconnect */
#define BAD_REASONS 8

enum { DOWN, CONNECTING, UP };

struct link {
    struct backplane *bp;
    struct bp_url url;
    char name[300]; /* redis://host:port, for the log (never the password) */
    redisAsyncContext *sub, *cmd;
    int state;
    int ready; /* of the pair that answered, while CONNECTING */
    int ever_up;
    int outage; /* the current outage is logged */
    uint64_t outage_drops;
    double backoff;
    ev_timer retry;
    size_t pending;     /* bytes of PUBLISH without a reply */
    size_t sub_pending; /* bytes of (UN)SUBSCRIBE channels without a reply */
    uint64_t slow_drops;
    ev_tstamp slow_logged;
    uint64_t refused; /* PUBLISHes answered with an error since the last line */
    ev_tstamp refused_logged;
    size_t topics; /* subscribed when the pair was made */
};

/* A reason bad messages from Redis were dropped for, logged once a minute
 * at most with how many. */
struct bad {
    const char *why; /* static, from bp_decode */
    uint64_t count;
    ev_tstamp logged;
};

struct backplane {
    struct server *s;
    struct backplane_stats stats;
    char node[BP_ORIGIN_MAX + 1];
    size_t node_len;
    const char *prefix;
    size_t plen;
    char *scratch; /* a channel and an envelope, for PUBLISH */
    size_t scratch_cap;
    struct bad bad[BAD_REASONS];
    unsigned n;
    struct link links[];
};

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static void link_fail(struct link *l, const char *why);
static void link_connect(struct link *l);
static void link_ready(struct link *l);

/* A channel: prefix then topic, in buf (room for CONFIG_PREFIX_MAX +
 * TOPIC_NAME_MAX bytes). */
static size_t channel(const struct backplane *bp, char *buf, const char *topic, size_t tlen)
{
    memcpy(buf, bp->prefix, bp->plen);
    memcpy(buf + bp->plen, topic, tlen);
    return bp->plen + tlen;
}

static struct link *shard(struct backplane *bp, const char *topic, size_t tlen)
{
    return &bp->links[bp->n > 1 ? bp_shard(topic, tlen, bp->n) : 0];
}

static double jittered(double t)
{
    uint32_t r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (uint32_t)random();
    return t * (0.75 + 0.5 * (r / 4294967296.0)); /* within 25% either way */
}

/* ---- subscriptions ---- */

static void sub_reply(redisAsyncContext *ac, void *reply, void *priv);

/* (UN)SUBSCRIBE the n channels of argv[1..n] on l's subscriber connection. */
static void sub_command(struct link *l, int argc, const char **argv, const size_t *lens)
{
    if (redisAsyncCommandArgv(l->sub, sub_reply, l, argc, argv, lens) != REDIS_OK) {
        link_fail(l, "cannot queue a subscription command");
        return;
    }
    for (int i = 1; i < argc; i++)
        l->sub_pending += lens[i] + SUB_COST;
    if (l->sub_pending > l->bp->s->cfg->backplane_max_pending)
        link_fail(l, "it does not read the subscriptions sent to it");
}

void backplane_watch(void *ctx, const char *name, size_t len, int exists)
{
    struct backplane *bp = ctx;
    struct link *l = shard(bp, name, len);
    if (!l->sub) /* DOWN: the reconnect subscribes what exists then */
        return;
    char chan[CONFIG_PREFIX_MAX + TOPIC_NAME_MAX];
    const char *argv[2] = {exists ? "SUBSCRIBE" : "UNSUBSCRIBE", chan};
    size_t lens[2] = {strlen(argv[0]), channel(bp, chan, name, len)};
    sub_command(l, 2, argv, lens);
}

/* Collects the channels of one link's topics, to SUBSCRIBE in batches. */
struct resub {
    struct link *l;
    int n;
    const char *argv[RESUB_BATCH + 1];
    size_t lens[RESUB_BATCH + 1];
    char chans[RESUB_BATCH][CONFIG_PREFIX_MAX + TOPIC_NAME_MAX];
    size_t topics;
};

static void resub_flush(struct resub *r)
{
    if (r->n && r->l->sub)
        sub_command(r->l, r->n + 1, r->argv, r->lens);
    r->n = 0;
}

static void resub_one(void *ctx, const char *name, size_t len)
{
    struct resub *r = ctx;
    if (shard(r->l->bp, name, len) != r->l)
        return;
    r->argv[r->n + 1] = r->chans[r->n];
    r->lens[r->n + 1] = channel(r->l->bp, r->chans[r->n], name, len);
    r->topics++;
    if (++r->n == RESUB_BATCH)
        resub_flush(r);
}

/* Subscribe l's connection to every topic of this worker on its shard. */
static size_t resubscribe(struct link *l)
{
    struct resub *r = malloc(sizeof *r);
    if (!r) {
        link_fail(l, "out of memory");
        return 0;
    }
    r->l = l;
    r->n = 0;
    r->topics = 0;
    r->argv[0] = "SUBSCRIBE";
    r->lens[0] = 9;
    topic_each(l->bp->s->topics, resub_one, r);
    resub_flush(r);
    size_t n = r->topics;
    free(r);
    return n;
}

/* ---- receiving ---- */

static void count_bad(struct backplane *bp, const char *why, const char *chan, size_t clen)
{
    bp->stats.dropped_bad++;
    struct bad *b = NULL;
    for (int i = 0; i < BAD_REASONS && !b; i++)
        if (bp->bad[i].why == why || !bp->bad[i].why)
            b = &bp->bad[i];
    if (!b)
        b = &bp->bad[BAD_REASONS - 1];
    if (b->why != why) { /* a new reason, when the table is full: shares a slot */
        b->why = why;
        b->count = 0;
        b->logged = 0;
    }
    b->count++;
    ev_tstamp now = ev_now(bp->s->loop);
    if (b->logged && now - b->logged < 60)
        return;
    log_warn("backplane: dropped %llu message(s) from Redis (%s), the last on channel %.*s",
             (unsigned long long)b->count, why, (int)(clen > 300 ? 300 : clen), chan);
    b->count = 0;
    b->logged = now;
}

static void on_message(struct link *l, const char *chan, size_t clen, const char *p, size_t n)
{
    struct backplane *bp = l->bp;
    struct server *s = bp->s;
    if (clen <= bp->plen || clen - bp->plen > TOPIC_NAME_MAX ||
        memcmp(chan, bp->prefix, bp->plen) != 0) {
        count_bad(bp, "a channel that is no topic's", chan, clen);
        return;
    }
    struct bp_message m;
    const char *why = "malformed";
    if (bp_decode(p, n, s->cfg->max_message, &m, &why)) {
        count_bad(bp, why, chan, clen);
        return;
    }
    if (m.origin && m.origin_len == bp->node_len && memcmp(m.origin, bp->node, bp->node_len) == 0) {
        bp->stats.own++; /* the mesh delivered it in this node already */
        return;
    }
    bp->stats.received++;
    struct lb_call hold; /* on_close of a subscriber dropped now runs after the fan-out */
    lbridge_hold(s->lb, &hold);
    bp->stats.delivered += pubsub_deliver(s, chan + bp->plen, clen - bp->plen,
                                          m.kind == BP_BINARY ? 2 : 1, m.data, m.len, NULL);
    lbridge_unhold(s->lb, &hold);
}

static int is_str(const redisReply *r)
{
    return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
}

/* Every reply on the subscriber connection: messages, and the answers to
 * SUBSCRIBE and UNSUBSCRIBE (one per channel). NULL when it is freed. */
static void sub_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct link *l = priv;
    const redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 3 || !is_str(r->element[0]) ||
        !is_str(r->element[1]))
        return;
    const char *type = r->element[0]->str;
    const redisReply *chan = r->element[1];
    if (strcmp(type, "message") == 0) {
        if (is_str(r->element[2]))
            on_message(l, chan->str, chan->len, r->element[2]->str, r->element[2]->len);
    } else if (strcmp(type, "subscribe") == 0 || strcmp(type, "unsubscribe") == 0) {
        size_t cost = chan->len + SUB_COST;
        l->sub_pending = l->sub_pending > cost ? l->sub_pending - cost : 0;
    } else if (strcmp(type, "psubscribe") == 0 && l->state == CONNECTING) {
        link_ready(l); /* the anchor: the subscriber connection works */
    }
}

/* ---- connections ---- */

static void free_pair(struct link *l)
{
    redisAsyncContext *sub = l->sub, *cmd = l->cmd;
    l->sub = l->cmd = NULL; /* so on_disconnect knows these are not news */
    if (sub)
        redisAsyncFree(sub); /* inside its own callback, hiredis frees it after */
    if (cmd)
        redisAsyncFree(cmd);
    l->pending = 0; /* the NULL replies have given it back; to be sure */
    l->sub_pending = 0;
}

static void link_fail(struct link *l, const char *why)
{
    struct backplane *bp = l->bp;
    int was = l->state;
    if (was == DOWN)
        return;
    free_pair(l);
    l->state = DOWN;
    l->backoff = l->backoff ? l->backoff * 2 : BACKOFF_MIN;
    if (l->backoff > BACKOFF_MAX)
        l->backoff = BACKOFF_MAX;
    double delay = jittered(l->backoff);
    if (!l->outage) {
        l->outage = 1;
        l->outage_drops = 0;
        if (was == UP)
            log_warn("backplane: lost %s (%s), retrying in %.1fs; local delivery goes on, "
                     "publishes to it are dropped until it is back",
                     l->name, why, delay);
        else
            log_warn("backplane: %s unreachable (%s), retrying in %.1fs; local delivery goes on",
                     l->name, why, delay);
    } else {
        log_debug("backplane: %s still unreachable (%s), retrying in %.1fs", l->name, why, delay);
    }
    ev_timer_stop(bp->s->loop, &l->retry); /* the connect timeout, if it runs */
    ev_timer_set(&l->retry, delay, 0);
    ev_timer_start(bp->s->loop, &l->retry);
}

static void link_up(struct link *l);

/* One of the pair answered its first command. */
static void link_ready(struct link *l)
{
    if (++l->ready == 2)
        link_up(l);
}

static void link_up(struct link *l)
{
    struct backplane *bp = l->bp;
    ev_timer_stop(bp->s->loop, &l->retry); /* the connect timeout */
    l->state = UP;
    l->backoff = 0;
    if (l->ever_up)
        bp->stats.reconnects++;
    if (l->ever_up)
        log_warn("backplane: connected to %s again; %zu topic(s) re-subscribed; %llu "
                 "publish(es) were dropped while it was away",
                 l->name, l->topics, (unsigned long long)l->outage_drops);
    else if (l->outage)
        log_warn("backplane: connected to %s (node %s), reachable at last; %llu publish(es) "
                 "were dropped until now",
                 l->name, bp->node, (unsigned long long)l->outage_drops);
    else
        log_info("backplane: connected to %s (node %s)", l->name, bp->node);
    l->ever_up = 1;
    l->outage = 0;
    l->outage_drops = 0;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct link *l = ac->data;
    if (ac != l->sub && ac != l->cmd)
        return;
    if (status != REDIS_OK) { /* hiredis frees ac after this returns */
        if (ac == l->sub)
            l->sub = NULL;
        else
            l->cmd = NULL;
        link_fail(l, ac->errstr[0] ? ac->errstr : "cannot connect");
        return;
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct link *l = ac->data;
    if (ac != l->sub && ac != l->cmd)
        return; /* one free_pair let go of */
    if (ac == l->sub)
        l->sub = NULL;
    else
        l->cmd = NULL;
    link_fail(l, ac->err && ac->errstr[0] ? ac->errstr : "the server closed the connection");
}

static const char *password(const struct link *l)
{
    const char *pw = l->url.password[0] ? l->url.password : getenv("MOONPORT_REDIS_PASSWORD");
    return pw && pw[0] ? pw : NULL;
}

/* The answer to AUTH on either connection, or to the command connection's
 * first command (AUTH, or PING without a password): an error ends the
 * pair; the command connection's first answer makes it ready. */
static void first_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct link *l = priv;
    const redisReply *r = reply;
    if (!r || (ac != l->sub && ac != l->cmd) || l->state != CONNECTING)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        char why[200];
        snprintf(why, sizeof why, "%s refused: %.150s", password(l) ? "AUTH" : "PING", r->str);
        link_fail(l, why);
    } else if (ac == l->cmd) {
        link_ready(l);
    }
}

static redisAsyncContext *open_one(struct link *l)
{
    redisAsyncContext *ac = redisAsyncConnect(l->url.host, l->url.port);
    if (!ac)
        return NULL;
    ac->data = l;
    if (ac->err) {
        char why[200];
        snprintf(why, sizeof why, "%s", ac->errstr);
        redisAsyncFree(ac);
        link_fail(l, why);
        return NULL;
    }
    redisLibevAttach(l->bp->s->loop, ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    const char *pw = password(l);
    if (pw) { /* AUTH [user] password, answered before anything else */
        const char *argv[3] = {"AUTH"};
        size_t lens[3] = {4};
        int argc = 1;
        if (l->url.user[0]) {
            argv[argc] = l->url.user;
            lens[argc++] = strlen(l->url.user);
        }
        argv[argc] = pw;
        lens[argc++] = strlen(pw);
        redisAsyncCommandArgv(ac, first_reply, l, argc, argv, lens);
    }
    return ac;
}

static void link_connect(struct link *l)
{
    l->state = CONNECTING;
    l->ready = 0;
    if (!(l->sub = open_one(l))) {
        if (l->state != DOWN)
            link_fail(l, "out of memory");
        return;
    }
    if (!(l->cmd = open_one(l))) {
        if (l->state != DOWN)
            link_fail(l, "out of memory");
        return;
    }
    /* Without AUTH, a PING tells that the command connection works. */
    if (!password(l) && redisAsyncCommand(l->cmd, first_reply, l, "PING") != REDIS_OK) {
        link_fail(l, "cannot queue a command");
        return;
    }
    /* The anchor first (see above), then every topic there is now. */
    char anchor[sizeof ANCHOR + BP_ORIGIN_MAX + 2];
    snprintf(anchor, sizeof anchor, "%s:%s", ANCHOR, l->bp->node);
    const char *argv[2] = {"PSUBSCRIBE", anchor};
    size_t lens[2] = {10, strlen(anchor)};
    if (redisAsyncCommandArgv(l->sub, sub_reply, l, 2, argv, lens) != REDIS_OK) {
        link_fail(l, "cannot queue a subscription command");
        return;
    }
    l->topics = resubscribe(l);
    if (l->state == CONNECTING) {
        ev_timer_set(&l->retry, CONNECT_TIMEOUT, 0);
        ev_timer_start(l->bp->s->loop, &l->retry);
    }
}

/* DOWN: time to try again. CONNECTING: the server has not answered. */
static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct link *l = container_of(w, struct link, retry);
    if (l->state == CONNECTING)
        link_fail(l, "no answer within 5 s");
    else if (l->state == DOWN)
        link_connect(l);
}

/* ---- publishing ---- */

static void published(redisAsyncContext *ac, void *reply, void *priv)
{
    struct link *l = ac->data;
    size_t cost = (size_t)(uintptr_t)priv;
    l->pending = l->pending > cost ? l->pending - cost : 0;
    const redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ERROR)
        return;
    l->refused++; /* a Redis out of memory, say: a line a second at most */
    ev_tstamp now = ev_now(l->bp->s->loop);
    if (now - l->refused_logged < 1)
        return;
    log_warn("backplane: %s refused %llu PUBLISH(es), the last with: %.200s", l->name,
             (unsigned long long)l->refused, r->str);
    l->refused = 0;
    l->refused_logged = now;
}

static void count_slow(struct link *l)
{
    struct backplane *bp = l->bp;
    bp->stats.dropped_pending++;
    l->slow_drops++;
    ev_tstamp now = ev_now(bp->s->loop);
    if (now - l->slow_logged < 1)
        return;
    log_warn("backplane: %s does not keep up (%zu bytes of publishes unanswered, "
             "backplane.max_pending is %zu); %llu publish(es) dropped",
             l->name, l->pending, bp->s->cfg->backplane_max_pending,
             (unsigned long long)l->slow_drops);
    l->slow_drops = 0;
    l->slow_logged = now;
}

void backplane_publish(struct backplane *bp, const char *topic, size_t tlen, uint8_t opcode,
                       const void *data, size_t dlen)
{
    struct link *l = shard(bp, topic, tlen);
    if (l->state != UP) {
        bp->stats.dropped_unreachable++;
        l->outage_drops++;
        return;
    }
    struct bp_message m = {opcode == 2 ? BP_BINARY : BP_TEXT, bp->node, bp->node_len, data, dlen};
    size_t elen = bp_envelope_size(&m);
    size_t need = bp->plen + tlen + elen;
    size_t cost = need + PUB_COST;
    size_t max = bp->s->cfg->backplane_max_pending;
    if (cost > max || l->pending > max - cost) {
        count_slow(l);
        return;
    }
    if (need > bp->scratch_cap) {
        char *b = realloc(bp->scratch, need);
        if (!b) {
            count_slow(l);
            return;
        }
        bp->scratch = b;
        bp->scratch_cap = need;
    }
    size_t clen = channel(bp, bp->scratch, topic, tlen);
    bp_encode(bp->scratch + clen, &m);
    const char *argv[3] = {"PUBLISH", bp->scratch, bp->scratch + clen};
    size_t lens[3] = {7, clen, elen};
    if (redisAsyncCommandArgv(l->cmd, published, (void *)(uintptr_t)cost, 3, argv, lens) !=
        REDIS_OK) {
        count_slow(l);
        return;
    }
    l->pending += cost;
    bp->stats.published++;
    if (bp->scratch_cap > (1u << 20)) { /* a large message: do not keep its room */
        free(bp->scratch);
        bp->scratch = NULL;
        bp->scratch_cap = 0;
    }
}

/* ---- the whole ---- */

struct backplane *backplane_new(struct server *s, char *err, size_t errlen)
{
    const struct config *cfg = s->cfg;
    if (!cfg->nbackplane)
        return NULL;
    struct backplane *bp = calloc(1, sizeof *bp + cfg->nbackplane * sizeof bp->links[0]);
    if (!bp) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    bp->s = s;
    bp->n = (unsigned)cfg->nbackplane;
    bp->prefix = cfg->backplane_prefix;
    bp->plen = strlen(bp->prefix);
    bp->node_len = strnlen(cfg->node_id, sizeof cfg->node_id);
    memcpy(bp->node, cfg->node_id, bp->node_len);
    for (unsigned i = 0; i < bp->n; i++) {
        struct link *l = &bp->links[i];
        l->bp = bp;
        if (bp_url_parse(cfg->backplane[i], &l->url, err, errlen)) { /* config checked it */
            free(bp);
            return NULL;
        }
        char name[sizeof l->name]; /* via a copy: GCC sees overlap with the flexible array */
        snprintf(name, sizeof name, "redis://%s:%d", l->url.host, l->url.port);
        memcpy(l->name, name, sizeof name);
        ev_timer_init(&l->retry, on_retry, 0, 0);
    }
    if (s->topics)
        topic_table_watch(s->topics, backplane_watch, bp);
    for (unsigned i = 0; i < bp->n; i++)
        link_connect(&bp->links[i]);
    return bp;
}

void backplane_free(struct backplane *bp)
{
    if (!bp)
        return;
    if (bp->s->topics)
        topic_table_watch(bp->s->topics, NULL, NULL);
    for (unsigned i = 0; i < bp->n; i++) {
        struct link *l = &bp->links[i];
        ev_timer_stop(bp->s->loop, &l->retry);
        int done;
        if (l->cmd && (l->cmd->c.flags & REDIS_CONNECTED))
            redisBufferWrite(&l->cmd->c, &done); /* the last publishes, if the socket takes them */
        l->state = DOWN;
        free_pair(l);
    }
    free(bp->scratch);
    free(bp);
}

const struct backplane_stats *backplane_stats(const struct backplane *bp)
{
    return &bp->stats;
}

const char *backplane_node(const struct backplane *bp)
{
    return bp->node;
}

unsigned backplane_servers(const struct backplane *bp)
{
    return bp->n;
}

unsigned backplane_connected(const struct backplane *bp)
{
    unsigned n = 0;
    for (unsigned i = 0; i < bp->n; i++)
        n += bp->links[i].state == UP;
    return n;
}
