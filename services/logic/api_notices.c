/*
 * api_notices: the operators' side of the public mailbox on the internal
 * listener (docs/design.md 3.2-3.5, 5.4): notices and their lifecycle, the
 * gray-release whitelist, the audit log, reach statistics.
 *
 * Every change is one SQL statement that also writes its audit entry and,
 * when users could see the change, takes the next seq under the public
 * head row lock (migrations/0002): all or nothing. After a change the
 * local poller is kicked so this process's cache catches up at once;
 * other logicd processes see it within one poll interval.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "api_io.h"
#include "etag.h"
#include "log.h"
#include "metrics.h"
#include "logic.h"
#include "notify.h"
#include "mbox.pb-c.h"
#include "pbjson.h"
#include "pg.h"
#include "pubcache.h"
#include "reach.h"
#include "pubfilter.h"
#include "redis.h"
#include "sql.h"

#define TITLE_MAX          512
#define LIST_MAX           500
#define AUDIT_BODY_MAX     65536
#define WHITELIST_MAX_UIDS 100000

/* ---- rows to Notice messages ---- */

/* A Notice with the storage its pointers need while it is encoded. */
struct notice_out {
    Mbox__Notice n;
    Mbox__Targeting t;
    Mbox__NotifyPolicy p;
    char *platforms[PUB_MAX_PLATFORMS];
    char platbuf[PUB_MAX_PLATFORMS][16];
};

