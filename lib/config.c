/*
 * config: the table-driven configuration shared by the daemons (see config.h
 * for the file syntax and the order of the sources).
 *
 * Everything here runs once at startup, before any thread exists. The module
 * keeps no state of its own: the schema is const and every value lands in
 * the caller's target struct.
 *
 * A config file is trusted but can be wrong (a binary, a log file, a path
 * typo), so input is capped: the file at 1 MiB, a line and a value at 4096
 * bytes, and user text quoted back in an error is shortened and has its
 * control bytes escaped, so every error stays one readable line.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#ifndef MBOX_VERSION
#define MBOX_VERSION "dev"
#endif

#define CFG_MAX_FILE  (1024 * 1024)
#define CFG_MAX_LINE  4096
#define CFG_MAX_VALUE 4096
/* Key names stay short so env names and messages do too. */
#define CFG_MAX_NAME 64
/* Bytes of user text echoed in an error, and the buffer that holds them escaped. */
#define CFG_SHOW_MAX 64
#define CFG_SHOW_BUF (CFG_SHOW_MAX * 4 + 4)
/* Room for a message built by set_value() before a FILE:LINE prefix is added. */
#define CFG_MSG_BUF 1024
#define CFG_ENV_BUF 256
#define CFG_NO_KEY  SIZE_MAX

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats a message into err; err may be NULL when the caller wants none. */
static void
set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/*
 * Copies user text into buf (CFG_SHOW_BUF bytes) for an error message: at
 * most CFG_SHOW_MAX bytes, "..." when cut, control bytes as \xNN. A stray
 * binary file must still produce one line a human can read.
 */
static const char *
show(char *buf, const char *s)
{
    size_t o = 0, i = 0;
    for (; s[i] != '\0' && i < CFG_SHOW_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            snprintf(buf + o, CFG_SHOW_BUF - o, "\\x%02x", c);
            o += 4;
        } else {
            buf[o++] = (char)c;
        }
    }
    if (s[i] != '\0') {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

static bool
is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static char *
skip_blanks(char *p)
{
    while (is_blank(*p))
        p++;
    return p;
}

static void
trim_right(char *p)
{
    size_t n = strlen(p);
    while (n > 0 && is_blank(p[n - 1]))
        p[--n] = '\0';
}

static const char *
type_name(enum cfg_type t)
{
    switch (t) {
    case CFG_STR:
        return "string";
    case CFG_SECRET:
        return "secret";
    case CFG_INT:
        return "int";
    case CFG_BOOL:
        return "bool";
    }
    return "?";
}

static bool
has_range(const struct cfg_key *k)
{
    return !(k->min == 0 && k->max == 0);
}

/* The slot of key k inside target. The offsets come from offsetof(). */
static void *
slot(const struct cfg_key *k, void *target)
{
    return (char *)target + k->offset;
}

static const void *
cslot(const struct cfg_key *k, const void *target)
{
    return (const char *)target + k->offset;
}

/* Index of the key called name, or CFG_NO_KEY. Names are case-sensitive. */
static size_t
find_key(const struct cfg_schema *s, const char *name)
{
    for (size_t i = 0; i < s->nkeys; i++) {
        if (strcmp(s->keys[i].name, name) == 0)
            return i;
    }
    return CFG_NO_KEY;
}

/* Levenshtein distance for names up to CFG_MAX_NAME bytes, else SIZE_MAX. */
static size_t
edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > CFG_MAX_NAME || lb > CFG_MAX_NAME)
        return SIZE_MAX;
    size_t row[CFG_MAX_NAME + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] == b[j - 1] ? 0 : 1);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/*
 * Writes "unknown key 'x'" into buf, with a "did you mean" for a close
 * schema key: a typo such as pg_dns for pg_dsn is the usual cause.
 */
static void
unknown_key_msg(const struct cfg_schema *s, const char *name, char *buf, size_t len)
{
    char sb[CFG_SHOW_BUF];
    size_t best = SIZE_MAX, best_i = CFG_NO_KEY;
    size_t nlen = strlen(name);
    for (size_t i = 0; i < s->nkeys; i++) {
        size_t d = edit_distance(name, s->keys[i].name);
        /* Short names are all close to each other: only suggest real near misses. */
        if (d <= 2 && d < nlen && d < best) {
            best = d;
            best_i = i;
        }
    }
    if (best_i != CFG_NO_KEY)
        snprintf(buf, len, "unknown key '%s' (did you mean '%s'?)", show(sb, name),
                 s->keys[best_i].name);
    else
        snprintf(buf, len, "unknown key '%s'", show(sb, name));
}

