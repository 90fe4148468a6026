/* snapshot: the request a connection keeps. See snapshot.h. */
#include "snapshot.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handshake.h"
#include "router.h"
#include "slab.h"

/* A snapshot lives as long as its connection, and an idle connection costs
 * little else: malloc would give each an 8-byte header and round it up to
 * 16 bytes, and put it among the handshake's short-lived blocks. So blocks
 * up to SNAP_SLAB_MAX bytes come from slabs (slab.h) of one size class
 * each, SNAP_STEP bytes apart; a block's size is not stored, it is read
 * off the snapshot (snap_size). Larger ones are malloc's. */
#define SNAP_STEP 8
#define SNAP_SLAB_MAX 512
static struct slab_cache classes[SNAP_SLAB_MAX / SNAP_STEP];

static struct slab_cache *class_of(size_t n)
{
    if (n > SNAP_SLAB_MAX)
        return NULL;
    struct slab_cache *sc = &classes[(n - 1) / SNAP_STEP];
    if (!sc->size)
        sc->size = (n + SNAP_STEP - 1) / SNAP_STEP * SNAP_STEP;
    return sc;
}

static void *block_alloc(size_t n)
{
    struct slab_cache *sc = class_of(n);
    return sc ? slab_alloc_raw(sc) : malloc(n);
}

static void block_free(void *p, size_t n)
{
    struct slab_cache *sc = class_of(n);
    if (sc)
        slab_free(sc, p);
    else
        free(p);
}

/* Header names common in WebSocket handshakes. A stored name that is one
 * byte below 0x20 is an index into this table: a header name is an RFC 9110
 * token, which never holds such a byte. */
static const char *const common[] = {
    NULL,
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "origin",
    "user-agent",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "pragma",
    "cookie",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
};
#define NCOMMON (sizeof common / sizeof common[0])

/* Header values common in WebSocket handshakes, coded the same way: a
 * stored value that is one byte below 0x20 is an index into this table.
 * The handshake refuses control bytes in values (and a lone tab is
 * trimmed to ""), so no value as sent is such a byte. Codes match exact
 * bytes only: "WebSocket" is stored as sent. */
static const char *const common_values[] = {
    NULL,
    "websocket",
    "Upgrade",
    "13",
    "keep-alive, Upgrade",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate",
    "no-cache",
    "gzip, deflate, br, zstd",
    "gzip, deflate, br",
    "gzip, deflate",
};
#define NCOMMON_VALUES (sizeof common_values / sizeof common_values[0])

static size_t addr_len(uint8_t family)
{
    return family == AF_INET6 ? 16 : family == AF_INET ? 4 : 0;
}

/* Family, port and address bytes of a socket address. */
static uint8_t addr_split(const struct sockaddr *sa, uint16_t *port, const void **bytes)
{
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        *port = ntohs(in->sin_port);
        *bytes = &in->sin_addr;
        return AF_INET;
    }
    if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        *port = ntohs(in6->sin6_port);
        *bytes = &in6->sin6_addr;
        return AF_INET6;
    }
    *port = 0;
    *bytes = NULL;
    return 0;
}

struct snapshot *snap_new(const struct sockaddr *client, double started)
{
    uint16_t port;
    const void *bytes;
    uint8_t family = addr_split(client, &port, &bytes);
    size_t alen = addr_len(family);
    struct snapshot *s = block_alloc(offsetof(struct snapshot, data) + alen + 2);
    if (!s)
        return NULL;
    memset(s, 0, offsetof(struct snapshot, data));
    s->started = started;
    s->client_family = family & 15;
    s->client_port = port;
    if (alen)
        memcpy(s->data, bytes, alen);
    s->data[alen] = s->data[alen + 1] = '\0'; /* no path, no rest */
    return s;
}

/* The code of a common header name, or 0. */
static char common_code(const char *name)
{
    for (size_t i = 1; i < NCOMMON; i++)
        if (strcmp(name, common[i]) == 0)
            return (char)i;
    return 0;
}

static size_t stored_name_len(const char *name)
{
    return common_code(name) ? 1 : strlen(name);
}

static char value_code(const char *value, size_t len)
{
    for (size_t i = 1; i < NCOMMON_VALUES; i++)
        if (strlen(common_values[i]) == len && memcmp(value, common_values[i], len) == 0)
            return (char)i;
    return 0;
}

static char *put(char *w, const char *s, size_t n)
{
    memcpy(w, s, n);
    w[n] = '\0';
    return w + n + 1;
}

static char *put_name(char *w, const char *name)
{
    char code = common_code(name);
    return code ? put(w, &code, 1) : put(w, name, strlen(name));
}

/* Sec-WebSocket-Key is the handshake's one-time nonce: answered with
 * Sec-WebSocket-Accept, it has served its purpose, and its 24 bytes,
 * different on every connection, would be a tenth of a browser's request
 * and a third of a minimal one. */
static int kept_header(const char *name)
{
    return strcmp(name, "sec-websocket-key") != 0;
}

