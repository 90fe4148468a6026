/* bpwire: the backplane's wire format. See bpwire.h.
 *
 * Everything here reads bytes a stranger wrote (a config file, or anything
 * a service PUBLISHed on a topic's channel), so it checks every length
 * before it reads and never trusts a terminator. It does no I/O, keeps no
 * state and allocates nothing: decoded messages point into the input. */
#include "bpwire.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "ws_utf8.h"

static int fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Copy [p, end) into out (size cap, NUL-terminated), decoding %XX. An
 * escape that is not two hex digits, an escaped NUL (which would cut the
 * C string short and so send another password than the one written) and
 * anything that does not fit are errors. */
static int unescape(const char *p, const char *end, char *out, size_t cap, const char *what,
                    char *err, size_t errlen)
{
    size_t n = 0;
    char msg[96];
    while (p < end) {
        int c = (unsigned char)*p;
        if (c == '%') {
            int hi = end - p > 2 ? hexval(p[1]) : -1, lo = end - p > 2 ? hexval(p[2]) : -1;
            if (hi < 0 || lo < 0) {
                snprintf(msg, sizeof msg, "bad percent-escape in the %s (want %%XX, hex)", what);
                return fail(err, errlen, msg);
            }
            c = hi * 16 + lo;
            if (c == 0) {
                snprintf(msg, sizeof msg, "the %s holds %%00, a NUL byte", what);
                return fail(err, errlen, msg);
            }
            p += 3;
        } else {
            p++;
        }
        if (n + 1 >= cap) {
            snprintf(msg, sizeof msg, "the %s is too long (at most %zu bytes)", what, cap - 1);
            return fail(err, errlen, msg);
        }
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return 0;
}

/* A decimal number in [p, end) between lo and hi, digits only. */
static int decimal(const char *p, const char *end, long lo, long hi, int *out)
{
    long v = 0;
    if (p == end)
        return -1;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
        if (v > hi)
            return -1;
    }
    if (v < lo)
        return -1;
    *out = (int)v;
    return 0;
}

static int host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '-' || c == '_';
}

/* The error messages never quote the URL: it may hold a password, and the
 * caller logs them. */
int bp_url_parse(const char *s, struct bp_url *u, char *err, size_t errlen)
{
    static const char scheme[] = "redis://";
    if (!s || !u)
        return fail(err, errlen, "no URL");
    memset(u, 0, sizeof *u);
    u->port = BP_DEFAULT_PORT;

    size_t len = strlen(s);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] == 0x7F)
            return fail(err, errlen, "the URL holds a space or a control character");
    if (len >= 9 && strncasecmp(s, "rediss://", 9) == 0)
        return fail(err, errlen, "rediss:// (Redis over TLS) is not supported; use redis://");
    if (len < sizeof scheme - 1 || strncasecmp(s, scheme, sizeof scheme - 1) != 0)
        return fail(err, errlen, "not a redis:// URL (want redis://[[user]:password@]host[:port][/db])");

    const char *p = s + sizeof scheme - 1, *end = s + len;
    if (memchr(p, '?', (size_t)(end - p)) || memchr(p, '#', (size_t)(end - p)))
        return fail(err, errlen, "the URL has a query or fragment (?...#...), which is not supported");

    /* The user info ends at the LAST '@': nothing after it (host, port,
     * db) may hold one, so a password with an unescaped '@' or '/' still
     * parses as written. */
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            return fail(err, errlen, "the URL's user info has no ':' (for a password alone write "
                                     "redis://:PASSWORD@host)");
        if (unescape(p, colon, u->user, sizeof u->user, "user name", err, errlen) < 0 ||
            unescape(colon + 1, at, u->password, sizeof u->password, "password", err, errlen) < 0)
            return -1;
        if (u->password[0] == '\0')
            return fail(err, errlen, "the URL has user info with an empty password");
        p = at + 1;
    }

    /* host, or [IPv6] */
    const char *hs, *he;
    if (p < end && *p == '[') {
        hs = p + 1;
        he = memchr(hs, ']', (size_t)(end - hs));
        if (!he)
            return fail(err, errlen, "the URL's [IPv6 address] has no ']'");
        for (const char *q = hs; q < he; q++)
            if (hexval(*q) < 0 && *q != ':' && *q != '.')
                return fail(err, errlen, "the URL's [IPv6 address] holds a character that is "
                                         "not a hex digit, ':' or '.'");
        p = he + 1;
    } else {
        hs = p;
        while (p < end && host_char(*p))
            p++;
        he = p;
    }
    if (he == hs)
        return fail(err, errlen, "the URL has no host");
    if ((size_t)(he - hs) >= sizeof u->host)
        return fail(err, errlen, "the URL's host is too long");
    memcpy(u->host, hs, (size_t)(he - hs));
    u->host[he - hs] = '\0';

    if (p < end && *p == ':') {
        const char *ps = ++p;
        while (p < end && *p != '/')
            p++;
        if (decimal(ps, p, 1, 65535, &u->port) < 0)
            return fail(err, errlen, "the URL's port is not a number from 1 to 65535");
    }
    if (p < end && *p == '/') {
        p++;
        /* "redis://host/" is db 0, as "redis://host" */
        if (p < end && decimal(p, end, 0, 2147483647L, &u->db) < 0)
            return fail(err, errlen, "the URL's database (after '/') is not a number");
        p = end;
    }
    if (p != end)
        return fail(err, errlen, "the URL has a character that cannot be in a host name");
    return 0;
}