enum int_parse { INT_OK, INT_BAD, INT_OVERFLOW };

/* Strict decimal: optional '-', digits only, no sign '+', no blanks, no overflow. */
static enum int_parse
parse_int(const char *s, int64_t *out)
{
    bool neg = false;
    if (*s == '-') {
        neg = true;
        s++;
    }
    if (*s == '\0')
        return INT_BAD;
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t acc = 0;
    bool overflow = false;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return INT_BAD;
        uint64_t d = (uint64_t)(*s - '0');
        if (acc > (limit - d) / 10)
            overflow = true; /* keep scanning: junk later still makes it INT_BAD */
        else
            acc = acc * 10 + d;
    }
    if (overflow)
        return INT_OVERFLOW;
    if (neg)
        *out = acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc;
    else
        *out = (int64_t)acc;
    return INT_OK;
}

/* true/false, yes/no, on/off, 1/0, any case. */
static bool
parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/*
 * Parses value for key k and stores it in target. On failure target is left
 * as it was and err gets "key 'k': reason". A CFG_STR slot receives a fresh
 * heap copy and its previous string is freed.
 */
static bool
set_value(const struct cfg_key *k, void *target, const char *value, char *err, size_t errlen)
{
    char sb[CFG_SHOW_BUF];
    if (strnlen(value, CFG_MAX_VALUE + 1) > CFG_MAX_VALUE) {
        set_err(err, errlen, "key '%s': value longer than %d bytes", k->name, CFG_MAX_VALUE);
        return false;
    }
    switch (k->type) {
    case CFG_STR:
    case CFG_SECRET: {
        char *copy = strdup(value);
        if (copy == NULL) {
            set_err(err, errlen, "key '%s': out of memory", k->name);
            return false;
        }
        char **p = slot(k, target);
        free(*p);
        *p = copy;
        return true;
    }
    case CFG_INT: {
        int64_t v = 0;
        switch (parse_int(value, &v)) {
        case INT_OK:
            break;
        case INT_BAD:
            set_err(err, errlen, "key '%s': '%s' is not an integer", k->name, show(sb, value));
            return false;
        case INT_OVERFLOW:
            set_err(err, errlen, "key '%s': '%s' does not fit in 64 bits", k->name,
                    show(sb, value));
            return false;
        }
        if (has_range(k) && (v < k->min || v > k->max)) {
            set_err(err, errlen,
                    "key '%s': value %" PRId64 " out of range [%" PRId64 ", %" PRId64 "]", k->name,
                    v, k->min, k->max);
            return false;
        }
        *(int64_t *)slot(k, target) = v;
        return true;
    }
    case CFG_BOOL: {
        bool b;
        if (!parse_bool(value, &b)) {
            set_err(err, errlen,
                    "key '%s': '%s' is not a boolean (true/false, yes/no, on/off, 1/0)", k->name,
                    show(sb, value));
            return false;
        }
        *(bool *)slot(k, target) = b;
        return true;
    }
    }
    set_err(err, errlen, "key '%s': unknown type %d", k->name, (int)k->type);
    return false;
}

/*
 * Catches schema mistakes before they reach a user: names must be short
 * [a-z0-9_] (they become env names and appear in messages), unique, with a
 * known type and a sane range.
 */
