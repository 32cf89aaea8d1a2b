/* main.c - parse arguments, load config, run the loop.
 *
 *   tollgate [--config FILE]      run the gateway (TOLLGATE_CONFIG too;
 *                                 no file: the embedded demo default)
 *   tollgate check-config FILE    validate a config file, exit 0 or 1
 *   tollgate tokenize ... FILE    token ids or count of a file (cli.h)
 *   tollgate keygen               a new secret-box key (cli.h)
 *   tollgate migrate ...          apply the schema migrations (migrate.h)
 *   tollgate rotate-secrets ...   re-encrypt stored secrets with the newest key (cli.h)
 *   tollgate --version
 *
 * Signals: SIGTERM/SIGINT drain (a second one stops at once), SIGHUP
 * reloads the config file, SIGUSR1 reopens the log files (log.file,
 * log.access_file) after a rotation.
 *
 * workers: N runs N loops: the first on this thread (it also takes the
 * signals and passes them on), the others in threads of their own, each
 * with its gateway (daemon/gateway.h, gateway_group). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "daemon/base/log.h"
#include "daemon/cli.h"
#include "daemon/config.h"
#include "daemon/gateway.h"
#include "daemon/migrate.h"
#include "daemon/version.h"

typedef struct app app;

/* A loop past the first, in its own thread. */
typedef struct worker {
    app *a;
    unsigned index;
    uv_thread_t thread;
    uv_loop_t loop;
    gateway *gw;
    const config *cfg; /* for the start (own reference until it has started) */
    uint16_t port;     /* the first worker's */
    uv_sem_t started;
    int start_rc;
} worker;

struct app {
    uv_loop_t *loop;         /* the first worker's loop (this thread's) */
    gateway *gw;             /* the first worker's request path */
    gateway_group *grp;      /* what the workers share */
    worker *workers;         /* workers 1..n-1 (index 0 unused) */
    unsigned nworkers;
    uv_async_t notify;       /* a worker thread ended or hit a fatal error */
    uv_mutex_t lock;         /* guards exited and fatal_msg */
    unsigned exited;         /* worker threads ended */
    char fatal_msg[512];     /* a worker's fatal error, "" none */
    bool notify_open;
    const char *config_path; /* NULL: embedded default (no reload) */
    uv_signal_t sigterm, sigint, sighup, sigusr1; /* signal watchers */
    uv_timer_t deadline;     /* drain deadline */
    uint32_t drain_ms;       /* drain deadline (timeouts.drain) */
    bool draining;           /* a drain has started */
    bool stopped;            /* handles are closing */
    bool first_closed;       /* the first worker's gateway is closing */
    int exit_code;           /* 1 after a fatal error */
};

static void usage(FILE *f)
{
    fprintf(f, "usage: tollgate [--config FILE]\n"
               "       tollgate check-config FILE\n"
               "       tollgate tokenize [--encoding NAME] [--count] [--bench N] FILE\n"
               "       tollgate keygen\n"
               "       tollgate rotate-secrets [--config FILE] [--dry-run]\n"
               "       tollgate migrate [--config FILE | --database-url URL] [--status]\n"
               "       tollgate --version\n"
               "Runs the tollgate LLM gateway. Without a config file (or TOLLGATE_CONFIG) it\n"
               "starts on an embedded demo default: the mock provider, plus any provider\n"
               "whose key is in the environment (OPENAI_API_KEY, ANTHROPIC_API_KEY,\n"
               "GEMINI_API_KEY, FIREWORKS_API_KEY, OPENROUTER_API_KEY, TOGETHER_API_KEY).\n");
}

/* Levels and targets; 0, or -1 with the reason in err (targets kept). */
static int apply_logging(const config *cfg, char *err, size_t errlen)
{
    log_set_level((enum log_level)cfg->log_level);
    log_set_access(cfg->log_access);
    return log_open(cfg->log_file ? cfg->log_file : "stdout",
                    cfg->log_access_file ? cfg->log_access_file : "stdout", err, errlen);
}

/* The first worker's gateway closes last: it holds the ledger the others
 * append to, so it waits until their threads have ended. */
static void maybe_close_first(app *a)
{
    if (!a->stopped || a->first_closed)
        return;
    uv_mutex_lock(&a->lock);
    bool all = a->exited + 1 >= a->nworkers;
    uv_mutex_unlock(&a->lock);
    if (!all)
        return;
    a->first_closed = true;
    gateway_close(a->gw);
    if (a->notify_open) {
        a->notify_open = false;
        uv_close((uv_handle_t *)&a->notify, NULL);
    }
}

