/*
 * mbox: a command-line SDK client for the mailbox service.
 *
 *   mbox watch  holds the long connection to lcsd and prints every new item
 *               of the token's mailbox as one JSON line on stdout, syncing
 *               at login and on every notify;
 *   mbox sync   pulls once from the given cursor (or cursor file), prints
 *               the items and exits.
 *
 * Both URLs may be TLS (wss://, https://): the server's certificate is
 * verified against --cacert or the system trust store, and its name or IP
 * address against the URL's host.
 *
 * Logs (state changes, retries) go to stderr as key=value lines. Options
 * live in one table, which also prints --help.
 */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "log.h"
#include "mbox_client.h"

struct opts {
    char *ws_url;
    char *sdk_url;
    char *token;
    char *token_file;
    char *device;
    char *cursor_file;
    char *platform;
    char *app_version;
    char *core_level;
    char *cacert;
    char *log_level;
    char *limit;
    bool reconnect_after_kick;
    bool help;
};

struct opt_def {
    const char *name; /* --name */
    const char *arg;  /* NULL: a flag */
    const char *env;  /* default from this variable, NULL: none */
    const char *def;  /* default when neither is given, NULL: unset */
    size_t offset;
    const char *help;
};

static const struct opt_def opt_table[] = {
    {"ws", "URL", "MBOX_WS_URL", NULL, offsetof(struct opts, ws_url),
     "lcsd WebSocket URL, ws://host:port/ws or wss://host[:port]/ws (watch)"},
    {"sdk", "URL", "MBOX_SDK_URL", NULL, offsetof(struct opts, sdk_url),
     "logicd SDK listener, http://host:port or https://host[:port]"},
    {"cacert", "FILE", "MBOX_CACERT", NULL, offsetof(struct opts, cacert),
     "PEM CA certificates that verify wss:// and https:// servers (default: the system "
     "trust store)"},
    {"token", "T", "MBOX_TOKEN", NULL, offsetof(struct opts, token),
     "user token (POST /v1/tokens)"},
    {"token-file", "F", "MBOX_TOKEN_FILE", NULL, offsetof(struct opts, token_file),
     "read the token from F instead, and again when the session needs a new one "
     "(before it expires): whoever renews the token rewrites F"},
    {"device", "D", "MBOX_DEVICE", "mbox-cli", offsetof(struct opts, device),
     "device id sent at login; a second login of the same device kicks the first"},
    {"cursor-file", "F", NULL, NULL, offsetof(struct opts, cursor_file),
     "keep the sync cursor in F across runs (written atomically)"},
    {"platform", "P", NULL, NULL, offsetof(struct opts, platform),
     "client platform (ios, android, ...)"},
    {"app-version", "V", NULL, NULL, offsetof(struct opts, app_version),
     "client app version (8.0.25)"},
    {"core-level", "N", NULL, NULL, offsetof(struct opts, core_level),
     "client core level (220819)"},
    {"limit", "N", NULL, "100", offsetof(struct opts, limit), "items per sync page (1..1000)"},
    {"log-level", "L", "MBOX_LOG_LEVEL", "info", offsetof(struct opts, log_level),
     "debug, info, warn or error"},
    {"reconnect-after-kick", NULL, NULL, NULL, offsetof(struct opts, reconnect_after_kick),
     "keep reconnecting after a kick (default: stop, exit status 3)"},
    {"help", NULL, NULL, NULL, offsetof(struct opts, help), "print this help"},
};
#define NOPTS (sizeof(opt_table) / sizeof(opt_table[0]))

static void
usage(FILE *f)
{
    fprintf(f, "usage: mbox watch --ws URL --sdk URL --token T|--token-file F [--device D] "
               "[options]\n"
               "       mbox sync --sdk URL --token T|--token-file F [--cursor-file F] [options]\n"
               "       mbox --help\n\n"
               "watch  stay connected to lcsd; print each new item as a JSON line on stdout\n"
               "sync   pull once, print the items, exit\n\n"
               "options:\n");
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt_def *o = &opt_table[i];
        char lhs[64];
        snprintf(lhs, sizeof(lhs), "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        fprintf(f, "  %-26s %s", lhs, o->help);
        if (o->env)
            fprintf(f, " [env %s]", o->env);
        if (o->def)
            fprintf(f, " (default %s)", o->def);
        fputc('\n', f);
    }
    fprintf(f, "\nexit status: 0 stopped by SIGINT/SIGTERM or sync done, 1 usage, "
               "2 sync failed, 3 kicked, 4 a TLS certificate was refused (watch)\n");
}

