/*
 * Unit tests for lib/budget.c: the byte-budgeted protobuf-c allocator, on
 * its own and under protobuf_c_message_unpack of small inputs that expand.
 */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "mbox.pb-c.h"

static void *
balloc(struct budget *b, size_t n)
{
    return b->alloc.alloc(b->alloc.allocator_data, n);
}

static void
bfree(struct budget *b, void *p)
{
    b->alloc.free(b->alloc.allocator_data, p);
}

START_TEST(init_sets_fields)
{
    struct budget b;
    memset(&b, 0xAB, sizeof(b));
    budget_init(&b, 1234);
    ck_assert_uint_eq(b.limit, 1234);
    ck_assert_uint_eq(b.used, 0);
    ck_assert_ptr_nonnull(b.alloc.alloc);
    ck_assert_ptr_nonnull(b.alloc.free);
    ck_assert_ptr_eq(b.alloc.allocator_data, &b);
}
END_TEST

START_TEST(alloc_counts_and_free_returns)
{
    struct budget b;
    budget_init(&b, 4096);
    char *p = balloc(&b, 100);
    ck_assert_ptr_nonnull(p);
    memset(p, 'x', 100); /* ASan: the whole block is usable */
    ck_assert_uint_ge(b.used, 100);
    ck_assert_uint_le(b.used, 100 + 64); /* a small header */
    size_t after_one = b.used;
    char *q = balloc(&b, 200);
    ck_assert_ptr_nonnull(q);
    ck_assert_uint_ge(b.used, after_one + 200);
    bfree(&b, p);
    ck_assert_uint_lt(b.used, after_one + 200);
    bfree(&b, q);
    ck_assert_uint_eq(b.used, 0);
    bfree(&b, NULL); /* like free(NULL) */
    ck_assert_uint_eq(b.used, 0);
}
END_TEST

START_TEST(alloc_fails_past_limit)
{
    struct budget b;
    budget_init(&b, 1000);
    ck_assert_ptr_null(balloc(&b, 1000)); /* the header does not fit */
    ck_assert_ptr_null(balloc(&b, 5000));
    ck_assert_ptr_null(balloc(&b, SIZE_MAX));
    ck_assert_ptr_null(balloc(&b, SIZE_MAX - 8));
    ck_assert_uint_eq(b.used, 0);

    /* Fill it with small blocks until refused, then free one and retry. */
    void *blocks[100];
    size_t n = 0;
    while (n < 100 && (blocks[n] = balloc(&b, 64)) != NULL)
        n++;
    ck_assert_uint_gt(n, 5);
    ck_assert_uint_lt(n, 100);
    ck_assert_uint_le(b.used, b.limit);
    size_t used = b.used;
    ck_assert_ptr_null(balloc(&b, 64));
    ck_assert_uint_eq(b.used, used); /* a refusal costs nothing */
    bfree(&b, blocks[--n]);
    blocks[n] = balloc(&b, 64);
    ck_assert_ptr_nonnull(blocks[n]);
    n++;
    while (n > 0)
        bfree(&b, blocks[--n]);
    ck_assert_uint_eq(b.used, 0);
}
END_TEST

START_TEST(zero_limit_refuses_everything)
{
    struct budget b;
    budget_init(&b, 0);
    ck_assert_ptr_null(balloc(&b, 0));
    ck_assert_ptr_null(balloc(&b, 1));
}
END_TEST

