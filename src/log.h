/* log: the host's two streams. Diagnostics (errors with tracebacks,
 * warnings, startup, reloads) go to stderr with a level; the access log (one
 * line per WSCONNECTING, WSCONNECT, WSREJECT, WSDISCONNECT) goes to stdout.
 * Every line starts with a UTC timestamp. */
#ifndef MOONPORT_LOG_H
#define MOONPORT_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

extern int log_threshold;    /* lines above this level are not written */
extern int log_access_on;    /* 0 turns the access log off; the level does not */
/* With --workers N > 1: this process's worker (1..N; 0 in the master) and
 * N. Lines then start with "[wK]" (the master's with "[master]"). 0 and 0
 * in a server of one process: no prefix. */
extern int log_worker, log_nworkers;

/* "error", "warn", "info", "debug" -> level, or -1. */
int log_level_parse(const char *name);
const char *log_level_name(int level);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_access(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

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
