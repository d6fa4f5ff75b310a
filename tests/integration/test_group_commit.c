/*
 * Integration: group commit of sends (services/logic/send_batch.h) against
 * real PostgreSQL, Redis and two logicd.
 *
 * Both logicd run with send_batch_inflight = 1 and a long wait bound
 * (LOGICD_* environment), so concurrent sends on one worker queue behind
 * the statement in flight and go out together: every test checks through
 * mbox_send_batches_total that statements of several sends really ran.
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "mboxtest.h"

static struct harness h;
#define APP 1

static void
setup(void)
{
    setenv("LOGICD_SEND_BATCH_INFLIGHT", "1", 1);
    setenv("LOGICD_SEND_BATCH_WAIT_US", "50000", 1);
    if (!harness_start(&h, HARNESS_LOGICD) || harness_add_logicd(&h, NULL) != 1) {
        fprintf(stderr, "harness failed\n");
        exit(1);
    }
}

static void
teardown(void)
{
    harness_stop(&h);
}

/* Statements that carried more than one send, on both logicd. */
static double
multi_send_batches(void)
{
    double n = 0;
    for (int i = 0; i < 2; i++) {
        int port = h.logicd[i].port[1];
        n += mt_metric(port, "mbox_send_batches_total", "") -
             mt_metric(port, "mbox_send_batches_total", "size=\"1\"");
    }
    return n;
}

static double
splits(void)
{
    return mt_metric(h.logicd[0].port[1], "mbox_send_batch_splits_total", "") +
           mt_metric(h.logicd[1].port[1], "mbox_send_batch_splits_total", "");
}

static void
msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The results of a send reply: msg_id and duplicate per uid (in reply order). */
struct sent {
    int n;
    uint64_t uid[2], msg_id[2];
    bool dup[2];
};

static bool
parse_sent(json_t *j, struct sent *s)
{
    json_t *res = json_object_get(j, "results");
    s->n = (int)json_array_size(res);
    if (s->n < 1 || s->n > 2)
        return false;
    for (int i = 0; i < s->n; i++) {
        json_t *r = json_array_get(res, (size_t)i);
        s->uid[i] = mt_u64(r, "uid");
        s->msg_id[i] = mt_u64(r, "msg_id");
        s->dup[i] = json_is_true(json_object_get(r, "duplicate"));
    }
    return true;
}

/* ---- many senders, same and different mailboxes, twin retries ---- */

#define HOT      5001
#define OWN_BASE 6000
#define TWINS    8 /* pairs of threads sending the same msgkeys */
#define PER      25

struct twin {
    int pair, side;
    struct sent got[PER];
    int status[PER];
};

static void *
twin_main(void *arg)
{
    struct twin *t = arg;
    for (int i = 0; i < PER; i++) {
        char body[512];
        /* Every third send also goes to the pair's own mailbox. */
        if (i % 3 == 0)
            snprintf(body, sizeof(body),
                     "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"%d\",\"%d\"],"
                     "\"content\":\"p%d-%d\",\"msgkey\":\"k-%d-%d\"}",
                     HOT, OWN_BASE + t->pair, t->pair, i, t->pair, i);
        else
            snprintf(body, sizeof(body),
                     "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"%d\"],"
                     "\"content\":\"p%d-%d\",\"msgkey\":\"k-%d-%d\"}",
                     HOT, t->pair, i, t->pair, i);
        json_t *j = mt_send(&h, t->side, body, &t->status[i]);
        if (t->status[i] != 200 || !parse_sent(j, &t->got[i]))
            t->got[i].n = 0;
        json_decref(j);
    }
    return NULL;
}

static int
cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* Every message of uid's mailbox, synced from "" through both logicd in
 * pages of 7, checking msg_id order; returns how many (ids in out). */
static int
stream(uint64_t uid, uint64_t *out, int cap)
{
    char tok[256], cur[64] = "";
    mt_token(&h, 0, APP, uid, 3600, false, tok, sizeof(tok));
    int n = 0;
    for (int page = 0;; page++) {
        int st;
        json_t *j = mt_sync(&h, page % 2, tok, cur, 7, &st);
        ck_assert_int_eq(st, 200);
        json_t *items = json_object_get(j, "items");
        for (size_t i = 0; i < json_array_size(items); i++) {
            uint64_t id = mt_u64(json_array_get(items, i), "msg_id");
            ck_assert_msg(n == 0 || id > out[n - 1], "msg_id order: %" PRIu64 " after %" PRIu64, id,
                          n ? out[n - 1] : 0);
            ck_assert_int_lt(n, cap);
            out[n++] = id;
        }
        bool more = json_is_true(json_object_get(j, "has_more"));
        json_decref(j);
        if (!more)
            return n;
    }
}

