/*
 * pg: PostgreSQL client driven by a libevent loop.
 *
 * A pg_pool belongs to one thread's event_base and holds a few non-blocking
 * libpq connections (PQconnectStart/PQconnectPoll on PQsocket). Each
 * connection runs in pipeline mode: queries are sent as soon as they are
 * issued, each followed by its own sync point, so one failing query aborts
 * only itself. Queries go to the connection with the fewest in flight.
 *
 * Statements: the daemon registers named statements once (pg_pool_prepare)
 * before or after start; every connection prepares them all right after it
 * connects, before it takes queries. Parameters are always bound, never
 * spliced into SQL: int8/int4/bool/bytea are sent in binary, text as text.
 * Results are always requested in binary; use the pg_get_* readers.
 *
 * Failure: a lost connection is re-opened with exponential backoff
 * (min..max, with jitter). Queries in flight on it complete with
 * PG_ERR_UNAVAILABLE. When no connection is up, pg_query() returns false at
 * once so the caller can answer 503 instead of queueing without bound.
 * A query that has not completed after query_timeout_ms completes with
 * PG_ERR_TIMEOUT (its connection is reset: libpq cannot drop one result).
 *
 * Callbacks run on the pool's thread. The PGresult passed to a callback is
 * owned by the pool and freed after the callback returns.
 */
#ifndef MBOX_PG_H
#define MBOX_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

struct event_base;
struct metrics;
struct pg_pool;

#define PG_MAX_PARAMS 24

struct pg_pool_config {
    const char *conninfo; /* libpq connection string */
    int size;             /* connections in this pool (>= 1) */
    int backoff_min_ms;   /* first reconnect delay */
    int backoff_max_ms;   /* cap of the delay */
    int query_timeout_ms; /* 0 = none */
    int max_inflight;     /* per connection; beyond it pg_query() returns false */
    /* NULL, or SQL run on every connection when it connects, before its
     * statements are prepared (e.g. SET ...); a failure resets the
     * connection like a statement the server rejects */
    const char *session_sql;
    /* Called on the pool's loop when the pool gains its first ready
     * connection (up = true) or loses its last one (up = false). */
    void (*on_up)(bool up, void *arg);
    void *on_up_arg;
};

enum pg_err_kind {
    PG_OK = 0,
    PG_ERR_UNAVAILABLE, /* no connection, or it broke while the query was in flight */
    PG_ERR_TIMEOUT,
    PG_ERR_QUERY, /* the server answered with an error: see sqlstate */
};

struct pg_error {
    enum pg_err_kind kind;
    char sqlstate[6];    /* "23505" etc. for PG_ERR_QUERY, else "" */
    const char *message; /* valid during the callback */
};

/* res is NULL unless err->kind == PG_OK. */
typedef void (*pg_cb)(const PGresult *res, const struct pg_error *err, void *arg);

/* Bound parameters: fill with the pg_param_* functions. */
struct pg_params {
    int n;
    const char *values[PG_MAX_PARAMS];
    int lengths[PG_MAX_PARAMS];
    int formats[PG_MAX_PARAMS];
    char scratch[PG_MAX_PARAMS][8]; /* network-order binary values */
    Oid types[PG_MAX_PARAMS];       /* int8/int4/bool/bytea oids, 0 = server infers;
                                     * sent by pg_query_sql() only */
};

void pg_params_init(struct pg_params *p);
void pg_param_i64(struct pg_params *p, int64_t v);                      /* int8, binary */
void pg_param_i32(struct pg_params *p, int32_t v);                      /* int4, binary */
void pg_param_bool(struct pg_params *p, bool v);                        /* bool, binary */
void pg_param_text(struct pg_params *p, const char *s);                 /* text; NULL = SQL NULL */
void pg_param_bytea(struct pg_params *p, const void *data, size_t len); /* binary */
void pg_param_null(struct pg_params *p);

/*
 * A one-dimensional array in PostgreSQL's binary format, bound as one
 * binary parameter (the statement casts it: $n::int8[] etc.). Append the
 * elements with pg_array_*, bind with pg_param_array (which writes the
 * header; the buffer must stay valid until pg_query() returns), then
 * pg_array_free. An allocation failure or an element longer than INT32_MAX
 * clears ok, and binding a failed array marks the parameter set invalid.
 * Callers append elements of the array's own type.
 */
