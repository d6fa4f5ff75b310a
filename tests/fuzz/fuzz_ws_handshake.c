/*
 * fuzz_ws_handshake: the HTTP/1.1 Upgrade request parser and the responses
 * built from what it accepts.
 *
 * Checks: results agree with the size rules (INCOMPLETE only below
 * WS_HANDSHAKE_MAX, TOO_LARGE only at or above it); an accepted request
 * has consumed <= len and <= WS_HANDSHAKE_MAX, a path starting with '/', a
 * 24-character key, and every proper prefix of it is INCOMPLETE while any
 * longer input gives the same result; the 101 response and the error
 * responses always fit their documented buffer sizes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Checks the 101 response for hs, with and without the first offered subprotocol. */
static void
check_response(struct ws_handshake *hs)
{
    char out[WS_HS_RESPONSE_MAX];
    char accept[WS_ACCEPT_LEN + 1];
    ws_handshake_accept_key(hs->key, accept);
    if (strlen(accept) != WS_ACCEPT_LEN)
        abort();
    size_t n = ws_handshake_response(hs, out, sizeof(out));
    if (n == 0 || n != strlen(out) || strstr(out, accept) == NULL)
        abort();

    /* Offer back the first listed subprotocol if it is a plain token. */
    char first[WS_PROTOCOLS_MAX + 1];
    size_t i = 0;
    while (hs->protocols[i] != '\0' && hs->protocols[i] != ',' && hs->protocols[i] != ' ' &&
           hs->protocols[i] != '\t') {
        first[i] = hs->protocols[i];
        i++;
    }
    first[i] = '\0';
    if (i > 0) {
        hs->subprotocol = first;
        n = ws_handshake_response(hs, out, sizeof(out));
        /* Zero only when the name holds non-token bytes. */
        if (n != 0 && (n != strlen(out) || strstr(out, first) == NULL))
            abort();
        if (n != 0 && !ws_handshake_offers(hs, first))
            abort();
        hs->subprotocol = NULL;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct ws_handshake hs;
    enum ws_hs_status st = ws_handshake_parse(buf, size, &hs);
    char err[WS_HTTP_ERROR_MAX];

    switch (st) {
    case WS_HS_INCOMPLETE:
        if (size >= WS_HANDSHAKE_MAX)
            abort();
        break;
    case WS_HS_TOO_LARGE:
        if (size < WS_HANDSHAKE_MAX)
            abort();
        break;
    case WS_HS_OK: {
        if (hs.consumed > size || hs.consumed > WS_HANDSHAKE_MAX || hs.consumed < 4)
            abort();
        if (memcmp(buf + hs.consumed - 4, "\r\n\r\n", 4) != 0)
            abort();
        if (hs.path[0] != '/' || strlen(hs.path) > WS_PATH_MAX || strlen(hs.query) > WS_QUERY_MAX ||
            strlen(hs.key) != WS_KEY_LEN || strlen(hs.protocols) > WS_PROTOCOLS_MAX ||
            hs.subprotocol != NULL)
            abort();
        check_response(&hs);
        /* Shorter: incomplete; exactly the request: the same answer. */
        struct ws_handshake again;
        size_t c = hs.consumed;
        const size_t cuts[] = {0, 1, 3, 4, c / 2, c - 1};
        for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
            if (cuts[i] < c && ws_handshake_parse(buf, cuts[i], &again) != WS_HS_INCOMPLETE)
                abort();
        }
        if (ws_handshake_parse(buf, c, &again) != WS_HS_OK || again.consumed != c ||
            strcmp(again.key, hs.key) != 0 || strcmp(again.path, hs.path) != 0)
            abort();
        break;
    }
    case WS_HS_BAD_REQUEST:
    case WS_HS_BAD_VERSION: {
        size_t n = ws_handshake_error_response(st, err, sizeof(err));
        if (n == 0 || n != strlen(err) || strstr(err, "Connection: close") == NULL)
            abort();
        break;
    }
    default:
        abort();
    }
    if (st == WS_HS_TOO_LARGE && ws_handshake_error_response(st, err, sizeof(err)) == 0)
        abort();

    /* Any input as the message of an error response: escaped or refused, never overrun. */
    char msg[48];
    size_t m = size < sizeof(msg) - 1 ? size : sizeof(msg) - 1;
    memcpy(msg, data, m);
    msg[m] = '\0';
    size_t n = ws_http_error_response(404, "not_found", msg, err, sizeof(err));
    if (n == 0 || n != strlen(err) || strstr(err, "\r\n\r\n{\"error\":{") == NULL)
        abort();
    return 0;
}
