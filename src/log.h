/* log: the host's two streams. Diagnostics (errors with tracebacks,
 * warnings, startup, reloads) go to stderr with a level; the access log (one
 * line per WSCONNECTING, WSCONNECT, WSREJECT, WSDISCONNECT) goes to stdout,
 * as text or, with log.format = "json", as one JSON object per line.
 * Every text line starts with a UTC timestamp. */
#ifndef MOONPORT_LOG_H
#define MOONPORT_LOG_H

#include <stddef.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

extern int log_threshold;    /* lines above this level are not written */
extern int log_access_on;    /* 0 turns the access log off; the level does not */
extern int log_json;         /* 1: the access log is JSON lines (log.format) */
/* With --workers N > 1: this process's worker (1..N; 0 in the master) and
 * N. Lines then start with "[wK]" (the master's with "[master]"). 0 and 0
 * in a server of one process: no prefix. */
extern int log_worker, log_nworkers;

/* "error", "warn", "info", "debug" -> level, or -1. */
int log_level_parse(const char *name);
const char *log_level_name(int level);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_access(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One access log event. The text line is
 *   CLIENT "EVENT PATH" id=ID[ status=S][ code=C duration=Ds msgs_in=.. bytes_in=..
 *   msgs_out=.. bytes_out=..][ reason=R]
 * and the JSON object has the same fields, with the time, the route and the
 * close reason (close_reason, JSON only) besides; any bytes are escaped so
 * that every line is valid JSON. */
struct access_event {
    const char *event;  /* "WSCONNECTING", "WSCONNECT", "WSREJECT", "WSDISCONNECT", ... */
    const char *client; /* "host:port" */
    const char *path;   /* the request path, "-" if none */
    const char *route;  /* the route's pattern(s), or NULL before routing */
    unsigned long long id;
    int status; /* the HTTP status of a refused handshake, or 0 */
    int code;   /* the close code of an ended connection, or 0: then the counts below */
    double duration;
    unsigned msgs_in, msgs_out;
    unsigned long long bytes_in, bytes_out;
    const char *reason; /* why, or NULL */
    const char *close_reason; /* the close frame's reason (close_reason_len bytes), or NULL */
    size_t close_reason_len;
};
void log_access_event(const struct access_event *e);

/* A line every worker would write alike (a reload, a route): worker 1
 * writes it at level, the others at debug, so the log has it once. */
#define log_once(level, ...) \
    log_msg(log_worker > 1 ? LOG_DEBUG : (level), __VA_ARGS__)
/* " in N workers" with workers, else "": for the lines log_once writes. */
const char *log_in_workers(void);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) \
    do { if (log_threshold >= LOG_DEBUG) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
