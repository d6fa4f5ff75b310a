/*
 * fuzz_pbjson: arbitrary bytes as a JSON body for several request types.
 *
 * pbjson_decode_bytes (whose fast reader may take the body) must agree with
 * decoding the jansson tree alone. Whatever decodes must survive every
 * round trip unchanged: encode to JSON, pack to protobuf, unpack (with a
 * capped allocator), encode again and compare; print the JSON as text (the
 * text encoder must print the same bytes as jansson) and decode that again.
 * Every repeated field is in the output as an array, also when empty (a
 * reply's lists are always present), at every depth of the message.
 * A rejected input must leave a printable error message and no leak. Each
 * input is also decoded under a small allocation cap so the out-of-memory
 * paths (and their frees of half-built messages) run.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbox.pb-c.h"
#include "pbjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BODY (64 * 1024)

/*
 * A byte-capped allocator. lib/budget is not linked into this target (it
 * links only pbjson); this one only counts down and never gives back.
 */
struct cap {
    ProtobufCAllocator alloc;
    size_t left;
};

static void *
cap_alloc(void *data, size_t size)
{
    struct cap *c = data;
    if (size > c->left)
        return NULL;
    c->left -= size;
    return malloc(size);
}

static void
cap_free(void *data, void *ptr)
{
    (void)data;
    free(ptr);
}

static void
cap_init(struct cap *c, size_t limit)
{
    c->alloc.alloc = cap_alloc;
    c->alloc.free = cap_free;
    c->alloc.allocator_data = c;
    c->left = limit;
}

/* Aborts unless err is a non-empty line of printable ASCII. */
static void
check_error(const char *err)
{
    if (err[0] == '\0')
        abort();
    for (const char *p = err; *p != '\0'; p++)
        if (*p < 0x20 || *p > 0x7E)
            abort();
}

/* Aborts unless msg encodes to exactly want. */
static void
check_encodes_to(const ProtobufCMessage *msg, const json_t *want)
{
    json_t *j = pbjson_encode(msg);
    if (j == NULL || !json_equal(j, want)) {
        char *a = json_dumps(want, JSON_COMPACT);
        char *b = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
        fprintf(stderr, "round trip changed the message:\n  %s\n  %s\n", a ? a : "?",
                b ? b : "(encode failed)");
        abort();
    }
    json_decref(j);
}

/*
 * Aborts unless pbjson_decode_bytes (whose fast reader may take the body)
 * and the jansson tree alone agree: both reject it (with the same error when
 * jansson parsed it), or both accept it as the same message.
 */
static void
check_same_as_tree(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t size,
                   const ProtobufCMessage *m, const char *err)
{
    if (size > MAX_BODY)
        return;
    char terr[256] = "";
    json_t *root = json_loadb((const char *)data, size,
                              JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY, NULL);
    ProtobufCMessage *t = root != NULL ? pbjson_decode(desc, root, NULL, terr, sizeof(terr)) : NULL;
    json_decref(root);
    if ((m == NULL) != (t == NULL) || (m == NULL && root != NULL && strcmp(err, terr) != 0)) {
        fprintf(stderr, "fast reader and tree disagree: %s / %s\n", m ? "accepted" : err,
                t ? "accepted" : terr);
        abort();
    }
    if (m != NULL) {
        size_t la = protobuf_c_message_get_packed_size(m);
        size_t lb = protobuf_c_message_get_packed_size(t);
        uint8_t *a = malloc(la + 1), *b = malloc(lb + 1);
        if (a == NULL || b == NULL || la != lb || protobuf_c_message_pack(m, a) != la ||
            protobuf_c_message_pack(t, b) != lb || memcmp(a, b, la) != 0) {
            fprintf(stderr, "fast reader and tree decoded different messages\n");
            abort();
        }
        free(a);
        free(b);
        protobuf_c_message_free_unpacked(t, NULL);
    }
}

/* Aborts unless every repeated field of msg (and of its sub-messages) is an array in j. */
static void
check_lists_present(const ProtobufCMessage *msg, const json_t *j)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const json_t *v = json_object_get(j, f->name);
        const char *base = (const char *)msg;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            if (!json_is_array(v) || json_array_size(v) != n) {
                fprintf(stderr, "repeated field '%s' not written as a list of %zu\n", f->name, n);
                abort();
            }
            if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
                ProtobufCMessage *const *subs =
                    *(ProtobufCMessage *const *const *)(base + f->offset);
                for (size_t k = 0; k < n; k++)
                    check_lists_present(subs[k], json_array_get(v, k));
            }
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && v != NULL) {
            check_lists_present(*(ProtobufCMessage *const *)(base + f->offset), v);
        }
    }
}

static void
fuzz_one_type(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t size)
{
    char err[256] = "";
    ProtobufCMessage *m = pbjson_decode_bytes(desc, data, size, MAX_BODY, NULL, err, sizeof(err));
    check_same_as_tree(desc, data, size, m, err);
    if (m == NULL) {
        check_error(err);
        return;
    }

    json_t *j1 = pbjson_encode(m);
    if (j1 == NULL)
        abort();
    check_lists_present(m, j1);

    /* Through protobuf. */
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *wire = malloc(len > 0 ? len : 1);
    if (wire == NULL || protobuf_c_message_pack(m, wire) != len)
        abort();
    struct cap c;
    cap_init(&c, 16 * 1024 * 1024);
    ProtobufCMessage *m2 = protobuf_c_message_unpack(desc, &c.alloc, len, wire);
    if (m2 == NULL)
        abort();
    check_encodes_to(m2, j1);
    protobuf_c_message_free_unpacked(m2, &c.alloc);
    free(wire);

    /* Through JSON text. */
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
    ProtobufCMessage *m3 =
        pbjson_decode_bytes(desc, text, strlen(text), SIZE_MAX, NULL, err, sizeof(err));
    if (m3 == NULL) {
        fprintf(stderr, "own output rejected: %s\n  %s\n", err, text);
        abort();
    }
    check_encodes_to(m3, j1);
    protobuf_c_message_free_unpacked(m3, NULL);
    free(text);

    json_decref(j1);
    protobuf_c_message_free_unpacked(m, NULL);

    /* Again under a small cap: succeeds or fails cleanly, never leaks. */
    cap_init(&c, size % 2048);
    m = pbjson_decode_bytes(desc, data, size, MAX_BODY, &c.alloc, err, sizeof(err));
    if (m == NULL)
        check_error(err);
    else
        protobuf_c_message_free_unpacked(m, &c.alloc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const ProtobufCMessageDescriptor *const types[] = {
        &mbox__send_request__descriptor, &mbox__notice__descriptor, &mbox__sync_request__descriptor,
        &mbox__whitelist__descriptor,    &mbox__frame__descriptor,  &mbox__item__descriptor,
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        fuzz_one_type(types[i], data, size);
    return 0;
}
