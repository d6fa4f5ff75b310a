/*
 * mbox_client: the SDK side of notify-pull (docs/design.md 4 and 5.5), on a
 * libevent loop.
 *
 * It owns one WebSocket long connection to lcsd and one HTTP connection to
 * logicd's SDK listener:
 *
 *   - connect, RFC 6455 handshake (random key, checked accept), login frame,
 *     heartbeat pings every heartbeat_s; a connection silent for three
 *     heartbeat periods is dead;
 *   - reconnect with exponential backoff and full jitter after any failure,
 *     reset only after a connection stayed up for a while, so a server that
 *     accepts and drops at once is never hammered; a kick stops it (the same
 *     device logged in elsewhere) unless configured otherwise;
 *   - POST /v1/sync at every login and notify, paged while has_more; a
 *     notify that arrives during a sync causes exactly one more sync; a
 *     reset answer drops the cursor and the dedupe set and starts over;
 *   - the cursor persisted in a file (temp file + rename) after each page;
 *   - items de-duplicated by (kind, msg_id|notice_id, version) in a bounded
 *     in-memory set before they reach the caller;
 *   - TLS (wss://, https://) through OpenSSL with the peer verified: the
 *     chain against ca_file or the system trust store, the name (SNI and
 *     X509_VERIFY_PARAM host) or IP address against the certificate. A
 *     certificate that does not verify ends the attempt with a reason
 *     such as "tls: 127.0.0.1: certificate verify failed: self-signed
 *     certificate (depth 0)"; there is no switch that turns verification
 *     off;
 *   - with a token_cb, the session outlives its token: the client asks the
 *     callback for a new token shortly before the expiry lcsd announced
 *     (login_ack / refresh_ack expires_at) and sends it in a refresh frame;
 *     after a 4401 close (expired) or a login refused as expired it asks
 *     again and reconnects with the new token. Syncs use the newest token.
 *
 * The pure pieces (URL parsing, backoff, dedupe set, cursor file) are
 * exported for unit tests. Everything belongs to the thread of its
 * event_base.
 */
#ifndef MBOX_CLIENT_H
#define MBOX_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct event_base;
struct mbox_client;

/* ---- URLs ---------------------------------------------------------------- */

#define MBOX_URL_HOST_MAX 255
#define MBOX_URL_PATH_MAX 255

struct mbox_url {
    char host[MBOX_URL_HOST_MAX + 1]; /* name or address, IPv6 without brackets */
    int port;                         /* explicit or the scheme's default (80, 443) */
    char path[MBOX_URL_PATH_MAX + 1]; /* starts with '/', "/" when absent; no query */
    bool tls;                         /* wss:// or https:// */
};

/*
 * Parses "scheme://host[:port][/path]" where scheme must equal `scheme`
 * ("ws" or "http") or its TLS form (`scheme` + "s": "wss", "https"; then
 * tls is set and the default port is 443). IPv6 hosts are written in
 * brackets. No user info, query or fragment. false with a message in err.
 */
bool mbox_url_parse(const char *url, const char *scheme, struct mbox_url *out, char *err,
                    size_t errlen) __attribute__((warn_unused_result));

/* ---- backoff ------------------------------------------------------------- */

/*
 * Exponential backoff with full jitter: the n-th delay (n from 0) is drawn
 * uniformly from [floor, min(cap, base * 2^n)], floor = base / 4. The floor
 * keeps a run of small random draws from becoming a busy loop.
 */
struct mbox_backoff {
    uint32_t base_ms;
    uint32_t cap_ms;
    uint32_t attempt; /* delays handed out since the last reset */
};

void mbox_backoff_init(struct mbox_backoff *b, uint32_t base_ms, uint32_t cap_ms);

/* The upper bound of the next delay: min(cap, base * 2^attempt). */
uint32_t mbox_backoff_ceiling(const struct mbox_backoff *b);

/* The next delay in ms, given a uniform random 32-bit value; counts the attempt. */
uint32_t mbox_backoff_next(struct mbox_backoff *b, uint32_t rnd);

/* Back to the first delay (after a connection that stayed up). */
void mbox_backoff_reset(struct mbox_backoff *b);

/* ---- dedupe set ---------------------------------------------------------- */

#define MBOX_DEDUPE_KEY_MAX 96

/*
 * A set of the last `cap` item keys: adding a key beyond cap forgets the
 * oldest one. Keys are copied.
 */
struct mbox_dedupe;

/* NULL on allocation failure or cap == 0. */
struct mbox_dedupe *mbox_dedupe_new(size_t cap);
void mbox_dedupe_free(struct mbox_dedupe *d);

/* Adds key: 1 when it was new, 0 when already there, -1 when too long. */
int mbox_dedupe_add(struct mbox_dedupe *d, const char *key) __attribute__((warn_unused_result));

bool mbox_dedupe_contains(const struct mbox_dedupe *d, const char *key);
size_t mbox_dedupe_count(const struct mbox_dedupe *d);
void mbox_dedupe_clear(struct mbox_dedupe *d);

/*
 * Writes an item's dedupe key "kind/id/version" into out: id is notice_id
 * for notice and retract items, msg_id otherwise; version 0 when absent.
 * false when the item lacks a kind or its id.
 */
bool mbox_item_key(const json_t *item, char *out, size_t outlen)
    __attribute__((warn_unused_result));

/* ---- cursor file --------------------------------------------------------- */

#define MBOX_CURSOR_MAX 128 /* longest cursor accepted from a server or a file */

