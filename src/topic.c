/* topic: the topic table of publish/subscribe. See topic.h.
 *
 * Three hash tables of one kind (chained, intrusive, power-of-two buckets
 * that grow and shrink with their count): topics by name, members (a
 * subscriber's side of the index) by owner pointer, and subscriptions by
 * (topic, member). A subscription sits in its topic's array and in its
 * member's array and knows its index in both, so either side removes it by
 * moving the array's last element into its place. While a topic's fan-out
 * runs (busy), a removal from its array leaves a hole instead, so that
 * nobody the fan-out has not reached yet is moved behind it; the holes are
 * closed when the fan-out ends, and an emptied topic is freed then. */
#include "topic.h"

#include <stdlib.h>
#include <string.h>

struct hnode {
    struct hnode *next;
    uint64_t h;
};

struct htab {
    struct hnode **b; /* NULL while empty */
    size_t mask;      /* buckets - 1 */
    size_t n;
};

struct sub;

struct topic {
    struct hnode node;
    struct sub **subs; /* the subscriptions; NULL holes while busy */
    uint32_t n, cap;   /* slots used (holes included), allocated */
    uint32_t live;     /* subscribers: n minus the holes */
    uint32_t busy;     /* fan-outs running over subs */
    uint32_t cls_n[TOPIC_CLASSES]; /* subscribers per class */
    uint16_t len;
    char name[];
};

struct member {
    struct hnode node;
    void *owner;
    struct sub **subs;
    uint32_t n, cap;
};

struct sub {
    struct hnode node;
    struct topic *t;
    struct member *m;
    uint32_t ti, mi; /* index in t->subs, in m->subs */
    uint8_t cls;
};

struct topic_table {
    uint64_t seed;
    struct htab topics, members, subs;
    topic_watch_fn watch; /* told when a topic comes and goes, or NULL */
    void *watch_ctx;
};

#define HTAB_MIN 16

/* A bijective mixer: every input bit reaches every output bit. */
static inline uint64_t mix(uint64_t x)
{
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    return x;
}

/* Names are hashed with the table's secret seed: without it, a client that
 * picks topic names cannot aim them at one bucket. Not a cryptographic
 * hash; it only has to keep chains short for names nobody can plan. */
static uint64_t name_hash(uint64_t seed, const void *name, size_t len)
{
    const uint8_t *p = name;
    uint64_t h = mix(seed ^ (len * 0x9e3779b97f4a7c15ULL));
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix(h ^ w) + seed;
        p += 8;
        len -= 8;
    }
    if (len) {
        uint64_t w = 0;
        memcpy(&w, p, len);
        h = mix(h ^ w ^ ((uint64_t)len << 56)) + seed;
    }
    return mix(h);
}

static inline uint64_t ptr_hash(const void *p)
{
    return mix((uint64_t)(uintptr_t)p);
}

static inline uint64_t pair_hash(const void *a, const void *b)
{
    return mix((uint64_t)(uintptr_t)a ^ mix((uint64_t)(uintptr_t)b + 1));
}

/* Rehash into nb buckets (a power of two); -1 (nothing changed) when out of
 * memory. */
static int htab_resize(struct htab *t, size_t nb)
{
    struct hnode **b = calloc(nb, sizeof *b);
    if (!b)
        return -1;
    if (t->b) {
        for (size_t i = 0; i <= t->mask; i++) {
            struct hnode *x = t->b[i];
            while (x) {
                struct hnode *next = x->next;
                x->next = b[x->h & (nb - 1)];
                b[x->h & (nb - 1)] = x;
                x = next;
            }
        }
        free(t->b);
    }
    t->b = b;
    t->mask = nb - 1;
    return 0;
}

/* Make room for one more node: -1 only if the table has no buckets and
 * cannot get any. A table that cannot grow keeps working, with longer
 * chains. */
