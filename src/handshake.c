/* handshake: parse and validate the client's opening handshake (RFC 6455
 * 4.2.1) with llhttp, and compute the accept key. It owns one bounded block
 * per request, holding the target and the header strings, and the slabs
 * those blocks come from (hs_new); it never touches
 * a socket, and it answers every malformed input with a status, never by
 * crashing or reading past what it was given. */
#include "handshake.h"

#include "sha1.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

struct hs_slot {
    size_t name_off, value_off, value_len;
    int dropped; /* name contains '_': parsed, never shown */
};

/* One handshake's state is one block of HS_BLOCK bytes: the struct, then
 * room for HS_IN_SLOTS headers and a head of about 700 bytes, which holds
 * a typical browser's handshake. */
#define HS_BLOCK 2048
#define HS_IN_SLOTS 16

struct hs_slab;

struct hs_request {
    llhttp_t http;
    size_t max_head, head_bytes;
    unsigned max_headers;
    int status;
    const char *error;
    int done;
    int field; /* 0 none, 1 in a header name, 2 in a header value */
    int lines; /* where the line scan is: see find_refused() */

    char *buf; /* target and header strings, NUL-separated */
    size_t len, cap;
    size_t target_off;
    int have_target;
    int target_done; /* the request line's target has all arrived */
    char last;       /* the last byte find_refused looked at */
    const char *refused; /* why find_refused stopped */
    char why[96];    /* the error, when it is llhttp's */

    struct hs_slot *slots;
    size_t nslots, slots_cap;
    struct hs_header *view; /* built once the head is complete */
    size_t nview, view_cap;
    char method[24];
    struct hs_slab *slab; /* where the block came from: see hs_new */
    /* buf, slots and view start out here, in the block; a head that
     * outgrows them moves to malloc'd arrays. */
    struct hs_slot in_slots[HS_IN_SLOTS];
    struct hs_header in_view[HS_IN_SLOTS];
    char in_buf[];
};
_Static_assert(offsetof(struct hs_request, in_buf) + 512 <= HS_BLOCK,
               "a handshake block has room for a 512-byte head");

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static struct hs_request *req_of(llhttp_t *h)
{
    return (struct hs_request *)((char *)h - offsetof(struct hs_request, http));
}

static int fail(struct hs_request *r, int status, const char *why)
{
    if (!r->status) {
        r->status = status;
        r->error = why;
    }
    return -1;
}

/* Append to the string buffer. It cannot outgrow max_head by much: no more
 * than max_head bytes are ever given to llhttp. */
static int append(struct hs_request *r, const char *at, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap * 2;
        while (r->len + n + 1 > cap)
            cap *= 2;
        char *b = r->buf == r->in_buf ? malloc(cap) : realloc(r->buf, cap);
        if (!b)
            return fail(r, 500, "out of memory");
        if (r->buf == r->in_buf)
            memcpy(b, r->in_buf, r->len);
        r->buf = b;
        r->cap = cap;
    }
    if (n)
        memcpy(r->buf + r->len, at, n);
    r->len += n;
    return 0;
}

static int end_string(struct hs_request *r)
{
    if (append(r, "", 1))
        return -1;
    return 0;
}

static int on_url(llhttp_t *h, const char *at, size_t n)
{
    struct hs_request *r = req_of(h);
    if (!r->have_target) {
        r->have_target = 1;
        r->target_off = r->len;
    }
    return append(r, at, n);
}

static int on_url_complete(llhttp_t *h)
{
    req_of(h)->target_done = 1;
    return end_string(req_of(h));
}

static int on_header_field(llhttp_t *h, const char *at, size_t n)
{
    struct hs_request *r = req_of(h);
    if (r->field != 1) {
        if (r->nslots == r->slots_cap) {
            size_t cap = r->slots_cap * 2;
            int inside = r->slots == r->in_slots;
            struct hs_slot *s = inside ? malloc(cap * sizeof *s) : realloc(r->slots, cap * sizeof *s);
            if (!s)
                return fail(r, 500, "out of memory");
            if (inside)
                memcpy(s, r->in_slots, sizeof r->in_slots);
            r->slots = s;
            r->slots_cap = cap;
        }
        struct hs_slot *s = &r->slots[r->nslots++];
        memset(s, 0, sizeof *s);
        s->name_off = r->len;
        r->field = 1;
    }
    return append(r, at, n);
}

