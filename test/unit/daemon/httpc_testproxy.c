/* httpc_testproxy.c - an HTTP CONNECT proxy on the test's own libuv loop
 * (127.0.0.1 only) for the proxy tests of the HTTP client.
 *
 * Included by test_httpc.c after httpc_testserver.c. The proxy reads a
 * CONNECT head, records its request line, Host and Proxy-Authorization in
 * the test's tp_record, answers 407 when the test demands credentials that
 * did not come, connects to the requested port on 127.0.0.1 ("localhost" or
 * "127.0.0.1" only; 502 otherwise) and then copies bytes both ways until
 * either side closes. A mode makes it misbehave instead. */

#define TP_MAX_SEEN 8u    /* CONNECT requests recorded */
#define TP_MAX_HEAD 8192u /* a CONNECT head it accepts */
#define TP_BIG_HEAD 9000u /* padding of the TP_BIGHEAD answer */

enum tp_mode {
    TP_SPLICE,  /* open the tunnel asked for */
    TP_MUTE,    /* read the CONNECT, never answer */
    TP_GARBAGE, /* answer with something that is not HTTP */
    TP_HANGUP,  /* close right after reading the CONNECT */
    TP_BIGHEAD, /* a 200 whose head is over 8 KiB */
    TP_EARLY,   /* a 200 with an HTTP response behind it in the same write; no upstream */
};

/* One CONNECT request as the proxy saw it. */
typedef struct tp_seen {
    char line[256]; /* request line without CRLF */
    char host[256]; /* Host header value, "" if none */
    char auth[256]; /* Proxy-Authorization value, "" if none */
} tp_seen;

/* What the proxy saw; owned by the test, so it outlives the proxy. */
typedef struct tp_record {
    unsigned connects;         /* CONNECT heads read */
    unsigned tunnels;          /* tunnels opened to the target */
    tp_seen seen[TP_MAX_SEEN]; /* the first TP_MAX_SEEN of them */
} tp_record;

typedef struct tp_proxy tp_proxy;

/* One client connection and, once asked for, its upstream. */
typedef struct tp_conn {
    tp_proxy *px;           /* owner */
    struct tp_conn *next;   /* px->conns */
    uv_tcp_t down;          /* from the client */
    uv_tcp_t up;            /* to the target */
    uv_connect_t creq;      /* connect to the target */
    int handles;            /* handles not closed yet */
    bool closing;           /* uv_close issued */
    bool answered;          /* the CONNECT head is complete */
    bool tunnel;            /* bytes are being copied */
    char head[TP_MAX_HEAD]; /* the CONNECT head so far */
    size_t head_len;        /* its length */
    size_t early_len;       /* client bytes after the head, at head + head_len - early_len */
} tp_conn;

struct tp_proxy {
    uv_loop_t *loop;       /* the test loop */
    uv_tcp_t listener;     /* 127.0.0.1:port */
    uint16_t port;         /* bound port */
    enum tp_mode mode;     /* behaviour */
    const char *want_auth; /* Proxy-Authorization value required, NULL = none */
    tp_record *rec;        /* the test's record */
    tp_conn *conns;        /* open connections */
    int handles;           /* listener + connection handles open */
    bool stopping;         /* tp_stop called */
};

tp_proxy *tp_start(uv_loop_t *loop, enum tp_mode mode, const char *want_auth, tp_record *rec);
uint16_t tp_port(const tp_proxy *px);
void tp_stop(tp_proxy *px);

/* A write that owns its bytes. */
typedef struct tp_write {
    uv_write_t req; /* the write */
    char data[];    /* its bytes */
} tp_write;

static void tp__maybe_free(tp_proxy *px)
{
    if (px->stopping && px->handles == 0)
        free(px);
}

static void tp__on_conn_close(uv_handle_t *h)
{
    tp_conn *c = h->data;
    tp_proxy *px = c->px;
    px->handles--;
    if (--c->handles > 0)
        return;
    for (tp_conn **pp = &px->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    free(c);
    tp__maybe_free(px);
}

static void tp__close(tp_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->down, tp__on_conn_close);
    uv_close((uv_handle_t *)&c->up, tp__on_conn_close);
}