static bool
check_schema(const struct cfg_schema *s, char *err, size_t errlen)
{
    if (s->nkeys > 0 && s->keys == NULL) {
        set_err(err, errlen, "schema: %zu keys but no table", s->nkeys);
        return false;
    }
    for (size_t i = 0; i < s->nkeys; i++) {
        const struct cfg_key *k = &s->keys[i];
        char sb[CFG_SHOW_BUF];
        if (k->name == NULL || k->name[0] == '\0') {
            set_err(err, errlen, "schema: key %zu has no name", i);
            return false;
        }
        if (strlen(k->name) > CFG_MAX_NAME ||
            strspn(k->name, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(k->name)) {
            set_err(err, errlen, "schema: key '%s': name must be 1-%d of [a-z0-9_]",
                    show(sb, k->name), CFG_MAX_NAME);
            return false;
        }
        if (k->type != CFG_STR && k->type != CFG_SECRET && k->type != CFG_INT &&
            k->type != CFG_BOOL) {
            set_err(err, errlen, "schema: key '%s': unknown type %d", k->name, (int)k->type);
            return false;
        }
        if (k->type == CFG_INT && k->min > k->max) {
            set_err(err, errlen, "schema: key '%s': min %" PRId64 " > max %" PRId64, k->name,
                    k->min, k->max);
            return false;
        }
        if (find_key(s, k->name) != i) {
            set_err(err, errlen, "schema: key '%s' declared twice", k->name);
            return false;
        }
    }
    return true;
}

/* Sets every CFG_STR slot to NULL without freeing: the target is new. */
static void
clear_strings(const struct cfg_schema *s, void *target)
{
    for (size_t i = 0; i < s->nkeys; i++) {
        if (s->keys[i].type == CFG_STR || s->keys[i].type == CFG_SECRET)
            *(char **)slot(&s->keys[i], target) = NULL;
    }
}

/*
 * Treats target as new: its string slots are overwritten, not freed (call
 * cfg_free first to reuse a filled target). Whatever the outcome, target is
 * left safe for cfg_free; on failure (a bad schema or default, i.e. a bug)
 * it holds no strings at all.
 */
bool
cfg_defaults(const struct cfg_schema *s, void *target, char *err, size_t errlen)
{
    if (!check_schema(s, err, errlen))
        return false;
    clear_strings(s, target);
    for (size_t i = 0; i < s->nkeys; i++) {
        const struct cfg_key *k = &s->keys[i];
        char msg[CFG_MSG_BUF];
        if (!set_value(k, target, k->def != NULL ? k->def : "", msg, sizeof(msg))) {
            set_err(err, errlen, "built-in default: %s", msg);
            cfg_free(s, target);
            return false;
        }
    }
    return true;
}

/*
 * Decodes a double-quoted value in place: v points at the opening quote.
 * Only \" and \\ are escapes; anything else after a backslash is refused so
 * a Windows-style path is noticed rather than silently changed. Only blanks
 * may follow the closing quote. Returns NULL or the reason it failed.
 */
static const char *
unquote(char *v)
{
    char *out = v;
    const char *in = v + 1;
    for (;;) {
        if (*in == '\0')
            return "unterminated quoted value";
        if (*in == '"')
            break;
        if (*in == '\\') {
            in++;
            if (*in == '\0')
                return "unterminated quoted value";
            if (*in != '"' && *in != '\\')
                return "unknown escape in quoted value (only \\\" and \\\\ are allowed)";
        }
        *out++ = *in++;
    }
    in++;
    while (is_blank(*in))
        in++;
    if (*in != '\0')
        return "unexpected text after the closing quote";
    *out = '\0';
    return NULL;
}

/*
 * Applies one line (already NUL-terminated, without its newline). seen[i]
 * holds the line that set key i, so a key given twice is reported with both
 * lines instead of silently taking the last one.
 */
static bool
parse_line(const struct cfg_schema *s, void *target, char *line, const char *name, size_t lineno,
           size_t *seen, char *err, size_t errlen)
{
    char sb[CFG_SHOW_BUF];
    char msg[CFG_MSG_BUF];
    char *p = skip_blanks(line);
    if (*p == '\0' || *p == '#')
        return true;
    char *eq = strchr(p, '=');
    if (eq == NULL) {
        set_err(err, errlen, "%s:%zu: expected 'key = value', got '%s'", name, lineno, show(sb, p));
        return false;
    }
    *eq = '\0';
    char *key = p;
    trim_right(key);
    if (*key == '\0') {
        set_err(err, errlen, "%s:%zu: missing key before '='", name, lineno);
        return false;
    }
    size_t idx = find_key(s, key);
    if (idx == CFG_NO_KEY) {
        unknown_key_msg(s, key, msg, sizeof(msg));
        set_err(err, errlen, "%s:%zu: %s", name, lineno, msg);
        return false;
    }
    const struct cfg_key *k = &s->keys[idx];
    if (seen[idx] != 0) {
        set_err(err, errlen, "%s:%zu: duplicate key '%s' (first set on line %zu)", name, lineno,
                k->name, seen[idx]);
        return false;
    }
    seen[idx] = lineno;
    char *value = skip_blanks(eq + 1);
    if (*value == '"') {
        const char *why = unquote(value);
        if (why != NULL) {
            set_err(err, errlen, "%s:%zu: key '%s': %s", name, lineno, k->name, why);
            return false;
        }
    } else {
        trim_right(value);
    }
    if (!set_value(k, target, value, msg, sizeof(msg))) {
        set_err(err, errlen, "%s:%zu: %s", name, lineno, msg);
        return false;
    }
    return true;
}

/*
 * Applies the text line by line and stops at the first error. On failure
 * target may hold some of the text's values; it stays safe for cfg_free.
 */
bool
cfg_load_string(const struct cfg_schema *s, void *target, const char *text, const char *name,
                char *err, size_t errlen)
{
    if (name == NULL)
        name = "<string>";
    size_t *seen = calloc(s->nkeys > 0 ? s->nkeys : 1, sizeof(*seen));
    if (seen == NULL) {
        set_err(err, errlen, "%s: out of memory", name);
        return false;
    }
    /* Editors on some systems start the file with a UTF-8 byte order mark. */
    const char *p = text;
    if (strncmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    char line[CFG_MAX_LINE + 1];
    size_t lineno = 0;
    bool ok = true;
    while (ok && *p != '\0') {
        lineno++;
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        const char *next = nl != NULL ? nl + 1 : p + len;
        if (len > 0 && p[len - 1] == '\r')
            len--;
        if (len > CFG_MAX_LINE) {
            set_err(err, errlen, "%s:%zu: line longer than %d bytes", name, lineno, CFG_MAX_LINE);
            ok = false;
            break;
        }
        memcpy(line, p, len);
        line[len] = '\0';
        ok = parse_line(s, target, line, name, lineno, seen, err, errlen);
        p = next;
    }
    free(seen);
    return ok;
}

/*
 * Reads the whole file (refusing more than 1 MiB or a NUL byte, the marks of
 * a wrong file) and applies it with cfg_load_string.
 */
bool
cfg_load_file(const struct cfg_schema *s, void *target, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        /* Startup is single-threaded, so strerror's buffer is not shared. */
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return false;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            set_err(err, errlen, "%s: is a directory", path);
            fclose(f);
            return false;
        }
        if (S_ISREG(st.st_mode) && st.st_size > CFG_MAX_FILE) {
            set_err(err, errlen, "%s: file larger than %d bytes", path, CFG_MAX_FILE);
            fclose(f);
            return false;
        }
    }
    /* Read one byte past the cap so a growing file or a pipe is caught too. */
    char *buf = malloc(CFG_MAX_FILE + 2);
    if (buf == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        fclose(f);
        return false;
    }
    size_t n = fread(buf, 1, CFG_MAX_FILE + 1, f);
    bool read_failed = ferror(f) != 0;
    int read_errno = errno;
    fclose(f);
    if (read_failed) {
        set_err(err, errlen, "%s: cannot read: %s", path, strerror(read_errno));
        free(buf);
        return false;
    }
    if (n > CFG_MAX_FILE) {
        set_err(err, errlen, "%s: file larger than %d bytes", path, CFG_MAX_FILE);
        free(buf);
        return false;
    }
    buf[n] = '\0';
    const char *nul = memchr(buf, '\0', n);
    if (nul != NULL) {
        size_t lineno = 1;
        for (const char *q = buf; q < nul; q++)
            lineno += *q == '\n';
        set_err(err, errlen, "%s:%zu: NUL byte (not a text file?)", path, lineno);
        free(buf);
        return false;
    }
    bool ok = cfg_load_string(s, target, buf, path, err, errlen);
    free(buf);
    return ok;
}

