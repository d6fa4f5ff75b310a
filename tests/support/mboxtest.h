/*
 * mboxtest: helpers shared by the black-box suites of the mailbox API:
 * minting tokens, sending, syncing, reading metrics and rows.
 */
#ifndef MBOX_MBOXTEST_H
#define MBOX_MBOXTEST_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "harness.h"

/* Mints a user token through POST /v1/tokens on logicd idx; aborts the test on failure. */
void mt_token(struct harness *h, int idx, uint64_t app, uint64_t uid, int ttl_s, bool guest,
              char *out, size_t outlen);

/* POST /v1/messages with a JSON body; returns the parsed reply and *status. */
json_t *mt_send(struct harness *h, int idx, const char *body, int *status);

/* Sends one text message app/from -> to; returns its msg_id (0 on failure). */
uint64_t mt_send1(struct harness *h, int idx, uint64_t app, uint64_t from, uint64_t to,
                  const char *content);

/* POST /v1/fanout of one uid (JSON reply); returns its msg_id, 0 unless 200. */
uint64_t mt_fanout1(struct harness *h, int idx, uint64_t app, uint64_t uid, const char *content);

/* POST /v1/sync; cursor in/out (buffer of 64); returns the reply (caller decrefs). */
json_t *mt_sync(struct harness *h, int idx, const char *token, char *cursor, int limit,
                int *status);

/* A counter's value summed over all label sets matching name{...labels_substr...}. */
double mt_metric(int port, const char *name, const char *labels_substr);

/* Runs SQL on the harness database and returns the first column of the first row as int64. */
int64_t mt_sql_i64(struct harness *h, const char *sql);

/* Parses a JSON string-or-number field as uint64 (0 when absent). */
uint64_t mt_u64(const json_t *obj, const char *key);

#endif