/* Fills o from row of res; its strings point into res. */
static void
notice_from_row(const PGresult *res, int row, struct notice_out *o)
{
    size_t len;
    mbox__notice__init(&o->n);
    mbox__targeting__init(&o->t);
    mbox__notify_policy__init(&o->p);
#define U64(f)                                                                                     \
    do {                                                                                           \
        o->n.has_##f = 1;                                                                          \
        o->n.f = (uint64_t)pg_get_i64(res, row, pg_col(res, #f));                                  \
    } while (0)
#define I32(f)                                                                                     \
    do {                                                                                           \
        o->n.has_##f = 1;                                                                          \
        o->n.f = (int32_t)pg_get_i64(res, row, pg_col(res, #f));                                   \
    } while (0)
    U64(notice_id);
    U64(app_id);
    U64(seq);
    U64(msg_id);
    U64(start_at);
    U64(expire_at);
    U64(created_at);
    U64(updated_at);
    I32(category);
    I32(type);
    I32(priority);
    I32(business_type);
#undef U64
#undef I32
    o->n.has_version = 1;
    o->n.version = (uint32_t)pg_get_i64(res, row, pg_col(res, "version"));
    o->n.state = (char *)pg_get_bytes(res, row, pg_col(res, "state"), &len);
    o->n.title = (char *)pg_get_bytes(res, row, pg_col(res, "title"), &len);
    o->n.has_content = 1;
    o->n.content.data = (uint8_t *)pg_get_bytes(res, row, pg_col(res, "content"), &len);
    o->n.content.len = len;
    o->n.has_template_ = 1;
    o->n.template_ = pg_get_bool(res, row, pg_col(res, "template"));
    o->n.created_by = (char *)pg_get_bytes(res, row, pg_col(res, "created_by"), &len);
    o->n.updated_by = (char *)pg_get_bytes(res, row, pg_col(res, "updated_by"), &len);

    const char *plats = pg_get_bytes(res, row, pg_col(res, "platforms"), &len);
    size_t np = 0;
    while (len > 0 && np < PUB_MAX_PLATFORMS) {
        size_t k = 0;
        while (k < len && plats[k] != ',')
            k++;
        if (k > 0 && k < sizeof(o->platbuf[0])) {
            memcpy(o->platbuf[np], plats, k);
            o->platbuf[np][k] = '\0';
            o->platforms[np] = o->platbuf[np];
            np++;
        }
        plats += k < len ? k + 1 : k;
        len -= k < len ? k + 1 : k;
    }
    o->t.n_platforms = np;
    o->t.platforms = o->platforms;
    o->t.has_min_core_level = o->t.has_max_core_level = o->t.has_login_only = 1;
    o->t.min_core_level = (uint64_t)pg_get_i64(res, row, pg_col(res, "min_core_level"));
    o->t.max_core_level = (uint64_t)pg_get_i64(res, row, pg_col(res, "max_core_level"));
    o->t.login_only = pg_get_bool(res, row, pg_col(res, "login_only"));
    o->n.targeting = &o->t;
    o->p.mode = (char *)pg_get_bytes(res, row, pg_col(res, "notify_mode"), &len);
    o->p.has_rate_per_s = 1;
    o->p.rate_per_s = (uint32_t)pg_get_i64(res, row, pg_col(res, "notify_rate"));
    o->n.notify = &o->p;
}

/* Replies the notice of row, with its version as the entity tag (ETag: "<version>"). */
static void
reply_notice_row(struct http_req *r, int status, const PGresult *res, int row)
{
    struct notice_out o;
    notice_from_row(res, row, &o);
    char etag[16];
    etag_format(o.n.version, etag, sizeof(etag));
    http_req_add_header(r, "ETag", etag);
    api_reply_msg(r, status, &o.n.base);
}

/* ---- If-Match (PATCH, DELETE and the lifecycle actions) ---- */

/* The version an If-Match header requires (etag.h); replies 400 and returns false when malformed.
 */
static bool
parse_if_match(struct http_req *r, uint32_t *version)
{
    switch (etag_parse_if_match(http_req_header(r, "If-Match"), version)) {
    case ETAG_NONE:
    case ETAG_VERSION:
        return true;
    case ETAG_WEAK:
        http_reply_error(r, 400, "invalid_argument",
                         "If-Match: a weak entity tag never matches; send the ETag \"<version>\"");
        return false;
    case ETAG_MALFORMED:
    default:
        http_reply_error(r, 400, "invalid_argument",
                         "If-Match must be a notice version: \"<version>\" or <version>, "
                         "1..2147483647");
        return false;
    }
}

/*
 * 412 Precondition Failed for an If-Match that does not name the current
 * version, with that version in the error object (http_reply_error has no
 * room for extra fields).
 */
static void
reply_version_mismatch(struct http_req *r, uint32_t if_match, int64_t current)
{
    char msg[160];
    snprintf(msg, sizeof(msg),
             "version mismatch: the notice is at version %" PRId64 " (If-Match %u); re-read and "
             "retry",
             current, if_match);
    http_reply_json(r, 412,
                    json_pack("{s:{s:s, s:s, s:I}}", "error", "code", "failed_precondition",
                              "message", msg, "current_version", (json_int_t)current));
}

/* ---- validation ---- */

/* Fields an operator may set; everything else in a Notice is the server's. */
static bool
validate_notice(struct http_req *r, const struct logic_config *c, const Mbox__Notice *n,
                bool create)
{
    if (n->has_notice_id || n->state || n->has_version || n->has_seq || n->has_msg_id ||
        n->created_by || n->has_created_at || n->updated_by || n->has_updated_at) {
        http_reply_error(r, 400, "invalid_argument",
                         "notice_id, state, version, seq, msg_id and the audit fields are set by "
                         "the server");
        return false;
    }
    if (create && !n->has_app_id) {
        http_reply_error(r, 400, "invalid_argument", "app_id is required");
        return false;
    }
    if (!create && n->has_app_id) {
        http_reply_error(r, 400, "invalid_argument", "app_id cannot change");
        return false;
    }
    if (create && (n->title == NULL || n->title[0] == '\0')) {
        http_reply_error(r, 400, "invalid_argument", "title is required");
        return false;
    }
    if (n->title != NULL && strlen(n->title) > TITLE_MAX) {
        http_reply_error(r, 400, "invalid_argument", "title is longer than %d bytes", TITLE_MAX);
        return false;
    }
    if (n->has_content && (int64_t)n->content.len > c->max_content_bytes) {
        http_reply_error(r, 413, "too_large", "content is %zu bytes, at most %" PRId64,
                         n->content.len, c->max_content_bytes);
        return false;
    }
    if (n->has_start_at && n->has_expire_at && n->expire_at != 0 && n->expire_at <= n->start_at) {
        http_reply_error(r, 400, "invalid_argument", "expire_at must be after start_at");
        return false;
    }
    if (n->has_start_at && n->start_at > INT64_MAX) {
        http_reply_error(r, 400, "invalid_argument", "start_at out of range");
        return false;
    }
    if (n->has_expire_at && n->expire_at > INT64_MAX) {
        http_reply_error(r, 400, "invalid_argument", "expire_at out of range");
        return false;
    }
    if (n->targeting != NULL) {
        const Mbox__Targeting *t = n->targeting;
        if (t->n_platforms > PUB_MAX_PLATFORMS) {
            http_reply_error(r, 400, "invalid_argument", "targeting.platforms: at most %d",
                             PUB_MAX_PLATFORMS);
            return false;
        }
        for (size_t i = 0; i < t->n_platforms; i++) {
            const char *p = t->platforms[i];
            size_t len = strlen(p);
            bool ok =
                len > 0 && len < 16 && strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_-") == len;
            if (!ok) {
                http_reply_error(r, 400, "invalid_argument",
                                 "targeting.platforms[%zu]: lower-case [a-z0-9_-], 1..15 chars", i);
                return false;
            }
        }
        if (t->has_min_core_level && t->has_max_core_level && t->max_core_level != 0 &&
            t->min_core_level > t->max_core_level) {
            http_reply_error(r, 400, "invalid_argument",
                             "targeting.min_core_level is above max_core_level");
            return false;
        }
        if ((t->has_min_core_level && t->min_core_level > INT64_MAX) ||
            (t->has_max_core_level && t->max_core_level > INT64_MAX)) {
            http_reply_error(r, 400, "invalid_argument", "targeting core levels out of range");
            return false;
        }
    }
    if (n->notify != NULL) {
        const char *mode = n->notify->mode ? n->notify->mode : "none";
        if (strcmp(mode, "none") != 0 && strcmp(mode, "paced") != 0) {
            http_reply_error(r, 400, "invalid_argument", "notify.mode must be none or paced");
            return false;
        }
        if (strcmp(mode, "paced") == 0 &&
            (!n->notify->has_rate_per_s || n->notify->rate_per_s == 0 ||
             n->notify->rate_per_s > 1000000)) {
            http_reply_error(r, 400, "invalid_argument",
                             "notify.rate_per_s must be 1..1000000 for paced");
            return false;
        }
    }
    return true;
}

/* "{a,b}" text[] literal of the platforms (validated: no quoting needed). */
static void
platforms_literal(const Mbox__Targeting *t, char *out, size_t len)
{
    size_t o = 0;
    out[o++] = '{';
    for (size_t i = 0; t != NULL && i < t->n_platforms && o + 20 < len; i++)
        o += (size_t)snprintf(out + o, len - o, "%s%s", i ? "," : "", t->platforms[i]);
    snprintf(out + o, len - o, "}");
}

/*
 * What the audit log keeps of a request: the decoded message as compact
 * JSON (so a protobuf body is readable, and bytes that are not UTF-8 can
 * never fail the audit insert), or "" for requests without a body. The
 * caller frees it.
 */
static char *
audit_json(const ProtobufCMessage *m)
{
    json_t *j = m != NULL ? pbjson_encode(m) : NULL;
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (s != NULL && strlen(s) > AUDIT_BODY_MAX) {
        free(s);
        s = strdup("(request larger than 64 KiB)");
    }
    return s != NULL ? s : strdup("");
}

/* ---- POST /v1/notices ---- */

static void
on_created(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct http_req *r = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
        return;
    }
    reply_notice_row(r, 201, res, 0);
}

void
api_notice_create(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const char *actor;
    if (!api_auth_ops(r, w, &actor))
        return;
    ProtobufCMessage *m;
    if (!api_decode(r, &mbox__notice__descriptor, &m))
        return;
    Mbox__Notice *n = (Mbox__Notice *)m;
    if (!validate_notice(r, &w->app->cfg, n, true)) {
        api_msg_free(m);
        return;
    }
    char plats[256];
    platforms_literal(n->targeting, plats, sizeof(plats));
    const Mbox__Targeting *t = n->targeting;
    const char *mode = n->notify && n->notify->mode ? n->notify->mode : "none";
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)n->app_id);
    pg_param_text(&p, n->title);
    pg_param_bytea(&p, n->content.data, n->has_content ? n->content.len : 0);
    pg_param_i32(&p, n->category);
    pg_param_i32(&p, n->type);
    pg_param_i32(&p, n->priority);
    pg_param_i32(&p, n->business_type);
    pg_param_i64(&p, (int64_t)n->start_at);
    pg_param_i64(&p, (int64_t)n->expire_at);
    pg_param_text(&p, plats);
    pg_param_i64(&p, t ? (int64_t)t->min_core_level : 0);
    pg_param_i64(&p, t ? (int64_t)t->max_core_level : 0);
    pg_param_bool(&p, t && t->login_only);
    pg_param_text(&p, mode);
    pg_param_i32(&p, n->notify ? (int32_t)n->notify->rate_per_s : 0);
    pg_param_bool(&p, n->has_template_ && n->template_);
    pg_param_text(&p, actor);
    pg_param_i64(&p, logic_now_us());
    char *audit = audit_json(m);
    pg_param_text(&p, audit);
    api_query(r, w, SQL_NOTICE_CREATE, &p, on_created, r);
    free(audit);
    api_msg_free(m);
}

/* ---- GET /v1/notices, GET /v1/notices/{id} ---- */

static void
on_list(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct http_req *r = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
        return;
    }
    int n = PQntuples(res);
    struct notice_out *outs = calloc((size_t)n + 1, sizeof(*outs));
    Mbox__Notice **ptrs = calloc((size_t)n + 1, sizeof(*ptrs));
    if (outs == NULL || ptrs == NULL) {
        http_reply_error(r, 503, "unavailable", "out of memory");
    } else {
        for (int i = 0; i < n; i++) {
            notice_from_row(res, i, &outs[i]);
            ptrs[i] = &outs[i].n;
        }
        Mbox__NoticeList list = MBOX__NOTICE_LIST__INIT;
        list.n_notices = (size_t)n;
        list.notices = ptrs;
        api_reply_msg(r, 200, &list.base);
    }
    free(outs);
    free(ptrs);
}

