/* fuzz_http.c - libFuzzer driver for inbound HTTP handling
 * (daemon/http_server.c: llhttp callbacks, header and body limits, CL/TE
 * conflicts, obs-fold refusal, chunked bodies, Expect, pipelining,
 * keep-alive and request-id handling).
 *
 * The real server listens on 127.0.0.1 on a loop of its own; every input
 * is sent to it over a fresh TCP connection from the same loop:
 *   byte 0  bits 0-1: number of writes (1-4); bits 2-3: the limits (the
 *           daemon's defaults, tiny ones that trip 413/431, or a mix);
 *           bit 4: a slow client (reads on every other turn only, and
 *           the server's send buffer toward it is pinned small), so
 *           responses queue on the server;
 *   byte 1, byte 2: where the input is cut (2 writes: at byte 1; 3: at
 *           both; 4: at both and half-way between, so that three cuts
 *           can fall one byte apart);
 *   rest    the bytes the client sends.
 * Each write goes out on its own loop turn once the server has accepted,
 * so the server sees them as separate reads. The application answers by
 * path: "/hold..." on the next loop turn, "/stream..." as a chunked body
 * over the next turns, "/flood..." as a chunked body of 384 KiB that
 * waits for on_drain whenever http_stream_write says 1, "/big..." with a
 * 96 KiB body (three "/big" or "/flood" per input, later ones get the small
 * answer), anything else at once with a small JSON body. When nothing
 * moves any more and every response has arrived, the client shuts its
 * write side, reads to EOF and closes.
 *
 * Checked, with abort() on a violation:
 * - a request handed to the application is within the limits; its header
 *   names are tokens, its values hold no CR/LF and no surrounding blanks,
 *   and each name and value occurs as such in the bytes sent (a value
 *   joined from folded lines would not);
 *   it never carries both Content-Length and Transfer-Encoding, nor two
 *   Content-Length headers, and a Content-Length body has exactly that
 *   length; its request_id is the client's x-request-id when that is 1-64
 *   of [A-Za-z0-9-_.:], else 32 generated hex digits;
 * - on_abort only for a request the application holds; on_drain only
 *   after http_stream_write returned 1 (and it must come: a stream that
 *   waits for it forever is a hang);
 * - the client's bytes parse (llhttp, response mode) as a sequence of
 *   well-formed responses: interim 100s, one final response per handed
 *   over request in order, each echoing its request_id, and at most one
 *   more, a 4xx/5xx server error with "Connection: close", last; nothing
 *   follows a response that announced close;
 * - after the client closed, the server holds no connection, and no
 *   input takes longer than HANG_MS (a stream waiting for an on_drain
 *   that never comes, a response that never completes).
 *
 *   CC=clang cmake -S . -B build-fuzz -DTG_FUZZ=ON -DTG_SANITIZE=ON
 *   cmake --build build-fuzz --target fuzz_http
 *   ./build-fuzz/test/fuzz_http -dict=test/fuzz/tollgate.dict test/fuzz/corpus/http */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <llhttp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>

#include "daemon/base/buf.h"
#include "daemon/http_server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HANG_MS 10000          /* one input taking longer than this is a hang */
#define GUARD_MS 5             /* a sleeping loop turn wakes up at least this often */
#define QUIET_TURNS 4          /* turns without progress before the client stops */
#define MAX_IN (32 * 1024)     /* longer inputs are skipped */
#define MAX_REQS 4096          /* requests one input can hold (MAX_IN / 8) */
#define MAX_BIG 3              /* "/big" and "/flood" answers per input (the rest are small) */
#define FLOOD_CHUNK (64 * 1024) /* "/flood" writes chunks this big ... */
#define FLOOD_CHUNKS 6          /* ... this many (past the server's high-water mark) */
#define BIG_BODY (96 * 1024)   /* larger than what one write to the socket takes */
#define RESP_KEEP (8u << 20)   /* response bytes kept by the client */
#define SLOW_SNDBUF 16384      /* the server's send buffer toward a slow client */
#define TCPI_BYTES_RECEIVED 128 /* offsetof(struct tcp_info, tcpi_bytes_received), linux/tcp.h */

