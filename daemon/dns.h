/* dns.h - asynchronous name resolution with a small cache, per loop.
 *
 * Names are resolved with uv_getaddrinfo (the libuv thread pool; nothing
 * blocks the loop) and kept for a TTL in a table of bounded size.
 * Concurrent lookups of the same name share one getaddrinfo request. IP
 * literals never reach the resolver, and names under the special-use TLD
 * ".invalid" fail at once (RFC 6761 6.4). Failures are not cached.
 *
 * Every answer is delivered from the loop, never from inside
 * dns_resolve(). */
#ifndef TG_DAEMON_DNS_H
#define TG_DAEMON_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define DNS_MUSTCHECK __attribute__((warn_unused_result))

/* Most addresses kept per name. */
#define DNS_MAX_ADDRS 8

typedef struct dns_cache dns_cache;
typedef struct dns_query dns_query;

/* The addresses of one name, in resolver order; ports are 0. */
typedef struct dns_result {
    const struct sockaddr_storage *addrs; /* naddrs addresses (IPv4 or IPv6) */
    size_t naddrs;                        /* at least 1 when status is 0 */
} dns_result;

/* Called exactly once per query that was not cancelled. status is 0 with
 * res filled, or a negative libuv error (UV_EAI_NONAME, UV_EAI_AGAIN, ...,
 * UV_ECANCELED when the cache closed first). res and its addresses are
 * valid only during the call; the query is freed when it returns. */
typedef void (*dns_cb)(int status, const dns_result *res, void *ud);

/* Lookup counters (for tests and metrics). */
typedef struct dns_stats {
    uint64_t lookups; /* getaddrinfo requests started */
    uint64_t hits;    /* answers served from the cache */
    uint64_t shared;  /* queries that joined a request already running */
    unsigned entries; /* names in the table now */
} dns_stats;

/* A cache for one loop: answers live ttl_ms, at most max_entries names.
 * NULL when out of memory. */
dns_cache *dns_cache_new(uv_loop_t *loop, unsigned ttl_ms, unsigned max_entries);
/* Starts closing: queries still waiting get UV_ECANCELED; the memory goes
 * once the running getaddrinfo requests and the handle have finished. */
void dns_cache_close(dns_cache *c);
/* Resolves host; cb(status, res, ud) runs later from the loop. *out (may
 * be NULL) receives a handle for dns_cancel(), valid until cb runs.
 * 0, -EINVAL (empty or over-long name), -ENOMEM, -ESHUTDOWN (closing). */
int dns_resolve(dns_cache *c, const char *host, dns_cb cb, void *ud, dns_query **out) DNS_MUSTCHECK;
/* Withdraws a query whose callback has not run: it never will. */
void dns_cancel(dns_query *q);
/* Copies the counters. */
void dns_cache_stats(const dns_cache *c, dns_stats *out);

#endif