void
api_notice_list(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const char *actor;
    if (!api_auth_ops(r, w, &actor))
        return;
    uint64_t app, limit;
    if (!api_query_u64(r, "app_id", 0, &app) || !api_query_u64(r, "limit", 100, &limit))
        return;
    const char *state = http_req_query(r, "state");
    enum pub_state st;
    if (state != NULL && state[0] != '\0' && !pub_state_parse(state, &st)) {
        http_reply_error(r, 400, "invalid_argument",
                         "state must be draft, prepublished, published, stopped or retracted");
        return;
    }
    if (limit == 0 || limit > LIST_MAX)
        limit = LIST_MAX;
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)app);
    pg_param_text(&p, state ? state : "");
    pg_param_i32(&p, (int32_t)limit);
    api_query(r, w, SQL_NOTICE_LIST, &p, on_list, r);
}

static void
on_get(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct http_req *r = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
        return;
    }
    if (PQntuples(res) == 0) {
        http_reply_error(r, 404, "not_found", "no notice %s", http_req_param(r, "id"));
        return;
    }
    reply_notice_row(r, 200, res, 0);
}

void
api_notice_get(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const char *actor;
    uint64_t id;
    if (!api_auth_ops(r, w, &actor) || !api_param_u64(r, "id", &id))
        return;
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)id);
    api_query(r, w, SQL_NOTICE_GET, &p, on_get, r);
}

