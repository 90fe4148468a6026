/* slab: fixed-size objects in aligned slabs. See slab.h. */
#include "slab.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(SLAB_FORCE_MMAP) /* spec/c/test_slab.c tests the slabs under ASan */
#elif defined(__SANITIZE_ADDRESS__)
#define SLAB_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_MALLOC 1
#endif
#endif

#ifdef SLAB_MALLOC

void *slab_alloc(struct slab_cache *sc) { return calloc(1, sc->size); }
void *slab_alloc_raw(struct slab_cache *sc) { return malloc(sc->size); }
void slab_free(struct slab_cache *sc, void *p)
{
    (void)sc;
    free(p);
}

#else

#define SLAB_BYTES ((size_t)64 * 1024) /* also their alignment */

struct slab {
    struct slab *prev, *next; /* in sc->partial while it has room */
    void *free;               /* freed objects, each linking the next */
    unsigned nfree, nobjs;
    unsigned bumped; /* objects handed out from the untouched end so far */
    int listed;
};

#define SLAB_HEADER ((sizeof(struct slab) + 15) & ~(size_t)15)

static struct slab *slab_of(void *p) { return (struct slab *)((uintptr_t)p & ~(SLAB_BYTES - 1)); }

static void unlist(struct slab_cache *sc, struct slab *sl)
{
    if (sl->prev)
        sl->prev->next = sl->next;
    else
        sc->partial = sl->next;
    if (sl->next)
        sl->next->prev = sl->prev;
    sl->listed = 0;
}

static void list_front(struct slab_cache *sc, struct slab *sl)
{
    sl->prev = NULL;
    sl->next = sc->partial;
    if (sc->partial)
        sc->partial->prev = sl;
    sc->partial = sl;
    sl->listed = 1;
}

static struct slab *slab_new(struct slab_cache *sc)
{
    /* Twice the size, then the unaligned ends given back: aligned. */
    char *m = mmap(NULL, 2 * SLAB_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    char *a = (char *)(((uintptr_t)m + SLAB_BYTES - 1) & ~(SLAB_BYTES - 1));
    if (a > m)
        munmap(m, (size_t)(a - m));
    if (a + SLAB_BYTES < m + 2 * SLAB_BYTES)
        munmap(a + SLAB_BYTES, (size_t)(m + 2 * SLAB_BYTES - (a + SLAB_BYTES)));
    struct slab *sl = (struct slab *)a;
    sl->free = NULL;
    sl->nobjs = sl->nfree = (unsigned)((SLAB_BYTES - SLAB_HEADER) / sc->size);
    sl->bumped = 0;
    sc->nfree += sl->nobjs;
    list_front(sc, sl);
    return sl;
}

void *slab_alloc_raw(struct slab_cache *sc)
{
    struct slab *sl = sc->partial;
    if (!sl && !(sl = slab_new(sc)))
        return NULL;
    void *p;
    if (sl->free) {
        p = sl->free;
        memcpy(&sl->free, p, sizeof sl->free);
    } else {
        p = (char *)sl + SLAB_HEADER + (size_t)sl->bumped++ * sc->size;
    }
    sc->nfree--;
    if (--sl->nfree == 0)
        unlist(sc, sl);
    return p;
}

void *slab_alloc(struct slab_cache *sc)
{
    void *p = slab_alloc_raw(sc);
    if (p)
        memset(p, 0, sc->size);
    return p;
}

void slab_free(struct slab_cache *sc, void *p)
{
    if (!p)
        return;
    struct slab *sl = slab_of(p);
    memcpy(p, &sl->free, sizeof sl->free);
    sl->free = p;
    sc->nfree++;
    sl->nfree++;
    if (!sl->listed)
        list_front(sc, sl);
    if (sl->nfree == sl->nobjs && sc->nfree >= 2 * (size_t)sl->nobjs + sc->keep) {
        unlist(sc, sl);
        sc->nfree -= sl->nobjs;
        munmap(sl, SLAB_BYTES);
    }
}

#endif
