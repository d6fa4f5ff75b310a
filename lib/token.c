/*
 * token: mint and verify HMAC-SHA256 user tokens (see token.h).
 *
 * Verification rejects malformed input before touching a key, checks the
 * MAC before the expiry (so a forged token is reported as forged, not as
 * expired) and accepts only the one canonical spelling of a token: strict
 * base64url and no unknown flag bits, so verify(t) == OK implies that
 * minting the same claims with the same key gives t again.
 */
#include "token.h"

#include "b64.h"

#include <limits.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define TOKEN_PAYLOAD_LEN 25 /* app_id(8) uid(8) expires_at_us(8) flags(1) */
#define TOKEN_MAC_LEN     32 /* HMAC-SHA256 */
#define TOKEN_KID_MAX     16
#define TOKEN_FLAG_GUEST  0x01u
#define TOKEN_FLAGS_KNOWN TOKEN_FLAG_GUEST
#define TOKEN_PAYLOAD_B64 34 /* b64url_encoded_len(TOKEN_PAYLOAD_LEN) */
#define TOKEN_MAC_B64     43 /* b64url_encoded_len(TOKEN_MAC_LEN) */
#define TOKEN_VERSION     "v1"

/* True when id is a usable key id: 1..16 chars of [A-Za-z0-9_-]. */
static bool
kid_valid(const char *id, size_t len)
{
    if (len == 0 || len > TOKEN_KID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* True when key is a usable HMAC key: present and non-empty. */
static bool
key_usable(const char *key)
{
    return key != NULL && key[0] != '\0' && strlen(key) <= INT_MAX;
}

/* HMAC-SHA256(key, msg[0..len)) into mac. */
static bool
token_hmac(const char *key, const char *msg, size_t len, uint8_t mac[TOKEN_MAC_LEN])
{
    unsigned int maclen = 0;
    if (HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)msg, len, mac, &maclen) ==
        NULL)
        return false;
    return maclen == TOKEN_MAC_LEN;
}

static void
put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t
get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

bool
token_mint(const struct token_keys *keys, const struct token_claims *claims, char *out,
           size_t outlen)
{
    if (keys == NULL || claims == NULL || out == NULL || keys->current_id == NULL ||
        !kid_valid(keys->current_id, strlen(keys->current_id)) || !key_usable(keys->current_key))
        return false;

    uint8_t payload[TOKEN_PAYLOAD_LEN];
    put_be64(payload, claims->app_id);
    put_be64(payload + 8, claims->uid);
    put_be64(payload + 16, (uint64_t)claims->expires_at_us);
    payload[24] = claims->guest ? TOKEN_FLAG_GUEST : 0;

    /* "v1." kid "." payload_b64 "." mac_b64 NUL: at most 99 bytes. */
    char buf[TOKEN_MAX_LEN];
    size_t kidlen = strlen(keys->current_id);
    size_t n = 0;
    memcpy(buf, TOKEN_VERSION ".", 3);
    n += 3;
    memcpy(buf + n, keys->current_id, kidlen);
    n += kidlen;
    buf[n++] = '.';
    n += b64url_encode(payload, sizeof(payload), buf + n, sizeof(buf) - n);

    uint8_t mac[TOKEN_MAC_LEN];
    if (!token_hmac(keys->current_key, buf, n, mac))
        return false;
    buf[n++] = '.';
    n += b64url_encode(mac, sizeof(mac), buf + n, sizeof(buf) - n);
    if (n + 1 > outlen)
        return false;
    memcpy(out, buf, n + 1);
    return true;
}

enum token_status
token_verify(const struct token_keys *keys, const char *token, int64_t now_us,
             struct token_claims *claims)
{
    if (token == NULL)
        return TOKEN_MALFORMED;
    size_t len = strnlen(token, TOKEN_MAX_LEN + 1);
    if (len > TOKEN_MAX_LEN)
        return TOKEN_MALFORMED;

    /* Exactly four dot-separated parts: version, kid, payload, mac. */
    const char *part[4];
    size_t plen[4];
    size_t nparts = 0;
    const char *start = token;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || token[i] == '.') {
            if (nparts == 4)
                return TOKEN_MALFORMED;
            part[nparts] = start;
            plen[nparts] = (size_t)(token + i - start);
            nparts++;
            start = token + i + 1;
        }
    }
    if (nparts != 4)
        return TOKEN_MALFORMED;
    if (plen[0] != strlen(TOKEN_VERSION) || memcmp(part[0], TOKEN_VERSION, plen[0]) != 0)
        return TOKEN_MALFORMED;
    if (!kid_valid(part[1], plen[1]))
        return TOKEN_MALFORMED;

    uint8_t payload[TOKEN_PAYLOAD_LEN], mac[TOKEN_MAC_LEN];
    size_t n = 0;
    if (plen[2] != TOKEN_PAYLOAD_B64 ||
        !b64url_decode(part[2], plen[2], payload, sizeof(payload), &n) || n != sizeof(payload))
        return TOKEN_MALFORMED;
    if (plen[3] != TOKEN_MAC_B64 || !b64url_decode(part[3], plen[3], mac, sizeof(mac), &n) ||
        n != sizeof(mac))
        return TOKEN_MALFORMED;

    /* Pick the key by id; an unknown id is as good as a bad signature. */
    if (keys == NULL)
        return TOKEN_BAD_SIGNATURE;
    const char *key = NULL;
    if (keys->current_id != NULL && strlen(keys->current_id) == plen[1] &&
        memcmp(keys->current_id, part[1], plen[1]) == 0)
        key = keys->current_key;
    else if (keys->previous_id != NULL && strlen(keys->previous_id) == plen[1] &&
             memcmp(keys->previous_id, part[1], plen[1]) == 0)
        key = keys->previous_key;
    if (!key_usable(key))
        return TOKEN_BAD_SIGNATURE;

    /* The MAC covers everything before the last dot. */
    uint8_t want[TOKEN_MAC_LEN];
    if (!token_hmac(key, token, (size_t)(part[3] - 1 - token), want))
        return TOKEN_BAD_SIGNATURE;
    if (CRYPTO_memcmp(want, mac, sizeof(mac)) != 0)
        return TOKEN_BAD_SIGNATURE;

    /* Signed by us, so unknown flags come from a newer minter: refuse them. */
    if ((payload[24] & ~TOKEN_FLAGS_KNOWN) != 0)
        return TOKEN_MALFORMED;
    int64_t expires = (int64_t)get_be64(payload + 16);
    if (expires <= now_us)
        return TOKEN_EXPIRED;

    if (claims != NULL) {
        claims->app_id = get_be64(payload);
        claims->uid = get_be64(payload + 8);
        claims->expires_at_us = expires;
        claims->guest = (payload[24] & TOKEN_FLAG_GUEST) != 0;
    }
    return TOKEN_OK;
}

const char *
token_status_str(enum token_status s)
{
    switch (s) {
    case TOKEN_OK:
        return "ok";
    case TOKEN_MALFORMED:
        return "malformed";
    case TOKEN_BAD_SIGNATURE:
        return "bad_signature";
    case TOKEN_EXPIRED:
        return "expired";
    }
    return "unknown";
}