/* RFC 9110 5.6.2: token = 1*tchar. */
static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int on_header_field_complete(llhttp_t *h)
{
    struct hs_request *r = req_of(h);
    struct hs_slot *s = &r->slots[r->nslots - 1];
    size_t n = r->len - s->name_off;
    /* Counted here, not when the name starts: llhttp hands a name over in
     * pieces only when the input was cut inside it, so a count at the start
     * would answer a bad name on line max_headers + 1 with 431 or 400
     * depending on how the bytes arrived. */
    if (r->nslots > r->max_headers)
        return fail(r, 431, "too many header lines");
    if (n == 0)
        return fail(r, 400, "empty header name");
    for (size_t i = s->name_off; i < r->len; i++) {
        unsigned char c = (unsigned char)r->buf[i];
        if (!is_tchar(c))
            return fail(r, 400, "header name is not a token");
        if (c >= 'A' && c <= 'Z')
            r->buf[i] = (char)(c + 32);
        if (c == '_')
            s->dropped = 1;
    }
    return end_string(r);
}

static int on_header_value(llhttp_t *h, const char *at, size_t n)
{
    struct hs_request *r = req_of(h);
    if (r->field != 2) {
        r->field = 2;
        r->slots[r->nslots - 1].value_off = r->len;
    }
    return append(r, at, n);
}

