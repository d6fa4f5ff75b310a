/*
 * mboxtest: shared helpers of the mailbox black-box suites (mboxtest.h).
 */
#include "mboxtest.h"

#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "httpc.h"

uint64_t
mt_u64(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_string(v))
        return strtoull(json_string_value(v), NULL, 10);
    if (json_is_integer(v))
        return (uint64_t)json_integer_value(v);
    return 0;
}

void
mt_token(struct harness *h, int idx, uint64_t app, uint64_t uid, int ttl_s, bool guest, char *out,
         size_t outlen)
{
    char body[256];
    snprintf(body, sizeof(body),
             "{\"app_id\":\"%" PRIu64 "\",\"uid\":\"%" PRIu64 "\",\"ttl_s\":%d,\"guest\":%s}", app,
             uid, ttl_s, guest ? "true" : "false");
    int st;
    json_t *j = httpc_json("POST", h->logicd[idx].port[1], "/v1/tokens", h->server_key, body, &st);
    ck_assert_int_eq(st, 200);
    const char *t = json_string_value(json_object_get(j, "token"));
    ck_assert_ptr_nonnull(t);
    snprintf(out, outlen, "%s", t);
    json_decref(j);
}

json_t *
mt_send(struct harness *h, int idx, const char *body, int *status)
{
    return httpc_json("POST", h->logicd[idx].port[1], "/v1/messages", h->server_key, body, status);
}

uint64_t
mt_send1(struct harness *h, int idx, uint64_t app, uint64_t from, uint64_t to, const char *content)
{
    char body[1024];
    snprintf(body, sizeof(body),
             "{\"app_id\":\"%" PRIu64 "\",\"from_uid\":\"%" PRIu64 "\",\"to_uids\":[\"%" PRIu64
             "\"],\"content\":\"%s\"}",
             app, from, to, content);
    int st;
    json_t *j = mt_send(h, idx, body, &st);
    uint64_t id = 0;
    if (st == 200)
        id = mt_u64(json_array_get(json_object_get(j, "results"), 0), "msg_id");
    json_decref(j);
    return id;
}

uint64_t
mt_fanout1(struct harness *h, int idx, uint64_t app, uint64_t uid, const char *content)
{
    char body[1024], headers[256];
    int len = snprintf(body, sizeof(body),
                       "{\"app_id\":\"%" PRIu64
                       "\",\"from_uid\":\"1\",\"content\":\"%s\"}\n%" PRIu64 "\n",
                       app, content, uid);
    snprintf(headers, sizeof(headers),
             "Content-Type: text/plain\r\nAccept: application/json\r\nAuthorization: Bearer %s\r\n",
             h->server_key);
    struct httpc_resp r;
    int st =
        httpc_request("POST", h->logicd[idx].port[1], "/v1/fanout", headers, body, (size_t)len, &r);
    uint64_t id = 0;
    json_t *j = st == 200 && r.body != NULL ? json_loads(r.body, 0, NULL) : NULL;
    if (j != NULL)
        id = mt_u64(j, "first_msg_id");
    json_decref(j);
    httpc_resp_free(&r);
    return id;
}

json_t *
mt_sync(struct harness *h, int idx, const char *token, char *cursor, int limit, int *status)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"cursor\":\"%s\",\"limit\":%d}", cursor, limit);
    json_t *j = httpc_json("POST", h->logicd[idx].port[0], "/v1/sync", token, body, status);
    const char *c = json_string_value(json_object_get(j, "cursor"));
    if (*status == 200 && c != NULL)
        snprintf(cursor, 64, "%s", c);
    return j;
}

double
mt_metric(int port, const char *name, const char *labels_substr)
{
    struct httpc_resp r;
    double sum = 0;
    if (httpc_request("GET", port, "/metrics", NULL, NULL, 0, &r) == 200) {
        size_t nl = strlen(name);
        for (char *line = r.body; line && *line;
             line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
            if (strncmp(line, name, nl) != 0 || (line[nl] != '{' && line[nl] != ' '))
                continue;
            char *end = strchr(line, '\n');
            char save = end ? *end : 0;
            if (end)
                *end = '\0';
            if (labels_substr == NULL || strstr(line, labels_substr) != NULL) {
                char *sp = strrchr(line, ' ');
                if (sp)
                    sum += strtod(sp + 1, NULL);
            }
            if (end)
                *end = save;
        }
    }
    httpc_resp_free(&r);
    return sum;
}

int64_t
mt_sql_i64(struct harness *h, const char *sql)
{
    PGconn *c = PQconnectdb(h->pg_conninfo);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    int64_t v = PQntuples(r) > 0 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    PQfinish(c);
    return v;
}