static void must(bool ok)
{
    if (!ok)
        abort();
}

/* ------------------------------------------------------------ state */

enum job_kind { JOB_NONE, JOB_HOLD, JOB_STREAM };

typedef struct answered {
    bool head;           /* a HEAD request: the response has no body bytes */
    char request_id[65]; /* what its response must echo */
} answered;

typedef struct fuzz {
    uv_tcp_t cli;         /* the client socket */
    uv_connect_t creq;    /* its connect request */
    uv_write_t wreq[4];   /* one per write */
    uv_shutdown_t sreq;   /* the final half-close */
    const char *seg[4];   /* the writes */
    size_t segn[4];
    const char *input;    /* all the bytes sent */
    size_t ninput;
    int nseg, sent;       /* writes in all / done */
    bool connected;       /* connect callback ran */
    bool shut;            /* shutdown requested */
    size_t shut_in;       /* response bytes received when it was */
    size_t shut_ans;      /* requests answered when it was */
    bool eof;             /* EOF or error read */
    bool reset;           /* the read ended in an error, not EOF */
    bool closed;          /* client handle closed */
    buf in;               /* response bytes received */
    size_t progress;      /* bumps on anything that moves */
    http_limits lim;      /* the limits in force */

    http_req *job;        /* a request the application holds */
    enum job_kind kind;   /* how it is answered */
    bool job_broken;      /* a stream call failed: wait for on_abort */
    bool flood;           /* the stream writes big chunks */
    bool wait_drain;      /* http_stream_write said 1: wait for on_drain */
    bool slow;            /* the client reads on every other turn only */
    int sfd;              /* the server's end of the connection, -1 unknown */
    struct sockaddr_storage me; /* the client's address */
    socklen_t melen;      /* its length, 0 until known */
    uint64_t bytes_out;   /* bytes handed to the client socket */
    int step;             /* turns it has been held */
    answered ans[MAX_REQS]; /* answered requests, in order */
    size_t nans;
    int nbig;             /* "/big" answers so far */
} fuzz;

static uv_loop_t loop;
static http_server *srv;
static uint16_t port;
static fuzz *cur;
static char big_body[BIG_BODY > FLOOD_CHUNK ? BIG_BODY : FLOOD_CHUNK];

static const http_limits limit_sets[4] = {
    /* the daemon's defaults (daemon/config.c) */
    {16 * 1024, 100, 4u << 20, 60000, 60000, 60000, 60000},
    /* tiny: headers and bodies trip the limits */
    {96, 4, 16, 60000, 60000, 60000, 60000},
    /* tight headers, roomy body */
    {256, 8, 1u << 20, 60000, 60000, 60000, 60000},
    /* roomy headers, tight body */
    {64 * 1024, 200, 64, 60000, 60000, 60000, 60000},
};

/* ------------------------------------------------------------ the application */

static bool id_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_' || ch == '.' || ch == ':';
}

static bool tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool has_prefix(slice s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len >= n && memcmp(s.p, lit, n) == 0;
}

