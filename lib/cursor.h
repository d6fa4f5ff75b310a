/*
 * cursor: the opaque sync cursor (docs/design.md section 4).
 *
 * It carries the last private msg_id (p) and the last public seq (g) the
 * client has been given, plus the server epoch, and (version 2) the client
 * attributes the public side was last evaluated with, so that a client
 * that changes platform, core level or login state after its cursor passed
 * a notice still receives it (api_sync.c, docs/api.md 6.3).
 *
 * Wire form: base64url (no padding), network byte order, of
 *   version 1: version(1)=1 epoch(4) p(8) g(8) check(4)
 *              25 bytes, 34 characters, check over the first 21 bytes;
 *   version 2: version(1)=2 epoch(4) p(8) g(8) flags(1) core_level(8)
 *              platform_hash(4) check(4)
 *              38 bytes, 51 characters, check over the first 34 bytes;
 *              flags bit 0 = guest, the other bits must be 0.
 * check is the CRC-32C (Castagnoli) of the bytes before it. A cursor with
 * attributes (has_attrs) is written as version 2, one without as version
 * 1, so both versions keep a single spelling and cursors issued before
 * version 2 stay valid (they decode with has_attrs false). The empty
 * string is the initial cursor (p = g = 0, current epoch, no attributes).
 * Anything else that does not decode exactly (strict base64url: no
 * padding, canonical trailing bits) is CURSOR_INVALID (400), so a client
 * bug is seen rather than silently resetting. The check value catches
 * corruption, not forgery: a forged cursor can only mislead its own user,
 * whose mailbox is fixed by the token.
 *
 * cursor_decode does not compare the stored epoch with current_epoch: it
 * returns the epoch the cursor carries, and the sync handler decides
 * whether a different epoch means `reset: true`. current_epoch is used
 * only for the empty cursor.
 */
#ifndef MBOX_CURSOR_H
#define MBOX_CURSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CURSOR_MAX_LEN 64 /* longer input is rejected before decoding */
#define CURSOR_STR_LEN 56 /* buffer size for cursor_encode (51 characters and a NUL) */

/*
 * The client attributes the public side was evaluated with. The platform
 * is kept as a hash (pub_platform_hash in services/logic/pubfilter.h):
 * 4 bytes instead of up to 15, enough to tell which targeting lists held
 * it.
 */
struct cursor_attrs {
    uint64_t core_level;    /* 0: unknown */
    uint32_t platform_hash; /* 0: unknown platform */
    bool guest;
};

struct cursor {
    uint32_t epoch;
    uint64_t p;     /* last private msg_id returned */
    uint64_t g;     /* last public seq returned */
    bool has_attrs; /* false for "" and version-1 cursors */
    struct cursor_attrs a;
};

enum cursor_status { CURSOR_OK = 0, CURSOR_INVALID };

/*
 * Decodes s (NUL-terminated; NULL is taken as ""); "" gives
 * {current_epoch, 0, 0, no attributes}. out is written only on CURSOR_OK.
 */
enum cursor_status cursor_decode(const char *s, uint32_t current_epoch, struct cursor *out)
    __attribute__((warn_unused_result));

/* Encodes c into out (CURSOR_STR_LEN bytes): version 2 when c->has_attrs, else version 1. */
void cursor_encode(const struct cursor *c, char out[CURSOR_STR_LEN]);

/* Whether two attribute sets are the same. */
bool cursor_attrs_equal(const struct cursor_attrs *x, const struct cursor_attrs *y);

/* CRC-32C (Castagnoli; init and final xor 0xffffffff, reflected) of n bytes. Exposed for tests. */
uint32_t cursor_crc32c(const void *data, size_t n);

#endif
