/* http_server.h - the inbound HTTP/1.1 server on one libuv loop.
 *
 * Accepts connections, parses requests with llhttp, enforces the limits
 * (header bytes and count, body size, header/body/idle/send timeouts) and
 * hands each complete request to the application (daemon/gateway.c) through
 * one callback. The application answers with http_respond() for a whole
 * response, or http_stream_start() / http_stream_write() / http_stream_end()
 * for a chunked one (SSE), with backpressure reported both ways.
 *
 * Pipelined requests are answered in order: after a request is handed over,
 * the parser is paused until its response has been completed; the bytes of
 * later requests wait in the connection's read buffer (capped).
 *
 * Lifetime of a request: the server owns it. It stays valid until the
 * application ends the response, or until the server calls its on_abort
 * (client gone, send stalled, forced shutdown) -- after on_abort returns the
 * request is freed and must not be touched. */
#ifndef TG_DAEMON_HTTP_SERVER_H
#define TG_DAEMON_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/base/buf.h"

typedef struct http_server http_server;
typedef struct http_conn http_conn;
typedef struct http_req http_req;

/* Limits and timeouts; copied at http_server_new and on reload. */
typedef struct http_limits {
    size_t max_header_bytes;    /* request line + all header bytes (431 above) */
    uint32_t max_headers;       /* header count (431 above) */
    size_t max_body_bytes;      /* request body (413 above) */
    uint32_t header_timeout_ms; /* first byte of a request to end of headers (408) */
    uint32_t body_timeout_ms;   /* end of headers to end of body (408) */
    uint32_t idle_timeout_ms;   /* keep-alive wait for the next request (silent close) */
    uint32_t send_timeout_ms;   /* a response write stalled this long closes the connection */
} http_limits;

/* One request header; slices point into the request's own storage. */
typedef struct http_header {
    slice name;  /* as sent */
    slice value; /* as sent, surrounding whitespace trimmed by llhttp */
} http_header;

enum http_req_state {
    REQ_READING,   /* headers/body still arriving */
    REQ_HANDLING,  /* handed to the application, no response byte sent yet */
    REQ_STREAMING, /* http_stream_start() done, chunks flowing */
    REQ_DONE,      /* response complete; being recycled */
};

/* Called when the client can take more bytes again after http_stream_write
 * reported it over the high-water mark. */
typedef void (*http_drain_cb)(http_req *req, void *ud);
/* Called when the request dies before its response completed (client closed,
 * send timeout, forced shutdown). The application must release everything
 * it tied to req (e.g. abort its upstream call) before returning; req is
 * freed afterwards. No response function may be called from inside. */
typedef void (*http_abort_cb)(http_req *req, void *ud);

struct http_req {
    http_conn *conn;            /* the connection it arrived on */
    enum http_req_state state;  /* where it is in its life */
    uint8_t method;             /* llhttp_method_t (HTTP_GET, HTTP_POST, ...) */
    slice path;                 /* URL path without the query string */
    slice query;                /* after '?', empty if none */
    http_header *headers;       /* header array (nheaders entries) */
    size_t nheaders;            /* number of headers */
    slice body;                 /* the complete body (de-chunked) */
    char request_id[65];        /* x-request-id: the client's (sanitised, <= 64) or generated */
    uint64_t t_start_ns;        /* monotonic time the first byte of the request arrived */
    uint64_t t_ready_ns;        /* monotonic time the request was complete */
    void *app;                  /* the application's per-request state */
    http_drain_cb on_drain;     /* set by the application for streamed responses */
    http_abort_cb on_abort;     /* set by the application while it holds the request */
};

/* The application's entry point for every complete request. It must
 * eventually answer (http_respond or the stream functions), unless the
 * request is aborted first. */
typedef void (*http_request_cb)(http_req *req, void *ud);

/* Creates a server on loop. Nothing listens until http_server_listen. */
http_server *http_server_new(uv_loop_t *loop, const http_limits *limits, http_request_cb cb,
                             void *ud);
/* Replaces the limits for connections and requests that start afterwards. */
void http_server_set_limits(http_server *s, const http_limits *limits);
/* Binds and listens on host:port (port 0 = any free port). 0 or -errno. */
int http_server_listen(http_server *s, const char *host, uint16_t port)
    __attribute__((warn_unused_result));
/* The same with SO_REUSEPORT: one listener per worker loop on one port
 * (port 0: the first takes a free port, the others pass it). */
int http_server_listen_reuseport(http_server *s, const char *host, uint16_t port)
    __attribute__((warn_unused_result));
/* The port actually bound (useful after port 0). */
uint16_t http_server_port(const http_server *s);
/* Starts draining: takes in the connections queued on the listener, then
 * closes it (new connections are refused, so a proxy sends them
 * elsewhere). Nothing open is cut: a request in flight or arriving is
 * answered, with Connection: close unless its response has begun, and the
 * connection closes after that response; an idle keep-alive connection
 * (also one whose response promised keep-alive before the drain) waits
 * at most min(idle timeout, 1 s) more for a request, then closes. So a
 * proxy that reuses a pooled connection just as the drain starts is
 * answered, not reset. done(ud) runs once when the last connection has
 * closed (maybe before this returns if there are none). */
void http_server_drain(http_server *s, void (*done)(void *), void *ud);
/* Aborts every remaining request and closes every connection now. */
void http_server_close_all(http_server *s);
/* Frees the server; call only after every handle is closed (drain done or
 * close_all and the loop run until the close callbacks finished). */
void http_server_free(http_server *s);
/* True while draining (ready checks answer 503). */
bool http_server_draining(const http_server *s);
/* Open client connections and requests in flight (for /metrics, tests). */
size_t http_server_nconns(const http_server *s);

/* Finds a request header by name (case-insensitive); NULL slice p if absent. */
slice http_req_header(const http_req *req, const char *name);

/* Sends a whole response. headers: extra header lines, each ending in
 * "\r\n" (may be NULL). Content-Length, Date, x-request-id and Connection
 * are added. The request is finished afterwards. 0 or -errno (on error the
 * connection is closed and the request freed: do not touch it either way). */
int http_respond(http_req *req, int status, const char *content_type, const char *headers,
                 const char *body, size_t len);

/* Starts a chunked response (SSE). Same header rules as http_respond. */
int http_stream_start(http_req *req, int status, const char *content_type, const char *headers)
    __attribute__((warn_unused_result));
/* Queues bytes as one chunk. Returns 1 when the bytes queued but unsent are
 * over the high-water mark (stop the producer until on_drain), 0 when the
 * producer may go on, or -errno (connection broken: on_abort follows from
 * the loop, not from inside this call). */
int http_stream_write(http_req *req, const char *p, size_t n);
/* Ends the chunked response (writes the terminating chunk). The request is
 * finished afterwards. */
int http_stream_end(http_req *req);
/* Bytes queued to this request's connection and not yet written. */
size_t http_req_pending(const http_req *req);

/* The reason phrase for a status code ("Not Found"). */
const char *http_status_text(int status);

#endif
