/*
 * sdnotify: sd_notify(3) messages, or nothing without libsystemd (see
 * sdnotify.h).
 */
#include "sdnotify.h"

#include <stdio.h>

#ifdef MBOX_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

bool
sdn_built_in(void)
{
#ifdef MBOX_HAVE_LIBSYSTEMD
    return true;
#else
    return false;
#endif
}

/* Sends one message; a daemon outside systemd gets 0 back and goes on. */
static void
send_msg(const char *msg)
{
#ifdef MBOX_HAVE_LIBSYSTEMD
    (void)sd_notify(0, msg);
#else
    (void)msg;
#endif
}

void
sdn_ready(const char *status)
{
    char msg[512];
    if (status != NULL)
        snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
    else
        snprintf(msg, sizeof(msg), "READY=1");
    send_msg(msg);
}

void
sdn_reloading(void)
{
    send_msg("RELOADING=1\nSTATUS=reloading the configuration");
}

void
sdn_stopping(const char *status)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=%s", status != NULL ? status : "stopping");
    send_msg(msg);
}

uint64_t
sdn_watchdog_usec(void)
{
#ifdef MBOX_HAVE_LIBSYSTEMD
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        return usec;
#endif
    return 0;
}

void
sdn_watchdog(void)
{
    send_msg("WATCHDOG=1");
}
