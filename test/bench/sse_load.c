/* sse_load.c - an SSE load client for test/bench/proof.sh (not part of the
 * build or the tests; proof.sh compiles it with cc, libuv and Debian's
 * llhttp sources).
 *
 * It POSTs an OpenAI chat completion with "stream": true and reads the
 * answer as it arrives, in one of two modes:
 *
 *   loop (default)  -c N connections, each sending one stream after the
 *                   other on a keep-alive connection for -d seconds: streams
 *                   per second, time to first token and time to the end of
 *                   the stream (p50/p90/p99). Streams still running at the
 *                   deadline are not counted.
 *   hold (-M)       -c N streams, one per connection, opened at -r per
 *                   second, all held open until the upstream ends them (a
 *                   slow upstream: -t tokens at its pace): how many were
 *                   open at once and for how long, how many failed, and
 *                   stalls (a gap longer than -s ms between two reads of a
 *                   stream). With -p PID it samples VmRSS of that process
 *                   every 200 ms and reports the peak.
 *
 * Time to first token: from the request being written to the first read
 * holding a non-empty "content":"..." delta (the mock's first event is the
 * role with empty content). A stream counts as complete only if the HTTP
 * message ended and "data: [DONE]" was seen; status >= 400, a reset or a
 * close before that count as failures.
 *
 * Usage: sse_load [-M] -c N [-d S] [-r RATE] [-t TOKENS] [-s STALL_MS]
 *                 [-T TIMEOUT_S] [-p PID] -k KEY -m MODEL [-H 'Name: v']... URL
 * URL is http://127.0.0.1:PORT/path (plain HTTP, IPv4 literal only).
 * Prints one line, "SSELOOP key=value ..." or "SSEHOLD key=value ...", on
 * stdout; progress in hold mode on stderr. Exit 0 when it ran (the caller
 * judges the numbers), 2 on a usage error. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <llhttp.h>
#include <uv.h>

#define MAX_HEADERS 8
#define READ_BUF (64 * 1024)
#define MAX_PENDING_CONNECTS 512 /* hold mode: connects in flight at once */

/* ---- settings ------------------------------------------------------------ */

static struct {
    bool hold;                    /* -M: hold mode */
    unsigned conns;               /* -c */
    double duration_s;            /* -d: loop mode */
    unsigned rate;                /* -r: hold mode, connections opened per second */
    unsigned max_tokens;          /* -t: "max_tokens" of the body, 0 = none */
    unsigned stall_ms;            /* -s: hold mode, a gap longer than this is a stall */
    unsigned timeout_s;           /* -T: hold mode, give up after this */
    int watch_pid;                /* -p: VmRSS sampled, 0 = none */
    const char *key, *model;      /* -k, -m */
    const char *hdr[MAX_HEADERS]; /* -H */
    unsigned nhdr;
    char host[64];
    int port;
    char path[512];
} opt = {.conns = 1, .duration_s = 10, .rate = 2000, .stall_ms = 3000, .timeout_s = 120};

static char *request;       /* the whole request, built once, shared by every write */
static size_t request_len;
static struct sockaddr_in addr;
static uv_loop_t *loop;

/* ---- results ------------------------------------------------------------- */

/* A growing array of microsecond samples (percentiles at the end). */
typedef struct samples {
    uint32_t *v;
    size_t n, cap;
} samples;

