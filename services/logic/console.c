/*
 * console: static files of the operations console and /v1/whoami
 * (console.h).
 *
 * Files are read with blocking calls on the worker's loop: they are a few
 * small local files, capped at CONSOLE_MAX_FILE, requested by a handful of
 * operators on the internal listener. Replies carry an ETag (size and
 * modification time) with Cache-Control: no-cache, so a browser
 * revalidates each time and an upgraded console is picked up at once,
 * while an unchanged file costs a 304.
 */
#include "console.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_io.h"
#include "log.h"
#include "logic.h"

#ifndef MBOX_CONSOLE_INSTALL_DIR
#define MBOX_CONSOLE_INSTALL_DIR "/usr/local/share/mbox/console"
#endif

/* Same-origin everything: no inline script, no third-party anything. */
#define CONSOLE_CSP                                                                                \
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "               \
    "form-action 'none'; frame-ancestors 'none'"

static bool
is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool
console_resolve_dir(struct logic *app, char *err, size_t errlen)
{
    const char *cfg = app->cfg.console_dir;
    const char *dir = MBOX_CONSOLE_INSTALL_DIR;
    struct stat st;
    if (cfg != NULL && cfg[0] != '\0') {
        if (!is_dir(cfg)) {
            snprintf(err, errlen, "key 'console_dir': '%s' is not a directory", cfg);
            return false;
        }
        dir = cfg;
    } else if (stat("console/www/index.html", &st) == 0) {
        dir = "console/www";
    }
    /* Absolute, so that a later chdir cannot change what is served. */
    char abs[PATH_MAX];
    if (realpath(dir, abs) == NULL)
        snprintf(abs, sizeof(abs), "%s", dir); /* not there (yet): 404s until it is */
    if (strlen(abs) >= sizeof(app->console_dir)) {
        snprintf(err, errlen, "key 'console_dir': path too long");
        return false;
    }
    memcpy(app->console_dir, abs, strlen(abs) + 1);
    return true;
}

/* Reads the regular file dir/name (at most CONSOLE_MAX_FILE bytes); NULL when it cannot. */
static char *
read_file(const char *dir, const char *name, size_t *len, struct stat *st)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
        return NULL;
    /* O_NONBLOCK: a FIFO or device named like an asset must not block the loop in open(). */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = NULL;
    if (fstat(fd, st) == 0 && S_ISREG(st->st_mode) && st->st_size <= CONSOLE_MAX_FILE) {
        buf = malloc((size_t)st->st_size + 1);
        size_t got = 0;
        while (buf != NULL && got < (size_t)st->st_size) {
            ssize_t n = read(fd, buf + got, (size_t)st->st_size - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                free(buf);
                buf = NULL;
                break;
            }
            got += (size_t)n;
        }
        *len = got;
    }
    close(fd);
    return buf;
}

void
api_console(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const char *path = http_req_path(r);
    if (strcmp(path, "/console") == 0) {
        http_req_add_header(r, "Location", "/console/");
        http_reply(r, 301, NULL, "", 0);
        return;
    }
    const char *name = http_req_param(r, "file");
    if (name == NULL)
        name = "index.html";
    const char *type = console_file_type(name);
    size_t len = 0;
    struct stat st;
    char *body = type != NULL ? read_file(w->app->console_dir, name, &len, &st) : NULL;
    if (body == NULL) {
        http_reply_error(r, 404, "not_found", "no console file '%.64s'", name);
        return;
    }
    char etag[64];
    snprintf(etag, sizeof(etag), "\"%zx-%" PRIx64 "\"", len,
             (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec);
    http_req_add_header(r, "ETag", etag);
    http_req_add_header(r, "Cache-Control", "no-cache");
    http_req_add_header(r, "X-Content-Type-Options", "nosniff");
    http_req_add_header(r, "Referrer-Policy", "no-referrer");
    http_req_add_header(r, "Content-Security-Policy", CONSOLE_CSP);
    const char *inm = http_req_header(r, "If-None-Match");
    if (inm != NULL && strcmp(inm, etag) == 0)
        http_reply(r, 304, NULL, "", 0);
    else
        http_reply(r, 200, type, body, len);
    free(body);
}

void
api_whoami(struct http_req *r, void *ctx)
{
    const struct logic_ops_token *op = api_auth_ops_as(r, ctx, LOGIC_ROLE_EDITOR);
    if (op == NULL)
        return;
    http_reply_json(r, 200,
                    json_pack("{s:s, s:s}", "name", op->name, "role", api_role_name(op->role)));
}
