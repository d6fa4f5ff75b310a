/*
 * fuzz_token: token_verify on arbitrary bytes with fixed keys.
 *
 * Properties checked: no crash or sanitizer report; a token that verifies
 * is the canonical spelling (minting its claims with the same key gives it
 * back byte for byte) and is expired at the end of time.
 */
#include "token.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The valid seeds in corpus/token were minted with these keys. */
static const struct token_keys fuzz_keys = {
    .current_id = "k2024",
    .current_key = "secret-current",
    .previous_id = "old",
    .previous_key = "secret-previous",
};

#define FUZZ_NOW 1700000000000000LL

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    struct token_claims c;
    enum token_status st = token_verify(&fuzz_keys, s, FUZZ_NOW, &c);
    if (st != TOKEN_OK && st != TOKEN_MALFORMED && st != TOKEN_BAD_SIGNATURE && st != TOKEN_EXPIRED)
        abort();
    if (st == TOKEN_OK) {
        if (c.expires_at_us <= FUZZ_NOW)
            abort();
        if (token_verify(&fuzz_keys, s, INT64_MAX, NULL) != TOKEN_EXPIRED)
            abort();
        /* Re-mint with whichever key signed it: must give the same string. */
        struct token_keys k = {0};
        if (strncmp(s, "v1.k2024.", 9) == 0) {
            k.current_id = fuzz_keys.current_id;
            k.current_key = fuzz_keys.current_key;
        } else if (strncmp(s, "v1.old.", 7) == 0) {
            k.current_id = fuzz_keys.previous_id;
            k.current_key = fuzz_keys.previous_key;
        } else {
            abort();
        }
        char again[TOKEN_MAX_LEN];
        if (!token_mint(&k, &c, again, sizeof(again)) || strcmp(again, s) != 0)
            abort();
    }
    free(s);
    return 0;
}
