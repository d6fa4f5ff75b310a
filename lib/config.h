/*
 * config: one table of keys per daemon, filled from defaults, then a
 * `key = value` file, then environment variables.
 *
 * A daemon declares its keys once:
 *
 *   static const struct cfg_key logicd_keys[] = {
 *       {"sdk_listen", CFG_STR, offsetof(struct logicd_config, sdk_listen),
 *        "127.0.0.1:8080", "SDK listener address", 0, 0, false},
 *       ...
 *   };
 *
 * and everything else (parsing, validation, env override, --help, the
 * markdown reference in docs/config.md) is driven from that table, so the
 * documentation cannot drift from the code.
 *
 * Environment override: key `pg_dsn` of a schema with env_prefix "LOGICD_"
 * is read from LOGICD_PG_DSN. The environment wins over the file.
 *
 * File syntax: `key = value` per line; `#` starts a comment line; blank
 * lines are ignored; values may be wrapped in double quotes (then `#` and
 * surrounding spaces are kept). An unknown key, a malformed line, a bad
 * value or an out-of-range number is an error naming the file, line and key.
 */
#ifndef MBOX_CONFIG_H
#define MBOX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum cfg_type {
    CFG_STR,  /* char * (heap, owned by the target; freed by cfg_free) */
    CFG_INT,  /* int64_t, checked against [min, max] */
    CFG_BOOL, /* bool: true/false, yes/no, on/off, 1/0 */
    CFG_SECRET, /* like CFG_STR, but never printed (keys, tokens, passwords) */
};

struct cfg_key {
    const char *name;
    enum cfg_type type;
    size_t offset;    /* offsetof() into the target struct */
    const char *def;  /* default as text, parsed like a file value; NULL = empty string */
    const char *help; /* one line */
    int64_t min, max; /* CFG_INT range (inclusive); ignored when min == max == 0 */
    bool reloadable;  /* a SIGHUP applies a change (--help and docs/config.md say so) */
};

struct cfg_schema {
    const char *program;    /* "logicd" */
    const char *env_prefix; /* "LOGICD_" */
    const struct cfg_key *keys;
    size_t nkeys;
    /* --help: the daemon's own flags and signals, printed after the common
     * options (lines of "  --flag  what it does\n"); NULL: none */
    const char *usage;
};

/* Sets every key of target to its default. err gets a message on failure. */
bool cfg_defaults(const struct cfg_schema *s, void *target, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Reads a config file into target. Errors: "FILE:LINE: key 'k': reason". */
bool cfg_load_file(const struct cfg_schema *s, void *target, const char *path, char *err,
                   size_t errlen) __attribute__((warn_unused_result));

/* Parses config text (the file body) into target; name is used in errors. */
bool cfg_load_string(const struct cfg_schema *s, void *target, const char *text, const char *name,
                     char *err, size_t errlen) __attribute__((warn_unused_result));

/* Applies ENV_PREFIX + KEY overrides from the environment. */
bool cfg_apply_env(const struct cfg_schema *s, void *target, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Sets one key from text (used by the file and env paths). */
bool cfg_set(const struct cfg_schema *s, void *target, const char *key, const char *value,
             char *err, size_t errlen) __attribute__((warn_unused_result));

/* Frees the CFG_STR values held by target. */
void cfg_free(const struct cfg_schema *s, void *target);

/* Prints usage and the key table (name, type, default, env var, help). */
void cfg_print_help(const struct cfg_schema *s, FILE *out);

/* Prints the key table as a markdown section (docs/config.md is made of these). */
void cfg_print_markdown(const struct cfg_schema *s, FILE *out);

/*
 * Prints a sample config file: every key with its help as a comment and
 * its default, commented out, except required keys (help says "required"),
 * which are left uncommented and empty so the daemon refuses to start
 * until they are set (etc/mbox/ is made of these; --sample-config).
 */
void cfg_print_sample(const struct cfg_schema *s, FILE *out);

/* Prints `key = value` for every key (what --check-config shows). */
void cfg_print_values(const struct cfg_schema *s, const void *target, FILE *out);

/*
 * Command line handling shared by the daemons:
 *   -c/--config FILE, --help, --help-markdown, --version, --check-config,
 *   plus daemon-specific flags named in `extra` (e.g. "--migrate"), which are
 *   reported through *extra_set (bit i for extra[i]).
 * Loads defaults, then the file (if given), then the environment.
 * Returns CFG_RUN to continue, CFG_EXIT_OK after --help/--version/
 * --check-config succeeded, CFG_EXIT_FAIL after printing one error line.
 */
enum cfg_action { CFG_RUN, CFG_EXIT_OK, CFG_EXIT_FAIL };
enum cfg_action cfg_main(const struct cfg_schema *s, void *target, int argc, char **argv,
                         const char *const *extra, unsigned *extra_set);

/*
 * Loads a configuration afresh into target (defaults, then the file when
 * path is not NULL, then the environment), as cfg_main does: what a SIGHUP
 * reload reads. On failure target holds no strings and err says why.
 */
bool cfg_load(const struct cfg_schema *s, void *target, const char *path, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* The FILE of -c FILE / --config FILE / --config=FILE in argv, or NULL. */
const char *cfg_argv_path(int argc, char **argv);

/* True when key k has the same value in a and b. */
bool cfg_key_equal(const struct cfg_key *k, const void *a, const void *b);

/* Exchanges the values of key k between a and b (strings change owner). */
void cfg_key_swap(const struct cfg_key *k, void *a, void *b);

/* Splits "host:port" into host (static buffer of the caller) and port. */
bool cfg_parse_hostport(const char *s, char *host, size_t hostlen, int *port)
    __attribute__((warn_unused_result));

#endif
