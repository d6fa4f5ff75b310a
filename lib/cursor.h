/*
 * cursor: the opaque sync cursor (SPEC section 4).
 *
 * It carries the last private msg_id (p) and the last public seq (g) the
 * client has been given, plus the server epoch. Wire form: base64url (no
 * padding) of version(1)=1, epoch(4), p(8), g(8), check(4), network order:
 * 25 bytes, 34 characters; check is the CRC-32C (Castagnoli) of the first
 * 21 bytes. The empty string is the initial cursor (p = g = 0, current
 * epoch). Anything else that does not decode exactly (strict base64url:
 * no padding, canonical trailing bits) is CURSOR_INVALID (400), so a
 * client bug is seen rather than silently resetting. The check value
 * catches corruption, not forgery: a forged cursor can only mislead its
 * own user, whose mailbox is fixed by the token.
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
#define CURSOR_STR_LEN 40 /* buffer size for cursor_encode */

struct cursor {
    uint32_t epoch;
    uint64_t p; /* last private msg_id returned */
    uint64_t g; /* last public seq returned */
};

enum cursor_status { CURSOR_OK = 0, CURSOR_INVALID };

/*
 * Decodes s (NUL-terminated; NULL is taken as ""); "" gives
 * {current_epoch, 0, 0}. out is written only on CURSOR_OK.
 */
enum cursor_status cursor_decode(const char *s, uint32_t current_epoch, struct cursor *out)
    __attribute__((warn_unused_result));

/* Encodes c into out (CURSOR_STR_LEN bytes). */
void cursor_encode(const struct cursor *c, char out[CURSOR_STR_LEN]);

/* CRC-32C (Castagnoli; init and final xor 0xffffffff, reflected) of n bytes. Exposed for tests. */
uint32_t cursor_crc32c(const void *data, size_t n);

#endif
