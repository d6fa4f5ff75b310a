/*
 * mbox_client: notify-pull on a libevent loop (see mbox_client.h).
 *
 * Two independent halves share the client struct:
 *
 *   - the long connection, an explicit state machine moved only by
 *     mc_set_state(): connecting -> handshake -> login -> online, and from
 *     any of them to backoff (then connecting again) or stopped. The
 *     bufferevent is never freed inside its own callback: mc_disconnect()
 *     detaches it and a zero-timeout event frees it after the callback.
 *   - the sync loop over evhttp: one request in flight at most; notifies
 *     that arrive meanwhile set a flag that causes one more round.
 *
 * TLS: both halves use OpenSSL bufferevents made from one SSL_CTX (peer
 * verification on, TLS 1.2 at least). The verify callback keeps the first
 * failure in the half's tls_error buffer (the SSL's app data), so a
 * refused certificate is reported by name
 * whatever libevent does with the OpenSSL error queue. An HTTPS sync gets
 * a fresh evhttp connection per round: evhttp cannot reconnect an
 * OpenSSL bufferevent once the server has closed it.
 */
#include "mbox_client.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "budget.h"
#include "log.h"
#include "mbox.pb-c.h"
#include "pbjson.h"
#include "ws.h"

#define MC_WS_MESSAGE_MAX  (64 * 1024)        /* a server frame is a small JSON object */
#define MC_HANDSHAKE_MAX   8192               /* 101 response header block */
#define MC_SYNC_BODY_MAX   (16 * 1024 * 1024) /* one sync response */
#define MC_SYNC_HEADER_MAX (64 * 1024)
#define MC_FRAME_BUDGET    (256 * 1024) /* protobuf-c heap for one binary frame */
#define MC_HEARTBEAT_MAX   3600

/* ---- small helpers ------------------------------------------------------- */

static int64_t
mc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wall clock in unix µs (token expiries are wall-clock times). */
static int64_t
mc_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint32_t
mc_random_u32(void)
{
    uint32_t v = 0;
    if (RAND_bytes((unsigned char *)&v, sizeof(v)) != 1) {
        /* Jitter only needs to differ between clients; this is not a secret. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        v = (uint32_t)ts.tv_nsec ^ (uint32_t)getpid() * 2654435761u;
    }
    return v;
}

static struct timeval
mc_tv(uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* ---- URLs ---------------------------------------------------------------- */

static bool
mc_host_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_';
}

bool
mbox_url_parse(const char *url, const char *scheme, struct mbox_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (url == NULL || *url == '\0') {
        snprintf(err, errlen, "empty URL");
        return false;
    }
    size_t sl = strlen(scheme);
    if (strncasecmp(url, scheme, sl) != 0) {
        snprintf(err, errlen, "URL must start with %s:// or %ss://", scheme, scheme);
        return false;
    }
    if (url[sl] == 's' || url[sl] == 'S') {
        out->tls = true;
        sl++;
    }
    if (strncmp(url + sl, "://", 3) != 0) {
        snprintf(err, errlen, "URL must start with %s:// or %ss://", scheme, scheme);
        out->tls = false;
        return false;
    }
    const char *p = url + sl + 3;
    for (const char *q = p; *q; q++) {
        unsigned char ch = (unsigned char)*q;
        if (ch <= 0x20 || ch >= 0x7f || ch == '@' || ch == '?' || ch == '#') {
            snprintf(err, errlen,
                     "URL holds a character that is not allowed here (user info, "
                     "query, fragment, space or non-ASCII)");
            return false;
        }
    }
    const char *hs, *he;
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (he == NULL) {
            snprintf(err, errlen, "unterminated [IPv6] host");
            return false;
        }
        for (const char *q = hs; q < he; q++)
            if (!(mc_host_char(*q) || *q == ':')) {
                snprintf(err, errlen, "bad character in [IPv6] host");
                return false;
            }
        p = he + 1;
    } else {
        hs = p;
        while (*p && *p != ':' && *p != '/') {
            if (!mc_host_char(*p)) {
                snprintf(err, errlen, "bad character in host");
                return false;
            }
            p++;
        }
        he = p;
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl > MBOX_URL_HOST_MAX) {
        snprintf(err, errlen, hl == 0 ? "missing host" : "host too long");
        return false;
    }
    memcpy(out->host, hs, hl);
    out->port = out->tls ? 443 : 80;
    if (*p == ':') {
        p++;
        long port = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 6) {
            port = port * 10 + (*p - '0');
            p++;
            digits++;
        }
        if (digits == 0 || port < 1 || port > 65535 || (*p != '\0' && *p != '/')) {
            snprintf(err, errlen, "bad port");
            return false;
        }
        out->port = (int)port;
    } else if (*p != '\0' && *p != '/') {
        snprintf(err, errlen, "bad host");
        return false;
    }
    if (*p == '\0') {
        strcpy(out->path, "/");
    } else {
        if (strlen(p) > MBOX_URL_PATH_MAX) {
            snprintf(err, errlen, "path too long");
            return false;
        }
        strcpy(out->path, p);
    }
    return true;
}

/* ---- backoff ------------------------------------------------------------- */

void
mbox_backoff_init(struct mbox_backoff *b, uint32_t base_ms, uint32_t cap_ms)
{
    b->base_ms = base_ms > 0 ? base_ms : 1;
    b->cap_ms = cap_ms >= b->base_ms ? cap_ms : b->base_ms;
    b->attempt = 0;
}

uint32_t
mbox_backoff_ceiling(const struct mbox_backoff *b)
{
    uint64_t c = b->base_ms;
    for (uint32_t i = 0; i < b->attempt && c < b->cap_ms; i++)
        c *= 2;
    return c < b->cap_ms ? (uint32_t)c : b->cap_ms;
}

uint32_t
mbox_backoff_next(struct mbox_backoff *b, uint32_t rnd)
{
    uint32_t ceil = mbox_backoff_ceiling(b);
    uint32_t floor = b->base_ms / 4;
    if (b->attempt < UINT32_MAX)
        b->attempt++;
    /* Uniform over [floor, ceil] without modulo bias worth caring about at these sizes. */
    uint64_t span = (uint64_t)(ceil - floor) + 1;
    return floor + (uint32_t)(((uint64_t)rnd * span) >> 32);
}

void
mbox_backoff_reset(struct mbox_backoff *b)
{
    b->attempt = 0;
}

/* ---- dedupe set ---------------------------------------------------------- */

/*
 * A ring of keys (oldest at head) indexed by a chained hash table. Chains
 * hold slot numbers + 1 so that 0 can mean "none".
 */
struct mbox_dedupe {
    size_t cap, count, head;
    size_t nbuckets; /* power of two >= 2 * cap */
    char (*keys)[MBOX_DEDUPE_KEY_MAX + 1];
    uint32_t *bucket;
    uint32_t *next;
};

static uint64_t
mc_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

struct mbox_dedupe *
mbox_dedupe_new(size_t cap)
{
    if (cap == 0 || cap > UINT32_MAX / 4)
        return NULL;
    struct mbox_dedupe *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->cap = cap;
    d->nbuckets = 1;
    while (d->nbuckets < 2 * cap)
        d->nbuckets *= 2;
    d->keys = calloc(cap, sizeof(*d->keys));
    d->bucket = calloc(d->nbuckets, sizeof(uint32_t));
    d->next = calloc(cap, sizeof(uint32_t));
    if (d->keys == NULL || d->bucket == NULL || d->next == NULL) {
        mbox_dedupe_free(d);
        return NULL;
    }
    return d;
}

