/* upstream.h - the contract between the request path and whatever answers
 * like an upstream: the HTTP/TLS client (daemon/httpc.h) and the built-in
 * mock provider (providers/mock.h) both deliver a response through these
 * callbacks, so the relay, SSE parsing and metering code is the same for
 * both.
 *
 * Order of calls for one request: on_head once (unless the request fails
 * before a status line arrives), on_body zero or more times, then on_done
 * exactly once -- unless the caller aborted it with upstream_abort(), after
 * which no callback runs at all. */
#ifndef TG_PROVIDERS_UPSTREAM_H
#define TG_PROVIDERS_UPSTREAM_H

#include <stddef.h>

#include "daemon/base/buf.h"

typedef struct upstream_call upstream_call;

/* One response header; the bytes belong to the callee and are valid only
 * during on_head. */
typedef struct upstream_header {
    slice name;  /* as received (compare with slice_eq_nocase) */
    slice value; /* leading and trailing whitespace trimmed */
} upstream_header;

typedef struct upstream_callbacks {
    /* The status line and all headers have arrived. Return 0 to go on, or
     * non-zero to abort: the call is then released and on_done is NOT
     * called. */
    int (*on_head)(upstream_call *call, int status, const upstream_header *hdrs, size_t nhdrs,
                   void *ud);
    /* Body bytes, de-chunked, in order. The bytes are valid only during the
     * call. Return 0 to go on, non-zero to abort (as for on_head). The
     * callee may call upstream_pause() inside for backpressure. */
    int (*on_body)(upstream_call *call, const char *p, size_t n, void *ud);
    /* The call ended. err is NULL when the whole response arrived, or one
     * of the static upstream_err_* strings (compare by pointer). The call
     * object is freed after this returns: do not touch it again. */
    void (*on_done)(upstream_call *call, const char *err, void *ud);
} upstream_callbacks;

/* Why a call failed; compare by pointer. */
extern const char upstream_err_dns[];         /* name did not resolve */
extern const char upstream_err_connect[];     /* TCP connect failed or was refused */
extern const char upstream_err_tls[];         /* TLS handshake or certificate failure */
extern const char upstream_err_timeout_connect[];
extern const char upstream_err_timeout_tls[];
extern const char upstream_err_timeout_first_byte[];
extern const char upstream_err_timeout_idle[];  /* no bytes for too long mid-response */
extern const char upstream_err_timeout_total[];
extern const char upstream_err_reset[];      /* connection closed/reset before the end */
extern const char upstream_err_protocol[];   /* unparseable HTTP response */
extern const char upstream_err_too_big[];    /* a response header over the cap */
extern const char upstream_err_shutdown[];   /* the process is shutting down */
extern const char upstream_err_injected[];   /* mock failure injection (mid-stream cut) */

/* True for errors after which no response byte can have been received
 * (safe to retry). */
int upstream_err_before_response(const char *err);

/* What every implementation provides; the call object begins with it. */
typedef struct upstream_ops {
    void (*pause)(upstream_call *call);
    void (*resume)(upstream_call *call);
    void (*abort)(upstream_call *call);
} upstream_ops;

struct upstream_call {
    const upstream_ops *ops; /* set by the implementation */
};

/* Stop delivering on_body until upstream_resume(): the implementation stops
 * reading from its socket (backpressure from a slow client). */
static inline void upstream_pause(upstream_call *c) { c->ops->pause(c); }
static inline void upstream_resume(upstream_call *c) { c->ops->resume(c); }
/* Cancel the call now (client went away); no callback runs after this and
 * the connection is closed, never returned to a pool. */
static inline void upstream_abort(upstream_call *c) { c->ops->abort(c); }

#endif
