/*
 * fanout: POST /v1/fanout, write diffusion of one message to a long uid
 * list (docs/design.md 5.3). It is the baseline a public notice is compared
 * with, and what a business server uses for "send to my followers".
 *
 * Body (text/plain): the first line is a JSON object with the message
 * fields of a send (app_id, from_uid, content, category, type, priority,
 * business_type, expire_s; no to_uids, no msgkey); every further line is
 * one uid in decimal. Empty lines are skipped; anything else is a 400 that
 * names the line, checked before anything is written.
 *
 * The rows are written by a dedicated thread with its own blocking libpq
 * connection (COPY cannot run in the pipeline mode the workers use), in
 * batches of FANOUT_BATCH uids: COPY into a temporary staging table, then
 * one INSERT that assigns msg_ids under each mailbox's header lock exactly
 * as a send does, one transaction per batch. A failure stops at a batch
 * boundary and the reply says how many rows were written. The recipients'
 * sync hints are invalidated per batch over a blocking Redis connection
 * (retried once on a fresh connection: the old one may be stale after a
 * Redis restart); mailboxes still not invalidated are handed to the job's
 * worker before the reply, whose dirty list replays them (hint.h).
 * Recipients are not notified: they see the message at their next pull.
 */
#ifndef LOGIC_FANOUT_H
#define LOGIC_FANOUT_H

#include <stdbool.h>

struct logic;
struct fanout;
struct http_req;

#define FANOUT_BATCH 50000

/* Starts the fanout thread. NULL on failure. */
struct fanout *fanout_start(struct logic *app);

/* Stops the thread after the job in progress and frees everything. */
void fanout_stop(struct fanout *f);

/* The handler (internal listener, server key). */
void api_fanout(struct http_req *r, void *ctx);

#endif
