/*
 * wsc: a small blocking WebSocket client on 127.0.0.1 for black-box tests
 * of lcsd. Frames are built and parsed with lib/ws.h (client role: frames
 * sent are masked, frames received must not be). Raw bytes can be sent to
 * test how the server handles broken input.
 */
#ifndef MBOX_WSC_H
#define MBOX_WSC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ws.h"

struct wsc {
    int fd;
    int http_status; /* status of the handshake response (101 when open), -1 none */
    char *http_body; /* body of a non-101 response, NUL-terminated (or NULL) */
    struct ws_parser p;
    uint8_t *buf; /* received bytes not yet parsed */
    size_t len, cap;
    bool closed; /* a close frame arrived or the connection ended */
};

struct wsc_frame {
    int opcode;
    uint8_t *data; /* payload copy, NUL-terminated; free with wsc_frame_free */
    size_t len;
    uint16_t close_code; /* WS_OP_CLOSE: code (1005 if none) */
};

/*
 * Connects to 127.0.0.1:port and performs the opening handshake for path.
 * rcvbuf > 0 sets SO_RCVBUF before connecting (slow-reader tests). Returns
 * NULL when the TCP connection fails; otherwise check c->http_status (101 =
 * open, anything else is the server's HTTP error).
 */
struct wsc *wsc_connect_opts(int port, const char *path, int rcvbuf);

/* wsc_connect_opts(port, "/ws", 0); aborts the test unless the handshake gives 101. */
struct wsc *wsc_open(int port);

/* Sends request bytes as they are and reads the HTTP response (bad-handshake tests). */
struct wsc *wsc_connect_raw(int port, const char *request, size_t len);

/* Sends one masked frame (fin set). */
bool wsc_send(struct wsc *c, int opcode, const void *data, size_t len);
bool wsc_send_text(struct wsc *c, const char *text);

/* Sends bytes as they are. */
bool wsc_send_raw(struct wsc *c, const void *data, size_t len);

/* Reads one frame: 1 = frame in f, 0 = timeout, -1 = connection ended or protocol error. */
int wsc_read(struct wsc *c, int timeout_ms, struct wsc_frame *f);
void wsc_frame_free(struct wsc_frame *f);

/*
 * Reads frames until a text message and returns it parsed (pings answered,
 * pongs skipped); NULL on timeout, close or non-JSON. *close_code gets the
 * code when a close frame ended the wait (may be NULL).
 */
json_t *wsc_read_json(struct wsc *c, int timeout_ms, int *close_code);

/*
 * Waits for the server's close frame, skipping other frames. Returns its
 * code, 1006 when the connection ended without one, 0 on timeout.
 */
int wsc_wait_close(struct wsc *c, int timeout_ms);

/* Sends a JSON login and returns the login_ack (caller decrefs), NULL on none. */
json_t *wsc_login_json(struct wsc *c, const char *token, const char *device);

/* True when the server has closed the TCP connection within timeout_ms. */
bool wsc_wait_eof(struct wsc *c, int timeout_ms);

void wsc_free(struct wsc *c);

#endif