enum mbox_cursor_file {
    MBOX_CURSOR_FILE_OK = 0,
    MBOX_CURSOR_FILE_MISSING, /* no file: start from "" */
    MBOX_CURSOR_FILE_INVALID, /* unreadable, torn or not a cursor: start from "" */
};

/* True for "" or 1..MBOX_CURSOR_MAX characters of base64url. */
bool mbox_cursor_valid(const char *s);

/*
 * Reads the cursor saved by mbox_cursor_save(): a valid cursor followed by
 * exactly one newline. out (at least MBOX_CURSOR_MAX + 1 bytes) is "" unless OK.
 */
enum mbox_cursor_file mbox_cursor_load(const char *path, char *out, size_t outlen);

/*
 * Saves cursor atomically: writes path.tmp, fsyncs, renames over path and
 * fsyncs the directory, so a crash leaves the old or the new cursor.
 */
bool mbox_cursor_save(const char *path, const char *cursor, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* ---- token refresh --------------------------------------------------------- */

#define MBOX_TOKEN_MAX 4096 /* longest token accepted from the config or token_cb */

/*
 * Milliseconds from now_us until a session whose token expires at
 * expires_at_us should be refreshed: a fifth of the time left before the
 * expiry, but at most 60 s before it (0 when already due).
 */
uint32_t mbox_refresh_delay_ms(int64_t now_us, int64_t expires_at_us);

/*
 * Reads a token file (the `mbox --token-file` option): one token on the
 * first line, trailing spaces and line ends dropped, nothing after it but
 * blank space. out needs MBOX_TOKEN_MAX + 1 bytes. false (out "") when the
 * file is missing, empty, longer than MBOX_TOKEN_MAX or not one line.
 */
bool mbox_token_load(const char *path, char *out, size_t outlen)
    __attribute__((warn_unused_result));

/* ---- the client ---------------------------------------------------------- */

struct mbox_client_config {
    /* lcsd WebSocket; ws_host NULL = no long connection (sync on demand only). */
    const char *ws_host;
    int ws_port;
    const char *ws_path; /* "/ws" when NULL */
    /* logicd SDK listener. */
    const char *sdk_host;
    int sdk_port;
    const char *sdk_path; /* prefix before /v1/sync, "" when NULL */
    bool ws_tls;          /* wss:// */
    bool sdk_tls;         /* https:// */
    /* PEM file of the CA certificates that verify the servers' certificates
     * (with TLS); NULL: the system trust store (/etc/ssl/certs). */
    const char *ca_file;

    const char *token;
    const char *device_id;
    const char *platform;    /* may be NULL */
    const char *app_version; /* may be NULL */
    const char *core_level;  /* decimal, may be NULL */
    const char *cursor_file; /* NULL: the cursor lives in memory only */

    bool reconnect_after_kick; /* default false: a kick stops the client */
    uint32_t backoff_base_ms;  /* 0: 200 */
    uint32_t backoff_cap_ms;   /* 0: 30000 */
    uint32_t stable_ms;        /* online this long resets the backoff; 0: 10000 */
    uint32_t timeout_ms;       /* connect, handshake, login and HTTP; 0: 10000 */
    uint32_t sync_limit;       /* items per page; 0: 100 */
    size_t dedupe_cap;         /* 0: 10000 */

    /* Each new item, in server order; item is borrowed for the call. */
    void (*on_item)(const char *kind, const json_t *item, void *arg);
    /* Each state change: "connecting", "handshake", "login", "online", "backoff", "stopped". */
    void (*on_state)(const char *state, void *arg);
    /* A kick frame arrived (before reconnecting or stopping). */
    void (*on_kick)(const char *reason, void *arg);
    /*
     * Optional: the TLS handshake of the long connection failed (reason as
     * in the log, e.g. "tls: HOST: certificate verify failed: ..."). The client
     * retries after a backoff as after any failure, unless the callback
     * ends the loop.
     */
    void (*on_tls_error)(const char *reason, void *arg);
    /* A sync round ended: every page fetched (ok) or a failure (retry scheduled unless oneshot). */
    void (*on_sync_done)(bool ok, void *arg);
    /*
     * Optional: writes a new token for the same app and uid into out
     * (outlen = MBOX_TOKEN_MAX + 1, NUL-terminated) and returns true, or
     * returns false when it has none. Called before the session's token
     * expires and after the server closed it as expired (see above); it
     * runs on the loop, so it must not block for long. Without it the
     * session ends at the token's expiry (close 4401) and reconnecting
     * with the old token fails.
     */
    bool (*token_cb)(char *out, size_t outlen, void *arg);
    void *arg;
};

/*
 * Creates a client on base; strings are copied. Loads the cursor file. NULL
 * with a message in err on a bad config or allocation failure.
 */
struct mbox_client *mbox_client_new(struct event_base *base, const struct mbox_client_config *cfg,
                                    char *err, size_t errlen);

/* Starts the long connection (which syncs at login). */
bool mbox_client_start(struct mbox_client *c) __attribute__((warn_unused_result));

/*
 * Starts one sync round now (or one more after the running one). With
 * oneshot, a failure is reported through on_sync_done(false) instead of
 * being retried.
 */
void mbox_client_sync(struct mbox_client *c, bool oneshot);

/* The cursor as of the last completed page ("" at the start). */
const char *mbox_client_cursor(const struct mbox_client *c);

/* Closes everything; no callback runs afterwards. Not from inside a callback of c. */
void mbox_client_free(struct mbox_client *c);

#endif
