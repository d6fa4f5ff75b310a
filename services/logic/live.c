/*
 * live: reloadable configuration snapshots of logicd (see live.h).
 */
#include "live.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "api_io.h"
#include "http.h"

/* Operator names ever configured: an entry is never freed before exit, so
 * a name a request keeps across callbacks stays valid through reloads. */
struct live_name {
    struct live_name *next;
    char name[];
};
static struct live_name *names;

/* The interned copy of name[0..len) (main thread only); NULL without memory. */
static const char *
intern_name(const char *name, size_t len)
{
    for (struct live_name *n = names; n != NULL; n = n->next) {
        if (strlen(n->name) == len && memcmp(n->name, name, len) == 0)
            return n->name;
    }
    struct live_name *n = malloc(sizeof(*n) + len + 1);
    if (n == NULL)
        return NULL;
    memcpy(n->name, name, len);
    n->name[len] = '\0';
    n->next = names;
    names = n;
    return n->name;
}

/*
 * Parses "name:token[:role],..." into lv->ops. The role is the text after
 * the last ':' when it is "editor" or "publisher"; an entry without one is
 * a publisher (what every ops token could do before roles existed). A
 * token that itself contains ':' must then be followed by its role.
 */
static bool
parse_ops_tokens(struct logic_live *lv, const char *s, char *err, size_t errlen)
{
    lv->nops = 0;
    while (*s) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        const char *colon = memchr(s, ':', len);
        if (colon == NULL || colon == s || colon + 1 == s + len) {
            snprintf(err, errlen, "key 'ops_tokens': entry %d is not name:token[:role]",
                     lv->nops + 1);
            return false;
        }
        size_t nlen = (size_t)(colon - s), tlen = len - nlen - 1;
        enum logic_role role = LOGIC_ROLE_PUBLISHER;
        const char *last = memrchr(colon + 1, ':', tlen);
        if (last != NULL) {
            size_t rlen = (size_t)(s + len - last - 1);
            if (rlen == 6 && memcmp(last + 1, "editor", 6) == 0)
                role = LOGIC_ROLE_EDITOR;
            else if (rlen == 9 && memcmp(last + 1, "publisher", 9) == 0)
                role = LOGIC_ROLE_PUBLISHER;
            else
                last = NULL; /* part of the token */
            if (last != NULL)
                tlen = (size_t)(last - colon - 1);
        }
        if (tlen == 0) {
            snprintf(err, errlen, "key 'ops_tokens': entry %d has an empty token", lv->nops + 1);
            return false;
        }
        if (lv->nops == LOGIC_MAX_OPS_TOKENS || nlen >= LOGIC_MAX_OPS_NAME ||
            tlen >= sizeof(lv->ops[0].token)) {
            snprintf(err, errlen, "key 'ops_tokens': too many entries or too long");
            return false;
        }
        struct logic_ops_token *op = &lv->ops[lv->nops];
        op->name = intern_name(s, nlen);
        if (op->name == NULL) {
            snprintf(err, errlen, "out of memory");
            return false;
        }
        memcpy(op->token, colon + 1, tlen);
        op->token[tlen] = '\0';
        op->role = role;
        /* One token, one operator: with two entries the role would depend
         * on which one the lookup happens to meet. */
        for (int i = 0; i < lv->nops; i++) {
            if (strcmp(lv->ops[i].token, op->token) == 0) {
                snprintf(err, errlen, "key 'ops_tokens': entries %d and %d have the same token",
                         i + 1, lv->nops + 1);
                return false;
            }
        }
        lv->nops++;
        s += len;
        if (*s == ',')
            s++;
    }
    return true;
}

/*
 * Parses cors_allow_origins ("*", or origins "scheme://host[:port]"
 * separated by commas and spaces) into lv->cors.
 */
static bool
parse_cors(struct logic_live *lv, const char *s, char *err, size_t errlen)
{
    size_t n = 0;
    while (*s) {
        size_t len = strcspn(s, ", ");
        if (len == 0) {
            s++;
            continue;
        }
        if (len == 1 && *s == '*') {
            lv->cors.any = true;
        } else {
            const char *sep = memmem(s, len, "://", 3);
            if (n == LOGIC_MAX_CORS_ORIGINS || sep == NULL || sep == s || sep + 3 == s + len ||
                memchr(sep + 3, '/', len - (size_t)(sep + 3 - s)) != NULL) {
                snprintf(err, errlen,
                         "key 'cors_allow_origins': '%.*s' is not scheme://host[:port] "
                         "(at most %d origins)",
                         (int)(len < 200 ? len : 200), s, LOGIC_MAX_CORS_ORIGINS);
                return false;
            }
            lv->cors_origins[n] = strndup(s, len);
            if (lv->cors_origins[n] == NULL) {
                snprintf(err, errlen, "out of memory");
                return false;
            }
            n++;
        }
        s += len;
    }
    lv->cors.origins = (const char *const *)lv->cors_origins;
    lv->cors.norigins = n;
    lv->cors.allow_headers =
        "Authorization, Content-Type, Accept, platform, app_version, core_level";
    lv->cors.max_age_s = 600;
    lv->cors_on = n > 0 || lv->cors.any;
    return true;
}