START_TEST(concurrent_batches_keep_every_message_once_in_order)
{
    double multi0 = multi_send_batches();
    static struct twin tw[TWINS * 2];
    pthread_t th[TWINS * 2];
    for (int i = 0; i < TWINS * 2; i++) {
        memset(&tw[i], 0, sizeof(tw[i]));
        tw[i].pair = i / 2;
        tw[i].side = i % 2; /* the twins go through different logicd */
        ck_assert_int_eq(pthread_create(&th[i], NULL, twin_main, &tw[i]), 0);
    }
    for (int i = 0; i < TWINS * 2; i++)
        pthread_join(th[i], NULL);
    ck_assert_msg(multi_send_batches() > multi0, "no statement carried more than one send");

    /* Twins: both acknowledged, with the same ids; one of them wrote. */
    uint64_t acked_hot[TWINS * PER];
    int nhot = 0;
    for (int p = 0; p < TWINS; p++) {
        struct twin *a = &tw[2 * p], *b = &tw[2 * p + 1];
        int own = 0;
        for (int i = 0; i < PER; i++) {
            ck_assert_int_eq(a->status[i], 200);
            ck_assert_int_eq(b->status[i], 200);
            ck_assert_int_eq(a->got[i].n, b->got[i].n);
            for (int k = 0; k < a->got[i].n; k++) {
                ck_assert_uint_eq(a->got[i].uid[k], b->got[i].uid[k]);
                ck_assert_msg(a->got[i].msg_id[k] == b->got[i].msg_id[k],
                              "key k-%d-%d: the retry got %" PRIu64 ", the first %" PRIu64, p, i,
                              b->got[i].msg_id[k], a->got[i].msg_id[k]);
                ck_assert_msg(a->got[i].dup[k] != b->got[i].dup[k],
                              "key k-%d-%d: exactly one twin writes", p, i);
                if (a->got[i].uid[k] == HOT)
                    acked_hot[nhot++] = a->got[i].msg_id[k];
                else
                    own++;
            }
        }
        /* The pair's own mailbox: its messages once each, in order. */
        uint64_t ids[PER * 2];
        ck_assert_int_eq(stream(OWN_BASE + (uint64_t)p, ids, PER * 2), own);
    }
    ck_assert_int_eq(nhot, TWINS * PER);
    qsort(acked_hot, (size_t)nhot, sizeof(uint64_t), cmp_u64);
    static uint64_t got[TWINS * PER * 2];
    int ngot = stream(HOT, got, TWINS * PER * 2);
    ck_assert_int_eq(ngot, nhot);
    for (int i = 0; i < nhot; i++)
        ck_assert_uint_eq(got[i], acked_hot[i]);
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM message WHERE uid = 5001 AND app_id = 1"),
                     TWINS * PER);
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM (SELECT msgkey FROM message WHERE "
                                    "uid = 5001 GROUP BY msgkey HAVING count(*) > 1) d"),
                     0);
}
END_TEST

/* ---- a batch with sends the database rejects ---- */

#define MIXED_THREADS 12
#define MIXED_PER     12

struct mixed {
    int id;
    int status[MIXED_PER];
    bool poison[MIXED_PER], invalid[MIXED_PER];
    uint64_t msg_id[MIXED_PER];
    char sqlstate_seen[MIXED_PER];
};

static void *
mixed_main(void *arg)
{
    struct mixed *m = arg;
    for (int i = 0; i < MIXED_PER; i++) {
        char body[512];
        m->poison[i] = (m->id + i) % 4 == 0;
        m->invalid[i] = (m->id + i) % 7 == 3;
        if (m->invalid[i])
            snprintf(body, sizeof(body), "{\"app_id\":\"1\",\"to_uids\":[],\"content\":\"x\"}");
        else
            snprintf(body, sizeof(body),
                     "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"%d\"],"
                     "\"content\":\"%s\"}",
                     7100 + m->id % 3, m->poison[i] ? "poison" : "fine");
        json_t *j = mt_send(&h, m->id % 2, body, &m->status[i]);
        struct sent s;
        if (m->status[i] == 200 && parse_sent(j, &s))
            m->msg_id[i] = s.msg_id[0];
        const char *msg =
            json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        m->sqlstate_seen[i] = msg != NULL && strstr(msg, "23514") != NULL;
        json_decref(j);
    }
    return NULL;
}

