/*
 * pbjson: the one mapping between protobuf-c messages and JSON.
 *
 * Driven by the ProtobufCMessageDescriptor protoc-c generates, so every
 * request and response type in proto/ gets JSON for free and a field is
 * declared once. Rules (also in docs/api.md):
 *
 *   - JSON names are the proto field names.
 *   - Optional scalars are written only when their has_ flag is set;
 *     strings and messages when non-NULL; repeated fields always ([] when
 *     empty: a reply's lists are always present).
 *   - int64/uint64 (and fixed/sint variants) are written as JSON strings,
 *     accepted as strings of decimal digits or as JSON integers.
 *   - uint64 fields whose name ends in "_at" or "_time" also accept an
 *     RFC 3339 timestamp, converted to unix microseconds.
 *   - int32/uint32 are JSON numbers (strings of digits are accepted too);
 *     out-of-range values are errors.
 *   - bool is true/false.
 *   - bytes are UTF-8 text: decoding rejects nothing (JSON strings are
 *     UTF-8 already); encoding replaces invalid UTF-8 with U+FFFD.
 *   - enums are not used in proto/.
 *   - Nested messages are JSON objects; repeated ones are arrays.
 *   - Decoding: unknown fields are errors (a typo must not be silently
 *     dropped), duplicate keys are errors, null is treated as absent,
 *     wrong types are errors. The error text names the field path
 *     ("to_uids[3]: expected an unsigned integer").
 *
 * Encoding writes compact JSON text straight from the message
 * (pbjson_write: a reply needs no json_t tree); pbjson_encode's tree is
 * parsed back from that text, so there is one encoder.
 *
 * Memory: decoded messages are allocated with the given allocator (NULL =
 * protobuf-c's default) and freed with protobuf_c_message_free_unpacked()
 * using the same allocator, exactly like a protobuf-c unpacked message.
 */
#ifndef MBOX_PBJSON_H
#define MBOX_PBJSON_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

/*
 * Output of the text encoder: compact JSON text, NUL-terminated (the NUL
 * is not counted in len). It starts in storage the caller gives (a stack
 * array, so a small reply needs no allocation) and moves to the heap when
 * that is full.
 */
struct pbjson_buf {
    char *data;
    size_t len;
    size_t cap; /* bytes at data */
    bool owned; /* data is heap memory of the buffer's own */
    bool oom;   /* an append failed: the text is incomplete */
};

/* An empty buffer writing into storage[0..size) first (storage may be NULL, size 0). */
void pbjson_buf_init(struct pbjson_buf *b, char *storage, size_t size);

/* Frees what the buffer allocated (never the caller's storage). */
void pbjson_buf_free(struct pbjson_buf *b);

/*
 * Appends msg to b as compact JSON text, fields in descriptor order: the
 * bytes json_dumps(pbjson_encode(msg), JSON_COMPACT) would give. False on
 * OOM (or msg NULL); b must then be freed and not used.
 */
bool pbjson_write(struct pbjson_buf *b, const ProtobufCMessage *msg)
    __attribute__((warn_unused_result));

/* msg as new compact JSON text (caller frees), its length in *len (may be NULL). NULL on OOM. */
char *pbjson_encode_text(const ProtobufCMessage *msg, size_t *len);

/*
 * Encodes msg as a new JSON object (caller owns the reference). NULL on
 * OOM. Derived from the text encoder (the text is parsed back), so both
 * forms are the same mapping; for callers that need a tree (sorted keys,
 * merging), not for hot paths.
 */
json_t *pbjson_encode(const ProtobufCMessage *msg);

/*
 * Decodes a JSON object into a new message of type desc. Returns NULL and
 * writes a message into err on any error. The result is freed with
 * protobuf_c_message_free_unpacked(msg, alloc).
 */
ProtobufCMessage *pbjson_decode(const ProtobufCMessageDescriptor *desc, const json_t *obj,
                                ProtobufCAllocator *alloc, char *err, size_t errlen);

/*
 * Parses body bytes (at most max_len, else error) as JSON with duplicate
 * keys rejected, then decodes. For request handlers: a plain body (the
 * usual request) is read straight into the message without a jansson
 * tree; anything else goes through jansson and pbjson_decode. Results and
 * error messages are the same either way (see pbjson.c).
 */
ProtobufCMessage *pbjson_decode_bytes(const ProtobufCMessageDescriptor *desc, const void *body,
                                      size_t len, size_t max_len, ProtobufCAllocator *alloc,
                                      char *err, size_t errlen);

/* Parses RFC 3339 ("2026-11-22T03:04:05.123Z", "+08:00" offsets) to unix microseconds. */
bool pbjson_parse_rfc3339(const char *s, int64_t *out_us) __attribute__((warn_unused_result));

/* Parses a decimal uint64 string strictly (no sign, no spaces, no overflow). */
bool pbjson_parse_u64(const char *s, uint64_t *out) __attribute__((warn_unused_result));

#endif