static void samples_add(samples *s, uint64_t us)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        uint32_t *v = realloc(s->v, cap * sizeof(*v));
        if (!v) {
            fprintf(stderr, "sse_load: out of memory\n");
            exit(1);
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* p-th percentile (0..100) of s, sorted in place; 0 when empty */
static uint32_t samples_pct(samples *s, double p)
{
    if (!s->n)
        return 0;
    qsort(s->v, s->n, sizeof(*s->v), cmp_u32);
    size_t i = (size_t)(p / 100.0 * (double)s->n);
    if (i >= s->n)
        i = s->n - 1;
    return s->v[i];
}

static struct {
    uint64_t started, completed, failed;
    uint64_t status_errors, conn_errors, read_errors, no_done, ttft_fallback;
    uint64_t chunks;        /* reads carrying body bytes, all streams */
    uint64_t open_now;      /* hold: streams with a 200 head, not yet ended */
    uint64_t open_peak;     /* hold: most open at once */
    uint64_t all_open_ns;   /* hold: when open_now first reached conns (0 = never) */
    uint64_t first_end_ns;  /* hold: when the first stream ended after all_open */
    uint64_t stalled;       /* hold: streams with a gap > stall_ms */
    uint64_t max_gap_ns;    /* hold: the longest gap of any stream */
    uint64_t connected;     /* TCP connections established */
    uint64_t rss_before_kb, rss_peak_kb, rss_all_open_kb, hwm_kb;
    samples ttft, total, gap;
    uint64_t status_count[600]; /* answers per HTTP status */
    bool error_body_shown;      /* the first error answer's body went to stderr */
} R;

/* ---- one connection ------------------------------------------------------- */

/* The states a connection goes through. */
enum conn_state {
    C_CONNECTING, /* waiting on uv_tcp_connect */
    C_WAITING,    /* request written or being written, no head yet */
    C_STREAMING,  /* head arrived, reading the body */
    C_IDLE,       /* loop mode: between two streams */
    C_CLOSING,    /* uv_close called, freed in on_close */
};

typedef struct conn {
    uv_tcp_t tcp;          /* the socket; the conn is freed in its close callback */
    uv_connect_t creq;     /* the connect request */
    uv_write_t wreq;       /* the one write in flight (the request) */
    llhttp_t parser;       /* response parser, reset per stream */
    enum conn_state state; /* where this connection is */
    bool counted_open;     /* hold: counted in R.open_now */
    bool ended;            /* this stream was counted as completed or failed */
    bool got_token;        /* a non-empty content delta was seen */
    bool done_seen;        /* "[DONE]" was seen */
    unsigned m_content;    /* bytes of "\"content\":\"" matched so far */
    unsigned m_done;       /* bytes of "[DONE]" matched so far */
    int status;            /* HTTP status of the current answer */
    uint64_t t_sent;       /* request written (uv_write called) */
    uint64_t t_token;      /* first non-empty content delta (0 = not yet) */
    uint64_t t_body;       /* first body byte (0 = not yet) */
    uint64_t t_last;       /* hold: last read with body bytes (or t_sent) */
    uint64_t max_gap;      /* hold: this stream's longest gap */
    bool show_body;        /* copy this (error) answer's body to stderr */
} conn;

static llhttp_settings_t settings;
static bool running = true; /* loop mode: false after the deadline */
static uint64_t t_start, t_deadline;
static unsigned opened;          /* hold: connections started so far */
static unsigned pending_connect; /* hold: connects not yet answered */
static uv_timer_t ramp_timer, tick_timer, stop_timer;

static void conn_start(void);
static void conn_send(conn *c);

static void on_close(uv_handle_t *h)
{
    conn *c = h->data;
    free(c);
    if (!opt.hold && running)
        conn_start(); /* loop mode keeps -c connections */
}

static void stream_end(conn *c, bool ok)
{
    if (c->ended)
        return;
    c->ended = true;
    uint64_t now = uv_hrtime();
    if (c->counted_open) {
        c->counted_open = false;
        R.open_now--;
        if (R.all_open_ns && !R.first_end_ns)
            R.first_end_ns = now;
    }
    if (!ok) {
        R.failed++;
        return;
    }
    uint64_t first = c->got_token ? c->t_token : c->t_body ? c->t_body : now;
    if (opt.hold) {
        samples_add(&R.ttft, (first - c->t_sent) / 1000);
        uint64_t gap = now - c->t_last;
        if (gap > c->max_gap)
            c->max_gap = gap;
        R.completed++;
        if (c->max_gap > R.max_gap_ns)
            R.max_gap_ns = c->max_gap;
        if (c->max_gap > (uint64_t)opt.stall_ms * 1000000)
            R.stalled++;
        samples_add(&R.gap, c->max_gap / 1000);
        return;
    }
    if (now > t_deadline)
        return; /* ended after the deadline: not counted */
    R.completed++;
    samples_add(&R.ttft, (first - c->t_sent) / 1000);
    samples_add(&R.total, (now - c->t_sent) / 1000);
}

static void conn_close(conn *c)
{
    if (c->state == C_CLOSING)
        return;
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

/* an error on a stream in flight: a failure, unless loop mode has stopped */
static void conn_fail(conn *c, uint64_t *counter)
{
    if (c->state == C_WAITING || c->state == C_STREAMING) {
        if (running || opt.hold) {
            (*counter)++;
            stream_end(c, false);
        }
    }
    conn_close(c);
}

static int on_headers_complete(llhttp_t *p)
{
    conn *c = p->data;
    c->status = p->status_code;
    c->state = C_STREAMING;
    if (c->status > 0 && c->status < 600)
        R.status_count[c->status]++;
    if (c->status >= 400 && !R.error_body_shown) {
        R.error_body_shown = c->show_body = true;
        fprintf(stderr, "sse_load: first error answer: HTTP %d: ", c->status);
    }
    if (opt.hold && c->status == 200) {
        c->counted_open = true;
        R.open_now++;
        if (R.open_now > R.open_peak)
            R.open_peak = R.open_now;
        if (R.open_now == opt.conns && !R.all_open_ns) {
            R.all_open_ns = uv_hrtime();
            fprintf(stderr, "sse_load: all %u streams open after %.1f s\n", opt.conns,
                    (double)(R.all_open_ns - t_start) / 1e9);
        }
    }
    return 0;
}

static const char pat_content[] = "\"content\":\"";
static const char pat_done[] = "[DONE]";

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    conn *c = p->data;
    if (!c->t_body)
        c->t_body = uv_hrtime();
    if (c->show_body)
        fwrite(at, 1, len < 600 ? len : 600, stderr);
    for (size_t i = 0; i < len; i++) {
        char ch = at[i];
        if (!c->got_token) {
            if (c->m_content == sizeof(pat_content) - 1) {
                if (ch != '"') {
                    c->got_token = true;
                    c->t_token = uv_hrtime();
                } else {
                    c->m_content = 1; /* the closing quote may open the next key */
                }
            } else if (ch == pat_content[c->m_content]) {
                c->m_content++;
            } else {
                c->m_content = ch == '"';
            }
        }
        if (!c->done_seen) {
            if (ch == pat_done[c->m_done]) {
                if (++c->m_done == sizeof(pat_done) - 1)
                    c->done_seen = true;
            } else {
                c->m_done = ch == '[';
            }
        }
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn *c = p->data;
    bool ok = true;
    if (c->show_body) {
        c->show_body = false;
        fputc('\n', stderr);
    }
    if (c->status >= 400 || c->status < 200) {
        R.status_errors++;
        ok = false;
    } else if (!c->done_seen) {
        R.no_done++;
        ok = false;
    } else if (!c->got_token) {
        R.ttft_fallback++;
    }
    stream_end(c, ok);
    if (opt.hold || !running || !llhttp_should_keep_alive(p))
        conn_close(c);
    else
        c->state = C_IDLE; /* read_cb sends the next request (not from inside the parser) */
    return HPE_PAUSED;
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    static char mem[READ_BUF]; /* consumed synchronously in read_cb */
    (void)h;
    (void)hint;
    *buf = uv_buf_init(mem, sizeof(mem));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn *c = s->data;
    if (c->state == C_CLOSING)
        return;
    if (n < 0) {
        conn_fail(c, &R.read_errors);
        return;
    }
    if (n == 0)
        return;
    if (c->state == C_STREAMING || c->state == C_WAITING) {
        uint64_t now = uv_hrtime();
        if (opt.hold && c->state == C_STREAMING) {
            uint64_t gap = now - c->t_last;
            if (gap > c->max_gap)
                c->max_gap = gap;
        }
        c->t_last = now;
        R.chunks++;
    }
    if (c->state == C_IDLE)
        return; /* bytes between two answers: none expected */
    llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)n);
    if (c->state == C_CLOSING)
        return;
    if (e == HPE_PAUSED) {
        if (c->state == C_IDLE)
            conn_send(c);
        return;
    }
    if (e != HPE_OK) {
        fprintf(stderr, "sse_load: parse error: %s\n", llhttp_get_error_reason(&c->parser));
        conn_fail(c, &R.read_errors);
    }
}

