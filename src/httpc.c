/* httpc: an HTTP/1.1 response parser for moonport.http, with llhttp (in
 * HTTP_RESPONSE mode). It owns the llhttp state and two buffers, the head's
 * headers and the body, each grown on demand and never past its limit. It
 * never reads a socket and never trusts the bytes it is given: whatever
 * llhttp refuses, and whatever would pass a limit, ends in HTTPC_ERROR with
 * a short reason. The interface and its return codes: httpc.h. */
#include "httpc.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct httpc {
    llhttp_t http;
    size_t max_head, max_body;
    size_t head_fed;     /* bytes given to llhttp before the final head ended */
    size_t trailer_len;  /* bytes of chunked trailers seen (not kept) */
    size_t name_len;     /* of the header name being read */
    char *head;          /* "name\0value\0" for each header of the final response */
    size_t head_len, head_cap;
    char *body;
    size_t body_len, body_cap;
    int state;           /* HTTPC_NEED_MORE, HTTPC_DONE, HTTPC_ERROR */
    int status;
    unsigned no_body : 1;      /* a response to HEAD */
    unsigned headers_done : 1; /* the final (not 1xx) head has ended */
    unsigned done : 1;         /* on_message_complete of the final response */
    unsigned keep_alive : 1;
    unsigned last_chunk : 1;   /* the 0-size chunk came: trailers, lines only */
    char err[96];
};

static struct httpc *of(llhttp_t *h)
{
    return (struct httpc *)((char *)h - offsetof(struct httpc, http));
}

/* Fail from a callback: the message is kept, llhttp is told to stop. */
static int cb_fail(struct httpc *p, const char *why)
{
    snprintf(p->err, sizeof p->err, "%s", why);
    return -1;
}

/* Grow *buf to hold need bytes (need <= limit + 1 by the callers' checks). */
static int reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 256;
    while (n < need)
        n *= 2;
    char *b = realloc(*buf, n);
    if (!b)
        return -1;
    *buf = b;
    *cap = n;
    return 0;
}

/* Append to the head; the bytes it may hold are bounded by max_head, as
 * nothing is stored that llhttp was not given before the head ended. */