void
mbox_dedupe_free(struct mbox_dedupe *d)
{
    if (d == NULL)
        return;
    free(d->keys);
    free(d->bucket);
    free(d->next);
    free(d);
}

bool
mbox_dedupe_contains(const struct mbox_dedupe *d, const char *key)
{
    size_t b = (size_t)mc_hash(key) & (d->nbuckets - 1);
    for (uint32_t s = d->bucket[b]; s != 0; s = d->next[s - 1])
        if (strcmp(d->keys[s - 1], key) == 0)
            return true;
    return false;
}

/* Removes slot from its hash chain (the ring itself is moved by the caller). */
static void
mc_dedupe_unlink(struct mbox_dedupe *d, size_t slot)
{
    size_t b = (size_t)mc_hash(d->keys[slot]) & (d->nbuckets - 1);
    uint32_t *link = &d->bucket[b];
    while (*link != 0) {
        if (*link - 1 == slot) {
            *link = d->next[slot];
            d->next[slot] = 0;
            return;
        }
        link = &d->next[*link - 1];
    }
}

int
mbox_dedupe_add(struct mbox_dedupe *d, const char *key)
{
    if (strlen(key) > MBOX_DEDUPE_KEY_MAX)
        return -1;
    if (mbox_dedupe_contains(d, key))
        return 0;
    size_t slot;
    if (d->count == d->cap) {
        slot = d->head;
        mc_dedupe_unlink(d, slot);
        d->head = (d->head + 1) % d->cap;
    } else {
        slot = (d->head + d->count) % d->cap;
        d->count++;
    }
    strcpy(d->keys[slot], key);
    size_t b = (size_t)mc_hash(key) & (d->nbuckets - 1);
    d->next[slot] = d->bucket[b];
    d->bucket[b] = (uint32_t)(slot + 1);
    return 1;
}

size_t
mbox_dedupe_count(const struct mbox_dedupe *d)
{
    return d->count;
}

void
mbox_dedupe_clear(struct mbox_dedupe *d)
{
    memset(d->bucket, 0, d->nbuckets * sizeof(uint32_t));
    memset(d->next, 0, d->cap * sizeof(uint32_t));
    d->count = 0;
    d->head = 0;
}

/* Writes a string-or-integer JSON id into out; false when absent or malformed. */
static bool
mc_json_id(const json_t *v, char *out, size_t outlen)
{
    if (json_is_string(v)) {
        uint64_t u;
        if (!pbjson_parse_u64(json_string_value(v), &u))
            return false;
        snprintf(out, outlen, "%" PRIu64, u);
        return true;
    }
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        snprintf(out, outlen, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return true;
    }
    return false;
}

bool
mbox_item_key(const json_t *item, char *out, size_t outlen)
{
    const char *kind = json_string_value(json_object_get(item, "kind"));
    if (kind == NULL || *kind == '\0' || strlen(kind) > 16)
        return false;
    bool notice = strcmp(kind, "notice") == 0 || strcmp(kind, "retract") == 0;
    char id[24];
    if (!mc_json_id(json_object_get(item, notice ? "notice_id" : "msg_id"), id, sizeof(id)))
        return false;
    char ver[24] = "0";
    const json_t *v = json_object_get(item, "version");
    if (v != NULL && !json_is_null(v) && !mc_json_id(v, ver, sizeof(ver)))
        return false;
    int n = snprintf(out, outlen, "%s/%s/%s", kind, id, ver);
    return n > 0 && (size_t)n < outlen;
}

/* ---- cursor file --------------------------------------------------------- */

bool
mbox_cursor_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        if (!ok || n >= MBOX_CURSOR_MAX)
            return false;
    }
    return true;
}

enum mbox_cursor_file
mbox_cursor_load(const char *path, char *out, size_t outlen)
{
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? MBOX_CURSOR_FILE_MISSING : MBOX_CURSOR_FILE_INVALID;
    char buf[MBOX_CURSOR_MAX + 3];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            close(fd);
            return MBOX_CURSOR_FILE_INVALID;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len == sizeof(buf))
            break;
    }
    close(fd);
    /* Exactly "<cursor>\n": a missing newline means a torn or foreign file. */
    if (len == 0 || len == sizeof(buf) || buf[len - 1] != '\n')
        return MBOX_CURSOR_FILE_INVALID;
    buf[len - 1] = '\0';
    if (memchr(buf, '\0', len - 1) != NULL || !mbox_cursor_valid(buf) || len > outlen)
        return MBOX_CURSOR_FILE_INVALID;
    memcpy(out, buf, len);
    return MBOX_CURSOR_FILE_OK;
}

bool
mbox_cursor_save(const char *path, const char *cursor, char *err, size_t errlen)
{
    if (!mbox_cursor_valid(cursor)) {
        snprintf(err, errlen, "not a cursor");
        return false;
    }
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        snprintf(err, errlen, "path too long");
        return false;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "open %s: %s", tmp, strerror(errno));
        return false;
    }
    char line[MBOX_CURSOR_MAX + 2];
    size_t len = (size_t)snprintf(line, sizeof(line), "%s\n", cursor);
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            snprintf(err, errlen, "write %s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return false;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        snprintf(err, errlen, "fsync %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return false;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "rename %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return false;
    }
    /* Make the rename itself durable. */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return true;
}

/* ---- the client ---------------------------------------------------------- */

enum mc_state {
    MC_IDLE = 0,
    MC_CONNECTING, /* TCP connect in progress */
    MC_HANDSHAKE,  /* upgrade request sent, waiting for 101 */
    MC_LOGIN,      /* login frame sent, waiting for login_ack */
    MC_ONLINE,     /* logged in: heartbeats, notifies */
    MC_BACKOFF,    /* waiting to reconnect */
    MC_STOPPED,    /* kicked: no more reconnects */
};

static const char *const mc_state_names[] = {
    [MC_IDLE] = "idle",       [MC_CONNECTING] = "connecting", [MC_HANDSHAKE] = "handshake",
    [MC_LOGIN] = "login",     [MC_ONLINE] = "online",         [MC_BACKOFF] = "backoff",
    [MC_STOPPED] = "stopped",
};

struct mbox_client {
    struct event_base *base;
    struct mbox_client_config cfg; /* string fields point into the copies below */
    char *strs[11];                /* owned copies of cfg's strings */
    SSL_CTX *tls;                  /* with ws_tls or sdk_tls */
    /* the last certificate verification failure of each half */
    char ws_tls_error[256], sdk_tls_error[256];

    /* long connection */
    enum mc_state state;
    struct bufferevent *bev;
    struct bufferevent *dead_bev; /* detached, freed by reap_ev */
    struct event *reap_ev;
    struct event *retry_ev;
    struct event *ping_ev;
    struct event *refresh_ev;   /* token refresh before the session's expiry */
    int64_t session_expires_us; /* from the last login_ack / refresh_ack, 0: unknown */
    struct ws_parser ws;
    char ws_accept[WS_ACCEPT_LEN + 1]; /* expected Sec-WebSocket-Accept */
    uint32_t heartbeat_s;
    struct mbox_backoff backoff;
    int64_t online_since_ms;
    bool kicked;
    uint64_t connects; /* attempts, for the log */

    /* sync */
    struct evhttp_connection *http;
    struct evhttp_connection *dead_http; /* retired inside its callback, freed by reap_ev */
    struct event *sync_retry_ev;
    struct mbox_backoff sync_backoff;
    bool sync_running;  /* a round is in progress (request in flight or retry scheduled) */
    bool sync_inflight; /* an HTTP request is in flight */
    bool sync_pending;  /* a notify arrived during the round: one more round */
    bool sync_oneshot;
    bool reset_in_round;
    bool round_fresh; /* the round's first page is next */
    bool http_broken; /* the last request failed: use a new connection */
    char cursor[MBOX_CURSOR_MAX + 1];
    char sync_path[MBOX_URL_PATH_MAX + 16];
    struct mbox_dedupe *dedupe;
};