static int on_header_value_complete(llhttp_t *h)
{
    struct hs_request *r = req_of(h);
    struct hs_slot *s = &r->slots[r->nslots - 1];
    if (r->field != 2) /* an empty value: llhttp gave no bytes */
        s->value_off = r->len;
    r->field = 0;
    /* RFC 9110 5.5: field-value is VCHAR, obs-text, SP and HTAB. Any other
     * control character (NUL, a lone CR or LF, VT, FF, the C0 separators,
     * DEL) is refused, not cleaned: a proxy in front might have read the
     * request differently. */
    size_t start = s->value_off, end = r->len;
    for (size_t i = start; i < end; i++) {
        unsigned char c = (unsigned char)r->buf[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(r, 400, "control character in a header value");
    }
    while (start < end && (r->buf[start] == ' ' || r->buf[start] == '\t'))
        start++;
    while (end > start && (r->buf[end - 1] == ' ' || r->buf[end - 1] == '\t'))
        end--;
    s->value_off = start;
    s->value_len = end - start;
    if (end_string(r))
        return -1;
    r->buf[start + s->value_len] = '\0';
    return 0;
}

static int on_message_complete(llhttp_t *h)
{
    req_of(h)->done = 1;
    return HPE_PAUSED; /* stop here: whatever follows is the client's frames */
}

static const llhttp_settings_t settings = {
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_message_complete = on_message_complete,
};

/* Where handshake blocks come from: slabs of HS_SLAB_BLOCKS blocks, mapped
 * apart from the heap. Handshakes are short-lived and come in bursts,
 * while the connections that come with them stay: from the heap, each
 * burst left its freed handshake buffers as holes between the long-lived
 * blocks of its connections, resident for good (10,000 connections
 * opened 256 at a time left ~470 KiB). From slabs, a freed block goes back
 * to the free list the next handshake takes from, and a slab whose blocks
 * are all free is unmapped once another slab's worth of blocks is free
 * too, so the memory of a burst goes back to the system when it is over
 * and one slab at most is kept. Under AddressSanitizer each block is
 * malloc'd, so that the sanitizer still sees every byte. The process has
 * one loop, so no lock. */
#define HS_SLAB_BLOCKS 32

struct hs_slab {
    struct hs_slab *prev, *next;
    struct hs_request *free; /* its free blocks (next_free) */
    unsigned nfree;
};

#if defined(__SANITIZE_ADDRESS__)
#define HS_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HS_MALLOC 1
#endif
#endif

#ifndef HS_MALLOC
static struct hs_slab *slabs; /* every slab; those with free blocks first */
static unsigned slabs_free;   /* free blocks in all of them */

/* A free block's first bytes link it to the next free block of its slab. */
static struct hs_request **next_free(struct hs_request *r) { return (struct hs_request **)r; }

static void slab_unlink(struct hs_slab *sl)
{
    if (sl->prev)
        sl->prev->next = sl->next;
    else
        slabs = sl->next;
    if (sl->next)
        sl->next->prev = sl->prev;
}

static void slab_push_front(struct hs_slab *sl)
{
    sl->prev = NULL;
    sl->next = slabs;
    if (slabs)
        slabs->prev = sl;
    slabs = sl;
}

#endif

static struct hs_request *block_take(void)
{
#ifdef HS_MALLOC
    struct hs_request *b = malloc(HS_BLOCK);
    if (b)
        b->slab = NULL;
    return b;
#else
    struct hs_slab *sl = slabs;
    if (!sl || !sl->nfree) {
        /* The slab header takes the first block. */
        void *m = mmap(NULL, (size_t)HS_BLOCK * (HS_SLAB_BLOCKS + 1), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return NULL;
        sl = m;
        sl->free = NULL;
        for (int i = HS_SLAB_BLOCKS; i >= 1; i--) {
            struct hs_request *b = (struct hs_request *)((char *)m + (size_t)i * HS_BLOCK);
            *next_free(b) = sl->free;
            sl->free = b;
        }
        sl->nfree = HS_SLAB_BLOCKS;
        slabs_free += HS_SLAB_BLOCKS;
        slab_push_front(sl);
    }
    struct hs_request *r = sl->free;
    sl->free = *next_free(r);
    slabs_free--;
    if (--sl->nfree == 0) { /* full: to the back, behind those with room */
        slab_unlink(sl);
        struct hs_slab *last = slabs;
        while (last && last->next)
            last = last->next;
        sl->prev = last;
        sl->next = NULL;
        if (last)
            last->next = sl;
        else
            slabs = sl;
    }
    r->slab = sl;
    return r;
#endif
}

static void block_give(struct hs_request *r)
{
#ifdef HS_MALLOC
    free(r);
#else
    struct hs_slab *sl = r->slab;
    *next_free(r) = sl->free;
    sl->free = r;
    slabs_free++;
    if (++sl->nfree == 1) { /* had none free: to the front */
        slab_unlink(sl);
        slab_push_front(sl);
    }
    if (sl->nfree == HS_SLAB_BLOCKS && slabs_free >= 2 * HS_SLAB_BLOCKS) {
        slab_unlink(sl);
        slabs_free -= HS_SLAB_BLOCKS;
        munmap(sl, (size_t)HS_BLOCK * (HS_SLAB_BLOCKS + 1));
    }
#endif
}

struct hs_request *hs_new(size_t max_head, unsigned max_headers)
{
    struct hs_request *r = block_take();
    if (!r)
        return NULL;
    struct hs_slab *sl = r->slab;
    memset(r, 0, offsetof(struct hs_request, in_slots));
    r->slab = sl;
    r->buf = r->in_buf;
    r->cap = HS_BLOCK - offsetof(struct hs_request, in_buf);
    r->slots = r->in_slots;
    r->slots_cap = HS_IN_SLOTS;
    r->view = r->in_view;
    r->view_cap = HS_IN_SLOTS;
    llhttp_init(&r->http, HTTP_REQUEST, &settings);
    r->max_head = max_head;
    r->max_headers = max_headers;
    return r;
}

void hs_free(struct hs_request *r)
{
    if (!r)
        return;
    if (r->buf != r->in_buf)
        free(r->buf);
    if (r->slots != r->in_slots)
        free(r->slots);
    if (r->view != r->in_view)
        free(r->view);
    block_give(r);
}

void hs_pool_drain(void)
{
#ifndef HS_MALLOC
    while (slabs && slabs->nfree == HS_SLAB_BLOCKS) {
        struct hs_slab *sl = slabs;
        slab_unlink(sl);
        slabs_free -= HS_SLAB_BLOCKS;
        munmap(sl, (size_t)HS_BLOCK * (HS_SLAB_BLOCKS + 1));
    }
#endif
}

static int finish(struct hs_request *r)
{
    size_t shown = 0;
    for (size_t i = 0; i < r->nslots; i++)
        shown += !r->slots[i].dropped;
    if (r->view_cap < shown) {
        size_t cap = shown;
        struct hs_header *v = r->view == r->in_view ? malloc(cap * sizeof *v)
                                                    : realloc(r->view, cap * sizeof *v);
        if (!v)
            return fail(r, 500, "out of memory");
        r->view = v;
        r->view_cap = cap;
    }
    for (size_t i = 0; i < r->nslots; i++) {
        struct hs_slot *s = &r->slots[i];
        if (s->dropped)
            continue;
        r->view[r->nview++] = (struct hs_header){
            .name = r->buf + s->name_off,
            .value = r->buf + s->value_off,
            .value_len = s->value_len,
        };
    }
    const char *m = llhttp_method_name((llhttp_method_t)llhttp_get_method(&r->http));
    strncpy(r->method, m ? m : "?", sizeof r->method - 1);
    if (!r->have_target)
        return fail(r, 400, "no request target");
    return 0;
}

enum { LINES_START, LINES_IN, LINES_AT_START, LINES_END };

/* The offset in data of the first byte the head is refused at, or len.
 * Two things llhttp would let through or misname are refused here:
 * - an obs-fold (a header line that begins with SP or HTAB): llhttp 8.1
 *   accepts folds silently and hands the continuation on as more of the
 *   value, so "X: a\r\n b" would read as "a b" and "X:\r\n b" as "b"; RFC
 *   9112 5.2 lets a server refuse them instead, and a proxy in front may
 *   have joined them differently;
 * - a line that ends in LF alone, the usual mistake of a hand-written
 *   client, which RFC 9112 2.2 lets a server refuse; llhttp refuses most of
 *   them, but names them after whatever it was parsing ("Invalid header
 *   value char").
 * The scan only follows line starts and line ends, and stops at the blank
 * line that ends the head; it refuses, never accepts, so llhttp still
 * decides what the request says, and whatever llhttp rejects before the
 * refused byte is still the error, however the input is split. */
static size_t find_refused(struct hs_request *r, const char *data, size_t len)
{
    for (size_t i = 0; i < len && r->lines != LINES_END; i++) {
        char c = data[i], prev = r->last;
        r->last = c;
        if (r->lines == LINES_START) {
            /* llhttp skips empty lines before the request line. */
            if (c != '\r' && c != '\n')
                r->lines = LINES_IN;
        } else if (c == '\n' && prev != '\r') {
            r->refused = "a line ends in a bare LF; HTTP lines end with CRLF";
            return i;
        } else if (r->lines == LINES_IN) {
            if (c == '\n')
                r->lines = LINES_AT_START;
        } else if (c == ' ' || c == '\t') {
            r->refused = "obsolete line folding in a header";
            return i;
        } else {
            r->lines = c == '\r' ? LINES_END : LINES_IN;
        }
    }
    return len;
}

/* Why llhttp refused the head: its reasons are its own fixed strings
 * ("Invalid header value char"), kept whole so the log says what llhttp
 * saw; nothing the client sent is ever quoted back. */
static const char *parse_error(struct hs_request *r)
{
    snprintf(r->why, sizeof r->why, "malformed request head: %s",
             llhttp_get_error_reason(&r->http));
    return r->why;
}

int hs_feed(struct hs_request *r, const char *data, size_t len, size_t *consumed)
{
    *consumed = 0;
    if (r->status)
        return HS_ERROR;
    if (r->done)
        return HS_DONE;
    /* Never give llhttp more than the head may take: the bound holds even
     * when a client sends megabytes in one write. */
    size_t room = r->max_head - r->head_bytes;
    size_t n = len < room ? len : room;
    /* Parse up to a refused byte, not past it: whatever llhttp rejects
     * before it is still the error, whichever way the bytes were split. */
    size_t stop = find_refused(r, data, n);
    llhttp_errno_t err = llhttp_execute(&r->http, data, stop);
    if (err == HPE_OK && stop < n)
        return fail(r, 400, r->refused), HS_ERROR;
    if (err == HPE_OK) {
        *consumed = n;
        r->head_bytes += n;
        if (r->head_bytes >= r->max_head)
            return fail(r, 431, "request head over the size limit"), HS_ERROR;
        return HS_NEED_MORE;
    }
    if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && r->done) {
        *consumed = (size_t)(llhttp_get_error_pos(&r->http) - data);
        r->head_bytes += *consumed;
        return finish(r) ? HS_ERROR : HS_DONE;
    }
    if (!r->status)
        fail(r, 400, parse_error(r));
    return HS_ERROR;
}

int hs_status(const struct hs_request *r)
{
    return r->status;
}

const char *hs_error(const struct hs_request *r)
{
    return r->error ? r->error : "";
}

const char *hs_method(const struct hs_request *r)
{
    return r->method;
}

const char *hs_target(const struct hs_request *r)
{
    return r->have_target ? r->buf + r->target_off : "";
}

const char *hs_target_read(const struct hs_request *r)
{
    return r->target_done ? r->buf + r->target_off : NULL;
}

size_t hs_header_count(const struct hs_request *r)
{
    return r->nview;
}

const struct hs_header *hs_header_at(const struct hs_request *r, size_t i)
{
    return i < r->nview ? &r->view[i] : NULL;
}

const char *hs_header_get(const struct hs_request *r, const char *name)
{
    for (size_t i = 0; i < r->nview; i++)
        if (strcmp(r->view[i].name, name) == 0)
            return r->view[i].value;
    return NULL;
}

static size_t header_count(const struct hs_request *r, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < r->nview; i++)
        n += strcmp(r->view[i].name, name) == 0;
    return n;
}

