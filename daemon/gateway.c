/* gateway.c - the request path: route, authenticate, admit, relay, log. */
#define _GNU_SOURCE /* memmem, strcasestr */
#include "daemon/gateway.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdarg.h>
#include <jansson.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "billing/ledger.h"
#include "billing/meter.h"
#include "billing/money.h"
#include "billing/prices.h"
#include "billing/tenants.h"
#include "daemon/base/clock.h"
#include "daemon/admin.h"
#include "daemon/alerts.h"
#include "daemon/base/log.h"
#include "daemon/http_server.h"
#include "daemon/httpc.h"
#include "daemon/jobs.h"
#include "daemon/leases.h"
#include "daemon/metrics.h"
#include "daemon/routes.h"
#include "daemon/checks.h"
#include "daemon/ratelimit.h"
#include "daemon/store.h"
#include "daemon/tls.h"
#include "daemon/version.h"
#include "providers/chat.h"
#include "providers/embeddings.h"
#include "providers/jscan.h"
#include "providers/mock.h"
#include "providers/openai.h"
#include "providers/sse.h"

#define GW_MAX_EVENT_BYTES (8u * 1024 * 1024)   /* one SSE event from upstream */
#define GW_MAX_RESPONSE_BYTES (64u * 1024 * 1024) /* a buffered non-stream response */
#define GW_MAX_UPSTREAM_BODY (64u * 1024 * 1024)  /* the rewritten request body */
#define GW_RATE_SLOTS 1024                        /* initial rate-limiter table size */

/* A per-key token bucket for requests per minute. Kept across reloads,
 * keyed by the key's digest. */
typedef struct rate_bucket {
    uint8_t sha256[CRYPTO_SHA256_LEN]; /* the key */
    uint32_t rpm;                      /* the limit it was filled for */
    double tokens;                     /* requests available now (not money: a rate) */
    uint64_t last_ns;                  /* last refill */
    struct rate_bucket *next;          /* hash chain */
} rate_bucket;

struct gateway {
    uv_loop_t *loop;          /* the loop this gateway runs on */
    const config *cfg;        /* current configuration (own reference) */
    http_server *srv;         /* inbound server */
    httpc_pool *pool;         /* upstream connections */
    metrics *metrics;         /* request counters and histograms (GET /metrics) */
    mock_state *mocks;        /* per-provider mock counters, by provider index */
    size_t nmocks;            /* entries in mocks */
    gateway_group *grp;       /* what the workers of the process share */
    unsigned index;           /* this worker's number in grp (0: the first) */
    uv_async_t wake;          /* other threads' requests to this loop (grp->lock) */
    bool wake_open;           /* wake is initialised */
    tls_config **tls;         /* TLS configs of the current providers, held so the CA
                                 bundle is read at start/reload, never on a request */
    size_t ntls;              /* entries in tls */
    const tok_set *toks;      /* tokenizer encodings (the group's; may be empty: estimates) */
    tok_work *work;           /* the loop's tokenizer scratch */
    const price_table *prices; /* provider price catalog (the group's), NULL when none */
    route_table *routes;      /* every alias's routes and their state (this config's) */
    checks *checks;           /* active health checks of providers, NULL when none */
    uv_timer_t retry_timer;   /* starts the next attempt of the calls in retries */
    uv_timer_t park_timer;    /* re-checks the parked requests (data set once used) */
    struct parked *parked;    /* requests waiting for the key cache's first load */
    struct call *retries;     /* calls waiting to retry, soonest first */
    store *store;             /* PostgreSQL state and the tenancy cache; NULL in DB-less mode */
    ledger *ledger;           /* one row per call: spool, then the database (the
                                 group's, owned by worker 0) */
    jobs *jobs;               /* jobs and the running-job cache */
    leases *leases;           /* budget leases (with a database) */
    ratelimits *ratelimits;   /* rpm/tpm across instances (with a database) */
    char instance[160];       /* this worker's id (leases): the instance's, "/w<n>" after it
                                 for workers past the first */
    void (*drained)(void *);  /* gateway_drain's callback, after the ledger drained */
    void *drained_ud;
    void (*fatal)(void *ud, const char *msg); /* the daemon cannot go on (schema mismatch) */
    void *fatal_ud;
    uint64_t inflight;        /* requests being answered */
    uint64_t inflight_peak;   /* highest inflight since the heap was last trimmed */
    uv_timer_t trim_timer;    /* gives freed heap back after a peak (trim_tick) */
    uv_timer_t state_timer;   /* publishes this loop's readiness (several workers) */
    uv_prepare_t flush;       /* writes the turn's access lines before the loop waits */
    uint64_t streams;         /* of which relaying an event stream */
    bool closing;             /* gateway_close called */
    bool failed;              /* gateway_new could not set up (gateway_start refuses) */
    bool leases_done;         /* its drain has returned its leases */
    /* requests from other threads, under grp->lock (see gateway_post) */
    bool post_drain, post_close;
    const config *post_cfg;   /* a reload to apply (own reference) */
    void (*post_drained)(void *); /* the drain's callback, on this loop */
    void *post_drained_ud;
    struct scrape_ask *scrapes; /* scrapes asking this loop for its part */
    struct scrape *waiting;   /* scrapes of this loop waiting for the others */
};

#define GW_MAX_WORKERS 256

/* What the workers (loops) of one process share. The lock guards the
 * config keys' rate buckets and budgets, the per-worker request fields
 * (post_*, scrapes) and the published states. */
struct gateway_group {
    uv_mutex_t lock;
    unsigned n;                          /* workers */
    gateway *gw[GW_MAX_WORKERS];         /* set as they are made */
    int state[GW_MAX_WORKERS];           /* published readiness: 0 ready, 1 draining,
                                            2 the database not ready (atomic) */
    rate_bucket *rates[GW_RATE_SLOTS];   /* config keys' rpm buckets */
    struct local_budget *local;          /* config keys' budgets (DB-less) */
    tok_set toks;                        /* loaded once */
    bool toks_loaded;
    price_table *prices;
    ledger *ledger;                      /* worker 0's */
    char instance[128];                  /* the instance id */
    unsigned leases_pending;             /* workers whose drain has not returned its leases */
};

/* The budget of a config key (keys[].max_budget): kept by this instance,
 * rebuilt from the spool at start in DB-less mode. */
typedef struct local_budget {
    char alias[65];
    int64_t spent;      /* settled price in the current period */
    int64_t reserved;   /* worst cases of calls in flight */
    int64_t period_end; /* epoch seconds; 0 = never resets */
    struct local_budget *next;
} local_budget;

/* Who is calling: a key of the config file, or a key from the database
 * (with its team; references held while the call lives). */
typedef struct caller {
    const char *alias;                 /* for logs */
    uint8_t sha256[CRYPTO_SHA256_LEN]; /* rate-limit buckets */
    uint32_t rpm;                      /* requests per minute, 0 = unlimited */
    const config_key *ckey;            /* a config key, or NULL */
    const tn_key *key;                 /* a database key (own reference), or NULL */
    const tn_team *team;               /* its team (own reference), or NULL */
} caller;

static void caller_release(caller *who)
{
    tn_unref((tn_entry *)who->key);
    tn_unref((tn_entry *)who->team);
    who->key = NULL;
    who->team = NULL;
}

enum call_phase {
    CALL_ADMITTING, /* waiting for a budget lease */
    CALL_UPSTREAM,  /* waiting for the upstream's status line */
    CALL_STREAMING, /* relaying an SSE body */
    CALL_BUFFERING, /* collecting a non-stream (or error) body */
    CALL_RETRY_WAIT, /* an attempt failed: waiting for the next one (gw->retries) */
    CALL_DONE,      /* finished; being freed */
};

/* One proxied chat completion. */
typedef struct call {
    gateway *gw;                   /* owner */
    http_req *req;                 /* the client request (NULL once finished/aborted) */
    const config *cfg;             /* config it started with (own reference) */
    caller who;                    /* the caller's key */
    const caller *key;             /* &who */
    const char *credential;        /* whose provider credential: config, org, team, key */
    const config_provider *prov;   /* where it goes */
    const config_model *model;     /* the alias it resolved to (&model_own) */
    config_model model_own;        /* a copy: config aliases and database ones alike */
    const char *api_key;           /* the provider credential to send (see pick_credential) */
    tn_entry *secret;              /* the cache entry api_key lives in (own reference), or NULL */
    enum call_phase phase;         /* where it is */
    openai_req_info info;          /* what the body asked for */
    char provider_model[256];      /* the provider's model name */
    buf up_head;                   /* upstream request head */
    buf up_body;                   /* upstream request body (rewritten) */
    upstream_call *up;             /* the upstream call, NULL when none in flight */
    int up_status;                 /* upstream HTTP status */
    char up_ctype[128];            /* upstream content type */
    char up_headers[1024];         /* upstream headers we pass on (x-ratelimit-*) */
    sse_parser sse;                /* stream parser */
    bool sse_init;                 /* sse was initialised */
    buf out;                       /* bytes to forward from one upstream read */
    buf resp;                      /* buffered non-stream body */
    bool paused;                   /* upstream paused for a slow client */
    bool upstream_cut;             /* the SSE parser hit an error */
    openai_usage usage;            /* usage the provider reported */
    bool have_usage;               /* usage was reported */
    int status;                    /* status sent to the client */
    const char *error;             /* why it failed, for the log */
    uint64_t t_upstream_ns;        /* upstream call started */
    uint64_t t_first_ns;           /* first body byte relayed to the client */
    uint64_t overhead_ns;          /* time spent inside tollgate's own code */
    uint64_t bytes_out;            /* body bytes relayed */
    bool sent;                     /* the request went upstream */
    meter meter;                   /* the output's tokens as relayed */
    uint64_t prompt_est;           /* prompt tokens counted at admission */
    bool tok_exact;                /* the tokenizer is the model's own */
    bool credit_leased;            /* admitted against its team's credit lease */
    const char *endpoint;          /* upstream path of an OpenAI-format call: "/chat/completions",
                                      "/completions", "/embeddings" */
    const chat_format *fin;        /* the caller's wire format */
    const chat_format *fup;        /* the upstream's wire format */
    bool translate;                /* fin != fup: requests and answers are re-encoded */
    bool decode;                   /* answers go through fup's decoder (all but OpenAI passthrough) */
    chat_request creq;             /* the decoded request (when decode) */
    chat_stream *dec;              /* fup's stream decoder */
    chat_stream *enc;              /* fin's stream encoder */
    chat_response *resp_acc;       /* non-stream: the answer being collected (translate) */
    bool ended;                    /* the decoder saw the end of the answer */
    bool stream_error;             /* an in-stream error event was relayed */
    bool finished;                 /* the decoder saw a finish reason */
    bool embed;                    /* embeddings translated for a Gemini provider */
    embed_req_info embed_info;     /* what the caller's embeddings request asked for */
    int64_t cache_write;           /* prompt tokens written to the cache (provider usage) */
    char call_id[33];              /* the ledger's id of this call */
    char job_id[37];               /* the job it is attached to, or "" */
    lease_claim claim;             /* what it holds of its budgets (worst case) */
    int64_t worst;                 /* its worst-case price */
    int64_t worst_credits;         /* its worst case in its team's credits (billionths) */
    int64_t budget_left;           /* the tightest budget's remainder at admission; -1 none */
    local_budget *local;           /* a config key's budget it reserved in, or NULL */
    lease_wait *wait;              /* waiting for a lease */
    rate_claim rclaim;             /* what it took of its rate limits */
    rate_wait *rwait;              /* waiting for a rate slice */
    int64_t t_wall_us;             /* wall-clock start (the ledger row's `at`) */
    route_set *rs;                 /* the alias's routes and their state (own reference) */
    uint32_t plan[RT_MAX_ROUTES];  /* the routes to try, best first */
    size_t nplan, plan_pos;        /* plan[plan_pos] is the route in use */
    unsigned route_tries;          /* attempts on that route */
    unsigned attempts;             /* attempts on any route */
    rt_attempt att;                /* the attempt in flight, when att_live */
    bool att_live;
    bool panic;                    /* every route's circuit was open: planned anyway */
    bool creq_ready;               /* creq holds the decoded request */
    uint64_t retry_until_ns;       /* no attempt starts after this */
    uint64_t retry_at_ns;          /* CALL_RETRY_WAIT: when the next attempt starts */
    struct call *retry_next;       /* gw->retries */
    bool error_upstream;           /* error says how the upstream failed (not the client) */
    bool streaming;                /* counted in gw->streams */
} call;

/* ------------------------------------------------------------ responses */

/* Sends an error in the caller's format and finishes the request. */
static void send_error_in(http_req *req, const chat_format *fin, int status, const char *type,
                          const char *code, const char *param, const char *headers,
                          const char *fmt, ...) __attribute__((format(printf, 8, 9)));
#define send_error(req, ...) send_error_in(req, NULL, __VA_ARGS__)

/* Sends e in fin's format (status as that format maps e's kind). */
static void send_chat_error(http_req *req, const chat_format *fin, const chat_error *e,
                            const char *headers)
{
    buf b;
    buf_init(&b, 8192);
    int status = e->status;
    if (fin->error_encode(e, &b, &status) != 0) {
        buf_free(&b);
        http_respond(req, 500, "text/plain", NULL, "internal error\n", 15);
        return;
    }
    http_respond(req, status, "application/json", headers, b.data, b.len);
    buf_free(&b);
}

static void send_error_in(http_req *req, const chat_format *fin, int status, const char *type,
                          const char *code, const char *param, const char *headers,
                          const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (fin && fin->id != CHAT_FMT_OPENAI) {
        chat_error e;
        memset(&e, 0, sizeof e);
        e.status = status;
        e.kind = chat_err_kind_of_status(status);
        e.retry_after_ms = -1;
        snprintf(e.type, sizeof e.type, "%s", type ? type : "");
        snprintf(e.code, sizeof e.code, "%s", code ? code : "");
        snprintf(e.param, sizeof e.param, "%s", param ? param : "");
        snprintf(e.message, sizeof e.message, "%s", msg);
        send_chat_error(req, fin, &e, headers);
        return;
    }
    buf b;
    buf_init(&b, 4096);
    if (openai_error_body(&b, msg, type, param, code) != 0) {
        buf_free(&b);
        http_respond(req, 500, "text/plain", NULL, "internal error\n", 15);
        return;
    }
    http_respond(req, status, "application/json", headers, b.data, b.len);
    buf_free(&b);
}

/* A request that ended without a model call: logged and counted. */
static void access_log_simple(gateway *gw, http_req *req, int status, const char *key_alias)
{
    uint64_t now = clock_mono_ns();
    metrics_call mc = {.status = status,
                       .duration_ns = now - req->t_start_ns,
                       .cost_nano = -1,
                       .price_nano = -1,
                       .counted_prompt = -1,
                       .counted_completion = -1};
    metrics_request(gw->metrics, &mc);
    buf b;
    buf_init(&b, 4096);
    int rc = buf_printf(&b, "{\"request_id\":\"%s\",\"method\":\"%s\",\"path\":\"", req->request_id,
                        llhttp_method_name(req->method));
    /* the path is user input: escaped, and cut */
    if (!rc)
        rc = buf_append_json_escaped(&b, req->path.p, req->path.len > 256 ? 256 : req->path.len);
    if (!rc)
        rc = buf_printf(&b, "\",\"key_alias\":%s%s%s,\"status\":%d,\"latency_ms\":%.3f}",
                        key_alias ? "\"" : "", key_alias ? key_alias : "null",
                        key_alias ? "\"" : "", status, (double)(now - req->t_start_ns) / 1e6);
    if (!rc)
        log_access(b.data, b.len);
    buf_free(&b);
}

/* ------------------------------------------------------------ the call */

static void call_free(call *c)
{
    if (c->sse_init)
        sse_parser_free(&c->sse);
    buf_free(&c->up_head);
    buf_free(&c->up_body);
    buf_free(&c->out);
    buf_free(&c->resp);
    meter_free(&c->meter);
    if (c->fup)
        c->fup->stream_free(c->dec);
    if (c->fin)
        c->fin->stream_free(c->enc);
    if (c->resp_acc) {
        chat_response_free(c->resp_acc);
        free(c->resp_acc);
    }
    chat_request_free(&c->creq);
    caller_release(&c->who);
    tn_unref(c->secret);
    route_set_unref(c->rs);
    config_unref(c->cfg);
    c->gw->inflight--;
    if (c->streaming)
        c->gw->streams--;
    free(c);
}


/* The provider's price for p's model: the admin API's (price_overrides)
 * over the shipped catalog's; a provider without a catalog name
 * (openai_compatible) is priced under its config name. NULL: unpriced.
 * Borrowed until the tenancy cache changes: use it at once. */
static const price_entry *price_of(const gateway *gw, const config_provider *p, const char *model)
{
    const char *cp = config_provider_catalog(p->type);
    if (gw->store) {
        const tn_price *tp = tenants_price(store_tenants(gw->store), cp ? cp : p->name, model);
        if (tp)
            return &tp->price;
    }
    return cp && gw->prices ? prices_find(gw->prices, cp, model) : NULL;
}

/* cost plus markup_bps basis points (rounded half up); cost < 0 stays. */
static int64_t marked_up(int64_t cost, int32_t markup_bps)
{
    if (cost < 0 || markup_bps <= 0)
        return cost;
    __int128 v = (__int128)cost * (10000 + markup_bps) + 5000;
    v /= 10000;
    return v > INT64_MAX ? INT64_MAX : (int64_t)v;
}

/* What a call is billed on. */
typedef struct call_usage {
    const char *source;  /* "provider", "estimated" or "none" (not billable) */
    int64_t prompt, completion, cached, cache_write;
    int64_t cost;        /* provider cost, nano-USD; -1 unknown */
    int64_t price;       /* customer price, nano-USD; -1 unknown */
    uint64_t metered;    /* the meter's completion tokens */
} call_usage;

/* The provider's usage when it sent one; else, for a call the provider
 * worked on (a 200, or a request it received before the client left),
 * the meter's counts, flagged estimated. */
static void call_usage_of(const call *c, call_usage *u)
{
    memset(u, 0, sizeof *u);
    u->cost = u->price = -1;
    u->metered = meter_completion(&c->meter);
    if (c->have_usage) {
        u->source = "provider";
        u->prompt = c->usage.prompt_tokens > 0 ? c->usage.prompt_tokens : 0;
        u->completion = c->usage.completion_tokens > 0 ? c->usage.completion_tokens : 0;
        u->cached = c->usage.cached_tokens > 0 ? c->usage.cached_tokens : 0;
        u->cache_write = c->cache_write > 0 ? c->cache_write : 0;
    } else if (c->up_status == 200 || (c->sent && c->up_status == 0 && c->status == 499)) {
        u->source = "estimated";
        u->prompt = (int64_t)c->prompt_est;
        u->completion = (int64_t)u->metered;
    } else {
        u->source = "none";
        return;
    }
    const price_entry *pe = price_of(c->gw, c->prov, c->provider_model);
    if (pe)
        u->cost = price_cost(pe, u->prompt, u->cached, u->cache_write, u->completion);
    if (c->model->price.given) {
        price_entry own = {
            .input = c->model->price.input,
            .output = c->model->price.output,
            .cached_input = c->model->price.cached_input,
            .cache_write = c->model->price.cache_write,
            .cache_write_1h = c->model->price.cache_write,
            .input_above_200k = c->model->price.input,
            .output_above_200k = c->model->price.output,
        };
        u->price = price_cost(&own, u->prompt, u->cached, u->cache_write, u->completion);
        if (u->cost < 0)
            u->cost = u->price; /* no catalog entry: the configured price is the cost */
    } else {
        /* customer price: provider cost, plus the alias's markup */
        u->price = marked_up(u->cost, c->model->price.markup_bps);
    }
    if (c->credential && strstr(c->credential, "byok"))
        u->price = 0; /* the caller's own provider key: recorded, never charged */
}

/* x-tollgate-cost-usd (what the call is charged, when known: whole
 * answers), x-tollgate-budget-remaining-usd (the tightest budget's
 * remainder at admission, for budgeted keys), x-tollgate-route and
 * x-tollgate-attempts. */
static void money_headers(const call *c, const call_usage *u, char *out, size_t cap)
{
    char m[MONEY_FMT_MAX];
    size_t o = 0;
    out[0] = '\0';
    if (u && u->price >= 0) {
        money_format(u->price, m, sizeof m);
        o += (size_t)snprintf(out + o, cap - o, "x-tollgate-cost-usd: %s\r\n", m);
    }
    if (c->budget_left >= 0 && o < cap) {
        money_format(c->budget_left, m, sizeof m);
        o += (size_t)snprintf(out + o, cap - o, "x-tollgate-budget-remaining-usd: %s\r\n", m);
    }
    /* the route that answered and the attempts it took (a database
     * alias's model name is checked: nothing below 0x20 goes in a header) */
    const char *label = c->rs ? c->rs->labels[c->plan[c->plan_pos]] : NULL;
    bool clean = label != NULL;
    for (const char *p = label; clean && *p; p++)
        clean = (unsigned char)*p >= 0x20 && *p != 0x7f;
    if (clean && o < cap)
        snprintf(out + o, cap - o, "x-tollgate-route: %s\r\nx-tollgate-attempts: %u\r\n", label,
                 c->attempts);
}

static int append_money(buf *b, const char *name, int64_t nano)
{
    int rc = buf_append(b, ",\"", 2);
    if (!rc)
        rc = buf_append_str(b, name);
    if (rc)
        return rc;
    if (nano < 0)
        return buf_append(b, "\":null", 6);
    char m[MONEY_FMT_MAX];
    size_t n = money_format(nano, m, sizeof m);
    rc = buf_append(b, "\":\"", 3);
    if (!rc)
        rc = buf_append(b, m, n);
    return rc ? rc : buf_append(b, "\"", 1);
}

