/*
 * fuzz_xff: xff_client on an arbitrary X-Forwarded-For value, and
 * xff_trust_parse on the same bytes as a trust list.
 *
 * Properties checked: no crash or sanitizer report; an untrusted peer is
 * always its own client; a trusted peer yields either itself (malformed
 * header) or an address that parses back from its own text form; a header
 * over XFF_HEADER_MAX is always malformed.
 */
#include "xff.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct xff_trust t;
    static bool init;
    char err[128];
    if (!init) {
        if (!xff_trust_parse("127.0.0.0/8 ::1 10.0.0.0/8 2001:db8::/32", &t, err, sizeof(err)))
            abort();
        init = true;
    }
    struct xff_addr trusted, untrusted, c;
    if (!xff_addr_parse("127.0.0.1", 9, &trusted) || !xff_addr_parse("192.0.2.1", 9, &untrusted))
        abort();
    const char *hdr = (const char *)data;

    if (xff_client(&t, &untrusted, hdr, size, &c) != XFF_PEER ||
        memcmp(&c, &untrusted, sizeof(c)) != 0)
        abort();
    enum xff_result r = xff_client(&t, &trusted, hdr, size, &c);
    if (r == XFF_PEER)
        abort(); /* a header is present */
    if (size > XFF_HEADER_MAX && r != XFF_MALFORMED)
        abort();
    if (r == XFF_MALFORMED && memcmp(&c, &trusted, sizeof(c)) != 0)
        abort();
    if (r == XFF_FORWARDED) {
        char text[XFF_ADDR_STRLEN];
        struct xff_addr back;
        xff_addr_format(&c, text, sizeof(text));
        if (!xff_addr_parse(text, strlen(text), &back) || memcmp(&back, &c, sizeof(c)) != 0)
            abort();
    }

    /* The same bytes as a trust list. */
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    struct xff_trust t2;
    if (xff_trust_parse(s, &t2, err, sizeof(err))) {
        for (size_t i = 0; i < t2.n; i++)
            if (!xff_trusted(&t2, &t2.nets[i].addr))
                abort(); /* a network contains its own base address */
    }
    free(s);
    return 0;
}
