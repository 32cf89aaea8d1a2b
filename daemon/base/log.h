/* log.h - operational log with levels, and the access-log line sink.
 *
 * Operational lines:  <iso time> <level> [<ctx>] <message>
 * ctx names the object the line is about ("conn 12", "upstream openai"),
 * or NULL. Secrets never go into a log line: callers pass aliases and
 * prefixes, never keys. The access log is one JSON object a line
 * (log_access()). Until log_open() operational lines go to stderr and the
 * access log to stdout; the daemon then sends each where the config says
 * (log.file, log.access_file: stdout, stderr or a file appended to).
 * Every write(2) is of whole lines (one, or a loop turn's access lines),
 * so lines from several threads never interleave; log_reopen() (SIGUSR1, after a log rotation)
 * swaps the files in with dup2, so a writer never sees a closed
 * descriptor. */
#ifndef TG_BASE_LOG_H
#define TG_BASE_LOG_H

#include <stddef.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Sets the lowest level that is written (default LOG_INFO). */
void log_set_level(enum log_level lvl);
/* Parses "error", "warn", "info", "debug"; -1 if unknown. */
int log_level_parse(const char *s);
/* True if a line at lvl would be written (skip building costly context). */
int log_enabled(enum log_level lvl);
void log_msg(enum log_level lvl, const char *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Writes one access-log line (a JSON object without the newline). */
void log_access(const char *line, size_t len);
/* On a loop's thread: on = 1 keeps this thread's access lines in a buffer
 * until log_access_flush() (the loop calls it before it waits for I/O, so
 * a turn's lines go out in one write); 0 flushes and stops. -1: no memory
 * (lines are then written one by one). */
int log_access_batch(int on);
void log_access_flush(void);
/* Disables the access log (config log.access: false). */
void log_set_access(int on);
/* Sends operational lines to op and access lines to access: "stdout",
 * "stderr" or a file path (created 0640, appended to); NULL keeps the
 * current target. 0, or -1 with a reason in err (the current targets
 * are kept). */
int log_open(const char *op, const char *access, char *err, size_t errlen);
/* Opens the file targets again by path (after a rotation moved them).
 * 0, or -1 with a reason in err (a target that cannot be opened keeps its
 * old file). */
int log_reopen(char *err, size_t errlen);

#define log_error(ctx, ...) log_msg(LOG_ERROR, ctx, __VA_ARGS__)
#define log_warn(ctx, ...) log_msg(LOG_WARN, ctx, __VA_ARGS__)
#define log_info(ctx, ...) log_msg(LOG_INFO, ctx, __VA_ARGS__)
#define log_debug(ctx, ...) \
    do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, ctx, __VA_ARGS__); } while (0)

#endif
