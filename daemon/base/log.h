/* log.h - operational log with levels, and the access-log line sink.
 *
 * Operational lines go to stderr:  <iso time> <level> [<ctx>] <message>
 * ctx names the object the line is about ("conn 12", "upstream openai"),
 * or NULL. Secrets never go into a log line: callers pass aliases and
 * prefixes, never keys. The access log (one JSON object a line) goes to
 * stdout through log_access(). Both writes are single write(2) calls of a
 * whole line, so lines from several threads never interleave. */
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
/* Disables the access log (config log.access: false). */
void log_set_access(int on);

#define log_error(ctx, ...) log_msg(LOG_ERROR, ctx, __VA_ARGS__)
#define log_warn(ctx, ...) log_msg(LOG_WARN, ctx, __VA_ARGS__)
#define log_info(ctx, ...) log_msg(LOG_INFO, ctx, __VA_ARGS__)
#define log_debug(ctx, ...) \
    do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, ctx, __VA_ARGS__); } while (0)

#endif