enum pg_array_type { PG_ARRAY_INT8, PG_ARRAY_INT4, PG_ARRAY_TEXT, PG_ARRAY_BYTEA };
struct pg_array {
    unsigned char *buf;
    size_t len, cap;
    enum pg_array_type type;
    Oid elem_oid;
    int n;
    bool has_null;
    bool ok;
};
void pg_array_init(struct pg_array *a, enum pg_array_type type);
void pg_array_i64(struct pg_array *a, int64_t v);
void pg_array_i32(struct pg_array *a, int32_t v);
void pg_array_bytes(struct pg_array *a, const void *data, size_t len); /* text or bytea */
void pg_array_null(struct pg_array *a);
void pg_param_array(struct pg_params *p, struct pg_array *a);
void pg_array_free(struct pg_array *a);
/* The pointers stored by text/bytea must stay valid until pg_query() returns
 * (the pool copies nothing it does not need: libpq copies on send).
 * bytea: (NULL, 0) is an empty value, not SQL NULL (use pg_param_null).
 * More than PG_MAX_PARAMS parameters, or a bytea longer than INT_MAX, marks
 * the set invalid (n > PG_MAX_PARAMS) and pg_query() then returns false. */

/*
 * Creates the pool and starts connecting. Returns NULL on bad config (no
 * conninfo, unparsable conninfo, size < 1, negative values). Zero means a
 * default: backoff 100 ms .. 10 s, max_inflight 128. A connect attempt is
 * abandoned after the conninfo's connect_timeout (default 10 s). Host names
 * are resolved by libpq with a blocking getaddrinfo(): prefer addresses.
 * With several hosts (host=a,b port=p,q, target_session_attrs=read-write
 * for the primary of a failover pair) libpq tries them in order; an attempt
 * abandoned on one host makes the next attempt start at the host after it.
 */
struct pg_pool *pg_pool_new(struct event_base *base, const struct pg_pool_config *cfg,
                            struct metrics *metrics);

/*
 * Frees the pool; callbacks of queries in flight are called with
 * PG_ERR_UNAVAILABLE (from inside pg_pool_free). May be called from a pg
 * callback: the pool is then torn down when the pool's event handler that
 * ran the callback returns (before control goes back to the loop), and
 * pg_query() returns false meanwhile.
 */
void pg_pool_free(struct pg_pool *p);

/*
 * Registers a named statement; types may be NULL (server infers them).
 * Connections already up prepare it at once, later ones on connect.
 * Registering the same name again is fine with the same SQL and types, and
 * fails otherwise. A statement the server rejects is logged
 * (pg_prepare_failed) and makes the connection reconnect with backoff.
 */
bool pg_pool_prepare(struct pg_pool *p, const char *name, const char *sql, int nparams,
                     const Oid *types) __attribute__((warn_unused_result));

/*
 * Runs the named prepared statement. Returns false (callback never called)
 * when no connection can take it now; the caller answers 503.
 */
bool pg_query(struct pg_pool *p, const char *name, const struct pg_params *params, pg_cb cb,
              void *arg) __attribute__((warn_unused_result));

/* Runs SQL text with parameters (unnamed statement). Same contract as pg_query.
 * Parameter types come from pg_params.types (int8/int4/bool/bytea), others
 * are inferred by the server. */
bool pg_query_sql(struct pg_pool *p, const char *sql, const struct pg_params *params, pg_cb cb,
                  void *arg) __attribute__((warn_unused_result));

/* Connections up now / configured. */
int pg_pool_connected(const struct pg_pool *p);
int pg_pool_size(const struct pg_pool *p);

/* ---- readers for binary results ---- */
bool pg_is_null(const PGresult *r, int row, int col);
/* int2/int4/int8 by length; 0 for NULL. */
int64_t pg_get_i64(const PGresult *r, int row, int col);
bool pg_get_bool(const PGresult *r, int row, int col);
/* text/bytea: pointer into the result and its length. */
const char *pg_get_bytes(const PGresult *r, int row, int col, size_t *len);
/* Column number by name, or -1. */
int pg_col(const PGresult *r, const char *name);

#endif