/* Everything a request handed over must satisfy. */
static void check_request(const fuzz *f, const http_req *req)
{
    const http_limits *lim = &f->lim;
    size_t hbytes = req->path.len + req->query.len + (req->query.len ? 1 : 0);
    int ncl = 0, nte = 0;
    slice cl = {NULL, 0};

    must(req->state == REQ_HANDLING && req->conn != NULL);
    must(req->nheaders <= lim->max_headers && req->body.len <= lim->max_body_bytes);
    must(req->body.p != NULL && req->path.p != NULL && req->query.p != NULL);
    for (size_t i = 0; i < req->nheaders; i++) {
        slice nm = req->headers[i].name, v = req->headers[i].value;
        must(nm.len > 0);
        for (size_t k = 0; k < nm.len; k++)
            must(tchar((unsigned char)nm.p[k]));
        must(v.len == 0 || v.p != NULL);
        for (size_t k = 0; k < v.len; k++)
            must(v.p[k] != '\r' && v.p[k] != '\n');
        /* never joined from several lines (obs-fold), however it was read */
        must(memmem(f->input, f->ninput, nm.p, nm.len) != NULL);
        must(v.len == 0 || memmem(f->input, f->ninput, v.p, v.len) != NULL);
        must(v.len == 0 || (v.p[0] != ' ' && v.p[0] != '\t' && v.p[v.len - 1] != ' ' &&
                            v.p[v.len - 1] != '\t'));
        hbytes += nm.len + v.len;
        if (slice_eq_nocase(nm, "content-length")) {
            ncl++;
            cl = v;
        }
        if (slice_eq_nocase(nm, "transfer-encoding"))
            nte++;
    }
    must(hbytes <= lim->max_header_bytes);
    /* request smuggling: never both framings, never two lengths */
    must(!(ncl && nte) && ncl <= 1);
    if (ncl) {
        uint64_t x = 0;
        must(cl.len > 0);
        for (size_t k = 0; k < cl.len; k++) {
            must(cl.p[k] >= '0' && cl.p[k] <= '9');
            x = x * 10 + (uint64_t)(cl.p[k] - '0');
            must(x <= lim->max_body_bytes);
        }
        must(req->body.len == x);
    }
    /* request id: the client's when it is clean, else 32 generated hex digits */
    size_t idl = strnlen(req->request_id, sizeof(req->request_id));
    must(idl > 0 && idl < sizeof(req->request_id));
    for (size_t k = 0; k < idl; k++)
        must(id_char(req->request_id[k]));
    slice xid = http_req_header(req, "x-request-id");
    bool clean = xid.len > 0 && xid.len <= 64;
    for (size_t k = 0; clean && k < xid.len; k++)
        clean = id_char(xid.p[k]);
    if (clean) {
        must(idl == xid.len && memcmp(req->request_id, xid.p, idl) == 0);
    } else {
        must(idl == 32);
        for (size_t k = 0; k < idl; k++)
            must((req->request_id[k] >= '0' && req->request_id[k] <= '9') ||
                 (req->request_id[k] >= 'a' && req->request_id[k] <= 'f'));
    }
}

/* Records the response about to be sent (req is gone after it is). */
static void note_answer(fuzz *f, const http_req *req)
{
    must(f->nans < MAX_REQS);
    answered *a = &f->ans[f->nans++];
    a->head = req->method == HTTP_HEAD;
    memcpy(a->request_id, req->request_id, sizeof(a->request_id));
    f->progress++;
}

/* The response call that followed note_answer failed: the connection is
 * closed and the response never comes. */
static void answer_failed(fuzz *f, int rc)
{
    if (rc < 0) {
        f->nans--;
        f->reset = true;
    }
}

static void on_abort(http_req *req, void *ud)
{
    fuzz *f = ud;
    must(f == cur && req == f->job);
    f->job = NULL;
    f->kind = JOB_NONE;
    f->job_broken = false;
    f->progress++;
}

static void on_drain(http_req *req, void *ud)
{
    fuzz *f = ud;
    /* only after http_stream_write returned 1, and only once for it */
    must(f == cur && req == f->job && f->kind == JOB_STREAM && f->wait_drain);
    f->wait_drain = false;
    f->progress++;
}