/* Builds ENV_PREFIX + upper-cased key name into buf. */
static bool
env_name(const struct cfg_schema *s, const struct cfg_key *k, char *buf, size_t len)
{
    const char *prefix = s->env_prefix != NULL ? s->env_prefix : "";
    int n = snprintf(buf, len, "%s%s", prefix, k->name);
    if (n < 0 || (size_t)n >= len)
        return false;
    for (char *p = buf + strlen(prefix); *p != '\0'; p++) {
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    }
    return true;
}

/*
 * Applies PREFIX_KEY variables. A variable that is set but empty counts: it
 * sets a string to "" (and is an error for an int or a bool). Env values are
 * taken verbatim: no trimming and no quotes, the shell already did that.
 */
bool
cfg_apply_env(const struct cfg_schema *s, void *target, char *err, size_t errlen)
{
    for (size_t i = 0; i < s->nkeys; i++) {
        const struct cfg_key *k = &s->keys[i];
        char name[CFG_ENV_BUF];
        if (!env_name(s, k, name, sizeof(name))) {
            set_err(err, errlen, "environment: variable name for key '%s' is too long", k->name);
            return false;
        }
        const char *v = getenv(name);
        if (v == NULL)
            continue;
        char msg[CFG_MSG_BUF];
        if (!set_value(k, target, v, msg, sizeof(msg))) {
            set_err(err, errlen, "environment %s: %s", name, msg);
            return false;
        }
    }
    return true;
}

