/*
 * pace: paced notifies (see pace.h for the model).
 */
#include "pace.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include <event2/event.h>

#include "conn.h"
#include "lcs.h"
#include "log.h"
#include "metrics.h"
#include "session.h"

/* Connections looked at per pacer and tick at most, so other apps' connections cannot stall the
 * loop. */
#define PACE_SCAN_MAX 50000

struct pacer {
    struct pacer *next;
    struct lcs *l;
    uint64_t app, notice, msg_id;
    int64_t expire_us;        /* 0 = never */
    struct pub_notice target; /* targeting fields only */
    struct event *start_ev;   /* pending while the start time is ahead; NULL once walking */
    double rate;              /* notifies per second on this node */
    double credit;            /* notifies owed and not yet sent */
    int64_t last_ms;
    struct conn *cursor; /* next connection to look at; NULL = the walk is over */
    uint64_t limit_id;   /* connections from this id on arrived after the start */
    uint64_t sent;
    int64_t started_ms;
};

static void
pacer_log_end(const struct pacer *p, const char *why)
{
    log_info("pace_finished",
             "app=%" PRIu64 " notice=%" PRIu64 " sent=%" PRIu64 " elapsed_ms=%" PRId64 " why=%s",
             p->app, p->notice, p->sent, lcs_mono_ms() - p->started_ms, why);
}

static void
pacer_free(struct pacer *p)
{
    if (p->start_ev != NULL)
        event_free(p->start_ev);
    free(p);
}

/* The notice's targeting against the connection's login (pubfilter's rules). */
static bool
pacer_targets(const struct pacer *p, const struct conn *c)
{
    struct pub_viewer v = {
        .app_id = c->app_id,
        .uid = c->uid,
        .guest = c->guest,
        .platform = c->platform,
        .core_level = c->core_level,
    };
    return pub_targets(&p->target, &v);
}

/* Runs one pacer for one tick; false once it is finished. */
static bool
pacer_run(struct lcs *l, struct pacer *p, int64_t now_ms)
{
    if (p->start_ev != NULL)
        return true; /* waiting for its start time */
    if (p->expire_us != 0 && lcs_now_us() >= p->expire_us) {
        pacer_log_end(p, "expired");
        return false;
    }
    p->credit += p->rate * (double)(now_ms - p->last_ms) / 1000.0;
    p->last_ms = now_ms;
    /*
     * After a stall (a busy loop, a descheduled process) catch up on at most
     * 250 ms worth: the per-second rate holds, and a long stall does not turn
     * into a burst of pulls.
     */
    double max_credit = p->rate / 4.0;
    if (max_credit < 1.0)
        max_credit = 1.0;
    if (p->credit > max_credit)
        p->credit = max_credit;
    int scanned = 0;
    while (p->credit >= 1.0 && p->cursor != NULL && scanned < PACE_SCAN_MAX) {
        struct conn *c = p->cursor;
        if (c->id >= p->limit_id) {
            p->cursor = NULL;
            break;
        }
        /* Advance first: the notify may end c (a write error frees it after this tick). */
        p->cursor = c->all_next;
        scanned++;
        if (c->state == CONN_ACTIVE && c->app_id == p->app && pacer_targets(p, c) &&
            session_notify(c, p->app, p->msg_id)) {
            p->credit -= 1.0;
            p->sent++;
            metric_inc(l->m.paced_sent);
        }
    }
    if (p->cursor == NULL) {
        pacer_log_end(p, "done");
        return false;
    }
    return true;
}

static void
pace_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lcs *l = arg;
    int64_t now = lcs_mono_ms();
    struct pacer **pp = &l->pacers;
    bool walking = false;
    while (*pp != NULL) {
        struct pacer *p = *pp;
        if (pacer_run(l, p, now)) {
            walking = walking || p->start_ev == NULL;
            pp = &p->next;
        } else {
            *pp = p->next;
            pacer_free(p);
        }
    }
    if (!walking)
        event_del(l->pace_ev); /* waiting pacers re-arm it when their start comes */
}