static const char *endpoint_name(const call *c)
{
    if (c->fin->id == CHAT_FMT_ANTHROPIC)
        return "messages";
    if (strcmp(c->endpoint, "/completions") == 0)
        return "completions";
    if (strcmp(c->endpoint, "/embeddings") == 0)
        return "embeddings";
    return "chat";
}

/* The call's ledger row. */
static void call_ledger(call *c, const call_usage *u, int64_t latency_us, int64_t ttft_us)
{
    gateway *gw = c->gw;
    if (!gw->ledger)
        return;
    ledger_row r = {
        .id = c->call_id,
        .request_id = c->req->request_id,
        .at_us = c->t_wall_us,
        .key_id = c->who.key ? c->who.key->e.id.s : NULL,
        .key_alias = c->key->alias,
        .team_id = c->who.key ? c->who.key->team_id.s : NULL,
        .org_id = c->who.team ? c->who.team->org_id.s : NULL,
        .job_id = c->job_id[0] ? c->job_id : NULL,
        .endpoint = endpoint_name(c),
        .requested_model = c->info.model,
        .provider = c->prov->name,
        .provider_model = c->provider_model,
        .stream = c->info.stream,
        .status = c->status,
        .upstream_status = c->up_status,
        .prompt_tokens = u->prompt,
        .completion_tokens = u->completion,
        .cached_tokens = u->cached,
        .cache_write_tokens = u->cache_write,
        .usage_source = u->source,
        .cost_nano = u->cost,
        .price_nano = u->price,
        .credential = c->credential ? c->credential : "config",
        .latency_us = latency_us,
        .ttft_us = ttft_us,
        .attempts = (int)c->attempts,
        .error = c->error,
        .credit_leased = c->credit_leased && c->claim.n,
    };
    (void)ledger_append(gw->ledger, &r); /* past its bound it still keeps the row */
}

static int64_t call_credits(const call *c, int64_t price, int64_t tokens);

static rt_outcome outcome_of(const call *c);
static void call_attempt_end(call *c, rt_outcome o, const char *why);

/* The call's series in /metrics: labels from the config and the route
 * set only (never the model name the client sent). */
static void call_metrics(const call *c, const call_usage *u, uint64_t now)
{
    uint64_t t0 = c->req->t_start_ns;
    bool drift = c->have_usage && c->tok_exact && !meter_estimate_only(&c->meter);
    metrics_call mc = {
        .alias = c->model ? c->model->name : NULL,
        .provider = c->prov ? c->prov->name : NULL,
        .route = c->rs ? c->rs->labels[c->plan[c->plan_pos]] : NULL,
        .status = c->status,
        .duration_ns = now - t0,
        .upstream_ns = c->sent && c->t_upstream_ns ? now - c->t_upstream_ns : 0,
        .ttft_ns = c->t_first_ns ? c->t_first_ns - t0 : 0,
        .overhead_ns = c->overhead_ns,
        .input = u->prompt,
        .output = u->completion,
        .cached = u->cached,
        .cache_write = u->cache_write,
        .cost_nano = u->cost,
        .price_nano = u->price,
        .counted_prompt = drift ? (int64_t)c->prompt_est : -1,
        .reported_prompt = drift ? u->prompt : -1,
        .counted_completion = drift ? (int64_t)u->metered : -1,
        .reported_completion = drift ? u->completion : -1,
        .key = c->key->alias,
        .team = c->who.team ? c->who.team->name : NULL,
    };
    metrics_request(c->gw->metrics, &mc);
}

static void call_log(call *c)
{
    call_attempt_end(c, outcome_of(c), NULL);
    http_req *req = c->req;
    uint64_t now = clock_mono_ns();
    call_usage u;
    call_usage_of(c, &u);
    buf b;
    buf_init(&b, 8192);
    /* no printf: a line is written for every call */
#define LIT(s) buf_append(&b, s, sizeof(s) - 1)
#define STR(s) buf_append_str(&b, s)
#define ESC(s) buf_append_json_escaped(&b, s, strlen(s))
    int rc = LIT("{\"request_id\":\"");
    if (!rc)
        rc = STR(req->request_id);
    if (!rc)
        rc = LIT("\",\"method\":\"POST\",\"path\":\"");
    if (!rc)
        rc = buf_append_json_escaped(&b, req->path.p, req->path.len);
    if (!rc)
        rc = LIT("\",\"key_alias\":\"");
    if (!rc)
        rc = ESC(c->key->alias);
    if (!rc && c->who.key) {
        rc = LIT("\",\"key_id\":\"");
        if (!rc)
            rc = STR(c->who.key->e.id.s);
        if (!rc)
            rc = LIT("\",\"team_id\":\"");
        if (!rc)
            rc = STR(c->who.key->team_id.s);
        if (!rc)
            rc = LIT("\",\"org_id\":\"");
        if (!rc)
            rc = STR(c->who.team ? c->who.team->org_id.s : "");
    }
    if (!rc)
        rc = LIT("\",\"credential\":\"");
    if (!rc)
        rc = STR(c->credential ? c->credential : "config");
    if (!rc)
        rc = LIT("\",\"model\":\"");
    if (!rc)
        rc = ESC(c->info.model);
    if (!rc)
        rc = LIT("\",\"format\":\"");
    if (!rc)
        rc = STR(c->fin->name);
    if (!rc)
        rc = LIT("\",\"upstream_format\":\"");
    if (!rc)
        rc = STR(c->fup->name);
    if (!rc)
        rc = LIT("\",\"provider\":\"");
    if (!rc)
        rc = STR(c->prov->name);
    if (!rc)
        rc = LIT("\",\"provider_model\":\"");
    if (!rc)
        rc = ESC(c->provider_model);
    if (!rc)
        rc = LIT("\",\"attempts\":");
    if (!rc)
        rc = buf_append_u64(&b, c->attempts);
    if (!rc)
        rc = c->info.stream ? LIT(",\"stream\":true,\"status\":")
                            : LIT(",\"stream\":false,\"status\":");
    if (!rc)
        rc = buf_append_i64(&b, c->status);
    if (!rc)
        rc = LIT(",\"upstream_status\":");
    if (!rc)
        rc = buf_append_i64(&b, c->up_status);
    if (!rc)
        rc = LIT(",\"prompt_tokens\":");
    if (!rc)
        rc = buf_append_i64(&b, u.prompt);
    if (!rc)
        rc = LIT(",\"completion_tokens\":");
    if (!rc)
        rc = buf_append_i64(&b, u.completion);
    if (!rc)
        rc = LIT(",\"cached_tokens\":");
    if (!rc)
        rc = buf_append_i64(&b, u.cached);
    if (!rc)
        rc = LIT(",\"cache_write_tokens\":");
    if (!rc)
        rc = buf_append_i64(&b, u.cache_write);
    if (!rc)
        rc = LIT(",\"usage_source\":\"");
    if (!rc)
        rc = STR(u.source);
    if (!rc)
        rc = LIT("\",\"meter_prompt_tokens\":");
    if (!rc)
        rc = buf_append_u64(&b, c->prompt_est);
    if (!rc)
        rc = LIT(",\"meter_completion_tokens\":");
    if (!rc)
        rc = buf_append_u64(&b, u.metered);
    if (!rc)
        rc = LIT(",\"tokenizer\":\"");
    if (!rc)
        rc = STR(c->meter.enc ? tok_name(c->meter.enc) : "bytes/4");
    if (!rc)
        rc = c->tok_exact && !meter_estimate_only(&c->meter) ? LIT("\",\"tokenizer_exact\":true")
                                                             : LIT("\",\"tokenizer_exact\":false");
    if (!rc)
        rc = append_money(&b, "cost_usd", u.cost);
    if (!rc)
        rc = append_money(&b, "price_usd", u.price);
    /* milliseconds with 3 decimals, microseconds with 1, rounded */
    if (!rc)
        rc = LIT(",\"latency_ms\":");
    if (!rc)
        rc = buf_append_fixed(&b, (int64_t)((now - req->t_start_ns + 500) / 1000), 3);
    if (!rc)
        rc = LIT(",\"ttft_ms\":");
    if (!rc)
        rc = c->t_first_ns
                 ? buf_append_fixed(&b, (int64_t)((c->t_first_ns - req->t_start_ns + 500) / 1000), 3)
                 : LIT("-1.000");
    if (!rc)
        rc = LIT(",\"overhead_us\":");
    if (!rc)
        rc = buf_append_fixed(&b, (int64_t)((c->overhead_ns + 50) / 100), 1);
    if (!rc)
        rc = LIT(",\"bytes_out\":");
    if (!rc)
        rc = buf_append_u64(&b, c->bytes_out);
    if (!rc)
        rc = LIT(",\"error\":");
#undef LIT
#undef STR
#undef ESC
    if (!rc && c->error) {
        rc = buf_append(&b, "\"", 1);
        if (!rc)
            rc = buf_append_json_escaped(&b, c->error, strlen(c->error));
        if (!rc)
            rc = buf_append(&b, "\"}", 2);
    } else if (!rc) {
        rc = buf_append_str(&b, "null}");
    }
    if (!rc)
        log_access(b.data, b.len);
    buf_free(&b);
    call_metrics(c, &u, now);
    call_ledger(c, &u, (int64_t)((now - req->t_start_ns) / 1000),
                c->t_first_ns ? (int64_t)((c->t_first_ns - req->t_start_ns) / 1000) : -1);
    if (c->claim.n && c->gw->leases)
        leases_settle(c->gw->leases, &c->claim, u.price > 0 ? u.price : 0,
                      call_credits(c, u.price, u.prompt + u.completion));
    if (c->rclaim.n && c->gw->ratelimits)
        ratelimits_settle(c->gw->ratelimits, &c->rclaim, u.prompt + u.completion);
    if (c->local) {
        uv_mutex_lock(&c->gw->grp->lock);
        c->local->reserved -= c->worst;
        c->local->spent += u.price > 0 ? u.price : 0;
        uv_mutex_unlock(&c->gw->grp->lock);
        c->local = NULL;
    }
}

/* The call is over for the client: log, release. */
static void call_end(call *c)
{
    c->phase = CALL_DONE;
    call_log(c);
    c->req->on_abort = NULL;
    c->req->on_drain = NULL;
    c->req->app = NULL;
    c->req = NULL;
    call_free(c);
}

static int upstream_error_status(const char *err)
{
    if (err == upstream_err_timeout_connect || err == upstream_err_timeout_tls ||
        err == upstream_err_timeout_first_byte || err == upstream_err_timeout_idle ||
        err == upstream_err_timeout_total)
        return 504;
    if (err == upstream_err_shutdown)
        return 503;
    return 502;
}

static const char *upstream_error_code(const char *err)
{
    if (upstream_error_status(err) == 504)
        return "upstream_timeout";
    if (err == upstream_err_tls)
        return "upstream_tls_error";
    if (err == upstream_err_reset || err == upstream_err_injected)
        return "upstream_disconnected";
    return "upstream_unavailable";
}

static void call_unclaim(call *c);
static void retry_unlink(call *c);
static bool call_retry(call *c, const char *why);

static void call_on_abort(http_req *req, void *ud)
{
    call *c = ud;
    (void)req;
    uint64_t t0 = clock_mono_ns();
    if (c->phase == CALL_ADMITTING) { /* never started: no row, nothing spent */
        call_unclaim(c);
        c->req = NULL;
        call_free(c);
        return;
    }
    if (c->phase == CALL_RETRY_WAIT)
        retry_unlink(c);
    if (c->up) {
        upstream_abort(c->up); /* closes the upstream connection at once */
        c->up = NULL;
    }
    c->status = 499;
    c->error = "client closed the connection";
    c->overhead_ns += clock_mono_ns() - t0;
    call_end(c);
}

static void call_on_drain(http_req *req, void *ud)
{
    call *c = ud;
    (void)req;
    if (c->paused && c->up) {
        c->paused = false;
        upstream_resume(c->up);
    }
}

/* One SSE event from upstream: decide what the client sees. */
static int call_on_event(const sse_event *ev, void *ud)
{
    call *c = ud;
    if (ev->has_data && !(ev->data.len == 6 && memcmp(ev->data.p, "[DONE]", 6) == 0)) {
        openai_chunk_info ci;
        /* one pass: usage, and the text the client gets, metered as it passes
         * (a usage-only chunk has no text) */
        if (openai_chunk_scan_text(ev->data.p, ev->data.len, &ci, meter_openai_text, &c->meter) == 0) {
            if (ci.has_usage) {
                c->usage = ci.usage;
                c->have_usage = true;
            }
            if (openai_chunk_is_usage_only(&ci) && !c->info.include_usage)
                return 0; /* asked for by tollgate, not by the caller */
        }
    }
    return buf_append(&c->out, ev->raw.p, ev->raw.len) == 0 ? 0 : -1;
}

/* Meters one normalized event and keeps what billing needs from it. */
static void call_note_event(call *c, const chat_event *ev)
{
    switch (ev->type) {
    case CHAT_EV_TEXT:
        meter_text(&c->meter, OPENAI_TEXT_CONTENT, ev->choice, -1, ev->text.p, ev->text.len);
        break;
    case CHAT_EV_THINKING:
        meter_text(&c->meter, OPENAI_TEXT_REASONING, ev->choice, -1, ev->text.p, ev->text.len);
        break;
    case CHAT_EV_TOOL_START:
        meter_text(&c->meter, OPENAI_TEXT_TOOL_NAME, ev->choice, ev->tool, ev->text.p, ev->text.len);
        break;
    case CHAT_EV_TOOL_ARGS:
        meter_text(&c->meter, OPENAI_TEXT_TOOL_ARGS, ev->choice, ev->tool, ev->text.p, ev->text.len);
        break;
    case CHAT_EV_START:
    case CHAT_EV_USAGE: {
        const chat_usage *u = &ev->usage;
        if (u->input < 0 && u->output < 0)
            break;
        if (!c->have_usage) {
            c->usage.prompt_tokens = c->usage.completion_tokens = c->usage.cached_tokens = -1;
            c->usage.total_tokens = -1;
        }
        if (u->input >= 0)
            c->usage.prompt_tokens = u->input;
        if (u->output >= 0)
            c->usage.completion_tokens = u->output;
        if (u->cache_read >= 0)
            c->usage.cached_tokens = u->cache_read;
        if (u->cache_write >= 0)
            c->cache_write = u->cache_write;
        /* a START carries the input side only: usage is final at USAGE */
        if (ev->type == CHAT_EV_USAGE && (c->finished || c->phase != CALL_STREAMING))
            c->have_usage = true;
        break;
    }
    case CHAT_EV_END:
        c->ended = true;
        break;
    case CHAT_EV_FINISH:
        c->finished = true;
        break;
    case CHAT_EV_ERROR:
        c->stream_error = true;
        if (!c->error) {
            c->error = "upstream sent an error event";
            c->error_upstream = true;
        }
        break;
    default:
        break;
    }
}

/* chat_emit_fn of a stream: meter, then (translating) encode for the
 * caller into c->out. */
static int call_emit(void *ud, const chat_event *ev)
{
    call *c = ud;
    call_note_event(c, ev);
    if (!c->translate)
        return 0;
    int rc = ev->type == CHAT_EV_ERROR ? c->fin->stream_error_encode(c->enc, ev->error, &c->out)
                                       : c->fin->stream_enc_feed(c->enc, ev, &c->out);
    return rc ? -1 : 0;
}

/* chat_emit_fn of a whole answer: meter, and collect it when translating. */
static int call_emit_collect(void *ud, const chat_event *ev)
{
    call *c = ud;
    call_note_event(c, ev);
    return c->resp_acc ? chat_response_collect(c->resp_acc, ev) : 0;
}

/* One SSE event from an upstream whose answers are decoded. */
static int call_on_chat_event(const sse_event *ev, void *ud)
{
    call *c = ud;
    int rc = c->fup->stream_dec_feed(c->dec, ev, call_emit, c);
    if (rc)
        return rc;
    if (!c->translate && buf_append(&c->out, ev->raw.p, ev->raw.len) != 0)
        return -1;
    return 0;
}

/* Upstream rate-limit headers the caller gets, under its format's names
 * where the two formats name the same thing. */
static void keep_header(call *c, size_t *hl, slice name, slice value)
{
    static const struct {
        const char *openai, *anthropic;
    } names[] = {
        {"x-ratelimit-limit-requests", "anthropic-ratelimit-requests-limit"},
        {"x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining"},
        {"x-ratelimit-limit-tokens", "anthropic-ratelimit-tokens-limit"},
        {"x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-remaining"},
    };
    char nm[96];
    int nl = snprintf(nm, sizeof nm, "%.*s", (int)name.len, name.p);
    if (nl <= 0 || (size_t)nl >= sizeof nm)
        return;
    bool pass = slice_eq_nocase(name, "retry-after");
    if (!pass && c->translate) {
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            const char *from = c->fup->id == CHAT_FMT_ANTHROPIC ? names[i].anthropic : names[i].openai;
            const char *to = c->fin->id == CHAT_FMT_ANTHROPIC ? names[i].anthropic : names[i].openai;
            if (slice_eq_nocase(name, from)) {
                snprintf(nm, sizeof nm, "%s", to);
                pass = true;
                break;
            }
        }
    } else if (!pass) {
        pass = (name.len > 12 && strncasecmp(name.p, "x-ratelimit-", 12) == 0) ||
               (name.len > 20 && strncasecmp(name.p, "anthropic-ratelimit-", 20) == 0);
    }
    if (!pass)
        return;
    int k = snprintf(c->up_headers + *hl, sizeof(c->up_headers) - *hl, "%s: %.*s\r\n", nm,
                     (int)value.len, value.p);
    if (k > 0 && (size_t)k < sizeof(c->up_headers) - *hl)
        *hl += (size_t)k;
    else
        c->up_headers[*hl] = '\0';
}

static int call_on_head(upstream_call *up, int status, const upstream_header *hdrs, size_t n,
                        void *ud)
{
    call *c = ud;
    uint64_t t0 = clock_mono_ns();
    (void)up;
    c->up_status = status;
    size_t hl = 0;
    for (size_t i = 0; i < n; i++) {
        if (slice_eq_nocase(hdrs[i].name, "content-type")) {
            size_t l = hdrs[i].value.len < sizeof(c->up_ctype) - 1 ? hdrs[i].value.len
                                                                    : sizeof(c->up_ctype) - 1;
            memcpy(c->up_ctype, hdrs[i].value.p, l);
            c->up_ctype[l] = '\0';
        } else {
            keep_header(c, &hl, hdrs[i].name, hdrs[i].value);
        }
    }
    /* an upstream that answers a stream request with plain JSON (some
     * OpenAI-compatible servers ignore "stream") is relayed as JSON */
    if (c->info.stream && status == 200 &&
        (!c->up_ctype[0] || strncasecmp(c->up_ctype, "text/event-stream", 17) == 0)) {
        c->phase = CALL_STREAMING;
        c->streaming = true;
        c->gw->streams++;
        if (c->decode) {
            c->dec = c->fup->stream_dec_new();
            c->enc = c->fin->stream_enc_new(&c->creq);
            if (!c->dec || !c->enc)
                return -1;
        }
        if (sse_parser_init(&c->sse, GW_MAX_EVENT_BYTES, c->decode ? call_on_chat_event : call_on_event,
                            c) != 0)
            return -1;
        c->sse_init = true;
        c->status = 200;
        uint64_t now = clock_mono_ns();
        c->overhead_ns += now - t0;
        char hdr[1800], extra[512];
        money_headers(c, NULL, extra, sizeof extra);
        snprintf(hdr, sizeof(hdr),
                 "Cache-Control: no-cache\r\nx-tollgate-overhead-us: %" PRIu64 "\r\n%s%s",
                 c->overhead_ns / 1000, extra, c->up_headers);
        if (http_stream_start(c->req, 200, "text/event-stream; charset=utf-8", hdr) != 0) {
            c->up = NULL; /* released by returning -1; on_abort follows from the loop */
            return -1;
        }
        return 0;
    }
    c->phase = CALL_BUFFERING;
    c->overhead_ns += clock_mono_ns() - t0;
    return 0;
}

static void stream_fail(call *c, const char *err);

/* Gives up on the upstream from inside one of its callbacks (which then
 * returns -1, releasing it): the client gets an error in the right shape. */
static int call_fail_inside(call *c, const char *why)
{
    c->up = NULL;
    c->error = why;
    c->error_upstream = true;
    http_req *r = c->req;
    if (c->phase == CALL_STREAMING) {
        stream_fail(c, why);
        call_end(c);
        http_stream_end(r);
    } else {
        c->status = 502;
        const chat_format *fin = c->fin;
        call_end(c);
        send_error_in(r, fin, 502, "upstream_error", "upstream_invalid_response", NULL, NULL, "%s",
                      why);
    }
    return -1;
}

static int call_on_body(upstream_call *up, const char *p, size_t n, void *ud)
{
    call *c = ud;
    uint64_t t0 = clock_mono_ns();
    if (c->phase == CALL_BUFFERING) {
        if (buf_append(&c->resp, p, n) != 0)
            return call_fail_inside(c, "upstream response too large");
        c->overhead_ns += clock_mono_ns() - t0;
        return 0;
    }
    buf_reset(&c->out);
    int rc = sse_parser_feed(&c->sse, p, n);
    if (rc != 0)
        return call_fail_inside(c, "upstream sent an invalid or oversized event stream");
    if (c->out.len) {
        if (!c->t_first_ns)
            c->t_first_ns = clock_mono_ns();
        c->bytes_out += c->out.len;
        rc = http_stream_write(c->req, c->out.data, c->out.len);
        if (rc < 0) {
            c->up = NULL; /* released by returning -1; on_abort follows from the loop */
            return -1;
        }
        if (rc == 1 && !c->paused) {
            c->paused = true;
            upstream_pause(up);
        }
    }
    c->overhead_ns += clock_mono_ns() - t0;
    return 0;
}