/* Sets one key by name; on failure the previous value is kept. */
bool
cfg_set(const struct cfg_schema *s, void *target, const char *key, const char *value, char *err,
        size_t errlen)
{
    size_t idx = find_key(s, key);
    if (idx == CFG_NO_KEY) {
        char msg[CFG_MSG_BUF];
        unknown_key_msg(s, key, msg, sizeof(msg));
        set_err(err, errlen, "%s", msg);
        return false;
    }
    return set_value(&s->keys[idx], target, value, err, errlen);
}

/* Frees every string and sets its slot to NULL, so a second call is harmless. */
void
cfg_free(const struct cfg_schema *s, void *target)
{
    for (size_t i = 0; i < s->nkeys; i++) {
        if (s->keys[i].type != CFG_STR && s->keys[i].type != CFG_SECRET)
            continue;
        char **p = slot(&s->keys[i], target);
        free(*p);
        *p = NULL;
    }
}

/* A string needs quotes to read back the same: empty, edge blanks, a leading quote, control bytes.
 */
static bool
needs_quotes(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || is_blank(v[0]) || is_blank(v[n - 1]) || v[0] == '"')
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c == 0x7f)
            return true;
    }
    return false;
}

/*
 * Prints a string in file syntax. Control bytes have no file syntax; they
 * are shown as \xNN (which the parser refuses) rather than breaking the line.
 */