struct logic_live *
logic_live_build(const struct logic_config *c, char *err, size_t errlen)
{
    struct logic_live *lv = calloc(1, sizeof(*lv));
    if (lv == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (!parse_ops_tokens(lv, c->ops_tokens, err, errlen) ||
        !parse_cors(lv, c->cors_allow_origins, err, errlen))
        goto fail;
    lv->key_id = strdup(c->token_key_id);
    lv->key = strdup(c->token_key);
    lv->prev_key_id = strdup(c->token_prev_key_id);
    lv->prev_key = strdup(c->token_prev_key);
    if (lv->key_id == NULL || lv->key == NULL || lv->prev_key_id == NULL || lv->prev_key == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    lv->keys.current_id = lv->key_id;
    lv->keys.current_key = lv->key;
    lv->keys.previous_id = lv->prev_key_id[0] ? lv->prev_key_id : NULL;
    lv->keys.previous_key = lv->prev_key[0] ? lv->prev_key : NULL;
    return lv;
fail:
    logic_live_free(lv);
    return NULL;
}

void
logic_live_free(struct logic_live *lv)
{
    if (lv == NULL)
        return;
    for (size_t i = 0; i < LOGIC_MAX_CORS_ORIGINS; i++)
        free(lv->cors_origins[i]);
    free(lv->key_id);
    if (lv->key != NULL)
        memset(lv->key, 0, strlen(lv->key));
    free(lv->key);
    free(lv->prev_key_id);
    if (lv->prev_key != NULL)
        memset(lv->prev_key, 0, strlen(lv->prev_key));
    free(lv->prev_key);
    memset(lv->ops, 0, sizeof(lv->ops));
    free(lv);
}

void
logic_live_set_first(struct logic *app, struct logic_live *lv)
{
    lv->gen = 1;
    app->live = lv;
    atomic_store(&app->live_pub, lv);
}

void
logic_live_publish(struct logic *app, struct logic_worker *workers, int n, struct logic_live *lv)
{
    lv->gen = app->live->gen + 1;
    lv->older = app->live;
    app->live = lv;
    atomic_store(&app->live_pub, lv);
    for (int i = 0; i < n; i++) {
        if (workers[i].reload_ev != NULL)
            event_active(workers[i].reload_ev, EV_TIMEOUT, 0);
    }
}

void
logic_live_collect(struct logic *app, struct logic_worker *workers, int n)
{
    if (app->live == NULL)
        return;
    uint64_t oldest = app->live->gen;
    for (int i = 0; i < n; i++) {
        uint64_t g = atomic_load(&workers[i].live_gen);
        if (g < oldest)
            oldest = g;
    }
    /* Every snapshot older than the oldest one in use goes. */
    struct logic_live *keep = app->live;
    while (keep->older != NULL && keep->older->gen >= oldest)
        keep = keep->older;
    struct logic_live *old = keep->older;
    keep->older = NULL;
    while (old != NULL) {
        struct logic_live *next = old->older;
        logic_live_free(old);
        old = next;
    }
}

void
logic_live_free_all(struct logic *app)
{
    struct logic_live *lv = app->live;
    while (lv != NULL) {
        struct logic_live *next = lv->older;
        logic_live_free(lv);
        lv = next;
    }
    app->live = NULL;
    atomic_store(&app->live_pub, NULL);
    while (names != NULL) {
        struct live_name *next = names->next;
        free(names);
        names = next;
    }
}

void
logic_live_adopt(struct logic_worker *w)
{
    const struct logic_live *lv = atomic_load(&w->app->live_pub);
    if (lv == NULL || lv == w->live)
        return;
    w->live = lv;
    /* The SDK server is gone once the worker began to stop. */
    if (w->sdk != NULL)
        http_server_set_cors(w->sdk, lv->cors_on ? &lv->cors : NULL);
    /* Tokens verified under keys that may be gone now are verified again. */
    api_token_cache_clear(w->tokens);
    atomic_store(&w->live_gen, lv->gen);
}
