/* test_lalloc: the Lua heap's allocator. Random allocations, resizes and
 * frees across every size class and past the largest keep each block's
 * bytes (a resize keeps the shorter length's worth), never overlap, and
 * are 16-byte aligned; a block resized within its class stays where it
 * is. Then a real LuaJIT state runs on it: strings, tables and closures
 * churned by the collector, and lua_close, which frees everything. The
 * slab code is included with SLAB_FORCE_MMAP so that the slabs, not the
 * malloc they fall back to under ASan, are what runs. */
#define SLAB_FORCE_MMAP 1
#include "../../src/slab.c"
#include "../../src/lalloc.c"

#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>

#include "unit.h"

enum { N = 4000 };

struct block {
    unsigned char *p;
    size_t n;
    unsigned char fill;
};

static unsigned long long rng = 88172645463325252ull;
static size_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (size_t)rng;
}

/* Sizes near every class edge, and larger ones. */
static size_t some_size(void)
{
    switch (next() % 4) {
    case 0:
        return 1 + next() % LALLOC_SMALL_MAX;
    case 1:
        return (1 + next() % (LALLOC_SMALL_MAX / LALLOC_STEP)) * LALLOC_STEP + (next() % 3) - 1;
    case 2:
        return LALLOC_SMALL_MAX - 2 + next() % 5;
    default:
        return 1 + next() % 5000;
    }
}

static int intact(const struct block *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b->p[i] != (unsigned char)(b->fill + i))
            return 0;
    return 1;
}

static void fill(struct block *b)
{
    for (size_t i = 0; i < b->n; i++)
        b->p[i] = (unsigned char)(b->fill + i);
}

static void random_blocks(void)
{
    static struct lalloc a;
    static struct block b[N];
    int bad_content = 0, misaligned = 0, moved_in_class = 0;
    lalloc_init(&a);
    for (int round = 0; round < 200000; round++) {
        struct block *x = &b[next() % N];
        if (!x->p) {
            x->n = some_size();
            x->p = lalloc_f(&a, NULL, 0, x->n);
            x->fill = (unsigned char)next();
            fill(x);
        } else if (next() % 3 == 0) {
            bad_content += !intact(x, x->n);
            CHECK(lalloc_f(&a, x->p, x->n, 0) == NULL);
            x->p = NULL;
            continue;
        } else {
            size_t n = some_size();
            void *old = x->p;
            x->p = lalloc_f(&a, x->p, x->n, n);
            bad_content += !intact(x, n < x->n ? n : x->n);
            if (x->n <= LALLOC_SMALL_MAX && n <= LALLOC_SMALL_MAX &&
                (x->n - 1) / LALLOC_STEP == (n - 1) / LALLOC_STEP)
                moved_in_class += x->p != old;
            x->n = n;
            fill(x);
        }
        misaligned += ((uintptr_t)x->p & 15) != 0;
    }
    for (int i = 0; i < N; i++) /* no block overlapped another */
        if (b[i].p) {
            bad_content += !intact(&b[i], b[i].n);
            lalloc_f(&a, b[i].p, b[i].n, 0);
        }
    CHECK_EQ(bad_content, 0);
    CHECK_EQ(misaligned, 0);
    CHECK_EQ(moved_in_class, 0);
    CHECK(lalloc_f(&a, NULL, 0, 0) == NULL);
}

static void lua_on_it(void)
{
    static struct lalloc a;
    lalloc_init(&a);
    lua_State *L = lua_newstate(lalloc_f, &a);
    CHECK(L != NULL);
    if (!L)
        return;
    luaL_openlibs(L);
    int rc = luaL_dostring(L, "local keep, n = {}, 0\n"
                              "for i = 1, 200000 do\n"
                              "  local s = ('x'):rep(i % 300) .. i\n"
                              "  local t = {s, i, function() return s end}\n"
                              "  if i % 7 == 0 then keep[#keep + 1] = t end\n"
                              "  if #keep > 500 then keep = {} end\n"
                              "  n = n + #t[3]()\n"
                              "end\n"
                              "collectgarbage()\n"
                              "return n");
    if (rc)
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
    CHECK_EQ(rc, 0);
    CHECK(lua_tonumber(L, -1) > 0);
    lua_close(L);
}

int main(void)
{
    random_blocks();
    lua_on_it();
    return unit_done("lalloc");
}