/* ---- lifecycle: prepublish, publish, stop, retract, delete ---- */

struct transition {
    const char *action;  /* audit action and path verb */
    const char *to;      /* new state */
    const char *from[4]; /* allowed current states */
    bool del;
    enum logic_role role; /* the least role allowed to do it (403 below) */
};

/* A prepublish reaches only the whitelist, so an editor may do it; what
 * changes what every user sees needs a publisher. */
static const struct transition transitions[] = {
    {"prepublish", "prepublished", {"draft"}, false, LOGIC_ROLE_EDITOR},
    {"publish", "published", {"draft", "prepublished"}, false, LOGIC_ROLE_PUBLISHER},
    {"stop", "stopped", {"published"}, false, LOGIC_ROLE_PUBLISHER},
    {"retract", "retracted", {"published"}, false, LOGIC_ROLE_PUBLISHER},
    {"delete", "", {"draft", "prepublished", "stopped", "retracted"}, true, LOGIC_ROLE_PUBLISHER},
};

struct transition_op {
    struct http_req *r;
    struct logic_worker *w;
    const struct transition *t;
    uint32_t if_match; /* 0: none */
};

static void
on_transition(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct transition_op *op = arg;
    struct http_req *r = op->r;
    const struct transition *t = op->t;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
    } else if (pg_is_null(res, 0, 0)) {
        http_reply_error(r, 404, "not_found", "no notice %s", http_req_param(r, "id"));
    } else if (pg_is_null(res, 0, 2)) {
        size_t len;
        const char *cur = pg_get_bytes(res, 0, 0, &len);
        int64_t version = pg_get_i64(res, 0, 1);
        char allowed[96] = "";
        bool from_ok = false;
        for (int i = 0; i < 4 && t->from[i]; i++) {
            strncat(allowed, i ? ", " : "", sizeof(allowed) - strlen(allowed) - 1);
            strncat(allowed, t->from[i], sizeof(allowed) - strlen(allowed) - 1);
            from_ok = from_ok || strcmp(cur, t->from[i]) == 0;
        }
        if (!from_ok)
            http_reply_error(r, 409, "conflict",
                             "cannot %s a notice in state '%s'; allowed from: %s", t->action, cur,
                             allowed);
        else if (op->if_match != 0 && version != (int64_t)op->if_match)
            reply_version_mismatch(r, op->if_match, version);
        else
            http_reply_error(r, 409, "conflict",
                             "the notice changed while this %s was applied; re-read and retry",
                             t->action);
    } else {
        notify_pacing(op->w, res, 0, t->action);
        pubcache_kick(op->w->app->pubcache);
        if (t->del)
            http_reply(r, 204, "application/json", "", 0);
        else
            reply_notice_row(r, 200, res, 0); /* notice columns are found by name */
    }
    free(op);
}

