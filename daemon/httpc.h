/* httpc.h - the outbound HTTP/1.1 client to LLM providers, on one libuv loop.
 *
 * A call sends request bytes the caller built (head with Host and
 * Content-Length, then body) over a pooled keep-alive connection (plain TCP
 * or TLS, daemon/tls.h) and delivers the response through the upstream
 * contract (providers/upstream.h): on_head once, on_body with de-chunked
 * bytes as they arrive (the body is never buffered whole), then on_done.
 * 1xx interim responses are skipped.
 *
 * One httpc_pool per loop holds the DNS cache (daemon/dns.h) and, per target
 * (host, port, tls, tls_verify, ca_file, proxy_host, proxy_port,
 * proxy_auth), a keep-alive pool: idle
 * connections are reused last-in first-out, at most max_connections exist
 * per target and further calls wait in FIFO order for one (bounded by the
 * connect timeout). An idle connection the server closes is dropped, never
 * reused; if a reused connection fails before any response byte arrives
 * (the keep-alive race), the call is retried once on a fresh connection.
 *
 * Through an HTTP proxy (httpc_target.proxy_host) a connection is a
 * tunnel: TCP to the proxy (its name resolved here, the target's never),
 * "CONNECT host:port HTTP/1.1" with Host and, given proxy_auth,
 * Proxy-Authorization: Basic; a 2xx answer (head at most
 * HTTPC_PROXY_MAX_HEAD bytes) makes the connection what a direct TCP
 * connection to the target would be: TLS (SNI and certificate checked
 * against the target host) or plain HTTP, both through CONNECT. Bytes the
 * proxy sends after its answer are kept for the TLS layer or the response
 * parser. A tunnel is pooled like a direct connection, only ever for the
 * same target and proxy settings.
 *
 * Timeouts (0 = none) end a call with the matching upstream_err_* string:
 * connect_ms bounds the wait for a connection slot, and then name
 * resolution plus the TCP connect (through a proxy: plus the CONNECT
 * exchange); tls_ms the handshake; first_byte_ms the
 * time from the request being fully written to the status line (also each
 * stall while writing the request); idle_ms the gap between reads once the
 * status line arrived (suspended while the caller has paused the call);
 * total_ms the whole call.
 *
 * Errors: upstream_err_dns, _connect, _tls, _timeout_*, _reset (closed or
 * reset before the response ended, or a TLS failure after the handshake),
 * _protocol (unparseable response), _too_big (response head over
 * HTTPC_MAX_HEADER_BYTES or HTTPC_MAX_HEADERS). upstream_err_dns, _connect,
 * _tls, _timeout_connect and _timeout_tls are only ever given before a byte
 * of the request was sent. A proxy failure before the tunnel is up counts
 * as a connect failure: upstream_err_dns (proxy name), _connect (proxy
 * unreachable, refused the CONNECT, closed or answered garbage) or
 * _timeout_connect, with the reason in httpc_call_error_detail().
 *
 * Nothing here logs request or response headers or bodies (they carry API
 * keys); lines name the target ("upstream api.openai.com:443"). */
#ifndef TG_DAEMON_HTTPC_H
#define TG_DAEMON_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "providers/upstream.h"

#define HTTPC_MUSTCHECK __attribute__((warn_unused_result))

#define HTTPC_MAX_HEADER_BYTES (64u * 1024u) /* status line + header names and values */
#define HTTPC_MAX_HEADERS 128u               /* response header count */
#define HTTPC_DNS_TTL_MS 30000u              /* how long a resolved name is reused */
#define HTTPC_DNS_MAX_NAMES 64u              /* names the DNS cache keeps */
#define HTTPC_PROXY_MAX_HEAD 8192u           /* a proxy's answer to CONNECT, status to blank line */
#define HTTPC_ERROR_DETAIL_MAX 128u          /* httpc_call_error_detail() text incl. the NUL */

typedef struct httpc_pool httpc_pool;

/* Where a call goes. Strings are copied when a new target is first seen;
 * the pool limits are taken from the latest call to the target. */
typedef struct httpc_target {
    const char *host;    /* DNS name or IP literal; also SNI and the verified name */
    uint16_t port;       /* TCP port */
    bool tls;            /* TLS 1.2 over the TCP connection */
    bool tls_verify;     /* verify the certificate chain and host name (false: accept any) */
    const char *ca_file; /* extra trusted CA file (PEM) besides the system bundle; NULL = none */
    unsigned max_connections; /* connections per target, busy + idle + connecting; 0 = no limit */
    unsigned idle_timeout_ms; /* an idle pooled connection closes after this; 0 = 60 s */
    const char *proxy_host;   /* HTTP proxy (name or IP) to CONNECT through; NULL/"" = direct */
    uint16_t proxy_port;      /* its TCP port (required with proxy_host) */
    const char *proxy_auth;   /* base64 "user:password" for Basic proxy auth; NULL/"" = none */
} httpc_target;

