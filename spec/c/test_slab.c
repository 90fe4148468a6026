/* test_slab: objects from slabs are zeroed, distinct, within one aligned
 * slab, reused after a free, and slabs go back to the system when a
 * slab's worth more is free. The slab code itself, not the malloc it
 * falls back to under ASan: it is included here with SLAB_FORCE_MMAP. */
#define SLAB_FORCE_MMAP 1
#include "../../src/slab.c"

#include <stdio.h>

#include "unit.h"

struct obj {
    char bytes[216];
};

/* Mappings of this process: unmapped slabs make the count drop. */
static int mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0, ch;
    if (!f)
        return -1;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

int main(void)
{
    static struct slab_cache sc = SLAB_CACHE_INIT(sizeof(struct obj));
    enum { N = 2000 };
    static struct obj *o[N];
    CHECK_EQ(sc.size, 216);
    int before = mappings();
    int zeroed = 0, inside = 0;
    for (int i = 0; i < N; i++) {
        o[i] = slab_alloc(&sc);
        int z = 1;
        for (size_t k = 0; k < sizeof o[i]->bytes; k++)
            z &= o[i]->bytes[k] == 0;
        zeroed += z;
        char *base = (char *)slab_of(o[i]);
        inside += (char *)o[i] >= base + SLAB_HEADER && (char *)(o[i] + 1) <= base + SLAB_BYTES;
        memset(o[i]->bytes, i & 0xff, sizeof o[i]->bytes);
    }
    CHECK_EQ(zeroed, N);
    CHECK_EQ(inside, N);
    int intact = 0; /* no two overlap: every object still holds its pattern */
    for (int i = 0; i < N; i++)
        intact += o[i]->bytes[0] == (char)(i & 0xff) && o[i]->bytes[215] == (char)(i & 0xff);
    CHECK_EQ(intact, N);
    int grown = mappings();
    CHECK(grown > before);

    struct obj *freed = o[7];
    slab_free(&sc, freed);
    o[7] = slab_alloc(&sc);
    CHECK(o[7] == freed); /* the last freed is the next taken */
    CHECK(o[7]->bytes[0] == 0);

    for (int i = 0; i < N; i++)
        slab_free(&sc, o[i]);
    CHECK(mappings() < grown);     /* all but about one slab unmapped */
    CHECK(sc.nfree <= 2 * 303);    /* 303 objects of 216 bytes per 64 KiB slab */
    slab_free(&sc, NULL);

    /* With keep, that many more free objects stay mapped (above, without
     * it, at most two slabs' worth did). */
    static struct slab_cache kc = SLAB_CACHE_INIT(sizeof(struct obj));
    kc.keep = 1000;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++)
            o[i] = slab_alloc(&kc);
        for (int i = 0; i < N; i++)
            slab_free(&kc, o[i]);
        CHECK(kc.nfree >= 1000);           /* kept */
        CHECK(kc.nfree <= 1000 + 3 * 303); /* and no more than a slab or two over */
    }
    return unit_done("slab");
}
