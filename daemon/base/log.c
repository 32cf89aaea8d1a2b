/* log.c - operational and access log. */
#include "daemon/base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static volatile int log_min = LOG_INFO;
static volatile int access_on = 1;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* Where lines go. fd is 1 or 2 for the standard streams, else a file of
 * ours opened at path; log_reopen dup2s a fresh one onto the same number.
 * The lock serialises log_open/log_reopen (the config thread, SIGUSR1);
 * writers read fd without it (an int, and the number never changes while
 * a file target stays one). */
typedef struct log_target {
    volatile int fd;
    char path[1024];
} log_target;

static log_target op_out = {2, ""}, access_out = {1, ""};
static pthread_mutex_t target_lock = PTHREAD_MUTEX_INITIALIZER;

static int open_path(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return fd;
}

/* Points t at spec ("stdout", "stderr", a path); keeps it on failure. */
static int target_set(log_target *t, const char *spec, char *err, size_t errlen)
{
    if (!spec)
        return 0;
    int std = strcmp(spec, "stdout") == 0 ? 1 : strcmp(spec, "stderr") == 0 ? 2 : -1;
    if (std > 0) {
        if (t->fd > 2)
            dup2(std, t->fd); /* never closed under a writer */
        else
            t->fd = std;
        t->path[0] = '\0';
        return 0;
    }
    if (strlen(spec) >= sizeof(t->path)) {
        snprintf(err, errlen, "log file path longer than %zu bytes", sizeof(t->path) - 1);
        return -1;
    }
    int fd = open_path(spec, err, errlen);
    if (fd < 0)
        return -1;
    if (t->fd > 2) { /* the same number stays valid for writers */
        dup2(fd, t->fd);
        close(fd);
    } else {
        t->fd = fd;
    }
    snprintf(t->path, sizeof(t->path), "%s", spec);
    return 0;
}

int log_open(const char *op, const char *access, char *err, size_t errlen)
{
    pthread_mutex_lock(&target_lock);
    int rc = target_set(&op_out, op, err, errlen);
    if (!rc)
        rc = target_set(&access_out, access, err, errlen);
    pthread_mutex_unlock(&target_lock);
    return rc;
}

int log_reopen(char *err, size_t errlen)
{
    int rc = 0;
    pthread_mutex_lock(&target_lock);
    log_target *ts[2] = {&op_out, &access_out};
    for (int i = 0; i < 2; i++) {
        if (!ts[i]->path[0] || ts[i]->fd <= 2)
            continue;
        if (i == 1 && ts[0]->path[0] && strcmp(ts[0]->path, ts[1]->path) == 0) {
            dup2(ts[0]->fd, ts[1]->fd); /* one file for both: one open */
            continue;
        }
        int fd = open_path(ts[i]->path, err, errlen);
        if (fd < 0) {
            rc = -1;
            continue;
        }
        dup2(fd, ts[i]->fd);
        close(fd);
    }
    pthread_mutex_unlock(&target_lock);
    return rc;
}

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
    write_all(op_out.fd, line, n);
}

/* A loop thread's access lines, written together once per loop turn
 * (log_access_batch): one write(2) for every call that ended in the turn
 * instead of one each. Whole lines only, so lines of several threads still
 * never interleave. */
#define LOG_BATCH_CAP (64u * 1024)
static __thread char *batch_buf;
static __thread size_t batch_len;

void log_access_flush(void)
{
    if (batch_len) {
        write_all(access_out.fd, batch_buf, batch_len);
        batch_len = 0;
    }
}

int log_access_batch(int on)
{
    log_access_flush();
    if (on && !batch_buf && !(batch_buf = malloc(LOG_BATCH_CAP)))
        return -1;
    if (!on) {
        free(batch_buf);
        batch_buf = NULL;
    }
    return 0;
}

void log_access(const char *line, size_t len)
{
    if (!access_on)
        return;
    if (batch_buf && len + 1 <= LOG_BATCH_CAP) {
        if (batch_len + len + 1 > LOG_BATCH_CAP)
            log_access_flush();
        memcpy(batch_buf + batch_len, line, len);
        batch_buf[batch_len + len] = '\n';
        batch_len += len + 1;
        return;
    }
    log_access_flush(); /* keeps the order */
    char stackbuf[4096];
    if (len + 1 <= sizeof(stackbuf)) {
        memcpy(stackbuf, line, len);
        stackbuf[len] = '\n';
        write_all(access_out.fd, stackbuf, len + 1);
    } else {
        write_all(access_out.fd, line, len);
        write_all(access_out.fd, "\n", 1);
    }
}