START_TEST(a_rejected_send_fails_alone)
{
    /* The database rejects one content: a constraint stands in for any
     * send PostgreSQL refuses inside a batch. */
    mt_sql_i64(&h, "ALTER TABLE message ADD CONSTRAINT test_no_poison "
                   "CHECK (content <> 'poison'::bytea); SELECT 1");
    double splits0 = splits(), multi0 = multi_send_batches();
    static struct mixed mx[MIXED_THREADS];
    pthread_t th[MIXED_THREADS];
    for (int i = 0; i < MIXED_THREADS; i++) {
        memset(&mx[i], 0, sizeof(mx[i]));
        mx[i].id = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, mixed_main, &mx[i]), 0);
    }
    for (int i = 0; i < MIXED_THREADS; i++)
        pthread_join(th[i], NULL);
    mt_sql_i64(&h, "ALTER TABLE message DROP CONSTRAINT test_no_poison; SELECT 1");
    ck_assert_msg(multi_send_batches() > multi0, "no statement carried more than one send");
    ck_assert_msg(splits() > splits0, "no batch was split (no poison shared a statement)");
    int fine = 0;
    for (int t = 0; t < MIXED_THREADS; t++) {
        for (int i = 0; i < MIXED_PER; i++) {
            if (mx[t].invalid[i]) {
                ck_assert_int_eq(mx[t].status[i], 400);
            } else if (mx[t].poison[i]) {
                ck_assert_int_eq(mx[t].status[i], 500);
                ck_assert_msg(mx[t].sqlstate_seen[i], "the error names the check violation");
            } else {
                ck_assert_int_eq(mx[t].status[i], 200);
                ck_assert_uint_gt(mx[t].msg_id[i], 0);
                char q[200];
                snprintf(q, sizeof(q),
                         "SELECT count(*) FROM message WHERE uid = %d AND app_id = 1 AND "
                         "msg_id = %" PRIu64 " AND content = 'fine'::bytea",
                         7100 + t % 3, mx[t].msg_id[i]);
                ck_assert_int_eq(mt_sql_i64(&h, q), 1);
                fine++;
            }
        }
    }
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM message WHERE uid BETWEEN 7100 AND 7102"),
                     fine);
}
END_TEST

/* ---- PostgreSQL restarted while batches are in flight ---- */

#define RESTART_THREADS 12
#define RESTART_MAX     400 /* keys per sender at most */

struct restarter {
    int id;
    uint64_t msg_id[RESTART_MAX];
    atomic_int n; /* keys acknowledged */
    int n503, bad_status;
};

static atomic_bool restart_stop;

static void *
restart_main(void *arg)
{
    struct restarter *r = arg;
    /* New keys until told to stop, each retried with its msgkey until
     * acknowledged (bounded: 60 s a key). */
    for (int i = 0; i < RESTART_MAX && !atomic_load(&restart_stop); i++) {
        char body[512];
        snprintf(body, sizeof(body),
                 "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"%d\"],"
                 "\"content\":\"r%d-%d\",\"msgkey\":\"r-%d-%d\"}",
                 8100 + r->id % 4, r->id, i, r->id, i);
        for (int attempt = 0; attempt < 600; attempt++) {
            int st;
            json_t *j = mt_send(&h, r->id % 2, body, &st);
            struct sent s;
            if (st == 200 && parse_sent(j, &s)) {
                r->msg_id[i] = s.msg_id[0];
                json_decref(j);
                break;
            }
            json_decref(j);
            if (st == 503)
                r->n503++;
            else
                r->bad_status = st;
            msleep(100);
        }
        if (r->msg_id[i] == 0)
            break; /* never acknowledged: the check below names it */
        atomic_store(&r->n, i + 1);
    }
    return NULL;
}