static void app_stop(app *a)
{
    if (a->stopped)
        return;
    a->stopped = true;
    uv_mutex_lock(&a->lock);
    for (unsigned i = 1; i < a->nworkers; i++)
        if (a->workers[i].gw)
            gateway_post_close(a->workers[i].gw);
    uv_mutex_unlock(&a->lock);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sighup, NULL);
    uv_close((uv_handle_t *)&a->sigusr1, NULL);
    uv_close((uv_handle_t *)&a->deadline, NULL);
    maybe_close_first(a);
}

/* On the main thread: a worker thread ended, or one hit a fatal error. */
static void notify_cb(uv_async_t *h)
{
    app *a = h->data;
    char msg[sizeof(a->fatal_msg)];
    uv_mutex_lock(&a->lock);
    snprintf(msg, sizeof msg, "%s", a->fatal_msg);
    a->fatal_msg[0] = '\0';
    uv_mutex_unlock(&a->lock);
    if (msg[0]) {
        fprintf(stderr, "tollgate: %s\n", msg);
        a->exit_code = 1;
        app_stop(a);
    }
    maybe_close_first(a);
}

static void drained_cb(void *ud)
{
    app *a = ud;
    log_info(NULL, "drained: every connection closed");
    app_stop(a);
}

static void deadline_cb(uv_timer_t *t)
{
    app *a = t->data;
    log_warn(NULL, "drain deadline reached with %llu requests in flight; closing them",
             (unsigned long long)gateway_inflight(a->gw));
    app_stop(a);
}

/* A worker past the first has drained (on its own loop): it closes, and
 * its thread ends with its loop. */
static void worker_drained(void *ud)
{
    worker *w = ud;
    gateway_close(w->gw);
}

static void on_stop_signal(uv_signal_t *s, int signum)
{
    app *a = s->data;
    if (a->draining) {
        log_warn(NULL, "second %s: stopping now", strsignal(signum));
        app_stop(a);
        return;
    }
    a->draining = true;
    log_info(NULL, "%s: draining, deadline %ums (in flight: %llu)", strsignal(signum), a->drain_ms,
             (unsigned long long)gateway_inflight(a->gw));
    uv_timer_start(&a->deadline, deadline_cb, a->drain_ms, 0);
    uv_mutex_lock(&a->lock);
    for (unsigned i = 1; i < a->nworkers; i++)
        if (a->workers[i].gw)
            gateway_post_drain(a->workers[i].gw, worker_drained, &a->workers[i]);
    uv_mutex_unlock(&a->lock);
    gateway_drain(a->gw, drained_cb, a);
}

/* The gateway cannot go on (e.g. the database schema is of another
 * version): stop at once with exit code 1. */
static void on_fatal(void *ud, const char *msg)
{
    app *a = ud;
    fprintf(stderr, "tollgate: %s\n", msg);
    a->exit_code = 1;
    app_stop(a);
}

/* The same from a worker's thread: the main thread stops the process. */
static void worker_fatal(void *ud, const char *msg)
{
    worker *w = ud;
    app *a = w->a;
    uv_mutex_lock(&a->lock);
    if (!a->fatal_msg[0])
        snprintf(a->fatal_msg, sizeof a->fatal_msg, "%s", msg);
    uv_mutex_unlock(&a->lock);
    uv_async_send(&a->notify);
}

static void worker_main(void *arg)
{
    worker *w = arg;
    app *a = w->a;
    bool loop_ok = uv_loop_init(&w->loop) == 0;
    int rc = -ENOMEM;
    if (loop_ok) {
        w->gw = gateway_new(&w->loop, w->cfg, a->grp, w->index);
        if (w->gw) {
            gateway_on_fatal(w->gw, worker_fatal, w);
            rc = gateway_start(w->gw, w->port);
            if (rc != 0)
                gateway_close(w->gw);
        }
    }
    w->start_rc = rc;
    uv_sem_post(&w->started);
    if (loop_ok) {
        uv_run(&w->loop, UV_RUN_DEFAULT);
        uv_mutex_lock(&a->lock);
        gateway *gw = w->gw;
        w->gw = NULL; /* the main thread posts to it no more */
        uv_mutex_unlock(&a->lock);
        gateway_free(gw);
        if (uv_loop_close(&w->loop) != 0)
            log_warn(NULL, "worker %u: loop closed with handles still open", w->index);
    }
    uv_mutex_lock(&a->lock);
    a->exited++;
    uv_async_send(&a->notify); /* under the lock: the main thread closes it after the last */
    uv_mutex_unlock(&a->lock);
}