static void respond_now(fuzz *f, http_req *req)
{
    char body[256];
    int k = snprintf(body, sizeof(body),
                     "{\"id\":\"%s\",\"method\":%u,\"path\":%zu,\"query\":%zu,\"headers\":%zu,"
                     "\"body\":%zu}",
                     req->request_id, (unsigned)req->method, req->path.len, req->query.len,
                     req->nheaders, req->body.len);
    must(k > 0 && (size_t)k < sizeof(body));
    note_answer(f, req);
    answer_failed(f, http_respond(req, 200, "application/json", "Cache-Control: no-store\r\n",
                                  body, (size_t)k));
}

static void on_request(http_req *req, void *ud)
{
    fuzz *f = cur;
    (void)ud;
    must(f != NULL && f->job == NULL);
    f->progress++;
    check_request(f, req);
    (void)http_req_header(req, "authorization");
    (void)http_req_header(req, "content-type");
    if (has_prefix(req->path, "/hold")) {
        f->job = req;
        f->kind = JOB_HOLD;
        f->step = 0;
        req->app = f;
        req->on_abort = on_abort;
    } else if (has_prefix(req->path, "/stream") ||
               (has_prefix(req->path, "/flood") && f->nbig++ < MAX_BIG)) {
        f->job = req;
        f->kind = JOB_STREAM;
        f->flood = req->path.p[1] == 'f';
        f->wait_drain = false;
        f->step = 0;
        req->app = f;
        req->on_abort = on_abort;
        req->on_drain = on_drain;
        if (http_stream_start(req, 200, "text/event-stream", "Cache-Control: no-cache\r\n") != 0)
            f->job_broken = true; /* on_abort follows from the loop */
    } else if (has_prefix(req->path, "/big") && f->nbig++ < MAX_BIG) {
        note_answer(f, req);
        answer_failed(f, http_respond(req, 200, "application/octet-stream", NULL, big_body,
                                      BIG_BODY));
    } else {
        respond_now(f, req);
    }
}

/* One loop turn of the application: the held request moves on. */
static void app_step(fuzz *f)
{
    http_req *req = f->job;
    if (!req || f->job_broken || f->wait_drain)
        return;
    f->progress++;
    if (f->kind == JOB_HOLD) {
        f->job = NULL;
        f->kind = JOB_NONE;
        req->on_abort = NULL;
        respond_now(f, req);
        return;
    }
    static const char ev[] = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
    int rc = 0;
    if (f->flood && f->step < FLOOD_CHUNKS) {
        f->step++;
        rc = http_stream_write(req, big_body, FLOOD_CHUNK);
        if (rc == 1)
            f->wait_drain = true;
        if (rc < 0)
            f->job_broken = true;
        return;
    }
    switch (f->step++) {
    case 0:
        rc = http_stream_write(req, ev, sizeof(ev) - 1);
        if (rc == 1)
            f->wait_drain = true;
        break;
    case 1:
        rc = http_stream_write(req, "", 0);
        if (rc >= 0)
            rc = http_stream_write(req, "data: [DONE]\n\n", 14);
        if (rc == 1)
            f->wait_drain = true;
        break;
    default:
        f->job = NULL;
        f->kind = JOB_NONE;
        req->on_abort = NULL;
        req->on_drain = NULL;
        note_answer(f, req);
        answer_failed(f, http_stream_end(req));
        break;
    }
    if (rc < 0)
        f->job_broken = true;
}

/* ------------------------------------------------------------ the client */

static void cli_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    static char slab[64 * 1024];
    b->base = slab;
    b->len = sizeof(slab);
}

static void cli_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    fuzz *f = st->data;
    if (n == 0)
        return;
    f->progress++;
    if (n < 0) {
        f->eof = true;
        f->reset = n != UV_EOF;
        uv_read_stop(st);
        return;
    }
    must(buf_append(&f->in, b->base, (size_t)n) == 0);
}

static void cli_written(uv_write_t *w, int status)
{
    (void)w;
    (void)status; /* EPIPE/ECONNRESET after the server closed: fine */
}