static void write_cb(uv_write_t *w, int status)
{
    conn *c = w->data;
    if (status < 0 && c->state != C_CLOSING)
        conn_fail(c, &R.conn_errors);
}

static void conn_send(conn *c)
{
    llhttp_init(&c->parser, HTTP_RESPONSE, &settings);
    c->parser.data = c;
    c->state = C_WAITING;
    c->ended = c->got_token = c->done_seen = false;
    c->t_token = c->t_body = 0;
    c->m_content = c->m_done = 0;
    c->status = 0;
    c->max_gap = 0;
    c->show_body = false;
    c->t_sent = c->t_last = uv_hrtime();
    R.started++;
    uv_buf_t b = uv_buf_init(request, (unsigned)request_len);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
    if (rc < 0)
        conn_fail(c, &R.conn_errors);
}

static void connect_cb(uv_connect_t *req, int status)
{
    conn *c = req->data;
    if (opt.hold)
        pending_connect--;
    if (c->state == C_CLOSING)
        return;
    if (status < 0) {
        if (running || opt.hold) {
            R.conn_errors++;
            if (opt.hold)
                R.failed++;
        }
        conn_close(c);
        return;
    }
    R.connected++;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    conn_send(c);
}

static void conn_start(void)
{
    conn *c = calloc(1, sizeof(*c));
    if (!c) {
        fprintf(stderr, "sse_load: out of memory\n");
        exit(1);
    }
    uv_tcp_init(loop, &c->tcp);
    uv_tcp_nodelay(&c->tcp, 1);
    c->tcp.data = c;
    c->creq.data = c;
    c->state = C_CONNECTING;
    if (opt.hold)
        pending_connect++;
    int rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&addr, connect_cb);
    if (rc < 0) {
        if (opt.hold)
            pending_connect--;
        R.conn_errors++;
        if (opt.hold)
            R.failed++;
        else
            running = false; /* loop mode would spin on a local error */
        fprintf(stderr, "sse_load: connect: %s\n", uv_strerror(rc));
        conn_close(c);
    }
}