static int htab_reserve(struct htab *t)
{
    if (!t->b)
        return htab_resize(t, HTAB_MIN);
    if (t->n + 1 > t->mask + 1)
        htab_resize(t, (t->mask + 1) * 2);
    return 0;
}

static void htab_insert(struct htab *t, struct hnode *x, uint64_t h)
{
    x->h = h;
    x->next = t->b[h & t->mask];
    t->b[h & t->mask] = x;
    t->n++;
}

static void htab_remove(struct htab *t, struct hnode *x)
{
    struct hnode **pp = &t->b[x->h & t->mask];
    while (*pp != x)
        pp = &(*pp)->next;
    *pp = x->next;
    t->n--;
    if (!t->n) { /* nothing left: give the buckets back */
        free(t->b);
        t->b = NULL;
        t->mask = 0;
    } else if (t->mask + 1 > HTAB_MIN && t->n < (t->mask + 1) / 8) {
        htab_resize(t, (t->mask + 1) / 2); /* if it cannot, it stays larger */
    }
}

static struct hnode *htab_first(const struct htab *t, uint64_t h)
{
    return t->b ? t->b[h & t->mask] : NULL;
}

static struct topic *find_topic(const struct topic_table *tt, uint64_t h, const void *name,
                                size_t len)
{
    for (struct hnode *x = htab_first(&tt->topics, h); x; x = x->next) {
        struct topic *t = (struct topic *)x;
        if (x->h == h && t->len == len && memcmp(t->name, name, len) == 0)
            return t;
    }
    return NULL;
}

static struct member *find_member(const struct topic_table *tt, const void *owner)
{
    uint64_t h = ptr_hash(owner);
    for (struct hnode *x = htab_first(&tt->members, h); x; x = x->next) {
        struct member *m = (struct member *)x;
        if (m->owner == owner)
            return m;
    }
    return NULL;
}

static struct sub *find_sub(const struct topic_table *tt, const struct topic *t,
                            const struct member *m)
{
    uint64_t h = pair_hash(t, m);
    for (struct hnode *x = htab_first(&tt->subs, h); x; x = x->next) {
        struct sub *s = (struct sub *)x;
        if (s->t == t && s->m == m)
            return s;
    }
    return NULL;
}

/* Room for one more pointer in *arr (n used of *cap); -1 when out of memory. */
static int arr_reserve(struct sub ***arr, uint32_t n, uint32_t *cap)
{
    if (n < *cap)
        return 0;
    uint32_t nc = *cap ? *cap * 2 : 4;
    struct sub **a = realloc(*arr, nc * sizeof *a);
    if (!a)
        return -1;
    *arr = a;
    *cap = nc;
    return 0;
}

/* An array that has emptied to a quarter gives half of its room back. */
static void arr_shrink(struct sub ***arr, uint32_t n, uint32_t *cap)
{
    if (*cap <= 8 || n > *cap / 4)
        return;
    struct sub **a = realloc(*arr, (*cap / 2) * sizeof *a);
    if (a) {
        *arr = a;
        *cap /= 2;
    }
}

struct topic_table *topic_table_new(uint64_t seed)
{
    struct topic_table *tt = calloc(1, sizeof *tt);
    if (tt)
        tt->seed = seed;
    return tt;
}

static void topic_free(struct topic_table *tt, struct topic *t)
{
    if (tt->watch)
        tt->watch(tt->watch_ctx, t->name, t->len, 0);
    htab_remove(&tt->topics, &t->node);
    free(t->subs);
    free(t);
}

static void member_free(struct topic_table *tt, struct member *m)
{
    htab_remove(&tt->members, &m->node);
    free(m->subs);
    free(m);
}

/* Close the holes a fan-out left in t's array. */
static void topic_compact(struct topic *t)
{
    uint32_t j = 0;
    for (uint32_t i = 0; i < t->n; i++) {
        if (t->subs[i]) {
            t->subs[j] = t->subs[i];
            t->subs[j]->ti = j;
            j++;
        }
    }
    t->n = j;
    arr_shrink(&t->subs, t->n, &t->cap);
}