/* A failed connect (ports exhausted?) loses the input: say so now and then. */
static void connect_failed(int status)
{
    static unsigned long failures;
    failures++;
    if ((failures & (failures - 1)) == 0)
        fprintf(stderr, "fuzz_http: connect failed (%s), %lu so far\n", uv_strerror(status),
                failures);
}

static void cli_connected(uv_connect_t *cr, int status)
{
    fuzz *f = cr->handle->data;
    f->progress++;
    if (status < 0) {
        connect_failed(status);
        f->eof = f->reset = true;
        return;
    }
    f->connected = true;
    uv_read_start((uv_stream_t *)&f->cli, cli_alloc, cli_read);
}

static void cli_shut(uv_shutdown_t *sr, int status)
{
    (void)sr;
    (void)status;
}

static void cli_closed(uv_handle_t *h)
{
    fuzz *f = h->data;
    f->closed = true;
}

/* The server's end of the connection is found by the driver (the socket
 * whose peer is the client), for two things the server's API does not
 * show: how many of the client's bytes have reached it, and its send
 * buffer, which a slow client pins small (loopback TCP autotunes it to
 * megabytes, so a response would never wait in the server's own queue).
 * -1 when not (or no longer) there. */
static int server_fd(fuzz *f)
{
    struct sockaddr_storage peer;
    socklen_t pl = sizeof(peer);
    uv_os_fd_t cfd;
    if (f->sfd >= 0 && getpeername(f->sfd, (struct sockaddr *)&peer, &pl) == 0 &&
        pl == f->melen && memcmp(&peer, &f->me, pl) == 0)
        return f->sfd;
    f->sfd = -1;
    if (!f->connected || http_server_nconns(srv) == 0 ||
        uv_fileno((uv_handle_t *)&f->cli, &cfd) != 0)
        return -1;
    if (f->melen == 0) {
        int len = sizeof(f->me);
        if (uv_tcp_getsockname(&f->cli, (struct sockaddr *)&f->me, &len) != 0)
            return -1;
        f->melen = (socklen_t)len;
    }
    for (int fd = 3; fd < 1024; fd++) {
        pl = sizeof(peer);
        if (fd == cfd || getpeername(fd, (struct sockaddr *)&peer, &pl) != 0 ||
            pl != f->melen || memcmp(&peer, &f->me, pl) != 0)
            continue;
        f->sfd = fd;
        if (f->slow) {
            int v = SLOW_SNDBUF;
            (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
        }
        return fd;
    }
    return -1;
}

/* Whether bytes the client wrote may still be on their way: queued in
 * libuv, or not yet received by the server's socket (where the server's
 * next poll sees them). Delivery can lag several loop turns on a busy
 * machine, and the client must not take that for the end. */
static bool cli_in_flight(fuzz *f)
{
    /* glibc's struct tcp_info (netinet/tcp.h, which uv.h includes) ends
     * before tcpi_bytes_received; the kernel's (linux/tcp.h) has it at
     * byte 128, a fixed ABI offset (Linux >= 4.1) */
    unsigned char ti[TCPI_BYTES_RECEIVED + 8];
    socklen_t tl = sizeof(ti);
    uint64_t received;
    if (!f->connected || f->eof)
        return false;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&f->cli) > 0)
        return true;
    int fd = server_fd(f);
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &tl) != 0)
        return false; /* the server closed it: nothing more will be read */
    if (tl < sizeof(ti))
        return false; /* an older kernel: no way to tell */
    memcpy(&received, ti + TCPI_BYTES_RECEIVED, sizeof(received));
    return received < f->bytes_out;
}

/* The slow client reads on every other turn, and the server's send buffer
 * toward it is small, so responses queue on the server side. (Not the
 * client's receive buffer: a window below loopback's 64 KiB MSS stalls the
 * sender until its persist timer.) */