static void mc_connect(struct mbox_client *c);
static void mc_sync_start_page(struct mbox_client *c);

/* The one place the long connection changes state. */
static void
mc_set_state(struct mbox_client *c, enum mc_state to)
{
    if (c->state == to)
        return;
    log_debug("mbox_client_state", "from=%s to=%s", mc_state_names[c->state], mc_state_names[to]);
    c->state = to;
    if (c->cfg.on_state)
        c->cfg.on_state(mc_state_names[to], c->cfg.arg);
}

static void
mc_reap(evutil_socket_t fd, short what, void *arg)
{
    struct mbox_client *c = arg;
    if (c->dead_bev) {
        bufferevent_free(c->dead_bev);
        c->dead_bev = NULL;
    }
    if (c->dead_http) {
        evhttp_connection_free(c->dead_http);
        c->dead_http = NULL;
    }
}

/* ---- TLS ----------------------------------------------------------------- */

/* True when host is an IPv4 or IPv6 literal (verified as an IP address, no SNI). */
static bool
mc_host_is_ip(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* Keeps the first verification failure of a handshake for the error message. */
static int
mc_tls_verify_cb(int ok, X509_STORE_CTX *store)
{
    if (ok)
        return ok;
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    char *buf = ssl ? SSL_get_app_data(ssl) : NULL; /* 256 bytes, see mc_tls_new */
    if (buf != NULL && buf[0] == '\0') {
        int e = X509_STORE_CTX_get_error(store);
        snprintf(buf, 256, "certificate verify failed: %s (depth %d)",
                 X509_verify_cert_error_string(e), X509_STORE_CTX_get_error_depth(store));
    }
    return ok;
}

/* The client's SSL_CTX: peer verification against ca_file or the system store. */
static SSL_CTX *
mc_tls_ctx(struct mbox_client *c, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create the TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, mc_tls_verify_cb);
    int ok = c->cfg.ca_file ? SSL_CTX_load_verify_locations(ctx, c->cfg.ca_file, NULL)
                            : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char why[160];
        ERR_error_string_n(ERR_get_error(), why, sizeof(why));
        snprintf(err, errlen, "cannot load the CA certificates%s%s: %s",
                 c->cfg.ca_file ? " of " : " of the system store",
                 c->cfg.ca_file ? c->cfg.ca_file : "", why);
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/*
 * A new SSL for host: SNI for a name, and the name or address the
 * certificate must carry. A verification failure goes into errbuf (256
 * bytes, emptied here).
 */
static SSL *
mc_tls_new(struct mbox_client *c, const char *host, char errbuf[256])
{
    SSL *ssl = SSL_new(c->tls);
    if (ssl == NULL)
        return NULL;
    errbuf[0] = '\0';
    SSL_set_app_data(ssl, errbuf);
    bool ok;
    if (mc_host_is_ip(host)) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
    } else {
        ok = SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
    }
    if (!ok) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/*
 * A TLS bufferevent for host on a socket it connects later, or NULL. It
 * owns ssl and its socket (freed with it). Servers that close without
 * close_notify are not errors: the protocol above frames its own ends.
 */
static struct bufferevent *
mc_tls_bev(struct mbox_client *c, const char *host, char errbuf[256], int opts)
{
    SSL *ssl = mc_tls_new(c, host, errbuf);
    if (ssl == NULL)
        return NULL;
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, opts);
    if (bev == NULL) {
        SSL_free(ssl);
        return NULL;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

/*
 * Describes why the TLS connection of bev failed into out: the
 * certificate failure kept by the verify callback, else the first OpenSSL
 * error, else the socket error. Empty when there is nothing TLS to say.
 */
static void
mc_tls_reason(const char *errbuf, struct bufferevent *bev, const char *host, char *out,
              size_t outlen)
{
    out[0] = '\0';
    unsigned long e, first = 0;
    while (bev != NULL && (e = bufferevent_get_openssl_error(bev)) != 0)
        if (first == 0)
            first = e;
    if (errbuf[0] != '\0') {
        snprintf(out, outlen, "tls: %s: %s", host, errbuf);
    } else if (first != 0) {
        char why[160];
        ERR_error_string_n(first, why, sizeof(why));
        snprintf(out, outlen, "tls: %s: %s", host, why);
    }
}

/*
 * Ends the connection for `reason` and schedules a reconnect (or stops
 * after a kick). The bufferevent is detached here and freed by reap_ev,
 * since this usually runs inside its callback.
 */
static void
mc_disconnect(struct mbox_client *c, const char *reason)
{
    char q[160];
    enum mc_state was = c->state;
    if (c->bev) {
        bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
        bufferevent_disable(c->bev, EV_READ);
        if (c->dead_bev)
            bufferevent_free(c->dead_bev); /* an older one, callbacks long gone */
        c->dead_bev = c->bev;
        c->bev = NULL;
        event_active(c->reap_ev, EV_TIMEOUT, 0);
    }
    evtimer_del(c->ping_ev);
    evtimer_del(c->refresh_ev);
    log_info("mbox_client_disconnect", "state=%s reason=%s", mc_state_names[was],
             log_q(q, sizeof(q), reason));
    if (c->kicked && !c->cfg.reconnect_after_kick) {
        mc_set_state(c, MC_STOPPED);
        return;
    }
    c->kicked = false;
    if (was == MC_ONLINE && mc_now_ms() - c->online_since_ms >= (int64_t)c->cfg.stable_ms)
        mbox_backoff_reset(&c->backoff);
    uint32_t ceil = mbox_backoff_ceiling(&c->backoff);
    uint32_t attempt = c->backoff.attempt + 1;
    uint32_t delay = mbox_backoff_next(&c->backoff, mc_random_u32());
    log_info("mbox_client_retry", "delay_ms=%" PRIu32 " ceiling_ms=%" PRIu32 " attempt=%" PRIu32,
             delay, ceil, attempt);
    mc_set_state(c, MC_BACKOFF);
    struct timeval tv = mc_tv(delay);
    evtimer_add(c->retry_ev, &tv);
}

/* Queues one masked frame. false when the frame cannot be built (too large, OOM). */
static bool
mc_send_frame(struct mbox_client *c, int opcode, const void *payload, size_t len)
{
    if (c->bev == NULL)
        return false;
    uint8_t mask[4];
    if (RAND_bytes(mask, sizeof(mask)) != 1)
        return false;
    size_t cap = len + WS_FRAME_HEADER_MAX;
    uint8_t small[256];
    uint8_t *buf = cap <= sizeof(small) ? small : malloc(cap);
    if (buf == NULL)
        return false;
    size_t n = ws_frame_build_masked(buf, cap, opcode, true, payload, len, mask);
    bool ok = n > 0 && bufferevent_write(c->bev, buf, n) == 0;
    if (buf != small)
        free(buf);
    return ok;
}

static bool
mc_send_json(struct mbox_client *c, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (s == NULL)
        return false;
    bool ok = mc_send_frame(c, WS_OP_TEXT, s, strlen(s));
    free(s);
    return ok;
}

/* Sends a close frame (best effort), then drops the connection. */
static void
mc_fail(struct mbox_client *c, uint16_t code, const char *reason)
{
    if (code != 0 && c->bev && (c->state == MC_LOGIN || c->state == MC_ONLINE)) {
        uint8_t payload[125];
        size_t n = ws_close_payload(payload, code, NULL);
        (void)mc_send_frame(c, WS_OP_CLOSE, payload, n);
    }
    mc_disconnect(c, reason);
}

static void
mc_ping(evutil_socket_t fd, short what, void *arg)
{
    struct mbox_client *c = arg;
    if (c->state == MC_ONLINE && !mc_send_json(c, json_pack("{s:s}", "type", "ping")))
        mc_fail(c, WS_CLOSE_INTERNAL, "ping_send_failed");
}

static void
mc_retry(evutil_socket_t fd, short what, void *arg)
{
    mc_connect(arg);
}

/* Builds the upgrade request with a fresh random key and remembers the expected accept. */
static bool
mc_send_handshake(struct mbox_client *c)
{
    uint8_t raw[16];
    char key[WS_KEY_LEN + 1];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return false;
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
    ws_handshake_accept_key(key, c->ws_accept);
    bool v6 = strchr(c->cfg.ws_host, ':') != NULL;
    return evbuffer_add_printf(bufferevent_get_output(c->bev),
                               "GET %s HTTP/1.1\r\n"
                               "Host: %s%s%s:%d\r\n"
                               "Upgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Key: %s\r\n"
                               "Sec-WebSocket-Version: 13\r\n"
                               "User-Agent: mbox-client/" MBOX_VERSION
                               " platform/%s app_version/%s core_level/%s\r\n"
                               "\r\n",
                               c->cfg.ws_path, v6 ? "[" : "", c->cfg.ws_host, v6 ? "]" : "",
                               c->cfg.ws_port, key, c->cfg.platform ? c->cfg.platform : "",
                               c->cfg.app_version ? c->cfg.app_version : "",
                               c->cfg.core_level ? c->cfg.core_level : "") > 0;
}

/* True when the comma-separated header value lists token (case-insensitive). */
static bool
mc_list_has(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, token, tl) == 0)
            return true;
    }
    return false;
}