static void
print_str(FILE *out, const char *v)
{
    if (!needs_quotes(v)) {
        fputs(v, out);
        return;
    }
    fputc('"', out);
    for (const char *p = v; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(out, "\\x%02x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

/* Prints text as "# " comment lines of at most 78 columns, broken at spaces. */
static void
print_comment(FILE *out, const char *text)
{
    const size_t width = 76;
    while (*text != '\0') {
        size_t len = strlen(text);
        if (len > width) {
            len = width;
            while (len > 0 && text[len] != ' ')
                len--;
            if (len == 0)
                len = strcspn(text, " ");
        }
        fprintf(out, "# %.*s\n", (int)len, text);
        text += len;
        while (*text == ' ')
            text++;
    }
}

void
cfg_print_sample(const struct cfg_schema *s, FILE *out)
{
    const char *prog = s->program != NULL ? s->program : "mbox";
    fprintf(out,
            "# %s configuration: one `key = value` per line (%s --help, docs/config.md).\n"
            "# Every key is shown with its default, commented out: uncomment to change it.\n"
            "# Environment variables %sKEY (upper case) override this file. Keys marked\n"
            "# \"SIGHUP reloads it\" take effect on `systemctl reload`; others need a restart.\n"
            "# Generated from the key table by ops/config-doc; keep this file mode 0640.\n",
            prog, prog, s->env_prefix != NULL ? s->env_prefix : "");
    for (size_t i = 0; i < s->nkeys; i++) {
        const struct cfg_key *k = &s->keys[i];
        char help[1024];
        snprintf(help, sizeof(help), "%s%s", k->help != NULL ? k->help : "",
                 k->reloadable ? " (SIGHUP reloads it)" : "");
        fputc('\n', out);
        print_comment(out, help);
        const char *def = k->def != NULL ? k->def : "";
        bool required = k->help != NULL && strstr(k->help, "required") != NULL && def[0] == '\0';
        if (required) {
            fprintf(out, "%s =\n", k->name);
            continue;
        }
        fprintf(out, "#%s =", k->name);
        if (def[0] != '\0') {
            fputc(' ', out);
            print_str(out, def);
        }
        fputc('\n', out);
    }
}

void
cfg_print_values(const struct cfg_schema *s, const void *target, FILE *out)
{
    for (size_t i = 0; i < s->nkeys; i++) {
        const struct cfg_key *k = &s->keys[i];
        const void *p = cslot(k, target);
        fprintf(out, "%s = ", k->name);
        switch (k->type) {
        case CFG_STR: {
            const char *v = *(char *const *)p;
            print_str(out, v != NULL ? v : "");
            break;
        }
        case CFG_SECRET: {
            /* Never echo a secret; say only whether it is set. */
            const char *v = *(char *const *)p;
            print_str(out, v != NULL && v[0] != '\0' ? "(secret, set)" : "");
            break;
        }
        case CFG_INT:
            fprintf(out, "%" PRId64, *(const int64_t *)p);
            break;
        case CFG_BOOL:
            fputs(*(const bool *)p ? "true" : "false", out);
            break;
        }
        fputc('\n', out);
    }
}

void
cfg_print_help(const struct cfg_schema *s, FILE *out)
{
    const char *prog = s->program != NULL ? s->program : "mbox";
    fprintf(out,
            "usage: %s [-c FILE] [--check-config] [--help] [--help-markdown] [--sample-config]\n"
            "       [--version] [daemon flags below]\n"
            "\n"
            "options:\n"
            "  -c, --config FILE  read keys from FILE, one 'key = value' per line\n"
            "  --check-config     load the configuration, print it and exit\n"
            "  --help             print this help and exit\n"
            "  --help-markdown    print the key reference as markdown and exit\n"
            "  --sample-config    print a sample config file (every key, commented) and exit\n"
            "  --version          print the version and exit\n"
            "%s"
            "\n"
            "keys (the environment overrides the file, the file overrides the default):\n",
            prog, s->usage != NULL ? s->usage : "");
    for (size_t i = 0; i < s->nkeys; i++) {
        const struct cfg_key *k = &s->keys[i];
        char env[CFG_ENV_BUF];
        if (!env_name(s, k, env, sizeof(env)))
            snprintf(env, sizeof(env), "(name too long)");
        fprintf(out, "\n  %s  %s", k->name, type_name(k->type));
        if (k->type == CFG_INT && has_range(k))
            fprintf(out, " %" PRId64 "..%" PRId64, k->min, k->max);
        fputs("  default ", out);
        if (k->type == CFG_STR || k->type == CFG_SECRET) {
            /* Always quoted, so an empty default is visible. */
            fputc('"', out);
            for (const char *p = k->def != NULL ? k->def : ""; *p != '\0'; p++) {
                if (*p == '"' || *p == '\\')
                    fputc('\\', out);
                fputc(*p, out);
            }
            fputc('"', out);
        } else {
            fputs(k->def != NULL ? k->def : "", out);
        }
        fprintf(out, "  env %s%s\n      %s\n", env, k->reloadable ? "  (SIGHUP reloads it)" : "",
                k->help != NULL ? k->help : "");
    }
}

/*
 * Prints one markdown table cell. A '|' would end the cell, so it is
 * escaped; line breaks would end the row, so they become spaces. Text is put
 * in a code span when asked, unless it holds a backtick.
 */
static void
md_cell(FILE *out, const char *text, bool code)
{
    bool span = code && strchr(text, '`') == NULL;
    fputs(span ? " `" : " ", out);
    for (const char *p = text; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '|')
            fputs("\\|", out);
        else if (c < 0x20 || c == 0x7f)
            fputc(' ', out);
        else
            fputc(c, out);
    }
    fputs(span ? "` |" : " |", out);
}

/*
 * Prints "## program" and a table of the keys, in schema order and with
 * nothing time- or host-dependent, so docs/config.md regenerates byte for
 * byte.
 */
void
cfg_print_markdown(const struct cfg_schema *s, FILE *out)
{
    fprintf(out, "## %s\n\n", s->program != NULL ? s->program : "mbox");
    fputs("| key | type | default | env | description |\n", out);
    fputs("| --- | --- | --- | --- | --- |\n", out);
    for (size_t i = 0; i < s->nkeys; i++) {
        const struct cfg_key *k = &s->keys[i];
        char type[128];
        if (k->type == CFG_INT && has_range(k))
            snprintf(type, sizeof(type), "int, %" PRId64 "..%" PRId64, k->min, k->max);
        else
            snprintf(type, sizeof(type), "%s", type_name(k->type));
        char env[CFG_ENV_BUF];
        if (!env_name(s, k, env, sizeof(env)))
            snprintf(env, sizeof(env), "(name too long)");
        const char *def = k->def != NULL ? k->def : "";
        fputc('|', out);
        md_cell(out, k->name, true);
        md_cell(out, type, false);
        if (def[0] == '\0')
            md_cell(out, "(empty)", false);
        else
            md_cell(out, def, true);
        md_cell(out, env, true);
        char help[1024];
        snprintf(help, sizeof(help), "%s%s", k->help != NULL ? k->help : "",
                 k->reloadable ? " (SIGHUP reloads it)" : "");
        md_cell(out, help, false);
        fputc('\n', out);
    }
    fputc('\n', out);
}

/* Flushes stdout after --help and friends: a full disk must not pass as success. */
static enum cfg_action
finish_stdout(const char *prog)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "%s: cannot write to stdout\n", prog);
        return CFG_EXIT_FAIL;
    }
    return CFG_EXIT_OK;
}