static void
run_transition(struct http_req *r, struct logic_worker *w, const struct transition *t)
{
    const struct logic_ops_token *who = api_auth_ops_as(r, w, t->role);
    uint64_t id;
    uint32_t if_match;
    if (who == NULL || !api_param_u64(r, "id", &id) || !parse_if_match(r, &if_match))
        return;
    const char *actor = who->name;
    struct transition_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    op->r = r;
    op->w = w;
    op->t = t;
    op->if_match = if_match;
    char from[96] = "{";
    for (int i = 0; i < 4 && t->from[i]; i++) {
        strncat(from, i ? "," : "", sizeof(from) - strlen(from) - 1);
        strncat(from, t->from[i], sizeof(from) - strlen(from) - 1);
    }
    strncat(from, "}", sizeof(from) - strlen(from) - 1);
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)id);
    pg_param_text(&p, t->to);
    pg_param_text(&p, from);
    pg_param_text(&p, actor);
    pg_param_i64(&p, logic_now_us());
    pg_param_text(&p, t->action);
    pg_param_text(&p, "");
    pg_param_bool(&p, t->del);
    pg_param_i32(&p, (int32_t)if_match);
    if (!api_query(r, w, SQL_NOTICE_TRANSITION, &p, on_transition, op)) {
        free(op);
    }
}

void
api_notice_prepublish(struct http_req *r, void *ctx)
{
    run_transition(r, ctx, &transitions[0]);
}

void
api_notice_publish(struct http_req *r, void *ctx)
{
    run_transition(r, ctx, &transitions[1]);
}

void
api_notice_stop(struct http_req *r, void *ctx)
{
    run_transition(r, ctx, &transitions[2]);
}

void
api_notice_retract(struct http_req *r, void *ctx)
{
    run_transition(r, ctx, &transitions[3]);
}

void
api_notice_delete(struct http_req *r, void *ctx)
{
    run_transition(r, ctx, &transitions[4]);
}

/* ---- PATCH /v1/notices/{id} (If-Match: "<version>") ---- */

struct patch_op {
    struct http_req *r;
    struct logic_worker *w;
    const char *actor;
    Mbox__Notice *edit;
    uint64_t id;
    uint32_t if_match; /* 0: none given */
    uint32_t based_on; /* the version the edit was merged into */
    bool editor;       /* may not edit a published notice (publishers only) */
};

/* 403 for an editor's edit of a published notice: every user sees it, and
 * changing it (content, timing, targeting) is a publisher's decision. */
static bool
patch_role_denied(const struct patch_op *op, const char *state)
{
    if (!op->editor || strcmp(state, "published") != 0)
        return false;
    http_reply_error(op->r, 403, "permission_denied",
                     "operator '%s' has role editor; editing a published notice needs role "
                     "publisher",
                     op->actor);
    return true;
}

static void
patch_free(struct patch_op *op)
{
    api_msg_free(&op->edit->base);
    free(op);
}

/* 409 for a notice in a state that cannot be edited. */
static bool
patch_state_conflict(struct http_req *r, const char *state)
{
    if (strcmp(state, "draft") == 0 || strcmp(state, "prepublished") == 0 ||
        strcmp(state, "published") == 0)
        return false;
    http_reply_error(r, 409, "conflict",
                     "cannot edit a notice in state '%s'; allowed in: draft, prepublished, "
                     "published",
                     state);
    return true;
}

/*
 * The write found the notice changed. Its statement's snapshot may predate
 * the change that beat it (that change was still committing as it
 * started), so the notice is read again to report what it is now.
 */
static void
on_patch_reread(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct patch_op *op = arg;
    struct http_req *r = op->r;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
    } else if (PQntuples(res) == 0) {
        http_reply_error(r, 404, "not_found", "no notice %" PRIu64, op->id);
    } else {
        size_t len;
        const char *st = pg_get_bytes(res, 0, pg_col(res, "state"), &len);
        int64_t now = pg_get_i64(res, 0, pg_col(res, "version"));
        bool replied = patch_role_denied(op, st) || patch_state_conflict(r, st);
        if (!replied && op->if_match != 0 && now != (int64_t)op->if_match)
            reply_version_mismatch(r, op->if_match, now);
        else if (!replied)
            http_reply_error(r, 409, "conflict",
                             "the notice changed while this edit was applied (edit based on "
                             "version %u, now version %" PRId64 ", state '%s'); re-read and retry",
                             op->based_on, now, st);
    }
    patch_free(op);
}

static void
on_patched(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct patch_op *op = arg;
    struct http_req *r = op->r;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
    } else if (pg_is_null(res, 0, 0)) {
        http_reply_error(r, 404, "not_found", "no notice %" PRIu64, op->id);
    } else if (pg_is_null(res, 0, 2)) {
        struct pg_params p;
        pg_params_init(&p);
        pg_param_i64(&p, (int64_t)op->id);
        if (!api_query(r, op->w, SQL_NOTICE_GET, &p, on_patch_reread, op))
            patch_free(op);
        return;
    } else {
        pubcache_kick(op->w->app->pubcache);
        reply_notice_row(r, 200, res, 0);
    }
    patch_free(op);
}