/*
 * Checks the server's handshake response in buf[0..len) (the header block
 * without its final CRLF CRLF). NULL when it is a valid 101 for our key,
 * else a static reason.
 */
static const char *
mc_check_101(const struct mbox_client *c, const char *buf, size_t len, int *status)
{
    *status = 0;
    const char *eol = memmem(buf, len, "\r\n", 2);
    const char *end = buf + len;
    if (eol == NULL)
        eol = end;
    if ((size_t)(eol - buf) < 12 || memcmp(buf, "HTTP/1.1 ", 9) != 0)
        return "bad_status_line";
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return "bad_status_line";
        *status = *status * 10 + (buf[i] - '0');
    }
    if (*status != 101)
        return "handshake_refused";
    bool upgrade = false, connection = false;
    int accepts = 0;
    bool accept_ok = false;
    const char *p = eol;
    while (p < end) {
        p += 2; /* the CRLF ending the previous line */
        const char *le = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (le == NULL)
            le = end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon == NULL || colon == p)
            return "bad_header_line";
        size_t nl = (size_t)(colon - p);
        const char *v = colon + 1;
        while (v < le && (*v == ' ' || *v == '\t'))
            v++;
        const char *ve = le;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t vl = (size_t)(ve - v);
        if (nl == 7 && strncasecmp(p, "upgrade", 7) == 0)
            upgrade = upgrade || mc_list_has(v, vl, "websocket");
        else if (nl == 10 && strncasecmp(p, "connection", 10) == 0)
            connection = connection || mc_list_has(v, vl, "upgrade");
        else if (nl == 20 && strncasecmp(p, "sec-websocket-accept", 20) == 0) {
            accepts++;
            accept_ok = vl == WS_ACCEPT_LEN && memcmp(v, c->ws_accept, WS_ACCEPT_LEN) == 0;
        } else if (nl == 24 && strncasecmp(p, "sec-websocket-extensions", 24) == 0)
            return "unrequested_extension";
        p = le;
    }
    if (!upgrade)
        return "missing_upgrade_websocket";
    if (!connection)
        return "missing_connection_upgrade";
    if (accepts != 1 || !accept_ok)
        return "bad_accept_key";
    return NULL;
}

/* A token from the config or token_cb: non-empty, one line, at most MBOX_TOKEN_MAX bytes. */
static bool
mc_token_ok(const char *t)
{
    return t != NULL && *t != '\0' && strnlen(t, MBOX_TOKEN_MAX + 1) <= MBOX_TOKEN_MAX &&
           strpbrk(t, "\r\n") == NULL;
}

/* Asks token_cb for a new token and makes it current (login, refresh, sync); false when none. */
static bool
mc_new_token(struct mbox_client *c, const char *why)
{
    if (c->cfg.token_cb == NULL)
        return false;
    char *buf = calloc(1, MBOX_TOKEN_MAX + 1);
    if (buf == NULL)
        return false;
    bool ok = c->cfg.token_cb(buf, MBOX_TOKEN_MAX + 1, c->cfg.arg);
    buf[MBOX_TOKEN_MAX] = '\0';
    if (!ok || !mc_token_ok(buf)) {
        log_warn("mbox_client_token_cb_failed", "why=%s returned=%d", why, (int)ok);
        free(buf);
        return false;
    }
    if (strcmp(buf, c->cfg.token) == 0) {
        /* Nothing new (a token file not yet rewritten): do not refresh in a loop. */
        log_info("mbox_client_token_unchanged", "why=%s", why);
        free(buf);
        return false;
    }
    for (size_t i = 0; i < sizeof(c->strs) / sizeof(c->strs[0]); i++) {
        if (c->strs[i] == c->cfg.token) {
            free(c->strs[i]);
            c->strs[i] = buf;
            break;
        }
    }
    c->cfg.token = buf;
    log_info("mbox_client_token_renewed", "why=%s", why);
    return true;
}

uint32_t
mbox_refresh_delay_ms(int64_t now_us, int64_t expires_at_us)
{
    if (expires_at_us <= now_us)
        return 0;
    int64_t left_ms = (expires_at_us - now_us) / 1000;
    int64_t margin = left_ms / 5;
    if (margin > 60000)
        margin = 60000;
    int64_t d = left_ms - margin;
    return d > INT32_MAX ? (uint32_t)INT32_MAX : (uint32_t)d;
}

bool
mbox_token_load(const char *path, char *out, size_t outlen)
{
    if (outlen == 0)
        return false;
    out[0] = '\0';
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return false;
    char buf[MBOX_TOKEN_MAX + 64];
    size_t n = fread(buf, 1, sizeof(buf), f);
    bool whole = feof(f) && !ferror(f);
    fclose(f);
    if (!whole)
        return false; /* too long (or unreadable): never a truncated token */
    while (n > 0 &&
           (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        n--;
    if (n == 0 || n > MBOX_TOKEN_MAX || n >= outlen || memchr(buf, '\0', n) != NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)buf[i] <= ' ' || buf[i] == 0x7f)
            return false; /* one token: no inner spaces or line breaks */
    }
    memcpy(out, buf, n);
    out[n] = '\0';
    return true;
}

/* Schedules the token refresh from an ack's expires_at (absent: the server does not expire). */
static void
mc_schedule_refresh(struct mbox_client *c, const json_t *ack)
{
    const char *s = json_string_value(json_object_get(ack, "expires_at"));
    if (c->cfg.token_cb == NULL || s == NULL)
        return;
    char *end;
    errno = 0;
    unsigned long long at = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s || at > INT64_MAX)
        return;
    c->session_expires_us = (int64_t)at;
    struct timeval tv = mc_tv(mbox_refresh_delay_ms(mc_now_us(), (int64_t)at));
    evtimer_add(c->refresh_ev, &tv);
}

