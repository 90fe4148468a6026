/* lalloc: the allocator of the Lua heap (lua_newstate's). Every message an
 * app receives is a new Lua string, so the collector frees as many small
 * blocks as arrive; LuaJIT's own allocator (dlmalloc's design) coalesces
 * each freed neighbour into larger free chunks and splits them again on
 * the next allocation, ~150 instructions per string. LuaJIT always says
 * the size of the block it frees or resizes, so small blocks need no
 * header: they live in slabs (slab.h) of one size class each, 16 bytes
 * apart, and a free is a push on the class's free list. Larger blocks go
 * to malloc. */
#ifndef MOONPORT_LALLOC_H
#define MOONPORT_LALLOC_H

#include <stddef.h>

#include "slab.h"

#define LALLOC_STEP 16
#define LALLOC_SMALL_MAX 256 /* larger blocks are malloc's */
/* Bytes of free blocks a class keeps mapped: each collector cycle frees
 * about as much garbage as it lets pile up (lbridge.c, GC_SLACK_KIB), and
 * the next cycle's strings fill the same memory again, so unmapping it
 * would only cost an munmap, an mmap and a page fault per 4 KiB page per
 * cycle. */
#define LALLOC_KEEP ((size_t)512 * 1024)

struct lalloc {
    struct slab_cache cls[LALLOC_SMALL_MAX / LALLOC_STEP];
};

void lalloc_init(struct lalloc *a);

/* A lua_Alloc: ud is the struct lalloc. */
void *lalloc_f(void *ud, void *p, size_t osize, size_t nsize);

#endif
