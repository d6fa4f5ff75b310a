/*
 * console: the operations console's side of logicd (internal listener):
 * its static files under /console/ and GET /v1/whoami, which tells the
 * page who the ops token belongs to. Everything the page changes goes
 * through the ops API like any other client.
 */
#ifndef LOGIC_CONSOLE_H
#define LOGIC_CONSOLE_H

#include <stdbool.h>
#include <stddef.h>

#include "http.h"

struct logic;

/* Largest file served from console_dir (bytes); larger files get 404. */
#define CONSOLE_MAX_FILE (2 * 1024 * 1024)
/* Longest file name under /console/. */
#define CONSOLE_MAX_NAME 64

/*
 * Sets app->console_dir from the console_dir key: the key itself when set
 * (it must be a directory), else console/www under the working directory
 * when it holds index.html (a checkout), else the directory meson installs
 * the console to. False with a message when a configured one is not a
 * directory.
 */
bool console_resolve_dir(struct logic *app, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/*
 * The Content-Type of a console file name, or NULL when the name is not
 * one the console serves: 1..CONSOLE_MAX_NAME bytes of [A-Za-z0-9._-]
 * starting with a letter or digit (so no "..", no hidden files, no '/')
 * with a known extension. Exposed for tests and the fuzz target.
 */
const char *console_file_type(const char *name);

/* GET/HEAD /console, /console/ and /console/{file}. */
void api_console(struct http_req *r, void *ctx);

/* GET /v1/whoami: {"name","role"} of the ops token. */
void api_whoami(struct http_req *r, void *ctx);

#endif