/* The refresh timer: a new token from token_cb goes to lcsd in a refresh frame. */
static void
mc_refresh(evutil_socket_t fd, short what, void *arg)
{
    struct mbox_client *c = arg;
    if (c->state != MC_ONLINE)
        return;
    if (!mc_new_token(c, "refresh")) {
        /* None yet (a renewer may be late): ask again halfway to the expiry, a few times;
         * past that the server closes with 4401 and we ask once more before reconnecting. */
        int64_t left_ms = (c->session_expires_us - mc_now_us()) / 1000;
        if (left_ms >= 400) {
            struct timeval tv = mc_tv((uint32_t)(left_ms / 2));
            evtimer_add(c->refresh_ev, &tv);
        }
        return;
    }
    if (!mc_send_json(c, json_pack("{s:s, s:s}", "type", "refresh", "token", c->cfg.token)))
        mc_fail(c, WS_CLOSE_INTERNAL, "refresh_send_failed");
}

static void
mc_send_login(struct mbox_client *c)
{
    json_t *j = json_pack("{s:s, s:s, s:s}", "type", "login", "token", c->cfg.token, "device_id",
                          c->cfg.device_id);
    if (j && c->cfg.platform)
        json_object_set_new(j, "platform", json_string(c->cfg.platform));
    if (j && c->cfg.app_version)
        json_object_set_new(j, "app_version", json_string(c->cfg.app_version));
    if (j && c->cfg.core_level)
        json_object_set_new(j, "core_level", json_string(c->cfg.core_level));
    if (j == NULL || !mc_send_json(c, j)) {
        mc_fail(c, WS_CLOSE_INTERNAL, "login_send_failed");
        return;
    }
    mc_set_state(c, MC_LOGIN);
}

/* Reacts to one decoded server frame. */
static void
mc_on_frame(struct mbox_client *c, json_t *f)
{
    char q[160];
    const char *type = json_string_value(json_object_get(f, "type"));
    if (type == NULL) {
        mc_fail(c, WS_CLOSE_PROTOCOL_ERROR, "frame_without_type");
        return;
    }
    if (c->state == MC_LOGIN) {
        if (strcmp(type, "login_ack") != 0) {
            mc_fail(c, WS_CLOSE_PROTOCOL_ERROR, "expected_login_ack");
            return;
        }
        if (!json_is_true(json_object_get(f, "ok"))) {
            const char *why = json_string_value(json_object_get(f, "reason"));
            log_warn("mbox_client_login_rejected", "reason=%s",
                     log_q(q, sizeof(q), why ? why : ""));
            if (why != NULL && strcmp(why, "expired") == 0)
                (void)mc_new_token(c, "login_expired"); /* the reconnect logs in with it */
            mc_fail(c, WS_CLOSE_NORMAL, "login_rejected");
            return;
        }
        json_int_t hb = json_integer_value(json_object_get(f, "heartbeat_s"));
        c->heartbeat_s = (uint32_t)(hb >= 1 && hb <= MC_HEARTBEAT_MAX ? hb : 30);
        struct timeval rd = {.tv_sec = 3 * (time_t)c->heartbeat_s};
        struct timeval wr = mc_tv(c->cfg.timeout_ms);
        bufferevent_set_timeouts(c->bev, &rd, &wr); /* silent 3 periods: dead */
        struct timeval ping = {.tv_sec = c->heartbeat_s};
        event_add(c->ping_ev, &ping);
        c->online_since_ms = mc_now_ms();
        log_info("mbox_client_online", "heartbeat_s=%" PRIu32 " connects=%" PRIu64, c->heartbeat_s,
                 c->connects);
        mc_set_state(c, MC_ONLINE);
        mc_schedule_refresh(c, f);
        mbox_client_sync(c, false);
        return;
    }
    if (strcmp(type, "refresh_ack") == 0) {
        if (json_is_true(json_object_get(f, "ok"))) {
            mc_schedule_refresh(c, f);
        } else {
            /* The old token still holds until its expiry; the 4401 close asks again. */
            const char *why = json_string_value(json_object_get(f, "reason"));
            log_warn("mbox_client_refresh_rejected", "reason=%s",
                     log_q(q, sizeof(q), why ? why : ""));
        }
        return;
    }
    if (strcmp(type, "pong") == 0)
        return; /* any bytes already pushed the read timeout back */
    if (strcmp(type, "ping") == 0) {
        if (!mc_send_json(c, json_pack("{s:s}", "type", "pong")))
            mc_fail(c, WS_CLOSE_INTERNAL, "pong_send_failed");
        return;
    }
    if (strcmp(type, "notify") == 0) {
        log_debug("mbox_client_notify", "msg_id=%s",
                  log_q(q, sizeof(q), json_string_value(json_object_get(f, "msg_id"))));
        mbox_client_sync(c, false);
        return;
    }
    if (strcmp(type, "kick") == 0) {
        const char *why = json_string_value(json_object_get(f, "reason"));
        log_warn("mbox_client_kicked", "reason=%s", log_q(q, sizeof(q), why ? why : ""));
        c->kicked = true;
        if (c->cfg.on_kick)
            c->cfg.on_kick(why ? why : "", c->cfg.arg);
        mc_fail(c, WS_CLOSE_NORMAL, "kicked");
        return;
    }
    /* Unknown types come from a newer server: ignore them. */
    log_debug("mbox_client_unknown_frame", "type=%s", log_q(q, sizeof(q), type));
}

/* Decodes one complete data message into a JSON frame (caller owns). NULL when malformed. */
static json_t *
mc_decode_message(const struct ws_frame *f)
{
    if (f->opcode == WS_OP_TEXT) {
        json_t *j =
            json_loadb((const char *)f->payload, f->payload_len, JSON_REJECT_DUPLICATES, NULL);
        if (j && !json_is_object(j)) {
            json_decref(j);
            j = NULL;
        }
        return j;
    }
    struct budget b;
    budget_init(&b, MC_FRAME_BUDGET);
    Mbox__Frame *pb = mbox__frame__unpack(&b.alloc, f->payload_len, f->payload);
    if (pb == NULL)
        return NULL;
    json_t *j = pbjson_encode(&pb->base);
    mbox__frame__free_unpacked(pb, &b.alloc);
    return j;
}

/* Parses and handles every complete frame in the input buffer. */
static void
mc_read_frames(struct mbox_client *c)
{
    struct bufferevent *bev = c->bev;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (c->bev == bev && (c->state == MC_LOGIN || c->state == MC_ONLINE)) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            return;
        uint8_t *buf = evbuffer_pullup(in, -1);
        struct ws_frame f;
        enum ws_result r = ws_parse_message(&c->ws, buf, len, MC_WS_MESSAGE_MAX, &f);
        if (r == WS_NEED_MORE)
            return;
        if (r != WS_FRAME) {
            log_warn("mbox_client_bad_frame", "error=%s", f.error ? f.error : ws_result_str(r));
            mc_fail(c, f.close_code, "malformed_frame");
            return;
        }
        if (f.opcode == WS_OP_PING) {
            if (!mc_send_frame(c, WS_OP_PONG, f.payload, f.payload_len)) {
                mc_fail(c, WS_CLOSE_INTERNAL, "pong_send_failed");
                return;
            }
        } else if (f.opcode == WS_OP_CLOSE) {
            char why[64];
            snprintf(why, sizeof(why), "server_close code=%u", (unsigned)f.close_code);
            if (f.close_code == WS_CLOSE_TOKEN_EXPIRED)
                (void)mc_new_token(c, "expired_close"); /* the reconnect logs in with it */
            uint8_t payload[125];
            size_t n = ws_close_payload(
                payload, f.close_code == WS_CLOSE_NO_STATUS ? 0 : f.close_code, NULL);
            (void)mc_send_frame(c, WS_OP_CLOSE, payload, n);
            mc_disconnect(c, why);
            return;
        } else if (f.opcode == WS_OP_TEXT || f.opcode == WS_OP_BINARY) {
            json_t *j = mc_decode_message(&f);
            if (j == NULL) {
                mc_fail(c, WS_CLOSE_INVALID_DATA, "undecodable_frame");
                return;
            }
            mc_on_frame(c, j);
            json_decref(j);
        }
        if (c->bev != bev)
            return; /* the frame ended the connection; in is no longer ours */
        evbuffer_drain(in, f.consumed);
    }
}

