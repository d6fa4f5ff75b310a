/*
 * api_io: authentication and body coding shared by logicd's handlers.
 */
#include "api_io.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "budget.h"
#include "log.h"
#include "live.h"
#include "logic.h"
#include "pbjson.h"
#include "pg.h"
#include "pubcache.h"

#define PROTOBUF_TYPE "application/x-protobuf"
/* Heap a protobuf request may expand into, per request body byte budget. */
#define PB_BUDGET_FACTOR 8
/* JSON replies up to this size are written on the stack (larger ones on the heap). */
#define REPLY_STACK_BYTES 2048

/* Constant-time equality of a presented secret and the configured one. */
static bool
secret_eq(const char *given, const char *want)
{
    size_t gl = strlen(given), wl = strlen(want);
    if (gl != wl || wl == 0)
        return false;
    return CRYPTO_memcmp(given, want, wl) == 0;
}

/*
 * Verified tokens, per worker: an SDK client sends the same token on every
 * request, and the HMAC is the largest single cost of an empty sync. A slot
 * holds a token that verified and its claims; a hit needs the exact same
 * string (compared in full) and is still checked for expiry. Keys change
 * only with a restart, so a cached verification cannot outlive its key.
 */
#define TOKEN_CACHE_SLOTS 1024

struct token_cache_slot {
    char token[TOKEN_MAX_LEN];
    struct token_claims claims;
};

struct token_cache {
    struct token_cache_slot slots[TOKEN_CACHE_SLOTS];
};

struct token_cache *
api_token_cache_new(void)
{
    return calloc(1, sizeof(struct token_cache));
}

void
api_token_cache_free(struct token_cache *c)
{
    free(c);
}

void
api_token_cache_clear(struct token_cache *c)
{
    if (c != NULL)
        memset(c, 0, sizeof(*c));
}

/*
 * The slot of a token of len bytes: FNV-1a of its length and last 16 bytes,
 * which lie in the token's MAC (random-looking, different per token), so
 * hashing the whole token would spread slots no better. The full string is
 * compared on a hit anyway.
 */
static struct token_cache_slot *
token_slot(struct token_cache *c, const char *tok, size_t len)
{
    uint64_t h = (1469598103934665603ULL ^ len) * 1099511628211ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)tok + (len > 16 ? len - 16 : 0); *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return &c->slots[h % TOKEN_CACHE_SLOTS];
}

/* Verifies a user token through the worker's cache of verified tokens. */
static enum token_status
user_token_verify(struct logic_worker *w, const char *tok, struct token_claims *claims)
{
    int64_t now = logic_now_us();
    size_t len = strnlen(tok, TOKEN_MAX_LEN);
    struct token_cache_slot *slot =
        w->tokens != NULL && len < TOKEN_MAX_LEN ? token_slot(w->tokens, tok, len) : NULL;
    if (slot != NULL && slot->claims.expires_at_us > now && strcmp(slot->token, tok) == 0) {
        *claims = slot->claims;
        return TOKEN_OK;
    }
    enum token_status st = token_verify(&w->live->keys, tok, now, claims);
    if (st == TOKEN_OK && slot != NULL) {
        memcpy(slot->token, tok, len + 1);
        slot->claims = *claims;
    }
    return st;
}

/* The 401 message of a token that did not verify, or NULL for TOKEN_OK. */
static const char *
user_token_refusal(enum token_status st)
{
    switch (st) {
    case TOKEN_OK:
        return NULL;
    case TOKEN_EXPIRED:
        return "user token rejected: expired";
    case TOKEN_BAD_SIGNATURE:
        return "user token rejected: bad_signature";
    case TOKEN_MALFORMED:
        break;
    }
    return "user token rejected: malformed";
}

bool
api_auth_user(struct http_req *r, struct logic_worker *w, struct token_claims *claims)
{
    const char *tok = http_req_bearer(r);
    if (tok == NULL) {
        http_reply_error(r, 401, "unauthenticated", "missing bearer token");
        return false;
    }
    const char *refusal = user_token_refusal(user_token_verify(w, tok, claims));
    if (refusal != NULL) {
        http_reply_error(r, 401, "unauthenticated", "%s", refusal);
        return false;
    }
    return true;
}

bool
api_auth_server(struct http_req *r, struct logic_worker *w)
{
    const char *tok = http_req_bearer(r);
    if (tok == NULL) {
        http_reply_error(r, 401, "unauthenticated", "missing bearer token (server key)");
        return false;
    }
    if (!secret_eq(tok, w->app->cfg.server_key)) {
        http_reply_error(r, 401, "unauthenticated", "server key rejected");
        return false;
    }
    return true;
}

/* The index of the ops token tok, or -1. Every token is compared, so the
 * time taken does not say which matched. */
static int
ops_token_index(const struct logic_worker *w, const char *tok)
{
    int found = -1;
    for (int i = 0; i < w->live->nops; i++) {
        if (secret_eq(tok, w->live->ops[i].token))
            found = i;
    }
    return found;
}

