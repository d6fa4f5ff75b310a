/*
 * xff: the real client address behind a trusted reverse proxy.
 *
 * A daemon behind nginx sees nginx as its TCP peer; nginx appends the
 * address it saw to X-Forwarded-For ("client, proxy1, proxy2"). Anyone can
 * send that header, so it is believed only when the peer is one of the
 * configured trusted proxies, and then only up to the right-most address
 * that is not itself a trusted proxy: everything left of that was written
 * by the client (or by proxies we do not know) and may be forged.
 *
 * The module owns the parsing of trust lists ("127.0.0.1/32 ::1/128",
 * CIDR or bare addresses, split by spaces or commas) and of the header
 * (at most XFF_HEADER_MAX bytes, at most XFF_MAX_HOPS entries; each entry
 * an IPv4 or IPv6 address, optionally "[v6]", "[v6]:port" or "v4:port").
 * A header that is too long or holds anything else is malformed and the
 * peer address is used. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) count
 * as IPv4, so "127.0.0.1/32" matches a peer on a dual-stack socket.
 * Pure functions, no allocation.
 */
#ifndef MBOX_XFF_H
#define MBOX_XFF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

#define XFF_HEADER_MAX  1024 /* longest X-Forwarded-For believed */
#define XFF_MAX_HOPS    32   /* most entries in it */
#define XFF_MAX_NETS    64   /* most networks in a trust list */
#define XFF_ADDR_STRLEN 46   /* INET6_ADDRSTRLEN */

struct xff_addr {
    int family;    /* AF_INET or AF_INET6; 0: unknown (a unix socket, a test) */
    uint8_t b[16]; /* network order; 4 bytes used for AF_INET */
};

struct xff_net {
    struct xff_addr addr; /* host bits cleared */
    int prefix;
};

struct xff_trust {
    struct xff_net nets[XFF_MAX_NETS];
    size_t n;
};

/*
 * Parses a trust list (empty or NULL: trust nobody). false with a message
 * in err on a bad entry, a prefix out of range or too many entries.
 */
bool xff_trust_parse(const char *spec, struct xff_trust *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* True when a lies in one of t's networks (never for family 0). */
bool xff_trusted(const struct xff_trust *t, const struct xff_addr *a);

/* Fills out from a socket address (family 0 for anything but IPv4/IPv6). */
void xff_addr_from_sockaddr(const struct sockaddr *sa, struct xff_addr *out);

/* Parses one address (no port, no brackets) of len bytes. */
bool xff_addr_parse(const char *s, size_t len, struct xff_addr *out)
    __attribute__((warn_unused_result));

/* Writes a as text into out (XFF_ADDR_STRLEN bytes); "-" for family 0. */
void xff_addr_format(const struct xff_addr *a, char *out, size_t outlen);

enum xff_result {
    XFF_PEER = 0,  /* peer untrusted or no header: the peer is the client */
    XFF_FORWARDED, /* the client came from the header */
    XFF_MALFORMED, /* trusted peer, but the header was unusable: the peer */
};

/*
 * The client address of a request whose TCP peer is peer and whose
 * X-Forwarded-For value is hdr[0..len) (hdr NULL: absent). See the top of
 * the file. When every entry is trusted, the left-most one is the client.
 */
enum xff_result xff_client(const struct xff_trust *t, const struct xff_addr *peer, const char *hdr,
                           size_t len, struct xff_addr *client);

#endif