struct token_search {
    const char *want;
    int found;
};

static void match_token(const char *item, size_t len, void *ud)
{
    struct token_search *t = ud;
    if (strlen(t->want) == len && strncasecmp(item, t->want, len) == 0)
        t->found = 1;
}

/* 1 if any header called name holds token in its comma list. */
static int has_token(const struct hs_request *r, const char *name, const char *token)
{
    struct token_search t = {token, 0};
    for (size_t i = 0; i < r->nview && !t.found; i++)
        if (strcmp(r->view[i].name, name) == 0)
            hs_list_each(r->view[i].value, match_token, &t);
    return t.found;
}

int hs_check_upgrade(const struct hs_request *r, struct hs_upgrade *up, const char **why)
{
    memset(up, 0, sizeof *up);
    if (strcmp(r->method, "GET") != 0)
        return *why = "method is not GET", 405;
    if (!hs_header_get(r, "upgrade") && !hs_header_get(r, "sec-websocket-key"))
        return *why = "plain HTTP request to a WebSocket route", 426;
    if (!has_token(r, "upgrade", "websocket"))
        return *why = "Upgrade header does not name websocket", 400;
    if (!has_token(r, "connection", "upgrade"))
        return *why = "Connection header lacks the upgrade token", 400;
    uint8_t major = llhttp_get_http_major((llhttp_t *)&r->http);
    uint8_t minor = llhttp_get_http_minor((llhttp_t *)&r->http);
    if (major < 1 || (major == 1 && minor < 1))
        return *why = "HTTP version below 1.1", 400;
    const char *version = hs_header_get(r, "sec-websocket-version");
    if (!version || strcmp(version, "13") != 0 || header_count(r, "sec-websocket-version") != 1)
        return *why = "Sec-WebSocket-Version is not 13", 426;
    const char *key = hs_header_get(r, "sec-websocket-key");
    if (!key)
        return *why = "no Sec-WebSocket-Key", 400;
    if (header_count(r, "sec-websocket-key") != 1)
        return *why = "more than one Sec-WebSocket-Key", 400;
    if (!hs_key_valid(key))
        return *why = "Sec-WebSocket-Key is not 16 bytes of base64", 400;
    const char *cl = hs_header_get(r, "content-length");
    if ((cl && strcmp(cl, "0") != 0) || hs_header_get(r, "transfer-encoding"))
        return *why = "upgrade request with a body", 400;
    up->key = key;
    up->protocols = hs_header_get(r, "sec-websocket-protocol");
    up->extensions = hs_header_get(r, "sec-websocket-extensions");
    *why = NULL;
    return 0;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int hs_key_valid(const char *key)
{
    /* 16 bytes are 22 base64 digits and "==". */
    if (strlen(key) != 24 || key[22] != '=' || key[23] != '=')
        return 0;
    for (int i = 0; i < 22; i++)
        if (b64_value(key[i]) < 0)
            return 0;
    return 1;
}

void hs_accept_key(const char *key, char out[29])
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t d[SHA1_LEN];
    char input[64];
    size_t klen = strlen(key);
    if (klen > sizeof input - sizeof WS_GUID)
        klen = sizeof input - sizeof WS_GUID;
    memcpy(input, key, klen);
    memcpy(input + klen, WS_GUID, sizeof WS_GUID - 1);
    sha1(input, klen + sizeof WS_GUID - 1, d);
    /* 20 bytes: six groups of 3, then 2 bytes and one '=' */
    for (int i = 0, o = 0; i < SHA1_LEN; i += 3, o += 4) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | (i + 2 < SHA1_LEN ? d[i + 2] : 0);
        out[o] = b64[v >> 18];
        out[o + 1] = b64[(v >> 12) & 63];
        out[o + 2] = b64[(v >> 6) & 63];
        out[o + 3] = i + 2 < SHA1_LEN ? b64[v & 63] : '=';
    }
    out[28] = '\0';
}

void hs_list_each(const char *list, void (*fn)(const char *item, size_t len, void *ud), void *ud)
{
    if (!list)
        return;
    const char *p = list;
    for (;;) {
        const char *end = strchr(p, ',');
        const char *stop = end ? end : p + strlen(p);
        const char *a = p, *b = stop;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (b > a)
            fn(a, (size_t)(b - a), ud);
        if (!end)
            return;
        p = end + 1;
    }
}

const char *hs_reason(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}