static void cli_pace(fuzz *f, unsigned turn)
{
    if (!f->slow || !f->connected || f->eof)
        return;
    (void)server_fd(f);
    if (turn & 1)
        uv_read_stop((uv_stream_t *)&f->cli);
    else
        uv_read_start((uv_stream_t *)&f->cli, cli_alloc, cli_read);
}

static void cli_step(fuzz *f)
{
    if (!f->connected || f->eof || f->sent >= f->nseg || http_server_nconns(srv) == 0)
        return;
    uv_buf_t b = uv_buf_init((char *)(uintptr_t)f->seg[f->sent], (unsigned)f->segn[f->sent]);
    if (uv_write(&f->wreq[f->sent], (uv_stream_t *)&f->cli, &b, 1, cli_written) == 0) {
        f->progress++;
        f->bytes_out += b.len;
    }
    f->sent++;
}

/* ------------------------------------------------------------ response check */

typedef struct resp_check {
    fuzz *f;
    size_t next;       /* next answered request to match */
    bool error_seen;   /* the server's own error response came */
    bool late;         /* the server wrote after the client half-closed */
    bool close_seen;   /* a response announced close */
    bool in_id, in_conn;
    buf id, conn;      /* x-request-id / connection values of the current response */
    size_t finals;     /* final responses */
} resp_check;

static int rc_begin(llhttp_t *p)
{
    resp_check *rc = p->data;
    must(!rc->close_seen && !rc->error_seen);
    buf_reset(&rc->id);
    buf_reset(&rc->conn);
    return 0;
}

static int rc_field(llhttp_t *p, const char *at, size_t n)
{
    resp_check *rc = p->data;
    rc->in_id = n == 12 && strncasecmp(at, "x-request-id", 12) == 0;
    rc->in_conn = n == 10 && strncasecmp(at, "connection", 10) == 0;
    return 0;
}

static int rc_value(llhttp_t *p, const char *at, size_t n)
{
    resp_check *rc = p->data;
    if (rc->in_id)
        must(buf_append(&rc->id, at, n) == 0);
    if (rc->in_conn)
        must(buf_append(&rc->conn, at, n) == 0);
    return 0;
}

static int rc_headers_done(llhttp_t *p)
{
    resp_check *rc = p->data;
    must(p->http_major == 1 && p->http_minor == 1);
    if (p->status_code < 200) {
        must(p->status_code == 100);
        return 0;
    }
    rc->finals++;
    bool close = rc->conn.len == 5 && strncasecmp(rc->conn.data, "close", 5) == 0;
    if (rc->next < rc->f->nans) {
        const answered *a = &rc->f->ans[rc->next++];
        size_t l = strlen(a->request_id);
        must(rc->id.len == l && memcmp(rc->id.data, a->request_id, l) == 0);
        rc->close_seen = close;
        return a->head ? 1 : 0;
    }
    /* after a late half-close: a response to a request the server then
     * aborted (a stream head); not checked further */
    if (rc->late) {
        rc->error_seen = true;
        return HPE_PAUSED;
    }
    /* the server's own refusal: an error, then the connection closes; its
     * body is not parsed (a refused HEAD request gets none) */
    must(p->status_code >= 400 && p->status_code <= 599 && close);
    must(rc->id.len > 0);
    rc->error_seen = true;
    return HPE_PAUSED;
}

