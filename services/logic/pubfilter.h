/*
 * pubfilter: which public notices a user sees, and how the public side of
 * a sync moves its cursor (docs/design.md 4.3). Pure functions over a cache
 * snapshot, unit tested without servers (tests/unit/test_pubfilter.c).
 */
#ifndef LOGIC_PUBFILTER_H
#define LOGIC_PUBFILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pub_state {
    PUB_DRAFT,
    PUB_PREPUBLISHED,
    PUB_PUBLISHED,
    PUB_STOPPED,
    PUB_RETRACTED,
};

#define PUB_MAX_PLATFORMS 8

/* One notice as the cache holds it (immutable once in a snapshot). */
struct pub_notice {
    uint64_t notice_id, app_id;
    enum pub_state state;
    uint32_t version;
    uint64_t seq, msg_id;
    char *title;
    uint8_t *content;
    size_t content_len;
    int32_t category, type, priority, business_type;
    int64_t start_at, expire_at; /* expire_at 0: no end */
    char platforms[PUB_MAX_PLATFORMS][16];
    int nplatforms;                          /* 0: every platform */
    uint64_t min_core_level, max_core_level; /* 0: no bound */
    bool login_only;
    bool activated;    /* start_at reached and its seq taken */
    uint64_t gray_seq; /* seq at which this version reached the whitelist (0: not) */
};

/*
 * The user and client asking. The platform is given as text, or (platform
 * NULL) only as its pub_platform_hash: the form a sync cursor keeps of
 * the attributes an earlier sync was evaluated with.
 */
struct pub_viewer {
    uint64_t app_id, uid;
    bool guest;
    const char *platform;   /* "" when unknown; NULL: compare platform_hash */
    uint32_t platform_hash; /* used when platform is NULL */
    uint64_t core_level;    /* 0 when unknown */
    bool whitelisted;       /* (app_id, uid) is on the gray-release whitelist */
};

/*
 * A 32-bit hash of a platform name (FNV-1a): 0 for "" (unknown), never 0
 * otherwise. A collision between two platform names can only make an
 * attribute change look smaller than it is (see pub_select_gained).
 */
uint32_t pub_platform_hash(const char *platform);

/*
 * Targeting alone: n's platform set, core level bounds and login_only
 * against v's platform, core_level and guest flag (the other fields of
 * either are not read). Also used by lcsd's paced notify (services/lcs/pace.c).
 */
bool pub_targets(const struct pub_notice *n, const struct pub_viewer *v);

/* True when n is visible to v at now_us (state, activation, expiry, targeting, whitelist). */
bool pub_visible(const struct pub_notice *n, const struct pub_viewer *v, int64_t now_us);

enum pub_item_kind { PUB_ITEM_NOTICE, PUB_ITEM_RETRACT };

struct pub_item {
    const struct pub_notice *n;
    enum pub_item_kind kind;
};

/*
 * The public side of a sync. notices[0..count) are sorted by seq and
 * max_seq is the snapshot's position (every change up to it is in it).
 * Fills at most cap items with seq > g, in seq order: visible notices as
 * notices, and (only when g > 0) retracted ones of the viewer's app as
 * retract items. A published notice whose version the viewer already got
 * while it was prepublished (whitelisted, g >= gray_seq) is not sent again.
 * *new_g is where the cursor may move: max_seq when nothing
 * was left out, else the seq of the last item taken; never below g
 * (a cache behind the cursor returns nothing and keeps g).
 * Returns the number of items; *truncated says whether more remain.
 */
size_t pub_select(const struct pub_notice *const *notices, size_t count, uint64_t max_seq,
                  const struct pub_viewer *v, uint64_t g, int64_t now_us, struct pub_item *out,
                  size_t cap, uint64_t *new_g, bool *truncated);

/*
 * The notices a changed client gained: those with seq <= g (the part of
 * the public log the cursor has passed) that are visible to v now and were
 * not visible to old, the viewer with the attributes the cursor's public
 * side was evaluated with (the same user; only platform, core level and
 * guest differ). Every change of a notice and every whitelist change that
 * affects it takes a new seq, so for seq <= g the notice is still what the
 * cursor was evaluated against, and "not visible to old" means "not
 * delivered". Fills at most cap items (kind notice), in seq order; returns
 * their number, and *truncated says whether more remain.
 */
size_t pub_select_gained(const struct pub_notice *const *notices, size_t count,
                         const struct pub_viewer *v, const struct pub_viewer *old, uint64_t g,
                         int64_t now_us, struct pub_item *out, size_t cap, bool *truncated);

/* Parses "draft" etc.; false when unknown. */
bool pub_state_parse(const char *s, enum pub_state *out);
const char *pub_state_str(enum pub_state s);

#endif
