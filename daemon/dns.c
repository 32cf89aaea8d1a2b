/* dns.c - uv_getaddrinfo behind a small per-loop cache. */
#include "daemon/dns.h"

#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon/base/log.h"
#include "daemon/base/qlist.h"

#define DNS_NAME_MAX 253

typedef struct dns_entry dns_entry;

/* An intrusive list of queries. */
typedef struct dns_qlist {
    dns_query *head, *tail; /* first and last query */
    unsigned n;             /* number of queries */
} dns_qlist;

struct dns_query {
    dns_query *prev, *next;                       /* links in *list */
    dns_qlist *list;                              /* entry->waiters or cache->ready */
    dns_cb cb;                                    /* the caller's callback */
    void *ud;                                     /* its argument */
    int status;                                   /* answer, once on cache->ready */
    size_t naddrs;                                /* answer addresses, once on cache->ready */
    struct sockaddr_storage addrs[DNS_MAX_ADDRS]; /* (copied: entries may go first) */
};

enum dns_entry_state {
    ENTRY_RESOLVING, /* req running; queries wait on waiters */
    ENTRY_READY,     /* addrs valid until expires */
};

struct dns_entry {
    dns_entry *prev, *next;                       /* cache->entries, most recently used first */
    dns_cache *cache;                             /* owner */
    enum dns_entry_state state;                   /* see above */
    bool in_table;                                /* false: freed when req ends */
    uint64_t expires;                             /* uv_now() ms when READY stops being fresh */
    size_t naddrs;                                /* valid addresses */
    struct sockaddr_storage addrs[DNS_MAX_ADDRS]; /* the last answer */
    uv_getaddrinfo_t req;                         /* the running request */
    dns_qlist waiters;                            /* queries waiting on req */
    char name[];                                  /* the host name */
};

struct dns_cache {
    uv_loop_t *loop;        /* the loop it runs on */
    uv_idle_t idle;         /* delivers ready queries on the next loop turn */
    unsigned ttl_ms;        /* freshness of an answer */
    unsigned max_entries;   /* table bound */
    dns_entry *head, *tail; /* the table, most recently used first */
    unsigned nentries;      /* entries in the table */
    unsigned running;       /* getaddrinfo requests in flight (in the table or not) */
    dns_qlist ready;        /* answered queries waiting for delivery */
    bool closing;           /* dns_cache_close() called */
    bool idle_closing;      /* uv_close(&idle) issued */
    dns_stats st;           /* counters */
};

QLIST_FUNCS(q, dns_qlist, dns_query)

static void e_unlink(dns_entry *e)
{
    dns_cache *c = e->cache;
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void e_push_front(dns_entry *e)
{
    dns_cache *c = e->cache;
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    else
        c->tail = e;
    c->head = e;
}

static void e_remove(dns_entry *e)
{
    if (!e->in_table)
        return;
    e_unlink(e);
    e->in_table = false;
    e->cache->nentries--;
}

static void dns__free_all(dns_cache *c)
{
    dns_entry *e = c->head;
    while (e) {
        dns_entry *n = e->next;
        free(e);
        e = n;
    }
    free(c);
}

static void dns__on_idle_close(uv_handle_t *h)
{
    dns_cache *c = h->data;
    dns__free_all(c);
}

static void dns__maybe_finish(dns_cache *c)
{
    if (c->closing && !c->idle_closing && c->running == 0 && c->ready.n == 0) {
        c->idle_closing = true;
        uv_close((uv_handle_t *)&c->idle, dns__on_idle_close);
    }
}

static void dns__on_idle(uv_idle_t *h)
{
    dns_cache *c = h->data;
    /* Only what is queued now: callbacks may queue more for the next turn. */
    for (unsigned n = c->ready.n; n > 0 && c->ready.head; n--) {
        dns_query *q = c->ready.head;
        q_unlink(q);
        dns_result res = {q->addrs, q->naddrs};
        q->cb(q->status, q->status == 0 ? &res : NULL, q->ud);
        free(q);
    }
    if (c->ready.n == 0)
        uv_idle_stop(&c->idle);
    dns__maybe_finish(c);
}

static void dns__ready(dns_cache *c, dns_query *q)
{
    q_push(&c->ready, q);
    uv_idle_start(&c->idle, dns__on_idle);
}

dns_cache *dns_cache_new(uv_loop_t *loop, unsigned ttl_ms, unsigned max_entries)
{
    dns_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    c->ttl_ms = ttl_ms;
    c->max_entries = max_entries ? max_entries : 1;
    uv_idle_init(loop, &c->idle);
    c->idle.data = c;
    return c;
}

void dns_cache_close(dns_cache *c)
{
    if (!c || c->closing)
        return;
    c->closing = true;
    for (dns_entry *e = c->head; e; e = e->next)
        if (e->state == ENTRY_RESOLVING)
            uv_cancel((uv_req_t *)&e->req);
    dns__maybe_finish(c);
}

void dns_cache_stats(const dns_cache *c, dns_stats *out)
{
    *out = c->st;
    out->entries = c->nentries;
}

/* An IP literal fills the query's answer; "[v6]" is accepted too. */
static bool dns__literal(const char *host, dns_query *q)
{
    char tmp[64];
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof(tmp)) {
        memcpy(tmp, host + 1, n - 2);
        tmp[n - 2] = '\0';
        host = tmp;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)&q->addrs[0];
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&q->addrs[0];
    if (uv_inet_pton(AF_INET, host, &a4->sin_addr) == 0) {
        a4->sin_family = AF_INET;
    } else if (uv_inet_pton(AF_INET6, host, &a6->sin6_addr) == 0) {
        a6->sin6_family = AF_INET6;
    } else {
        return false;
    }
    q->naddrs = 1;
    q->status = 0;
    return true;
}