static void check_responses(fuzz *f)
{
    static const llhttp_settings_t st = {
        .on_message_begin = rc_begin,
        .on_header_field = rc_field,
        .on_header_value = rc_value,
        .on_headers_complete = rc_headers_done,
    };
    resp_check rc = {.f = f};
    llhttp_t p;
    buf_init(&rc.id, 4096);
    buf_init(&rc.conn, 4096);
    llhttp_init(&p, HTTP_RESPONSE, &st);
    p.data = &rc;
    /* Bytes sent after the client half-closed may arrive later, and the
     * server takes EOF for a client gone: what it answers after the
     * shutdown may be cut short (or missing). Only the responses answered
     * before must be whole then -- and they were complete already. */
    bool late = f->shut && (f->in.len > f->shut_in || f->nans > f->shut_ans);
    rc.late = late;
    llhttp_errno_t e = f->in.len ? llhttp_execute(&p, f->in.data, f->in.len) : HPE_OK;
    if (e == HPE_OK && !f->reset && !late)
        e = llhttp_finish(&p);
    if (e != HPE_OK && e != HPE_PAUSED) {
        fprintf(stderr, "fuzz_http: bad response stream: %s (%s)\n", llhttp_errno_name(e),
                llhttp_get_error_reason(&p));
        abort();
    }
    must(e != HPE_PAUSED || rc.error_seen);
    /* every answered request got its response, unless the connection broke */
    if (!f->reset && !late)
        must(rc.next == f->nans);
    if (f->shut)
        must(rc.next >= f->shut_ans);
    buf_free(&rc.id);
    buf_free(&rc.conn);
}

/* ------------------------------------------------------------ probe */

/* Whether every answered request's response has fully arrived: the client
 * only half-closes then (the server takes EOF for a client gone). */
typedef struct probe {
    const fuzz *f;
    size_t finals;   /* final responses begun */
    size_t done;     /* ... and complete */
    bool in_msg;     /* inside a message */
} probe;

static int pr_begin(llhttp_t *p)
{
    ((probe *)p->data)->in_msg = true;
    return 0;
}

static int pr_headers(llhttp_t *p)
{
    probe *q = p->data;
    if (p->status_code < 200)
        return 0;
    size_t i = q->finals++;
    if (i >= q->f->nans)
        return HPE_PAUSED; /* the server's own error: it closes by itself */
    return q->f->ans[i].head ? 1 : 0;
}

static int pr_complete(llhttp_t *p)
{
    probe *q = p->data;
    q->in_msg = false;
    if (p->status_code >= 200)
        q->done++;
    return 0;
}

static bool responses_complete(const fuzz *f)
{
    static const llhttp_settings_t st = {
        .on_message_begin = pr_begin,
        .on_headers_complete = pr_headers,
        .on_message_complete = pr_complete,
    };
    probe q = {.f = f};
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &st);
    p.data = &q;
    llhttp_errno_t e = f->in.len ? llhttp_execute(&p, f->in.data, f->in.len) : HPE_OK;
    if (e != HPE_OK)
        return true; /* an error response, or garbage for check_responses to report */
    return q.done >= f->nans && !q.in_msg;
}

/* ------------------------------------------------------------ driver */

static uv_timer_t guard; /* wakes a sleeping loop turn */

