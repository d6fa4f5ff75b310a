/*
 * api_io: what every logicd handler does with a request before and after
 * its own work: authenticate, decode the body (JSON or protobuf into the
 * same proto/ message), encode the reply in the format the client used.
 *
 * Each function that can fail has already replied (401, 400, 413, 415)
 * when it returns false; the handler just returns.
 */
#ifndef LOGIC_API_IO_H
#define LOGIC_API_IO_H

#include <stdbool.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include <libpq-fe.h>

#include "http.h"
#include "logic.h"
#include "token.h"

struct logic_worker;
struct token_cache;

/* A worker's cache of verified user tokens (see api_io.c). */
struct token_cache *api_token_cache_new(void);
void api_token_cache_free(struct token_cache *c);
/* Forgets every verified token (after a reload changed the keys). */
void api_token_cache_clear(struct token_cache *c);

/* SDK listener: verifies the user token; claims fix app_id and uid. */
bool api_auth_user(struct http_req *r, struct logic_worker *w, struct token_claims *claims)
    __attribute__((warn_unused_result));

/* Internal listener, business servers: the server key, compared in constant time. */
bool api_auth_server(struct http_req *r, struct logic_worker *w)
    __attribute__((warn_unused_result));

/* Internal listener, operators: an ops token; *name gets its name (audit log). */
bool api_auth_ops(struct http_req *r, struct logic_worker *w, const char **name)
    __attribute__((warn_unused_result));

/* An ops token whose role is need or above (401 without one, 403 with a
 * lesser role); NULL when it replied. */
const struct logic_ops_token *api_auth_ops_as(struct http_req *r, struct logic_worker *w,
                                              enum logic_role need)
    __attribute__((warn_unused_result));

/* "editor" or "publisher". */
const char *api_role_name(enum logic_role role);

/*
 * The prechecks of the two listeners (http_server_set_precheck): a request
 * with a body is read only when its bearer token is a valid user token
 * (SDK listener), or the server key or an ops token (internal listener).
 * Which of those a route takes is still checked by its handler.
 */
const char *api_precheck_user(const struct http_route *route, const char *bearer, void *ctx);
const char *api_precheck_internal(const struct http_route *route, const char *bearer, void *ctx);

/* True when the client sent or asked for application/x-protobuf. */
bool api_wants_protobuf(struct http_req *r);

/*
 * Decodes the body into a new message of type desc (an empty body decodes
 * to an empty message). Free it with api_msg_free().
 */
bool api_decode(struct http_req *r, const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out)
    __attribute__((warn_unused_result));

void api_msg_free(ProtobufCMessage *m);

/* Replies msg with status in the request's format (JSON or protobuf). */
void api_reply_msg(struct http_req *r, int status, const ProtobufCMessage *msg);

/* Parses a decimal uint64 query parameter; absent gives def. False = replied 400. */
bool api_query_u64(struct http_req *r, const char *name, uint64_t def, uint64_t *out)
    __attribute__((warn_unused_result));

/* Parses a {name} path parameter as uint64. False = replied 400. */
bool api_param_u64(struct http_req *r, const char *name, uint64_t *out)
    __attribute__((warn_unused_result));

/*
 * A PostgreSQL int8[] literal "{1,2,3}" of n values (uint64 kept as the
 * same 64 bits). Caller frees; NULL on allocation failure.
 */
char *api_int8_array(const uint64_t *v, size_t n);

struct pg_params;
struct pg_error;
/*
 * Runs a prepared statement for request r on w's pool. When no connection
 * can take it, replies 503 (with Retry-After) and returns false; the
 * caller then frees its own state (callers without state may ignore the
 * result: the request is answered either way). Otherwise cb(arg) follows.
 */
bool api_query(struct http_req *r, struct logic_worker *w, const char *stmt,
               const struct pg_params *p,
               void (*cb)(const PGresult *, const struct pg_error *, void *), void *arg);

/*
 * api_query on the pool of the shard holding mailbox (app_id, uid)
 * (docs/design.md 3.6): every statement on private rows goes through here.
 */
bool api_query_shard(struct http_req *r, struct logic_worker *w, uint64_t app_id, uint64_t uid,
                     const char *stmt, const struct pg_params *p,
                     void (*cb)(const PGresult *, const struct pg_error *, void *), void *arg);

/* Replies 503 for a dependency error, 500-ish for the rest (logged). */
void api_reply_pg_error(struct http_req *r, const struct pg_error *err);

/* Whether err is a bucket fence of a move (SQLSTATE MBF01/MBF02, migrations/0006). */
bool api_bucket_fenced(const struct pg_error *err);

/*
 * api_reply_pg_error for a statement on private rows (a shard's): on a
 * bucket fence it also has the public-cache poller reload the bucket map
 * now (pubcache_kick), so the client's retry finds the bucket's new shard.
 */
void api_reply_shard_error(struct logic_worker *w, struct http_req *r, const struct pg_error *err);

#endif
