/*
 * pubfilter: notice visibility and the public side of sync (pubfilter.h).
 */
#include "pubfilter.h"

#include <string.h>

static const char *const state_names[] = {"draft", "prepublished", "published", "stopped",
                                          "retracted"};

bool
pub_state_parse(const char *s, enum pub_state *out)
{
    for (size_t i = 0; i < sizeof(state_names) / sizeof(state_names[0]); i++) {
        if (strcmp(s, state_names[i]) == 0) {
            *out = (enum pub_state)i;
            return true;
        }
    }
    return false;
}

const char *
pub_state_str(enum pub_state s)
{
    return (size_t)s < sizeof(state_names) / sizeof(state_names[0]) ? state_names[s] : "?";
}

uint32_t
pub_platform_hash(const char *platform)
{
    if (platform[0] == '\0')
        return 0;
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)platform; *p != '\0'; p++)
        h = (h ^ *p) * 16777619u;
    return h != 0 ? h : 1;
}

/* Whether the notice's platform list holds the viewer's platform (by name or by hash). */
static bool
platform_listed(const struct pub_notice *n, const struct pub_viewer *v)
{
    for (int i = 0; i < n->nplatforms; i++) {
        if (v->platform != NULL ? strcmp(n->platforms[i], v->platform) == 0
                                : pub_platform_hash(n->platforms[i]) == v->platform_hash)
            return true;
    }
    return false;
}

bool
pub_targets(const struct pub_notice *n, const struct pub_viewer *v)
{
    if (n->login_only && v->guest)
        return false;
    if (n->nplatforms > 0 && !platform_listed(n, v))
        return false;
    /* A client that does not say its core level is outside any bound. */
    if (n->min_core_level != 0 && (v->core_level == 0 || v->core_level < n->min_core_level))
        return false;
    if (n->max_core_level != 0 && (v->core_level == 0 || v->core_level > n->max_core_level))
        return false;
    return true;
}

bool
pub_visible(const struct pub_notice *n, const struct pub_viewer *v, int64_t now_us)
{
    if (n->app_id != v->app_id)
        return false;
    if (n->state == PUB_PREPUBLISHED) {
        if (!v->whitelisted)
            return false;
    } else if (n->state != PUB_PUBLISHED) {
        return false;
    }
    /* activated is set by the database when start_at came (or at publish if
     * it had already): trusting it, not this host's clock, keeps every
     * logicd consistent with the seq the activation took. */
    if (!n->activated)
        return false;
    if (n->expire_at != 0 && n->expire_at <= now_us)
        return false;
    return pub_targets(n, v);
}

size_t
pub_select(const struct pub_notice *const *notices, size_t count, uint64_t max_seq,
           const struct pub_viewer *v, uint64_t g, int64_t now_us, struct pub_item *out, size_t cap,
           uint64_t *new_g, bool *truncated)
{
    *new_g = g;
    *truncated = false;
    if (max_seq <= g)
        return 0; /* nothing new, or this cache is behind the cursor: keep g */
    /* First notice with seq > g (notices are sorted by seq). */
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (notices[mid]->seq <= g)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t n = 0;
    for (size_t i = lo; i < count; i++) {
        const struct pub_notice *pn = notices[i];
        enum pub_item_kind kind;
        if (pn->state == PUB_RETRACTED) {
            if (g == 0 || pn->app_id != v->app_id)
                continue;
            kind = PUB_ITEM_RETRACT;
        } else if (pub_visible(pn, v, now_us)) {
            if (pn->state == PUB_PUBLISHED && v->whitelisted && pn->gray_seq != 0 &&
                g >= pn->gray_seq)
                continue; /* this version reached the viewer at prepublish */
            kind = PUB_ITEM_NOTICE;
        } else {
            continue;
        }
        if (n == cap) {
            *truncated = true;
            *new_g = n > 0 ? out[n - 1].n->seq : g;
            return n;
        }
        out[n].n = pn;
        out[n].kind = kind;
        n++;
    }
    *new_g = max_seq;
    return n;
}

size_t
pub_select_gained(const struct pub_notice *const *notices, size_t count, const struct pub_viewer *v,
                  const struct pub_viewer *old, uint64_t g, int64_t now_us, struct pub_item *out,
                  size_t cap, bool *truncated)
{
    size_t n = 0;
    *truncated = false;
    /* notices are sorted by seq: the ones the cursor passed come first. */
    for (size_t i = 0; i < count && notices[i]->seq <= g; i++) {
        const struct pub_notice *pn = notices[i];
        if (!pub_visible(pn, v, now_us) || pub_visible(pn, old, now_us))
            continue;
        if (n == cap) {
            *truncated = true;
            return n;
        }
        out[n].n = pn;
        out[n].kind = PUB_ITEM_NOTICE;
        n++;
    }
    return n;
}
