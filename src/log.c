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
