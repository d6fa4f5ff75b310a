/*
 * token: user tokens, HMAC-SHA256 signed.
 *
 * A token fixes (app_id, uid, expiry, guest). Wire form (URL-safe, no
 * padding): "v1.<kid>.<base64url(payload)>.<base64url(mac)>" where payload
 * is app_id(8) uid(8) expires_at_us(8) flags(1) in network order and mac
 * is HMAC-SHA256(key[kid], "v1." kid "." payload_b64). Two keys can be
 * active at once (current and previous) so keys rotate without logging
 * users out: minting uses the current key, verifying accepts either.
 * The MAC is compared in constant time (CRYPTO_memcmp).
 */
#ifndef MBOX_TOKEN_H
#define MBOX_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOKEN_MAX_LEN 256 /* longer input is rejected before any work */

struct token_claims {
    uint64_t app_id;
    uint64_t uid;
    int64_t expires_at_us;
    bool guest;
};

struct token_keys {
    /* key ids are short tokens ([A-Za-z0-9_-], 1..16 chars) */
    const char *current_id, *current_key;   /* required */
    const char *previous_id, *previous_key; /* optional (NULL) */
};

enum token_status {
    TOKEN_OK = 0,
    TOKEN_MALFORMED,
    TOKEN_BAD_SIGNATURE, /* also: unknown key id */
    TOKEN_EXPIRED,
};

/*
 * Writes a token for claims, signed with the current key, into out (at
 * least TOKEN_MAX_LEN bytes; a token is at most 99 bytes with its NUL).
 * Fails on a missing or invalid current key id or an empty key.
 */
bool token_mint(const struct token_keys *keys, const struct token_claims *claims, char *out,
                size_t outlen) __attribute__((warn_unused_result));

/*
 * Verifies token at time now_us and fills claims (may be NULL) on TOKEN_OK
 * only. Order: shape (MALFORMED), key id and MAC (BAD_SIGNATURE), then
 * expiry (EXPIRED when expires_at_us <= now_us), so a forged token is
 * reported as forged. Only the canonical spelling is accepted.
 */
enum token_status token_verify(const struct token_keys *keys, const char *token, int64_t now_us,
                               struct token_claims *claims) __attribute__((warn_unused_result));

const char *token_status_str(enum token_status s);

#endif