static void guard_cb(uv_timer_t *t) { (void)t; }

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN); /* as the daemon does: a closed peer is an error return */
    must(uv_loop_init(&loop) == 0);
    srv = http_server_new(&loop, &limit_sets[0], on_request, NULL);
    must(srv != NULL);
    must(http_server_listen(srv, "127.0.0.1", 0) == 0);
    port = http_server_port(srv);
    must(uv_timer_init(&loop, &guard) == 0);
    for (size_t i = 0; i < sizeof(big_body); i++)
        big_body[i] = "0123456789abcdef"[i & 15];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    static fuzz f;
    if (!ready) {
        setup();
        ready = true;
    }
    if (size < 3 || size > MAX_IN)
        return 0;

    memset(&f, 0, sizeof(f));
    f.sfd = -1;
    cur = &f;
    f.lim = limit_sets[(data[0] >> 2) & 3];
    http_server_set_limits(srv, &f.lim);
    buf_init(&f.in, RESP_KEEP);
    const char *p = (const char *)data + 3;
    size_t n = size - 3;
    f.input = p;
    f.ninput = n;
    f.nseg = 1 + (data[0] & 3);
    size_t c1 = (size_t)data[1] * n / 255, c2 = (size_t)data[2] * n / 255;
    if (f.nseg > 2 && c1 > c2) {
        size_t t = c1;
        c1 = c2;
        c2 = t;
    }
    /* 2 writes: cut at c1; 3: at c1 and c2; 4: also half-way between */
    size_t cuts[5] = {0, c1, n, n, n};
    if (f.nseg == 3)
        cuts[2] = c2;
    if (f.nseg == 4) {
        cuts[2] = c1 + (c2 - c1) / 2;
        cuts[3] = c2;
    }
    int k = 0;
    for (int i = 0; i < f.nseg; i++) {
        size_t a = cuts[i], b = i == f.nseg - 1 ? n : cuts[i + 1];
        if (b > a) {
            f.seg[k] = p + a;
            f.segn[k++] = b - a;
        }
    }
    f.nseg = k;

    struct sockaddr_in sa;
    must(uv_ip4_addr("127.0.0.1", port, &sa) == 0);
    f.slow = (data[0] >> 4) & 1;
    must(uv_tcp_init_ex(&loop, &f.cli, AF_INET) == 0);
    (void)uv_tcp_nodelay(&f.cli, 1); /* each write its own segment, sent at once (no Nagle) */
    f.cli.data = &f;
    int crc = uv_tcp_connect(&f.creq, &f.cli, (const struct sockaddr *)&sa, cli_connected);
    if (crc != 0) {
        connect_failed(crc);
        f.eof = f.reset = true;
    }

    unsigned quiet = 0, turns = 0;
    bool closing = false;
    uint64_t t0 = uv_now(&loop);
    uv_timer_start(&guard, guard_cb, GUARD_MS, GUARD_MS);
    for (unsigned turn = 0;; turn++) {
        turns = turn;
        if (uv_now(&loop) - t0 > HANG_MS) {
            fprintf(stderr, "fuzz_http: no end after %u ms (%u loop turns, %zu answered)\n",
                    HANG_MS, turn, f.nans);
            abort();
        }
        size_t before = f.progress;
        size_t nconns = http_server_nconns(srv);
        /* while things move, turn fast; once they stop, sleep for I/O */
        uv_run(&loop, quiet >= QUIET_TURNS ? UV_RUN_ONCE : UV_RUN_NOWAIT);
        app_step(&f);
        cli_step(&f);
        cli_pace(&f, turn);
        if (closing && f.closed && http_server_nconns(srv) == 0)
            break;
        if (f.progress != before || nconns != http_server_nconns(srv) || cli_in_flight(&f))
            quiet = 0;
        else
            quiet++;
        if (f.eof && !closing) {
            closing = true;
            uv_close((uv_handle_t *)&f.cli, cli_closed);
        } else if (!f.shut && !closing && f.connected && f.sent >= f.nseg && !f.job &&
                   quiet >= QUIET_TURNS && responses_complete(&f)) {
            /* (while a response is incomplete, its bytes are on their way:
             * TCP may pause; the sleeping turns wait for them) */
            f.shut = true;
            f.shut_in = f.in.len;
            f.shut_ans = f.nans;
            if (uv_shutdown(&f.sreq, (uv_stream_t *)&f.cli, cli_shut) != 0) {
                closing = true;
                uv_close((uv_handle_t *)&f.cli, cli_closed);
            }
        }
    }
    uv_timer_stop(&guard);
    must(f.job == NULL);
    if (getenv("FUZZ_HTTP_TRACE")) /* what came back, for debugging the driver */
        fprintf(stderr, "--- %d writes, %zu answered, %u turns, reset %d, %zu bytes:\n%.*s\n",
                f.nseg, f.nans, turns, f.reset, f.in.len, (int)(f.in.len < 4096 ? f.in.len : 4096),
                f.in.data ? f.in.data : "");
    check_responses(&f);
    buf_free(&f.in);
    cur = NULL;
    return 0;
}
