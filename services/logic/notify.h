/*
 * notify: after a commit, tell the recipients' long connections that their
 * mailbox has news (docs/design.md 5.5). Notifies are hints: a lost one
 * costs latency, never a message, so every failure here is logged and
 * counted, never returned to the sender.
 *
 * Routes are written by lcsd: hash route:{app:uid}, field device_id,
 * value "<node> <conn_id>". For each mailbox logicd reads its routes and
 * publishes one line per device to the owning node's channel
 * lcs:{<node>}, batched per node per send:
 *     "n <app_id> <uid> <msg_id> <device_id> <conn_id>\n"
 * lcsd parses these lines (services/lcs) and writes notify frames.
 */
#ifndef LOGIC_NOTIFY_H
#define LOGIC_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

struct logic_worker;

/* Notifies mailboxes uids[i] of their newest msg_ids[i]; fire and forget. */
void notify_mailboxes(struct logic_worker *w, uint64_t app_id, const uint64_t *uids,
                      const uint64_t *msg_ids, int n);

/*
 * Paced notify (lcsd's pace.h): after a lifecycle action on a notice,
 * row `row` of res holding the notice's columns (sql.c NOTICE_COLS),
 * publishes on lcs:broadcast
 *   publish of a notify.mode = paced notice:
 *     "p <app> <notice> <msg_id> <rate_per_s> <start_us> <expire_at> <login_only>
 *        <min_core_level> <max_core_level> <platforms|->\n"
 *   stop, retract, delete: "x <app> <notice>\n"
 * and nothing for other actions (prepublish: the whitelist pulls at its
 * own pace). start_us is 0 when the notice is already active; for one
 * scheduled later it is start_at + 2 poll intervals, when every logicd's
 * cache shows it (one poll activates it, the others see it by their next),
 * so a notified client's pull finds it.
 */
void notify_pacing(struct logic_worker *w, const PGresult *res, int row, const char *action);

/* Formats the "p" line of notify_pacing into out; false when it does not fit. */
bool notify_pace_line(char *out, size_t outlen, uint64_t app, uint64_t notice, uint64_t msg_id,
                      int64_t rate, int64_t start_us, int64_t expire_at, bool login_only,
                      uint64_t min_core, uint64_t max_core, const char *platforms);

#endif