const struct logic_ops_token *
api_auth_ops_as(struct http_req *r, struct logic_worker *w, enum logic_role need)
{
    const char *tok = http_req_bearer(r);
    if (tok == NULL) {
        http_reply_error(r, 401, "unauthenticated", "missing bearer token (ops token)");
        return NULL;
    }
    int found = ops_token_index(w, tok);
    if (found < 0) {
        http_reply_error(r, 401, "unauthenticated", "ops token rejected");
        return NULL;
    }
    const struct logic_ops_token *op = &w->live->ops[found];
    if (op->role < need) {
        http_reply_error(r, 403, "permission_denied",
                         "operator '%s' has role %s; this action needs role %s", op->name,
                         api_role_name(op->role), api_role_name(need));
        return NULL;
    }
    return op;
}

bool
api_auth_ops(struct http_req *r, struct logic_worker *w, const char **name)
{
    const struct logic_ops_token *op = api_auth_ops_as(r, w, LOGIC_ROLE_EDITOR);
    if (op != NULL)
        *name = op->name;
    return op != NULL;
}

const char *
api_role_name(enum logic_role role)
{
    return role == LOGIC_ROLE_PUBLISHER ? "publisher" : "editor";
}

const char *
api_precheck_user(const struct http_route *route, const char *bearer, void *ctx)
{
    (void)route;
    if (bearer == NULL)
        return "missing bearer token";
    struct token_claims claims;
    return user_token_refusal(user_token_verify(ctx, bearer, &claims));
}

const char *
api_precheck_internal(const struct http_route *route, const char *bearer, void *ctx)
{
    (void)route;
    struct logic_worker *w = ctx;
    if (bearer == NULL)
        return "missing bearer token";
    /* The handler checks which of the two its route takes. */
    return secret_eq(bearer, w->app->cfg.server_key) || ops_token_index(w, bearer) >= 0
               ? NULL
               : "credential rejected (neither the server key nor an ops token)";
}

/* True when a header value names the protobuf media type. */
static bool
names_protobuf(const char *v)
{
    return v != NULL && strncasecmp(v, PROTOBUF_TYPE, strlen(PROTOBUF_TYPE)) == 0;
}

bool
api_wants_protobuf(struct http_req *r)
{
    const char *accept = http_req_header(r, "Accept");
    if (accept != NULL && strstr(accept, PROTOBUF_TYPE) != NULL)
        return true;
    if (accept != NULL && strstr(accept, "application/json") != NULL)
        return false;
    return names_protobuf(http_req_header(r, "Content-Type"));
}

bool
api_decode(struct http_req *r, const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out)
{
    size_t len;
    const unsigned char *body = http_req_body(r, &len);
    const char *ct = http_req_header(r, "Content-Type");
    *out = NULL;

    if (names_protobuf(ct)) {
        struct budget b;
        budget_init(&b, len * PB_BUDGET_FACTOR + 4096);
        /* Unpack under the budget, then copy out of it? protobuf-c frees with the
         * allocator it unpacked with, so keep using malloc-backed budget memory. */
        ProtobufCMessage *m = protobuf_c_message_unpack(desc, &b.alloc, len, body);
        if (m == NULL) {
            http_reply_error(r, 400, "invalid_argument", "body is not a valid %s protobuf",
                             desc->name);
            return false;
        }
        /* Re-encode through the plain allocator so api_msg_free has one rule. */
        size_t plen = protobuf_c_message_get_packed_size(m);
        uint8_t *buf = malloc(plen ? plen : 1);
        if (buf == NULL) {
            protobuf_c_message_free_unpacked(m, &b.alloc);
            http_reply_error(r, 503, "unavailable", "out of memory");
            return false;
        }
        protobuf_c_message_pack(m, buf);
        protobuf_c_message_free_unpacked(m, &b.alloc);
        *out = protobuf_c_message_unpack(desc, NULL, plen, buf);
        free(buf);
        if (*out == NULL) {
            http_reply_error(r, 503, "unavailable", "out of memory");
            return false;
        }
        return true;
    }
    /* curl -d sends application/x-www-form-urlencoded unless told otherwise;
     * the body is still JSON, so that default (and text/plain) is read as
     * JSON. Anything else names a format this service does not speak. */
    if (ct != NULL && len > 0 && strncasecmp(ct, "application/json", 16) != 0 &&
        strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0 &&
        strncasecmp(ct, "text/plain", 10) != 0) {
        http_reply_error(r, 415, "unsupported_media_type",
                         "Content-Type must be application/json or " PROTOBUF_TYPE);
        return false;
    }
    char err[256];
    if (len == 0) {
        body = (const unsigned char *)"{}";
        len = 2;
    }
    *out = pbjson_decode_bytes(desc, body, len, len, NULL, err, sizeof(err));
    if (*out == NULL) {
        http_reply_error(r, 400, "invalid_argument", "%s", err);
        return false;
    }
    return true;
}