int snap_complete(struct snapshot **sp, const struct sockaddr *server, const char *target,
                  const struct route_match *m, const struct hs_request *hs)
{
    const struct snapshot *old = *sp;
    uint16_t sport;
    const void *sbytes;
    uint8_t sfamily = addr_split(server, &sport, &sbytes);
    size_t clen = addr_len(old->client_family), slen = addr_len(sfamily);
    size_t plen = strcspn(target, "?#");
    size_t tlen = strlen(target);
    size_t nh = hs_header_count(hs), kept = 0;

    size_t size = clen + slen + tlen + 2;
    for (unsigned i = 0; i < m->nparams; i++)
        size += m->params[i].name_len + m->params[i].value_len + 2;
    for (size_t i = 0; i < nh; i++) {
        const struct hs_header *h = hs_header_at(hs, i);
        if (!kept_header(h->name))
            continue;
        size += stored_name_len(h->name) + (value_code(h->value, h->value_len) ? 1 : h->value_len) + 2;
        kept++;
    }
    if (m->nparams > 15 || kept > UINT16_MAX)
        return -1;
    struct snapshot *s = block_alloc(offsetof(struct snapshot, data) + size);
    if (!s)
        return -1;
    memcpy(s, old, offsetof(struct snapshot, data) + clen);
    s->nparams = (uint8_t)m->nparams & 15;
    s->has_reason = 0;
    s->nheaders = (uint16_t)kept;
    s->server_family = sfamily & 15;
    s->server_port = sport;
    char *w = s->data + clen;
    if (slen)
        memcpy(w, sbytes, slen);
    w += slen;
    w = put(w, target, plen);
    w = put(w, target + plen, tlen - plen);
    for (unsigned i = 0; i < m->nparams; i++) {
        w = put(w, m->params[i].name, m->params[i].name_len);
        w = put(w, m->params[i].value, m->params[i].value_len);
    }
    for (size_t i = 0; i < nh; i++) {
        const struct hs_header *h = hs_header_at(hs, i);
        if (!kept_header(h->name))
            continue;
        w = put_name(w, h->name);
        char code = value_code(h->value, h->value_len);
        w = code ? put(w, &code, 1) : put(w, h->value, h->value_len);
    }
    snap_free(*sp);
    *sp = s;
    return 0;
}

/* Bytes of the block up to the end of its strings. */
static size_t strings_end(const struct snapshot *s)
{
    const char *p = snap_strings(s);
    size_t n = 2 + 2 * (size_t)s->nparams + 2 * (size_t)s->nheaders;
    for (size_t i = 0; i < n; i++)
        p += strlen(p) + 1;
    return (size_t)(p - (const char *)s);
}

/* Bytes of the block: the strings, and the room for a close reason. */
static size_t snap_size(const struct snapshot *s)
{
    return strings_end(s) + (s->has_reason ? SNAP_REASON_MAX : 0);
}

void snap_free(struct snapshot *s)
{
    if (s)
        block_free(s, snap_size(s));
}

char *snap_reason_room(struct snapshot **sp)
{
    struct snapshot *s = *sp;
    size_t end = strings_end(s);
    if (!s->has_reason) {
        if (!(s = block_alloc(end + SNAP_REASON_MAX)))
            return NULL;
        memcpy(s, *sp, end);
        s->has_reason = 1;
        snap_free(*sp);
        *sp = s;
    }
    return (char *)s + end;
}

const char *snap_reason(const struct snapshot *s)
{
    return s->has_reason ? (const char *)s + strings_end(s) : NULL;
}

const char *snap_path(const struct snapshot *s)
{
    return snap_strings(s);
}

const char *snap_next(const char **p)
{
    const char *s = *p;
    *p += strlen(s) + 1;
    return s;
}

const char *snap_header_name(const char *stored)
{
    unsigned char code = (unsigned char)stored[0];
    if (code && code < NCOMMON && stored[1] == '\0')
        return common[code];
    return stored;
}

const char *snap_header_value(const char *stored)
{
    unsigned char code = (unsigned char)stored[0];
    if (code && code < NCOMMON_VALUES && stored[1] == '\0')
        return common_values[code];
    return stored;
}

static void addr_text(uint8_t family, const void *bytes, char host[SNAP_HOST_MAX])
{
    if (!family || !inet_ntop(family, bytes, host, SNAP_HOST_MAX))
        snprintf(host, SNAP_HOST_MAX, "unix");
}

void snap_client(const struct snapshot *s, char host[SNAP_HOST_MAX], int *port)
{
    addr_text(s->client_family, s->data, host);
    *port = s->client_port;
}

void snap_server(const struct snapshot *s, char host[SNAP_HOST_MAX], int *port)
{
    addr_text(s->server_family, s->data + addr_len(s->client_family), host);
    *port = s->server_port;
}

const char *snap_peer(const struct snapshot *s)
{
    static char text[SNAP_HOST_MAX + 8];
    char host[SNAP_HOST_MAX];
    int port;
    snap_client(s, host, &port);
    snprintf(text, sizeof text, "%s:%d", host, port);
    return text;
}