/* Fills o from defaults, the environment, then argv[first..]. false on a usage error. */
static bool
parse_opts(int argc, char **argv, int first, struct opts *o)
{
    memset(o, 0, sizeof(*o));
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt_def *d = &opt_table[i];
        if (d->arg == NULL)
            continue;
        const char *v = d->env ? getenv(d->env) : NULL;
        if (v == NULL || *v == '\0')
            v = d->def;
        *(char **)((char *)o + d->offset) = (char *)v;
    }
    for (int a = first; a < argc; a++) {
        const char *s = argv[a];
        if (strncmp(s, "--", 2) != 0) {
            fprintf(stderr, "mbox: unexpected argument '%s'\n", s);
            return false;
        }
        s += 2;
        const char *eq = strchr(s, '=');
        size_t nl = eq ? (size_t)(eq - s) : strlen(s);
        const struct opt_def *d = NULL;
        for (size_t i = 0; i < NOPTS; i++)
            if (strlen(opt_table[i].name) == nl && strncmp(opt_table[i].name, s, nl) == 0)
                d = &opt_table[i];
        if (d == NULL) {
            fprintf(stderr, "mbox: unknown option '%s'\n", argv[a]);
            return false;
        }
        if (d->arg == NULL) {
            if (eq) {
                fprintf(stderr, "mbox: --%s takes no value\n", d->name);
                return false;
            }
            *(bool *)((char *)o + d->offset) = true;
            continue;
        }
        const char *v = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
        if (v == NULL) {
            fprintf(stderr, "mbox: --%s needs a value\n", d->name);
            return false;
        }
        *(char **)((char *)o + d->offset) = (char *)v;
    }
    return true;
}

struct app {
    struct event_base *base;
    struct mbox_client *client;
    int status;
    unsigned long printed;
    const char *token_file;
};

/* token_cb: the token file's current content (mbox_client ignores it when unchanged). */
static bool
on_token(char *out, size_t outlen, void *arg)
{
    struct app *a = arg;
    return a->token_file != NULL && mbox_token_load(a->token_file, out, outlen);
}

static void
on_item(const char *kind, const json_t *item, void *arg)
{
    struct app *a = arg;
    /* One line per item, flushed at once: the reader may be a pipe. */
    if (json_dumpf(item, stdout, JSON_COMPACT) != 0 || fputc('\n', stdout) == EOF ||
        fflush(stdout) != 0) {
        log_error("mbox_stdout_failed", "kind=%s", kind);
        a->status = 1;
        event_base_loopexit(a->base, NULL);
        return;
    }
    a->printed++;
}

static void
on_state(const char *state, void *arg)
{
    struct app *a = arg;
    log_info("mbox_state", "state=%s", state);
    if (strcmp(state, "stopped") == 0) {
        a->status = 3;
        event_base_loopexit(a->base, NULL);
    }
}

/* A certificate will not verify on the next attempt either: stop with status 4. */
static void
on_tls_error(const char *reason, void *arg)
{
    struct app *a = arg;
    fprintf(stderr, "mbox: %s\n", reason);
    a->status = 4;
    event_base_loopexit(a->base, NULL);
}

static void
on_kick(const char *reason, void *arg)
{
    /* mbox_client logs the reason; the state change that follows decides. */
}

static void
on_sync_done_oneshot(bool ok, void *arg)
{
    struct app *a = arg;
    log_info("mbox_sync_done", "ok=%d items=%lu", (int)ok, a->printed);
    a->status = ok ? 0 : 2;
    event_base_loopexit(a->base, NULL);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct app *a = arg;
    log_info("mbox_stopping", "signal=%d", (int)sig);
    event_base_loopexit(a->base, NULL);
}

