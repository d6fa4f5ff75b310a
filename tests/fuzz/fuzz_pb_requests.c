/*
 * fuzz_pb_requests: arbitrary bytes as a protobuf request body, unpacked
 * under a byte budget as the daemons do, for every request type.
 *
 * Whatever unpacks must encode to JSON, and that JSON (printed as text)
 * must decode back to a message with the same JSON: pbjson accepts all of
 * its own output, whatever the wire held (invalid UTF-8, NUL bytes, huge
 * numbers). The text encoder must print exactly what jansson prints for the
 * same message. A refused unpack must give every budgeted byte back.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "mbox.pb-c.h"
#include "pbjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define BUDGET (1024 * 1024)

static void
fuzz_one_type(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t size)
{
    struct budget b;
    budget_init(&b, BUDGET);
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &b.alloc, size, data);
    if (m == NULL) {
        if (b.used != 0)
            abort();
        return;
    }
    if (b.used > BUDGET)
        abort();

    json_t *j1 = pbjson_encode(m);
    if (j1 == NULL)
        abort();
    char *text = json_dumps(j1, JSON_COMPACT);
    if (text == NULL)
        abort();
    /* The text encoder writes exactly what jansson prints for the same tree. */
    size_t tlen;
    char *direct = pbjson_encode_text(m, &tlen);
    if (direct == NULL || tlen != strlen(text) || memcmp(direct, text, tlen) != 0) {
        fprintf(stderr, "text encoder differs from jansson:\n  %s\n  %s\n", text,
                direct ? direct : "(failed)");
        abort();
    }
    free(direct);

    char err[256] = "";
    ProtobufCMessage *m2 =
        pbjson_decode_bytes(desc, text, strlen(text), SIZE_MAX, NULL, err, sizeof(err));
    if (m2 == NULL) {
        /* The budget allows more elements than JSON decoding accepts. */
        if (strstr(err, "too many elements") == NULL) {
            fprintf(stderr, "own output rejected: %s\n  %s\n", err, text);
            abort();
        }
    } else {
        json_t *j2 = pbjson_encode(m2);
        if (j2 == NULL || !json_equal(j1, j2)) {
            fprintf(stderr, "JSON round trip changed the message:\n  %s\n", text);
            abort();
        }
        json_decref(j2);
        protobuf_c_message_free_unpacked(m2, NULL);
    }
    free(text);
    json_decref(j1);
    protobuf_c_message_free_unpacked(m, &b.alloc);
    if (b.used != 0)
        abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const ProtobufCMessageDescriptor *const types[] = {
        &mbox__send_request__descriptor,  &mbox__notice__descriptor,
        &mbox__sync_request__descriptor,  &mbox__whitelist__descriptor,
        &mbox__frame__descriptor,         &mbox__read_request__descriptor,
        &mbox__token_request__descriptor, &mbox__recall_request__descriptor,
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        fuzz_one_type(types[i], data, size);
    return 0;
}