static void on_hup(uv_signal_t *s, int signum)
{
    app *a = s->data;
    (void)signum;
    if (!a->config_path) {
        log_warn(NULL, "SIGHUP: running on the embedded default; there is no file to reload");
        return;
    }
    config *cfg = NULL;
    char err[512];
    if (config_load_file(a->config_path, &cfg, err, sizeof(err)) != 0) {
        log_error(NULL, "reload rejected, keeping the running config: %s", err);
        return;
    }
    gateway_reload(a->gw, cfg);
    uv_mutex_lock(&a->lock);
    for (unsigned i = 1; i < a->nworkers; i++)
        if (a->workers[i].gw)
            gateway_post_reload(a->workers[i].gw, cfg);
    uv_mutex_unlock(&a->lock);
    if (apply_logging(cfg, err, sizeof(err)) != 0)
        log_error(NULL, "reload: cannot open the log file, keeping the current one: %s", err);
    a->drain_ms = cfg->drain_timeout_ms;
    log_info(NULL, "reloaded %s: %zu providers, %zu models, %zu keys", a->config_path,
             cfg->nproviders, cfg->nmodels, cfg->nkeys);
    config_unref(cfg);
}

static void on_usr1(uv_signal_t *s, int signum)
{
    (void)s;
    (void)signum;
    char err[1100];
    if (log_reopen(err, sizeof(err)) != 0)
        log_error(NULL, "SIGUSR1: cannot reopen a log file, writing to the old one: %s", err);
    else
        log_info(NULL, "SIGUSR1: log files reopened");
}

static const char *env_lookup(const char *name) { return getenv(name); }

