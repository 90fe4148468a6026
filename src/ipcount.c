/* ipcount: per-address connection counts. See ipcount.h. Linear probing,
 * and deletion by shifting the entries after a hole back into it, so the
 * table never fills with tombstones however clients come and go. */
#include "ipcount.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proxy.h"

struct slot {
    uint8_t key[16];
    uint32_t count; /* 0: the slot is free */
};

struct ipcount {
    uint64_t seed;
    size_t cap; /* a power of two */
    size_t used;
    struct slot *slots;
};

#define MIN_CAP 64

struct ipcount *ipcount_new(uint64_t seed)
{
    struct ipcount *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->seed = seed;
    t->cap = MIN_CAP;
    if (!(t->slots = calloc(t->cap, sizeof *t->slots))) {
        free(t);
        return NULL;
    }
    return t;
}

void ipcount_free(struct ipcount *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t);
}

static void key_of(const struct proxy_addr *a, uint8_t key[16])
{
    if (a->family == AF_INET) {
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        memcpy(key, mapped, 12);
        memcpy(key + 12, a->bytes, 4);
    } else {
        memcpy(key, a->bytes, 16);
    }
}

/* A keyed mix of the 16 bytes (two 64-bit halves through a multiply-xorshift). */
static size_t hash(const struct ipcount *t, const uint8_t key[16])
{
    uint64_t a, b;
    memcpy(&a, key, 8);
    memcpy(&b, key + 8, 8);
    uint64_t h = t->seed ^ 0x9E3779B97F4A7C15ull;
    h = (h ^ a) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    h = (h ^ b) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h = (h ^ t->seed) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (size_t)h;
}

/* The slot holding key, or the free slot where it would go. */
static struct slot *find(const struct ipcount *t, const uint8_t key[16])
{
    size_t mask = t->cap - 1;
    for (size_t i = hash(t, key) & mask;; i = (i + 1) & mask) {
        struct slot *s = &t->slots[i];
        if (!s->count || memcmp(s->key, key, 16) == 0)
            return s;
    }
}

static int resize(struct ipcount *t, size_t cap)
{
    struct slot *old = t->slots;
    size_t old_cap = t->cap;
    struct slot *fresh = calloc(cap, sizeof *fresh);
    if (!fresh)
        return -1;
    t->slots = fresh;
    t->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].count)
            *find(t, old[i].key) = old[i];
    free(old);
    return 0;
}

int ipcount_take(struct ipcount *t, const struct proxy_addr *a, unsigned limit)
{
    if (!a->family)
        return 1;
    uint8_t key[16];
    key_of(a, key);
    struct slot *s = find(t, key);
    if (s->count) {
        if (s->count >= limit)
            return 0;
        s->count++;
        return 1;
    }
    if (!limit)
        return 0;
    if ((t->used + 1) * 2 > t->cap) { /* at most half full */
        if (resize(t, t->cap * 2))
            return -1;
        s = find(t, key);
    }
    memcpy(s->key, key, 16);
    s->count = 1;
    t->used++;
    return 1;
}

void ipcount_put(struct ipcount *t, const struct proxy_addr *a)
{
    if (!a->family)
        return;
    uint8_t key[16];
    key_of(a, key);
    struct slot *s = find(t, key);
    if (!s->count)
        return; /* not counted: a caller's bug, but harmless */
    if (--s->count)
        return;
    /* Free the slot, then move back each entry after it that probing
     * would no longer reach. */
    size_t mask = t->cap - 1;
    size_t hole = (size_t)(s - t->slots);
    for (size_t i = (hole + 1) & mask; t->slots[i].count; i = (i + 1) & mask) {
        size_t home = hash(t, t->slots[i].key) & mask;
        /* i's entry may fill the hole if its home is not within (hole, i]. */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            t->slots[hole] = t->slots[i];
            t->slots[i].count = 0;
            hole = i;
        }
    }
    t->slots[hole].count = 0;
    t->used--;
    if (t->cap > MIN_CAP && t->used * 8 < t->cap)
        resize(t, t->cap / 2); /* if it fails, the larger table still works */
}

unsigned ipcount_get(const struct ipcount *t, const struct proxy_addr *a)
{
    if (!a->family)
        return 0;
    uint8_t key[16];
    key_of(a, key);
    return find(t, key)->count;
}

size_t ipcount_size(const struct ipcount *t)
{
    return t->used;
}
