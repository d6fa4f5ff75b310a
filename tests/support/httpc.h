/*
 * httpc: a small blocking HTTP/1.1 client on 127.0.0.1 for black-box tests.
 * One request per connection (Connection: close); the whole response is
 * read into memory.
 */
#ifndef MBOX_HTTPC_H
#define MBOX_HTTPC_H

#include <stddef.h>

#include <jansson.h>

struct httpc_resp {
    int status; /* -1 when no response */
    char *head; /* status line and headers, NUL-terminated */
    char *body; /* NUL-terminated */
    size_t body_len;
};

/*
 * Sends method path to 127.0.0.1:port with extra header lines (each ending
 * in \r\n, may be NULL) and body. Returns the status (or -1). Free with
 * httpc_resp_free in every case.
 */
int httpc_request(const char *method, int port, const char *path, const char *headers,
                  const void *body, size_t len, struct httpc_resp *resp);
void httpc_resp_free(struct httpc_resp *resp);

/* The value of a response header (copied into buf), or NULL. */
const char *httpc_header(const struct httpc_resp *resp, const char *name, char *buf, size_t len);

/*
 * JSON convenience: sends body (may be NULL) with Content-Type
 * application/json and an optional bearer token; returns the parsed body
 * (NULL when not JSON) and the status in *status.
 */
json_t *httpc_json(const char *method, int port, const char *path, const char *bearer,
                   const char *body, int *status);

#endif
