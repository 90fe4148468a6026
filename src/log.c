/* log: timestamped lines on stderr (diagnostics) and stdout (access log).
 * Each line is formatted whole and written with one call, so lines from the
 * host never interleave mid-line. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

int log_threshold = LOG_INFO;
int log_access_on = 1;
int log_json;
int log_worker, log_nworkers;

const char *log_in_workers(void)
{
    static char note[32];
    if (log_nworkers <= 1)
        return "";
    snprintf(note, sizeof note, " in %d workers", log_nworkers);
    return note;
}

static const char *const names[] = {"error", "warn", "info", "debug"};

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *log_level_name(int level)
{
    return level >= 0 && level < 4 ? names[level] : "?";
}

static size_t stamp(char *out, size_t cap)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(out + n, cap - n, ".%03dZ ", (int)(tv.tv_usec / 1000));
    return n;
}

static void emit(FILE *f, const char *prefix, const char *fmt, va_list ap)
{
    char line[8192];
    size_t n = stamp(line, sizeof line);
    n += (size_t)snprintf(line + n, sizeof line - n, "%s", prefix);
    int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
    if (m < 0)
        m = 0;
    n += (size_t)m;
    if (n > sizeof line - 2)
        n = sizeof line - 2; /* a very long line is cut, never dropped */
    line[n++] = '\n';
    fwrite(line, 1, n, f);
    fflush(f);
}

void log_msg(int level, const char *fmt, ...)
{
    if (level > log_threshold)
        return;
    char prefix[32];
    if (log_nworkers > 1 && log_worker > 0)
        snprintf(prefix, sizeof prefix, "%-5s [w%d] ", log_level_name(level), log_worker);
    else if (log_nworkers > 1)
        snprintf(prefix, sizeof prefix, "%-5s [master] ", log_level_name(level));
    else
        snprintf(prefix, sizeof prefix, "%-5s ", log_level_name(level));
    va_list ap;
    va_start(ap, fmt);
    emit(stderr, prefix, fmt, ap);
    va_end(ap);
}

void log_access(const char *fmt, ...)
{
    if (!log_access_on) /* on or off by itself, whatever the level */
        return;
    va_list ap;
    va_start(ap, fmt);
    emit(stdout, "", fmt, ap);
    va_end(ap);
}

/* ---- The access log's events, as text or as JSON ---- */

/* The length of the valid UTF-8 sequence at p (n bytes left), or 0 if the
 * bytes there are not one (RFC 3629: no overlong forms, no surrogates,
 * nothing past U+10FFFF). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned char b = p[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (b < 0x80)
        return 1;
    if (b >= 0xC2 && b <= 0xDF)
        len = 2;
    else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        if (b == 0xE0)
            lo = 0xA0;
        else if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        if (b == 0xF0)
            lo = 0x90;
        else if (b == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

/* A line being built, cut (never overrun) at its capacity. */
struct line {
    char *p;
    size_t n, cap;
};

static void put_raw(struct line *l, const char *s, size_t n)
{
    if (n > l->cap - l->n)
        n = l->cap - l->n;
    memcpy(l->p + l->n, s, n);
    l->n += n;
}

static void put_fmt(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put_fmt(struct line *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(l->p + l->n, l->cap - l->n + 1, fmt, ap);
    va_end(ap);
    if (m > 0)
        l->n += (size_t)m < l->cap - l->n ? (size_t)m : l->cap - l->n;
}

/* What one string may take of a JSON line, escaped: with the few strings
 * of an event and its numbers, a line stays well within its buffer. */
#define JSON_STRING_MAX 1024

/* A JSON string of len bytes: quotes, backslashes and control characters
 * escaped, each byte of invalid UTF-8 as U+FFFD. Cut at a whole character
 * (the string still closes) past JSON_STRING_MAX. */
static void put_json_string(struct line *l, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t start = l->n;
    put_raw(l, "\"", 1);
    for (size_t i = 0; i < len;) {
        if (l->n - start > JSON_STRING_MAX - 8)
            break;
        unsigned char b = u[i];
        size_t k = utf8_seq(u + i, len - i);
        if (k == 0) {
            put_raw(l, "\\ufffd", 6);
            i++;
        } else if (b == '"' || b == '\\') {
            char esc[2] = {'\\', (char)b};
            put_raw(l, esc, 2);
            i++;
        } else if (b < 0x20 || b == 0x7F) {
            put_fmt(l, "\\u%04x", b);
            i++;
        } else {
            put_raw(l, s + i, k);
            i += k;
        }
    }
    put_raw(l, "\"", 1);
}

static void put_json_field(struct line *l, const char *name, const char *s, size_t len)
{
    put_fmt(l, ",\"%s\":", name);
    put_json_string(l, s, len);
}

static size_t access_json(char *buf, size_t cap, const struct access_event *e)
{
    struct line l = {buf, 0, cap};
    struct timeval tv;
    struct tm tm;
    char when[40];
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - w, ".%03dZ", (int)(tv.tv_usec / 1000));
    put_fmt(&l, "{\"time\":\"%s\",\"event\":\"%s\"", when, e->event);
    if (log_nworkers > 1)
        put_fmt(&l, ",\"worker\":%d", log_worker);
    put_json_field(&l, "client", e->client, strlen(e->client));
    put_json_field(&l, "path", e->path, strlen(e->path));
    if (e->route)
        put_json_field(&l, "route", e->route, strlen(e->route));
    put_fmt(&l, ",\"id\":%llu", e->id);
    if (e->status)
        put_fmt(&l, ",\"status\":%d", e->status);
    if (e->code)
        put_fmt(&l,
                ",\"code\":%d,\"duration\":%.3f,\"msgs_in\":%u,\"bytes_in\":%llu,"
                "\"msgs_out\":%u,\"bytes_out\":%llu",
                e->code, e->duration, e->msgs_in, e->bytes_in, e->msgs_out, e->bytes_out);
    if (e->reason)
        put_json_field(&l, "reason", e->reason, strlen(e->reason));
    if (e->close_reason)
        put_json_field(&l, "close_reason", e->close_reason, e->close_reason_len);
    put_raw(&l, "}", 1);
    return l.n;
}

void log_access_event(const struct access_event *e)
{
    if (!log_access_on)
        return;
    if (!log_json) {
        char counts[200] = "";
        if (e->code)
            snprintf(counts, sizeof counts,
                     " code=%d duration=%.3fs msgs_in=%u bytes_in=%llu msgs_out=%u bytes_out=%llu",
                     e->code, e->duration, e->msgs_in, e->bytes_in, e->msgs_out, e->bytes_out);
        char status[24] = "";
        if (e->status)
            snprintf(status, sizeof status, " status=%d", e->status);
        log_access("%s \"%s %s\" id=%llu%s%s%s%s", e->client, e->event, e->path, e->id, status,
                   counts, e->reason ? " reason=" : "", e->reason ? e->reason : "");
        return;
    }
    /* The capacity leaves room for the closing brace and the newline: a
     * very long line is cut inside a string, which still closes. */
    char line[8192];
    size_t n = access_json(line, sizeof line - 2, e);
    line[n++] = '\n';
    fwrite(line, 1, n, stdout);
    fflush(stdout);
}
