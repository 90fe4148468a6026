/* buf: a growable byte buffer with a read offset, for a connection's output
 * queue and its pending message. A buffer that empties is given up (to a
 * small pool of reusable buffers), so an idle connection holds none. */
#ifndef MOONPORT_BUF_H
#define MOONPORT_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data;
    size_t off, len, cap; /* bytes [off, len) are pending */
};

/* Make room for n more bytes; returns a pointer to write them at, or NULL
 * when out of memory. buf_commit then counts them. */
uint8_t *buf_reserve(struct buf *b, size_t n);
static inline void buf_commit(struct buf *b, size_t n) { b->len += n; }
int buf_append(struct buf *b, const void *p, size_t n);
static inline size_t buf_pending(const struct buf *b) { return b->len - b->off; }
/* Drop n bytes from the front; frees the memory once nothing is pending. */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
/* Free the pooled buffers (at exit). */
void buf_pool_drain(void);

#endif