static int head_put(struct httpc *p, const char *at, size_t n, int lower)
{
    if (reserve(&p->head, &p->head_cap, p->head_len + n))
        return cb_fail(p, "out of memory");
    char *d = p->head + p->head_len;
    for (size_t i = 0; i < n; i++) {
        char c = at[i];
        d[i] = lower && c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
    p->head_len += n;
    return 0;
}

/* Chunked trailers are parsed but not kept; they count against max_head so
 * that a backend cannot keep sending them for ever within the limits. */
static int trailer(struct httpc *p, size_t n)
{
    p->trailer_len += n;
    return p->trailer_len > p->max_head ? cb_fail(p, "bad response: head too large") : 0;
}

/* RFC 9110 5.6.2 tchar. llhttp 8 lets a response's header name hold a
 * space, or be empty; a name that is not a token is refused here, so that
 * every name an app sees is one. */
static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int on_header_field(llhttp_t *h, const char *at, size_t n)
{
    struct httpc *p = of(h);
    /* Byte by byte, so that a trailer too long and a bad byte are told
     * apart the same way however the input was cut. */
    for (size_t i = 0; i < n; i++) {
        if (p->headers_done && trailer(p, 1))
            return -1;
        if (!is_tchar((unsigned char)at[i]))
            return cb_fail(p, "bad response: Invalid header token");
    }
    p->name_len += n;
    return p->headers_done ? 0 : head_put(p, at, n, 1);
}

static int on_header_field_complete(llhttp_t *h)
{
    struct httpc *p = of(h);
    if (p->name_len == 0) /* llhttp 8 takes ": value" */
        return cb_fail(p, "bad response: Invalid header token");
    p->name_len = 0;
    return p->headers_done ? 0 : head_put(p, "", 1, 0);
}

static int on_header_value(llhttp_t *h, const char *at, size_t n)
{
    struct httpc *p = of(h);
    return p->headers_done ? trailer(p, n) : head_put(p, at, n, 0);
}

static int on_header_value_complete(llhttp_t *h)
{
    struct httpc *p = of(h);
    if (p->headers_done)
        return 0;
    /* llhttp drops the white space before a value but keeps what follows
     * it (RFC 9112 5: OWS around a field value is not part of it). The
     * name ends at the last NUL: a value never holds one (llhttp refuses
     * NUL in a value). */
    size_t start = p->head_len;
    while (start > 0 && p->head[start - 1] != '\0')
        start--;
    while (p->head_len > start &&
           (p->head[p->head_len - 1] == ' ' || p->head[p->head_len - 1] == '\t'))
        p->head_len--;
    return head_put(p, "", 1, 0);
}

static int is_interim(int status)
{
    return status >= 100 && status < 200 && status != 101;
}

static int on_headers_complete(llhttp_t *h)
{
    struct httpc *p = of(h);
    p->status = llhttp_get_status_code(h);
    if (p->status < 100) /* llhttp takes any three digits or fewer */
        return cb_fail(p, "bad response: Invalid status code");
    /* RFC 9110 6.4.1: a 1xx, 204 or 304 response, and any response to
     * HEAD, ends at its head whatever its Content-Length or
     * Transfer-Encoding say. llhttp 8 knows it only for some of them (it
     * reads a 204's Content-Length body): 1 tells it there is no body. */
    int bodiless = p->status < 200 || p->status == 204 || p->status == 304;
    if (is_interim(p->status))
        return 1; /* the final response follows */
    p->headers_done = 1;
    if (p->no_body || bodiless)
        return 1;
    if ((h->flags & F_CONTENT_LENGTH) && !(h->flags & F_CHUNKED)) {
        if (h->content_length > p->max_body)
            return cb_fail(p, "body too large"); /* refused before any of it is read */
        if (reserve(&p->body, &p->body_cap, (size_t)h->content_length))
            return cb_fail(p, "out of memory");
    }
    return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t n)
{
    struct httpc *p = of(h);
    if (n > p->max_body - p->body_len)
        return cb_fail(p, "body too large");
    if (reserve(&p->body, &p->body_cap, p->body_len + n))
        return cb_fail(p, "out of memory");
    memcpy(p->body + p->body_len, at, n);
    p->body_len += n;
    return 0;
}

static int on_chunk_header(llhttp_t *h)
{
    if (h->content_length == 0)
        of(h)->last_chunk = 1;
    return 0;
}

static int on_message_complete(llhttp_t *h)
{
    struct httpc *p = of(h);
    if (!p->headers_done) { /* an interim 1xx ended: forget its headers */
        p->head_len = 0;
        p->status = 0;
        return 0;
    }
    p->done = 1;
    p->keep_alive = p->status != 101 && llhttp_should_keep_alive(h);
    return HPE_PAUSED; /* stop right after it: what follows is not ours */
}

static const llhttp_settings_t settings = {
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};

struct httpc *httpc_new(size_t max_head, size_t max_body, int no_body)
{
    struct httpc *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    llhttp_init(&p->http, HTTP_RESPONSE, &settings);
    p->max_head = max_head;
    p->max_body = max_body;
    p->no_body = no_body ? 1 : 0;
    p->state = HTTPC_NEED_MORE;
    return p;
}

void httpc_free(struct httpc *p)
{
    if (!p)
        return;
    free(p->head);
    free(p->body);
    free(p);
}

static int fail(struct httpc *p, const char *why)
{
    if (!p->err[0]) /* a callback's own reason wins over llhttp's "user callback error" */
        snprintf(p->err, sizeof p->err, "bad response: %s", why);
    p->state = HTTPC_ERROR;
    return HTTPC_ERROR;
}

int httpc_feed(struct httpc *p, const char *data, size_t len, size_t *used)
{
    size_t off = 0;

    *used = 0;
    if (p->state != HTTPC_NEED_MORE)
        return p->state;
    while (off < len) {
        size_t n = len - off;
        /* Never give llhttp more of a head than the limit: a head that has
         * not ended within max_head bytes is refused, whatever the chunks. */
        if (!p->headers_done) {
            if (p->head_fed >= p->max_head)
                return fail(p, "head too large");
            if (n > p->max_head - p->head_fed)
                n = p->max_head - p->head_fed;
        }
        llhttp_errno_t e = llhttp_execute(&p->http, data + off, n);
        if (e == HPE_OK) {
            if (!p->headers_done)
                p->head_fed += n;
            off += n;
            continue;
        }
        if (p->done && (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE)) {
            *used = (size_t)(llhttp_get_error_pos(&p->http) - data);
            p->state = HTTPC_DONE;
            return HTTPC_DONE;
        }
        *used = off;
        return fail(p, llhttp_get_error_reason(&p->http));
    }
    *used = len;
    return HTTPC_NEED_MORE;
}

int httpc_eof(struct httpc *p)
{
    if (p->state != HTTPC_NEED_MORE)
        return p->state;
    llhttp_finish(&p->http); /* calls on_message_complete if the end ends the body */
    if (p->done) {
        p->keep_alive = 0;
        p->state = HTTPC_DONE;
        return HTTPC_DONE;
    }
    if (!p->err[0])
        snprintf(p->err, sizeof p->err, "closed");
    p->state = HTTPC_ERROR;
    return HTTPC_ERROR;
}

size_t httpc_want(const struct httpc *p, size_t cap)
{
    if (p->state != HTTPC_NEED_MORE || !p->headers_done || p->no_body || p->last_chunk)
        return 0; /* trailers may set content_length: it means nothing there */
    const llhttp_t *h = &p->http;
    if (llhttp_message_needs_eof(h))
        return cap;
    /* In a Content-Length body or a chunk's data, llhttp counts down what
     * is left of it; at 0 a line comes next (chunk size, CRLF, trailers). */
    return h->content_length < cap ? (size_t)h->content_length : cap;
}

int httpc_status(const struct httpc *p)
{
    return p->status;
}

int httpc_keep_alive(const struct httpc *p)
{
    return p->state == HTTPC_DONE && p->keep_alive;
}

int httpc_header_next(const struct httpc *p, const char **cursor, const char **name,
                      const char **value, size_t *vlen)
{
    const char *c = *cursor ? *cursor : p->head;
    if (!p->headers_done || !c || c >= p->head + p->head_len)
        return 0;
    *name = c;
    *value = c + strlen(c) + 1;
    *vlen = strlen(*value);
    *cursor = *value + *vlen + 1;
    return 1;
}

const char *httpc_body(const struct httpc *p, size_t *len)
{
    *len = p->body_len;
    return p->body ? p->body : "";
}

const char *httpc_error(const struct httpc *p)
{
    return p->err;
}
