/*
 * listen: lcsd's WebSocket listening socket. Accepts in batches and hands
 * each socket to conn_accept(). When the process or the system runs out of
 * descriptors (EMFILE, ENFILE) or buffers, accepting pauses for
 * accept_backoff_ms instead of spinning on a socket that stays readable
 * (counted in mbox_lcs_accept_backoff_total).
 */
#ifndef LCS_LISTEN_H
#define LCS_LISTEN_H

#include <stddef.h>

struct lcs;
struct lcs_listener;

/* Opens host:port (SO_REUSEPORT) and starts accepting; NULL with err set on failure. */
struct lcs_listener *listener_new(struct lcs *l, const char *host, int port, char *err,
                                  size_t errlen);

/* Stops accepting and closes the socket (shutdown); the object stays until listener_free. */
void listener_stop(struct lcs_listener *ls);

void listener_free(struct lcs_listener *ls);

#endif