unsigned bp_shard(const char *topic, size_t len, unsigned n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)topic[i];
        h *= 16777619u;
    }
    return n ? h % n : 0;
}

/* An origin longer than BP_ORIGIN_MAX is a caller's bug (node ids are 16
 * bytes); both functions cut it the same way, so the size and the bytes
 * written always agree. */
static size_t origin_len(const struct bp_message *m)
{
    if (!m->origin)
        return 0;
    return m->origin_len > BP_ORIGIN_MAX ? BP_ORIGIN_MAX : m->origin_len;
}

size_t bp_envelope_size(const struct bp_message *m)
{
    return 3 + origin_len(m) + m->len;
}

size_t bp_encode(char *out, const struct bp_message *m)
{
    size_t ol = origin_len(m);
    out[0] = (char)BP_ENVELOPE_MARK;
    out[1] = m->kind == BP_BINARY ? 'b' : 't';
    out[2] = (char)ol;
    if (ol)
        memcpy(out + 3, m->origin, ol);
    if (m->len)
        memcpy(out + 3 + ol, m->data, m->len);
    return 3 + ol + m->len;
}

int bp_decode(const char *p, size_t n, uint64_t max_len, struct bp_message *m, const char **why)
{
    const char *reason;
    memset(m, 0, sizeof *m);
    if (n == 0 || (unsigned char)p[0] != BP_ENVELOPE_MARK) {
        /* plain: text from anyone (a redis-cli PUBLISH, a backend) */
        if ((uint64_t)n > max_len) {
            reason = "payload over limits.max_message";
            goto bad;
        }
        if (n && !ws_utf8_valid((const uint8_t *)p, n)) {
            reason = "plain payload is not UTF-8 (send binary in an envelope)";
            goto bad;
        }
        m->kind = BP_TEXT;
        m->data = p;
        m->len = n;
        return 0;
    }
    if (n < 3) {
        reason = "envelope too short";
        goto bad;
    }
    if (p[1] != 't' && p[1] != 'b') {
        reason = "envelope kind is not 't' or 'b'";
        goto bad;
    }
    size_t ol = (unsigned char)p[2];
    if (ol > BP_ORIGIN_MAX) {
        reason = "envelope origin longer than 64 bytes";
        goto bad;
    }
    if (ol > n - 3) {
        reason = "envelope origin runs past the end";
        goto bad;
    }
    size_t len = n - 3 - ol;
    if ((uint64_t)len > max_len) {
        reason = "payload over limits.max_message";
        goto bad;
    }
    const char *data = p + 3 + ol;
    if (p[1] == 't' && len && !ws_utf8_valid((const uint8_t *)data, len)) {
        reason = "envelope text payload is not UTF-8";
        goto bad;
    }
    m->kind = p[1] == 'b' ? BP_BINARY : BP_TEXT;
    m->origin = p + 3;
    m->origin_len = ol;
    m->data = data;
    m->len = len;
    return 0;
bad:
    if (why)
        *why = reason;
    return -1;
}