/* ---- timers ---------------------------------------------------------------- */

static uint64_t vm_kb(const char *field)
{
    char path[64], line[256];
    uint64_t kb = 0;
    size_t flen = strlen(field);
    snprintf(path, sizeof(path), "/proc/%d/status", opt.watch_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
            kb = strtoull(line + flen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (h->type == UV_TCP) {
        conn *c = h->data;
        if (c)
            conn_close(c);
    } else if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static void finish(void)
{
    running = false;
    if (opt.watch_pid)
        R.hwm_kb = vm_kb("VmHWM");
    uv_walk(loop, walk_close, NULL);
}

static void stop_cb(uv_timer_t *t)
{
    (void)t;
    finish();
}

static void ramp_cb(uv_timer_t *t)
{
    unsigned per_tick = opt.rate / 100 ? opt.rate / 100 : 1;
    for (unsigned i = 0; i < per_tick && opened < opt.conns; i++) {
        if (pending_connect >= MAX_PENDING_CONNECTS)
            break;
        opened++;
        conn_start();
    }
    if (opened == opt.conns)
        uv_timer_stop(t);
}

static void tick_cb(uv_timer_t *t)
{
    static unsigned ticks;
    (void)t;
    if (opt.watch_pid) {
        uint64_t kb = vm_kb("VmRSS");
        if (kb > R.rss_peak_kb)
            R.rss_peak_kb = kb;
        if (R.all_open_ns && !R.rss_all_open_kb)
            R.rss_all_open_kb = kb;
    }
    if (!opt.hold)
        return;
    if (++ticks % 25 == 0) /* every 5 s */
        fprintf(stderr,
                "sse_load: %.0f s: opened %u, streaming %" PRIu64 ", completed %" PRIu64
                ", failed %" PRIu64 ", gateway RSS %" PRIu64 " kB\n",
                (double)(uv_hrtime() - t_start) / 1e9, opened, R.open_now, R.completed, R.failed,
                opt.watch_pid ? vm_kb("VmRSS") : 0);
    if (opened == opt.conns && R.completed + R.failed >= opt.conns)
        finish();
}

/* ---- setup ------------------------------------------------------------------ */

static int usage(const char *msg)
{
    fprintf(stderr,
            "sse_load: %s\nusage: sse_load [-M] -c N [-d S] [-r RATE] [-t TOKENS] [-s STALL_MS] "
            "[-T TIMEOUT_S] [-p PID] -k KEY -m MODEL [-H 'Name: v']... http://127.0.0.1:PORT/path\n",
            msg);
    return 2;
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_url(const char *url)
{
    const char *p = url, *colon, *slash;
    if (strncmp(p, "http://", 7) != 0)
        return false;
    p += 7;
    colon = strchr(p, ':');
    slash = strchr(p, '/');
    if (!colon || !slash || colon > slash || (size_t)(colon - p) >= sizeof(opt.host))
        return false;
    memcpy(opt.host, p, (size_t)(colon - p));
    opt.host[colon - p] = '\0';
    char port[8];
    if ((size_t)(slash - colon - 1) >= sizeof(port))
        return false;
    memcpy(port, colon + 1, (size_t)(slash - colon - 1));
    port[slash - colon - 1] = '\0';
    unsigned long v;
    if (!parse_uint(port, 65535, &v) || v == 0)
        return false;
    opt.port = (int)v;
    if (strlen(slash) >= sizeof(opt.path))
        return false;
    snprintf(opt.path, sizeof(opt.path), "%s", slash);
    return uv_ip4_addr(opt.host, opt.port, &addr) == 0;
}

static void build_request(void)
{
    char body[1024], max[32] = "";
    if (opt.max_tokens)
        snprintf(max, sizeof(max), "\"max_tokens\":%u,", opt.max_tokens);
    int blen = snprintf(body, sizeof(body),
                        "{\"model\":\"%s\",\"stream\":true,%s\"messages\":[{\"role\":\"system\","
                        "\"content\":\"You are a helpful assistant.\"},{\"role\":\"user\","
                        "\"content\":\"Hello, how are you today?\"}]}",
                        opt.model, max);
    size_t cap = 4096 + (size_t)blen;
    for (unsigned i = 0; i < opt.nhdr; i++)
        cap += strlen(opt.hdr[i]) + 2;
    request = malloc(cap);
    if (!request)
        exit(1);
    int n = snprintf(request, cap,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                     "Content-Length: %d\r\n",
                     opt.path, opt.host, opt.port, opt.key, blen);
    for (unsigned i = 0; i < opt.nhdr; i++)
        n += snprintf(request + n, cap - (size_t)n, "%s\r\n", opt.hdr[i]);
    n += snprintf(request + n, cap - (size_t)n, "\r\n%s", body);
    request_len = (size_t)n;
}

int main(int argc, char **argv)
{
    int ch;
    unsigned long v;
    while ((ch = getopt(argc, argv, "Mc:d:r:t:s:T:p:k:m:H:")) != -1) {
        switch (ch) {
        case 'M':
            opt.hold = true;
            break;
        case 'c':
            if (!parse_uint(optarg, 1000000, &v) || !v)
                return usage("-c: a positive number");
            opt.conns = (unsigned)v;
            break;
        case 'd': {
            char *end;
            opt.duration_s = strtod(optarg, &end);
            if (end == optarg || *end || !(opt.duration_s > 0) || opt.duration_s > 86400)
                return usage("-d: seconds");
            break;
        }
        case 'r':
            if (!parse_uint(optarg, 1000000, &v) || !v)
                return usage("-r: a positive number");
            opt.rate = (unsigned)v;
            break;
        case 't':
            if (!parse_uint(optarg, 1000000, &v))
                return usage("-t: a number");
            opt.max_tokens = (unsigned)v;
            break;
        case 's':
            if (!parse_uint(optarg, 3600000, &v) || !v)
                return usage("-s: milliseconds");
            opt.stall_ms = (unsigned)v;
            break;
        case 'T':
            if (!parse_uint(optarg, 86400, &v) || !v)
                return usage("-T: seconds");
            opt.timeout_s = (unsigned)v;
            break;
        case 'p':
            if (!parse_uint(optarg, 1u << 30, &v) || !v)
                return usage("-p: a pid");
            opt.watch_pid = (int)v;
            break;
        case 'k':
            opt.key = optarg;
            break;
        case 'm':
            opt.model = optarg;
            break;
        case 'H':
            if (opt.nhdr == MAX_HEADERS)
                return usage("too many -H");
            if (strpbrk(optarg, "\r\n") || !strchr(optarg, ':'))
                return usage("-H: 'Name: value'");
            opt.hdr[opt.nhdr++] = optarg;
            break;
        default:
            return usage("unknown option");
        }
    }
    if (optind != argc - 1 || !opt.key || !opt.model)
        return usage("need -k, -m and one URL");
    if (strpbrk(opt.key, "\r\n\"") || strpbrk(opt.model, "\r\n\"\\"))
        return usage("-k/-m: no quotes or line breaks");
    if (!parse_url(argv[optind]))
        return usage("URL: http://IPV4:PORT/path");

    /* every stream is a socket: as many descriptors as the hard limit allows */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.conns + 64) {
        fprintf(stderr, "sse_load: RLIMIT_NOFILE %llu is too small for %u connections\n",
                (unsigned long long)rl.rlim_cur, opt.conns);
        return 2;
    }

    build_request();
    llhttp_settings_init(&settings);
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;

    loop = uv_default_loop();
    t_start = uv_hrtime();
    if (opt.watch_pid)
        R.rss_before_kb = R.rss_peak_kb = vm_kb("VmRSS");
    uv_timer_init(loop, &tick_timer);
    uv_timer_start(&tick_timer, tick_cb, 200, 200);
    uv_timer_init(loop, &stop_timer);
    if (opt.hold) {
        t_deadline = UINT64_MAX;
        uv_timer_init(loop, &ramp_timer);
        uv_timer_start(&ramp_timer, ramp_cb, 0, 10);
        uv_timer_start(&stop_timer, stop_cb, (uint64_t)opt.timeout_s * 1000, 0);
    } else {
        t_deadline = t_start + (uint64_t)(opt.duration_s * 1e9);
        for (unsigned i = 0; i < opt.conns; i++)
            conn_start();
        uv_timer_start(&stop_timer, stop_cb, (uint64_t)(opt.duration_s * 1000), 0);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    uint64_t t_end = uv_hrtime();

    /* "200:n,503:m" (or "none") */
    char statuses[256] = "none";
    size_t sl = 0;
    for (int st = 0; st < 600 && sl < sizeof(statuses) - 24; st++)
        if (R.status_count[st])
            sl += (size_t)snprintf(statuses + sl, sizeof(statuses) - sl, "%s%d:%" PRIu64,
                                   sl ? "," : "", st, R.status_count[st]);

    if (opt.hold) {
        uint64_t unfinished = opened - R.completed - R.failed;
        double held = 0;
        if (R.all_open_ns)
            held = (double)((R.first_end_ns ? R.first_end_ns : t_end) - R.all_open_ns) / 1e9;
        printf("SSEHOLD streams=%u opened=%u connected=%" PRIu64 " open_peak=%" PRIu64
               " all_open_s=%.2f held_s=%.2f completed=%" PRIu64 " failed=%" PRIu64
               " unfinished=%" PRIu64 " status_errors=%" PRIu64 " conn_errors=%" PRIu64
               " read_errors=%" PRIu64 " no_done=%" PRIu64 " stalled=%" PRIu64
               " stall_ms=%u max_gap_ms=%.0f gap_p99_ms=%.0f ttft_p50_us=%u ttft_p99_us=%u"
               " reads=%" PRIu64 " rss_before_kb=%" PRIu64 " rss_all_open_kb=%" PRIu64
               " rss_peak_kb=%" PRIu64 " hwm_kb=%" PRIu64 " duration_s=%.2f statuses=%s\n",
               opt.conns, opened, R.connected, R.open_peak,
               R.all_open_ns ? (double)(R.all_open_ns - t_start) / 1e9 : -1.0, held,
               R.completed, R.failed, unfinished, R.status_errors, R.conn_errors, R.read_errors,
               R.no_done, R.stalled, opt.stall_ms, (double)R.max_gap_ns / 1e6,
               samples_pct(&R.gap, 99) / 1e3, samples_pct(&R.ttft, 50), samples_pct(&R.ttft, 99),
               R.chunks, R.rss_before_kb, R.rss_all_open_kb, R.rss_peak_kb, R.hwm_kb,
               (double)(t_end - t_start) / 1e9, statuses);
    } else {
        double secs = (double)(t_deadline - t_start) / 1e9;
        printf("SSELOOP conns=%u streams=%" PRIu64 " duration_s=%.2f streams_per_s=%.1f"
               " ttft_p50_us=%u ttft_p90_us=%u ttft_p99_us=%u total_p50_us=%u total_p90_us=%u"
               " total_p99_us=%u failed=%" PRIu64 " status_errors=%" PRIu64
               " conn_errors=%" PRIu64 " read_errors=%" PRIu64 " no_done=%" PRIu64
               " ttft_fallback=%" PRIu64 " reads=%" PRIu64 " statuses=%s\n",
               opt.conns, R.completed, secs, (double)R.completed / secs, samples_pct(&R.ttft, 50),
               samples_pct(&R.ttft, 90), samples_pct(&R.ttft, 99), samples_pct(&R.total, 50),
               samples_pct(&R.total, 90), samples_pct(&R.total, 99), R.failed, R.status_errors,
               R.conn_errors, R.read_errors, R.no_done, R.ttft_fallback, R.chunks, statuses);
    }
    return 0;
}