static void tp__on_write(uv_write_t *req, int status)
{
    free(req->data);
}

static void tp__send(tp_conn *c, uv_tcp_t *to, const char *p, size_t n)
{
    if (c->closing || n == 0)
        return;
    tp_write *w = malloc(sizeof(*w) + n);
    assert_non_null(w);
    memcpy(w->data, p, n);
    w->req.data = w;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)to, &b, 1, tp__on_write) != 0) {
        free(w);
        tp__close(c);
    }
}

static void tp__send_str(tp_conn *c, const char *s)
{
    tp__send(c, &c->down, s, strlen(s));
}

static void tp__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    static char scratch[65536];
    *b = uv_buf_init(scratch, sizeof(scratch));
}

/* Bytes from the target go to the client. */
static void tp__on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    tp_conn *c = s->data;
    if (nread < 0)
        tp__close(c);
    else
        tp__send(c, &c->down, b->base, (size_t)nread);
}

static void tp__on_up_connect(uv_connect_t *req, int status)
{
    tp_conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        tp__send_str(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    c->tunnel = true;
    c->px->rec->tunnels++;
    tp__send_str(c, "HTTP/1.1 200 Connection established\r\n\r\n");
    tp__send(c, &c->up, c->head + c->head_len - c->early_len, c->early_len);
    uv_read_start((uv_stream_t *)&c->up, tp__alloc, tp__on_up_read);
}

/* Copies the value of header name (case-insensitive) out of head. */
static void tp__header(const char *head, const char *name, char *dst, size_t cap)
{
    size_t n = strlen(name);
    dst[0] = '\0';
    for (const char *l = strstr(head, "\r\n"); l && l[2] != '\r'; l = strstr(l + 2, "\r\n")) {
        const char *line = l + 2;
        if (strncasecmp(line, name, n) != 0 || line[n] != ':')
            continue;
        const char *v = line + n + 1;
        while (*v == ' ')
            v++;
        snprintf(dst, cap, "%.*s", (int)strcspn(v, "\r"), v);
        return;
    }
}

/* "CONNECT host:port HTTP/1.1": the port on 127.0.0.1 to connect to, 0
 * when the host is not this machine's. */
static uint16_t tp__target_port(const char *line)
{
    char auth[256];
    if (sscanf(line, "CONNECT %255s HTTP/1.1", auth) != 1)
        return 0;
    char *colon = strrchr(auth, ':');
    if (!colon)
        return 0;
    *colon = '\0';
    if (strcmp(auth, "localhost") != 0 && strcmp(auth, "127.0.0.1") != 0)
        return 0;
    return (uint16_t)strtoul(colon + 1, NULL, 10);
}

static void tp__answer(tp_conn *c)
{
    tp_proxy *px = c->px;
    tp_seen seen;
    memset(&seen, 0, sizeof(seen));
    snprintf(seen.line, sizeof(seen.line), "%.*s", (int)strcspn(c->head, "\r"), c->head);
    tp__header(c->head, "host", seen.host, sizeof(seen.host));
    tp__header(c->head, "proxy-authorization", seen.auth, sizeof(seen.auth));
    if (px->rec->connects < TP_MAX_SEEN)
        px->rec->seen[px->rec->connects] = seen;
    px->rec->connects++;
    if (px->want_auth && strcmp(seen.auth, px->want_auth) != 0) {
        tp__send_str(c, "HTTP/1.1 407 Proxy Authentication Required\r\n"
                        "Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    switch (px->mode) {
    case TP_SPLICE: {
        struct sockaddr_in a;
        uint16_t port = tp__target_port(seen.line);
        if (port == 0) {
            tp__send_str(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        uv_ip4_addr("127.0.0.1", port, &a);
        if (uv_tcp_connect(&c->creq, &c->up, (const struct sockaddr *)&a, tp__on_up_connect) != 0)
            tp__close(c);
        return;
    }
    case TP_MUTE:
        return;
    case TP_GARBAGE:
        tp__send_str(c, "SSH-2.0-OpenSSH_9.6\r\n\r\n");
        return;
    case TP_HANGUP:
        tp__close(c);
        return;
    case TP_BIGHEAD: {
        char *big = malloc(TP_BIG_HEAD + 64);
        assert_non_null(big);
        int n = snprintf(big, 64, "HTTP/1.1 200 OK\r\nX-Pad: ");
        memset(big + n, 'p', TP_BIG_HEAD);
        memcpy(big + n + TP_BIG_HEAD, "\r\n\r\n", 4);
        tp__send(c, &c->down, big, (size_t)n + TP_BIG_HEAD + 4);
        free(big);
        return;
    }
    case TP_EARLY:
        tp__send_str(c, "HTTP/1.1 200 Connection established\r\n\r\n"
                        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly");
        return;
    }
}

/* Client bytes: the CONNECT head until it is complete, then the tunnel. */
static void tp__on_down_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    tp_conn *c = s->data;
    if (nread < 0) {
        tp__close(c);
        return;
    }
    if (c->tunnel) {
        tp__send(c, &c->up, b->base, (size_t)nread);
        return;
    }
    if (c->head_len + (size_t)nread >= sizeof(c->head)) {
        tp__close(c);
        return;
    }
    memcpy(c->head + c->head_len, b->base, (size_t)nread);
    c->head_len += (size_t)nread;
    c->head[c->head_len] = '\0';
    if (c->answered) {
        c->early_len += (size_t)nread; /* before the tunnel is up: kept for it */
        return;
    }
    const char *end = strstr(c->head, "\r\n\r\n");
    if (!end)
        return;
    c->answered = true;
    c->early_len = c->head_len - (size_t)(end + 4 - c->head);
    tp__answer(c);
}

static void tp__on_connection(uv_stream_t *l, int status)
{
    tp_proxy *px = l->data;
    if (status < 0 || px->stopping)
        return;
    tp_conn *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->px = px;
    uv_tcp_init(px->loop, &c->down);
    uv_tcp_init(px->loop, &c->up);
    c->down.data = c->up.data = c->creq.data = c;
    c->handles = 2;
    px->handles += 2;
    c->next = px->conns;
    px->conns = c;
    if (uv_accept(l, (uv_stream_t *)&c->down) != 0) {
        tp__close(c);
        return;
    }
    uv_read_start((uv_stream_t *)&c->down, tp__alloc, tp__on_down_read);
}

static void tp__on_listener_close(uv_handle_t *h)
{
    tp_proxy *px = h->data;
    px->handles--;
    tp__maybe_free(px);
}

/* Starts a proxy on 127.0.0.1 (a free port) that records into *rec. */
tp_proxy *tp_start(uv_loop_t *loop, enum tp_mode mode, const char *want_auth, tp_record *rec)
{
    tp_proxy *px = calloc(1, sizeof(*px));
    if (!px)
        return NULL;
    px->loop = loop;
    px->mode = mode;
    px->want_auth = want_auth;
    px->rec = rec;
    memset(rec, 0, sizeof(*rec));
    uv_tcp_init(loop, &px->listener);
    px->listener.data = px;
    px->handles = 1;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    if (uv_tcp_bind(&px->listener, (const struct sockaddr *)&a, 0) != 0 ||
        uv_listen((uv_stream_t *)&px->listener, 128, tp__on_connection) != 0 ||
        uv_tcp_getsockname(&px->listener, (struct sockaddr *)&bound, &blen) != 0) {
        px->stopping = true;
        uv_close((uv_handle_t *)&px->listener, tp__on_listener_close);
        return NULL;
    }
    px->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    return px;
}

uint16_t tp_port(const tp_proxy *px)
{
    return px->port;
}

/* Closes the listener and every connection; frees itself afterwards. */
void tp_stop(tp_proxy *px)
{
    if (!px || px->stopping)
        return;
    px->stopping = true;
    for (tp_conn *c = px->conns; c; c = c->next)
        tp__close(c);
    uv_close((uv_handle_t *)&px->listener, tp__on_listener_close);
}
