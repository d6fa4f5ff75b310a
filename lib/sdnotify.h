/*
 * sdnotify: tells systemd how a daemon is doing (sd_notify(3)) for units of
 * Type=notify: READY=1 once it serves, RELOADING=1 / READY=1 around a
 * SIGHUP reload, STOPPING=1 when it begins to shut down, WATCHDOG=1 pings
 * while its event loops turn.
 *
 * Built with libsystemd (meson option systemd, auto) these go to
 * $NOTIFY_SOCKET; without it, or when the daemon is not run by systemd
 * (no NOTIFY_SOCKET), every call does nothing. The functions may be called
 * from any thread.
 */
#ifndef MBOX_SDNOTIFY_H
#define MBOX_SDNOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* True when built with libsystemd. */
bool sdn_built_in(void);

/* READY=1 with a STATUS= line (NULL: none). */
void sdn_ready(const char *status);

/* RELOADING=1 (a SIGHUP reload began; sdn_ready() ends it). */
void sdn_reloading(void);

/* STOPPING=1 with a STATUS= line. */
void sdn_stopping(const char *status);

/*
 * The watchdog period systemd asked for (WatchdogSec=, through
 * WATCHDOG_USEC and WATCHDOG_PID), in microseconds; 0 when off.
 */
uint64_t sdn_watchdog_usec(void);

/* WATCHDOG=1: the process is alive. */
void sdn_watchdog(void);

#endif
