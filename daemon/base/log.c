/* log.c - operational and access log. */
#include "daemon/base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static volatile int log_min = LOG_INFO;
static volatile int access_on = 1;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level lvl) { log_min = (int)lvl; }
void log_set_access(int on) { access_on = on; }
int log_enabled(enum log_level lvl) { return (int)lvl <= log_min; }

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return LOG_WARN;
    return -1;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

void log_msg(enum log_level lvl, const char *ctx, const char *fmt, ...)
{
    if (!log_enabled(lvl))
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    int k = snprintf(line + n, sizeof(line) - n, ".%03ldZ %-5s ", ts.tv_nsec / 1000000L,
                     level_names[lvl]);
    if (k > 0)
        n += (size_t)k;
    if (ctx && n < sizeof(line)) {
        k = snprintf(line + n, sizeof(line) - n, "[%s] ", ctx);
        if (k > 0)
            n += (size_t)k;
    }
    if (n < sizeof(line)) {
        va_list ap;
        va_start(ap, fmt);
        k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        va_end(ap);
        if (k > 0)
            n += (size_t)k;
    }
    if (n >= sizeof(line) - 1)
        n = sizeof(line) - 2;
    /* no raw control characters from messages: keep one event a line */
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';
    write_all(2, line, n);
}

void log_access(const char *line, size_t len)
{
    if (!access_on)
        return;
    char stackbuf[4096];
    if (len + 1 <= sizeof(stackbuf)) {
        memcpy(stackbuf, line, len);
        stackbuf[len] = '\n';
        write_all(1, stackbuf, len + 1);
    } else {
        write_all(1, line, len);
        write_all(1, "\n", 1);
    }
}