/* The current notice arrived: merge the edit into it and write. */
static void
on_patch_read(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct patch_op *op = arg;
    struct http_req *r = op->r;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
        patch_free(op);
        return;
    }
    if (PQntuples(res) == 0) {
        http_reply_error(r, 404, "not_found", "no notice %" PRIu64, op->id);
        patch_free(op);
        return;
    }
    struct notice_out cur;
    notice_from_row(res, 0, &cur);
    const Mbox__Notice *e = op->edit;
    if (patch_role_denied(op, cur.n.state) || patch_state_conflict(r, cur.n.state)) {
        patch_free(op);
        return;
    }
    if (op->if_match != 0 && op->if_match != cur.n.version) {
        reply_version_mismatch(r, op->if_match, cur.n.version);
        patch_free(op);
        return;
    }
    uint32_t expect = cur.n.version;
    op->based_on = expect;
    /* A targeting or notify object replaces the whole object (like a JSON
     * merge patch of a nested value): {"targeting":{}} clears every bound,
     * {"targeting":{"platforms":[]}} clears the platform set. */
    Mbox__Targeting empty_t = MBOX__TARGETING__INIT;
    const Mbox__Targeting *t = e->targeting ? e->targeting : cur.n.targeting;
    if (t == NULL)
        t = &empty_t;
    uint64_t start_at = e->has_start_at ? e->start_at : cur.n.start_at;
    uint64_t expire_at = e->has_expire_at ? e->expire_at : cur.n.expire_at;
    const char *mode = cur.p.mode;
    uint32_t rate = cur.p.rate_per_s;
    if (e->notify != NULL) {
        mode = e->notify->mode ? e->notify->mode : "none";
        rate = e->notify->has_rate_per_s ? e->notify->rate_per_s : 0;
    }
    const char *bad = NULL;
    if (expire_at != 0 && expire_at <= start_at)
        bad = "expire_at must be after start_at";
    else if (t->max_core_level != 0 && t->min_core_level > t->max_core_level)
        bad = "targeting.min_core_level is above max_core_level";
    else if (strcmp(mode, "paced") == 0 && rate == 0)
        bad = "notify.rate_per_s must be 1..1000000 for paced";
    if (bad != NULL) {
        http_reply_error(r, 400, "invalid_argument", "%s", bad);
        patch_free(op);
        return;
    }
    char plats[256];
    platforms_literal(t, plats, sizeof(plats));
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)op->id);
    pg_param_i32(&p, (int32_t)expect);
    pg_param_text(&p, e->title ? e->title : cur.n.title);
    if (e->has_content)
        pg_param_bytea(&p, e->content.data, e->content.len);
    else
        pg_param_bytea(&p, cur.n.content.data, cur.n.content.len);
    pg_param_i32(&p, e->has_category ? e->category : cur.n.category);
    pg_param_i32(&p, e->has_type ? e->type : cur.n.type);
    pg_param_i32(&p, e->has_priority ? e->priority : cur.n.priority);
    pg_param_i32(&p, e->has_business_type ? e->business_type : cur.n.business_type);
    pg_param_i64(&p, (int64_t)start_at);
    pg_param_i64(&p, (int64_t)expire_at);
    pg_param_text(&p, plats);
    pg_param_i64(&p, (int64_t)t->min_core_level);
    pg_param_i64(&p, (int64_t)t->max_core_level);
    pg_param_bool(&p, t->login_only);
    pg_param_text(&p, mode);
    pg_param_i32(&p, (int32_t)rate);
    pg_param_bool(&p, e->has_template_ ? e->template_ : cur.n.template_);
    pg_param_text(&p, op->actor);
    pg_param_i64(&p, logic_now_us());
    char *audit = audit_json(&op->edit->base);
    pg_param_text(&p, audit);
    pg_param_bool(&p, op->editor);
    bool sent = api_query(r, op->w, SQL_NOTICE_PATCH, &p, on_patched, op);
    free(audit);
    if (!sent) {
        patch_free(op);
    }
}