/* Per-call timeouts in milliseconds; 0 = none (see the top of this file). */
typedef struct httpc_timeouts {
    uint32_t connect_ms;    /* slot wait; then DNS + TCP connect */
    uint32_t tls_ms;        /* TLS handshake */
    uint32_t first_byte_ms; /* request fully written -> status line */
    uint32_t idle_ms;       /* between reads after the status line */
    uint32_t total_ms;      /* the whole call */
} httpc_timeouts;

/* Counters over the pool's life, and its current state (tests, metrics). */
typedef struct httpc_stats {
    uint64_t calls;          /* calls started */
    uint64_t conns_opened;   /* TCP connections established */
    uint64_t conns_reused;   /* calls given an idle pooled connection */
    uint64_t tls_handshakes; /* TLS handshakes completed */
    uint64_t tls_resumed;    /* of which resumed a saved session */
    uint64_t retries;        /* keep-alive race retries on a fresh connection */
    uint64_t queued;         /* calls that had to wait for a connection slot */
    uint64_t idle_closed;    /* idle connections closed by the server or the idle timer */
    uint64_t bytes_in;       /* bytes read from sockets (ciphertext for TLS) */
    uint64_t dns_lookups;    /* getaddrinfo requests (cache misses) */
    uint64_t tunnels;        /* CONNECT tunnels a proxy opened */
    unsigned conns_open;     /* connections now (connecting, busy or idle) */
    unsigned conns_idle;     /* of which idle in the pool */
    unsigned calls_active;   /* calls not yet finished */
} httpc_stats;

/* Creates the client for one loop. NULL when out of memory. */
httpc_pool *httpc_pool_new(uv_loop_t *loop);
/* Closes the idle connections and frees the pool once the calls in flight
 * have ended (it aborts none of them; their connections are closed, not
 * pooled, when they end). After this the loop can close once those calls
 * are done. No httpc_call_start() afterwards. */
void httpc_pool_close(httpc_pool *pool);
/* Copies the counters. */
void httpc_pool_stats(const httpc_pool *pool, httpc_stats *out);

/* Starts a call: sends the nreq buffers of req (the complete request) to t.
 * The caller keeps req's bytes valid until on_done runs or it aborted the
 * call; cb and ud likewise. *out is the call for upstream_pause/resume/
 * abort, valid until on_done returns or until upstream_abort(). No callback
 * runs from inside this function. 0, or -EINVAL (no host/port/request;
 * with a proxy: no proxy_port, or a host or proxy_auth that cannot go into
 * the CONNECT head), -ESHUTDOWN (pool closing), -ENOMEM,
 * -EIO (TLS config could not be built: a bad ca_file, see the log). */
int httpc_call_start(httpc_pool *pool, const httpc_target *t, const httpc_timeouts *to,
                     const uv_buf_t *req, unsigned nreq, const upstream_callbacks *cb, void *ud,
                     upstream_call **out) HTTPC_MUSTCHECK;
/* Inside on_done of a call made by httpc_call_start(): why it failed, in
 * more words than the upstream_err_* pointer and fit to show an operator,
 * e.g. "proxy refused CONNECT: 407 Proxy Authentication Required" (printable
 * ASCII, under HTTPC_ERROR_DETAIL_MAX bytes, never a secret). Set for
 * failures at the proxy; "" otherwise. Valid until on_done returns. */
const char *httpc_call_error_detail(const upstream_call *call);

/* True if host should be reached directly, not through the proxy, by the
 * NO_PROXY list no_proxy (NULL or "" = none), as curl reads it: entries
 * separated by commas (blanks around them ignored); "*" matches every host;
 * "example.com" and ".example.com" both match example.com and every name
 * under it (a.example.com, not badexample.com); names compare without case
 * and without a trailing dot; an IP literal entry (IPv6 with or without
 * brackets) matches the same address only, never by suffix, and an IP
 * host is matched by IP entries only. A ":port" on an entry is ignored
 * (the entry applies to every port); CIDR ranges are not supported. host
 * may be an IPv6 literal in brackets. */
bool httpc_no_proxy_match(const char *no_proxy, const char *host);

/* Parses a proxy URL "http://[user[:password]@]host[:port][/]" (scheme
 * case-insensitive; none at all means http, as curl reads https_proxy
 * values): host (an IPv6 literal given in brackets is stored without them)
 * into host[hostcap], the port (80 when absent) into *port, and, when
 * there is a user, base64("user:password") with both parts percent-decoded
 * into auth_b64[authcap] for httpc_target.proxy_auth ("" without a user).
 * 0, -ENOTSUP (another scheme, https:// included: TLS to the proxy is not
 * supported), -EINVAL (malformed: empty or bad host, bad port, bad
 * percent-escape, a path), -ENOSPC (host or auth_b64 does not fit). */
int httpc_parse_proxy_url(const char *url, char *host, size_t hostcap, uint16_t *port,
                          char *auth_b64, size_t authcap) HTTPC_MUSTCHECK;

#endif
