/* buf: a growable byte buffer with a read offset, for a connection's output
 * queue and its pending message. A struct buf is one pointer: the offsets
 * live in the allocated block with the bytes, so an idle connection pays 8
 * bytes per buffer. A buffer that empties is given up (to a small pool of
 * reusable blocks), so an idle connection holds no block at all. */
#ifndef MOONPORT_BUF_H
#define MOONPORT_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf_block {
    size_t off, len, cap; /* bytes [off, len) of data are pending */
    uint8_t data[];
};

struct buf {
    struct buf_block *blk; /* NULL while empty */
};

/* Make room for n more bytes; returns a pointer to write them at, or NULL
 * when out of memory. buf_commit then counts them. The usual case, room in
 * the block being filled, is inline: a short frame is queued per message. */
uint8_t *buf_reserve_grow(struct buf *b, size_t n);
static inline uint8_t *buf_reserve(struct buf *b, size_t n)
{
    struct buf_block *k = b->blk;
    if (k && k->cap - k->len >= n)
        return k->data + k->len;
    return buf_reserve_grow(b, n);
}
static inline void buf_commit(struct buf *b, size_t n) { b->blk->len += n; }
int buf_append(struct buf *b, const void *p, size_t n);
static inline size_t buf_pending(const struct buf *b)
{
    return b->blk ? b->blk->len - b->blk->off : 0;
}
/* The first pending byte, or NULL when there is none. */
static inline uint8_t *buf_head(const struct buf *b)
{
    return b->blk ? b->blk->data + b->blk->off : NULL;
}
/* Drop n bytes from the front; frees the memory once nothing is pending. */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
/* Free the pooled blocks (at exit). */
void buf_pool_drain(void);

#endif