static int check_config(const char *path)
{
    config *cfg = NULL;
    char err[512];
    if (config_load_file(path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("%s: ok (%zu providers, %zu models, %zu keys)\n", path, cfg->nproviders, cfg->nmodels,
           cfg->nkeys);
    config_unref(cfg);
    return 0;
}

static int run(const char *path)
{
    config *cfg = NULL;
    char err[512];
    char demo_key[CONFIG_DEMO_KEY_MAX] = "";
    int rc = path ? config_load_file(path, &cfg, err, sizeof(err))
                  : config_default(env_lookup, &cfg, demo_key, sizeof(demo_key), err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "tollgate: %s\n", err);
        return 1;
    }
    if (apply_logging(cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "tollgate: log: %s\n", err);
        config_unref(cfg);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (cfg->database.url && cfg->secrets.n == 0) {
        fprintf(stderr,
                "tollgate: a database is configured but no encryption key for the provider "
                "credentials stored in it.\n"
                "  Make one with 'tollgate keygen' and put it in secrets.keys in the config (or "
                "in the\n  environment as TOLLGATE_SECRET_KEYS); keep it safe: without it the "
                "stored credentials\n  cannot be read.\n");
        config_unref(cfg);
        return 1;
    }

    app a = {.config_path = path};
    a.loop = uv_default_loop();
    a.nworkers = cfg->workers ? cfg->workers : uv_available_parallelism();
    if (a.nworkers < 1)
        a.nworkers = 1;
    if (a.nworkers > 256)
        a.nworkers = 256;
    a.grp = gateway_group_new(a.nworkers);
    a.workers = calloc(a.nworkers, sizeof(*a.workers));
    if (!a.grp || !a.workers || uv_mutex_init(&a.lock) != 0 ||
        uv_async_init(a.loop, &a.notify, notify_cb) != 0) {
        fprintf(stderr, "tollgate: out of memory\n");
        config_unref(cfg);
        return 1;
    }
    a.notify.data = &a;
    a.notify_open = true;
    a.gw = gateway_new(a.loop, cfg, a.grp, 0);
    if (!a.gw) {
        fprintf(stderr, "tollgate: out of memory\n");
        config_unref(cfg);
        return 1;
    }
    gateway_on_fatal(a.gw, on_fatal, &a);
    rc = gateway_start(a.gw, cfg->listen.port);
    /* the other workers, on the port the first got */
    unsigned started = 1;
    for (unsigned i = 1; rc == 0 && i < a.nworkers; i++) {
        worker *w = &a.workers[i];
        w->a = &a;
        w->index = i;
        w->cfg = cfg;
        w->port = gateway_port(a.gw);
        if (uv_sem_init(&w->started, 0) != 0 || uv_thread_create(&w->thread, worker_main, w) != 0) {
            rc = -EAGAIN;
            break;
        }
        uv_sem_wait(&w->started);
        uv_sem_destroy(&w->started);
        started++;
        rc = w->start_rc;
    }
    if (rc != 0) {
        if (rc != -EINVAL)
            fprintf(stderr, "tollgate: cannot listen on %s: %s\n", cfg->listen.text,
                    uv_strerror(rc));
        a.nworkers = started; /* the threads that run */
        uv_signal_init(a.loop, &a.sigterm);
        uv_signal_init(a.loop, &a.sigint);
        uv_signal_init(a.loop, &a.sighup);
        uv_signal_init(a.loop, &a.sigusr1);
        uv_timer_init(a.loop, &a.deadline);
        app_stop(&a);
        uv_run(a.loop, UV_RUN_DEFAULT);
        for (unsigned i = 1; i < a.nworkers; i++)
            uv_thread_join(&a.workers[i].thread);
        gateway_free(a.gw);
        gateway_group_free(a.grp);
        free(a.workers);
        config_unref(cfg);
        uv_loop_close(a.loop);
        return 1;
    }
    uv_signal_init(a.loop, &a.sigterm);
    uv_signal_init(a.loop, &a.sigint);
    uv_signal_init(a.loop, &a.sighup);
    uv_signal_init(a.loop, &a.sigusr1);
    uv_timer_init(a.loop, &a.deadline);
    a.sigterm.data = a.sigint.data = a.sighup.data = a.sigusr1.data = a.deadline.data = &a;
    uv_signal_start(&a.sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&a.sigint, on_stop_signal, SIGINT);
    uv_signal_start(&a.sighup, on_hup, SIGHUP);
    uv_signal_start(&a.sigusr1, on_usr1, SIGUSR1);

    const char *host = cfg->listen.host;
    log_info(NULL, "tollgate %s listening on %s%s%s:%u (%s, %zu providers, %zu models, %zu keys)",
             tg_version, cfg->listen.ipv6 ? "[" : "", host, cfg->listen.ipv6 ? "]" : "",
             gateway_port(a.gw), path ? path : "embedded default config", cfg->nproviders,
             cfg->nmodels, cfg->nkeys);
    if (!path) {
        fprintf(stderr,
                "\n  tollgate is running on the embedded default (DB-less, no config file).\n"
                "  Base URL:  http://%s%s%s:%u/v1\n"
                "  Demo key:  %s\n"
                "  Models:   ",
                cfg->listen.ipv6 ? "[" : "", host, cfg->listen.ipv6 ? "]" : "",
                gateway_port(a.gw), demo_key);
        for (size_t i = 0; i < cfg->nmodels; i++)
            fprintf(stderr, " %s (%s)", cfg->models[i].name, cfg->models[i].provider->name);
        fprintf(stderr,
                "\n\n  curl http://%s%s%s:%u/v1/chat/completions \\\n"
                "    -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' \\\n"
                "    -d '{\"model\":\"mock-1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'\n\n",
                cfg->listen.ipv6 ? "[" : "", host, cfg->listen.ipv6 ? "]" : "",
                gateway_port(a.gw), demo_key);
        memset(demo_key, 0, sizeof(demo_key));
    }
    if (a.nworkers > 1)
        log_info(NULL, "%u workers (loops, one thread each) on port %u", a.nworkers,
                 gateway_port(a.gw));
    /* the gateways hold their own references from here on */
    a.drain_ms = cfg->drain_timeout_ms;
    config_unref(cfg);

    uv_run(a.loop, UV_RUN_DEFAULT);
    for (unsigned i = 1; i < a.nworkers; i++)
        uv_thread_join(&a.workers[i].thread);
    gateway_free(a.gw);
    gateway_group_free(a.grp);
    free(a.workers);
    uv_mutex_destroy(&a.lock);
    rc = uv_loop_close(a.loop);
    if (rc != 0)
        log_warn(NULL, "loop closed with handles still open");
    log_info(NULL, "stopped");
    return a.exit_code;
}

int main(int argc, char **argv)
{
    const char *path = getenv("TOLLGATE_CONFIG");
    if (path && !*path)
        path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
            printf("tollgate %s\n", tg_version);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (i == 1 && strcmp(argv[i], "tokenize") == 0) {
            return cli_tokenize(argc - 1, argv + 1);
        } else if (i == 1 && strcmp(argv[i], "keygen") == 0) {
            return cli_keygen(argc - 1, argv + 1);
        } else if (i == 1 && strcmp(argv[i], "rotate-secrets") == 0) {
            return cli_rotate_secrets(argc - 1, argv + 1);
        } else if (i == 1 && strcmp(argv[i], "migrate") == 0) {
            return cli_migrate(argc - 1, argv + 1);
        } else if (strcmp(argv[i], "check-config") == 0) {
            if (i + 1 >= argc) {
                usage(stderr);
                return 2;
            }
            return check_config(argv[i + 1]);
        } else if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) &&
                   i + 1 < argc) {
            path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
        } else {
            fprintf(stderr, "tollgate: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    return run(path);
}