/*
 * Parses all of argv first (so a bad flag is reported even next to --help),
 * then acts: --help, --help-markdown, --version, or load and maybe
 * --check-config. The target's string slots are reset on entry (not freed)
 * and hold no strings on any outcome but CFG_RUN, so the caller may always
 * call cfg_free afterwards.
 */
enum cfg_action
cfg_main(const struct cfg_schema *s, void *target, int argc, char **argv, const char *const *extra,
         unsigned *extra_set)
{
    const char *prog = s->program != NULL ? s->program : "mbox";
    char sb[CFG_SHOW_BUF];
    const char *path = NULL;
    bool help = false, markdown = false, version = false, check = false, sample = false;
    unsigned flags = 0;
    size_t nextra = 0;

    if (extra_set != NULL)
        *extra_set = 0;
    clear_strings(s, target);
    while (extra != NULL && extra[nextra] != NULL)
        nextra++;
    if (nextra > sizeof(flags) * CHAR_BIT) {
        fprintf(stderr, "%s: %zu daemon flags declared, at most %zu fit\n", prog, nextra,
                sizeof(flags) * CHAR_BIT);
        return CFG_EXIT_FAIL;
    }

    for (int i = 1; i < argc && argv[i] != NULL; i++) {
        const char *a = argv[i];
        bool joined = strncmp(a, "--config=", 9) == 0;
        if (joined || strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            const char *file = NULL;
            if (joined)
                file = a + 9;
            else if (i + 1 < argc)
                file = argv[++i];
            if (file == NULL || file[0] == '\0') {
                fprintf(stderr, "%s: option '%s' needs a FILE argument\n", prog, a);
                return CFG_EXIT_FAIL;
            }
            if (path != NULL) {
                fprintf(stderr, "%s: config file given twice ('%s' and '%s')\n", prog, path, file);
                return CFG_EXIT_FAIL;
            }
            path = file;
            continue;
        }
        if (strcmp(a, "--help") == 0) {
            help = true;
            continue;
        }
        if (strcmp(a, "--help-markdown") == 0) {
            markdown = true;
            continue;
        }
        if (strcmp(a, "--version") == 0) {
            version = true;
            continue;
        }
        if (strcmp(a, "--sample-config") == 0) {
            sample = true;
            continue;
        }
        if (strcmp(a, "--check-config") == 0) {
            check = true;
            continue;
        }
        size_t j = 0;
        while (j < nextra && strcmp(a, extra[j]) != 0)
            j++;
        if (j < nextra) {
            flags |= 1u << j;
            continue;
        }
        if (a[0] == '-')
            fprintf(stderr, "%s: unknown option '%s' (see --help)\n", prog, show(sb, a));
        else
            fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", prog, show(sb, a));
        return CFG_EXIT_FAIL;
    }
    if (extra_set != NULL)
        *extra_set = flags;

    if (help) {
        cfg_print_help(s, stdout);
        return finish_stdout(prog);
    }
    if (markdown) {
        cfg_print_markdown(s, stdout);
        return finish_stdout(prog);
    }
    if (version) {
        printf("%s %s\n", prog, MBOX_VERSION);
        return finish_stdout(prog);
    }
    if (sample) {
        cfg_print_sample(s, stdout);
        return finish_stdout(prog);
    }

    char err[CFG_MSG_BUF];
    err[0] = '\0';
    bool ok = cfg_defaults(s, target, err, sizeof(err)) &&
              (path == NULL || cfg_load_file(s, target, path, err, sizeof(err))) &&
              cfg_apply_env(s, target, err, sizeof(err));
    if (!ok) {
        fprintf(stderr, "%s: config error: %s\n", prog, err);
        cfg_free(s, target);
        return CFG_EXIT_FAIL;
    }
    if (check) {
        cfg_print_values(s, target, stdout);
        printf("config ok\n");
        cfg_free(s, target);
        return finish_stdout(prog);
    }
    return CFG_RUN;
}