/* Waits (at most 60 s) until every sender has at least want keys acknowledged. */
static void
wait_acked(struct restarter *rs, int want)
{
    for (int k = 0; k < 3000; k++) {
        bool all = true;
        for (int i = 0; i < RESTART_THREADS; i++)
            all = all && atomic_load(&rs[i].n) >= want;
        if (all)
            return;
        msleep(20);
    }
}

START_TEST(a_restart_mid_batch_answers_503_and_retries_write_once)
{
    static struct restarter rs[RESTART_THREADS];
    pthread_t th[RESTART_THREADS];
    atomic_store(&restart_stop, false);
    for (int i = 0; i < RESTART_THREADS; i++) {
        memset(&rs[i], 0, sizeof(rs[i]));
        rs[i].id = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, restart_main, &rs[i]), 0);
    }
    /* Restart PostgreSQL under the senders, then let every one of them
     * get a few more sends through before they stop. */
    wait_acked(rs, 5);
    ck_assert(harness_pg_pause(&h));
    msleep(500);
    ck_assert(harness_pg_resume(&h));
    int after[RESTART_THREADS], most = 0;
    for (int i = 0; i < RESTART_THREADS; i++) {
        after[i] = atomic_load(&rs[i].n);
        most = after[i] > most ? after[i] : most;
    }
    wait_acked(rs, most + 5);
    atomic_store(&restart_stop, true);
    for (int i = 0; i < RESTART_THREADS; i++)
        pthread_join(th[i], NULL);
    int n503 = 0, total = 0, per_uid[4] = {0};
    for (int t = 0; t < RESTART_THREADS; t++) {
        ck_assert_msg(rs[t].bad_status == 0, "sender %d got status %d (only 200/503 expected)", t,
                      rs[t].bad_status);
        n503 += rs[t].n503;
        int n = atomic_load(&rs[t].n);
        ck_assert_msg(n > after[t], "sender %d: nothing acknowledged after the restart", t);
        ck_assert_msg(n == RESTART_MAX || rs[t].msg_id[n] == 0, "sender %d stopped early", t);
        total += n;
        per_uid[t % 4] += n;
    }
    /* Each acknowledged key: exactly one message, with the acknowledged
     * id (one query over all of them). */
    size_t cap = (size_t)total * 64 + 256, o = 0;
    char *q = malloc(cap);
    ck_assert_ptr_nonnull(q);
    o += (size_t)snprintf(q + o, cap - o, "SELECT count(*) FROM message m JOIN (VALUES ");
    const char *sep = "";
    for (int t = 0; t < RESTART_THREADS; t++) {
        for (int i = 0; i < atomic_load(&rs[t].n); i++, sep = ",")
            o += (size_t)snprintf(q + o, cap - o, "%s(%d, 'r-%d-%d', %" PRIu64 "::int8)", sep,
                                  8100 + t % 4, t, i, rs[t].msg_id[i]);
    }
    snprintf(q + o, cap - o,
             ") v(uid, k, id) ON m.uid = v.uid AND m.app_id = 1 AND "
             "m.msgkey = v.k AND m.msg_id = v.id");
    ck_assert_int_eq(mt_sql_i64(&h, q), total);
    free(q);
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM (SELECT msgkey FROM message WHERE "
                                    "uid BETWEEN 8100 AND 8103 GROUP BY msgkey "
                                    "HAVING count(*) > 1) d"),
                     0);
    ck_assert_msg(n503 > 0, "the restart answered no send 503 (it missed the load)");
    /* Nothing beyond the acknowledged keys was written (a send is retried
     * until acknowledged, so every written key is one of them). */
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM message WHERE uid BETWEEN 8100 AND 8103"),
                     total);
    /* Every mailbox stream is in order and complete. */
    for (int u = 0; u < 4; u++) {
        static uint64_t ids[RESTART_THREADS * RESTART_MAX];
        ck_assert_int_eq(stream(8100 + (uint64_t)u, ids, RESTART_THREADS * RESTART_MAX),
                         per_uid[u]);
    }
}
END_TEST

static Suite *
suite(void)
{
    Suite *s = suite_create("group_commit");
    TCase *tc = tcase_create("batches");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, concurrent_batches_keep_every_message_once_in_order);
    tcase_add_test(tc, a_rejected_send_fails_alone);
    tcase_add_test(tc, a_restart_mid_batch_answers_503_and_retries_write_once);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