/* The end of a subscription, from both sides; frees the topic and the
 * member when it was their last (the topic only once no fan-out runs). */
static void sub_remove(struct topic_table *tt, struct sub *s)
{
    struct topic *t = s->t;
    struct member *m = s->m;
    htab_remove(&tt->subs, &s->node);
    t->cls_n[s->cls]--;
    t->live--;
    if (t->busy) {
        t->subs[s->ti] = NULL;
    } else {
        struct sub *last = t->subs[--t->n];
        t->subs[s->ti] = last;
        last->ti = s->ti;
        arr_shrink(&t->subs, t->n, &t->cap);
    }
    struct sub *last = m->subs[--m->n];
    m->subs[s->mi] = last;
    last->mi = s->mi;
    free(s);
    if (!t->live && !t->busy)
        topic_free(tt, t);
    if (!m->n)
        member_free(tt, m);
    else
        arr_shrink(&m->subs, m->n, &m->cap);
}

/* Free every node of t: f is the node's struct (its hnode comes first). */
static void htab_free_all(struct htab *t, void (*f)(struct hnode *))
{
    for (size_t i = 0; t->b && i <= t->mask; i++) {
        struct hnode *x = t->b[i];
        while (x) {
            struct hnode *next = x->next;
            f(x);
            x = next;
        }
    }
    free(t->b);
}

static void free_sub_node(struct hnode *x)
{
    free(x);
}

static void free_topic_node(struct hnode *x)
{
    free(((struct topic *)x)->subs);
    free(x);
}

static void free_member_node(struct hnode *x)
{
    free(((struct member *)x)->subs);
    free(x);
}

void topic_table_free(struct topic_table *tt)
{
    if (!tt)
        return;
    htab_free_all(&tt->subs, free_sub_node);
    htab_free_all(&tt->members, free_member_node);
    htab_free_all(&tt->topics, free_topic_node);
    free(tt);
}

int topic_subscribe(struct topic_table *tt, void *owner, unsigned cls, const void *name,
                    size_t len)
{
    uint64_t h = name_hash(tt->seed, name, len);
    struct topic *t = find_topic(tt, h, name, len);
    struct member *m = find_member(tt, owner);
    if (t && m && find_sub(tt, t, m))
        return 0;
    struct topic *new_t = NULL;
    struct member *new_m = NULL;
    struct sub *s = NULL;
    if (!t) {
        t = new_t = calloc(1, sizeof *t + len);
        if (!t)
            goto fail;
        memcpy(t->name, name, len);
        t->len = (uint16_t)len;
    }
    if (!m) {
        m = new_m = calloc(1, sizeof *m);
        if (!m)
            goto fail;
        m->owner = owner;
    }
    s = malloc(sizeof *s);
    if (!s || arr_reserve(&t->subs, t->n, &t->cap) || arr_reserve(&m->subs, m->n, &m->cap) ||
        (new_t && htab_reserve(&tt->topics)) || (new_m && htab_reserve(&tt->members)) ||
        htab_reserve(&tt->subs))
        goto fail;
    if (new_t)
        htab_insert(&tt->topics, &t->node, h);
    if (new_m)
        htab_insert(&tt->members, &m->node, ptr_hash(owner));
    s->t = t;
    s->m = m;
    s->cls = (uint8_t)(cls & (TOPIC_CLASSES - 1));
    s->ti = t->n;
    s->mi = m->n;
    t->subs[t->n++] = s;
    m->subs[m->n++] = s;
    t->live++;
    t->cls_n[s->cls]++;
    htab_insert(&tt->subs, &s->node, pair_hash(t, m));
    if (new_t && tt->watch)
        tt->watch(tt->watch_ctx, t->name, t->len, 1);
    return 1;
fail:
    free(s);
    if (new_m) {
        free(new_m->subs);
        free(new_m);
    }
    if (new_t) {
        free(new_t->subs);
        free(new_t);
    }
    return -1;
}

