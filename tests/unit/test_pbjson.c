/*
 * Unit tests for lib/pbjson.c: the descriptor-driven JSON mapping of every
 * message in proto/, plus a hand-written descriptor for the field kinds
 * proto/ does not use (double, float, enum, signed 64-bit, oneof,
 * recursion).
 */
#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbox.pb-c.h"
#include "pbjson.h"

#define ERRLEN 256

/* Decodes a NUL-terminated JSON text with a 1 MiB cap and malloc. */
static ProtobufCMessage *
dec(const ProtobufCMessageDescriptor *desc, const char *json, char *err)
{
    return pbjson_decode_bytes(desc, json, strlen(json), 1 << 20, NULL, err, ERRLEN);
}

/*
 * Encodes msg as compact JSON text in field order; caller frees. The text
 * encoder's output must be exactly what jansson prints for the tree of the
 * same message (the tree is parsed from the text: printing it again must
 * give the same bytes, or the text was not in jansson's form).
 */
static char *
enc(const ProtobufCMessage *msg)
{
    size_t len = 0;
    char *s = pbjson_encode_text(msg, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(strlen(s), len);
    json_t *j = pbjson_encode(msg);
    ck_assert_ptr_nonnull(j);
    char *d = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    ck_assert_ptr_nonnull(d);
    ck_assert_str_eq(s, d);
    free(d);
    return s;
}

/* Asserts that decoding json as desc fails with exactly the message want. */
static void
assert_error(const ProtobufCMessageDescriptor *desc, const char *json, const char *want)
{
    char err[ERRLEN] = "unset";
    ProtobufCMessage *m = dec(desc, json, err);
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    ck_assert_msg(m == NULL, "decoding %s should fail", json);
    ck_assert_str_eq(err, want);
}

/* Asserts that decoding json fails with an error starting with prefix. */
static void
assert_error_prefix(const ProtobufCMessageDescriptor *desc, const char *json, const char *prefix)
{
    char err[ERRLEN] = "unset";
    ProtobufCMessage *m = dec(desc, json, err);
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    ck_assert_msg(m == NULL, "decoding %s should fail", json);
    ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0, "error '%s' does not start with '%s'",
                  err, prefix);
}