static void
mc_read_cb(struct bufferevent *bev, void *arg)
{
    struct mbox_client *c = arg;
    if (c->state == MC_HANDSHAKE) {
        struct evbuffer *in = bufferevent_get_input(bev);
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0) {
            if (evbuffer_get_length(in) > MC_HANDSHAKE_MAX)
                mc_disconnect(c, "handshake_too_large");
            return;
        }
        if ((size_t)end.pos > MC_HANDSHAKE_MAX) {
            mc_disconnect(c, "handshake_too_large");
            return;
        }
        const char *hdr = (const char *)evbuffer_pullup(in, end.pos + 4);
        int status;
        const char *bad = mc_check_101(c, hdr, (size_t)end.pos, &status);
        if (bad != NULL) {
            log_warn("mbox_client_handshake_failed", "status=%d error=%s", status, bad);
            mc_disconnect(c, bad);
            return;
        }
        evbuffer_drain(in, (size_t)end.pos + 4);
        ws_parser_init(&c->ws, WS_ROLE_CLIENT);
        mc_send_login(c);
        if (c->bev != bev)
            return;
    }
    if (c->state == MC_LOGIN || c->state == MC_ONLINE)
        mc_read_frames(c);
}

static void
mc_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct mbox_client *c = arg;
    if (bev != c->bev)
        return;
    if (what & BEV_EVENT_CONNECTED) {
        mc_set_state(c, MC_HANDSHAKE);
        if (!mc_send_handshake(c))
            mc_disconnect(c, "handshake_send_failed");
        return;
    }
    char why[384];
    why[0] = '\0';
    if (c->cfg.ws_tls && (what & BEV_EVENT_ERROR))
        mc_tls_reason(c->ws_tls_error, bev, c->cfg.ws_host, why, sizeof(why));
    if (why[0] != '\0' && c->state == MC_CONNECTING) {
        /* The TLS handshake failed: say why, loudly; retrying will not fix a certificate. */
        char q[400];
        log_error("mbox_client_tls_failed", "error=%s", log_q(q, sizeof(q), why));
        if (c->cfg.on_tls_error)
            c->cfg.on_tls_error(why, c->cfg.arg);
    }
    if (why[0] != '\0')
        mc_disconnect(c, why);
    else if (what & BEV_EVENT_TIMEOUT)
        mc_disconnect(c, c->state == MC_ONLINE ? "heartbeat_timeout" : "timeout");
    else if (what & BEV_EVENT_EOF)
        mc_disconnect(c, "eof");
    else
        mc_disconnect(
            c, evutil_socket_error_to_string(evutil_socket_geterror(bufferevent_getfd(bev))));
}

/* Starts one connection attempt. Failures end in mc_disconnect (backoff). */
static void
mc_connect(struct mbox_client *c)
{
    c->connects++;
    mc_set_state(c, MC_CONNECTING);
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    char hostport[MBOX_URL_HOST_MAX + 16];
    bool v6 = strchr(c->cfg.ws_host, ':') != NULL;
    snprintf(hostport, sizeof(hostport), "%s%s%s:%d", v6 ? "[" : "", c->cfg.ws_host, v6 ? "]" : "",
             c->cfg.ws_port);
    bool numeric = evutil_parse_sockaddr_port(hostport, (struct sockaddr *)&ss, &sslen) == 0;
    if (!numeric) {
        /* A name: resolve it (blocking, once per attempt; a CLI can afford that). */
        struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM},
                               *res = NULL;
        char port[8];
        snprintf(port, sizeof(port), "%d", c->cfg.ws_port);
        if (evutil_getaddrinfo(c->cfg.ws_host, port, &hints, &res) != 0 || res == NULL ||
            res->ai_addrlen > sizeof(ss)) {
            if (res)
                evutil_freeaddrinfo(res);
            mc_disconnect(c, "resolve_failed");
            return;
        }
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        sslen = (int)res->ai_addrlen;
        evutil_freeaddrinfo(res);
    }
    struct bufferevent *bev =
        c->cfg.ws_tls ? mc_tls_bev(c, c->cfg.ws_host, c->ws_tls_error, BEV_OPT_CLOSE_ON_FREE)
                      : bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        mc_disconnect(c, c->cfg.ws_tls ? "tls_setup_failed" : "out_of_memory");
        return;
    }
    c->bev = bev;
    bufferevent_setcb(bev, mc_read_cb, NULL, mc_event_cb, c);
    struct timeval tv = mc_tv(c->cfg.timeout_ms);
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_setwatermark(bev, EV_READ, 0, WS_MESSAGE_BUF_MAX(MC_WS_MESSAGE_MAX));
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&ss, sslen) != 0 && c->bev == bev)
        mc_disconnect(c, "connect_failed");
}

/* ---- sync ---------------------------------------------------------------- */

static void
mc_sync_round_done(struct mbox_client *c, bool ok)
{
    c->sync_running = false;
    bool oneshot = c->sync_oneshot;
    c->sync_oneshot = false;
    if (ok)
        mbox_backoff_reset(&c->sync_backoff);
    if (c->cfg.on_sync_done)
        c->cfg.on_sync_done(ok, c->cfg.arg);
    if (c->sync_pending && !(oneshot && !ok)) {
        c->sync_pending = false;
        mbox_client_sync(c, false);
    }
}

/* A page failed: retry the round after a backoff delay (or report it, oneshot). */
static void
mc_sync_failed(struct mbox_client *c, const char *why, uint32_t retry_after_s)
{
    char q[200];
    if (c->sync_oneshot) {
        log_error("mbox_client_sync_failed", "error=%s", log_q(q, sizeof(q), why));
        mc_sync_round_done(c, false);
        return;
    }
    uint32_t delay = mbox_backoff_next(&c->sync_backoff, mc_random_u32());
    if (retry_after_s > 0 && (uint64_t)retry_after_s * 1000 > delay)
        delay = retry_after_s * 1000 < c->sync_backoff.cap_ms ? retry_after_s * 1000
                                                              : c->sync_backoff.cap_ms;
    log_warn("mbox_client_sync_failed", "error=%s retry_ms=%" PRIu32, log_q(q, sizeof(q), why),
             delay);
    c->sync_pending = false; /* the retry fetches everything anyway */
    if (c->cfg.on_sync_done)
        c->cfg.on_sync_done(false, c->cfg.arg);
    struct timeval tv = mc_tv(delay);
    evtimer_add(c->sync_retry_ev, &tv);
}

static void
mc_sync_retry(evutil_socket_t fd, short what, void *arg)
{
    mc_sync_start_page(arg);
}

static void
mc_save_cursor(struct mbox_client *c)
{
    if (c->cfg.cursor_file == NULL)
        return;
    char err[256], q[300];
    /* A failed save only costs re-delivery after a restart; keep running. */
    if (!mbox_cursor_save(c->cfg.cursor_file, c->cursor, err, sizeof(err)))
        log_error("mbox_client_cursor_save_failed", "error=%s", log_q(q, sizeof(q), err));
}