int topic_unsubscribe(struct topic_table *tt, void *owner, const void *name, size_t len)
{
    struct topic *t = find_topic(tt, name_hash(tt->seed, name, len), name, len);
    struct member *m = t ? find_member(tt, owner) : NULL;
    struct sub *s = m ? find_sub(tt, t, m) : NULL;
    if (!s)
        return 0;
    sub_remove(tt, s);
    return 1;
}

int topic_is_subscribed(const struct topic_table *tt, const void *owner, const void *name,
                        size_t len)
{
    struct topic *t = find_topic(tt, name_hash(tt->seed, name, len), name, len);
    struct member *m = t ? find_member(tt, owner) : NULL;
    return m && find_sub(tt, t, m);
}

void topic_leave_all(struct topic_table *tt, const void *owner)
{
    if (!tt || !tt->members.n)
        return;
    struct member *m = find_member(tt, owner);
    if (!m)
        return;
    /* From the end: no element moves, and the last removal frees m. */
    for (uint32_t i = m->n; i > 0; i--)
        sub_remove(tt, m->subs[i - 1]);
}

size_t topic_owner_count(const struct topic_table *tt, const void *owner)
{
    const struct member *m = tt ? find_member(tt, owner) : NULL;
    return m ? m->n : 0;
}

const char *topic_owner_topic(const struct topic_table *tt, const void *owner, size_t i,
                              size_t *len)
{
    const struct member *m = find_member(tt, owner);
    if (!m || i >= m->n)
        return NULL;
    *len = m->subs[i]->t->len;
    return m->subs[i]->t->name;
}

struct topic *topic_find(const struct topic_table *tt, const void *name, size_t len)
{
    if (!tt || !tt->topics.n)
        return NULL;
    return find_topic(tt, name_hash(tt->seed, name, len), name, len);
}

size_t topic_subscribers(const struct topic_table *tt, const void *name, size_t len)
{
    const struct topic *t = topic_find(tt, name, len);
    return t ? t->live : 0;
}

unsigned topic_classes(const struct topic *t)
{
    unsigned mask = 0;
    for (unsigned k = 0; k < TOPIC_CLASSES; k++)
        if (t->cls_n[k])
            mask |= 1u << k;
    return mask;
}

size_t topic_publish(struct topic_table *tt, struct topic *t, const void *skip,
                     topic_deliver_fn deliver, void *ctx)
{
    size_t delivered = 0;
    uint32_t n = t->n; /* who joins meanwhile is not reached */
    t->busy++;
    for (uint32_t i = 0; i < n; i++) {
        struct sub *s = t->subs[i]; /* the array may move: read it each time */
        if (!s || s->m->owner == skip)
            continue;
        delivered += deliver(ctx, s->m->owner, s->cls) == 1;
    }
    if (--t->busy == 0) {
        if (t->live != t->n)
            topic_compact(t);
        if (!t->live)
            topic_free(tt, t);
    }
    return delivered;
}

void topic_table_watch(struct topic_table *tt, topic_watch_fn fn, void *ctx)
{
    tt->watch = fn;
    tt->watch_ctx = ctx;
}

void topic_each(const struct topic_table *tt, void (*fn)(void *ctx, const char *name, size_t len),
                void *ctx)
{
    for (size_t i = 0; tt && tt->topics.b && i <= tt->topics.mask; i++)
        for (struct hnode *x = tt->topics.b[i]; x; x = x->next)
            fn(ctx, ((struct topic *)x)->name, ((struct topic *)x)->len);
}

void topic_table_stats(const struct topic_table *tt, size_t *topics, size_t *owners,
                       size_t *subscriptions)
{
    *topics = tt ? tt->topics.n : 0;
    *owners = tt ? tt->members.n : 0;
    *subscriptions = tt ? tt->subs.n : 0;
}