void
api_notice_patch(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    uint64_t id;
    const struct logic_ops_token *who = api_auth_ops_as(r, w, LOGIC_ROLE_EDITOR);
    if (who == NULL || !api_param_u64(r, "id", &id))
        return;
    const char *actor = who->name;
    uint32_t if_match;
    if (!parse_if_match(r, &if_match))
        return;
    ProtobufCMessage *m;
    if (!api_decode(r, &mbox__notice__descriptor, &m))
        return;
    if (!validate_notice(r, &w->app->cfg, (Mbox__Notice *)m, false)) {
        api_msg_free(m);
        return;
    }
    struct patch_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        api_msg_free(m);
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    op->r = r;
    op->w = w;
    op->actor = actor;
    op->edit = (Mbox__Notice *)m;
    op->id = id;
    op->if_match = if_match;
    op->editor = who->role < LOGIC_ROLE_PUBLISHER;
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)id);
    if (!api_query(r, w, SQL_NOTICE_GET, &p, on_patch_read, op)) {
        patch_free(op);
    }
}

/* ---- GET /v1/notices/{id}/stats ---- */

/* Most samples in a stats reply: a day at the default one a minute. */
#define SERIES_MAX REACH_SERIES_MAX

struct stats_op {
    struct http_req *r;
    struct logic_worker *w;
    uint64_t id;
    json_t *series; /* [{"at","reach"}], oldest first (reach.h) */
};

static void
stats_free(struct stats_op *op)
{
    json_decref(op->series);
    free(op);
}

static void
on_reach(redisReply *reply, const char *err, void *arg)
{
    struct stats_op *op = arg;
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        http_reply_error(op->r, 503, "unavailable", "reach counter unavailable (Redis)");
    } else {
        char id[24];
        snprintf(id, sizeof(id), "%" PRIu64, op->id);
        http_reply_json(op->r, 200,
                        json_pack("{s:s, s:I, s:s, s:O}", "notice_id", id, "reach",
                                  (json_int_t)reply->integer, "estimate", "hyperloglog", "series",
                                  op->series));
    }
    stats_free(op);
}

/* The sampled series arrived (newest first): keep it oldest first, then
 * read the current figure. */
static void
on_stats_series(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct stats_op *op = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(op->r, err);
        stats_free(op);
        return;
    }
    for (int i = PQntuples(res) - 1; i >= 0; i--) {
        char at[24];
        snprintf(at, sizeof(at), "%" PRId64, pg_get_i64(res, i, 0));
        json_array_append_new(op->series, json_pack("{s:s, s:I}", "at", at, "reach",
                                                    (json_int_t)pg_get_i64(res, i, 1)));
    }
    if (!redis_command(op->w->redis, on_reach, op, "PFCOUNT reach:{n:%" PRIu64 "}", op->id)) {
        http_reply_error(op->r, 503, "unavailable", "reach counter unavailable (Redis)");
        stats_free(op);
    }
}

/* The notice exists (404 like GET otherwise): read its sampled series. */
static void
on_stats_notice(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct stats_op *op = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(op->r, err);
        stats_free(op);
        return;
    }
    if (PQntuples(res) == 0) {
        http_reply_error(op->r, 404, "not_found", "no notice %" PRIu64, op->id);
        stats_free(op);
        return;
    }
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)op->id);
    pg_param_i32(&p, SERIES_MAX);
    if (!api_query(op->r, op->w, SQL_REACH_SERIES, &p, on_stats_series, op))
        stats_free(op);
}

void
api_notice_stats(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const char *actor;
    uint64_t id;
    if (!api_auth_ops(r, w, &actor) || !api_param_u64(r, "id", &id))
        return;
    struct stats_op *op = malloc(sizeof(*op));
    json_t *series = json_array();
    if (op == NULL || series == NULL) {
        free(op);
        json_decref(series);
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    op->r = r;
    op->w = w;
    op->id = id;
    op->series = series;
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)id);
    if (!api_query(r, w, SQL_NOTICE_GET, &p, on_stats_notice, op))
        stats_free(op);
}

/* Counts a delivery of notice_id to uid (HyperLogLog; fire and forget). */
void
api_notice_count_reach(struct logic_worker *w, uint64_t notice_id, uint64_t app_id, uint64_t uid)
{
    if (redis_command(w->redis, NULL, NULL, "PFADD reach:{n:%" PRIu64 "} %" PRIu64 ":%" PRIu64,
                      notice_id, app_id, uid)) {
        metric_inc(w->m_reach_counted);
        return;
    }
    metric_inc(w->m_reach_dropped);
    log_debug("reach_dropped", "notice=%" PRIu64, notice_id);
}

/* ---- whitelist ---- */

static void
on_whitelist_list(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct http_req *r = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
        return;
    }
    int n = PQntuples(res);
    uint64_t *uids = calloc((size_t)n + 1, sizeof(*uids));
    if (uids == NULL) {
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    for (int i = 0; i < n; i++)
        uids[i] = (uint64_t)pg_get_i64(res, i, 0);
    Mbox__Whitelist wl = MBOX__WHITELIST__INIT;
    uint64_t app;
    if (api_query_u64(r, "app_id", 0, &app)) {
        wl.has_app_id = 1;
        wl.app_id = app;
        wl.n_uids = (size_t)n;
        wl.uids = uids;
        api_reply_msg(r, 200, &wl.base);
    }
    free(uids);
}