/* Ends a stream after an upstream failure with a well-formed error event. */
static void stream_fail(call *c, const char *err)
{
    buf b;
    buf_init(&b, 4096);
    char msg[256];
    snprintf(msg, sizeof(msg), "upstream %s failed mid-stream: %s", c->prov->name, err);
    if (c->enc) {
        chat_error ce;
        memset(&ce, 0, sizeof ce);
        ce.status = upstream_error_status(err);
        ce.kind = chat_err_kind_of_status(ce.status);
        ce.retry_after_ms = -1;
        snprintf(ce.type, sizeof ce.type, "upstream_error");
        snprintf(ce.code, sizeof ce.code, "%s", upstream_error_code(err));
        snprintf(ce.message, sizeof ce.message, "%s", msg);
        if (c->fin->stream_error_encode(c->enc, &ce, &b) == 0 && b.len)
            (void)http_stream_write(c->req, b.data, b.len);
        buf_free(&b);
        return;
    }
    buf e;
    buf_init(&e, 2048);
    if (openai_error_body(&e, msg, "upstream_error", NULL, upstream_error_code(err)) == 0 &&
        buf_append_str(&b, "data: ") == 0 && buf_append(&b, e.data, e.len) == 0 &&
        buf_append_str(&b, "\n\n") == 0)
        (void)http_stream_write(c->req, b.data, b.len);
    buf_free(&e);
    buf_free(&b);
}

/* The upstream body of a decoded stream ended cleanly: what the format
 * still owes (Gemini ends with the body), or an error event when the
 * answer stopped short of its end. */
static void call_stream_finish(call *c)
{
    buf_reset(&c->out);
    int rc = c->fup->stream_dec_finish(c->dec, call_emit, c);
    if (!rc && !c->ended && c->finished && !c->stream_error) {
        /* a finish reason but no end marker (an OpenAI-compatible server
         * without [DONE]): the answer is whole */
        chat_event end;
        memset(&end, 0, sizeof end);
        end.type = CHAT_EV_END;
        chat_usage_unset(&end.usage);
        rc = call_emit(c, &end);
    }
    if (c->out.len) {
        c->bytes_out += c->out.len;
        (void)http_stream_write(c->req, c->out.data, c->out.len);
    }
    if (!c->ended && !c->stream_error) {
        c->error = "upstream ended the stream before the answer's end";
        c->error_upstream = true;
        log_info(c->req->request_id, "upstream %s: %s", c->prov->name, c->error);
        stream_fail(c, upstream_err_reset);
    }
}

/* A whole decoded answer (status 200): meters it and, translating,
 * re-encodes it for the caller into *out. 0, or -1 when the body does
 * not decode (*why says so). */
static int call_whole_answer(call *c, const buf *body, buf *out, const char **why)
{
    chat_response r;
    chat_response_init(&r);
    c->resp_acc = c->translate ? &r : NULL;
    int rc = c->fup->resp_decode(body->data ? body->data : "", body->len, call_emit_collect, c);
    c->resp_acc = NULL;
    if (rc) {
        *why = "upstream sent a response that does not decode";
    } else if (c->translate && c->fin->resp_encode(&c->creq, &r, out) != 0) {
        *why = "could not encode the response";
        rc = -1;
    }
    if (!rc && !c->have_usage && r.have_usage)
        c->have_usage = true;
    chat_response_free(&r);
    return rc ? -1 : 0;
}

static void call_on_done(upstream_call *up, const char *err, void *ud)
{
    call *c = ud;
    uint64_t t0 = clock_mono_ns();
    (void)up;
    c->up = NULL;
    http_req *req = c->req;
    if (c->phase == CALL_STREAMING) {
        if (err) {
            c->error = err;
            c->error_upstream = true;
            log_info(req->request_id, "upstream %s: %s after %" PRIu64 " bytes", c->prov->name, err,
                     c->bytes_out);
            stream_fail(c, err);
        } else if (sse_parser_finish(&c->sse) == SSE_UNTERMINATED) {
            log_info(req->request_id, "upstream %s ended inside an event", c->prov->name);
        }
        if (!err && c->decode)
            call_stream_finish(c);
        c->overhead_ns += clock_mono_ns() - t0;
        http_req *r = c->req;
        call_end(c);
        http_stream_end(r);
        return;
    }
    if (err && c->phase == CALL_UPSTREAM && call_retry(c, err)) {
        c->overhead_ns += clock_mono_ns() - t0;
        return;
    }
    if (err && c->phase == CALL_UPSTREAM) {
        c->error = err;
        c->error_upstream = true;
        c->status = upstream_error_status(err);
        log_info(req->request_id, "upstream %s: %s", c->prov->name, err);
        c->overhead_ns += clock_mono_ns() - t0;
        http_req *r = c->req;
        const char *code = upstream_error_code(err);
        int st = c->status;
        char pname[64];
        snprintf(pname, sizeof(pname), "%s", c->prov->name);
        const chat_format *fin = c->fin;
        call_end(c);
        send_error_in(r, fin, st, "upstream_error", code, NULL, NULL, "upstream provider '%s': %s",
                      pname, err);
        return;
    }
    if (err) {
        /* failed while buffering a non-stream body: nothing sent yet */
        c->error = err;
        c->error_upstream = true;
        c->status = upstream_error_status(err);
        http_req *r = c->req;
        int st = c->status;
        const char *code = upstream_error_code(err);
        const chat_format *fin = c->fin;
        call_end(c);
        send_error_in(r, fin, st, "upstream_error", code, NULL, NULL,
                      "upstream connection failed before the response completed: %s", err);
        return;
    }
    /* a whole non-stream (or error) response; an overload or a server
     * error goes to another attempt when one is left */
    if (c->up_status == 429 || (c->up_status >= 500 && c->up_status != 501 && c->up_status != 505)) {
        char why[48];
        snprintf(why, sizeof why, "HTTP %d", c->up_status);
        if (call_retry(c, why)) {
            c->overhead_ns += clock_mono_ns() - t0;
            return;
        }
    }
    c->status = c->up_status;
    buf body = c->resp; /* the bytes the caller gets, kept past call_end */
    buf_init(&c->resp, 0);
    char ctype[128];
    snprintf(ctype, sizeof(ctype), "%s", c->up_ctype[0] ? c->up_ctype : "application/json");
    if (!c->decode) {
        if (c->up_status == 200 && openai_resp_usage(body.data ? body.data : "", body.len,
                                                     &c->usage) == 0)
            c->have_usage = true;
        if (c->up_status == 200 && body.len > 0 &&
            openai_each_text(body.data, body.len, false, meter_openai_text, &c->meter) != 0)
            log_debug(c->req->request_id, "response is not a JSON object: not metered");
    } else if (c->up_status == 200 && c->embed) {
        buf out;
        buf_init(&out, GW_MAX_RESPONSE_BYTES);
        if (embed_gemini_response(body.data ? body.data : "", body.len, &c->embed_info, c->info.model,
                                  c->info.model_len, c->prompt_est, &out) != 0) {
            buf_free(&out);
            buf_free(&body);
            c->overhead_ns += clock_mono_ns() - t0;
            return (void)call_fail_inside(c, "upstream sent an embeddings answer that does not decode");
        }
        buf_free(&body);
        body = out;
        snprintf(ctype, sizeof ctype, "application/json");
    } else if (c->up_status == 200) {
        buf out;
        buf_init(&out, GW_MAX_RESPONSE_BYTES);
        const char *why = NULL;
        int rc = call_whole_answer(c, &body, &out, &why);
        if (rc) {
            buf_free(&out);
            buf_free(&body);
            c->overhead_ns += clock_mono_ns() - t0;
            return (void)call_fail_inside(c, why);
        }
        if (c->translate) {
            buf_free(&body);
            body = out;
            snprintf(ctype, sizeof ctype, "application/json");
        } else {
            buf_free(&out);
        }
    } else if (c->translate) {
        chat_error e;
        c->fup->error_decode(c->up_status, body.data ? body.data : "", body.len, &e);
        log_info(c->req->request_id, "upstream %s: HTTP %d %s", c->prov->name, c->up_status,
                 e.message);
        buf out;
        buf_init(&out, 64 * 1024);
        int st = c->up_status;
        /* a retry hint in the body (Gemini RetryInfo) becomes retry-after */
        size_t hl = strlen(c->up_headers);
        if (e.retry_after_ms >= 0 && !strstr(c->up_headers, "retry-after:") &&
            !strstr(c->up_headers, "Retry-After:")) {
            int k = snprintf(c->up_headers + hl, sizeof c->up_headers - hl, "retry-after: %lld\r\n",
                             (long long)((e.retry_after_ms + 999) / 1000));
            if (k < 0 || (size_t)k >= sizeof c->up_headers - hl)
                c->up_headers[hl] = '\0';
        }
        if (c->fin->error_encode(&e, &out, &st) == 0) {
            buf_free(&body);
            body = out;
            c->status = st;
            snprintf(ctype, sizeof ctype, "application/json");
        } else {
            buf_free(&out);
        }
    }
    c->bytes_out = body.len;
    c->t_first_ns = clock_mono_ns();
    c->overhead_ns += c->t_first_ns - t0;
    char hdr[1800], extra[512];
    call_usage u;
    call_usage_of(c, &u);
    money_headers(c, &u, extra, sizeof extra);
    snprintf(hdr, sizeof(hdr), "x-tollgate-overhead-us: %" PRIu64 "\r\n%s%s",
             c->overhead_ns / 1000, extra, c->up_headers);
    http_req *r = c->req;
    int st = c->status;
    call_end(c);
    http_respond(r, st, ctype, hdr, body.data ? body.data : "", body.len);
    buf_free(&body);
}

static const upstream_callbacks call_callbacks = {
    .on_head = call_on_head,
    .on_body = call_on_body,
    .on_done = call_on_done,
};

/* ------------------------------------------------------------ admission */

/* The key the request presents (Authorization: Bearer, or x-api-key). */
static slice presented_key(http_req *req)
{
    slice a = http_req_header(req, "authorization");
    if (a.len > 7 && strncasecmp(a.p, "bearer ", 7) == 0) {
        slice k = {a.p + 7, a.len - 7};
        while (k.len && *k.p == ' ') {
            k.p++;
            k.len--;
        }
        return k;
    }
    return http_req_header(req, "x-api-key");
}

static bool has_credentials(http_req *req);

/* Finds the caller's key: the config's keys first, then the database's
 * (cache). On failure answers the request in fin's format (401 unknown,
 * blocked or expired key; 403 suspended team; 503 while the key cache is
 * not loaded) and returns false. On success the caller holds references
 * the request must release (caller_release). */
static bool authenticate(gateway *gw, http_req *req, const chat_format *fin, caller *who)
{
    slice k = presented_key(req);
    bool anth = fin && fin->id == CHAT_FMT_ANTHROPIC;
    memset(who, 0, sizeof(*who));
    if (k.len) {
        crypto_sha256(k.p, k.len, who->sha256);
        const config_key *ck = config_find_key_digest(gw->cfg, who->sha256);
        if (ck) {
            who->ckey = ck;
            who->alias = ck->alias;
            who->rpm = ck->rpm;
            return true;
        }
    }
    if (k.len && gw->store) {
        tenants *tc = store_tenants(gw->store);
        const tn_key *key = tenants_key(tc, who->sha256);
        const char *why = NULL;
        int status = 401;
        if (!key && !tenants_loaded(tc)) {
            access_log_simple(gw, req, 503, NULL);
            send_error_in(req, fin, 503, anth ? "api_error" : "server_error", "key_store_unavailable",
                          NULL, "retry-after: 1\r\n",
                          "The key store is not loaded yet (%s); retry shortly.",
                          store_status(gw->store));
            return false;
        }
        if (key) {
            const tn_team *team = tenants_team(tc, key->team_id.s);
            if (key->blocked) {
                why = "This API key has been blocked.";
            } else if (key->expires_us && key->expires_us <= clock_wall_us()) {
                why = "This API key has expired.";
            } else if (!team) {
                why = "This API key's team no longer exists.";
            } else if (team->suspended) {
                status = 403;
                why = "This API key's team is suspended.";
            } else {
                who->key = (const tn_key *)tn_ref((tn_entry *)key);
                who->team = (const tn_team *)tn_ref((tn_entry *)team);
                who->alias = key->alias;
                who->rpm = key->rpm;
                return true;
            }
            access_log_simple(gw, req, status, key->alias);
            metrics_refused(gw->metrics, METRICS_REFUSED_AUTH);
            send_error_in(req, fin, status,
                          status == 403 ? "permission_error"
                          : anth        ? "authentication_error"
                                        : "invalid_request_error",
                          status == 403 ? "team_suspended" : "invalid_api_key", NULL, NULL, "%s",
                          why);
            return false;
        }
    }
    access_log_simple(gw, req, 401, NULL);
    metrics_refused(gw->metrics, METRICS_REFUSED_AUTH);
    send_error_in(req, fin, 401, anth ? "authentication_error" : "invalid_request_error",
                  "invalid_api_key", NULL, NULL, "%s",
                  has_credentials(req) ? "Incorrect API key provided."
                                       : "You didn't provide an API key. Send it as "
                                         "'Authorization: Bearer KEY' or 'x-api-key: KEY'.");
    return false;
}

/* A resolved model: a config alias, or a database alias's first route
 * (routing across routes is issue 7's), as a config_model. */
typedef struct model_pick {
    config_model model;       /* provider, provider model, customer price */
    const char *access_group; /* a database alias's group, or NULL */
    const config_model *cfg_model; /* the config's alias, or NULL */
    const tn_alias *db_alias;      /* the database's alias (borrowed), or NULL */
    config_level level;            /* "auto" or a level's name: that power level */
} model_pick;

/* Resolves info->model: the config's aliases first, then the database's.
 * *pmodel is the provider's model name. False when neither has it (or a
 * database alias names a provider this config does not have). */
static bool resolve_model(gateway *gw, const config *cfg, const char *name, size_t len,
                          slice *pmodel, model_pick *out)
{
    memset(out, 0, sizeof(*out));
    const config_model *m = config_find_model(cfg, name, len, pmodel);
    if (m) {
        out->model = *m;
        out->cfg_model = m;
        return true;
    }
    if (!gw->store)
        return false;
    const tn_alias *a = tenants_alias(store_tenants(gw->store), name, len);
    if (!a)
        return false;
    for (size_t i = 0; i < a->nroutes; i++) {
        const config_provider *p = config_find_provider(cfg, a->routes[i].provider);
        if (!p)
            continue;
        out->model.name = a->name;
        out->model.len = strlen(a->name);
        out->model.provider = p;
        out->model.model = a->routes[i].model;
        if (a->price_input_nano >= 0 && a->price_output_nano >= 0) {
            out->model.price.given = true;
            out->model.price.input = a->price_input_nano;
            out->model.price.output = a->price_output_nano;
            out->model.price.cached_input =
                a->price_cached_nano >= 0 ? a->price_cached_nano : a->price_input_nano;
            out->model.price.cache_write = a->price_input_nano;
        }
        out->model.price.markup_bps = a->markup_bps;
        out->access_group = a->access_group;
        out->db_alias = a;
        pmodel->p = a->routes[i].model;
        pmodel->len = strlen(a->routes[i].model);
        return true;
    }
    log_warn(NULL, "model alias '%s': no route names a configured provider", a->name);
    return false;
}

/* "auto" (the key's level, else balanced) or a level's name, when no
 * alias has that name: the level's first route stands for the call until
 * it is planned over all of them. False when it is no level, or empty. */
static bool resolve_level(gateway *gw, const caller *who, const char *name, size_t len,
                          slice *pmodel, model_pick *out)
{
    config_level l = config_level_parse(name, len);
    if (!l && len == 4 && memcmp(name, "auto", 4) == 0) {
        /* the key's level, else its team's, else balanced */
        l = who->ckey && who->ckey->level               ? who->ckey->level
            : who->key && who->key->power_level         ? (config_level)who->key->power_level
            : who->team && who->team->power_level       ? (config_level)who->team->power_level
                                                        : CONFIG_LEVEL_BALANCED;
    }
    route_set *s = l ? route_table_level(gw->routes, l) : NULL;
    if (!s)
        return false;
    memset(out, 0, sizeof(*out));
    out->model = *s->owners[0];
    out->level = l;
    pmodel->p = s->routes[0].model;
    pmodel->len = strlen(s->routes[0].model);
    route_set_unref(s); /* the table keeps it alive meanwhile */
    return true;
}

/* The credential a call to provider p sends: the key's BYOK secret, else
 * its team's, else the org's active credential, else the config's key. */
static void pick_credential(gateway *gw, call *c)
{
    const config_provider *p = c->prov;
    c->api_key = p->api_key;
    c->credential = "config";
    if (!gw->store || !c->who.key)
        return;
    tenants *tc = store_tenants(gw->store);
    const tn_secret *sec = tenants_byok(tc, true, c->who.key->e.id.s, p->name);
    c->credential = "key_byok";
    if (!sec) {
        sec = tenants_byok(tc, false, c->who.key->team_id.s, p->name);
        c->credential = "team_byok";
    }
    if (!sec && c->who.team) {
        sec = tenants_cred(tc, c->who.team->org_id.s, p->name);
        c->credential = "org";
    }
    if (!sec) {
        c->credential = "config";
        return;
    }
    c->secret = tn_ref((tn_entry *)sec);
    c->api_key = sec->secret;
}

/* May the caller use the model called name (access_group: a database
 * alias's group, else NULL)? */
static bool caller_allows(const caller *who, const char *name, size_t len, const char *access_group)
{
    if (who->ckey)
        return config_key_allows(who->ckey, name, len);
    return tn_key_allows(who->key, name, len, access_group);
}

static bool has_credentials(http_req *req)
{
    return http_req_header(req, "authorization").len || http_req_header(req, "x-api-key").len;
}

static size_t rate_slot(const uint8_t *sha) { return (sha[0] | (size_t)sha[1] << 8) % GW_RATE_SLOTS; }

/* Token bucket per key: rpm requests per minute, burst rpm. Returns true
 * if admitted; fills remaining and reset_s for the x-ratelimit headers. */
static bool rate_admit_locked(gateway_group *g, const caller *key, uint32_t *remaining,
                              double *reset_s);

/* The buckets are the process's: every worker takes from the same ones. */
static bool rate_admit(gateway *gw, const caller *key, uint32_t *remaining, double *reset_s)
{
    if (!key->rpm)
        return true;
    uv_mutex_lock(&gw->grp->lock);
    bool ok = rate_admit_locked(gw->grp, key, remaining, reset_s);
    uv_mutex_unlock(&gw->grp->lock);
    return ok;
}

static bool rate_admit_locked(gateway_group *g, const caller *key, uint32_t *remaining,
                              double *reset_s)
{
    size_t slot = rate_slot(key->sha256);
    rate_bucket *b = g->rates[slot];
    while (b && memcmp(b->sha256, key->sha256, CRYPTO_SHA256_LEN) != 0)
        b = b->next;
    uint64_t now = clock_mono_ns();
    if (!b) {
        b = calloc(1, sizeof(*b));
        if (!b)
            return true; /* out of memory: do not refuse paying traffic */
        memcpy(b->sha256, key->sha256, CRYPTO_SHA256_LEN);
        b->rpm = key->rpm;
        b->tokens = key->rpm;
        b->last_ns = now;
        b->next = g->rates[slot];
        g->rates[slot] = b;
    }
    if (b->rpm != key->rpm) { /* changed by a reload */
        if (b->tokens > key->rpm)
            b->tokens = key->rpm;
        b->rpm = key->rpm;
    }
    double rate = key->rpm / 60e9; /* per ns */
    b->tokens += (double)(now - b->last_ns) * rate;
    if (b->tokens > key->rpm)
        b->tokens = key->rpm;
    b->last_ns = now;
    bool ok = b->tokens >= 1.0;
    if (ok)
        b->tokens -= 1.0;
    *remaining = (uint32_t)b->tokens;
    *reset_s = b->tokens >= 1.0 ? 0 : (1.0 - b->tokens) / (rate * 1e9);
    return ok;
}

/* The upstream body: the caller's bytes with the model spliced in
 * (passthrough), or the decoded request encoded for the upstream. -EINVAL
 * with *err set when the upstream's format cannot express the request. */
static int build_upstream_body(call *c, const slice *pmodel, chat_error *err)
{
    if (c->embed)
        return embed_gemini_request(c->req->body.p, c->req->body.len, pmodel->p, pmodel->len,
                                    &c->embed_info, &c->up_body, err);
    if (c->translate) {
        chat_target t = {.model = pmodel->p, .model_len = pmodel->len, .stream = c->info.stream};
        return c->fup->req_encode(&c->creq, &t, &c->up_body, err);
    }
    if (c->fin->id == CHAT_FMT_OPENAI)
        return openai_req_rewrite(c->req->body.p, c->req->body.len, &c->info, pmodel->p, pmodel->len,
                                  c->info.stream, &c->up_body);
    /* same format, not OpenAI: only the model changes */
    jscan_val mv;
    jscan_splice sp;
    if (jscan_obj_get(c->req->body.p, c->req->body.len, "model", &mv) != 0)
        return -EINVAL;
    jscan_splice_init(&sp, c->req->body.p, c->req->body.len, &c->up_body);
    int rc = jscan_splice_replace_str(&sp, &mv, pmodel->p, pmodel->len);
    return rc ? rc : jscan_splice_finish(&sp);
}

