/*
 * xff: the real client address behind a trusted reverse proxy (see xff.h).
 */
#include "xff.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#define XFF_ENTRY_MAX 64 /* "[v6]:port" fits well within */

static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* ::ffff:a.b.c.d becomes a.b.c.d, so one IPv4 rule covers both spellings. */
static void
unmap(struct xff_addr *a)
{
    if (a->family == AF_INET6 && memcmp(a->b, v4mapped, 12) == 0) {
        memmove(a->b, a->b + 12, 4);
        memset(a->b + 4, 0, 12);
        a->family = AF_INET;
    }
}

bool
xff_addr_parse(const char *s, size_t len, struct xff_addr *out)
{
    memset(out, 0, sizeof(*out));
    char buf[XFF_ENTRY_MAX];
    if (len == 0 || len >= sizeof(buf) || memchr(s, '\0', len) != NULL)
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (memchr(buf, ':', len) != NULL) {
        if (inet_pton(AF_INET6, buf, out->b) != 1)
            return false;
        out->family = AF_INET6;
        unmap(out);
        return true;
    }
    if (inet_pton(AF_INET, buf, out->b) != 1)
        return false;
    out->family = AF_INET;
    return true;
}

void
xff_addr_from_sockaddr(const struct sockaddr *sa, struct xff_addr *out)
{
    memset(out, 0, sizeof(*out));
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(out->b, &in->sin_addr, 4);
        out->family = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(out->b, &in6->sin6_addr, 16);
        out->family = AF_INET6;
        unmap(out);
    }
}

void
xff_addr_format(const struct xff_addr *a, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    if (a->family == 0 || inet_ntop(a->family, a->b, out, (socklen_t)outlen) == NULL)
        snprintf(out, outlen, "-");
}

static bool
is_space(char ch)
{
    return ch == ' ' || ch == '\t';
}

bool
xff_trust_parse(const char *spec, struct xff_trust *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (spec == NULL)
        return true;
    const char *p = spec;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',' || *p == '\n')
            p++;
        if (*p == '\0')
            return true;
        const char *s = p;
        while (*p && !(*p == ' ' || *p == '\t' || *p == ',' || *p == '\n'))
            p++;
        size_t len = (size_t)(p - s);
        const char *slash = memchr(s, '/', len);
        size_t alen = slash ? (size_t)(slash - s) : len;
        struct xff_net net = {0};
        if (!xff_addr_parse(s, alen, &net.addr)) {
            snprintf(err, errlen, "'%.*s' is not an IPv4 or IPv6 address or network",
                     (int)(len < 64 ? len : 64), s);
            return false;
        }
        int max = net.addr.family == AF_INET ? 32 : 128;
        net.prefix = max;
        if (slash != NULL) {
            int v = 0, digits = 0;
            for (const char *q = slash + 1; q < p; q++, digits++) {
                if (*q < '0' || *q > '9' || digits >= 3) {
                    digits = -1;
                    break;
                }
                v = v * 10 + (*q - '0');
            }
            if (digits <= 0 || v > max) {
                snprintf(err, errlen, "'%.*s': the prefix length must be 0..%d",
                         (int)(len < 64 ? len : 64), s, max);
                return false;
            }
            net.prefix = v;
        }
        /* Clear the host bits, so matching is a plain compare. */
        for (int bit = net.prefix; bit < max; bit++)
            net.addr.b[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
        if (out->n == XFF_MAX_NETS) {
            snprintf(err, errlen, "more than %d networks", XFF_MAX_NETS);
            return false;
        }
        out->nets[out->n++] = net;
    }
}

bool
xff_trusted(const struct xff_trust *t, const struct xff_addr *a)
{
    if (t == NULL || a->family == 0)
        return false;
    for (size_t i = 0; i < t->n; i++) {
        const struct xff_net *n = &t->nets[i];
        if (n->addr.family != a->family)
            continue;
        int full = n->prefix / 8, rest = n->prefix % 8;
        if (memcmp(n->addr.b, a->b, (size_t)full) != 0)
            continue;
        if (rest == 0 || ((a->b[full] ^ n->addr.b[full]) & (uint8_t)(0xff00u >> rest)) == 0)
            return true;
    }
    return false;
}

/* True for 1..5 digits: the port of "v4:port" or "[v6]:port" (only checked, never used). */
static bool
is_port(const char *s, size_t len)
{
    if (len == 0 || len > 5)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* Parses one trimmed X-Forwarded-For entry. */
static bool
parse_entry(const char *s, size_t len, struct xff_addr *out)
{
    if (len == 0 || len >= XFF_ENTRY_MAX)
        return false;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL)
            return false;
        size_t after = len - (size_t)(close + 1 - s);
        if (after > 0 && !(close[1] == ':' && is_port(close + 2, after - 1)))
            return false;
        return xff_addr_parse(s + 1, (size_t)(close - s - 1), out) && out->family == AF_INET6;
    }
    const char *colon = memchr(s, ':', len);
    if (colon != NULL && memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)) == NULL) {
        /* One colon: "a.b.c.d:port". */
        return is_port(colon + 1, len - (size_t)(colon + 1 - s)) &&
               xff_addr_parse(s, (size_t)(colon - s), out) && out->family == AF_INET;
    }
    return xff_addr_parse(s, len, out);
}

enum xff_result
xff_client(const struct xff_trust *t, const struct xff_addr *peer, const char *hdr, size_t len,
           struct xff_addr *client)
{
    *client = *peer;
    if (hdr == NULL || !xff_trusted(t, peer))
        return XFF_PEER;
    if (len > XFF_HEADER_MAX)
        return XFF_MALFORMED;
    /* Walk the entries right to left; the first one we do not trust is the client. */
    struct xff_addr a;
    size_t end = len;
    for (int hops = 0;; hops++) {
        if (hops == XFF_MAX_HOPS)
            return XFF_MALFORMED;
        size_t start = end;
        while (start > 0 && hdr[start - 1] != ',')
            start--;
        size_t s = start, e = end;
        while (s < e && is_space(hdr[s]))
            s++;
        while (e > s && is_space(hdr[e - 1]))
            e--;
        if (!parse_entry(hdr + s, e - s, &a)) {
            *client = *peer;
            return XFF_MALFORMED;
        }
        if (!xff_trusted(t, &a) || start == 0) {
            *client = a;
            return XFF_FORWARDED;
        }
        end = start - 1; /* before the comma */
    }
}
