/* buf: growable byte buffers. Growth doubles; an emptied buffer leaves its
 * connection, so that memory follows traffic, not the connection count. It
 * goes to a small pool first: a connection echoing message after message
 * then reuses the same few buffers instead of a malloc, a free and fresh
 * page faults per message. The pool is bounded in count and bytes, and the
 * process has one loop, so it needs no lock. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

#define POOL_SLOTS 32
#define POOL_BUF_MAX (64 * 1024) /* larger buffers are freed, not pooled */

static struct {
    uint8_t *data;
    size_t cap;
} pool[POOL_SLOTS];
static int pool_n;

/* Give b a pooled buffer of at least n bytes, if there is one. */
static void pool_take(struct buf *b, size_t n)
{
    for (int i = pool_n - 1; i >= 0; i--) {
        if (pool[i].cap >= n) {
            b->data = pool[i].data;
            b->cap = pool[i].cap;
            pool[i] = pool[--pool_n];
            return;
        }
    }
}

void buf_pool_drain(void)
{
    while (pool_n)
        free(pool[--pool_n].data);
}

uint8_t *buf_reserve(struct buf *b, size_t n)
{
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (!b->data)
        pool_take(b, n);
    if (b->cap - b->len >= n)
        return b->data + b->len;
    if (b->off) { /* slide the pending bytes down before growing */
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= n)
            return b->data + b->len;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2)
            return NULL;
        cap *= 2;
    }
    uint8_t *d = realloc(b->data, cap);
    if (!d)
        return NULL;
    b->data = d;
    b->cap = cap;
    return d + b->len;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    uint8_t *w = buf_reserve(b, n);
    if (!w)
        return -1;
    if (n)
        memcpy(w, p, n);
    b->len += n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len)
        buf_reset(b);
}

void buf_reset(struct buf *b)
{
    if (b->data && b->cap <= POOL_BUF_MAX && pool_n < POOL_SLOTS) {
        pool[pool_n].data = b->data;
        pool[pool_n++].cap = b->cap;
    } else {
        free(b->data);
    }
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}
