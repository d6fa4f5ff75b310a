/*
 * notify: after a commit, tell the recipients' long connections that their
 * mailbox has news (SPEC sections 2 and 6). Notifies are hints: a lost one
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

#include <stdint.h>

struct logic_worker;

/* Notifies mailboxes uids[i] of their newest msg_ids[i]; fire and forget. */
void notify_mailboxes(struct logic_worker *w, uint64_t app_id, const uint64_t *uids,
                      const uint64_t *msg_ids, int n);

#endif
