/*
 * retention: deletes expired private rows in bounded batches (expired rows
 * are never returned, docs/design.md 3.1: queries filter on expire_at, this
 * job reclaims the space). It runs on worker 0 only, every
 * retention_interval_s; each tick deletes at most RETENTION_MAX_BATCHES
 * batches of retention_batch rows so it never holds long locks or floods
 * the WAL.
 */
#ifndef LOGIC_RETENTION_H
#define LOGIC_RETENTION_H

struct logic_worker;
struct retention;

struct retention *retention_start(struct logic_worker *w);
void retention_free(struct retention *r);

#endif
