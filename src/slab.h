/* slab: many objects of one size, in 64 KiB slabs mapped apart from the
 * heap. For long-lived objects that come in large numbers (a conn per
 * connection): malloc gives each an 8-byte header and rounds it up to 16
 * bytes, and puts it among short-lived blocks that leave holes when freed;
 * here an object costs its size, rounded up to 8. A new slab is touched
 * only as far as it is used; a slab whose objects are all free is
 * unmapped once another slab's worth of objects is free too. Under
 * AddressSanitizer every object is malloc'd instead, so that the sanitizer
 * sees it. One loop, no lock. */
#ifndef MOONPORT_SLAB_H
#define MOONPORT_SLAB_H

#include <stddef.h>

struct slab;

struct slab_cache {
    size_t size;          /* of an object: a multiple of 8 */
    struct slab *partial; /* slabs with room, most recently freed into first */
    size_t nfree;         /* objects free in all slabs (untouched ones too) */
    /* Free objects to keep, beyond a slab's worth, before an empty slab is
     * unmapped: for a cache that is emptied and filled again over and
     * over, so that it does not map, unmap and fault in the same memory
     * each time. 0: a slab's worth only. */
    size_t keep;
};

#define SLAB_CACHE_INIT(object_size) {.size = ((object_size) + 7) & ~(size_t)7}

/* A zeroed object, or NULL when out of memory. */
void *slab_alloc(struct slab_cache *sc);
/* The same, with whatever bytes the object had: for a caller that fills
 * it at once. */
void *slab_alloc_raw(struct slab_cache *sc);
void slab_free(struct slab_cache *sc, void *p);

#endif