struct wl_op {
    struct http_req *r;
    struct logic_worker *w;
};

static void
on_whitelist_changed(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct wl_op *op = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(op->r, err);
    } else {
        pubcache_kick(op->w->app->pubcache);
        http_reply_json(op->r, 200,
                        json_pack("{s:I, s:I}", "added", (json_int_t)pg_get_i64(res, 0, 0),
                                  "removed", (json_int_t)pg_get_i64(res, 0, 1)));
    }
    free(op);
}

void
api_whitelist(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const char *actor;
    if (!api_auth_ops(r, w, &actor))
        return;
    enum http_method meth = http_req_method(r);
    if (meth == HTTP_GET) {
        uint64_t app;
        if (!api_query_u64(r, "app_id", 0, &app))
            return;
        const char *qa = http_req_query(r, "app_id");
        if (qa == NULL || qa[0] == '\0') {
            http_reply_error(r, 400, "invalid_argument", "app_id is required");
            return;
        }
        struct pg_params p;
        pg_params_init(&p);
        pg_param_i64(&p, (int64_t)app);
        api_query(r, w, SQL_WHITELIST_LIST, &p, on_whitelist_list, r);
        return;
    }
    ProtobufCMessage *m;
    if (!api_decode(r, &mbox__whitelist__descriptor, &m))
        return;
    Mbox__Whitelist *wl = (Mbox__Whitelist *)m;
    const char *mode = meth == HTTP_POST ? "add" : meth == HTTP_PUT ? "replace" : "remove";
    if (!wl->has_app_id || (wl->n_uids == 0 && meth != HTTP_PUT) ||
        wl->n_uids > WHITELIST_MAX_UIDS) {
        http_reply_error(r, 400, "invalid_argument",
                         "app_id and 1..%d uids are required (PUT may replace with none)",
                         WHITELIST_MAX_UIDS);
        api_msg_free(m);
        return;
    }
    char *arr = api_int8_array(wl->uids, wl->n_uids);
    struct wl_op *op = malloc(sizeof(*op));
    if (arr == NULL || op == NULL) {
        free(arr);
        free(op);
        api_msg_free(m);
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    op->r = r;
    op->w = w;
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)wl->app_id);
    pg_param_text(&p, arr);
    pg_param_text(&p, mode);
    pg_param_text(&p, actor);
    pg_param_i64(&p, logic_now_us());
    char *audit = audit_json(m);
    pg_param_text(&p, audit);
    bool sent = api_query(r, w, SQL_WHITELIST_CHANGE, &p, on_whitelist_changed, op);
    free(audit);
    free(arr);
    api_msg_free(m);
    if (!sent) {
        free(op);
    }
}

/* ---- GET /v1/audit?notice_id=&limit= ---- */

static void
on_audit(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct http_req *r = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
        return;
    }
    json_t *entries = json_array();
    for (int i = 0; i < PQntuples(res); i++) {
        char id[24], at[24], nid[24], app[24];
        size_t len;
        snprintf(id, sizeof(id), "%" PRId64, pg_get_i64(res, i, 0));
        snprintf(at, sizeof(at), "%" PRId64, pg_get_i64(res, i, 1));
        snprintf(nid, sizeof(nid), "%" PRIu64, (uint64_t)pg_get_i64(res, i, 4));
        snprintf(app, sizeof(app), "%" PRIu64, (uint64_t)pg_get_i64(res, i, 5));
        const char *actor = pg_get_bytes(res, i, 2, &len);
        const char *action = pg_get_bytes(res, i, 3, &len);
        const char *body = pg_get_bytes(res, i, 6, &len);
        json_t *e =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s%}", "id", id, "at", at, "actor", actor,
                      "action", action, "notice_id", nid, "app_id", app, "body", body, len);
        if (e != NULL)
            json_array_append_new(entries, e);
    }
    http_reply_json(r, 200, json_pack("{s:o}", "entries", entries));
}

void
api_audit(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const char *actor;
    uint64_t nid, limit;
    if (!api_auth_ops(r, w, &actor) || !api_query_u64(r, "notice_id", 0, &nid) ||
        !api_query_u64(r, "limit", 100, &limit))
        return;
    if (limit == 0 || limit > LIST_MAX)
        limit = LIST_MAX;
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)nid);
    pg_param_i32(&p, (int32_t)limit);
    api_query(r, w, SQL_AUDIT_LIST, &p, on_audit, r);
}