static int build_upstream_request(call *c, const slice *pmodel, chat_error *err)
{
    const config_provider *p = c->prov;
    buf_free(&c->up_body); /* an earlier attempt's */
    buf_free(&c->up_head);
    buf_init(&c->up_body, GW_MAX_UPSTREAM_BODY);
    buf_init(&c->up_head, 64 * 1024);
    int rc = build_upstream_body(c, pmodel, err);
    if (rc)
        return rc;
    if (p->type == CONFIG_PROVIDER_MOCK)
        return 0;
    chat_target t = {.model = pmodel->p, .model_len = pmodel->len, .stream = c->info.stream};
    rc = buf_printf(&c->up_head, "POST %s", p->url.path);
    if (!rc && c->fup->id == CHAT_FMT_OPENAI)
        rc = buf_append_str(&c->up_head, c->endpoint);
    else if (!rc && c->embed)
        rc = embed_gemini_path(pmodel->p, pmodel->len, &c->up_head);
    else if (!rc)
        rc = c->fup->req_path(&t, &c->up_head);
    if (!rc)
        rc = buf_printf(&c->up_head,
                        " HTTP/1.1\r\nHost: %s\r\n"
                        "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                        "Accept: %s\r\nUser-Agent: tollgate/%s\r\nx-request-id: %s\r\n",
                        p->url.authority, c->up_body.len,
                        c->info.stream ? "text/event-stream" : "application/json", tg_version,
                        c->req->request_id);
    if (!rc)
        rc = c->fup->req_auth_headers(c->api_key, &c->up_head);
    if (!rc && c->fin->id == CHAT_FMT_ANTHROPIC && c->fup->id == CHAT_FMT_ANTHROPIC) {
        slice beta = http_req_header(c->req, "anthropic-beta");
        if (beta.len && beta.len < 1024 && !memchr(beta.p, '\r', beta.len) && !memchr(beta.p, '\n', beta.len))
            rc = buf_printf(&c->up_head, "anthropic-beta: %.*s\r\n", (int)beta.len, beta.p);
    }
    for (size_t i = 0; !rc && i < p->nheaders; i++)
        rc = buf_printf(&c->up_head, "%s: %s\r\n", p->headers[i].name, p->headers[i].value);
    if (!rc)
        rc = buf_append(&c->up_head, "\r\n", 2);
    return rc;
}

/* Tokens of an embeddings "input" or completions "prompt": a string, an
 * array of strings, or token ids (counted as given). */
static uint64_t prompt_tokens_of_input(const tok_enc *enc, tok_work *w, const jscan_val *root)
{
    jscan_val v, item;
    if (jscan_val_get(root, "input", &v) != 0 && jscan_val_get(root, "prompt", &v) != 0)
        return 0;
    meter m;
    char hold[METER_HOLD_MAX];
    meter_init_buf(&m, enc, w, hold);
    uint64_t ids = 0;
    jscan_iter it, it2;
    if (v.type == JSCAN_STRING) {
        if (jscan_str_each(&v, meter_feed_cb, &m) != 0)
            meter_feed(&m, v.p, v.n);
    } else if (v.type == JSCAN_ARRAY && jscan_iter_init(&it, &v) == 0) {
        while (jscan_arr_next(&it, &item) == 0) {
            if (item.type == JSCAN_STRING) {
                if (jscan_str_each(&item, meter_feed_cb, &m) != 0)
                    meter_feed(&m, item.p, item.n);
                meter_break(&m);
            } else if (item.type == JSCAN_NUMBER) {
                ids++;
            } else if (item.type == JSCAN_ARRAY && jscan_iter_init(&it2, &item) == 0) {
                jscan_val x;
                while (jscan_arr_next(&it2, &x) == 0)
                    ids++;
            }
        }
    }
    meter_break(&m);
    uint64_t n = meter_count(&m) + ids;
    meter_free(&m);
    return n;
}

/* Prompt tokens of a decoded request, counted the way OpenAI renders a
 * chat request (the tokenizers are OpenAI's): the request is encoded in
 * OpenAI's format, without what only other formats have (top_k,
 * thinking), and counted like an OpenAI caller's body. */
static uint64_t prompt_tokens_of(const tok_enc *enc, tok_work *w, const chat_request *r)
{
    chat_request tmp = *r;
    tmp.unmapped[0] = '\0';
    tmp.top_k = -1;
    tmp.thinking_budget = -1;
    tmp.stream = false;
    buf b;
    buf_init(&b, GW_MAX_UPSTREAM_BODY);
    chat_error e;
    chat_target t = {.model = "m", .model_len = 1, .stream = false};
    uint64_t n = 0;
    if (chat_format_openai.req_encode(&tmp, &t, &b, &e) == 0)
        n = meter_prompt_openai(enc, w, b.data, b.len);
    buf_free(&b);
    return n;
}

static mock_state *gateway_mock_state(gateway *gw, const config *cfg, const config_provider *p)
{
    size_t idx = (size_t)(p - cfg->providers);
    if (idx >= gw->nmocks) {
        mock_state *m = realloc(gw->mocks, (idx + 1) * sizeof(*m));
        if (!m)
            return NULL;
        memset(m + gw->nmocks, 0, (idx + 1 - gw->nmocks) * sizeof(*m));
        gw->mocks = m;
        gw->nmocks = idx + 1;
    }
    return &gw->mocks[idx];
}

/* Reads the caller's request: OpenAI bodies with the zero-copy scan
 * (decoded into *creq as well only when they must be translated, which
 * the caller decides later), other formats with their decoder. Fills
 * info's model and stream either way. 0, or -1 after answering 400. */
/* Scans an OpenAI embeddings or (legacy) completions body: a JSON object
 * with a string model; stream and stream_options for completions. */
static int scan_openai_other(const char *body, size_t n, const char *endpoint,
                             openai_req_info *info, openai_err *oe)
{
    jscan_error je;
    memset(info, 0, sizeof *info);
    memset(oe, 0, sizeof *oe);
    oe->status = 400;
    oe->type = "invalid_request_error";
    info->n = 1;
    info->max_tokens = info->max_completion_tokens = -1;
    if (jscan_parse(body, n, OPENAI_REQ_MAX_DEPTH, &info->root, &je) != 0 ||
        info->root.type != JSCAN_OBJECT) {
        snprintf(oe->message, sizeof oe->message,
                 "We could not parse the JSON body of your request: expected a JSON object.");
        return -EINVAL;
    }
    size_t ml = 0;
    if (jscan_val_get(&info->root, "model", &info->model_val) != 0 ||
        info->model_val.type != JSCAN_STRING ||
        jscan_str_decode(&info->model_val, info->model, sizeof info->model - 1, &ml) != 0 || !ml) {
        oe->param = "model";
        snprintf(oe->message, sizeof oe->message, "model: a non-empty string of at most %d bytes is required.",
                 OPENAI_MODEL_MAX - 1);
        return -EINVAL;
    }
    info->model[ml] = '\0';
    info->model_len = ml;
    jscan_val v;
    const char *need = strcmp(endpoint, "/embeddings") == 0 ? "input" : "prompt";
    if (jscan_val_get(&info->root, need, &v) != 0) {
        oe->param = need;
        snprintf(oe->message, sizeof oe->message, "'%s' is a required property.", need);
        return -EINVAL;
    }
    if (strcmp(endpoint, "/completions") == 0) {
        if (jscan_val_get(&info->root, "stream", &v) == 0 && v.type == JSCAN_TRUE)
            info->stream = true;
        jscan_val *so = &info->stream_options_val;
        if (jscan_val_get(&info->root, "stream_options", so) != 0)
            memset(so, 0, sizeof *so);
        if (so->type != JSCAN_NONE && so->type != JSCAN_NULL && so->type != JSCAN_OBJECT) {
            oe->param = "stream_options";
            snprintf(oe->message, sizeof oe->message, "stream_options: expected an object.");
            return -EINVAL;
        }
        if (so->type == JSCAN_OBJECT &&
            jscan_val_get(so, "include_usage", &info->include_usage_val) == 0)
            info->include_usage = info->include_usage_val.type == JSCAN_TRUE;
        else
            memset(&info->include_usage_val, 0, sizeof info->include_usage_val);
    }
    return 0;
}

static int read_request(gateway *gw, http_req *req, const chat_format *fin,
                        const char *endpoint, const caller *key, openai_req_info *info, chat_request *creq)
{
    if (fin->id == CHAT_FMT_OPENAI && strcmp(endpoint, "/chat/completions") != 0) {
        openai_err oe;
        if (scan_openai_other(req->body.p, req->body.len, endpoint, info, &oe) == 0)
            return 0;
        access_log_simple(gw, req, oe.status, key->alias);
        send_error(req, oe.status, oe.type, oe.code, oe.param, NULL, "%s", oe.message);
        return -1;
    }
    if (fin->id == CHAT_FMT_OPENAI) {
        openai_err oe;
        if (openai_req_scan(req->body.p, req->body.len, info, &oe) == 0)
            return 0;
        access_log_simple(gw, req, oe.status, key->alias);
        send_error(req, oe.status, oe.type, oe.code, oe.param, NULL, "%s", oe.message);
        return -1;
    }
    chat_error e;
    memset(info, 0, sizeof *info);
    info->max_tokens = info->max_completion_tokens = -1; /* the decoded request's cap counts */
    if (chat_request_init(creq) != 0) {
        send_error_in(req, fin, 500, "api_error", NULL, NULL, NULL, "out of memory");
        return -1;
    }
    if (fin->req_decode(req->body.p, req->body.len, creq, &e) != 0) {
        access_log_simple(gw, req, e.status, key->alias);
        send_chat_error(req, fin, &e, NULL);
        return -1;
    }
    if (!creq->model.len || creq->model.len >= sizeof info->model) {
        access_log_simple(gw, req, 400, key->alias);
        send_error_in(req, fin, 400, "invalid_request_error", NULL, "model", NULL,
                      creq->model.len ? "model: longer than %zu bytes" : "model: field required",
                      sizeof info->model - 1);
        return -1;
    }
    memcpy(info->model, creq->model.p, creq->model.len);
    info->model[creq->model.len] = '\0';
    info->model_len = creq->model.len;
    info->stream = creq->stream;
    info->include_usage = creq->include_usage;
    info->n = 1;
    return 0;
}

/* One chat request in the caller's format fin (OpenAI chat completions or
 * Anthropic messages), to whatever format its model's provider speaks. */
/* What a route adds to a chat call: the job of /api/jobs/{id}/llm-call
 * (else the x-tollgate-job header), and whether the seed's stream path
 * was used. */
typedef struct llm_opts {
    char job_id[40];
    int need_stream; /* 1: llm-call-stream (the body must ask for a stream), 0: none */
} llm_opts;

static void handle_llm_opts(gateway *gw, http_req *req, const chat_format *fin,
                            const char *endpoint, const llm_opts *o);

static void handle_llm(gateway *gw, http_req *req, const chat_format *fin, const char *endpoint)
{
    handle_llm_opts(gw, req, fin, endpoint, NULL);
}

static job_owner owner_of(const caller *who)
{
    job_owner o = {
        .team_id = who->key ? who->key->team_id.s : NULL,
        .key_id = who->key ? who->key->e.id.s : NULL,
        .key_alias = who->alias,
    };
    return o;
}

/* A call that names a job this instance has not seen yet waits for one
 * lookup, then starts over (the cache answers the second time). */
typedef struct job_wait {
    gateway *gw;
    http_req *req;
    const chat_format *fin;
    const char *endpoint;
    llm_opts o;
    pg_query *q;
} job_wait;

static void job_wait_abort(http_req *req, void *ud)
{
    (void)ud;
    job_wait *w = req->app;
    if (w->q)
        pg_cancel(w->q);
    free(w);
}

static void job_wait_done(void *ud, int found)
{
    job_wait *w = ud;
    http_req *req = w->req;
    req->app = NULL;
    req->on_abort = NULL;
    if (found > 0) {
        handle_llm_opts(w->gw, req, w->fin, w->endpoint, &w->o);
    } else if (found < 0) {
        access_log_simple(w->gw, req, 503, NULL);
        send_error_in(req, w->fin, 503, "server_error", "database_unavailable", NULL,
                      "retry-after: 1\r\n", "Cannot look the job up now; retry shortly.");
    } else {
        access_log_simple(w->gw, req, 404, NULL);
        send_error_in(req, w->fin, 404, "not_found_error", "job_not_found", NULL, NULL,
                      "No such job: %s.", w->o.job_id);
    }
    free(w);
}

/* The job a call attaches to: 1 attached (c->job_id to fill from *id), 0
 * none, -1 answered (refused, or waiting for a lookup). */
static int attach_job(gateway *gw, http_req *req, const chat_format *fin, const char *endpoint,
                      const llm_opts *o, const caller *who, char id[37])
{
    char hdr[40] = "";
    const char *job = o && o->job_id[0] ? o->job_id : NULL;
    if (!job) {
        slice h = http_req_header(req, "x-tollgate-job");
        if (!h.len)
            return 0;
        snprintf(hdr, sizeof(hdr), "%.*s", (int)(h.len < 39 ? h.len : 39), h.p);
        job = hdr;
    }
    if (!gw->jobs || !gw->store) {
        access_log_simple(gw, req, 503, who->alias);
        send_error_in(req, fin, 503, "server_error", "no_database", NULL, NULL,
                      "Jobs need a database (database.url).");
        return -1;
    }
    job_owner ow = owner_of(who);
    int rc = jobs_check(gw->jobs, &ow, job);
    if (rc == 0) {
        memcpy(id, job, 36); /* a UUID: jobs_check said so */
        id[36] = '\0';
        return 1;
    }
    if (rc == -ENOENT) {
        job_wait *w = calloc(1, sizeof(*w));
        if (w) {
            w->gw = gw;
            w->req = req;
            w->fin = fin;
            w->endpoint = endpoint;
            if (o)
                w->o = *o;
            snprintf(w->o.job_id, sizeof(w->o.job_id), "%s", job);
            if (jobs_lookup(gw->jobs, job, job_wait_done, w, &w->q) == 0) {
                req->app = w;
                req->on_abort = job_wait_abort;
                return -1;
            }
            free(w);
        }
        access_log_simple(gw, req, 503, who->alias);
        send_error_in(req, fin, 503, "server_error", "database_unavailable", NULL, NULL,
                      "Cannot look the job up now; retry shortly.");
        return -1;
    }
    int status = rc == -EINVAL ? 400 : rc == -EALREADY ? 409 : 404;
    access_log_simple(gw, req, status, who->alias);
    send_error_in(req, fin, status, status == 409 ? "invalid_request_error" : "not_found_error",
                  status == 400 ? "invalid_job_id" : status == 409 ? "job_not_running" : "job_not_found",
                  NULL, NULL, "%s: %s",
                  status == 400   ? "Not a job id"
                  : status == 409 ? "The job has ended; start a new one"
                                  : "No such job",
                  job);
    return -1;
}

/* Admitted: builds the upstream request and starts the call. */
/* ------------------------------------------------------------ routes */

static void call_go(call *c);
static void retry_fire(uv_timer_t *t);

/* Can provider p serve this call's endpoint? Chat goes anywhere (formats
 * are translated); completions and embeddings need an OpenAI-compatible
 * provider (embeddings also Gemini). */
static bool route_serves(const call *c, const config_provider *p)
{
    if (strcmp(c->endpoint, "/chat/completions") == 0 || c->fin->id != CHAT_FMT_OPENAI)
        return true;
    if (strcmp(c->endpoint, "/embeddings") == 0 && p->type == CONFIG_PROVIDER_GEMINI)
        return true;
    return config_provider_format(p) == CHAT_FMT_OPENAI && p->type != CONFIG_PROVIDER_MOCK;
}

/* Points the call at route i of its set: provider, model, formats and
 * credential. -1 (err filled) when the request cannot go that way. */
static int call_use_route(call *c, uint32_t i, chat_error *err)
{
    const config_route *r = &c->rs->routes[i];
    if (c->rs->owners) /* a power level: priced as the alias the route is of */
        c->model_own = *c->rs->owners[i];
    c->prov = r->provider;
    if (r->model) /* a wildcard alias keeps the name's rest */
        snprintf(c->provider_model, sizeof(c->provider_model), "%s", r->model);
    c->fup = chat_format_get((chat_format_id)config_provider_format(c->prov));
    c->translate = c->fin != c->fup;
    c->decode = c->translate || c->fin->id != CHAT_FMT_OPENAI;
    c->embed = strcmp(c->endpoint, "/embeddings") == 0 && c->prov->type == CONFIG_PROVIDER_GEMINI;
    if (c->translate && !c->embed && !c->creq_ready) {
        /* an OpenAI body for another format: decoded after all */
        http_req *req = c->req;
        if (chat_request_init(&c->creq) != 0 ||
            c->fin->req_decode(req->body.p, req->body.len, &c->creq, err) != 0) {
            if (!err->status)
                chat_error_invalid(err, NULL, "could not read the request");
            return -1;
        }
        c->creq_ready = true;
    }
    if (c->secret) {
        tn_unref(c->secret);
        c->secret = NULL;
    }
    pick_credential(c->gw, c);
    return 0;
}

/* The capabilities the request needs, from its body: a "tools" key,
 * image parts, a response format. (A quoted key followed by ':' cannot
 * occur inside a JSON string, where quotes are escaped.) */
static bool body_has_key(const char *p, size_t n, const char *key)
{
    size_t kl = strlen(key);
    for (const char *q = p; (q = memmem(q, n - (size_t)(q - p), key, kl)) != NULL; q += kl) {
        const char *e = q + kl;
        while (e < p + n && (*e == ' ' || *e == '\t' || *e == '\n' || *e == '\r'))
            e++;
        if (e < p + n && *e == ':')
            return true;
    }
    return false;
}

static uint32_t call_caps(const call *c)
{
    const char *p = c->req->body.p;
    size_t n = c->req->body.len;
    uint32_t caps = 0;
    if (!p || !n)
        return 0;
    if (body_has_key(p, n, "\"tools\"") || body_has_key(p, n, "\"functionDeclarations\""))
        caps |= RT_CAP_TOOLS;
    if (body_has_key(p, n, "\"image_url\"") || memmem(p, n, "\"type\":\"image\"", 14) ||
        body_has_key(p, n, "\"inlineData\"") || body_has_key(p, n, "\"inline_data\""))
        caps |= RT_CAP_IMAGES;
    if (body_has_key(p, n, "\"response_format\"") || body_has_key(p, n, "\"responseMimeType\""))
        caps |= RT_CAP_JSON;
    return caps;
}

static int64_t call_max_output(const call *c);

/* Plans the call over its alias's routes. 0, or the HTTP status and
 * message of why no route can take it. */
static int call_plan(call *c, char *msg, size_t cap)
{
    rt_need need = {
        .prompt_tokens = c->prompt_est,
        .max_output = (uint64_t)call_max_output(c),
        /* the body is scanned only when some route lacks a capability */
        .caps = c->rs->caps_matter ? call_caps(c) : 0,
        .panic = true, /* a breaker never refuses what the providers might serve */
    };
    rt_why why = 0;
    uint32_t order[RT_MAX_ROUTES];
    size_t n = rt_plan(c->rs->grp, &need, clock_mono_ns(), order, RT_MAX_ROUTES, &why);
    c->nplan = 0;
    c->panic = why == RT_PANIC;
    for (size_t i = 0; i < n; i++) {
        const config_model *owner = c->rs->owners ? c->rs->owners[order[i]] : NULL;
        if (owner && !caller_allows(&c->who, owner->name, owner->len, NULL))
            continue; /* a level's route of an alias this key may not use */
        if (route_serves(c, c->rs->routes[order[i]].provider))
            c->plan[c->nplan++] = order[i];
    }
    if (c->nplan)
        return 0;
    if (n || why == RT_NONE_FITS) {
        snprintf(msg, cap,
                 "No route of the model '%s' can serve this request (%s): it needs %" PRIu64
                 " tokens of context with the output cap, or a capability (tools, images, "
                 "json) that no route has.",
                 c->rs->alias, n ? "endpoint" : "context or capabilities",
                 need.prompt_tokens + need.max_output);
        return 400;
    }
    /* (an open circuit never empties a plan: need.panic) */
    snprintf(msg, cap, "Every route of the model '%s' is at its rate or concurrency limit.",
             c->rs->alias);
    return 429;
}

static rt_outcome outcome_of(const call *c)
{
    if (c->status == 499 && !c->error_upstream)
        return RT_NEUTRAL;
    if (c->up_status == 429 || c->up_status >= 500 || (c->error && c->error_upstream))
        return RT_FAIL;
    if (c->up_status >= 400)
        return RT_NEUTRAL; /* the request's fault, not the route's */
    return c->up_status ? RT_OK : RT_NEUTRAL;
}

/* The attempt in flight ended with outcome o. */
static void call_attempt_end(call *c, rt_outcome o, const char *why)
{
    if (!c->att_live)
        return;
    uint64_t now = clock_mono_ns();
    uint64_t total = now - c->t_upstream_ns;
    uint64_t ttft = c->info.stream && c->t_first_ns > c->t_upstream_ns ? c->t_first_ns - c->t_upstream_ns : 0;
    uint64_t tokens = (uint64_t)(c->have_usage && c->usage.prompt_tokens > 0 ? c->usage.prompt_tokens
                                                                             : (int64_t)c->prompt_est) +
                      meter_completion(&c->meter);
    rt_attempt_end(c->rs->grp, &c->att, o, ttft, total, tokens, now);
    uint32_t i = c->plan[c->plan_pos];
    if (o == RT_FAIL)
        route_note_failure(c->rs, i, why ? why : c->error, clock_wall_us());
    else if (o == RT_OK)
        route_note_latency(c->rs, i, total);
    c->att_live = false;
}

/* ---- the retry list: calls waiting for their next attempt, soonest first */

static void retry_arm(gateway *gw)
{
    if (!gw->retries || gw->closing) {
        uv_timer_stop(&gw->retry_timer);
        return;
    }
    uint64_t now = clock_mono_ns(), at = gw->retries->retry_at_ns;
    uv_timer_start(&gw->retry_timer, retry_fire, at > now ? (at - now + 999999) / 1000000 : 0, 0);
}

static void retry_unlink(call *c)
{
    gateway *gw = c->gw;
    for (call **pp = &gw->retries; *pp; pp = &(*pp)->retry_next) {
        if (*pp == c) {
            *pp = c->retry_next;
            break;
        }
    }
    c->retry_next = NULL;
    retry_arm(gw);
}

static void retry_fire(uv_timer_t *t)
{
    gateway *gw = t->data;
    uint64_t now = clock_mono_ns();
    while (gw->retries && gw->retries->retry_at_ns <= now + 500000) {
        call *c = gw->retries;
        gw->retries = c->retry_next;
        c->retry_next = NULL;
        call_go(c);
    }
    retry_arm(gw);
}

