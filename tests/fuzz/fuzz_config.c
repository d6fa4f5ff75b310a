/*
 * fuzz_config: feeds arbitrary bytes to the config file parser as a config
 * body, with a schema holding keys of every type, then prints and frees the
 * result. The parser must never crash, leak or read past the text, whatever
 * the file holds (a config path pointing at the wrong file is the realistic
 * case).
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct fcfg {
    char *listen;
    char *dsn;
    int64_t threads;
    int64_t any;
    bool debug;
    bool tls;
};

static const struct cfg_key fkeys[] = {
    {"listen", CFG_STR, offsetof(struct fcfg, listen), "127.0.0.1:8080", "listener", 0, 0, false},
    {"dsn", CFG_STR, offsetof(struct fcfg, dsn), NULL, "dsn", 0, 0, false},
    {"threads", CFG_INT, offsetof(struct fcfg, threads), "4", "threads", 1, 64, false},
    {"any", CFG_INT, offsetof(struct fcfg, any), "0", "unbounded", 0, 0, false},
    {"debug", CFG_BOOL, offsetof(struct fcfg, debug), "false", "debug", 0, 0, true},
    {"tls", CFG_BOOL, offsetof(struct fcfg, tls), "on", "tls", 0, 0, false},
};

static const struct cfg_schema fschema = {"fuzz", "FUZZ_CONFIG_", fkeys,
                                          sizeof(fkeys) / sizeof(fkeys[0]), NULL};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Control bytes print as \xNN, which has no file syntax, so they cannot round-trip. */
static bool
has_control(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    }
    return false;
}

/* A config that loaded must print (as --check-config does) and load back the same. */
static void
check_round_trip(const struct fcfg *c)
{
    if (has_control(c->listen) || has_control(c->dsn))
        return;
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = open_memstream(&out, &outlen);
    if (f == NULL)
        return;
    cfg_print_values(&fschema, c, f);
    fclose(f);
    struct fcfg d;
    char err[256];
    memset(&d, 0, sizeof(d));
    if (!cfg_defaults(&fschema, &d, err, sizeof(err)))
        abort();
    if (!cfg_load_string(&fschema, &d, out, "printed", err, sizeof(err)) ||
        strcmp(c->listen, d.listen) != 0 || strcmp(c->dsn, d.dsn) != 0 || c->threads != d.threads ||
        c->any != d.any || c->debug != d.debug || c->tls != d.tls)
        abort();
    cfg_free(&fschema, &d);
    free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    /* The first byte picks the error buffer size, so truncation is exercised too. */
    char err[300];
    size_t errlen = size > 0 ? (size_t)data[0] % sizeof(err) : sizeof(err);

    struct fcfg c;
    memset(&c, 0, sizeof(c));
    if (!cfg_defaults(&fschema, &c, err, sizeof(err)))
        abort(); /* the schema above is valid */
    if (cfg_load_string(&fschema, &c, text, "fuzz.conf", err, errlen)) {
        check_round_trip(&c);
        char host[64];
        int port;
        if (cfg_parse_hostport(c.listen, host, sizeof(host), &port) &&
            (port < 1 || port > 65535 || strlen(host) >= sizeof(host)))
            abort();
    } else if (errlen > 0 && memchr(err, '\0', errlen) == NULL) {
        abort(); /* an error message is always terminated within errlen */
    }
    cfg_free(&fschema, &c);
    free(text);
    return 0;
}