bool
cfg_load(const struct cfg_schema *s, void *target, const char *path, char *err, size_t errlen)
{
    clear_strings(s, target);
    if (cfg_defaults(s, target, err, errlen) &&
        (path == NULL || cfg_load_file(s, target, path, err, errlen)) &&
        cfg_apply_env(s, target, err, errlen))
        return true;
    cfg_free(s, target);
    return false;
}

const char *
cfg_argv_path(int argc, char **argv)
{
    for (int i = 1; i < argc && argv[i] != NULL; i++) {
        if (strncmp(argv[i], "--config=", 9) == 0)
            return argv[i] + 9;
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc)
            return argv[i + 1];
    }
    return NULL;
}

bool
cfg_key_equal(const struct cfg_key *k, const void *a, const void *b)
{
    const void *pa = cslot(k, a), *pb = cslot(k, b);
    switch (k->type) {
    case CFG_STR:
    case CFG_SECRET: {
        const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
        return strcmp(sa != NULL ? sa : "", sb != NULL ? sb : "") == 0;
    }
    case CFG_INT:
        return *(const int64_t *)pa == *(const int64_t *)pb;
    case CFG_BOOL:
        return *(const bool *)pa == *(const bool *)pb;
    }
    return false;
}

void
cfg_key_swap(const struct cfg_key *k, void *a, void *b)
{
    void *pa = slot(k, a), *pb = slot(k, b);
    switch (k->type) {
    case CFG_STR:
    case CFG_SECRET: {
        char *t = *(char **)pa;
        *(char **)pa = *(char **)pb;
        *(char **)pb = t;
        break;
    }
    case CFG_INT: {
        int64_t t = *(int64_t *)pa;
        *(int64_t *)pa = *(int64_t *)pb;
        *(int64_t *)pb = t;
        break;
    }
    case CFG_BOOL: {
        bool t = *(bool *)pa;
        *(bool *)pa = *(bool *)pb;
        *(bool *)pb = t;
        break;
    }
    }
}

/*
 * Accepts "host:port" and "[v6addr]:port". A bare IPv6 address is refused
 * (its last ':' is ambiguous), as are an empty host, blanks or control bytes
 * in the host, and a port that is not 1..65535 in plain digits. host and
 * port are written only on success.
 */
bool
cfg_parse_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    if (s == NULL || host == NULL || hostlen == 0 || port == NULL)
        return false;
    const char *h, *he, *colon;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return false;
        h = s + 1;
        he = close;
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return false;
        h = s;
        he = colon;
        if (memchr(h, ':', (size_t)(he - h)) != NULL)
            return false;
    }
    size_t hl = (size_t)(he - h);
    if (hl == 0 || hl >= hostlen)
        return false;
    for (size_t i = 0; i < hl; i++) {
        unsigned char c = (unsigned char)h[i];
        if (c <= 0x20 || c == 0x7f || c == '[' || c == ']')
            return false;
    }
    const char *pp = colon + 1;
    size_t digits = strlen(pp);
    if (digits == 0 || digits > 5 || strspn(pp, "0123456789") != digits)
        return false;
    long v = strtol(pp, NULL, 10);
    if (v < 1 || v > 65535)
        return false;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)v;
    return true;
}
