/* lalloc: the Lua heap's allocator. See lalloc.h. */
#include "lalloc.h"

#include <stdlib.h>
#include <string.h>

void lalloc_init(struct lalloc *a)
{
    for (size_t i = 0; i < sizeof a->cls / sizeof a->cls[0]; i++) {
        a->cls[i] = (struct slab_cache)SLAB_CACHE_INIT((i + 1) * LALLOC_STEP);
        a->cls[i].keep = LALLOC_KEEP / a->cls[i].size;
    }
}

/* The class of a small block of n bytes (0 < n <= LALLOC_SMALL_MAX). */
static inline struct slab_cache *class_of(struct lalloc *a, size_t n)
{
    return &a->cls[(n - 1) / LALLOC_STEP];
}

static inline int small(size_t n)
{
    return n - 1 < LALLOC_SMALL_MAX; /* 0 wraps round: not small */
}

/* Free a block, small or not. */
static void release(struct lalloc *a, void *p, size_t n)
{
    if (small(n))
        slab_free(class_of(a, n), p);
    else
        free(p);
}

/* Grow or shrink p to nsize: in place within a class, else a new block.
 * Kept out of line, so that the common cases save no registers. */
__attribute__((noinline)) static void *resize(struct lalloc *a, void *p, size_t osize, size_t nsize)
{
    if (small(osize) && small(nsize) && class_of(a, osize) == class_of(a, nsize))
        return p;
    if (!small(osize) && !small(nsize))
        return realloc(p, nsize);
    void *q = small(nsize) ? slab_alloc_raw(class_of(a, nsize)) : malloc(nsize);
    if (!q) /* Lua keeps the old block when a resize fails */
        return NULL;
    memcpy(q, p, osize < nsize ? osize : nsize);
    release(a, p, osize);
    return q;
}

/* The two common cases first, each a tail call. */
void *lalloc_f(void *ud, void *p, size_t osize, size_t nsize)
{
    struct lalloc *a = ud;
    if (!p) {
        if (small(nsize))
            return slab_alloc_raw(class_of(a, nsize));
        return nsize ? malloc(nsize) : NULL;
    }
    if (!nsize) {
        release(a, p, osize);
        return NULL;
    }
    return resize(a, p, osize, nsize);
}
