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
 * log.access_file) after a rotation. */
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

typedef struct app {
    uv_loop_t *loop;         /* the one loop */
    gateway *gw;             /* the request path */
    const char *config_path; /* NULL: embedded default (no reload) */
    uv_signal_t sigterm, sigint, sighup, sigusr1; /* signal watchers */
    uv_timer_t deadline;     /* drain deadline */
    uint32_t drain_ms;       /* drain deadline (timeouts.drain) */
    bool draining;           /* a drain has started */
    bool stopped;            /* handles are closing */
    int exit_code;           /* 1 after a fatal error */
} app;

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

static void app_stop(app *a)
{
    if (a->stopped)
        return;
    a->stopped = true;
    gateway_close(a->gw);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sighup, NULL);
    uv_close((uv_handle_t *)&a->sigusr1, NULL);
    uv_close((uv_handle_t *)&a->deadline, NULL);
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
    a.gw = gateway_new(a.loop, cfg);
    if (!a.gw) {
        fprintf(stderr, "tollgate: out of memory\n");
        config_unref(cfg);
        return 1;
    }
    gateway_on_fatal(a.gw, on_fatal, &a);
    rc = gateway_start(a.gw);
    if (rc != 0) {
        if (rc != -EINVAL)
            fprintf(stderr, "tollgate: cannot listen on %s: %s\n", cfg->listen.text,
                    uv_strerror(rc));
        gateway_close(a.gw);
        uv_run(a.loop, UV_RUN_DEFAULT);
        gateway_free(a.gw);
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
    if (cfg->workers > 1)
        log_warn(NULL, "workers: %u asked for; this version runs one loop (one core): "
                       "run more instances to use more cores",
                 cfg->workers);
    /* the gateway holds its own reference from here on */
    a.drain_ms = cfg->drain_timeout_ms;
    config_unref(cfg);

    uv_run(a.loop, UV_RUN_DEFAULT);
    gateway_free(a.gw);
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