void
api_msg_free(ProtobufCMessage *m)
{
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
}

void
api_reply_msg(struct http_req *r, int status, const ProtobufCMessage *msg)
{
    if (api_wants_protobuf(r)) {
        size_t n = protobuf_c_message_get_packed_size(msg);
        uint8_t *buf = malloc(n ? n : 1);
        if (buf == NULL) {
            http_reply_error(r, 503, "unavailable", "out of memory");
            return;
        }
        protobuf_c_message_pack(msg, buf);
        http_reply(r, status, PROTOBUF_TYPE, buf, n);
        free(buf);
        return;
    }
    /* Straight to text; a small reply (an empty sync) never leaves the stack. */
    char stack[REPLY_STACK_BYTES];
    struct pbjson_buf b;
    pbjson_buf_init(&b, stack, sizeof(stack));
    if (!pbjson_write(&b, msg)) {
        pbjson_buf_free(&b);
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    http_reply(r, status, "application/json", b.data, b.len);
    pbjson_buf_free(&b);
}

/* Strict decimal uint64 of a request field. */
static bool
parse_u64_field(struct http_req *r, const char *what, const char *name, const char *v,
                uint64_t *out)
{
    if (!pbjson_parse_u64(v, out)) {
        http_reply_error(r, 400, "invalid_argument", "%s '%s': expected an unsigned integer", what,
                         name);
        return false;
    }
    return true;
}

bool
api_query_u64(struct http_req *r, const char *name, uint64_t def, uint64_t *out)
{
    const char *v = http_req_query(r, name);
    if (v == NULL || v[0] == '\0') {
        *out = def;
        return true;
    }
    return parse_u64_field(r, "query parameter", name, v, out);
}

bool
api_param_u64(struct http_req *r, const char *name, uint64_t *out)
{
    const char *v = http_req_param(r, name);
    return parse_u64_field(r, "path parameter", name, v ? v : "", out);
}

char *
api_int8_array(const uint64_t *v, size_t n)
{
    char *s = malloc(n * 21 + 3);
    if (s == NULL)
        return NULL;
    size_t o = 0;
    s[o++] = '{';
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(s + o, "%s%" PRId64, i ? "," : "", (int64_t)v[i]);
    s[o++] = '}';
    s[o] = '\0';
    return s;
}

bool
api_query(struct http_req *r, struct logic_worker *w, const char *stmt, const struct pg_params *p,
          pg_cb cb, void *arg)
{
    if (pg_query(w->pg, stmt, p, cb, arg))
        return true;
    http_reply_error(r, 503, "unavailable", "database unavailable, retry later");
    return false;
}

bool
api_query_shard(struct http_req *r, struct logic_worker *w, uint64_t app_id, uint64_t uid,
                const char *stmt, const struct pg_params *p, pg_cb cb, void *arg)
{
    if (pg_query(logic_shard_pool(w, app_id, uid), stmt, p, cb, arg))
        return true;
    http_reply_error(r, 503, "unavailable", "database unavailable, retry later");
    return false;
}

bool
api_bucket_fenced(const struct pg_error *err)
{
    return err->kind == PG_ERR_QUERY &&
           (strcmp(err->sqlstate, "MBF01") == 0 || strcmp(err->sqlstate, "MBF02") == 0);
}

void
api_reply_shard_error(struct logic_worker *w, struct http_req *r, const struct pg_error *err)
{
    /* MBF02: this logicd routed with a map older than a finished move.
     * MBF01 too: the move may have switched the map a moment ago. The
     * poller reloads the map now instead of at its next poll, so the
     * client's retry after Retry-After goes to the new shard. */
    if (api_bucket_fenced(err))
        pubcache_kick(w->app->pubcache);
    api_reply_pg_error(r, err);
}

void
api_reply_pg_error(struct http_req *r, const struct pg_error *err)
{
    if (err->kind == PG_ERR_UNAVAILABLE || err->kind == PG_ERR_TIMEOUT) {
        http_reply_error(r, 503, "unavailable", "database unavailable, retry later");
        return;
    }
    /* The bucket fence of a move (migrations/0006): the mailbox's bucket is
     * being moved to another shard (MBF01), or this logicd's map is older
     * than the move (MBF02; api_reply_shard_error has the map reloaded at
     * once). Either way the client retries in a moment, with the same
     * msgkey. */
    if (err->kind == PG_ERR_QUERY && api_bucket_fenced(err)) {
        log_info("bucket_fenced", "req=%s sqlstate=%s", http_req_id(r), err->sqlstate);
        http_reply_error(r, 503, "bucket_moving",
                         "the mailbox is moving to another database, retry in a moment");
        return;
    }
    char q[256];
    log_error("pg_query_failed", "req=%s sqlstate=%s message=%s", http_req_id(r), err->sqlstate,
              log_q(q, sizeof(q), err->message));
    http_reply_error(r, 500, "internal", "database error (sqlstate %s)", err->sqlstate);
}
