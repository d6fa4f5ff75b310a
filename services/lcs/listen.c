/*
 * listen: the WebSocket listener (see listen.h). A raw accept loop on one
 * event rather than evconnlistener, so the EMFILE back-off is ours.
 */
#include "listen.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "conn.h"
#include "http.h"
#include "lcs.h"
#include "log.h"
#include "metrics.h"

#define ACCEPT_BATCH 64 /* per readiness event, so accepting cannot starve the clients */

struct lcs_listener {
    struct lcs *l;
    int fd;
    struct event *ev;
    struct event *backoff_ev;
};

static void
accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    struct lcs_listener *ls = arg;
    struct lcs *l = ls->l;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO)
                continue;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                /* The socket stays readable: pause instead of spinning on it. */
                metric_inc(l->m.accept_backoff);
                log_warn("accept_backoff", "error=\"%s\" pause_ms=%lld connections=%zu",
                         strerror(e), (long long)l->cfg.accept_backoff_ms, conn_count(l));
                event_del(ls->ev);
                struct timeval tv = {(time_t)(l->cfg.accept_backoff_ms / 1000),
                                     (suseconds_t)(l->cfg.accept_backoff_ms % 1000) * 1000};
                evtimer_add(ls->backoff_ev, &tv);
                return;
            }
            log_error("accept_failed", "error=\"%s\"", strerror(e));
            return;
        }
        metric_inc(l->m.accepted);
        (void)conn_accept(l, fd);
    }
}

static void
backoff_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lcs_listener *ls = arg;
    if (ls->fd >= 0)
        event_add(ls->ev, NULL);
}

struct lcs_listener *
listener_new(struct lcs *l, const char *host, int port, char *err, size_t errlen)
{
    struct lcs_listener *ls = calloc(1, sizeof(*ls));
    if (ls == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ls->l = l;
    ls->fd = http_listen(host, port, err, errlen);
    if (ls->fd < 0) {
        free(ls);
        return NULL;
    }
    ls->ev = event_new(l->base, ls->fd, EV_READ | EV_PERSIST, accept_cb, ls);
    ls->backoff_ev = evtimer_new(l->base, backoff_cb, ls);
    if (ls->ev == NULL || ls->backoff_ev == NULL || event_add(ls->ev, NULL) != 0) {
        snprintf(err, errlen, "cannot create the accept event");
        listener_free(ls);
        return NULL;
    }
    return ls;
}

void
listener_stop(struct lcs_listener *ls)
{
    if (ls == NULL || ls->fd < 0)
        return;
    event_del(ls->ev);
    evtimer_del(ls->backoff_ev);
    close(ls->fd);
    ls->fd = -1;
}

void
listener_free(struct lcs_listener *ls)
{
    if (ls == NULL)
        return;
    if (ls->ev != NULL)
        event_free(ls->ev);
    if (ls->backoff_ev != NULL)
        event_free(ls->backoff_ev);
    if (ls->fd >= 0)
        close(ls->fd);
    free(ls);
}