/* Begins the walk over the connections there are now. */
static void
pacer_begin(struct lcs *l, struct pacer *p)
{
    p->credit = 0;
    p->last_ms = p->started_ms = lcs_mono_ms();
    p->cursor = conn_first(l);
    p->limit_id = conn_next_id(l);
    p->sent = 0;
    if (!event_pending(l->pace_ev, EV_TIMEOUT, NULL)) {
        struct timeval tv = {0, (int)l->cfg.paced_tick_ms * 1000};
        event_add(l->pace_ev, &tv);
    }
    log_info("pace_started",
             "app=%" PRIu64 " notice=%" PRIu64 " msg_id=%" PRIu64 " rate_per_s=%.0f"
             " connections=%zu platforms=%d min_core_level=%" PRIu64 " max_core_level=%" PRIu64
             " login_only=%d",
             p->app, p->notice, p->msg_id, p->rate, conn_count(l), p->target.nplatforms,
             p->target.min_core_level, p->target.max_core_level, (int)p->target.login_only);
}

/* The start time of a scheduled notice came. */
static void
pacer_start_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pacer *p = arg;
    event_free(p->start_ev);
    p->start_ev = NULL;
    pacer_begin(p->l, p);
}

void
pace_start(struct lcs *l, const struct pace_spec *spec)
{
    if (l->stopping || spec->rate_per_s == 0)
        return;
    if (l->pace_ev == NULL) {
        l->pace_ev = event_new(l->base, -1, EV_PERSIST, pace_tick_cb, l);
        if (l->pace_ev == NULL)
            return;
    }
    struct pacer *p;
    for (p = l->pacers; p != NULL; p = p->next) {
        if (p->app == spec->app && p->notice == spec->notice)
            break;
    }
    if (p == NULL) {
        p = calloc(1, sizeof(*p));
        if (p == NULL) {
            log_error("pace_failed", "app=%" PRIu64 " notice=%" PRIu64 " reason=out_of_memory",
                      spec->app, spec->notice);
            return;
        }
        p->next = l->pacers;
        l->pacers = p;
    }
    /* A repeated start (an edited notice published again) walks again from the start. */
    if (p->start_ev != NULL) {
        event_free(p->start_ev);
        p->start_ev = NULL;
    }
    p->l = l;
    p->app = spec->app;
    p->notice = spec->notice;
    p->msg_id = spec->msg_id;
    p->rate = (double)spec->rate_per_s;
    p->expire_us = spec->expire_us;
    p->target = spec->target;
    p->cursor = NULL;
    int64_t wait_us = spec->start_us - lcs_now_us();
    if (wait_us > 0) {
        /* Scheduled: nothing to pull before the notice activates; wait on a timer of its own,
         * so the tick timer runs only while something is being walked. */
        p->start_ev = evtimer_new(l->base, pacer_start_cb, p);
        struct timeval tv = {(time_t)(wait_us / 1000000), (suseconds_t)(wait_us % 1000000)};
        if (p->start_ev != NULL && evtimer_add(p->start_ev, &tv) == 0) {
            log_info("pace_scheduled", "app=%" PRIu64 " notice=%" PRIu64 " in_ms=%" PRId64, p->app,
                     p->notice, wait_us / 1000);
            return;
        }
        if (p->start_ev != NULL)
            event_free(p->start_ev);
        p->start_ev = NULL;
        log_error("pace_failed", "app=%" PRIu64 " notice=%" PRIu64 " reason=timer", p->app,
                  p->notice);
    }
    pacer_begin(l, p);
}

void
pace_stop(struct lcs *l, uint64_t app, uint64_t notice)
{
    for (struct pacer **pp = &l->pacers; *pp != NULL; pp = &(*pp)->next) {
        struct pacer *p = *pp;
        if (p->app == app && p->notice == notice) {
            *pp = p->next;
            pacer_log_end(p, p->start_ev != NULL ? "stopped_before_start" : "stopped");
            pacer_free(p);
            break;
        }
    }
    if (l->pacers == NULL && l->pace_ev != NULL)
        event_del(l->pace_ev);
}

void
pace_conn_unlinked(struct lcs *l, struct conn *c)
{
    for (struct pacer *p = l->pacers; p != NULL; p = p->next) {
        if (p->cursor == c)
            p->cursor = c->all_next;
    }
}

void
pace_free_all(struct lcs *l)
{
    while (l->pacers != NULL) {
        struct pacer *p = l->pacers;
        l->pacers = p->next;
        pacer_free(p);
    }
    if (l->pace_ev != NULL)
        event_free(l->pace_ev);
    l->pace_ev = NULL;
}