/* Handles one 200 sync response body. Returns NULL or a reason for mc_sync_failed. */
static const char *
mc_sync_apply(struct mbox_client *c, json_t *body)
{
    if (!json_is_object(body))
        return "response is not a JSON object";
    json_t *items = json_object_get(body, "items");
    json_t *cur = json_object_get(body, "cursor");
    json_t *more = json_object_get(body, "has_more");
    json_t *reset = json_object_get(body, "reset");
    if ((items && !json_is_array(items)) || (more && !json_is_boolean(more)) ||
        (reset && !json_is_boolean(reset)))
        return "malformed sync response";
    if (json_is_true(reset)) {
        if (c->reset_in_round && c->cursor[0] == '\0')
            return "reset for an empty cursor";
        log_warn("mbox_client_sync_reset", "dropped_keys=%zu", mbox_dedupe_count(c->dedupe));
        c->reset_in_round = true;
        mbox_dedupe_clear(c->dedupe);
        c->cursor[0] = '\0';
        mc_save_cursor(c);
        mc_sync_start_page(c);
        return NULL;
    }
    if (!json_is_string(cur) || !mbox_cursor_valid(json_string_value(cur)))
        return "missing or malformed cursor";
    const char *next = json_string_value(cur);
    bool has_more = json_is_true(more);
    if (has_more && strcmp(next, c->cursor) == 0)
        return "has_more without progress";
    size_t i, fresh = 0, dup = 0;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        char key[MBOX_DEDUPE_KEY_MAX + 1];
        if (!json_is_object(it) || !mbox_item_key(it, key, sizeof(key))) {
            log_warn("mbox_client_bad_item", "index=%zu", i);
            continue;
        }
        int r = mbox_dedupe_add(c->dedupe, key);
        if (r == 0) {
            dup++;
            continue;
        }
        fresh++;
        if (c->cfg.on_item)
            c->cfg.on_item(json_string_value(json_object_get(it, "kind")), it, c->cfg.arg);
    }
    log_debug("mbox_client_sync_page", "items=%zu new=%zu dup=%zu has_more=%d", i, fresh, dup,
              (int)has_more);
    /* Persist only after the items were handed over: a crash re-delivers, never skips. */
    snprintf(c->cursor, sizeof(c->cursor), "%s", next);
    mc_save_cursor(c);
    if (has_more)
        mc_sync_start_page(c);
    else
        mc_sync_round_done(c, true);
    return NULL;
}

/*
 * Makes the evhttp connection to the SDK listener (over TLS with sdk_tls).
 * The one it replaces may be running its callback: it is freed by reap_ev.
 */