/* RFC 6761 6.4: "invalid" and names under it never resolve. */
static bool dns__special_invalid(const char *host)
{
    size_t n = strlen(host);
    if (n > 0 && host[n - 1] == '.')
        n--;
    if (n == 7)
        return strncasecmp(host, "invalid", 7) == 0;
    return n > 8 && strncasecmp(host + n - 8, ".invalid", 8) == 0;
}

static dns_entry *dns__find(dns_cache *c, const char *host)
{
    for (dns_entry *e = c->head; e; e = e->next)
        if (strcasecmp(e->name, host) == 0)
            return e;
    return NULL;
}

static void dns__answer_from(dns_query *q, const dns_entry *e)
{
    q->status = 0;
    q->naddrs = e->naddrs;
    memcpy(q->addrs, e->addrs, e->naddrs * sizeof(e->addrs[0]));
}

static void dns__on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai)
{
    dns_entry *e = req->data;
    dns_cache *c = e->cache;
    c->running--;
    if (status == 0) {
        e->naddrs = 0;
        for (struct addrinfo *p = ai; p && e->naddrs < DNS_MAX_ADDRS; p = p->ai_next) {
            if ((p->ai_family != AF_INET && p->ai_family != AF_INET6) ||
                p->ai_addrlen > sizeof(e->addrs[0]))
                continue;
            memset(&e->addrs[e->naddrs], 0, sizeof(e->addrs[0]));
            memcpy(&e->addrs[e->naddrs], p->ai_addr, p->ai_addrlen);
            e->naddrs++;
        }
        if (e->naddrs == 0)
            status = UV_EAI_NONAME;
    }
    if (ai)
        uv_freeaddrinfo(ai);
    if (status == UV_EAI_CANCELED)
        status = UV_ECANCELED;

    if (status == 0 && e->in_table) {
        e->state = ENTRY_READY;
        e->expires = uv_now(c->loop) + c->ttl_ms;
    } else {
        if (status != 0)
            log_debug("dns", "%s: %s", e->name, uv_strerror(status));
        e_remove(e); /* failures are not cached */
    }
    dns_result res = {e->addrs, e->naddrs};
    while (e->waiters.head) {
        dns_query *q = e->waiters.head;
        q_unlink(q);
        q->cb(status, status == 0 ? &res : NULL, q->ud);
        free(q);
    }
    if (!e->in_table)
        free(e);
    dns__maybe_finish(c);
}

/* Makes room for one entry: drops the least recently used answered one. */
static bool dns__make_room(dns_cache *c)
{
    if (c->nentries < c->max_entries)
        return true;
    for (dns_entry *e = c->tail; e; e = e->prev) {
        if (e->state == ENTRY_READY) {
            e_remove(e);
            free(e);
            return true;
        }
    }
    return false;
}

static int dns__start(dns_cache *c, dns_entry *e)
{
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    e->req.data = e;
    int rc = uv_getaddrinfo(c->loop, &e->req, dns__on_resolved, e->name, NULL, &hints);
    if (rc == 0) {
        e->state = ENTRY_RESOLVING;
        c->running++;
        c->st.lookups++;
    }
    return rc;
}

int dns_resolve(dns_cache *c, const char *host, dns_cb cb, void *ud, dns_query **out)
{
    if (c->closing)
        return -ESHUTDOWN;
    size_t len = host ? strlen(host) : 0;
    if (len == 0 || len > DNS_NAME_MAX)
        return -EINVAL;
    dns_query *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->cb = cb;
    q->ud = ud;

    if (dns__literal(host, q)) {
        dns__ready(c, q);
        goto out_ok;
    }
    if (dns__special_invalid(host)) {
        q->status = UV_EAI_NONAME;
        dns__ready(c, q);
        goto out_ok;
    }
    dns_entry *e = dns__find(c, host);
    if (e && e->state == ENTRY_READY && uv_now(c->loop) < e->expires) {
        e_unlink(e);
        e_push_front(e);
        dns__answer_from(q, e);
        c->st.hits++;
        dns__ready(c, q);
        goto out_ok;
    }
    if (e && e->state == ENTRY_RESOLVING) {
        c->st.shared++;
        q_push(&e->waiters, q);
        goto out_ok;
    }
    if (!e) {
        bool keep = dns__make_room(c);
        e = calloc(1, sizeof(*e) + len + 1);
        if (!e) {
            free(q);
            return -ENOMEM;
        }
        memcpy(e->name, host, len + 1);
        e->cache = c;
        if (keep) {
            e->in_table = true;
            e_push_front(e);
            c->nentries++;
        }
    }
    /* new, or answered but stale: ask again (the old answer is dropped) */
    int rc = dns__start(c, e);
    if (rc != 0) {
        log_warn("dns", "%s: getaddrinfo not started: %s", host, uv_strerror(rc));
        e_remove(e);
        free(e);
        q->status = rc;
        dns__ready(c, q);
        goto out_ok;
    }
    q_push(&e->waiters, q);

out_ok:
    if (out)
        *out = q;
    return 0;
}

void dns_cancel(dns_query *q)
{
    if (!q)
        return;
    q_unlink(q);
    free(q);
}
