/*
 * session: lcsd's application protocol on top of WebSocket messages
 * (docs/design.md 5.5). A message is one Mbox__Frame: packed protobuf in a
 * binary message, the same fields as JSON (pbjson) in a text message.
 *
 *   client → server: login {token, device_id, platform, app_version,
 *                    core_level} (first, within login_timeout_ms), ping,
 *                    refresh {token}
 *   server → client: login_ack {ok, heartbeat_s, expires_at | reason}, pong,
 *                    notify {app_id, msg_id}, kick {reason},
 *                    refresh_ack {ok, expires_at | reason}
 *
 * A connection is answered in the format of its login frame. Frames that
 * do not decode close the connection with 1007; anything but a login
 * before the login, a bad token or device_id with 1008 (after a login_ack
 * with ok false). Unknown frame types after the login are ignored, so
 * newer clients can talk to older servers.
 *
 * A session lives as long as its token: at the token's expiry it is closed
 * with 4401 unless a refresh frame brought a newer token of the same
 * (app, uid) (another one closes it with 4403). A login beyond
 * per_user_sessions sessions of one user on this node kicks the oldest
 * (kick "too many sessions", close 4429). The login's platform and
 * core_level are kept for paced notify targeting (pace.h).
 */
#ifndef LCS_SESSION_H
#define LCS_SESSION_H

#include <stdbool.h>
#include <stdint.h>

struct lcs;
struct conn;

#define SESSION_DEVICE_MAX 128 /* device_id bytes; printable ASCII without spaces */

/* The route write of a login finished (or could not be sent): send the login_ack. */
void session_route_done(struct conn *c);

/* Sends a notify frame to an ACTIVE connection; false when not sent. */
bool session_notify(struct conn *c, uint64_t app_id, uint64_t msg_id);

/* An "n" line: notify conn_id if it is still (app, uid, device); else counted as dropped. */
void session_notify_line(struct lcs *l, uint64_t app, uint64_t uid, uint64_t msg_id,
                         const char *device, uint64_t conn_id);

/* A "k" line: the device logged in on another node; kick conn_id if it is still that device. */
void session_kick_line(struct lcs *l, uint64_t app, uint64_t uid, const char *device,
                       uint64_t conn_id);

#endif