static bool
mc_http_renew(struct mbox_client *c)
{
    if (c->http != NULL) {
        if (c->dead_http != NULL)
            evhttp_connection_free(c->dead_http); /* an older one, its callback long over */
        c->dead_http = c->http;
        c->http = NULL;
        event_active(c->reap_ev, EV_TIMEOUT, 0);
    }
    if (c->cfg.sdk_tls) {
        struct bufferevent *bev = mc_tls_bev(c, c->cfg.sdk_host, c->sdk_tls_error,
                                             BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (bev == NULL)
            return false;
        c->http = evhttp_connection_base_bufferevent_new(c->base, NULL, bev, c->cfg.sdk_host,
                                                         (uint16_t)c->cfg.sdk_port);
        if (c->http == NULL) {
            bufferevent_free(bev);
            return false;
        }
    } else {
        c->http =
            evhttp_connection_base_new(c->base, NULL, c->cfg.sdk_host, (uint16_t)c->cfg.sdk_port);
        if (c->http == NULL)
            return false;
    }
    evhttp_connection_set_max_body_size(c->http, MC_SYNC_BODY_MAX);
    evhttp_connection_set_max_headers_size(c->http, MC_SYNC_HEADER_MAX);
    struct timeval tv = mc_tv(c->cfg.timeout_ms);
    evhttp_connection_set_timeout_tv(c->http, &tv);
    evhttp_connection_set_retries(c->http, 0);
    return true;
}

static void
mc_sync_response(struct evhttp_request *req, void *arg)
{
    struct mbox_client *c = arg;
    c->sync_inflight = false;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (code == 0) {
        char why[384] = "";
        if (c->cfg.sdk_tls)
            mc_tls_reason(c->sdk_tls_error,
                          c->http ? evhttp_connection_get_bufferevent(c->http) : NULL,
                          c->cfg.sdk_host, why, sizeof(why));
        c->http_broken = true;
        mc_sync_failed(c, why[0] ? why : "sdk connection failed", 0);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    json_t *body = len <= MC_SYNC_BODY_MAX ? json_loadb((const char *)evbuffer_pullup(in, -1), len,
                                                        JSON_REJECT_DUPLICATES, NULL)
                                           : NULL;
    if (code != 200) {
        char why[256];
        const char *ec = json_string_value(json_object_get(json_object_get(body, "error"), "code"));
        const char *em =
            json_string_value(json_object_get(json_object_get(body, "error"), "message"));
        snprintf(why, sizeof(why), "status %d %s: %s", code, ec ? ec : "", em ? em : "");
        const char *ra = evhttp_find_header(evhttp_request_get_input_headers(req), "Retry-After");
        uint32_t retry_after = 0;
        if (ra && strlen(ra) < 6)
            retry_after = (uint32_t)strtoul(ra, NULL, 10);
        json_decref(body);
        mc_sync_failed(c, why, retry_after);
        return;
    }
    if (body == NULL) {
        mc_sync_failed(c, "response is not JSON", 0);
        return;
    }
    const char *bad = mc_sync_apply(c, body);
    json_decref(body);
    if (bad)
        mc_sync_failed(c, bad, 0);
}

/* Sends one POST /v1/sync with the current cursor. */
static void
mc_sync_start_page(struct mbox_client *c)
{
    json_t *j = json_pack("{s:s, s:i}", "cursor", c->cursor, "limit", (int)c->cfg.sync_limit);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    /* Over TLS each round (and each attempt after a failure) gets a new connection. */
    bool renew = c->http == NULL || c->http_broken || (c->cfg.sdk_tls && c->round_fresh);
    c->round_fresh = false;
    if (renew) {
        c->http_broken = false;
        if (!mc_http_renew(c)) {
            free(s);
            c->http_broken = true;
            mc_sync_failed(c, c->cfg.sdk_tls ? "tls_setup_failed" : "out of memory", 0);
            return;
        }
    }
    struct evhttp_request *req = s ? evhttp_request_new(mc_sync_response, c) : NULL;
    if (req == NULL) {
        free(s);
        mc_sync_failed(c, "out of memory", 0);
        return;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char auth[4096 + 8], host[MBOX_URL_HOST_MAX + 16];
    snprintf(auth, sizeof(auth), "Bearer %s", c->cfg.token);
    bool v6 = strchr(c->cfg.sdk_host, ':') != NULL;
    snprintf(host, sizeof(host), "%s%s%s:%d", v6 ? "[" : "", c->cfg.sdk_host, v6 ? "]" : "",
             c->cfg.sdk_port);
    evhttp_add_header(h, "Host", host);
    evhttp_add_header(h, "Authorization", auth);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Accept", "application/json");
    evhttp_add_header(h, "User-Agent", "mbox-client/" MBOX_VERSION);
    if (c->cfg.platform)
        evhttp_add_header(h, "platform", c->cfg.platform);
    if (c->cfg.app_version)
        evhttp_add_header(h, "app_version", c->cfg.app_version);
    if (c->cfg.core_level)
        evhttp_add_header(h, "core_level", c->cfg.core_level);
    evbuffer_add(evhttp_request_get_output_buffer(req), s, strlen(s));
    free(s);
    c->sync_inflight = true;
    if (evhttp_make_request(c->http, req, EVHTTP_REQ_POST, c->sync_path) != 0) {
        c->sync_inflight = false;
        mc_sync_failed(c, "cannot send request", 0);
    }
}

void
mbox_client_sync(struct mbox_client *c, bool oneshot)
{
    if (c->sync_running) {
        /*
         * Coalesce: one more round after the one in flight. A round waiting
         * to retry will fetch everything anyway.
         */
        if (c->sync_inflight)
            c->sync_pending = true;
        return;
    }
    c->sync_running = true;
    c->sync_oneshot = oneshot;
    c->reset_in_round = false;
    c->round_fresh = true;
    mc_sync_start_page(c);
}

/* ---- lifecycle ----------------------------------------------------------- */

struct mbox_client *
mbox_client_new(struct event_base *base, const struct mbox_client_config *cfg, char *err,
                size_t errlen)
{
    if (cfg->sdk_host == NULL || cfg->sdk_port <= 0 || cfg->sdk_port > 65535) {
        snprintf(err, errlen, "the SDK host and port are required");
        return NULL;
    }
    if (!mc_token_ok(cfg->token)) {
        snprintf(err, errlen, "a token (at most %d bytes, one line) is required", MBOX_TOKEN_MAX);
        return NULL;
    }
    if (cfg->ws_host && (cfg->ws_port <= 0 || cfg->ws_port > 65535 || cfg->device_id == NULL ||
                         *cfg->device_id == '\0')) {
        snprintf(err, errlen, "the WebSocket port and a device id are required");
        return NULL;
    }
    const char *hdrs[] = {cfg->platform, cfg->app_version, cfg->core_level, cfg->ws_path,
                          cfg->sdk_path};
    for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++)
        if (hdrs[i] && (strlen(hdrs[i]) > 200 || strpbrk(hdrs[i], "\r\n ") != NULL)) {
            snprintf(err, errlen,
                     "platform, app_version, core_level and paths must be short "
                     "single words");
            return NULL;
        }
    struct mbox_client *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->base = base;
    c->cfg = *cfg;
    const char **fields[] = {&c->cfg.ws_host,     &c->cfg.ws_path,     &c->cfg.sdk_host,
                             &c->cfg.sdk_path,    &c->cfg.token,       &c->cfg.device_id,
                             &c->cfg.platform,    &c->cfg.app_version, &c->cfg.core_level,
                             &c->cfg.cursor_file, &c->cfg.ca_file};
    _Static_assert(sizeof(fields) / sizeof(fields[0]) <= sizeof(c->strs) / sizeof(c->strs[0]),
                   "room for every string");
    bool oom = false;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (*fields[i] == NULL)
            continue;
        c->strs[i] = strdup(*fields[i]);
        oom = oom || c->strs[i] == NULL;
        *fields[i] = c->strs[i];
    }
    if (c->cfg.ws_path == NULL)
        c->cfg.ws_path = "/ws";
    if (c->cfg.backoff_base_ms == 0)
        c->cfg.backoff_base_ms = 200;
    if (c->cfg.backoff_cap_ms == 0)
        c->cfg.backoff_cap_ms = 30000;
    if (c->cfg.stable_ms == 0)
        c->cfg.stable_ms = 10000;
    if (c->cfg.timeout_ms == 0)
        c->cfg.timeout_ms = 10000;
    if (c->cfg.sync_limit == 0)
        c->cfg.sync_limit = 100;
    if (c->cfg.dedupe_cap == 0)
        c->cfg.dedupe_cap = 10000;
    mbox_backoff_init(&c->backoff, c->cfg.backoff_base_ms, c->cfg.backoff_cap_ms);
    mbox_backoff_init(&c->sync_backoff, c->cfg.backoff_base_ms, c->cfg.backoff_cap_ms);
    snprintf(c->sync_path, sizeof(c->sync_path), "%s/v1/sync",
             c->cfg.sdk_path && strcmp(c->cfg.sdk_path, "/") != 0 ? c->cfg.sdk_path : "");
    c->dedupe = mbox_dedupe_new(c->cfg.dedupe_cap);
    c->reap_ev = evtimer_new(base, mc_reap, c);
    c->retry_ev = evtimer_new(base, mc_retry, c);
    c->ping_ev = event_new(base, -1, EV_PERSIST, mc_ping, c);
    c->refresh_ev = evtimer_new(base, mc_refresh, c);
    c->sync_retry_ev = evtimer_new(base, mc_sync_retry, c);
    if (oom || c->dedupe == NULL || c->reap_ev == NULL || c->retry_ev == NULL ||
        c->ping_ev == NULL || c->refresh_ev == NULL || c->sync_retry_ev == NULL) {
        snprintf(err, errlen, "out of memory");
        mbox_client_free(c);
        return NULL;
    }
    if (!c->cfg.ws_host)
        c->cfg.ws_tls = false;
    if (c->cfg.ws_tls || c->cfg.sdk_tls) {
        c->tls = mc_tls_ctx(c, err, errlen);
        if (c->tls == NULL) {
            mbox_client_free(c);
            return NULL;
        }
    }
    /* Over TLS the first sync round makes the connection (one per round). */
    if (!c->cfg.sdk_tls && !mc_http_renew(c)) {
        snprintf(err, errlen, "cannot create the SDK connection");
        mbox_client_free(c);
        return NULL;
    }

    if (c->cfg.cursor_file) {
        char q[300];
        switch (mbox_cursor_load(c->cfg.cursor_file, c->cursor, sizeof(c->cursor))) {
        case MBOX_CURSOR_FILE_OK:
            log_info("mbox_client_cursor_loaded", "file=%s",
                     log_q(q, sizeof(q), c->cfg.cursor_file));
            break;
        case MBOX_CURSOR_FILE_MISSING:
            break;
        case MBOX_CURSOR_FILE_INVALID:
            /* Starting over re-delivers old items; skipping some would be worse. */
            log_warn("mbox_client_cursor_invalid", "file=%s action=full_resync",
                     log_q(q, sizeof(q), c->cfg.cursor_file));
            break;
        }
    }
    return c;
}

bool
mbox_client_start(struct mbox_client *c)
{
    if (c->cfg.ws_host == NULL || c->state != MC_IDLE)
        return false;
    mc_connect(c);
    return true;
}

const char *
mbox_client_cursor(const struct mbox_client *c)
{
    return c->cursor;
}

void
mbox_client_free(struct mbox_client *c)
{
    if (c == NULL)
        return;
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->dead_bev)
        bufferevent_free(c->dead_bev);
    /* Freeing the connection cancels a request in flight without calling back. */
    if (c->http)
        evhttp_connection_free(c->http);
    if (c->dead_http)
        evhttp_connection_free(c->dead_http);
    SSL_CTX_free(c->tls);
    if (c->reap_ev)
        event_free(c->reap_ev);
    if (c->retry_ev)
        event_free(c->retry_ev);
    if (c->ping_ev)
        event_free(c->ping_ev);
    if (c->refresh_ev)
        event_free(c->refresh_ev);
    if (c->sync_retry_ev)
        event_free(c->sync_retry_ev);
    mbox_dedupe_free(c->dedupe);
    for (size_t i = 0; i < sizeof(c->strs) / sizeof(c->strs[0]); i++)
        free(c->strs[i]);
    free(c);
}