static void retry_schedule(call *c, uint64_t delay_ns)
{
    gateway *gw = c->gw;
    c->phase = CALL_RETRY_WAIT;
    c->retry_at_ns = clock_mono_ns() + delay_ns;
    call **pp = &gw->retries;
    while (*pp && (*pp)->retry_at_ns <= c->retry_at_ns)
        pp = &(*pp)->retry_next;
    c->retry_next = *pp;
    *pp = c;
    retry_arm(gw);
}

/* "retry-after: N" (seconds) among the upstream headers kept; -1 none. */
static int64_t retry_after_ms(const call *c)
{
    const char *h = c->up_headers;
    for (const char *p = h; (p = strcasestr(p, "retry-after:")) != NULL; p += 12) {
        if (p != h && p[-1] != '\n')
            continue;
        char *end;
        double v = strtod(p + 12, &end);
        if (end != p + 12 && v >= 0 && v < 86400)
            return (int64_t)(v * 1000);
    }
    return -1;
}

/* An attempt failed before anything reached the client, in a way that
 * is safe to try again (no answer, 429, 5xx, 529). Plans the next attempt:
 * the same route after a backoff with full jitter (at least retry-after),
 * while it has attempts left and the wait fits before retry_until; else
 * the next route of the plan at once. True when one is scheduled; false
 * leaves the call to fail as it would have. */
static bool call_retry(call *c, const char *why)
{
    const config *cfg = c->cfg;
    uint64_t now = clock_mono_ns();
    call_attempt_end(c, RT_FAIL, why);
    if (!c->req || c->gw->closing || now >= c->retry_until_ns)
        return false;
    int64_t ra = retry_after_ms(c);
    uint64_t delay = 0;
    rt_route_stats cur;
    rt_route_stats_get(c->rs->grp, c->plan[c->plan_pos], now, &cur);
    /* not again where the failure just opened the circuit (unless every
     * route is open: then the plan is all there is) */
    bool same = c->route_tries < cfg->routing.attempts && (cur.circuit == RT_CLOSED || c->panic);
    if (same) {
        uint64_t cap = (uint64_t)cfg->routing.backoff_ms << (c->route_tries - 1 < 20 ? c->route_tries - 1 : 20);
        if (cap > cfg->routing.backoff_max_ms)
            cap = cfg->routing.backoff_max_ms;
        delay = (uint64_t)(((double)random() / RAND_MAX) * (double)cap * 1e6);
        if (ra >= 0 && (uint64_t)ra * 1000000 > delay)
            delay = (uint64_t)ra * 1000000;
        same = now + delay < c->retry_until_ns;
    }
    route_note_retry(c->rs, c->plan[c->plan_pos], same);
    if (!same) {
        /* the next route of the plan whose circuit still lets calls by */
        size_t next = c->plan_pos + 1;
        for (; next < c->nplan; next++) {
            rt_route_stats st;
            rt_route_stats_get(c->rs->grp, c->plan[next], now, &st);
            if (c->panic ||
                (st.circuit != RT_OPEN && !(st.circuit == RT_HALF_OPEN && st.probe_in_flight)))
                break;
        }
        if (next >= c->nplan)
            return false;
        chat_error ce;
        memset(&ce, 0, sizeof ce);
        c->plan_pos = next;
        while (c->plan_pos < c->nplan && call_use_route(c, c->plan[c->plan_pos], &ce) != 0)
            c->plan_pos++;
        if (c->plan_pos >= c->nplan)
            return false;
        c->route_tries = 0;
        delay = 0;
    }
    log_info(c->req->request_id, "upstream %s: %s; attempt %u next on %s in %" PRIu64 " ms",
             c->prov->name, why, c->attempts + 1, c->rs->labels[c->plan[c->plan_pos]],
             delay / 1000000);
    /* forget the failed attempt's answer */
    c->up_status = 0;
    c->up_ctype[0] = '\0';
    c->up_headers[0] = '\0';
    buf_reset(&c->resp);
    c->have_usage = false;
    memset(&c->usage, 0, sizeof c->usage);
    c->cache_write = 0;
    c->sent = false;
    c->error = NULL;
    c->error_upstream = false;
    c->req->app = c;
    c->req->on_abort = call_on_abort;
    retry_schedule(c, delay);
    return true;
}

static void call_go(call *c)
{
    uint64_t t0 = clock_mono_ns();
    gateway *gw = c->gw;
    http_req *req = c->req;
    const chat_format *fin = c->fin;
    const caller *key = c->key;
    const config *cfg = c->cfg;
    slice pmodel = {c->provider_model, strlen(c->provider_model)};
    chat_error ce;
    memset(&ce, 0, sizeof ce);
    int brc = build_upstream_request(c, &pmodel, &ce);
    if (brc == -EINVAL && ce.status)
        goto refuse;
    if (brc != 0) {
        access_log_simple(gw, req, 500, key->alias);
        call_unclaim(c);
        req->app = NULL;
        req->on_abort = NULL;
        c->req = NULL;
        call_free(c);
        send_error_in(req, fin, 500, "server_error", NULL, NULL, NULL,
                      "could not build the upstream request");
        return;
    }
    req->app = c;
    req->on_abort = call_on_abort;
    req->on_drain = call_on_drain;
    c->phase = CALL_UPSTREAM;
    c->t_upstream_ns = clock_mono_ns();
    c->attempts++;
    c->route_tries++;
    rt_attempt_start(c->rs->grp, c->plan[c->plan_pos], c->prompt_est + (uint64_t)call_max_output(c),
                     c->t_upstream_ns, &c->att);
    c->att_live = true;
    int rc;
    if (c->prov->type == CONFIG_PROVIDER_MOCK) {
        rc = mock_call_start(gw->loop, &c->prov->mock, gateway_mock_state(gw, cfg, c->prov),
                             c->up_body.data, c->up_body.len, c->info.stream, &call_callbacks, c,
                             &c->up);
    } else {
        const config_provider *p = c->prov;
        httpc_target t = route_target(p);
        httpc_timeouts to = {
            .connect_ms = p->timeouts.connect_ms,
            .tls_ms = p->timeouts.tls_ms,
            .first_byte_ms = p->timeouts.first_byte_ms,
            .idle_ms = p->timeouts.idle_ms,
            .total_ms = p->timeouts.total_ms,
        };
        uv_buf_t bufs[2] = {uv_buf_init(c->up_head.data, (unsigned)c->up_head.len),
                            uv_buf_init(c->up_body.data, (unsigned)c->up_body.len)};
        rc = httpc_call_start(gw->pool, &t, &to, bufs, 2, &call_callbacks, c, &c->up);
    }
    c->overhead_ns += clock_mono_ns() - t0;
    c->sent = rc == 0;
    if (rc != 0 && call_retry(c, "could not start the upstream call"))
        return;
    if (rc != 0) {
        c->error = "could not start the upstream call";
        c->error_upstream = true;
        c->status = 502;
        call_end(c);
        send_error_in(req, fin, 502, "upstream_error", "upstream_unavailable", NULL, NULL,
                      "could not start the upstream call");
    }
    return;

refuse:
    /* the upstream's format cannot carry this request: a 400 naming why */
    access_log_simple(gw, req, ce.status, key->alias);
    call_unclaim(c);
    req->app = NULL;
    req->on_abort = NULL;
    c->req = NULL;
    call_free(c);
    send_chat_error(req, fin, &ce, NULL);
}

/* ------------------------------------------------------------ budgets */

/* The call's output cap: what it asks for, or budgets.default_max_output. */
static int64_t call_max_output(const call *c)
{
    return c->info.max_completion_tokens >= 0 ? c->info.max_completion_tokens
           : c->info.max_tokens >= 0          ? c->info.max_tokens
           : c->creq.max_tokens > 0           ? c->creq.max_tokens
                                              : (int64_t)c->cfg->budgets.default_max_output;
}

/* The call's worst-case customer price: its prompt and its output cap (or
 * budgets.default_max_output tokens) at the alias's price. BYOK calls and
 * unpriced models cost the customer nothing here. */
static int64_t call_worst_price(const call *c)
{
    if (c->credential && strstr(c->credential, "byok"))
        return 0;
    int64_t out = call_max_output(c);
    int64_t in_rate = -1, out_rate = -1;
    if (c->model->price.given) {
        in_rate = c->model->price.input;
        out_rate = c->model->price.output;
    } else {
        const price_entry *pe = price_of(c->gw, c->prov, c->provider_model);
        if (pe) {
            in_rate = pe->input_above_200k > pe->input ? pe->input_above_200k : pe->input;
            out_rate = pe->output_above_200k > pe->output ? pe->output_above_200k : pe->output;
        }
    }
    if (in_rate < 0)
        return 0;
    int64_t worst = money_cost((int64_t)c->prompt_est, in_rate) + money_cost(out, out_rate);
    return c->model->price.given ? worst : marked_up(worst, c->model->price.markup_bps);
}

/* What a call of this price and these tokens takes from its team's
 * credits (billionths of a credit, as the ledger charges them: nano-USD in
 * consumption_usd, tokens / tokens_per_credit in consumption_tokens); 0
 * for BYOK and for teams in no consumption mode. */
static int64_t call_credits(const call *c, int64_t price, int64_t tokens)
{
    const tn_team *t = c->who.team;
    if (!t || (c->credential && strstr(c->credential, "byok")))
        return 0;
    if (t->budget_mode == TN_BUDGET_USD)
        return price > 0 ? price : 0;
    if (t->budget_mode != TN_BUDGET_TOKENS || tokens <= 0 || t->tokens_per_credit <= 0)
        return 0;
    if (tokens > INT64_MAX / 1000000000)
        return INT64_MAX;
    return (tokens * 1000000000 + t->tokens_per_credit - 1) / t->tokens_per_credit;
}

/* The call waits for a lease or a rate slice: the request is held, an
 * abort cancels the wait. Returns 1. */
static int call_wait(call *c)
{
    c->req->app = c;
    c->req->on_abort = call_on_abort;
    c->phase = CALL_ADMITTING;
    return 1;
}

/* Gives back what the call holds of its budgets (price 0: it never ran). */
static void call_unclaim(call *c)
{
    if (c->local) {
        uv_mutex_lock(&c->gw->grp->lock);
        c->local->reserved -= c->worst;
        uv_mutex_unlock(&c->gw->grp->lock);
        c->local = NULL;
    }
    if (c->rwait) {
        ratelimits_cancel(c->rwait);
        c->rwait = NULL;
    }
    if (c->rclaim.n && c->gw->ratelimits)
        ratelimits_settle(c->gw->ratelimits, &c->rclaim, 0);
    if (c->wait) {
        leases_cancel(c->wait);
        c->wait = NULL;
    }
    if (c->claim.n && c->gw->leases)
        leases_settle(c->gw->leases, &c->claim, 0, 0);
}

