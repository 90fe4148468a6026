/* buf: growable byte buffers. Growth doubles; an emptied buffer leaves its
 * connection, so that memory follows traffic, not the connection count. It
 * goes to a small pool first: a connection echoing message after message
 * then reuses the same few blocks instead of a malloc, a free and fresh
 * page faults per message. The pool is bounded in count and bytes, and the
 * process has one loop, so it needs no lock. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

/* Enough for every connection written in one loop turn of 1,000 one-message
 * echoes (each holds a first block until the flush): with 256 slots, three
 * quarters of those blocks were a malloc and a free per message. */
#define POOL_SLOTS 2048
#define POOL_BUF_MAX (64 * 1024)         /* larger blocks are freed, not pooled */
#define POOL_BYTES_MAX (4 * 1024 * 1024) /* and the pool holds at most this */
/* A connection's output in one loop iteration is often a burst of frames:
 * a first block of 2 KiB holds a typical burst without regrowing. */
#define FIRST_CAP (2048 - sizeof(struct buf_block))

static struct buf_block *pool[POOL_SLOTS];
static int pool_n;
static size_t pool_bytes;

/* A pooled block of at least n bytes, if there is one. */
static struct buf_block *pool_take(size_t n)
{
    for (int i = pool_n - 1; i >= 0; i--) {
        struct buf_block *k = pool[i];
        if (k->cap >= n) {
            pool[i] = pool[--pool_n];
            pool_bytes -= k->cap;
            k->off = k->len = 0;
            return k;
        }
    }
    return NULL;
}

void buf_pool_drain(void)
{
    while (pool_n)
        free(pool[--pool_n]);
    pool_bytes = 0;
}

uint8_t *buf_reserve_grow(struct buf *b, size_t n)
{
    struct buf_block *k = b->blk;
    if (!k && (k = pool_take(n)) != NULL)
        b->blk = k;
    if (k) {
        if (k->cap - k->len >= n)
            return k->data + k->len;
        if (k->off) { /* slide the pending bytes down before growing */
            memmove(k->data, k->data + k->off, k->len - k->off);
            k->len -= k->off;
            k->off = 0;
            if (k->cap - k->len >= n)
                return k->data + k->len;
        }
    }
    size_t len = k ? k->len : 0;
    size_t cap = k ? k->cap : FIRST_CAP;
    while (cap - len < n) {
        if (cap > (SIZE_MAX - sizeof *k) / 2)
            return NULL;
        cap = (cap + sizeof *k) * 2 - sizeof *k; /* blocks of 2^k bytes */
    }
    struct buf_block *g = realloc(k, sizeof *k + cap);
    if (!g)
        return NULL;
    if (!k)
        g->off = g->len = 0;
    g->cap = cap;
    b->blk = g;
    return g->data + g->len;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    uint8_t *w = buf_reserve(b, n);
    if (!w)
        return -1;
    memcpy(w, p, n);
    b->blk->len += n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    b->blk->off += n;
    if (b->blk->off >= b->blk->len)
        buf_reset(b);
}

void buf_reset(struct buf *b)
{
    struct buf_block *k = b->blk;
    if (!k)
        return;
    if (k->cap <= POOL_BUF_MAX && pool_n < POOL_SLOTS && pool_bytes + k->cap <= POOL_BYTES_MAX) {
        pool[pool_n++] = k;
        pool_bytes += k->cap;
    } else
        free(k);
    b->blk = NULL;
}
