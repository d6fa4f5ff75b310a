/*
 * httpc: blocking test HTTP client (httpc.h).
 */
#include "httpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int
connect_local(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
    if (rc != 0 && errno == EINTR) {
        /* The connection goes on in the background: wait for its outcome. */
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t len = sizeof(err);
        while ((rc = poll(&pfd, 1, 10000)) < 0 && errno == EINTR)
            ;
        rc = rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0 ? 0 : -1;
    }
    if (rc != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * Every socket here has SO_RCVTIMEO/SO_SNDTIMEO, and a socket call with a
 * timeout fails with EINTR when any signal reaches its thread, even one
 * whose default is to be ignored: a test thread that runs system() blocks
 * SIGCHLD, so the command's exit is delivered to another thread, maybe in
 * the middle of a request. EINTR is retried, never taken for "no answer".
 */
static bool
send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

int
httpc_request(const char *method, int port, const char *path, const char *headers, const void *body,
              size_t len, struct httpc_resp *resp)
{
    memset(resp, 0, sizeof(*resp));
    resp->status = -1;
    int fd = connect_local(port);
    if (fd < 0)
        return -1;
    char head[8192];
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     method, path, port, len, headers ? headers : "");
    if (n < 0 || (size_t)n >= sizeof(head) || !send_all(fd, head, (size_t)n) ||
        (len > 0 && !send_all(fd, body, len))) {
        close(fd);
        return -1;
    }
    size_t cap = 16384, got = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (got + 4096 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t r = recv(fd, buf + got, cap - got - 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    char *sep = strstr(buf, "\r\n\r\n");
    if (sep == NULL || sscanf(buf, "HTTP/1.%*d %d", &resp->status) != 1) {
        free(buf);
        resp->status = -1;
        return -1;
    }
    size_t hlen = (size_t)(sep - buf);
    resp->head = malloc(hlen + 1);
    memcpy(resp->head, buf, hlen);
    resp->head[hlen] = '\0';
    resp->body_len = got - hlen - 4;
    resp->body = malloc(resp->body_len + 1);
    memcpy(resp->body, sep + 4, resp->body_len);
    resp->body[resp->body_len] = '\0';
    free(buf);
    return resp->status;
}

void
httpc_resp_free(struct httpc_resp *resp)
{
    free(resp->head);
    free(resp->body);
    resp->head = resp->body = NULL;
}

const char *
httpc_header(const struct httpc_resp *resp, const char *name, char *buf, size_t len)
{
    if (resp->head == NULL)
        return NULL;
    size_t nl = strlen(name);
    for (const char *l = strstr(resp->head, "\r\n"); l != NULL; l = strstr(l + 2, "\r\n")) {
        const char *h = l + 2;
        if (strncasecmp(h, name, nl) == 0 && h[nl] == ':') {
            h += nl + 1;
            while (*h == ' ')
                h++;
            size_t vl = strcspn(h, "\r\n");
            if (vl >= len)
                vl = len - 1;
            memcpy(buf, h, vl);
            buf[vl] = '\0';
            return buf;
        }
    }
    return NULL;
}

json_t *
httpc_json(const char *method, int port, const char *path, const char *bearer, const char *body,
           int *status)
{
    char headers[1024];
    snprintf(headers, sizeof(headers), "Content-Type: application/json\r\n%s%s%s",
             bearer ? "Authorization: Bearer " : "", bearer ? bearer : "", bearer ? "\r\n" : "");
    struct httpc_resp r;
    *status = httpc_request(method, port, path, headers, body, body ? strlen(body) : 0, &r);
    json_t *j = r.body ? json_loads(r.body, 0, NULL) : NULL;
    httpc_resp_free(&r);
    return j;
}