/* A ReadRequest whose msg_ids is one packed field of n one-byte varints. */
static uint8_t *
packed_read_request(size_t n, size_t *len)
{
    uint8_t *buf = malloc(n + 16);
    ck_assert_ptr_nonnull(buf);
    size_t o = 0;
    buf[o++] = (1 << 3) | 2; /* field 1, length-delimited */
    size_t v = n;
    while (v >= 0x80) {
        buf[o++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    buf[o++] = (uint8_t)v;
    memset(buf + o, 0x01, n);
    *len = o + n;
    return buf;
}

START_TEST(unpack_expansion_refused)
{
    /* ~100 KB on the wire, 800 KB of uint64 once unpacked. */
    size_t len;
    uint8_t *wire = packed_read_request(100000, &len);
    ck_assert_uint_lt(len, 100010);

    struct budget b;
    budget_init(&b, 64 * 1024);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(&mbox__read_request__descriptor, &b.alloc, len, wire);
    ck_assert_ptr_null(m);
    ck_assert_uint_eq(b.used, 0); /* the partial message was given back */

    budget_init(&b, 8 * 1024 * 1024);
    Mbox__ReadRequest *r = mbox__read_request__unpack(&b.alloc, len, wire);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->n_msg_ids, 100000);
    ck_assert_uint_eq(r->msg_ids[0], 1);
    ck_assert_uint_eq(r->msg_ids[99999], 1);
    ck_assert_uint_ge(b.used, 100000 * sizeof(uint64_t));
    mbox__read_request__free_unpacked(r, &b.alloc);
    ck_assert_uint_eq(b.used, 0);
    free(wire);
}
END_TEST

START_TEST(unpack_unpacked_encoding_refused)
{
    /* The same list in the unpacked encoding protobuf-c itself writes. */
    uint64_t *ids = malloc(100000 * sizeof(*ids));
    ck_assert_ptr_nonnull(ids);
    for (size_t i = 0; i < 100000; i++)
        ids[i] = i % 100;
    Mbox__ReadRequest req = MBOX__READ_REQUEST__INIT;
    req.n_msg_ids = 100000;
    req.msg_ids = ids;
    size_t len = mbox__read_request__get_packed_size(&req);
    uint8_t *wire = malloc(len);
    ck_assert_ptr_nonnull(wire);
    ck_assert_uint_eq(mbox__read_request__pack(&req, wire), len);

    struct budget b;
    budget_init(&b, 64 * 1024);
    ck_assert_ptr_null(mbox__read_request__unpack(&b.alloc, len, wire));
    ck_assert_uint_eq(b.used, 0);

    budget_init(&b, 8 * 1024 * 1024);
    Mbox__ReadRequest *r = mbox__read_request__unpack(&b.alloc, len, wire);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->n_msg_ids, 100000);
    ck_assert_mem_eq(r->msg_ids, ids, 100000 * sizeof(*ids));
    mbox__read_request__free_unpacked(r, &b.alloc);
    ck_assert_uint_eq(b.used, 0);
    free(wire);
    free(ids);
}
END_TEST

START_TEST(unpack_small_message_fits)
{
    Mbox__Frame f = MBOX__FRAME__INIT;
    f.type = "login";
    f.token = "t";
    f.has_core_level = 1;
    f.core_level = 220819;
    uint8_t wire[64];
    size_t len = mbox__frame__pack(&f, wire);

    struct budget b;
    budget_init(&b, 4096);
    Mbox__Frame *g = mbox__frame__unpack(&b.alloc, len, wire);
    ck_assert_ptr_nonnull(g);
    ck_assert_str_eq(g->type, "login");
    ck_assert_str_eq(g->token, "t");
    ck_assert_uint_eq(g->core_level, 220819);
    ck_assert_uint_gt(b.used, sizeof(Mbox__Frame));
    mbox__frame__free_unpacked(g, &b.alloc);
    ck_assert_uint_eq(b.used, 0);

    /* Too small for even the message struct. */
    budget_init(&b, sizeof(Mbox__Frame));
    ck_assert_ptr_null(mbox__frame__unpack(&b.alloc, len, wire));
    ck_assert_uint_eq(b.used, 0);
}
END_TEST

START_TEST(unpack_every_limit_is_clean)
{
    /* Whatever the limit, unpack either succeeds or leaves nothing behind. */
    char *platforms[] = {"ios", "android", "web"};
    Mbox__Targeting t = MBOX__TARGETING__INIT;
    t.n_platforms = 3;
    t.platforms = platforms;
    Mbox__Notice n = MBOX__NOTICE__INIT;
    n.title = "title";
    n.has_content = 1;
    n.content.data = (uint8_t *)"content";
    n.content.len = 7;
    n.targeting = &t;
    uint8_t wire[256];
    size_t len = mbox__notice__pack(&n, wire);
    ck_assert_uint_lt(len, sizeof(wire));

    bool succeeded = false;
    for (size_t limit = 0; limit < 4096; limit += 8) {
        struct budget b;
        budget_init(&b, limit);
        Mbox__Notice *m = mbox__notice__unpack(&b.alloc, len, wire);
        if (m == NULL) {
            ck_assert_msg(!succeeded, "failed at %zu after succeeding below", limit);
            ck_assert_uint_eq(b.used, 0);
            continue;
        }
        succeeded = true;
        ck_assert_uint_le(b.used, limit);
        ck_assert_str_eq(m->targeting->platforms[2], "web");
        mbox__notice__free_unpacked(m, &b.alloc);
        ck_assert_uint_eq(b.used, 0);
    }
    ck_assert(succeeded);
}
END_TEST

static Suite *
budget_suite(void)
{
    Suite *s = suite_create("budget");
    TCase *tc = tcase_create("allocator");
    tcase_add_test(tc, init_sets_fields);
    tcase_add_test(tc, alloc_counts_and_free_returns);
    tcase_add_test(tc, alloc_fails_past_limit);
    tcase_add_test(tc, zero_limit_refuses_everything);
    suite_add_tcase(s, tc);

    tc = tcase_create("unpack");
    tcase_add_test(tc, unpack_expansion_refused);
    tcase_add_test(tc, unpack_unpacked_encoding_refused);
    tcase_add_test(tc, unpack_small_message_fits);
    tcase_add_test(tc, unpack_every_limit_is_clean);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(budget_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