static void call_refuse_budget(call *c, const lease_refusal *r)
{
    http_req *req = c->req;
    const chat_format *fin = c->fin;
    char msg[400], max[MONEY_FMT_MAX], spent[MONEY_FMT_MAX], reset[64] = "";
    const char *who = strcmp(r->scope, "key") == 0 || strcmp(r->scope, "config") == 0 ? "key"
                      : strcmp(r->scope, "team") == 0 || strcmp(r->scope, "credit") == 0
                          ? "team"
                          : "organization";
    metrics_refused(c->gw->metrics, r->status != 402 && r->status != 403
                                        ? METRICS_REFUSED_BUDGET_UNAVAILABLE
                                    : strcmp(r->scope, "credit") == 0 ? METRICS_REFUSED_CREDITS
                                                                      : METRICS_REFUSED_BUDGET);
    money_format(r->max, max, sizeof max);
    money_format(r->spent, spent, sizeof spent);
    if (r->reset_at_us > 0) {
        time_t t = (time_t)(r->reset_at_us / 1000000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(reset, sizeof reset, "; it resets at %Y-%m-%dT%H:%M:%SZ", &tm);
    }
    bool credit = strcmp(r->scope, "credit") == 0;
    if (r->status == 402 && credit) {
        char left[MONEY_FMT_MAX];
        money_format(r->max - r->spent > 0 ? r->max - r->spent : 0, left, sizeof left);
        bool usd = c->who.team && c->who.team->budget_mode == TN_BUDGET_USD;
        snprintf(msg, sizeof msg,
                 "Out of credits for this team (%s): %s%s %s left, not enough for this call. "
                 "Add credits to continue.",
                 r->id, usd ? "$" : "", left, usd ? "of credit" : "credits");
    } else if (r->status == 402) {
        snprintf(msg, sizeof msg,
                 "Budget exhausted for this %s (%s): $%s of $%s spent this period, not enough "
                 "left for this call%s.",
                 who, strcmp(r->scope, "config") == 0 ? c->key->alias : r->id, spent, max,
                 reset[0] ? reset : " (it does not reset)");
    } else {
        snprintf(msg, sizeof msg,
                 "The budget of this %s could not be leased in time (the database is "
                 "unreachable or slow to answer); no call is admitted past a budget unchecked. "
                 "Retry shortly.",
                 who);
    }
    access_log_simple(c->gw, req, r->status, c->key->alias);
    req->app = NULL;
    req->on_abort = NULL;
    c->req = NULL;
    call_free(c);
    send_error_in(req, fin, r->status,
                  r->status == 402
                      ? (fin->id == CHAT_FMT_OPENAI ? "insufficient_quota" : "billing_error")
                      : (fin->id == CHAT_FMT_OPENAI ? "server_error" : "api_error"),
                  r->status == 402 ? (credit ? "credits_exhausted" : "budget_exceeded")
                                   : "budget_unavailable",
                  NULL, r->status == 503 ? "retry-after: 1\r\n" : NULL, "%s", msg);
}

static void call_budget_ready(void *ud, int rc, const lease_refusal *r)
{
    call *c = ud;
    c->wait = NULL;
    if (rc != 0) {
        call_refuse_budget(c, r);
        return;
    }
    c->budget_left = leases_remaining(&c->claim);
    call_go(c);
}

/* Under grp->lock (or before the other workers start). */
static local_budget *local_get(gateway *gw, const config_key *k)
{
    local_budget *b = gw->grp->local;
    while (b && strcmp(b->alias, k->alias) != 0)
        b = b->next;
    if (!b && (b = calloc(1, sizeof(*b)))) {
        snprintf(b->alias, sizeof(b->alias), "%s", k->alias);
        b->next = gw->grp->local;
        gw->grp->local = b;
    }
    return b;
}

/* The current period of a config key's budget; a new period forgets the
 * spend of the last. */
static void local_roll(local_budget *b, const config_key *k, int64_t now)
{
    if (!k->budget_duration)
        return;
    if (!b->period_end || now >= b->period_end) {
        int64_t start, end;
        config_period(k->budget_duration, now, &start, &end);
        if (b->period_end)
            b->spent = 0;
        b->period_end = end;
    }
}

/* A config key's budget: 0 admitted, else refused and answered. */
static int call_admit_local(call *c, const config_key *k)
{
    gateway_group *g = c->gw->grp;
    c->worst = call_worst_price(c);
    uv_mutex_lock(&g->lock);
    local_budget *b = local_get(c->gw, k);
    if (!b) {
        uv_mutex_unlock(&g->lock);
        return 0;
    }
    local_roll(b, k, clock_wall_s());
    if (b->spent + b->reserved + c->worst > k->max_budget_nano && c->worst > 0) {
        lease_refusal r = {.status = 402, .max = k->max_budget_nano, .spent = b->spent,
                           .reset_at_us = b->period_end * 1000000};
        uv_mutex_unlock(&g->lock);
        snprintf(r.scope, sizeof r.scope, "key");
        snprintf(r.id, sizeof r.id, "%s", k->alias);
        call_refuse_budget(c, &r);
        return -1;
    }
    b->reserved += c->worst;
    c->local = b;
    c->budget_left = k->max_budget_nano - b->spent - b->reserved;
    uv_mutex_unlock(&g->lock);
    return 0;
}

/* At start without a database: the spool is the ledger; the config keys'
 * spend in their current periods is summed from it. */
typedef struct local_scan {
    gateway *gw;
    const config *cfg;
    size_t rows;
} local_scan;

static int local_scan_row(void *ud, const char *line, size_t len)
{
    local_scan *ls = ud;
    json_error_t je;
    json_t *row = json_loadb(line, len, 0, &je);
    const char *alias = json_string_value(json_object_get(row, "key_alias"));
    const char *at = json_string_value(json_object_get(row, "at"));
    json_t *price = json_object_get(row, "price_nano");
    if (alias && at && json_is_integer(price) && json_is_null(json_object_get(row, "key_id"))) {
        for (size_t i = 0; i < ls->cfg->nkeys; i++) {
            const config_key *k = &ls->cfg->keys[i];
            if (k->max_budget_nano < 0 || strcmp(k->alias, alias) != 0)
                continue;
            struct tm tm = {0};
            if (sscanf(at, "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                       &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
                break;
            tm.tm_year -= 1900;
            tm.tm_mon -= 1;
            int64_t t = (int64_t)timegm(&tm), start = INT64_MIN, end = 0;
            if (k->budget_duration)
                config_period(k->budget_duration, clock_wall_s(), &start, &end);
            local_budget *b = local_get(ls->gw, k);
            if (b && t >= start) {
                b->spent += json_integer_value(price);
                b->period_end = end;
                ls->rows++;
            }
            break;
        }
    }
    json_decref(row);
    return 0;
}

static void local_rebuild(gateway *gw, const config *cfg)
{
    bool any = false;
    for (size_t i = 0; i < cfg->nkeys; i++)
        any |= cfg->keys[i].max_budget_nano >= 0;
    if (!any || gw->store)
        return;
    local_scan ls = {gw, cfg, 0};
    int rc = ledger_scan(cfg->ledger.spool_dir, local_scan_row, &ls);
    if (rc != 0)
        log_warn(NULL, "budgets: cannot read the spool %s: %s", cfg->ledger.spool_dir,
                 strerror(-rc));
    else
        log_info(NULL, "budgets of config keys rebuilt from the spool: %zu calls this period",
                 ls.rows);
}

/* Admission against the key's, team's and org's budgets. 0: admitted (go
 * on); else the call waits for a lease (call_budget_ready continues it) or
 * was refused and answered. */
static int call_admit_budgets(call *c)
{
    gateway *gw = c->gw;
    const tn_key *k = c->who.key;
    const tn_team *t = c->who.team;
    const config_key *ck = c->who.ckey;
    if (ck && ck->max_budget_nano >= 0 && !gw->leases)
        return call_admit_local(c, ck); /* DB-less: this instance's own count */
    if (!gw->leases || (!k && !(ck && ck->max_budget_nano >= 0)))
        return 0;
    budget_ref refs[LEASES_MAX_REFS];
    size_t n = 0;
    if (ck) /* shared by the instances on the database (scope "config") */
        refs[n++] = (budget_ref){"config", ck->budget_id, ck->max_budget_nano, ck->budget_duration};
    else if (k->max_budget_nano >= 0)
        refs[n++] = (budget_ref){"key", k->e.id.s};
    if (t && t->max_budget_nano >= 0)
        refs[n++] = (budget_ref){"team", t->e.id.s};
    if (t && t->org_max_budget_nano >= 0)
        refs[n++] = (budget_ref){"org", t->org_id.s};
    if (t && t->credit_limit_nano >= 0 &&
        (t->budget_mode == TN_BUDGET_USD || t->budget_mode == TN_BUDGET_TOKENS)) {
        refs[n++] = (budget_ref){"credit", t->e.id.s};
        c->credit_leased = true; /* a call refused here writes no ledger row */
    }
    if (!n)
        return 0;
    c->worst = call_worst_price(c);
    c->worst_credits = call_credits(c, c->worst, (int64_t)c->prompt_est + call_max_output(c));
    lease_refusal r;
    memset(&r, 0, sizeof r);
    int rc = leases_admit(gw->leases, refs, n, c->worst, c->worst_credits, &c->claim,
                          call_budget_ready, c, &c->wait, &r);
    if (rc == 0) {
        c->budget_left = leases_remaining(&c->claim);
        return 0;
    }
    if (rc == 1)
        return call_wait(c);
    call_refuse_budget(c, &r);
    return -1;
}

/* ------------------------------------------------------------ rate limits */

static void call_refuse_rate(call *c, const rate_refusal *r)
{
    http_req *req = c->req;
    const chat_format *fin = c->fin;
    char hdr[256];
    metrics_refused(c->gw->metrics, METRICS_REFUSED_RATE_LIMIT);
    unsigned secs = (unsigned)(r->reset_s + 0.999);
    if (r->unavailable)
        snprintf(hdr, sizeof hdr, "retry-after: 1\r\n");
    else
        snprintf(hdr, sizeof hdr,
                 "x-ratelimit-limit-%s: %" PRId64 "\r\nx-ratelimit-remaining-%s: 0\r\n"
                 "x-ratelimit-reset-%s: %.3fs\r\nretry-after: %u\r\n",
                 r->tokens ? "tokens" : "requests", r->limit, r->tokens ? "tokens" : "requests",
                 r->tokens ? "tokens" : "requests", r->reset_s, secs ? secs : 1);
    int status = r->unavailable ? 503 : 429;
    access_log_simple(c->gw, req, status, c->key->alias);
    req->app = NULL;
    req->on_abort = NULL;
    c->req = NULL;
    call_unclaim(c);
    call_free(c);
    if (r->unavailable)
        send_error_in(req, fin, 503, fin->id == CHAT_FMT_OPENAI ? "server_error" : "api_error",
                      "rate_limit_unavailable", NULL, hdr,
                      "The rate limits of this key cannot be checked right now; retry shortly.");
    else
        send_error_in(req, fin, 429, "rate_limit_error", "rate_limit_exceeded", NULL, hdr,
                      "Rate limit reached for this %s: %" PRId64 " %s per minute. Retry in %u s.",
                      strcmp(r->scope, "team") == 0 ? "team" : "key", r->limit,
                      r->tokens ? "tokens" : "requests", secs ? secs : 1);
}

static void call_limits_ready(void *ud, int rc, const rate_refusal *r)
{
    call *c = ud;
    c->rwait = NULL;
    if (rc != 0) {
        call_refuse_rate(c, r);
        return;
    }
    if (call_admit_budgets(c) != 0)
        return;
    call_go(c);
}

/* The key's and team's rpm and tpm, held across instances. 0: admitted. */
static int call_admit_limits(call *c)
{
    gateway *gw = c->gw;
    const tn_key *k = c->who.key;
    const tn_team *t = c->who.team;
    if (!gw->ratelimits || !k)
        return 0;
    int64_t tokens = (int64_t)c->prompt_est + call_max_output(c);
    rate_ref refs[RATE_MAX_REFS];
    size_t n = 0;
    if (k->rpm)
        refs[n++] = (rate_ref){"key", k->e.id.s, false, k->rpm, 1};
    if (k->tpm)
        refs[n++] = (rate_ref){"key", k->e.id.s, true, (int64_t)k->tpm, tokens};
    if (t && t->rpm)
        refs[n++] = (rate_ref){"team", t->e.id.s, false, t->rpm, 1};
    if (t && t->tpm)
        refs[n++] = (rate_ref){"team", t->e.id.s, true, (int64_t)t->tpm, tokens};
    if (!n)
        return 0;
    rate_refusal r;
    memset(&r, 0, sizeof r);
    int rc = ratelimits_admit(gw->ratelimits, refs, n, &c->rclaim, call_limits_ready, c,
                              &c->rwait, &r);
    if (rc == 0)
        return 0;
    if (rc == 1)
        return call_wait(c);
    call_refuse_rate(c, &r);
    return -1;
}

static void handle_llm_opts(gateway *gw, http_req *req, const chat_format *fin,
                            const char *endpoint, const llm_opts *o)
{
    uint64_t t0 = clock_mono_ns();
    const config *cfg = gw->cfg;
    caller who;
    if (!authenticate(gw, req, fin, &who))
        return;
    const caller *key = &who;
    char job_id[37] = "";
    int jr = attach_job(gw, req, fin, endpoint, o, &who, job_id);
    if (jr < 0) {
        caller_release(&who);
        return;
    }
    /* admission first: nothing is allocated for a request that is refused */
    openai_req_info info;
    chat_request creq;
    memset(&creq, 0, sizeof creq);
    if (read_request(gw, req, fin, endpoint, key, &info, &creq) != 0) {
        chat_request_free(&creq);
        caller_release(&who);
        return;
    }
    if (o && o->need_stream && !info.stream) {
        chat_request_free(&creq);
        access_log_simple(gw, req, 400, key->alias);
        caller_release(&who);
        send_error_in(req, fin, 400, "invalid_request_error", "stream_required", "stream", NULL,
                      "llm-call-stream answers a stream: send \"stream\": true.");
        return;
    }
    slice pmodel;
    model_pick mp;
    if (!resolve_model(gw, cfg, info.model, info.model_len, &pmodel, &mp) &&
        !resolve_level(gw, &who, info.model, info.model_len, &pmodel, &mp)) {
        chat_request_free(&creq);
        access_log_simple(gw, req, 404, key->alias);
        caller_release(&who);
        send_error_in(req, fin, 404, "invalid_request_error", "model_not_found", "model", NULL,
                      "The model '%s' does not exist or you do not have access to it.", info.model);
        return;
    }
    const config_model *m = &mp.model;
    /* a power level: each route's alias is checked when the call is planned */
    if (!mp.level && !caller_allows(key, info.model, info.model_len, mp.access_group)) {
        chat_request_free(&creq);
        access_log_simple(gw, req, 403, key->alias);
        caller_release(&who);
        send_error_in(req, fin, 403, "permission_error", "model_not_allowed", "model", NULL,
                      "This key is not allowed to use the model '%s'.", info.model);
        return;
    }
    bool chat = strcmp(endpoint, "/completions") != 0 && strcmp(endpoint, "/embeddings") != 0;
    bool embed_gemini = strcmp(endpoint, "/embeddings") == 0 && m->provider->type == CONFIG_PROVIDER_GEMINI;
    if (!chat && !embed_gemini &&
        (config_provider_format(m->provider) != CHAT_FMT_OPENAI ||
         m->provider->type == CONFIG_PROVIDER_MOCK)) {
        access_log_simple(gw, req, 400, key->alias);
        caller_release(&who);
        send_error(req, 400, "invalid_request_error", "unsupported_endpoint", "model", NULL,
                   "The model '%s' is served by provider '%s' (%s), which has no %s endpoint; "
                   "this endpoint needs an OpenAI-compatible provider.",
                   info.model, m->provider->name, config_provider_type_name(m->provider->type),
                   endpoint);
        return;
    }
    uint32_t remaining = 0;
    double reset_s = 0;
    /* a database key's limits hold across instances (call_admit_limits);
     * a config key's are this instance's own */
    if (!(gw->ratelimits && who.key) && !rate_admit(gw, key, &remaining, &reset_s)) {
        chat_request_free(&creq);
        char hdr[256];
        snprintf(hdr, sizeof(hdr),
                 "x-ratelimit-limit-requests: %u\r\nx-ratelimit-remaining-requests: 0\r\n"
                 "x-ratelimit-reset-requests: %.3fs\r\nretry-after: %u\r\n",
                 key->rpm, reset_s, (unsigned)(reset_s + 0.999));
        access_log_simple(gw, req, 429, key->alias);
        metrics_refused(gw->metrics, METRICS_REFUSED_RATE_LIMIT);
        send_error_in(req, fin, 429, "rate_limit_error", "rate_limit_exceeded", NULL, hdr,
                      "Rate limit reached for key '%s': %u requests per minute.", key->alias,
                      key->rpm);
        caller_release(&who);
        return;
    }
    if (gw->ledger && !ledger_accepting(gw->ledger)) {
        chat_request_free(&creq);
        access_log_simple(gw, req, 503, key->alias);
        metrics_refused(gw->metrics, METRICS_REFUSED_LEDGER_FULL);
        caller_release(&who);
        send_error_in(req, fin, 503, fin->id == CHAT_FMT_OPENAI ? "server_error" : "api_error",
                      "ledger_unavailable", NULL, "retry-after: 5\r\n",
                      "tollgate cannot record usage right now (its spool is full or cannot be "
                      "written); no call is served unmetered. Retry shortly.");
        return;
    }
    call *c = calloc(1, sizeof(*c));
    if (!c) {
        chat_request_free(&creq);
        caller_release(&who);
        send_error_in(req, fin, 500, "server_error", NULL, NULL, NULL, "out of memory");
        return;
    }
    c->gw = gw;
    c->req = req;
    c->cfg = config_ref(cfg);
    crypto_request_id(c->call_id);
    c->t_wall_us = clock_wall_us();
    c->budget_left = -1;
    memcpy(c->job_id, job_id, sizeof(c->job_id));
    c->who = who; /* moved: released with the call */
    c->key = &c->who;
    key = c->key;
    c->model_own = mp.model;
    c->model = &c->model_own;
    c->info = info;
    c->creq = creq; /* moved: freed with the call */
    buf_init(&c->out, GW_MAX_EVENT_BYTES);
    buf_init(&c->resp, GW_MAX_RESPONSE_BYTES);
    buf_init(&c->up_head, 0);
    buf_init(&c->up_body, 0);
    if (++gw->inflight > gw->inflight_peak)
        gw->inflight_peak = gw->inflight;
    c->prov = m->provider;
    c->fin = fin;
    c->endpoint = fin->id == CHAT_FMT_OPENAI ? endpoint : "/chat/completions";
    c->fup = chat_format_get((chat_format_id)config_provider_format(c->prov));
    c->translate = c->fin != c->fup;
    c->decode = c->translate || fin->id != CHAT_FMT_OPENAI;
    c->embed = embed_gemini;
    size_t pl = pmodel.len < sizeof(c->provider_model) - 1 ? pmodel.len : sizeof(c->provider_model) - 1;
    memcpy(c->provider_model, pmodel.p, pl);
    c->provider_model[pl] = '\0';
    const tok_enc *enc = tok_set_pick(gw->toks, c->provider_model, pl, &c->tok_exact);
    meter_init(&c->meter, enc, gw->work);
    chat_error ce;
    memset(&ce, 0, sizeof ce);
    c->creq_ready = fin->id != CHAT_FMT_OPENAI; /* read_request decoded it */
    c->prompt_est = !chat ? prompt_tokens_of_input(enc, gw->work, &info.root)
                    : fin->id == CHAT_FMT_OPENAI
                        ? meter_prompt_openai(enc, gw->work, req->body.p, req->body.len)
                        : prompt_tokens_of(enc, gw->work, &c->creq);
    /* the routes: the first of the plan, the others for retries */
    c->rs = mp.cfg_model  ? route_table_config(gw->routes, mp.cfg_model)
            : mp.db_alias ? route_table_db(gw->routes, mp.db_alias)
            : mp.level    ? route_table_level(gw->routes, mp.level)
                          : NULL;
    if (!c->rs) {
        access_log_simple(gw, req, 500, key->alias);
        c->req = NULL;
        call_free(c);
        send_error_in(req, fin, 500, "server_error", NULL, NULL, NULL, "out of memory");
        return;
    }
    char why[400];
    int pst = call_plan(c, why, sizeof why);
    if (pst) {
        access_log_simple(gw, req, pst, key->alias);
        c->req = NULL;
        call_free(c);
        send_error_in(req, fin, pst,
                      pst == 400 ? "invalid_request_error" : "rate_limit_error",
                      pst == 400 ? "no_route_fits" : "no_route_available", NULL,
                      pst == 400 ? NULL : "retry-after: 1\r\n", "%s", why);
        return;
    }
    c->retry_until_ns = clock_mono_ns() + (uint64_t)cfg->routing.max_wait_ms * 1000000;
    if (call_use_route(c, c->plan[0], &ce) != 0)
        goto refuse;
    c->overhead_ns += clock_mono_ns() - t0;
    if (call_admit_limits(c) != 0)
        return; /* waiting for a rate slice or a lease, or refused */
    if (call_admit_budgets(c) != 0)
        return;
    call_go(c);
    return;

refuse:
    /* the upstream's format cannot carry this request: a 400 naming why */
    access_log_simple(gw, req, ce.status, key->alias);
    c->req = NULL;
    call_free(c);
    send_chat_error(req, fin, &ce, NULL);
}

/* POST /v1/messages/count_tokens: an Anthropic request's prompt tokens,
 * counted by the meter's tokenizer (OpenAI's encodings: for Claude models
 * an estimate, flagged in the x-tollgate-tokenizer header). */
static void count_tokens_for(gateway *gw, http_req *req, const caller *key)
{
    const chat_format *fin = &chat_format_anthropic;
    const config *cfg = gw->cfg;
    /* count_tokens takes no max_tokens; the Messages decoder wants one */
    buf body;
    buf_init(&body, (size_t)req->body.len + 32);
    jscan_val root, mt;
    int rc = 0;
    if (jscan_root(req->body.p, req->body.len, &root) == 0 && root.type == JSCAN_OBJECT &&
        jscan_val_get(&root, "max_tokens", &mt) != 0 && root.n >= 2) {
        size_t at = (size_t)(root.p - req->body.p) + 1;
        rc = buf_append(&body, req->body.p, at);
        if (!rc)
            rc = buf_append_str(&body, jscan_is_empty(&root) ? "\"max_tokens\":1" : "\"max_tokens\":1,");
        if (!rc)
            rc = buf_append(&body, req->body.p + at, req->body.len - at);
    } else {
        rc = buf_append(&body, req->body.p, req->body.len);
    }
    chat_request r;
    chat_error e;
    if (rc || chat_request_init(&r) != 0) {
        buf_free(&body);
        send_error_in(req, fin, 500, "api_error", NULL, NULL, NULL, "out of memory");
        return;
    }
    if (fin->req_decode(body.data, body.len, &r, &e) != 0) {
        access_log_simple(gw, req, e.status, key->alias);
        send_chat_error(req, fin, &e, NULL);
        goto out;
    }
    slice pmodel;
    model_pick mp;
    const config_model *m =
        r.model.len && resolve_model(gw, cfg, r.model.p, r.model.len, &pmodel, &mp) ? &mp.model
                                                                                  : NULL;
    if (!m || !caller_allows(key, r.model.p, r.model.len, mp.access_group)) {
        access_log_simple(gw, req, 404, key->alias);
        send_error_in(req, fin, 404, "not_found_error", "model_not_found", "model", NULL,
                      "model: %.*s", (int)(r.model.len > 200 ? 200 : r.model.len),
                      r.model.p ? r.model.p : "");
        goto out;
    }
    char pm[256];
    snprintf(pm, sizeof pm, "%.*s", (int)pmodel.len, pmodel.p);
    bool exact = false;
    const tok_enc *enc = tok_set_pick(gw->toks, pm, strlen(pm), &exact);
    uint64_t n = prompt_tokens_of(enc, gw->work, &r);
    char out[64], hdr[160];
    int k = snprintf(out, sizeof out, "{\"input_tokens\":%" PRIu64 "}", n);
    snprintf(hdr, sizeof hdr, "x-tollgate-tokenizer: %s\r\nx-tollgate-tokenizer-exact: %s\r\n",
             enc ? tok_name(enc) : "bytes/4", exact && enc ? "true" : "false");
    access_log_simple(gw, req, 200, key->alias);
    http_respond(req, 200, "application/json", hdr, out, (size_t)k);
out:
    chat_request_free(&r);
    buf_free(&body);
}

static void handle_count_tokens(gateway *gw, http_req *req)
{
    caller who;
    if (!authenticate(gw, req, &chat_format_anthropic, &who))
        return;
    count_tokens_for(gw, req, &who);
    caller_release(&who);
}

static void handle_chat(gateway *gw, http_req *req)
{
    handle_llm(gw, req, &chat_format_openai, "/chat/completions");
}
static void handle_completions(gateway *gw, http_req *req)
{
    handle_llm(gw, req, &chat_format_openai, "/completions");
}
static void handle_embeddings(gateway *gw, http_req *req)
{
    handle_llm(gw, req, &chat_format_openai, "/embeddings");
}
static void handle_messages(gateway *gw, http_req *req)
{
    handle_llm(gw, req, &chat_format_anthropic, "/messages");
}

/* ------------------------------------------------------------ other routes */

/* One entry of the model list, in OpenAI's or Anthropic's shape. */
typedef struct model_list {
    buf *b;
    bool anth;
    const caller *key;
    const char *first, *last; /* ids, for Anthropic's first_id / last_id */
    int rc;
} model_list;

static void model_list_add(model_list *ml, const char *name, const char *owner,
                           const char *access_group)
{
    size_t n = strlen(name);
    if (ml->rc || !caller_allows(ml->key, name, n, access_group))
        return;
    buf *b = ml->b;
    int rc = buf_printf(b, ml->anth ? "%s{\"type\":\"model\",\"id\":" : "%s{\"id\":",
                        ml->first ? "," : "");
    if (!rc)
        rc = chat_json_str(b, name, n);
    if (!rc && ml->anth) {
        rc = buf_append_str(b, ",\"display_name\":");
        if (!rc)
            rc = chat_json_str(b, name, n);
        if (!rc)
            rc = buf_append_str(b, ",\"created_at\":\"1970-01-01T00:00:00Z\"}");
    } else if (!rc) {
        rc = buf_append_str(b, ",\"object\":\"model\",\"created\":0,\"owned_by\":");
        if (!rc)
            rc = chat_json_str(b, owner, strlen(owner));
        if (!rc)
            rc = buf_append_str(b, "}");
    }
    if (!ml->first)
        ml->first = name;
    ml->last = name;
    ml->rc = rc;
}

static void model_list_alias(const tn_entry *e, void *ud)
{
    model_list *ml = ud;
    const tn_alias *a = (const tn_alias *)e;
    model_list_add(ml, a->name, a->routes[0].provider, a->access_group);
}

static void models_for(gateway *gw, http_req *req, const caller *key)
{
    const config *cfg = gw->cfg;
    /* the Anthropic SDK (it sends anthropic-version) gets Anthropic's shape */
    bool anth = http_req_header(req, "anthropic-version").len > 0;
    buf b;
    buf_init(&b, 4u * 1024 * 1024);
    model_list ml = {.b = &b, .anth = anth, .key = key};
    ml.rc = buf_append_str(&b, anth ? "{\"data\":[" : "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < cfg->nmodels; i++)
        model_list_add(&ml, cfg->models[i].name, cfg->models[i].provider->name, NULL);
    if (gw->store)
        tenants_foreach(store_tenants(gw->store), TN_ALIAS, model_list_alias, &ml);
    int rc = ml.rc;
    if (!rc)
        rc = buf_append_str(&b, "]");
    if (!rc && anth) {
        rc = buf_append_str(&b, ",\"has_more\":false,\"first_id\":");
        if (!rc)
            rc = ml.first ? chat_json_str(&b, ml.first, strlen(ml.first)) : buf_append_str(&b, "null");
        if (!rc)
            rc = buf_append_str(&b, ",\"last_id\":");
        if (!rc)
            rc = ml.last ? chat_json_str(&b, ml.last, strlen(ml.last)) : buf_append_str(&b, "null");
    }
    if (!rc)
        rc = buf_append_str(&b, "}");
    access_log_simple(gw, req, rc ? 500 : 200, key->alias);
    if (rc)
        send_error(req, 500, "server_error", NULL, NULL, NULL, "model list too large");
    else
        http_respond(req, 200, "application/json", NULL, b.data, b.len);
    buf_free(&b);
}

static void handle_models(gateway *gw, http_req *req)
{
    caller who;
    bool anth = http_req_header(req, "anthropic-version").len > 0;
    if (!authenticate(gw, req, anth ? &chat_format_anthropic : &chat_format_openai, &who))
        return;
    models_for(gw, req, &who);
    caller_release(&who);
}

typedef struct route {
    const char *path;   /* exact path */
    uint8_t method;     /* the one method it takes */
    const char *allow;  /* Allow header value */
    void (*fn)(gateway *gw, http_req *req);
} route;

static void handle_health(gateway *gw, http_req *req)
{
    (void)gw;
    http_respond(req, 200, "application/json", NULL, "{\"status\":\"ok\"}", 15);
}

/* This loop's readiness for the others' /health/ready: 0 ready, 1
 * draining, 2 the database not ready. */
static int ready_state(const gateway *gw)
{
    if (http_server_draining(gw->srv) || gw->closing || gw->drained)
        return 1;
    return gw->store && !store_ready(gw->store) ? 2 : 0;
}

static void state_tick(uv_timer_t *t)
{
    gateway *gw = t->data;
    __atomic_store_n(&gw->grp->state[gw->index], ready_state(gw), __ATOMIC_RELAXED);
}

static void handle_ready(gateway *gw, http_req *req)
{
    int other = 0;
    unsigned who = 0;
    for (unsigned i = 0; i < gw->grp->n && !other; i++)
        if (i != gw->index && (other = __atomic_load_n(&gw->grp->state[i], __ATOMIC_RELAXED)))
            who = i;
    if (!ready_state(gw) && other) { /* the process answers for every worker */
        char body[96];
        int n = snprintf(body, sizeof body, "{\"status\":\"%s\",\"worker\":%u}",
                         other == 1 ? "draining" : "not_ready", who);
        http_respond(req, 503, "application/json", "retry-after: 1\r\n", body, (size_t)n);
    } else if (http_server_draining(gw->srv) || gw->closing) {
        http_respond(req, 503, "application/json", NULL, "{\"status\":\"draining\"}", 21);
    } else if (gw->store && !store_ready(gw->store)) {
        buf b;
        buf_init(&b, 1024);
        const char *why = store_status(gw->store);
        int rc = buf_append_str(&b, "{\"status\":\"not_ready\",\"database\":\"");
        if (!rc)
            rc = buf_append_json_escaped(&b, why, strlen(why));
        if (!rc)
            rc = buf_append_str(&b, "\"}");
        http_respond(req, 503, "application/json", "retry-after: 1\r\n",
                     rc ? "{\"status\":\"not_ready\"}" : b.data, rc ? 23 : b.len);
        buf_free(&b);
    } else
        http_respond(req, 200, "application/json", NULL, "{\"status\":\"ready\"}", 18);
}

static const route routes[] = {
    {"/v1/chat/completions", HTTP_POST, "POST", handle_chat},
    {"/chat/completions", HTTP_POST, "POST", handle_chat},
    {"/v1/completions", HTTP_POST, "POST", handle_completions},
    {"/completions", HTTP_POST, "POST", handle_completions},
    {"/v1/embeddings", HTTP_POST, "POST", handle_embeddings},
    {"/embeddings", HTTP_POST, "POST", handle_embeddings},
    {"/v1/messages", HTTP_POST, "POST", handle_messages},
    {"/v1/messages/count_tokens", HTTP_POST, "POST", handle_count_tokens},
    {"/messages", HTTP_POST, "POST", handle_messages},
    {"/v1/models", HTTP_GET, "GET", handle_models},
    {"/models", HTTP_GET, "GET", handle_models},
    {"/health", HTTP_GET, "GET", handle_health},
    {"/health/live", HTTP_GET, "GET", handle_health},
    {"/health/ready", HTTP_GET, "GET", handle_ready},
};

/* True when path starts with pre; *rest gets what follows (NUL-terminated
 * copy, at most cap bytes, else false). */
static bool path_after(slice path, const char *pre, char *rest, size_t cap)
{
    size_t n = strlen(pre);
    if (path.len < n || memcmp(path.p, pre, n) != 0 || path.len - n >= cap)
        return false;
    memcpy(rest, path.p + n, path.len - n);
    rest[path.len - n] = '\0';
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* /v1/jobs..., /api/jobs/..., /api/teams/<id>/usage: true if it was one. */
static bool route_jobs(gateway *gw, http_req *req)
{
    char rest[160];
    bool v1 = path_after(req->path, "/v1/jobs", rest, sizeof(rest)) && (!rest[0] || rest[0] == '/');
    bool api = !v1 && path_after(req->path, "/api/jobs", rest, sizeof(rest)) && rest[0] == '/';
    bool usage = !v1 && !api && path_after(req->path, "/api/teams/", rest, sizeof(rest)) &&
                 ends_with(rest, "/usage");
    if (!v1 && !api && !usage)
        return false;
    if (api && (ends_with(rest, "/llm-call") || ends_with(rest, "/llm-call-stream"))) {
        /* the seed's call paths: a chat completion with the job attached */
        llm_opts o = {.need_stream = ends_with(rest, "/llm-call-stream")};
        const char *slash = strchr(rest + 1, '/');
        snprintf(o.job_id, sizeof(o.job_id), "%.*s", (int)(slash - rest - 1), rest + 1);
        if (req->method != HTTP_POST) {
            access_log_simple(gw, req, 405, NULL);
            send_error(req, 405, "invalid_request_error", "method_not_allowed", NULL,
                       "Allow: POST\r\n", "Use POST.");
        } else {
            handle_llm_opts(gw, req, &chat_format_openai, "/chat/completions", &o);
        }
        return true;
    }
    caller who;
    if (!authenticate(gw, req, &chat_format_openai, &who))
        return true;
    job_owner ow = owner_of(&who);
    if (usage)
        rest[strlen(rest) - 6] = '\0'; /* the team id */
    jobs_handle(gw->jobs, &ow, req, rest, usage);
    caller_release(&who);
    return true;
}

static void jobs_notified(void *ud, const char *table, const char *id)
{
    gateway *gw = ud;
    if (gw->jobs && !table)
        jobs_forget_all(gw->jobs);
    else if (gw->jobs && strcmp(table, "jobs") == 0)
        jobs_forget(gw->jobs, id);
}

/* GET /admin/providers/health: every route's circuit, errors and
 * latency on this instance (the admin API's keys). */
static void handle_provider_health(gateway *gw, http_req *req)
{
    if (req->method != HTTP_GET) {
        send_error(req, 405, "invalid_request_error", "method_not_allowed", NULL, "Allow: GET\r\n",
                   "Use GET.");
        return;
    }
    if (!admin_authorized(gw->store, gw->cfg, req)) {
        send_error(req, 401, "invalid_request_error", "invalid_admin_key", NULL, NULL,
                   "This page needs the master key or an admin key as 'Authorization: Bearer "
                   "KEY'.");
        return;
    }
    buf b;
    buf_init(&b, 16u << 20);
    int rc = buf_append_str(&b, "{\"object\":\"providers.health\",\"routes\":[");
    if (!rc)
        rc = route_table_health_json(gw->routes, clock_mono_ns(), &b);
    if (!rc)
        rc = buf_append_str(&b, "],\"checks\":[");
    if (!rc)
        rc = checks_json(gw->checks, &b);
    if (!rc)
        rc = buf_append_str(&b, "]}");
    if (!rc)
        http_respond(req, 200, "application/json", NULL, b.data, b.len);
    else
        send_error(req, 500, "server_error", NULL, NULL, NULL, "could not render the routes");
    buf_free(&b);
}

/* GET /metrics: the Prometheus text format. */
/* The gauges and counters the other modules keep, at scrape time. */
static int render_state(gateway *gw, buf *b)
{
    int rc = metrics_put(b, "tollgate_client_connections", "gauge", "Open client connections.",
                         NULL, (double)http_server_nconns(gw->srv));
    char lab[32];
    snprintf(lab, sizeof lab, "worker=\"%u\"", gw->index);
    if (!rc)
        rc = metrics_put(b, "tollgate_worker_client_connections", "gauge",
                         "Open client connections by worker (loop): the kernel's spread.", lab,
                         (double)http_server_nconns(gw->srv));
    if (!rc)
        rc = metrics_put(b, "tollgate_worker_requests_in_flight", "gauge",
                         "Model calls being answered, by worker (loop).", lab,
                         (double)gw->inflight);
    if (!rc)
        rc = metrics_put(b, "tollgate_requests_in_flight", "gauge",
                         "Model calls being answered.", NULL, (double)gw->inflight);
    if (!rc)
        rc = metrics_put(b, "tollgate_streams_active", "gauge",
                         "Model calls relaying an event stream now.", NULL, (double)gw->streams);
    httpc_stats hs;
    httpc_pool_stats(gw->pool, &hs);
    if (!rc)
        rc = metrics_put(b, "tollgate_upstream_connections", "gauge",
                         "Upstream connections by state (busy: in a call).", "state=\"busy\"",
                         (double)(hs.conns_open - hs.conns_idle));
    if (!rc)
        rc = metrics_put(b, "tollgate_upstream_connections", "gauge", NULL, "state=\"idle\"",
                         (double)hs.conns_idle);
    if (!rc)
        rc = metrics_put(b, "tollgate_upstream_connections_opened_total", "counter",
                         "Upstream TCP connections established.", NULL, (double)hs.conns_opened);
    if (!rc)
        rc = metrics_put(b, "tollgate_upstream_tls_handshakes_total", "counter",
                         "Upstream TLS handshakes completed (resumed ones included).", NULL,
                         (double)hs.tls_handshakes);
    if (!rc)
        rc = metrics_put(b, "tollgate_upstream_calls_queued_total", "counter",
                         "Upstream calls that waited for a connection slot.", NULL,
                         (double)hs.queued);
    pg_pool *pool = gw->store ? store_pool(gw->store) : NULL;
    if (pool && !rc) {
        pg_stats ps;
        pg_pool_stats(pool, &ps);
        rc = metrics_put(b, "tollgate_db_connections", "gauge",
                         "Database pool connections by state.", "state=\"busy\"", ps.busy);
        if (!rc)
            rc = metrics_put(b, "tollgate_db_connections", "gauge", NULL, "state=\"idle\"",
                             (double)(ps.up - ps.busy));
        if (!rc)
            rc = metrics_put(b, "tollgate_db_queue_length", "gauge",
                             "Queries waiting for a database connection.", NULL, ps.queued);
        if (!rc)
            rc = metrics_put(b, "tollgate_db_listening", "gauge",
                             "1 while the cache-change listener is connected.", NULL,
                             ps.listening ? 1 : 0);
        if (!rc)
            rc = metrics_put(b, "tollgate_db_queries_total", "counter",
                             "Database queries by outcome.", "outcome=\"ok\"",
                             (double)ps.queries);
        if (!rc)
            rc = metrics_put(b, "tollgate_db_queries_total", "counter", NULL,
                             "outcome=\"failed\"", (double)ps.failed);
        if (!rc)
            rc = metrics_put(b, "tollgate_db_disconnects_total", "counter",
                             "Database connections lost.", NULL, (double)ps.disconnects);
    }
    if (gw->leases && !rc) {
        leases_stats ls;
        leases_stats_get(gw->leases, &ls);
        rc = metrics_put(b, "tollgate_lease_budgets", "gauge",
                         "Budgets this instance holds or has held a lease of.", NULL, ls.budgets);
        if (!rc)
            rc = metrics_put(b, "tollgate_lease_held_usd", "gauge",
                             "The budget leases held now (USD; credit leases in credits).", NULL,
                             (double)ls.leased / 1e9);
        if (!rc)
            rc = metrics_put(b, "tollgate_lease_renewals_total", "counter",
                             "Lease renewals by outcome.", "outcome=\"ok\"",
                             (double)(ls.renewals - ls.renew_failures));
        if (!rc)
            rc = metrics_put(b, "tollgate_lease_renewals_total", "counter", NULL,
                             "outcome=\"failed\"", (double)ls.renew_failures);
        if (!rc)
            rc = metrics_put(b, "tollgate_lease_waits_total", "counter",
                             "Calls that waited for a lease renewal.", NULL, (double)ls.waits);
    }
    if (gw->ledger && gw->index == 0 && !rc) {
        ledger_stats st;
        ledger_stats_get(gw->ledger, &st);
        rc = metrics_put(b, "tollgate_ledger_rows_total", "counter",
                         "Ledger rows by stage: appended, durable (in the fsync'd spool), shipped "
                         "(acknowledged by the database).",
                         "stage=\"appended\"", (double)st.rows);
        if (!rc)
            rc = metrics_put(b, "tollgate_ledger_rows_total", "counter", NULL,
                             "stage=\"durable\"", (double)st.rows_durable);
        if (!rc)
            rc = metrics_put(b, "tollgate_ledger_rows_total", "counter", NULL,
                             "stage=\"shipped\"", (double)st.rows_shipped);
        if (!rc)
            rc = metrics_put(b, "tollgate_ledger_batches_failed_total", "counter",
                             "Ledger shipments the database refused or failed.", NULL,
                             (double)st.batches_failed);
        if (!rc)
            rc = metrics_put(b, "tollgate_ledger_replayed_rows_total", "counter",
                             "Ledger rows sent again from the spool.", NULL,
                             (double)st.replayed_rows);
        if (!rc)
            rc = metrics_put(b, "tollgate_ledger_spool_bytes", "gauge",
                             "Spool bytes not yet acknowledged by the database.", NULL,
                             (double)st.backlog_bytes);
        if (!rc)
            rc = metrics_put(b, "tollgate_ledger_spool_segments", "gauge",
                             "Spool segment files on disk.", NULL, st.segments);
        if (!rc)
            rc = metrics_put(b, "tollgate_ledger_spool_age_seconds", "gauge",
                             "Age of the oldest unshipped spool byte (0: none).", NULL,
                             st.oldest_backlog_s);
        if (!rc)
            rc = metrics_put(b, "tollgate_ledger_accepting", "gauge",
                             "0 while the spool is over its bound (calls are refused).", NULL,
                             st.accepting ? 1 : 0);
    }
    return rc;
}

/* This loop's part of a scrape: its calls, its state, its routes. */
static int render_part(gateway *gw, buf *b)
{
    int rc = buf_printf(b,
                        "# HELP tollgate_build_info The running version.\n"
                        "# TYPE tollgate_build_info gauge\n"
                        "tollgate_build_info{version=\"%s\"} 1\n",
                        tg_version);
    if (!rc)
        rc = metrics_render(gw->metrics, b);
    if (!rc)
        rc = render_state(gw, b);
    if (!rc)
        rc = route_table_metrics(gw->routes, clock_mono_ns(), b);
    return rc;
}

static void respond_metrics(http_req *req, int rc, const buf *b)
{
    if (!rc)
        http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b->data, b->len);
    else
        send_error(req, 500, "server_error", NULL, NULL, NULL, "could not render the metrics");
}

/* With several workers a scrape answers for the process: the loop it came
 * to asks every other loop for its part (through their wake handles), and
 * answers with the sum once all are in, or after GW_SCRAPE_MS with the
 * parts that came (a loop stuck for that long is missing from it). */
#define GW_SCRAPE_MS 2000

typedef struct scrape {
    int refs;               /* the origin's + one per loop asked (grp->lock) */
    unsigned pending;       /* parts not yet in (grp->lock) */
    bool closed;            /* answered: late parts are dropped (grp->lock) */
    gateway *origin;
    http_req *req;          /* NULL once aborted (origin's loop) */
    uv_timer_t timer;
    buf *part;              /* grp->n parts, by worker */
    struct scrape *next;    /* the origin's waiting list */
} scrape;

typedef struct scrape_ask {
    scrape *sc;
    struct scrape_ask *next;
} scrape_ask;

static void scrape_unref_locked(scrape *sc, gateway_group *g)
{
    if (--sc->refs > 0)
        return;
    for (unsigned i = 0; i < g->n; i++)
        buf_free(&sc->part[i]);
    free(sc->part);
    free(sc);
}

static void scrape_timer_closed(uv_handle_t *h)
{
    scrape *sc = h->data;
    gateway_group *g = sc->origin->grp;
    uv_mutex_lock(&g->lock);
    scrape_unref_locked(sc, g);
    uv_mutex_unlock(&g->lock);
}

/* Answers (if the client is still there) with the sum of the parts in. */
static void scrape_finish(scrape *sc)
{
    gateway *gw = sc->origin;
    gateway_group *g = gw->grp;
    for (scrape **pp = &gw->waiting; *pp; pp = &(*pp)->next)
        if (*pp == sc) {
            *pp = sc->next;
            break;
        }
    uv_mutex_lock(&g->lock);
    sc->closed = true;
    uv_mutex_unlock(&g->lock);
    if (sc->req) {
        buf out;
        buf_init(&out, 64u << 20);
        int rc = metrics_text_merge(sc->part, g->n, &out);
        http_req *req = sc->req;
        req->on_abort = NULL;
        req->app = NULL;
        sc->req = NULL;
        respond_metrics(req, rc, &out);
        buf_free(&out);
    }
    uv_timer_stop(&sc->timer);
    uv_close((uv_handle_t *)&sc->timer, scrape_timer_closed);
}

static void scrape_timeout(uv_timer_t *t)
{
    scrape *sc = t->data;
    log_warn(NULL, "metrics: a worker did not render its part within %d ms; answering without it",
             GW_SCRAPE_MS);
    scrape_finish(sc);
}

static void scrape_abort(http_req *req, void *ud)
{
    (void)ud;
    scrape *sc = req->app;
    sc->req = NULL;
}

static void handle_metrics(gateway *gw, http_req *req)
{
    gateway_group *g = gw->grp;
    if (g->n == 1) {
        buf b;
        buf_init(&b, 64u << 20);
        respond_metrics(req, render_part(gw, &b), &b);
        buf_free(&b);
        return;
    }
    scrape *sc = calloc(1, sizeof(*sc));
    buf *part = sc ? calloc(g->n, sizeof(*part)) : NULL;
    if (!part || uv_timer_init(gw->loop, &sc->timer) != 0) {
        free(part);
        free(sc);
        send_error(req, 500, "server_error", NULL, NULL, NULL, "could not render the metrics");
        return;
    }
    sc->part = part;
    for (unsigned i = 0; i < g->n; i++)
        buf_init(&sc->part[i], 64u << 20);
    sc->origin = gw;
    sc->req = req;
    sc->refs = 1;
    sc->timer.data = sc;
    req->app = sc;
    req->on_abort = scrape_abort;
    (void)render_part(gw, &sc->part[gw->index]);
    uv_mutex_lock(&g->lock);
    for (unsigned i = 0; i < g->n; i++) {
        gateway *o = g->gw[i];
        if (i == gw->index || !o || !o->wake_open || o->closing)
            continue;
        scrape_ask *a = malloc(sizeof(*a));
        if (!a)
            continue;
        a->sc = sc;
        a->next = o->scrapes;
        o->scrapes = a;
        sc->refs++;
        sc->pending++;
        uv_async_send(&o->wake);
    }
    bool all_in = sc->pending == 0;
    uv_mutex_unlock(&g->lock);
    sc->next = gw->waiting;
    gw->waiting = sc;
    uv_timer_start(&sc->timer, scrape_timeout, GW_SCRAPE_MS, 0);
    if (all_in)
        scrape_finish(sc);
}

/* Another loop's scrape asked for this loop's part (on this loop). */
static void scrape_render(gateway *gw, scrape_ask *a, bool render)
{
    gateway_group *g = gw->grp;
    buf b;
    buf_init(&b, 64u << 20);
    int rc = render ? render_part(gw, &b) : -ECANCELED;
    uv_mutex_lock(&g->lock);
    scrape *sc = a->sc;
    if (!sc->closed && !rc) {
        buf t = sc->part[gw->index];
        sc->part[gw->index] = b;
        b = t;
    }
    if (--sc->pending == 0 && !sc->closed && sc->origin->wake_open)
        uv_async_send(&sc->origin->wake);
    scrape_unref_locked(sc, g);
    uv_mutex_unlock(&g->lock);
    buf_free(&b);
    free(a);
}

/* A request that arrives while the key cache's first load is under way
 * (the instance has just started and the database is answering) waits for
 * the load, up to GW_PARK_MS, rather than get a 503 key_store_unavailable:
 * a proxy in front does not retry a POST it has sent. When the database is
 * known to be away the 503 comes at once, as before. Health checks, metrics
 * and the admin API never wait, nor do config keys. */
#define GW_PARK_MS 5000
#define GW_PARK_TICK_MS 10

typedef struct parked {
    http_req *req; /* NULL once aborted */
    uint64_t until_ns;
    struct parked *prev, *next;
} parked;

static void on_request_now(gateway *gw, http_req *req);

static void park_unlink(gateway *gw, parked *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        gw->parked = p->next;
    if (p->next)
        p->next->prev = p->prev;
}

static void park_abort(http_req *req, void *ud)
{
    (void)req;
    parked *p = ud;
    p->req = NULL; /* freed by park_tick or gateway_close */
}

static void park_tick(uv_timer_t *t)
{
    gateway *gw = t->data;
    bool wait = store_loading(gw->store) && !http_server_draining(gw->srv);
    uint64_t now = clock_mono_ns();
    for (parked *p = gw->parked, *next; p; p = next) {
        next = p->next;
        if (p->req && wait && now < p->until_ns)
            continue;
        park_unlink(gw, p);
        http_req *req = p->req;
        free(p);
        if (req) {
            req->on_abort = NULL;
            req->app = NULL;
            on_request_now(gw, req);
        }
    }
    if (!gw->parked)
        uv_timer_stop(&gw->park_timer);
}

static bool park_request(gateway *gw, http_req *req)
{
    if (!gw->store || gw->closing || !store_loading(gw->store))
        return false;
    bool prefixed = req->path.len >= 7 && (memcmp(req->path.p, "/health", 7) == 0 ||
                                           memcmp(req->path.p, "/admin/", 7) == 0);
    if (prefixed || slice_eq(req->path, "/metrics"))
        return false;
    slice k = presented_key(req);
    if (!k.len)
        return false;
    uint8_t d[CRYPTO_SHA256_LEN];
    crypto_sha256(k.p, k.len, d);
    if (config_find_key_digest(gw->cfg, d))
        return false; /* a config key needs no cache */
    if (!gw->park_timer.data) {
        if (uv_timer_init(gw->loop, &gw->park_timer) != 0)
            return false;
        gw->park_timer.data = gw;
    }
    parked *p = calloc(1, sizeof(*p));
    if (!p)
        return false;
    p->req = req;
    p->until_ns = clock_mono_ns() + (uint64_t)GW_PARK_MS * 1000000u;
    p->next = gw->parked;
    if (gw->parked)
        gw->parked->prev = p;
    gw->parked = p;
    req->app = p;
    req->on_abort = park_abort;
    if (!uv_is_active((uv_handle_t *)&gw->park_timer))
        uv_timer_start(&gw->park_timer, park_tick, GW_PARK_TICK_MS, GW_PARK_TICK_MS);
    return true;
}

static void on_request(http_req *req, void *ud)
{
    gateway *gw = ud;
    if (park_request(gw, req))
        return;
    on_request_now(gw, req);
}

static void on_request_now(gateway *gw, http_req *req)
{
    if (slice_eq(req->path, "/metrics") && req->method == HTTP_GET) {
        handle_metrics(gw, req);
        return;
    }
    if (slice_eq(req->path, "/admin/providers/health")) {
        handle_provider_health(gw, req);
        return;
    }
    if (req->path.len >= 7 && memcmp(req->path.p, "/admin/", 7) == 0) {
        admin_handle(gw->store, gw->cfg, req);
        return;
    }
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (!slice_eq(req->path, routes[i].path))
            continue;
        if (req->method != routes[i].method) {
            char hdr[64];
            snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", routes[i].allow);
            access_log_simple(gw, req, 405, NULL);
            send_error(req, 405, "invalid_request_error", "method_not_allowed", NULL, hdr,
                       "Method %s is not allowed on %s; use %s.", llhttp_method_name(req->method),
                       routes[i].path, routes[i].allow);
            return;
        }
        routes[i].fn(gw, req);
        return;
    }
    if (route_jobs(gw, req))
        return;
    if (slice_eq(req->path, "/v1/usage")) {
        caller who;
        if (authenticate(gw, req, &chat_format_openai, &who)) {
            admin_key_usage(gw->store, gw->cfg, req, who.key ? who.key->e.id.s : NULL, who.alias);
            caller_release(&who);
        }
        return;
    }
    if (slice_eq(req->path, "/webhooks/payments")) {
        admin_payment_webhook(gw->store, gw->cfg, req);
        return;
    }
    access_log_simple(gw, req, 404, NULL);
    char path[160];
    size_t n = req->path.len < 120 ? req->path.len : 120;
    /* the path is echoed in a JSON string: escaping happens in send_error */
    memcpy(path, req->path.p, n);
    path[n] = '\0';
    send_error(req, 404, "invalid_request_error", "unknown_url", NULL, NULL,
               "Unknown request URL: %s %s.", llhttp_method_name(req->method), path);
}

/* ------------------------------------------------------------ lifecycle */

/* Builds (or finds) the TLS client config of every https provider now. */
static void tls_prewarm(gateway *gw, const config *cfg)
{
    tls_config **held = calloc(cfg->nproviders ? cfg->nproviders : 1, sizeof(*held));
    size_t n = 0;
    for (size_t i = 0; held && i < cfg->nproviders; i++) {
        const config_provider *p = &cfg->providers[i];
        if (p->type == CONFIG_PROVIDER_MOCK || !p->url.tls)
            continue;
        if (tls_config_acquire(p->ca_file, p->tls_verify, &held[n]) == 0)
            n++;
        else
            log_warn(NULL, "provider %s: TLS setup failed (ca_file?); its calls will fail", p->name);
    }
    for (size_t i = 0; i < gw->ntls; i++)
        tls_config_release(gw->tls[i]);
    free(gw->tls);
    gw->tls = held;
    gw->ntls = n;
}

static http_limits limits_of(const config *cfg)
{
    http_limits l = {
        .max_header_bytes = cfg->max_header_bytes,
        .max_headers = cfg->max_headers,
        .max_body_bytes = cfg->max_body_bytes,
        .header_timeout_ms = cfg->header_timeout_ms,
        .body_timeout_ms = cfg->body_timeout_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .send_timeout_ms = cfg->idle_timeout_ms,
    };
    return l;
}

static void gateway_fatal(void *ud, const char *msg);

/* A budget passed its soft threshold (once per period, whichever instance
 * saw it): a log line and the signed alert webhook. */
static void budget_alert(void *ud, const char *scope, const char *id, int64_t max, int64_t spent,
                         int64_t reset_at_us, unsigned pct)
{
    gateway *gw = ud;
    char m[MONEY_FMT_MAX], sp[MONEY_FMT_MAX], reset[40] = "null";
    money_format(max, m, sizeof m);
    money_format(spent, sp, sizeof sp);
    if (reset_at_us > 0) {
        time_t t = (time_t)(reset_at_us / 1000000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(reset, sizeof reset, "\"%Y-%m-%dT%H:%M:%SZ\"", &tm);
    }
    /* a config key's budget is named by its alias (its id is derived) */
    const config_key *ck = NULL;
    for (size_t i = 0; strcmp(scope, "config") == 0 && i < gw->cfg->nkeys && !ck; i++)
        if (strcmp(gw->cfg->keys[i].budget_id, id) == 0)
            ck = &gw->cfg->keys[i];
    log_warn(NULL, "budget %s %s%s%s passed %u%%: %s of %s USD spent (resets %s)", scope, id,
             ck ? " of key " : "", ck ? ck->alias : "", pct, sp, m, reset);
    buf b;
    buf_init(&b, 4096);
    int rc = buf_printf(&b,
                        "{\"event\":\"budget.soft_threshold\",\"scope\":\"%s\",\"id\":\"%s\","
                        "\"threshold_pct\":%u,\"max\":\"%s\",\"spent\":\"%s\",\"reset_at\":%s,"
                        "\"instance\":\"",
                        scope, id, pct, m, sp, reset);
    if (!rc)
        rc = buf_append_json_escaped(&b, gw->instance, strlen(gw->instance));
    if (!rc && ck)
        rc = buf_append_str(&b, "\",\"key_alias\":\"");
    if (!rc && ck)
        rc = buf_append_json_escaped(&b, ck->alias, strlen(ck->alias));
    if (!rc)
        rc = buf_append_str(&b, "\"}");
    if (!rc)
        alerts_send(gw->pool, gw->cfg, "budget.soft_threshold", b.data, b.len);
    buf_free(&b);
}

/* This instance's id: the config's instance_id, else the one kept in the
 * spool directory (made at the first start: host name + 32 random bits),
 * so a restarted instance finds its own spool and leases again. Start-up
 * only (blocking file I/O). */
static int instance_id(const config *cfg, char *out, size_t cap)
{
    char path[4200], host[64] = "tollgate";
    if (cfg->instance_id) {
        snprintf(out, cap, "%s", cfg->instance_id);
        return 0;
    }
    if (mkdir(cfg->ledger.spool_dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    snprintf(path, sizeof(path), "%s/instance", cfg->ledger.spool_dir);
    FILE *f = fopen(path, "re");
    if (f) {
        bool ok = fgets(out, (int)cap, f) != NULL;
        fclose(f);
        out[strcspn(out, "\r\n")] = '\0';
        if (ok && out[0])
            return 0;
    }
    uint8_t rnd[4];
    char hex[9];
    if (crypto_random(rnd, sizeof(rnd)) != 0)
        return -EIO;
    crypto_hex(rnd, sizeof(rnd), hex);
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    snprintf(out, cap, "%s-%s", host, hex);
    f = fopen(path, "we");
    if (!f)
        return -errno;
    fprintf(f, "%s\n", out);
    return fclose(f) == 0 ? 0 : -EIO;
}

static void ledger_recover(void *ud)
{
    gateway *gw = ud;
    if (gw->ledger)
        ledger_kick(gw->ledger);
}

/* The ledger: rows spooled under ledger.spool_dir, shipped to the store's
 * database when there is one. False (logged) when it cannot start: the
 * daemon then refuses to run rather than serve unmetered. */
static bool ledger_setup(gateway *gw, const config *cfg)
{
    char err[512];
    gateway_group *g = gw->grp;
    if (gw->index > 0) { /* the first worker's ledger; leases under an id of its own */
        gw->ledger = g->ledger;
        snprintf(gw->instance, sizeof(gw->instance), "%s/w%u", g->instance, gw->index);
        return g->ledger != NULL;
    }
    int rc = instance_id(cfg, g->instance, sizeof(g->instance));
    if (rc != 0) {
        log_error(NULL, "ledger: cannot keep the instance id in %s: %s", cfg->ledger.spool_dir,
                  strerror(-rc));
        return false;
    }
    snprintf(gw->instance, sizeof(gw->instance), "%s", g->instance);
    ledger_options lo = {
        .spool_dir = cfg->ledger.spool_dir,
        .instance = g->instance,
        .spool_interval_ms = cfg->ledger.spool_interval_ms,
        .batch_rows = cfg->ledger.batch_rows,
        .ship_interval_ms = cfg->ledger.ship_interval_ms,
        .spool_max_bytes = cfg->ledger.spool_max_bytes,
    };
    gw->ledger = ledger_new(gw->loop, &lo, gw->store ? store_ledger_sink : NULL, gw->store, err,
                            sizeof err);
    if (!gw->ledger) {
        log_error(NULL, "%s", err);
        return false;
    }
    g->ledger = gw->ledger;
    if (gw->store)
        store_on_recover(gw->store, ledger_recover, gw);
    log_info(NULL, "ledger: instance %s, spool %s%s", gw->instance, cfg->ledger.spool_dir,
             gw->store ? "" : " (DB-less: the spool is the ledger)");
    return true;
}

/* After a peak of calls (thousands of streams held at once) the heap
 * keeps what they freed: glibc returns it only from the top. Once the
 * calls in flight have fallen to a quarter of the peak, malloc_trim gives
 * the free pages back (a few ms on a large heap, every GW_TRIM_MS at
 * most). */
#define GW_TRIM_MS 5000
#define GW_TRIM_PEAK 64

static void trim_tick(uv_timer_t *t)
{
    gateway *gw = t->data;
    if (gw->inflight_peak < GW_TRIM_PEAK || gw->inflight > gw->inflight_peak / 4)
        return;
    malloc_trim(0);
    gw->inflight_peak = gw->inflight;
}

static void wake_cb(uv_async_t *a);

static void flush_cb(uv_prepare_t *h)
{
    (void)h;
    log_access_flush();
}

/* The tokenizer data and the price catalog: read once for every worker. */
static void group_load(gateway_group *g, const config *cfg)
{
    if (g->toks_loaded)
        return;
    g->toks_loaded = true;
    char err[600];
    if (tok_set_load(&g->toks, cfg->tokenizer_dir, err, sizeof err) == 2)
        log_info(NULL, "tokenizer: o200k_base and cl100k_base from %s", g->toks.dir);
    else
        log_warn(NULL, "tokenizer data incomplete (%s): token counts for calls without provider "
                       "usage are estimates", err);
    const char *pf = cfg->prices_file ? cfg->prices_file : prices_default_file();
    g->prices = pf ? prices_load_file(pf, err, sizeof err) : NULL;
    if (!g->prices)
        log_warn(NULL, "price catalog not loaded (%s): costs only for models with a configured price",
                 pf ? err : "no catalog file found");
}

gateway_group *gateway_group_new(unsigned n)
{
    if (n < 1 || n > GW_MAX_WORKERS)
        return NULL;
    gateway_group *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    if (uv_mutex_init(&g->lock) != 0) {
        free(g);
        return NULL;
    }
    g->n = n;
    g->leases_pending = n;
    return g;
}

void gateway_group_free(gateway_group *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < GW_RATE_SLOTS; i++) {
        rate_bucket *b = g->rates[i];
        while (b) {
            rate_bucket *n = b->next;
            free(b);
            b = n;
        }
    }
    for (local_budget *b = g->local, *n; b; b = n) {
        n = b->next;
        free(b);
    }
    tok_set_free(&g->toks);
    prices_free(g->prices);
    uv_mutex_destroy(&g->lock);
    free(g);
}

gateway *gateway_new(uv_loop_t *loop, const config *cfg, gateway_group *grp, unsigned index)
{
    if (!grp || index >= grp->n)
        return NULL;
    gateway *gw = calloc(1, sizeof(*gw));
    if (!gw)
        return NULL;
    gw->loop = loop;
    gw->grp = grp;
    gw->index = index;
    gw->cfg = config_ref(cfg);
    http_limits l = limits_of(cfg);
    gw->srv = http_server_new(loop, &l, on_request, gw);
    gw->pool = httpc_pool_new(loop);
    gw->metrics = metrics_new(cfg->metrics_key_labels);
    if (!gw->srv || !gw->pool || !gw->metrics || uv_async_init(loop, &gw->wake, wake_cb) != 0) {
        gateway_free(gw);
        return NULL;
    }
    gw->wake_open = true;
    gw->wake.data = gw;
    uv_unref((uv_handle_t *)&gw->wake);
    if (log_access_batch(1) == 0 && uv_prepare_init(loop, &gw->flush) == 0) {
        gw->flush.data = gw;
        uv_prepare_start(&gw->flush, flush_cb);
        uv_unref((uv_handle_t *)&gw->flush);
    }
    tls_prewarm(gw, cfg);
    char err[600];
    group_load(grp, cfg);
    gw->toks = &grp->toks;
    gw->prices = grp->prices;
    gw->work = tok_work_new();
    gw->routes = route_table_new(cfg, gw->prices);
    if (!gw->routes || uv_timer_init(loop, &gw->retry_timer) != 0) {
        gateway_free(gw);
        return NULL;
    }
    gw->retry_timer.data = gw;
    if (uv_timer_init(loop, &gw->trim_timer) == 0) {
        gw->trim_timer.data = gw;
        uv_timer_start(&gw->trim_timer, trim_tick, GW_TRIM_MS, GW_TRIM_MS);
        uv_unref((uv_handle_t *)&gw->trim_timer);
    }
    if (grp->n > 1 && uv_timer_init(loop, &gw->state_timer) == 0) {
        gw->state_timer.data = gw;
        uv_timer_start(&gw->state_timer, state_tick, 0, 100);
        uv_unref((uv_handle_t *)&gw->state_timer);
    }
    gw->checks = checks_new(loop, gw->pool, cfg, &gw->routes);
    if (cfg->database.url) {
        gw->store = store_new(loop, NULL, cfg, gateway_fatal, gw, err, sizeof err);
        if (!gw->store) {
            log_error(NULL, "database: %s", err);
            gateway_close(gw);
            gw->failed = true;
            return gw;
        }
    }
    if (!ledger_setup(gw, cfg)) {
        gateway_close(gw);
        gw->failed = true;
        return gw;
    }
    if (index == 0)
        local_rebuild(gw, cfg);
    gw->jobs = jobs_new(gw->store);
    if (gw->store) {
        store_on_notify(gw->store, jobs_notified, gw);
        gw->leases = leases_new(loop, gw->store, gw->instance, cfg->budgets.lease_ttl_ms,
                                cfg->budgets.wait_ms);
        gw->ratelimits = ratelimits_new(loop, gw->store, cfg->budgets.wait_ms);
        if (gw->leases)
            leases_on_alert(gw->leases, cfg->budgets.soft_pct, budget_alert, gw);
    }
    uv_mutex_lock(&grp->lock);
    grp->gw[index] = gw;
    uv_mutex_unlock(&grp->lock);
    return gw;
}

static void gateway_fatal(void *ud, const char *msg)
{
    gateway *gw = ud;
    if (gw->fatal)
        gw->fatal(gw->fatal_ud, msg);
}

void gateway_on_fatal(gateway *gw, void (*cb)(void *ud, const char *msg), void *ud)
{
    gw->fatal = cb;
    gw->fatal_ud = ud;
}

int gateway_start(gateway *gw, uint16_t port)
{
    if (gw->failed)
        return -EINVAL;
    if (gw->grp->n > 1)
        return http_server_listen_reuseport(gw->srv, gw->cfg->listen.host, port);
    return http_server_listen(gw->srv, gw->cfg->listen.host, port);
}

uint16_t gateway_port(const gateway *gw) { return http_server_port(gw->srv); }
uint64_t gateway_inflight(const gateway *gw) { return gw->inflight; }

void gateway_reload(gateway *gw, const config *cfg)
{
    const char *fixed = config_restart_only_change(gw->cfg, cfg);
    if (fixed)
        log_warn(NULL, "reload: '%s' changed but needs a restart; keeping the running value", fixed);
    const config *old = gw->cfg;
    gw->cfg = config_ref(cfg);
    metrics_set_key_labels(gw->metrics, cfg->metrics_key_labels);
    /* the mock counters follow provider positions; start them afresh */
    free(gw->mocks);
    gw->mocks = NULL;
    gw->nmocks = 0;
    http_limits l = limits_of(cfg);
    http_server_set_limits(gw->srv, &l);
    tls_prewarm(gw, cfg);
    /* the routes of the new config, their state afresh (calls in flight
     * keep their own sets) */
    route_table *rt = route_table_new(cfg, gw->prices);
    if (rt) {
        route_table_free(gw->routes);
        gw->routes = rt;
        checks_close(gw->checks);
        gw->checks = checks_new(gw->loop, gw->pool, cfg, &gw->routes);
    } else {
        log_error(NULL, "reload: out of memory for the routes; keeping the old ones");
    }
    if (gw->store)
        store_reconfigure(gw->store, cfg);
    config_unref(old);
}

static void ledger_drained(void *ud)
{
    gateway *gw = ud;
    ledger_stats st;
    ledger_stats_get(gw->ledger, &st);
    log_info(NULL, "ledger drained: %" PRIu64 " rows shipped, %" PRIu64 " bytes left in the spool",
             st.rows_shipped, st.backlog_bytes);
    gw->drained(gw->drained_ud);
}

/* The first worker drains the ledger once every worker has returned its
 * leases (their calls have all ended: no row comes after). */
static void ledger_drain_maybe(gateway *gw)
{
    if (gw->index != 0 || !gw->leases_done || !gw->drained)
        return;
    uv_mutex_lock(&gw->grp->lock);
    unsigned pending = gw->grp->leases_pending;
    uv_mutex_unlock(&gw->grp->lock);
    if (pending)
        return;
    void (*done)(void *) = gw->drained;
    if (gw->ledger) {
        gw->leases_done = false; /* once */
        ledger_drain(gw->ledger, ledger_drained, gw);
    } else {
        gw->drained = NULL;
        done(gw->drained_ud);
    }
}

static void leases_drained(void *ud)
{
    gateway *gw = ud;
    gateway_group *g = gw->grp;
    gw->leases_done = true;
    uv_mutex_lock(&g->lock);
    g->leases_pending--;
    gateway *first = g->gw[0];
    if (gw->index > 0 && first && first->wake_open)
        uv_async_send(&first->wake);
    uv_mutex_unlock(&g->lock);
    if (gw->index > 0) {
        void (*done)(void *) = gw->drained;
        gw->drained = NULL;
        if (done)
            done(gw->drained_ud);
        return;
    }
    ledger_drain_maybe(gw);
}

/* After the last connection: report spend and return the leases, then
 * flush the ledger. Connections still backing off from an outage try
 * again now: the drain cannot wait out a backoff. */
static void http_drained(void *ud)
{
    gateway *gw = ud;
    if (gw->store)
        pg_pool_retry_now(store_pool(gw->store));
    if (gw->leases)
        leases_drain(gw->leases, leases_drained, gw);
    else
        leases_drained(gw);
}

void gateway_drain(gateway *gw, void (*done)(void *), void *ud)
{
    if (gw->drained || gw->closing)
        return;
    gw->drained = done;
    gw->drained_ud = ud;
    __atomic_store_n(&gw->grp->state[gw->index], 1, __ATOMIC_RELAXED);
    http_server_drain(gw->srv, http_drained, gw);
}

/* Other threads' requests to this loop: a reload, a drain, a close, parts
 * of scrapes, scrapes whose parts are all in, the other workers' drains
 * (the first worker's ledger waits for them). */
static void wake_cb(uv_async_t *a)
{
    gateway *gw = a->data;
    gateway_group *g = gw->grp;
    uv_mutex_lock(&g->lock);
    const config *cfg = gw->post_cfg;
    gw->post_cfg = NULL;
    bool drain = gw->post_drain, close = gw->post_close;
    gw->post_drain = gw->post_close = false;
    scrape_ask *asks = gw->scrapes;
    gw->scrapes = NULL;
    uv_mutex_unlock(&g->lock);
    while (asks) {
        scrape_ask *n = asks->next;
        scrape_render(gw, asks, !gw->closing);
        asks = n;
    }
    for (;;) { /* this loop's scrapes whose parts are all in */
        scrape *ready = NULL;
        uv_mutex_lock(&g->lock);
        for (scrape *sc = gw->waiting; sc && !ready; sc = sc->next)
            if (sc->pending == 0)
                ready = sc;
        uv_mutex_unlock(&g->lock);
        if (!ready)
            break;
        scrape_finish(ready);
    }
    if (cfg) {
        if (!gw->closing)
            gateway_reload(gw, cfg);
        config_unref(cfg);
    }
    if (drain && !gw->closing)
        gateway_drain(gw, gw->post_drained, gw->post_drained_ud);
    if (close)
        gateway_close(gw);
    ledger_drain_maybe(gw);
}

void gateway_post_reload(gateway *gw, const config *cfg)
{
    uv_mutex_lock(&gw->grp->lock);
    if (gw->post_cfg)
        config_unref(gw->post_cfg);
    gw->post_cfg = config_ref(cfg);
    if (gw->wake_open)
        uv_async_send(&gw->wake);
    uv_mutex_unlock(&gw->grp->lock);
}

void gateway_post_drain(gateway *gw, void (*done)(void *), void *ud)
{
    uv_mutex_lock(&gw->grp->lock);
    gw->post_drain = true;
    gw->post_drained = done;
    gw->post_drained_ud = ud;
    __atomic_store_n(&gw->grp->state[gw->index], 1, __ATOMIC_RELAXED);
    if (gw->wake_open)
        uv_async_send(&gw->wake);
    uv_mutex_unlock(&gw->grp->lock);
}

void gateway_post_close(gateway *gw)
{
    uv_mutex_lock(&gw->grp->lock);
    gw->post_close = true;
    if (gw->wake_open)
        uv_async_send(&gw->wake);
    uv_mutex_unlock(&gw->grp->lock);
}

void gateway_close(gateway *gw)
{
    if (gw->closing)
        return;
    gw->closing = true;
    __atomic_store_n(&gw->grp->state[gw->index], 1, __ATOMIC_RELAXED);
    /* scrapes of this loop: answered with what is in (their clients are
     * being cut anyway); parts asked of it: given up */
    while (gw->waiting)
        scrape_finish(gw->waiting);
    uv_mutex_lock(&gw->grp->lock);
    scrape_ask *asks = gw->scrapes;
    gw->scrapes = NULL;
    uv_mutex_unlock(&gw->grp->lock);
    while (asks) {
        scrape_ask *n = asks->next;
        scrape_render(gw, asks, false);
        asks = n;
    }
    http_server_close_all(gw->srv);
    checks_close(gw->checks); /* aborts its calls before the pool closes */
    gw->checks = NULL;
    httpc_pool_close(gw->pool);
    if (gw->retry_timer.data)
        uv_close((uv_handle_t *)&gw->retry_timer, NULL);
    if (gw->trim_timer.data)
        uv_close((uv_handle_t *)&gw->trim_timer, NULL);
    if (gw->state_timer.data)
        uv_close((uv_handle_t *)&gw->state_timer, NULL);
    if (gw->flush.data) { /* the lines of calls ended from here on go out at once */
        log_access_batch(0);
        uv_close((uv_handle_t *)&gw->flush, NULL);
    }
    while (gw->parked) { /* their requests were aborted by close_all */
        parked *p = gw->parked;
        park_unlink(gw, p);
        free(p);
    }
    if (gw->park_timer.data)
        uv_close((uv_handle_t *)&gw->park_timer, NULL);
    if (gw->ledger && gw->index == 0)
        ledger_close(gw->ledger);
    if (gw->leases)
        leases_close(gw->leases);
    if (gw->ratelimits)
        ratelimits_close(gw->ratelimits);
    if (gw->store)
        store_close(gw->store);
    if (gw->wake_open) {
        uv_mutex_lock(&gw->grp->lock);
        gw->wake_open = false; /* no thread sends to it from here on */
        uv_mutex_unlock(&gw->grp->lock);
        uv_close((uv_handle_t *)&gw->wake, NULL);
    }
}

void gateway_free(gateway *gw)
{
    if (!gw)
        return;
    if (gw->flush.data && !gw->closing)
        log_access_batch(0);
    if (gw->grp) {
        uv_mutex_lock(&gw->grp->lock);
        if (gw->grp->gw[gw->index] == gw)
            gw->grp->gw[gw->index] = NULL;
        if (gw->post_cfg)
            config_unref(gw->post_cfg);
        gw->post_cfg = NULL;
        uv_mutex_unlock(&gw->grp->lock);
    }
    if (gw->srv)
        http_server_free(gw->srv);
    for (size_t i = 0; i < gw->ntls; i++)
        tls_config_release(gw->tls[i]);
    free(gw->tls);
    free(gw->mocks);
    tok_work_free(gw->work);
    route_table_free(gw->routes);
    if (gw->index == 0)
        ledger_free(gw->ledger);
    metrics_free(gw->metrics);
    jobs_free(gw->jobs);
    leases_free(gw->leases);
    ratelimits_free(gw->ratelimits);
    store_free(gw->store);
    config_unref(gw->cfg);
    free(gw);
}