int
main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    const char *cmd = argv[1];
    bool watch = strcmp(cmd, "watch") == 0;
    if (!watch && strcmp(cmd, "sync") != 0) {
        fprintf(stderr, "mbox: unknown command '%s' (watch, sync)\n", cmd);
        return 1;
    }
    struct opts o;
    if (!parse_opts(argc, argv, 2, &o)) {
        fprintf(stderr, "mbox: try 'mbox --help'\n");
        return 1;
    }
    if (o.help) {
        usage(stdout);
        return 0;
    }
    enum log_level lvl;
    if (!log_parse_level(o.log_level, &lvl)) {
        fprintf(stderr, "mbox: --log-level: '%s' is not debug, info, warn or error\n", o.log_level);
        return 1;
    }
    log_set_level(lvl);

    char err[256];
    struct mbox_url sdk, ws;
    if (o.sdk_url == NULL) {
        fprintf(stderr, "mbox: --sdk (or MBOX_SDK_URL) is required\n");
        return 1;
    }
    if (!mbox_url_parse(o.sdk_url, "http", &sdk, err, sizeof(err))) {
        fprintf(stderr, "mbox: --sdk '%s': %s\n", o.sdk_url, err);
        return 1;
    }
    if (watch) {
        if (o.ws_url == NULL) {
            fprintf(stderr, "mbox: --ws (or MBOX_WS_URL) is required\n");
            return 1;
        }
        if (!mbox_url_parse(o.ws_url, "ws", &ws, err, sizeof(err))) {
            fprintf(stderr, "mbox: --ws '%s': %s\n", o.ws_url, err);
            return 1;
        }
    }
    static char file_token[MBOX_TOKEN_MAX + 1];
    if (o.token_file != NULL) {
        if (!mbox_token_load(o.token_file, file_token, sizeof(file_token))) {
            fprintf(stderr, "mbox: --token-file '%s': no token (one line of at most %d bytes)\n",
                    o.token_file, MBOX_TOKEN_MAX);
            return 1;
        }
        o.token = file_token;
    }
    if (o.token == NULL || *o.token == '\0') {
        fprintf(stderr, "mbox: --token (or MBOX_TOKEN, or --token-file) is required\n");
        return 1;
    }
    char *end;
    long limit = strtol(o.limit, &end, 10);
    if (*o.limit == '\0' || *end != '\0' || limit < 1 || limit > 1000) {
        fprintf(stderr, "mbox: --limit must be 1..1000\n");
        return 1;
    }

    signal(SIGPIPE, SIG_IGN);
    struct app a = {.status = 0, .token_file = o.token_file};
    a.base = event_base_new();
    if (a.base == NULL) {
        fprintf(stderr, "mbox: cannot create the event loop\n");
        return 1;
    }
    struct mbox_client_config cfg = {
        .ws_host = watch ? ws.host : NULL,
        .ws_port = watch ? ws.port : 0,
        .ws_path = watch ? ws.path : NULL,
        .sdk_host = sdk.host,
        .sdk_port = sdk.port,
        .sdk_path = sdk.path,
        .ws_tls = watch && ws.tls,
        .sdk_tls = sdk.tls,
        .ca_file = o.cacert,
        .token = o.token,
        .device_id = o.device,
        .platform = o.platform,
        .app_version = o.app_version,
        .core_level = o.core_level,
        .cursor_file = o.cursor_file,
        .reconnect_after_kick = o.reconnect_after_kick,
        .sync_limit = (uint32_t)limit,
        .on_item = on_item,
        .on_state = on_state,
        .on_kick = on_kick,
        .on_tls_error = on_tls_error,
        .on_sync_done = watch ? NULL : on_sync_done_oneshot,
        .token_cb = o.token_file != NULL ? on_token : NULL,
        .arg = &a,
    };
    a.client = mbox_client_new(a.base, &cfg, err, sizeof(err));
    if (a.client == NULL) {
        fprintf(stderr, "mbox: %s\n", err);
        event_base_free(a.base);
        return 1;
    }
    struct event *sigint = evsignal_new(a.base, SIGINT, on_signal, &a);
    struct event *sigterm = evsignal_new(a.base, SIGTERM, on_signal, &a);
    if (sigint == NULL || sigterm == NULL || event_add(sigint, NULL) != 0 ||
        event_add(sigterm, NULL) != 0) {
        fprintf(stderr, "mbox: cannot install signal handlers\n");
        a.status = 1;
    } else if (watch) {
        if (!mbox_client_start(a.client)) {
            fprintf(stderr, "mbox: cannot start the client\n");
            a.status = 1;
        }
    } else {
        mbox_client_sync(a.client, true);
    }
    if (a.status == 0)
        event_base_dispatch(a.base);
    log_info("mbox_exit", "status=%d items=%lu", a.status, a.printed);
    mbox_client_free(a.client);
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    event_base_free(a.base);
    return a.status;
}