/* Packs msg into a malloc'd buffer. */
static uint8_t *
pack(const ProtobufCMessage *msg, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(*len ? *len : 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(protobuf_c_message_pack(msg, buf), *len);
    return buf;
}

/* Asserts a and b pack to the same bytes. */
static void
assert_same_wire(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    size_t la, lb;
    uint8_t *pa = pack(a, &la);
    uint8_t *pb = pack(b, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_mem_eq(pa, pb, la);
    free(pa);
    free(pb);
}

/* ---- encoding --------------------------------------------------------- */

START_TEST(encode_item_only_set_fields)
{
    Mbox__Item it = MBOX__ITEM__INIT;
    it.kind = "message";
    it.has_msg_id = 1;
    it.msg_id = 1679757323320865ULL;
    it.has_from_uid = 1;
    it.from_uid = 7;
    it.has_to_uid = 1;
    it.to_uid = 9;
    it.has_is_read = 1;
    it.is_read = 0;
    it.has_category = 1;
    it.category = 1;
    it.has_priority = 1;
    it.priority = 0;
    it.msgkey = "order-42";
    it.has_content = 1;
    it.content.data = (uint8_t *)"hi";
    it.content.len = 2;
    it.contacter = 99; /* no has_ flag: must not appear */
    char *s = enc(&it.base);
    ck_assert_str_eq(s, "{\"kind\":\"message\",\"msg_id\":\"1679757323320865\",\"from_uid\":\"7\","
                        "\"to_uid\":\"9\",\"is_read\":false,\"category\":1,\"priority\":0,"
                        "\"msgkey\":\"order-42\",\"content\":\"hi\"}");
    free(s);
}
END_TEST

START_TEST(encode_empty_message)
{
    Mbox__Frame f = MBOX__FRAME__INIT;
    char *s = enc(&f.base);
    ck_assert_str_eq(s, "{}");
    free(s);
    ck_assert_ptr_null(pbjson_encode(NULL));
}
END_TEST

START_TEST(encode_empty_bytes_and_string)
{
    Mbox__SendRequest r = MBOX__SEND_REQUEST__INIT;
    r.has_content = 1; /* set but empty, data NULL */
    r.msgkey = "";
    char *s = enc(&r.base);
    ck_assert_str_eq(s, "{\"to_uids\":[],\"msgkey\":\"\",\"content\":\"\"}");
    free(s);
}
END_TEST

START_TEST(encode_repeated)
{
    uint64_t uids[] = {7, 8, UINT64_MAX};
    Mbox__Whitelist w = MBOX__WHITELIST__INIT;
    w.has_app_id = 1;
    w.app_id = 1;
    w.n_uids = 3;
    w.uids = uids;
    char *s = enc(&w.base);
    ck_assert_str_eq(s, "{\"app_id\":\"1\",\"uids\":[\"7\",\"8\",\"18446744073709551615\"]}");
    free(s);

    w.n_uids = 0; /* an empty repeated field is written as [] */
    s = enc(&w.base);
    ck_assert_str_eq(s, "{\"app_id\":\"1\",\"uids\":[]}");
    free(s);
}
END_TEST

START_TEST(encode_nested)
{
    char *platforms[] = {"ios", "android"};
    Mbox__Targeting t = MBOX__TARGETING__INIT;
    t.n_platforms = 2;
    t.platforms = platforms;
    t.has_login_only = 1;
    t.login_only = 1;
    Mbox__Notice n = MBOX__NOTICE__INIT;
    n.has_notice_id = 1;
    n.notice_id = 17;
    n.targeting = &t;
    char *s = enc(&n.base);
    ck_assert_str_eq(s, "{\"notice_id\":\"17\",\"targeting\":{\"platforms\":[\"ios\",\"android\"],"
                        "\"login_only\":true}}");
    free(s);
}
END_TEST

/* The content bytes raw, encoded; returns the JSON string's bytes (caller frees). */
static json_t *
encode_content(const char *raw, size_t len)
{
    Mbox__Item it = MBOX__ITEM__INIT;
    it.has_content = 1;
    it.content.data = (uint8_t *)raw;
    it.content.len = len;
    json_t *j = pbjson_encode(&it.base);
    ck_assert_ptr_nonnull(j);
    return j;
}

static void
assert_content_encodes(const char *raw, size_t len, const char *want, size_t wantlen)
{
    json_t *j = encode_content(raw, len);
    json_t *c = json_object_get(j, "content");
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(json_string_length(c), wantlen);
    ck_assert_mem_eq(json_string_value(c), want, wantlen);
    json_decref(j);
}

#define FFFD "\xEF\xBF\xBD"

START_TEST(encode_invalid_utf8_replaced)
{
    /* lone continuation and invalid lead bytes */
    assert_content_encodes("a\xFF"
                           "b\x80",
                           4, "a" FFFD "b" FFFD, 8);
    /* overlong NUL */
    assert_content_encodes("\xC0\x80", 2, FFFD FFFD, 6);
    /* UTF-16 surrogate D800 encoded in UTF-8 */
    assert_content_encodes("x\xED\xA0\x80", 4, "x" FFFD FFFD FFFD, 10);
    /* above U+10FFFF */
    assert_content_encodes("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD, 12);
    /* truncated sequence at the end */
    assert_content_encodes("ok\xE4\xB8", 4, "ok" FFFD FFFD, 8);
    /* valid text, including 2-, 3- and 4-byte sequences and NUL, is untouched */
    const char good[] = "\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80\0z";
    assert_content_encodes(good, sizeof(good) - 1, good, sizeof(good) - 1);
}
END_TEST

START_TEST(encode_string_invalid_utf8_replaced)
{
    Mbox__Frame f = MBOX__FRAME__INIT;
    f.reason = "bad\xFE";
    char *s = enc(&f.base);
    ck_assert_str_eq(s, "{\"reason\":\"bad" FFFD "\"}");
    free(s);
}
END_TEST

/* ---- the text encoder against jansson's own printing ------------------- */

/* v printed by jansson as a JSON value (caller frees). */
static char *
jansson_text(json_t *v)
{
    ck_assert_ptr_nonnull(v);
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(v);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Asserts the text of {"content":<raw>} is jansson's, for valid UTF-8 raw. */
static void
assert_content_text_like_jansson(const char *raw, size_t len)
{
    Mbox__Item it = MBOX__ITEM__INIT;
    it.has_content = 1;
    it.content.data = (uint8_t *)raw;
    it.content.len = len;
    char *got = pbjson_encode_text(&it.base, NULL);
    ck_assert_ptr_nonnull(got);
    char *v = jansson_text(json_stringn(raw, len));
    char want[4096];
    snprintf(want, sizeof(want), "{\"content\":%s}", v);
    ck_assert_str_eq(got, want);
    free(v);
    free(got);
}

START_TEST(text_escapes_like_jansson)
{
    /* every ASCII byte, NUL and DEL included, alone and in one string */
    char all[128];
    for (int c = 0; c < 128; c++) {
        all[c] = (char)c;
        assert_content_text_like_jansson(&all[c], 1);
    }
    assert_content_text_like_jansson(all, sizeof(all));
    /* '/', quotes, backslashes and multi-byte UTF-8 are copied or escaped as jansson does */
    static const char mixed[] = "a/b\"c\\d\xC3\xA9\xE2\x80\xA8\xF0\x9F\x98\x80\x7F\x1F";
    assert_content_text_like_jansson(mixed, sizeof(mixed) - 1);
    assert_content_text_like_jansson("", 0);
}
END_TEST

START_TEST(text_integers_at_the_limits)
{
    Mbox__Item it = MBOX__ITEM__INIT;
    it.has_msg_id = it.has_category = it.has_version = it.has_priority = 1;
    it.msg_id = UINT64_MAX;
    it.category = INT32_MIN;
    it.priority = INT32_MAX;
    it.version = UINT32_MAX;
    char *s = enc(&it.base);
    ck_assert_str_eq(s, "{\"msg_id\":\"18446744073709551615\",\"category\":-2147483648,"
                        "\"priority\":2147483647,\"version\":4294967295}");
    free(s);
    it.msg_id = 0;
    it.category = 0;
    it.priority = -1;
    it.version = 0;
    s = enc(&it.base);
    ck_assert_str_eq(s, "{\"msg_id\":\"0\",\"category\":0,\"priority\":-1,\"version\":0}");
    free(s);
}
END_TEST

/* A sync reply with items of every kind the handlers build, and edge values. */
START_TEST(text_sync_and_history_replies)
{
    Mbox__Item items[3];
    Mbox__Item *ptrs[3];
    for (int i = 0; i < 3; i++) {
        mbox__item__init(&items[i]);
        ptrs[i] = &items[i];
    }
    items[0].kind = "message";
    items[0].has_msg_id = items[0].has_from_uid = items[0].has_to_uid = 1;
    items[0].msg_id = 1679757323320865ULL;
    items[0].from_uid = 7;
    items[0].to_uid = 9;
    items[0].has_create_time = items[0].has_expire_at = 1;
    items[0].create_time = 1679757323320865ULL;
    items[0].expire_at = 0;
    items[0].msgkey = "k\"\\\n";
    items[0].has_content = 1;
    items[0].content.data = (uint8_t *)"\x00\xFF\xE4\xB8\xAD\t</script>";
    items[0].content.len = 15;
    items[1].kind = "notice";
    items[1].has_notice_id = items[1].has_msg_id = items[1].has_version = 1;
    items[1].notice_id = 17;
    items[1].msg_id = 1679757323320866ULL;
    items[1].version = 3;
    items[1].title = "T\xC3\xA9";
    items[1].has_is_read = 1;
    items[1].is_read = 1;
    items[2].kind = "recall";
    items[2].has_recalled_msg_id = 1;
    items[2].recalled_msg_id = 1;
    Mbox__SyncResponse r = MBOX__SYNC_RESPONSE__INIT;
    r.items = ptrs;
    r.n_items = 3;
    r.cursor = "AQAAAAEABmDWVcc2qQAAAAAAAAAAQPjQtQ";
    r.has_has_more = r.has_reset = 1;
    char *s = enc(&r.base);
    ck_assert_ptr_nonnull(strstr(s, "\"content\":\"\\u0000\xEF\xBF\xBD\xE4\xB8\xAD\\t</script>\""));
    ck_assert_ptr_nonnull(strstr(s, "],\"cursor\":\"AQAAAAEABmDWVcc2qQAAAAAAAAAAQPjQtQ\","
                                    "\"has_more\":false,\"reset\":false}"));
    free(s);

    /* the empty sync: "items":[] (clients index items without a check) */
    r.n_items = 0;
    s = enc(&r.base);
    ck_assert_str_eq(
        s, "{\"items\":[],\"cursor\":\"AQAAAAEABmDWVcc2qQAAAAAAAAAAQPjQtQ\",\"has_more\":false,"
           "\"reset\":false}");
    free(s);

    Mbox__HistoryResponse h = MBOX__HISTORY_RESPONSE__INIT;
    h.items = ptrs;
    h.n_items = 2;
    h.has_has_more = 1;
    h.has_more = 1;
    s = enc(&h.base);
    ck_assert_str_eq(s + strlen(s) - strlen("],\"has_more\":true}"), "],\"has_more\":true}");
    free(s);
}
END_TEST

/*
 * Every repeated field of every reply is present, [] when empty, in the
 * text and the tree encoder alike, at any depth; optional scalars,
 * strings and sub-messages that are not set stay absent.
 */
START_TEST(repeated_fields_always_present)
{
    static const struct {
        const ProtobufCMessageDescriptor *d;
        const char *want;
    } empty[] = {
        {&mbox__sync_response__descriptor, "{\"items\":[]}"},
        {&mbox__history_response__descriptor, "{\"items\":[]}"},
        {&mbox__send_response__descriptor, "{\"results\":[]}"},
        {&mbox__notice_list__descriptor, "{\"notices\":[]}"},
        {&mbox__whitelist__descriptor, "{\"uids\":[]}"},
        {&mbox__read_request__descriptor, "{\"msg_ids\":[],\"notice_ids\":[]}"},
        {&mbox__targeting__descriptor, "{\"platforms\":[]}"},
        {&mbox__item__descriptor, "{}"},
        {&mbox__frame__descriptor, "{}"},
    };
    for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
        ProtobufCMessage *m = calloc(1, empty[i].d->sizeof_message);
        ck_assert_ptr_nonnull(m);
        protobuf_c_message_init(empty[i].d, m);
        char *s = enc(m);
        ck_assert_msg(strcmp(s, empty[i].want) == 0, "%s: %s", empty[i].d->name, s);
        free(s);
        json_t *j = pbjson_encode(m);
        ck_assert_ptr_nonnull(j);
        char *t = json_dumps(j, JSON_COMPACT);
        ck_assert_str_eq(t, empty[i].want);
        free(t);
        json_decref(j);
        free(m);
    }
    /* Nested: a notice with a targeting object but no platforms; the unset
     * optional notify message and scalars stay out. */
    Mbox__Targeting t = MBOX__TARGETING__INIT;
    t.has_min_core_level = 1;
    t.min_core_level = 5;
    Mbox__Notice n = MBOX__NOTICE__INIT;
    n.has_notice_id = 1;
    n.notice_id = 3;
    n.targeting = &t;
    char *s = enc(&n.base);
    ck_assert_str_eq(s, "{\"notice_id\":\"3\",\"targeting\":{\"platforms\":[],"
                        "\"min_core_level\":\"5\"}}");
    free(s);
    Mbox__NoticeList l = MBOX__NOTICE_LIST__INIT;
    Mbox__Notice *np = &n;
    l.notices = &np;
    l.n_notices = 1;
    s = enc(&l.base);
    ck_assert_str_eq(s, "{\"notices\":[{\"notice_id\":\"3\",\"targeting\":{\"platforms\":[],"
                        "\"min_core_level\":\"5\"}}]}");
    free(s);
    /* What is written decodes back to the same message (an empty list is no list). */
    char err[128];
    static const char text[] = "{\"notice_id\":\"3\",\"targeting\":{\"platforms\":[],"
                               "\"min_core_level\":\"5\"}}";
    ProtobufCMessage *back = pbjson_decode_bytes(&mbox__notice__descriptor, text, sizeof(text) - 1,
                                                 1024, NULL, err, sizeof(err));
    ck_assert_msg(back != NULL, "%s", err);
    ck_assert_uint_eq(((Mbox__Notice *)back)->targeting->n_platforms, 0);
    protobuf_c_message_free_unpacked(back, NULL);
}
END_TEST

/* Growth from a small caller buffer to the heap, and appending after it. */
START_TEST(text_buffer_grows)
{
    char big[5000];
    memset(big, 'x', sizeof(big));
    Mbox__Item it = MBOX__ITEM__INIT;
    it.has_content = 1;
    it.content.data = (uint8_t *)big;
    it.content.len = sizeof(big);

    char small[8];
    struct pbjson_buf b;
    pbjson_buf_init(&b, small, sizeof(small));
    Mbox__Item tiny = MBOX__ITEM__INIT;
    tiny.kind = "a";
    ck_assert(pbjson_write(&b, &tiny.base));
    ck_assert_str_eq(b.data, "{\"kind\":\"a\"}");
    ck_assert(b.owned); /* 12 bytes and a NUL did not fit in 8 */
    ck_assert(pbjson_write(&b, &it.base));
    ck_assert_uint_eq(b.len, 12 + 14 + sizeof(big));
    ck_assert_uint_eq(strlen(b.data), b.len);
    ck_assert_mem_eq(b.data + 12, "{\"content\":\"xxx", 15);
    pbjson_buf_free(&b);

    /* fits: stays in the caller's storage */
    char room[64];
    pbjson_buf_init(&b, room, sizeof(room));
    ck_assert(pbjson_write(&b, &tiny.base));
    ck_assert(!b.owned);
    ck_assert_ptr_eq(b.data, room);
    pbjson_buf_free(&b);

    /* no storage at all */
    pbjson_buf_init(&b, NULL, 0);
    ck_assert(pbjson_write(&b, &tiny.base));
    ck_assert_str_eq(b.data, "{\"kind\":\"a\"}");
    pbjson_buf_free(&b);
    ck_assert(!pbjson_write(&b, NULL));
    ck_assert_ptr_null(pbjson_encode_text(NULL, NULL));
}
END_TEST

/* ---- decoding: success ------------------------------------------------ */

START_TEST(decode_frame_login)
{
    char err[ERRLEN];
    Mbox__Frame *f = (Mbox__Frame *)dec(
        &mbox__frame__descriptor,
        "{\"type\":\"login\",\"token\":\"t\",\"device_id\":\"d\",\"core_level\":\"220819\"}", err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert_str_eq(f->type, "login");
    ck_assert_str_eq(f->token, "t");
    ck_assert_str_eq(f->device_id, "d");
    ck_assert_ptr_null(f->platform);
    ck_assert(f->has_core_level);
    ck_assert_uint_eq(f->core_level, 220819);
    ck_assert(!f->has_ok);
    ck_assert(!f->has_heartbeat_s);
    protobuf_c_message_free_unpacked(&f->base, NULL);
}
END_TEST

START_TEST(decode_to_uids_mixed)
{
    char err[ERRLEN];
    Mbox__SendRequest *r = (Mbox__SendRequest *)dec(
        &mbox__send_request__descriptor,
        "{\"app_id\":1,\"from_uid\":\"9\",\"to_uids\":[\"7\",8,\"18446744073709551615\",0],"
        "\"store_sender\":true,\"msgkey\":\"order-42\",\"content\":\"hello \\u00e9\","
        "\"category\":-3,\"type\":\"12\",\"expire_s\":86400}",
        err);
    ck_assert_msg(r != NULL, "%s", err);
    ck_assert(r->has_app_id);
    ck_assert_uint_eq(r->app_id, 1);
    ck_assert_uint_eq(r->from_uid, 9);
    ck_assert_uint_eq(r->n_to_uids, 4);
    ck_assert_uint_eq(r->to_uids[0], 7);
    ck_assert_uint_eq(r->to_uids[1], 8);
    ck_assert_uint_eq(r->to_uids[2], UINT64_MAX);
    ck_assert_uint_eq(r->to_uids[3], 0);
    ck_assert(r->has_store_sender && r->store_sender);
    ck_assert_str_eq(r->msgkey, "order-42");
    ck_assert(r->has_content);
    ck_assert_uint_eq(r->content.len, 8);
    ck_assert_mem_eq(r->content.data, "hello \xC3\xA9", 8);
    ck_assert(r->has_category);
    ck_assert_int_eq(r->category, -3);
    ck_assert_int_eq(r->type, 12);
    ck_assert(!r->has_priority);
    ck_assert_uint_eq(r->expire_s, 86400);
    ck_assert(!r->has_contacter);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}
END_TEST

START_TEST(decode_numbers_and_digit_strings)
{
    char err[ERRLEN];
    Mbox__SyncRequest *r =
        (Mbox__SyncRequest *)dec(&mbox__sync_request__descriptor, "{\"limit\":\"100\"}", err);
    ck_assert_msg(r != NULL, "%s", err);
    ck_assert(r->has_limit);
    ck_assert_uint_eq(r->limit, 100);
    ck_assert_ptr_null(r->cursor);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    r = (Mbox__SyncRequest *)dec(&mbox__sync_request__descriptor,
                                 "{\"cursor\":\"\",\"limit\":4294967295}", err);
    ck_assert_msg(r != NULL, "%s", err);
    ck_assert_uint_eq(r->limit, UINT32_MAX);
    ck_assert_str_eq(r->cursor, "");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    Mbox__Item *it = (Mbox__Item *)dec(
        &mbox__item__descriptor,
        "{\"category\":-2147483648,\"type\":\"2147483647\",\"priority\":\"-7\",\"msg_id\":\"007\"}",
        err);
    ck_assert_msg(it != NULL, "%s", err);
    ck_assert_int_eq(it->category, INT32_MIN);
    ck_assert_int_eq(it->type, INT32_MAX);
    ck_assert_int_eq(it->priority, -7);
    ck_assert_uint_eq(it->msg_id, 7);
    protobuf_c_message_free_unpacked(&it->base, NULL);
}
END_TEST

START_TEST(decode_null_is_absent)
{
    char err[ERRLEN];
    Mbox__SendRequest *r = (Mbox__SendRequest *)dec(
        &mbox__send_request__descriptor,
        "{\"app_id\":null,\"to_uids\":null,\"msgkey\":null,\"content\":null,\"store_sender\":null}",
        err);
    ck_assert_msg(r != NULL, "%s", err);
    ck_assert(!r->has_app_id);
    ck_assert_uint_eq(r->n_to_uids, 0);
    ck_assert_ptr_null(r->msgkey);
    ck_assert(!r->has_content);
    ck_assert(!r->has_store_sender);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}
END_TEST

START_TEST(decode_empty_array_and_bytes)
{
    char err[ERRLEN];
    Mbox__SendRequest *r = (Mbox__SendRequest *)dec(&mbox__send_request__descriptor,
                                                    "{\"to_uids\":[],\"content\":\"\"}", err);
    ck_assert_msg(r != NULL, "%s", err);
    ck_assert_uint_eq(r->n_to_uids, 0);
    ck_assert(r->has_content);
    ck_assert_uint_eq(r->content.len, 0);
    char *s = enc(&r->base);
    ck_assert_str_eq(s, "{\"to_uids\":[],\"content\":\"\"}");
    free(s);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}
END_TEST

START_TEST(decode_bytes_with_nul)
{
    char err[ERRLEN];
    Mbox__SendRequest *r = (Mbox__SendRequest *)dec(&mbox__send_request__descriptor,
                                                    "{\"content\":\"a\\u0000b\"}", err);
    ck_assert_msg(r != NULL, "%s", err);
    ck_assert_uint_eq(r->content.len, 3);
    ck_assert_mem_eq(r->content.data, "a\0b", 3);
    char *s = enc(&r->base);
    ck_assert_str_eq(s, "{\"to_uids\":[],\"content\":\"a\\u0000b\"}");
    free(s);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}
END_TEST

START_TEST(decode_nested_targeting)
{
    char err[ERRLEN];
    Mbox__Notice *n = (Mbox__Notice *)dec(
        &mbox__notice__descriptor,
        "{\"app_id\":\"1\",\"title\":\"Sale\",\"content\":\"50% off\","
        "\"targeting\":{\"platforms\":[\"ios\",\"android\"],\"min_core_level\":\"220000\","
        "\"max_core_level\":230000,\"login_only\":true},"
        "\"notify\":{\"mode\":\"paced\",\"rate_per_s\":100},"
        "\"start_at\":\"2026-11-22T03:04:05Z\",\"expire_at\":\"1795316645000001\"}",
        err);
    ck_assert_msg(n != NULL, "%s", err);
    ck_assert_uint_eq(n->app_id, 1);
    ck_assert_str_eq(n->title, "Sale");
    ck_assert_ptr_nonnull(n->targeting);
    ck_assert_uint_eq(n->targeting->n_platforms, 2);
    ck_assert_str_eq(n->targeting->platforms[0], "ios");
    ck_assert_str_eq(n->targeting->platforms[1], "android");
    ck_assert(n->targeting->has_min_core_level);
    ck_assert_uint_eq(n->targeting->min_core_level, 220000);
    ck_assert_uint_eq(n->targeting->max_core_level, 230000);
    ck_assert(n->targeting->has_login_only && n->targeting->login_only);
    ck_assert_ptr_nonnull(n->notify);
    ck_assert_str_eq(n->notify->mode, "paced");
    ck_assert_uint_eq(n->notify->rate_per_s, 100);
    ck_assert(n->has_start_at);
    ck_assert_uint_eq(n->start_at, 1795316645000000ULL);
    ck_assert_uint_eq(n->expire_at, 1795316645000001ULL);
    ck_assert(!n->has_created_at);
    ck_assert_ptr_null(n->created_by);
    protobuf_c_message_free_unpacked(&n->base, NULL);

    /* An empty object is a present, empty sub-message. */
    n = (Mbox__Notice *)dec(&mbox__notice__descriptor, "{\"targeting\":{}}", err);
    ck_assert_msg(n != NULL, "%s", err);
    ck_assert_ptr_nonnull(n->targeting);
    ck_assert_uint_eq(n->targeting->n_platforms, 0);
    char *s = enc(&n->base);
    ck_assert_str_eq(s, "{\"targeting\":{\"platforms\":[]}}");
    free(s);
    protobuf_c_message_free_unpacked(&n->base, NULL);
}
END_TEST

START_TEST(decode_time_fields)
{
    static const struct {
        const char *json;
        uint64_t want;
    } cases[] = {
        {"{\"created_at\":\"2026-11-22T03:04:05Z\"}", 1795316645000000ULL},
        {"{\"created_at\":\"2026-11-22T03:04:05.123456Z\"}", 1795316645123456ULL},
        {"{\"created_at\":\"2026-11-22T03:04:05.123456789Z\"}", 1795316645123456ULL},
        {"{\"created_at\":\"2026-11-22T11:04:05+08:00\"}", 1795316645000000ULL},
        {"{\"created_at\":\"2026-11-21T21:34:05-05:30\"}", 1795316645000000ULL},
        {"{\"created_at\":\"2026-11-22t03:04:05.5z\"}", 1795316645500000ULL},
        {"{\"created_at\":\"1970-01-01T00:00:00Z\"}", 0},
        {"{\"created_at\":\"1795316645000000\"}", 1795316645000000ULL},
        {"{\"created_at\":1795316645000000}", 1795316645000000ULL},
        {"{\"updated_at\":\"2000-01-01T00:00:00Z\"}", 946684800000000ULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[ERRLEN];
        Mbox__Notice *n = (Mbox__Notice *)dec(&mbox__notice__descriptor, cases[i].json, err);
        ck_assert_msg(n != NULL, "%s: %s", cases[i].json, err);
        uint64_t got = n->has_created_at ? n->created_at : n->updated_at;
        ck_assert_msg(got == cases[i].want, "%s: got %" PRIu64, cases[i].json, got);
        protobuf_c_message_free_unpacked(&n->base, NULL);
    }

    /* Item.create_time is a *_time field. */
    char err[ERRLEN];
    Mbox__Item *it = (Mbox__Item *)dec(&mbox__item__descriptor,
                                       "{\"create_time\":\"2024-02-29T00:00:00Z\"}", err);
    ck_assert_msg(it != NULL, "%s", err);
    ck_assert_uint_eq(it->create_time, 1709164800000000ULL);
    protobuf_c_message_free_unpacked(&it->base, NULL);

    /* Other uint64 fields do not take RFC 3339. */
    assert_error(&mbox__item__descriptor, "{\"msg_id\":\"2026-11-22T03:04:05Z\"}",
                 "msg_id: expected an unsigned 64-bit integer (string or number)");
    assert_error(&mbox__notice__descriptor, "{\"start_at\":\"2026-13-01T00:00:00Z\"}",
                 "start_at: invalid RFC 3339 time");
    assert_error(&mbox__notice__descriptor, "{\"start_at\":\"1969-12-31T23:59:59Z\"}",
                 "start_at: time before 1970");
    assert_error(&mbox__notice__descriptor, "{\"start_at\":\"2026-11-22\"}",
                 "start_at: invalid RFC 3339 time");
    assert_error(&mbox__notice__descriptor, "{\"start_at\":\"yesterday\"}",
                 "start_at: expected an unsigned 64-bit integer (string or number) or an RFC "
                 "3339 time");
    assert_error(&mbox__notice__descriptor, "{\"start_at\":true}",
                 "start_at: expected an unsigned 64-bit integer (string or number) or an RFC "
                 "3339 time");
}
END_TEST

/* ---- decoding: errors ------------------------------------------------- */

START_TEST(decode_errors_named_by_path)
{
    const ProtobufCMessageDescriptor *send = &mbox__send_request__descriptor;
    const ProtobufCMessageDescriptor *sync = &mbox__sync_request__descriptor;
    const ProtobufCMessageDescriptor *notice = &mbox__notice__descriptor;
    const ProtobufCMessageDescriptor *item = &mbox__item__descriptor;

    assert_error(send, "{\"to_uids\":[\"1\",\"2\",\"3\",\"x\"]}",
                 "to_uids[3]: expected an unsigned 64-bit integer (string or number)");
    assert_error(send, "{\"to_uids\":[1,null]}",
                 "to_uids[1]: expected an unsigned 64-bit integer (string or number)");
    assert_error(send, "{\"to_uids\":[1.5]}",
                 "to_uids[0]: expected an unsigned 64-bit integer (string or number)");
    assert_error(send, "{\"to_uids\":\"7\"}", "to_uids: expected an array");
    assert_error(send, "{\"to_uids\":{}}", "to_uids: expected an array");
    assert_error(notice, "{\"targeting\":{\"platforms\":[\"ios\",5]}}",
                 "targeting.platforms[1]: expected a string");
    assert_error(
        notice, "{\"targeting\":{\"min_core_level\":\"abc\"}}",
        "targeting.min_core_level: expected an unsigned 64-bit integer (string or number)");
    assert_error(notice, "{\"targeting\":[]}", "targeting: expected an object");
    assert_error(notice, "{\"notify\":\"paced\"}", "notify: expected an object");
    assert_error(sync, "{\"limit\":5000000000}", "limit: value 5000000000 out of range for uint32");
    assert_error(sync, "{\"limit\":\"5000000000\"}",
                 "limit: value 5000000000 out of range for uint32");
    assert_error(sync, "{\"limit\":-1}", "limit: value -1 out of range for uint32");
    assert_error(sync, "{\"limit\":1.0}", "limit: expected an unsigned 32-bit integer");
    assert_error(sync, "{\"limit\":\"\"}", "limit: expected an unsigned 32-bit integer");
    assert_error(sync, "{\"cursor\":5}", "cursor: expected a string");
    assert_error(item, "{\"category\":2147483648}",
                 "category: value 2147483648 out of range for int32");
    assert_error(item, "{\"category\":\"-2147483649\"}",
                 "category: value -2147483649 out of range for int32");
    assert_error(item, "{\"category\":\"1e3\"}", "category: expected a 32-bit integer");
    assert_error(item, "{\"is_read\":1}", "is_read: expected true or false");
    assert_error(item, "{\"is_read\":\"true\"}", "is_read: expected true or false");
    assert_error(item, "{\"content\":5}", "content: expected a string");
    assert_error(send, "{\"msgkey\":\"a\\u0000b\"}", "msgkey: string contains a NUL character");
}
END_TEST

START_TEST(decode_u64_string_strictness)
{
    const ProtobufCMessageDescriptor *d = &mbox__send_request__descriptor;
    const char *bad_syntax[] = {"\"\"",    "\"+1\"",  "\" 1\"", "\"1 \"", "\"0x10\"",
                                "\"1.0\"", "\"1e3\"", "\"-\"",  "true",   "[1]"};
    for (size_t i = 0; i < sizeof(bad_syntax) / sizeof(bad_syntax[0]); i++) {
        char json[64];
        snprintf(json, sizeof(json), "{\"from_uid\":%s}", bad_syntax[i]);
        assert_error(d, json, "from_uid: expected an unsigned 64-bit integer (string or number)");
    }
    assert_error(d, "{\"from_uid\":\"18446744073709551616\"}",
                 "from_uid: value 18446744073709551616 out of range for uint64");
    assert_error(d, "{\"from_uid\":\"99999999999999999999999\"}",
                 "from_uid: value 99999999999999999999999 out of range for uint64");
    assert_error(d, "{\"from_uid\":\"-1\"}", "from_uid: value -1 out of range for uint64");
    assert_error(d, "{\"from_uid\":\"-0\"}", "from_uid: value -0 out of range for uint64");
    assert_error(d, "{\"from_uid\":-5}", "from_uid: value -5 out of range for uint64");
    /* A digit string cut at an embedded NUL must not parse as its prefix. */
    assert_error(d, "{\"from_uid\":\"12\\u00003\"}",
                 "from_uid: expected an unsigned 64-bit integer (string or number)");
    /* Integers past int64 can only come as strings: jansson rejects the number. */
    assert_error_prefix(d, "{\"from_uid\":18446744073709551615}", "invalid JSON: ");

    /* A very long digit string is cut short in the message. */
    char json[256], want[256];
    char digits[101];
    memset(digits, '9', 100);
    digits[100] = '\0';
    snprintf(json, sizeof(json), "{\"from_uid\":\"%s\"}", digits);
    snprintf(want, sizeof(want), "from_uid: value %.40s... out of range for uint64", digits);
    assert_error(d, json, want);
}
END_TEST

START_TEST(decode_unknown_fields)
{
    assert_error(&mbox__sync_request__descriptor, "{\"limt\":1}", "unknown field 'limt'");
    assert_error(&mbox__notice__descriptor, "{\"targeting\":{\"platfroms\":[]}}",
                 "unknown field 'targeting.platfroms'");
    /* jansson refuses NUL in keys it parses; one built in code is not the
     * field it begins with. */
    assert_error_prefix(&mbox__sync_request__descriptor, "{\"limit\\u0000x\":1}",
                        "invalid JSON: NUL byte in object key");
    json_t *obj = json_object();
    ck_assert_int_eq(json_object_setn_new(obj, "limit\0x", 7, json_integer(1)), 0);
    char err[ERRLEN];
    ck_assert_ptr_null(pbjson_decode(&mbox__sync_request__descriptor, obj, NULL, err, sizeof(err)));
    ck_assert_str_eq(err, "unknown field 'limit?x'");
    json_decref(obj);
    /* Non-ASCII keys are shown as printable ASCII. */
    assert_error(&mbox__sync_request__descriptor, "{\"l\\u00e9\":1}",
                 "unknown field 'l?"
                 "?'");
    /* Unknown fields are errors even when null. */
    assert_error(&mbox__sync_request__descriptor, "{\"x\":null}", "unknown field 'x'");
}
END_TEST

START_TEST(decode_rejects_bad_json)
{
    const ProtobufCMessageDescriptor *d = &mbox__sync_request__descriptor;
    assert_error(d, "[]", "expected a JSON object");
    assert_error(d, "\"x\"", "expected a JSON object");
    assert_error(d, "null", "expected a JSON object");
    assert_error_prefix(d, "{\"limit\":1,\"limit\":2}", "invalid JSON: duplicate object key");
    assert_error_prefix(d, "{", "invalid JSON: ");
    assert_error_prefix(d, "{} x", "invalid JSON: ");
    assert_error_prefix(d, "{}{}", "invalid JSON: ");
    assert_error_prefix(d, "", "invalid JSON: ");

    char err[ERRLEN];
    ck_assert_ptr_null(dec(d, "{\"limit\":1,\n\"limit\":2}", err));
    ck_assert_msg(strstr(err, "line 2") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "column") != NULL, "%s", err);

    /* Invalid UTF-8 in the body: the error text itself stays printable. */
    ck_assert_ptr_null(dec(d, "{\"cursor\":\"\xFF\"}", err));
    ck_assert_msg(strncmp(err, "invalid JSON: ", 14) == 0, "%s", err);
    for (const char *p = err; *p; p++)
        ck_assert(*p >= 0x20 && *p < 0x7F);

    /* Duplicates are found in nested objects too. */
    assert_error_prefix(&mbox__notice__descriptor,
                        "{\"targeting\":{\"login_only\":true,\"login_only\":false}}",
                        "invalid JSON: duplicate object key");
}
END_TEST

START_TEST(decode_body_too_large)
{
    char err[ERRLEN];
    const char *body = "{\"limit\":1}";
    ck_assert_ptr_null(pbjson_decode_bytes(&mbox__sync_request__descriptor, body, strlen(body),
                                           strlen(body) - 1, NULL, err, sizeof(err)));
    ck_assert_msg(strncmp(err, "body too large", 14) == 0, "%s", err);
    ProtobufCMessage *m = pbjson_decode_bytes(&mbox__sync_request__descriptor, body, strlen(body),
                                              strlen(body), NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(m);
    protobuf_c_message_free_unpacked(m, NULL);
}
END_TEST

START_TEST(decode_too_many_elements)
{
    size_t n = 100001;
    char *json = malloc(n * 2 + 32);
    ck_assert_ptr_nonnull(json);
    char *p = json + sprintf(json, "{\"uids\":[");
    for (size_t i = 0; i < n; i++) {
        *p++ = '1';
        *p++ = ',';
    }
    p[-1] = ']';
    strcpy(p, "}");
    char err[ERRLEN];
    ck_assert_ptr_null(pbjson_decode_bytes(&mbox__whitelist__descriptor, json, strlen(json),
                                           SIZE_MAX, NULL, err, sizeof(err)));
    ck_assert_str_eq(err, "uids: too many elements (100001, at most 100000)");

    /* Exactly the maximum is fine. */
    p[-3] = ']';
    p[-2] = '}';
    p[-1] = '\0';
    Mbox__Whitelist *w = (Mbox__Whitelist *)pbjson_decode_bytes(
        &mbox__whitelist__descriptor, json, strlen(json), SIZE_MAX, NULL, err, sizeof(err));
    ck_assert_msg(w != NULL, "%s", err);
    ck_assert_uint_eq(w->n_uids, 100000);
    protobuf_c_message_free_unpacked(&w->base, NULL);
    free(json);
}
END_TEST

START_TEST(decode_without_error_buffer)
{
    ck_assert_ptr_null(
        pbjson_decode_bytes(&mbox__sync_request__descriptor, "{\"x\":1}", 7, 100, NULL, NULL, 0));
    ck_assert_ptr_null(
        pbjson_decode_bytes(&mbox__sync_request__descriptor, "{\"x\":1}", 7, 1, NULL, NULL, 0));
    ck_assert_ptr_null(
        pbjson_decode_bytes(&mbox__sync_request__descriptor, "{", 1, 100, NULL, NULL, 0));
    char tiny[4];
    ck_assert_ptr_null(pbjson_decode_bytes(&mbox__sync_request__descriptor, "{\"limit\":true}", 14,
                                           100, NULL, tiny, sizeof(tiny)));
    ck_assert_str_eq(tiny, "lim");
}
END_TEST

START_TEST(decode_half_built_message_is_freed)
{
    /* Strings, arrays and a sub-message are allocated before the error: ASan
     * reports a leak if the partial message is not freed. */
    assert_error(&mbox__notice__descriptor,
                 "{\"title\":\"t\",\"content\":\"c\",\"targeting\":{\"platforms\":[\"a\",\"b\"]},"
                 "\"notify\":{\"mode\":\"paced\",\"rate_per_s\":\"x\"}}",
                 "notify.rate_per_s: expected an unsigned 32-bit integer");
    assert_error(&mbox__notice__descriptor,
                 "{\"targeting\":{\"platforms\":[\"a\",\"b\",7,\"c\"]},\"title\":\"t\"}",
                 "targeting.platforms[2]: expected a string");
}
END_TEST

/* ---- RFC 3339 and u64 parsing ----------------------------------------- */

START_TEST(rfc3339_variants)
{
    static const struct {
        const char *s;
        int64_t us;
    } ok[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"2026-11-22T03:04:05Z", 1795316645000000LL},
        {"2026-11-22T03:04:05.1Z", 1795316645100000LL},
        {"2026-11-22T03:04:05.123Z", 1795316645123000LL},
        {"2026-11-22T03:04:05.123456Z", 1795316645123456LL},
        {"2026-11-22T03:04:05.123456789Z", 1795316645123456LL},
        {"2026-11-22T03:04:05.999999999Z", 1795316645999999LL},
        {"2026-11-22T11:04:05+08:00", 1795316645000000LL},
        {"2026-11-21T21:34:05-05:30", 1795316645000000LL},
        {"2026-11-22T03:04:05-00:00", 1795316645000000LL},
        {"2026-11-22t03:04:05z", 1795316645000000LL},
        {"2024-02-29T00:00:00Z", 1709164800000000LL},
        {"2000-01-01T00:00:00Z", 946684800000000LL},
        {"1969-12-31T23:59:59Z", -1000000LL},
        {"0001-01-01T00:00:00Z", -62135596800000000LL},
        {"9999-12-31T23:59:59Z", 253402300799000000LL},
        {"2016-12-31T23:59:60Z", 1483228800000000LL}, /* leap second: next second */
        {"1970-01-01T00:00:00.000001+00:00", 1},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int64_t us = -42;
        ck_assert_msg(pbjson_parse_rfc3339(ok[i].s, &us), "%s rejected", ok[i].s);
        ck_assert_msg(us == ok[i].us, "%s: got %" PRId64 " want %" PRId64, ok[i].s, us, ok[i].us);
    }

    static const char *const bad[] = {
        "",
        "2026-11-22",
        "2026-11-22T03:04:05",             /* no offset */
        "2026-11-22 03:04:05Z",            /* space separator */
        "2026-11-22T03:04Z",               /* no seconds */
        "2026-11-22T03:04:05.Z",           /* empty fraction */
        "2026-11-22T03:04:05.1234567890Z", /* 10 fraction digits */
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-11-00T00:00:00Z",
        "2026-11-31T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-11-22T24:00:00Z",
        "2026-11-22T03:60:00Z",
        "2026-11-22T03:04:61Z",
        "2026-11-22T03:04:05+24:00",
        "2026-11-22T03:04:05+08:60",
        "2026-11-22T03:04:05+0800",
        "2026-11-22T03:04:05+08",
        "2026-11-22T03:04:05Zjunk",
        "2026-11-22T03:04:05+08:00x",
        "+2026-11-22T03:04:05Z",
        "2026-1-22T03:04:05Z",
        "２026-11-22T03:04:05Z",
        "2026-11-22T03:04:05ZZ",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t us = 0;
        ck_assert_msg(!pbjson_parse_rfc3339(bad[i], &us), "%s accepted", bad[i]);
    }
    int64_t us;
    ck_assert(!pbjson_parse_rfc3339(NULL, &us));
}
END_TEST

START_TEST(parse_u64)
{
    uint64_t v = 0;
    ck_assert(pbjson_parse_u64("0", &v));
    ck_assert_uint_eq(v, 0);
    ck_assert(pbjson_parse_u64("18446744073709551615", &v));
    ck_assert_uint_eq(v, UINT64_MAX);
    ck_assert(pbjson_parse_u64("007", &v));
    ck_assert_uint_eq(v, 7);
    ck_assert(pbjson_parse_u64("1679757323320865", &v));
    ck_assert_uint_eq(v, 1679757323320865ULL);
    v = 123;
    static const char *const bad[] = {"",
                                      "18446744073709551616",
                                      "99999999999999999999",
                                      "-1",
                                      "+1",
                                      " 1",
                                      "1 ",
                                      "1a",
                                      "0x1",
                                      "1.0",
                                      "-"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!pbjson_parse_u64(bad[i], &v), "'%s' accepted", bad[i]);
    ck_assert_uint_eq(v, 123); /* untouched on failure */
    ck_assert(!pbjson_parse_u64(NULL, &v));
}
END_TEST

/* ---- round trips ------------------------------------------------------ */

START_TEST(u64_max_round_trip)
{
    Mbox__SendResult r = MBOX__SEND_RESULT__INIT;
    r.has_uid = 1;
    r.uid = UINT64_MAX;
    r.has_msg_id = 1;
    r.msg_id = 0;
    char *s = enc(&r.base);
    ck_assert_str_eq(s, "{\"uid\":\"18446744073709551615\",\"msg_id\":\"0\"}");
    char err[ERRLEN];
    Mbox__SendResult *back = (Mbox__SendResult *)dec(&mbox__send_result__descriptor, s, err);
    ck_assert_msg(back != NULL, "%s", err);
    ck_assert(back->has_uid);
    ck_assert_uint_eq(back->uid, UINT64_MAX);
    ck_assert(back->has_msg_id);
    ck_assert_uint_eq(back->msg_id, 0);
    ck_assert(!back->has_duplicate);
    assert_same_wire(&r.base, &back->base);
    protobuf_c_message_free_unpacked(&back->base, NULL);
    free(s);
}
END_TEST

START_TEST(item_round_trip)
{
    Mbox__Item it = MBOX__ITEM__INIT;
    it.kind = "notice";
    it.has_msg_id = it.has_from_uid = it.has_to_uid = it.has_contacter = 1;
    it.msg_id = 1679757323320865ULL;
    it.from_uid = 1;
    it.to_uid = UINT64_MAX;
    it.contacter = 3;
    it.has_create_time = it.has_expire_at = it.has_is_read = 1;
    it.create_time = 1795316645123456ULL;
    it.expire_at = 1795316645999999ULL;
    it.is_read = 1;
    it.has_category = it.has_type = it.has_priority = it.has_business_type = 1;
    it.category = INT32_MIN;
    it.type = INT32_MAX;
    it.priority = -1;
    it.business_type = 0;
    it.msgkey = "k";
    it.has_content = 1;
    it.content.data = (uint8_t *)"\xE4\xBD\xA0\xE5\xA5\xBD\0!";
    it.content.len = 8;
    it.has_recalled_msg_id = it.has_notice_id = it.has_version = 1;
    it.recalled_msg_id = 5;
    it.notice_id = 17;
    it.version = UINT32_MAX;
    it.title = "T\xC3\xAFtle";

    json_t *j = pbjson_encode(&it.base);
    ck_assert_ptr_nonnull(j);
    ck_assert_uint_eq(json_object_size(j), 18);
    char err[ERRLEN];
    Mbox__Item *back =
        (Mbox__Item *)pbjson_decode(&mbox__item__descriptor, j, NULL, err, sizeof(err));
    ck_assert_msg(back != NULL, "%s", err);
    assert_same_wire(&it.base, &back->base);
    json_t *j2 = pbjson_encode(&back->base);
    ck_assert(json_equal(j, j2));
    json_decref(j2);
    json_decref(j);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

/* Every message type in proto/. */
static const ProtobufCMessageDescriptor *const all_types[] = {
    &mbox__item__descriptor,
    &mbox__sync_request__descriptor,
    &mbox__sync_response__descriptor,
    &mbox__history_response__descriptor,
    &mbox__read_request__descriptor,
    &mbox__read_response__descriptor,
    &mbox__token_request__descriptor,
    &mbox__token_response__descriptor,
    &mbox__send_request__descriptor,
    &mbox__send_result__descriptor,
    &mbox__send_response__descriptor,
    &mbox__recall_request__descriptor,
    &mbox__recall_response__descriptor,
    &mbox__targeting__descriptor,
    &mbox__notify_policy__descriptor,
    &mbox__notice__descriptor,
    &mbox__notice_list__descriptor,
    &mbox__whitelist__descriptor,
    &mbox__frame__descriptor,
};

static json_t *full_json(const ProtobufCMessageDescriptor *desc, unsigned seed);

/* A canonical JSON value for one element of field f (as pbjson writes it). */
static json_t *
sample_value(const ProtobufCFieldDescriptor *f, unsigned seed)
{
    char buf[64];
    switch (f->type) {
    case PROTOBUF_C_TYPE_UINT64:
        snprintf(buf, sizeof(buf), "%" PRIu64, UINT64_MAX - seed);
        return json_string(buf);
    case PROTOBUF_C_TYPE_UINT32:
        return json_integer((json_int_t)UINT32_MAX - seed);
    case PROTOBUF_C_TYPE_INT32:
        return json_integer((json_int_t)INT32_MIN + seed);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(seed % 2 == 0);
    case PROTOBUF_C_TYPE_STRING:
        snprintf(buf, sizeof(buf), "%s-%u-\xC3\xA9\xF0\x9F\x98\x80", f->name, seed);
        return json_string(buf);
    case PROTOBUF_C_TYPE_BYTES:
        snprintf(buf, sizeof(buf), "%s-%u-\xE4\xB8\xAD", f->name, seed);
        return json_stringn(buf, strlen(buf) + 1); /* with a trailing NUL byte */
    case PROTOBUF_C_TYPE_MESSAGE:
        return full_json(f->descriptor, seed + 1);
    default:
        ck_abort_msg("type %d is not in proto/", (int)f->type);
    }
    return NULL;
}

/* A JSON object setting every field of desc (repeated ones to 3 elements). */
static json_t *
full_json(const ProtobufCMessageDescriptor *desc, unsigned seed)
{
    json_t *obj = json_object();
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        json_t *v;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            v = json_array();
            for (unsigned k = 0; k < 3; k++)
                json_array_append_new(v, sample_value(f, seed + i + k));
        } else {
            v = sample_value(f, seed + i);
        }
        ck_assert_int_eq(json_object_set_new(obj, f->name, v), 0);
    }
    return obj;
}

START_TEST(round_trip_every_type)
{
    const ProtobufCMessageDescriptor *desc = all_types[_i];
    json_t *in = full_json(desc, 1);
    char err[ERRLEN];
    ProtobufCMessage *m = pbjson_decode(desc, in, NULL, err, sizeof(err));
    ck_assert_msg(m != NULL, "%s: %s", desc->name, err);

    /* JSON -> message -> JSON is the identity on canonical JSON. */
    json_t *out = pbjson_encode(m);
    ck_assert_ptr_nonnull(out);
    ck_assert_msg(json_equal(in, out), "%s differs", desc->name);
    ck_assert_uint_eq(json_object_size(out), desc->n_fields);

    /* message -> JSON -> message keeps every field: same wire bytes. */
    ProtobufCMessage *m2 = pbjson_decode(desc, out, NULL, err, sizeof(err));
    ck_assert_msg(m2 != NULL, "%s: %s", desc->name, err);
    assert_same_wire(m, m2);

    /* and through protobuf: unpack(pack(m)) encodes to the same JSON. */
    size_t len;
    uint8_t *wire = pack(m, &len);
    ProtobufCMessage *m3 = protobuf_c_message_unpack(desc, NULL, len, wire);
    ck_assert_ptr_nonnull(m3);
    json_t *out3 = pbjson_encode(m3);
    ck_assert(json_equal(in, out3));

    /* An empty message too. */
    json_t *empty = json_object();
    ProtobufCMessage *m4 = pbjson_decode(desc, empty, NULL, err, sizeof(err));
    ck_assert_msg(m4 != NULL, "%s: %s", desc->name, err);
    ck_assert_uint_eq(protobuf_c_message_get_packed_size(m4), 0);
    json_t *out4 = pbjson_encode(m4);
    /* ... which is {} but for its repeated fields, always written ([]) */
    for (unsigned i = 0; i < desc->n_fields; i++) {
        if (desc->fields[i].label == PROTOBUF_C_LABEL_REPEATED)
            json_object_set_new(empty, desc->fields[i].name, json_array());
    }
    ck_assert(json_equal(empty, out4));

    json_decref(out4);
    json_decref(empty);
    protobuf_c_message_free_unpacked(m4, NULL);
    json_decref(out3);
    protobuf_c_message_free_unpacked(m3, NULL);
    free(wire);
    protobuf_c_message_free_unpacked(m2, NULL);
    json_decref(out);
    protobuf_c_message_free_unpacked(m, NULL);
    json_decref(in);
}
END_TEST

/* ---- allocator -------------------------------------------------------- */

/* Counts live blocks and fails every allocation after the first `allow`. */
struct counting {
    ProtobufCAllocator alloc;
    size_t allow;
    size_t calls;
    long live;
};

static void *
counting_alloc(void *data, size_t size)
{
    struct counting *c = data;
    if (c->calls++ >= c->allow)
        return NULL;
    c->live++;
    return malloc(size);
}

static void
counting_free(void *data, void *p)
{
    struct counting *c = data;
    if (p != NULL)
        c->live--;
    free(p);
}

START_TEST(decode_uses_allocator_and_survives_oom)
{
    const char *json =
        "{\"app_id\":\"1\",\"title\":\"Sale\",\"content\":\"x\",\"state\":\"draft\","
        "\"targeting\":{\"platforms\":[\"ios\",\"android\",\"web\"],\"min_core_level\":\"2\"},"
        "\"notify\":{\"mode\":\"paced\",\"rate_per_s\":100},\"created_by\":\"ops\"}";
    size_t needed = 0;
    for (size_t allow = 0; allow < 100; allow++) {
        struct counting c = {{counting_alloc, counting_free, NULL}, allow, 0, 0};
        c.alloc.allocator_data = &c;
        char err[ERRLEN];
        ProtobufCMessage *m = pbjson_decode_bytes(&mbox__notice__descriptor, json, strlen(json),
                                                  4096, &c.alloc, err, sizeof(err));
        if (m == NULL) {
            ck_assert_msg(strstr(err, "out of memory") != NULL, "%s", err);
            ck_assert_int_eq(c.live, 0);
            continue;
        }
        ck_assert_int_gt(c.live, 0);
        Mbox__Notice *n = (Mbox__Notice *)m;
        ck_assert_str_eq(n->targeting->platforms[2], "web");
        protobuf_c_message_free_unpacked(m, &c.alloc);
        ck_assert_int_eq(c.live, 0);
        needed = allow;
        break;
    }
    /* notice, title, content, state, targeting, its array, 3 platforms, notify,
     * mode, created_by */
    ck_assert_uint_eq(needed, 12);
}
END_TEST

/* ---- field kinds proto/ does not use ---------------------------------- */

/*
 * A hand-written descriptor (what protoc-c would generate) for:
 *   enum Color { RED = 0; BLUE = 5; }
 *   message Probe {
 *     optional double d = 1; optional float f = 2; optional Color color = 3;
 *     optional sint64 s64 = 4; optional sfixed32 s32 = 5; optional Probe child = 6;
 *     oneof choice { string name = 7; uint64 num = 8; }
 *     repeated Probe kids = 9;
 *   }
 */
typedef struct Probe Probe;
struct Probe {
    ProtobufCMessage base;
    protobuf_c_boolean has_d;
    double d;
    protobuf_c_boolean has_f;
    float f;
    protobuf_c_boolean has_color;
    int color;
    protobuf_c_boolean has_s64;
    int64_t s64;
    protobuf_c_boolean has_s32;
    int32_t s32;
    Probe *child;
    uint32_t choice_case;
    union {
        char *name;
        uint64_t num;
    };
    size_t n_kids;
    Probe **kids;
};

static const ProtobufCEnumValue color_values[] = {{"RED", "COLOR_RED", 0},
                                                  {"BLUE", "COLOR_BLUE", 5}};
static const ProtobufCEnumValueIndex color_by_name[] = {{"BLUE", 1}, {"RED", 0}};
static const ProtobufCIntRange color_ranges[] = {{0, 0}, {5, 1}, {0, 2}};
static const ProtobufCEnumDescriptor color_descriptor = {
    PROTOBUF_C__ENUM_DESCRIPTOR_MAGIC,
    "test.Color",
    "Color",
    "Color",
    "test",
    2,
    color_values,
    2,
    color_by_name,
    2,
    color_ranges,
    NULL,
    NULL,
    NULL,
    NULL,
};

static const ProtobufCMessageDescriptor probe_descriptor;

#define OPT PROTOBUF_C_LABEL_OPTIONAL
static const ProtobufCFieldDescriptor probe_fields[] = {
    {"d", 1, OPT, PROTOBUF_C_TYPE_DOUBLE, offsetof(Probe, has_d), offsetof(Probe, d), NULL, NULL, 0,
     0, NULL, NULL},
    {"f", 2, OPT, PROTOBUF_C_TYPE_FLOAT, offsetof(Probe, has_f), offsetof(Probe, f), NULL, NULL, 0,
     0, NULL, NULL},
    {"color", 3, OPT, PROTOBUF_C_TYPE_ENUM, offsetof(Probe, has_color), offsetof(Probe, color),
     &color_descriptor, NULL, 0, 0, NULL, NULL},
    {"s64", 4, OPT, PROTOBUF_C_TYPE_SINT64, offsetof(Probe, has_s64), offsetof(Probe, s64), NULL,
     NULL, 0, 0, NULL, NULL},
    {"s32", 5, OPT, PROTOBUF_C_TYPE_SFIXED32, offsetof(Probe, has_s32), offsetof(Probe, s32), NULL,
     NULL, 0, 0, NULL, NULL},
    {"child", 6, OPT, PROTOBUF_C_TYPE_MESSAGE, 0, offsetof(Probe, child), &probe_descriptor, NULL,
     0, 0, NULL, NULL},
    {"name", 7, OPT, PROTOBUF_C_TYPE_STRING, offsetof(Probe, choice_case), offsetof(Probe, name),
     NULL, NULL, PROTOBUF_C_FIELD_FLAG_ONEOF, 0, NULL, NULL},
    {"num", 8, OPT, PROTOBUF_C_TYPE_UINT64, offsetof(Probe, choice_case), offsetof(Probe, num),
     NULL, NULL, PROTOBUF_C_FIELD_FLAG_ONEOF, 0, NULL, NULL},
    {"kids", 9, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_MESSAGE, offsetof(Probe, n_kids),
     offsetof(Probe, kids), &probe_descriptor, NULL, 0, 0, NULL, NULL},
};
#undef OPT
/* child color d f kids name num s32 s64 */
static const unsigned probe_by_name[] = {5, 2, 0, 1, 8, 6, 7, 4, 3};
static const ProtobufCIntRange probe_ranges[] = {{1, 0}, {0, 9}};

static void
probe_init(ProtobufCMessage *m)
{
    static const Probe init = {.base = PROTOBUF_C_MESSAGE_INIT(&probe_descriptor)};
    *(Probe *)m = init;
}

static const ProtobufCMessageDescriptor probe_descriptor = {
    PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    "test.Probe",
    "Probe",
    "Probe",
    "test",
    sizeof(Probe),
    9,
    probe_fields,
    probe_by_name,
    1,
    probe_ranges,
    probe_init,
    NULL,
    NULL,
    NULL,
};

START_TEST(probe_encode)
{
    Probe p;
    probe_init(&p.base);
    p.has_d = 1;
    p.d = 1.5;
    p.has_f = 1;
    p.f = NAN;
    p.has_color = 1;
    p.color = 5;
    p.has_s64 = 1;
    p.s64 = INT64_MIN;
    p.has_s32 = 1;
    p.s32 = -5;
    p.choice_case = 8;
    p.num = 42;
    char *s = enc(&p.base);
    ck_assert_str_eq(s,
                     "{\"d\":1.5,\"f\":\"NaN\",\"color\":\"BLUE\",\"s64\":\"-9223372036854775808\","
                     "\"s32\":-5,\"num\":\"42\",\"kids\":[]}");
    free(s);

    p.f = -INFINITY;
    p.d = INFINITY;
    p.color = 3; /* not a known value: written as a number */
    p.choice_case = 7;
    p.name = "n";
    s = enc(&p.base);
    ck_assert_str_eq(s, "{\"d\":\"Infinity\",\"f\":\"-Infinity\",\"color\":3,\"s64\":"
                        "\"-9223372036854775808\",\"s32\":-5,\"name\":\"n\",\"kids\":[]}");
    free(s);
}
END_TEST

START_TEST(probe_decode)
{
    char err[ERRLEN];
    Probe *p = (Probe *)dec(&probe_descriptor,
                            "{\"d\":2,\"f\":\"Infinity\",\"color\":\"BLUE\",\"s64\":\"-"
                            "9223372036854775808\",\"s32\":\"-2147483648\",\"name\":\"x\","
                            "\"child\":{\"num\":\"7\",\"color\":0},\"kids\":[{},{\"d\":0.25}]}",
                            err);
    ck_assert_msg(p != NULL, "%s", err);
    ck_assert(p->has_d);
    ck_assert(p->d == 2.0);
    ck_assert(isinf(p->f) && p->f > 0);
    ck_assert_int_eq(p->color, 5);
    ck_assert(p->s64 == INT64_MIN);
    ck_assert_int_eq(p->s32, INT32_MIN);
    ck_assert_uint_eq(p->choice_case, 7);
    ck_assert_str_eq(p->name, "x");
    ck_assert_uint_eq(p->child->choice_case, 8);
    ck_assert_uint_eq(p->child->num, 7);
    ck_assert(p->child->has_color);
    ck_assert_int_eq(p->child->color, 0);
    ck_assert_uint_eq(p->n_kids, 2);
    ck_assert(p->kids[1]->d == 0.25);

    /* Through protobuf and back. */
    size_t len;
    uint8_t *wire = pack(&p->base, &len);
    ProtobufCMessage *q = protobuf_c_message_unpack(&probe_descriptor, NULL, len, wire);
    ck_assert_ptr_nonnull(q);
    json_t *a = pbjson_encode(&p->base);
    json_t *b = pbjson_encode(q);
    ck_assert(json_equal(a, b));
    json_decref(a);
    json_decref(b);
    protobuf_c_message_free_unpacked(q, NULL);
    free(wire);
    protobuf_c_message_free_unpacked(&p->base, NULL);

    p = (Probe *)dec(&probe_descriptor, "{\"f\":\"NaN\",\"d\":\"-Infinity\",\"color\":5}", err);
    ck_assert_msg(p != NULL, "%s", err);
    ck_assert(isnan(p->f));
    ck_assert(isinf(p->d) && p->d < 0);
    ck_assert_int_eq(p->color, 5);
    protobuf_c_message_free_unpacked(&p->base, NULL);
}
END_TEST

START_TEST(probe_errors)
{
    const ProtobufCMessageDescriptor *d = &probe_descriptor;
    assert_error(d, "{\"color\":\"GREEN\"}", "color: not a value of test.Color");
    assert_error(d, "{\"color\":3}", "color: not a value of test.Color");
    assert_error(d, "{\"color\":true}", "color: expected an enum name or number");
    assert_error(d, "{\"color\":4294967301}", "color: expected an enum name or number");
    assert_error(d, "{\"f\":1e300}", "f: value out of range for float");
    assert_error(d, "{\"d\":\"1.5\"}", "d: expected a number");
    assert_error(d, "{\"d\":\"nan\"}", "d: expected a number");
    assert_error(d, "{\"s64\":\"9223372036854775808\"}",
                 "s64: value 9223372036854775808 out of range for sint64");
    assert_error(d, "{\"s64\":\"-9223372036854775809\"}",
                 "s64: value -9223372036854775809 out of range for sint64");
    assert_error(d, "{\"s64\":\"--1\"}", "s64: expected a 64-bit integer (string or number)");
    assert_error(d, "{\"s32\":2147483648}", "s32: value 2147483648 out of range for sfixed32");
    /* Two members of one oneof: an error, and the first member's string is freed. */
    assert_error(d, "{\"name\":\"x\",\"num\":\"5\"}",
                 "num: another member of its oneof is already set");
    assert_error(d, "{\"num\":\"5\",\"name\":\"x\"}",
                 "name: another member of its oneof is already set");
    assert_error(d, "{\"kids\":[{},{\"child\":{\"s32\":\"x\"}}],\"name\":\"leak?\"}",
                 "kids[1].child.s32: expected a 32-bit integer");
    assert_error(d, "{\"kids\":[{},{\"bogus\":1}]}", "unknown field 'kids[1].bogus'");
}
END_TEST

START_TEST(probe_depth_cap)
{
    /* 8 nested objects are fine, the 9th is refused. */
    char json[256] = "";
    for (int i = 0; i < 7; i++)
        strcat(json, "{\"child\":");
    strcat(json, "{\"num\":\"1\"}");
    for (int i = 0; i < 7; i++)
        strcat(json, "}");
    char err[ERRLEN];
    ProtobufCMessage *m = dec(&probe_descriptor, json, err);
    ck_assert_msg(m != NULL, "%s", err);
    protobuf_c_message_free_unpacked(m, NULL);

    strcpy(json, "");
    for (int i = 0; i < 8; i++)
        strcat(json, "{\"child\":");
    strcat(json, "{\"num\":\"1\"}");
    for (int i = 0; i < 8; i++)
        strcat(json, "}");
    assert_error(&probe_descriptor, json,
                 "child.child.child.child.child.child.child.child: nested deeper than 8 objects");
}
END_TEST

/*
 * Proto3-style implicit presence and a proto2 required field:
 *   message Probe3 { uint32 n = 1; string s = 2; bytes b = 3; required string req = 4; }
 */
typedef struct Probe3 {
    ProtobufCMessage base;
    uint32_t n;
    char *s;
    ProtobufCBinaryData b;
    char *req;
} Probe3;

static const ProtobufCMessageDescriptor probe3_descriptor;

static const ProtobufCFieldDescriptor probe3_fields[] = {
    {"n", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_UINT32, 0, offsetof(Probe3, n), NULL, NULL, 0,
     0, NULL, NULL},
    {"s", 2, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_STRING, 0, offsetof(Probe3, s), NULL, NULL, 0,
     0, NULL, NULL},
    {"b", 3, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_BYTES, 0, offsetof(Probe3, b), NULL, NULL, 0, 0,
     NULL, NULL},
    {"req", 4, PROTOBUF_C_LABEL_REQUIRED, PROTOBUF_C_TYPE_STRING, 0, offsetof(Probe3, req), NULL,
     NULL, 0, 0, NULL, NULL},
};
/* b n req s */
static const unsigned probe3_by_name[] = {2, 0, 3, 1};
static const ProtobufCIntRange probe3_ranges[] = {{1, 0}, {0, 4}};

static void
probe3_init(ProtobufCMessage *m)
{
    static const Probe3 init = {.base = PROTOBUF_C_MESSAGE_INIT(&probe3_descriptor)};
    *(Probe3 *)m = init;
}

static const ProtobufCMessageDescriptor probe3_descriptor = {
    PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    "test.Probe3",
    "Probe3",
    "Probe3",
    "test",
    sizeof(Probe3),
    4,
    probe3_fields,
    probe3_by_name,
    1,
    probe3_ranges,
    probe3_init,
    NULL,
    NULL,
    NULL,
};

START_TEST(probe3_implicit_presence_and_required)
{
    Probe3 p;
    probe3_init(&p.base);
    p.req = "r";
    p.s = "";
    char *s = enc(&p.base); /* zero values are not written */
    ck_assert_str_eq(s, "{\"req\":\"r\"}");
    free(s);
    p.n = 3;
    p.s = "x";
    p.b.data = (uint8_t *)"y";
    p.b.len = 1;
    s = enc(&p.base);
    ck_assert_str_eq(s, "{\"n\":3,\"s\":\"x\",\"b\":\"y\",\"req\":\"r\"}");
    free(s);

    char err[ERRLEN];
    Probe3 *q =
        (Probe3 *)dec(&probe3_descriptor, "{\"n\":3,\"s\":\"x\",\"b\":\"y\",\"req\":\"\"}", err);
    ck_assert_msg(q != NULL, "%s", err);
    ck_assert_uint_eq(q->n, 3);
    ck_assert_str_eq(q->s, "x");
    ck_assert_uint_eq(q->b.len, 1);
    ck_assert_str_eq(q->req, "");
    protobuf_c_message_free_unpacked(&q->base, NULL);

    assert_error(&probe3_descriptor, "{\"n\":1}", "missing required field 'req'");
    assert_error(&probe3_descriptor, "{\"s\":\"x\",\"req\":null}", "missing required field 'req'");
}
END_TEST

/* Reals are printed as jansson prints them ("%.17g", ".0", short exponents). */
START_TEST(probe_reals_like_jansson)
{
    static const double values[] = {0.0,
                                    -0.0,
                                    1.0,
                                    -1.5,
                                    0.1,
                                    100.0,
                                    1e300,
                                    -1e-300,
                                    1e-5,
                                    5e-324,
                                    1.7976931348623157e308,
                                    1e16,
                                    1e17,
                                    123456789012345678.0,
                                    2.5e-7,
                                    3.0e21};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        Probe p;
        probe_init(&p.base);
        p.has_d = p.has_f = 1;
        p.d = values[i];
        p.f = (float)values[i];
        char *got = enc(&p.base);
        char *d = jansson_text(json_real(values[i]));
        char *f = isinf((float)values[i])
                      ? strdup((float)values[i] > 0 ? "\"Infinity\"" : "\"-Infinity\"")
                      : jansson_text(json_real((float)values[i]));
        char want[256];
        snprintf(want, sizeof(want), "{\"d\":%s,\"f\":%s,\"kids\":[]}", d, f);
        ck_assert_str_eq(got, want);
        free(d);
        free(f);
        free(got);
    }
}
END_TEST

/* ---- the fast reader against the jansson tree ------------------------- */

/*
 * Decodes body through jansson's tree only (json_loadb + pbjson_decode):
 * the reference pbjson_decode_bytes's fast reader must agree with.
 * *syntax_ok tells whether jansson parsed the body at all.
 */
static ProtobufCMessage *
dec_tree(const ProtobufCMessageDescriptor *desc, const char *body, size_t len, char *err,
         bool *syntax_ok)
{
    json_error_t jerr;
    json_t *root =
        json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    *syntax_ok = root != NULL;
    if (root == NULL)
        return NULL;
    ProtobufCMessage *m = pbjson_decode(desc, root, NULL, err, ERRLEN);
    json_decref(root);
    return m;
}

/* Asserts both decoders accept body with the same message or reject it with the same error. */
static void
assert_same_as_tree(const ProtobufCMessageDescriptor *desc, const char *body)
{
    char e1[ERRLEN] = "", e2[ERRLEN] = "";
    bool syntax_ok;
    size_t len = strlen(body);
    ProtobufCMessage *a = pbjson_decode_bytes(desc, body, len, 1 << 20, NULL, e1, ERRLEN);
    ProtobufCMessage *b = dec_tree(desc, body, len, e2, &syntax_ok);
    ck_assert_msg((a == NULL) == (b == NULL), "%s: %s vs %s", body, a ? "accepted" : e1,
                  b ? "accepted" : e2);
    if (a != NULL) {
        ck_assert_str_eq(e1, "");
        assert_same_wire(a, b);
        char *ta = enc(a), *tb = enc(b);
        ck_assert_str_eq(ta, tb);
        free(ta);
        free(tb);
        protobuf_c_message_free_unpacked(a, NULL);
        protobuf_c_message_free_unpacked(b, NULL);
    } else if (syntax_ok) {
        ck_assert_str_eq(e1, e2);
    } else {
        ck_assert_msg(strncmp(e1, "invalid JSON: ", 14) == 0, "%s: %s", body, e1);
    }
}

START_TEST(fast_reader_agrees_with_tree)
{
    static const char *const sync[] = {
        "{}",
        " { } ",
        "{\"cursor\":\"\",\"limit\":10}",
        "\t\r\n{\"cursor\" : \"AQAAAAEABmDWVcc2qQAAAAAAAAAAQPjQtQ\" ,\n\"limit\": 10 }\n",
        "{\"limit\":\"10\"}",
        "{\"limit\":-0}",
        "{\"limit\":0}",
        "{\"limit\":01}",
        "{\"limit\":-1}",
        "{\"limit\":4294967295}",
        "{\"limit\":4294967296}",
        "{\"limit\":1.0}",
        "{\"limit\":1e1}",
        "{\"limit\":1E1}",
        "{\"limit\":123456789012345678}",
        "{\"limit\":1234567890123456789}",
        "{\"limit\":-9223372036854775808}",
        "{\"limit\":99999999999999999999}",
        "{\"limit\":1x}",
        "{\"limit\":-}",
        "{\"limit\":true}",
        "{\"limit\":truex}",
        "{\"limit\":null}",
        "{\"limit\":nul}",
        "{\"limit\":null,\"limit\":1}",
        "{\"limit\":1,\"limit\":1}",
        "{\"cursor\":null}",
        "{\"cursor\":\"a\\\"b\"}",
        "{\"cursor\":\"\\u0041\"}",
        "{\"cursor\":\"\xC3\xA9\"}",
        "{\"cursor\":\"\xFF\"}",
        "{\"cursor\":\"a\x01\"}",
        "{\"cursor\":\"\x7F\"}",
        "{\"cursor\":1}",
        "{\"cursor\":{}}",
        "{\"cursor\":[]}",
        "{\"bogus\":1}",
        "{\"bogus\":null}",
        "{\"cursor\":\"x\",}",
        "{,}",
        "{\"cursor\"}",
        "{\"cursor\" \"x\"}",
        "{\"cursor\":\"x\"",
        "{\"cursor\":\"x",
        "{\"cursor\":\"x\"}}",
        "{} x",
        "{}{}",
        "[]",
        "\"x\"",
        "null",
        "",
        " ",
        "{\"limit\":1}\0",
        "{\"li\0mit\":1}",
        "\xEF\xBB\xBF{}",
    };
    for (size_t i = 0; i < sizeof(sync) / sizeof(sync[0]); i++)
        assert_same_as_tree(&mbox__sync_request__descriptor, sync[i]);

    static const char *const send[] = {
        ("{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"9\"],\"content\":\"hello\","
         "\"msgkey\":\"order-42\"}"),
        "{\"app_id\":1,\"to_uids\":[9, \"10\" ,18446744073709551615],\"store_sender\":false}",
        "{\"to_uids\":[\"18446744073709551615\",1]}",
        "{\"to_uids\":[]}",
        "{\"to_uids\":[ ]}",
        "{\"to_uids\":[null]}",
        "{\"to_uids\":[1,]}",
        "{\"to_uids\":[,1]}",
        "{\"to_uids\":[1 2]}",
        "{\"to_uids\":[{}]}",
        "{\"to_uids\":[[1]]}",
        "{\"to_uids\":[\"x\"]}",
        "{\"to_uids\":[-1]}",
        "{\"to_uids\":1}",
        "{\"to_uids\":[1],\"to_uids\":[2]}",
        "{\"to_uids\":[1]",
        "{\"content\":\"\"}",
        "{\"content\":\"a\\u0000b\"}",
        "{\"msgkey\":\"a\\u0000b\"}",
        "{\"category\":2147483648}",
        "{\"category\":-2147483648}",
        "{\"expire_s\":-1}",
        "{\"app_id\":\"2026-01-01T00:00:00Z\"}",
    };
    for (size_t i = 0; i < sizeof(send) / sizeof(send[0]); i++)
        assert_same_as_tree(&mbox__send_request__descriptor, send[i]);

    static const char *const notice[] = {
        ("{\"app_id\":\"1\",\"title\":\"Sale\",\"targeting\":{\"platforms\":[\"ios\",\"web\"],"
         "\"login_only\":true},\"notify\":{\"mode\":\"paced\",\"rate_per_s\":100}}"),
        "{\"start_at\":\"2026-11-22T03:04:05.123Z\",\"expire_at\":\"1799999999000000\"}",
        "{\"start_at\":\"2026-13-22T03:04:05Z\"}",
        "{\"targeting\":{}}",
        "{\"targeting\":null}",
        "{\"targeting\":{\"bogus\":1}}",
        "{\"targeting\":{\"login_only\":1}}",
        "{\"targeting\":{\"platforms\":[\"ios\"]},\"targeting\":{}}",
        "{\"targeting\":[]}",
        "{\"targeting\":{\"platforms\":\"ios\"}}",
    };
    for (size_t i = 0; i < sizeof(notice) / sizeof(notice[0]); i++)
        assert_same_as_tree(&mbox__notice__descriptor, notice[i]);

    static const char *const probe[] = {
        "{\"color\":\"BLUE\",\"s64\":\"-9223372036854775808\",\"s32\":-5,\"num\":\"42\"}",
        "{\"color\":5}",
        "{\"color\":\"GREEN\"}",
        "{\"d\":\"NaN\",\"f\":\"-Infinity\"}",
        "{\"d\":2}",
        "{\"d\":0.5}",
        "{\"name\":\"x\",\"num\":\"5\"}",
        "{\"name\":\"x\",\"num\":null}",
        "{\"child\":{\"child\":{\"num\":\"1\"}}}",
        "{\"kids\":[{},{\"d\":1}]}",
        ("{\"child\":{\"child\":{\"child\":{\"child\":{\"child\":{\"child\":{\"child\":{\"child\":"
         "{}}}}}}}}}"),
        "{\"child\":{\"child\":{\"child\":{\"child\":{\"child\":{\"child\":{\"child\":{}}}}}}}}",
    };
    for (size_t i = 0; i < sizeof(probe) / sizeof(probe[0]); i++)
        assert_same_as_tree(&probe_descriptor, probe[i]);

    static const char *const probe3[] = {"{\"req\":\"r\",\"n\":0}", "{\"n\":1}", "{\"req\":null}"};
    for (size_t i = 0; i < sizeof(probe3) / sizeof(probe3[0]); i++)
        assert_same_as_tree(&probe3_descriptor, probe3[i]);
}
END_TEST

static Suite *
pbjson_suite(void)
{
    Suite *s = suite_create("pbjson");
    TCase *tc = tcase_create("encode");
    tcase_add_test(tc, encode_item_only_set_fields);
    tcase_add_test(tc, encode_empty_message);
    tcase_add_test(tc, encode_empty_bytes_and_string);
    tcase_add_test(tc, encode_repeated);
    tcase_add_test(tc, encode_nested);
    tcase_add_test(tc, encode_invalid_utf8_replaced);
    tcase_add_test(tc, encode_string_invalid_utf8_replaced);
    tcase_add_test(tc, text_escapes_like_jansson);
    tcase_add_test(tc, text_integers_at_the_limits);
    tcase_add_test(tc, text_sync_and_history_replies);
    tcase_add_test(tc, repeated_fields_always_present);
    tcase_add_test(tc, text_buffer_grows);
    suite_add_tcase(s, tc);

    tc = tcase_create("decode");
    tcase_add_test(tc, decode_frame_login);
    tcase_add_test(tc, decode_to_uids_mixed);
    tcase_add_test(tc, decode_numbers_and_digit_strings);
    tcase_add_test(tc, decode_null_is_absent);
    tcase_add_test(tc, decode_empty_array_and_bytes);
    tcase_add_test(tc, decode_bytes_with_nul);
    tcase_add_test(tc, decode_nested_targeting);
    tcase_add_test(tc, decode_time_fields);
    tcase_add_test(tc, decode_errors_named_by_path);
    tcase_add_test(tc, decode_u64_string_strictness);
    tcase_add_test(tc, decode_unknown_fields);
    tcase_add_test(tc, decode_rejects_bad_json);
    tcase_add_test(tc, decode_body_too_large);
    tcase_add_test(tc, decode_too_many_elements);
    tcase_add_test(tc, decode_without_error_buffer);
    tcase_add_test(tc, decode_half_built_message_is_freed);
    tcase_add_test(tc, decode_uses_allocator_and_survives_oom);
    suite_add_tcase(s, tc);

    tc = tcase_create("parse");
    tcase_add_test(tc, rfc3339_variants);
    tcase_add_test(tc, parse_u64);
    suite_add_tcase(s, tc);

    tc = tcase_create("round_trip");
    tcase_add_test(tc, u64_max_round_trip);
    tcase_add_test(tc, item_round_trip);
    tcase_add_loop_test(tc, round_trip_every_type, 0,
                        (int)(sizeof(all_types) / sizeof(all_types[0])));
    suite_add_tcase(s, tc);

    tc = tcase_create("probe");
    tcase_add_test(tc, probe_encode);
    tcase_add_test(tc, probe_reals_like_jansson);
    tcase_add_test(tc, probe_decode);
    tcase_add_test(tc, probe_errors);
    tcase_add_test(tc, probe_depth_cap);
    tcase_add_test(tc, probe3_implicit_presence_and_required);
    tcase_add_test(tc, fast_reader_agrees_with_tree);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(pbjson_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
