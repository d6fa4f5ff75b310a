/*
 * metrics: a registry of counters, gauges and histograms (see metrics.h).
 *
 * Layout: the registry holds families (one per metric name: help, type and
 * the series in registration order) in an array kept sorted by name, and a
 * hash table from (name, labels) to series for lookups. Both only change
 * under the registry mutex. A series never moves or goes away before
 * metrics_free(), so callers keep plain pointers and update them with
 * relaxed atomics, without the mutex.
 */
#include "metrics.h"

#include <event2/buffer.h>

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Upper bounds of the histogram buckets, in seconds; +Inf follows. */
static const double bucket_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
/* The same bounds as printed in the le label (fixed, so the text never drifts). */
static const char *const bucket_labels[] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05",   "0.1",     "0.25",   "0.5",   "1",      "2.5",   "5",    "10"};
#define NBUCKETS (sizeof(bucket_bounds) / sizeof(bucket_bounds[0]))

struct family;

struct metric {
    struct family *family;
    char *labels;             /* pre-rendered, "" when none */
    struct metric *next;      /* next series of the family, registration order */
    struct metric *hash_next; /* hash chain */
    uint64_t hash;
    int64_t value;     /* counter (as unsigned) or gauge; atomic */
    uint64_t *buckets; /* histograms: NBUCKETS + 1 per-bucket counts; atomic */
    uint64_t sum_bits; /* histograms: bit pattern of the double sum; atomic */
};

struct family {
    char *name;
    char *help;
    enum metric_type type;
    struct metric *head, *tail;
};

struct metrics {
    pthread_mutex_t mu;
    struct family **families; /* sorted by name */
    size_t nfamilies, capfamilies;
    struct metric **table; /* hash buckets, power of two */
    size_t tablesize, nseries;
    struct {
        metrics_collector_fn fn;
        void *arg;
    } collectors[METRICS_MAX_COLLECTORS];
    size_t ncollectors;
};

#define INITIAL_TABLE 64

struct metrics *
metrics_new(void)
{
    struct metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->table = calloc(INITIAL_TABLE, sizeof(*m->table));
    if (m->table == NULL) {
        free(m);
        return NULL;
    }
    m->tablesize = INITIAL_TABLE;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m->table);
        free(m);
        return NULL;
    }
    return m;
}

void
metrics_free(struct metrics *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nfamilies; i++) {
        struct family *f = m->families[i];
        struct metric *s = f->head;
        while (s != NULL) {
            struct metric *next = s->next;
            free(s->labels);
            free(s->buckets);
            free(s);
            s = next;
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    free(m->families);
    free(m->table);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* FNV-1a over name, a separator byte that cannot occur in a name, and labels. */
static uint64_t
series_hash(const char *name, const char *labels)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h = (h ^ 0xffu) * 1099511628211ULL;
    for (const unsigned char *p = (const unsigned char *)labels; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

/* Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*. */
static bool
valid_name(const char *name)
{
    if (name == NULL || name[0] == '\0' || (name[0] >= '0' && name[0] <= '9'))
        return false;
    for (const char *p = name; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == ':'))
            return false;
    }
    return true;
}

/* Index of the family called name, or where it would be inserted (*found false). */
static size_t
family_index(const struct metrics *m, const char *name, bool *found)
{
    size_t lo = 0, hi = m->nfamilies;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(m->families[mid]->name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

/* Doubles the hash table; on allocation failure the old one stays (just slower). */
static void
table_grow(struct metrics *m)
{
    size_t newsize = m->tablesize * 2;
    struct metric **t = calloc(newsize, sizeof(*t));
    if (t == NULL)
        return;
    for (size_t i = 0; i < m->tablesize; i++) {
        struct metric *s = m->table[i];
        while (s != NULL) {
            struct metric *next = s->hash_next;
            size_t b = (size_t)(s->hash & (newsize - 1));
            s->hash_next = t[b];
            t[b] = s;
            s = next;
        }
    }
    free(m->table);
    m->table = t;
    m->tablesize = newsize;
}

/*
 * Finds or creates the family called name. Returns NULL when it exists with
 * another type or on allocation failure. Called with the mutex held.
 */
static struct family *
family_get(struct metrics *m, const char *name, const char *help, enum metric_type type)
{
    bool found;
    size_t i = family_index(m, name, &found);
    if (found)
        return m->families[i]->type == type ? m->families[i] : NULL;

    if (m->nfamilies == m->capfamilies) {
        size_t cap = m->capfamilies ? m->capfamilies * 2 : 16;
        struct family **fs = realloc(m->families, cap * sizeof(*fs));
        if (fs == NULL)
            return NULL;
        m->families = fs;
        m->capfamilies = cap;
    }
    struct family *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->name = strdup(name);
    f->help = strdup(help != NULL ? help : "");
    if (f->name == NULL || f->help == NULL) {
        free(f->name);
        free(f->help);
        free(f);
        return NULL;
    }
    f->type = type;
    memmove(&m->families[i + 1], &m->families[i], (m->nfamilies - i) * sizeof(*m->families));
    m->families[i] = f;
    m->nfamilies++;
    return f;
}

/* The lookup-or-create behind metrics_counter/gauge/histogram. */
static struct metric *
series_get(struct metrics *m, const char *name, const char *help, const char *labels,
           enum metric_type type)
{
    if (m == NULL || !valid_name(name))
        return NULL;
    if (labels == NULL)
        labels = "";
    uint64_t h = series_hash(name, labels);

    pthread_mutex_lock(&m->mu);
    struct metric *s;
    for (s = m->table[h & (m->tablesize - 1)]; s != NULL; s = s->hash_next) {
        if (s->hash == h && strcmp(s->labels, labels) == 0 && strcmp(s->family->name, name) == 0)
            break;
    }
    if (s != NULL) {
        if (s->family->type != type)
            s = NULL;
        pthread_mutex_unlock(&m->mu);
        return s;
    }

    struct family *f = family_get(m, name, help, type);
    if (f == NULL)
        goto out;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto out;
    s->labels = strdup(labels);
    if (type == METRIC_HISTOGRAM)
        s->buckets = calloc(NBUCKETS + 1, sizeof(*s->buckets));
    if (s->labels == NULL || (type == METRIC_HISTOGRAM && s->buckets == NULL)) {
        free(s->labels);
        free(s->buckets);
        free(s);
        s = NULL;
        goto out;
    }
    s->family = f;
    s->hash = h;
    if (f->tail != NULL)
        f->tail->next = s;
    else
        f->head = s;
    f->tail = s;
    size_t b = (size_t)(h & (m->tablesize - 1));
    s->hash_next = m->table[b];
    m->table[b] = s;
    if (++m->nseries > m->tablesize)
        table_grow(m);
out:
    pthread_mutex_unlock(&m->mu);
    return s;
}

struct metric *
metrics_counter(struct metrics *m, const char *name, const char *help, const char *labels)
{
    return series_get(m, name, help, labels, METRIC_COUNTER);
}

struct metric *
metrics_gauge(struct metrics *m, const char *name, const char *help, const char *labels)
{
    return series_get(m, name, help, labels, METRIC_GAUGE);
}

struct metric *
metrics_histogram(struct metrics *m, const char *name, const char *help, const char *labels)
{
    return series_get(m, name, help, labels, METRIC_HISTOGRAM);
}

/* ---- updates: lock-free, relaxed (a scrape needs no ordering between series) ---- */

void
metric_inc(struct metric *c)
{
    metric_add(c, 1);
}

void
metric_add(struct metric *c, uint64_t n)
{
    if (c == NULL || c->family->type != METRIC_COUNTER)
        return;
    /* Counters wrap modulo 2^64 like the unsigned value they are. */
    __atomic_fetch_add((uint64_t *)&c->value, n, __ATOMIC_RELAXED);
}

void
metric_set(struct metric *g, int64_t v)
{
    if (g == NULL || g->family->type != METRIC_GAUGE)
        return;
    __atomic_store_n(&g->value, v, __ATOMIC_RELAXED);
}

void
metric_gauge_add(struct metric *g, int64_t d)
{
    if (g == NULL || g->family->type != METRIC_GAUGE)
        return;
    /* Done on the unsigned representation: wraps instead of signed overflow. */
    __atomic_fetch_add((uint64_t *)&g->value, (uint64_t)d, __ATOMIC_RELAXED);
}

void
metric_observe(struct metric *h, double value)
{
    if (h == NULL || h->family->type != METRIC_HISTOGRAM || isnan(value))
        return;
    size_t i = 0;
    while (i < NBUCKETS && value > bucket_bounds[i])
        i++;
    __atomic_fetch_add(&h->buckets[i], 1, __ATOMIC_RELAXED);

    /* The sum is a double kept as its bit pattern, added with a CAS loop. */
    uint64_t old = __atomic_load_n(&h->sum_bits, __ATOMIC_RELAXED), upd;
    do {
        double d;
        memcpy(&d, &old, sizeof(d));
        d += value;
        memcpy(&upd, &d, sizeof(upd));
    } while (!__atomic_compare_exchange_n(&h->sum_bits, &old, upd, true, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
}

int64_t
metric_value(const struct metric *c)
{
    if (c == NULL)
        return 0;
    return __atomic_load_n(&c->value, __ATOMIC_RELAXED);
}

/* ---- rendering ---- */

static const char *
type_name(enum metric_type t)
{
    switch (t) {
    case METRIC_COUNTER:
        return "counter";
    case METRIC_GAUGE:
        return "gauge";
    case METRIC_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

/* HELP text escapes backslash and newline (text format 0.0.4). */
static void
render_help(struct evbuffer *out, const char *help)
{
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            evbuffer_add(out, "\\\\", 2);
        else if (*p == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, p, 1);
    }
}

/* name{labels[,extra]} : the series selector, with an optional extra label. */
static void
render_selector(struct evbuffer *out, const char *name, const char *suffix, const char *labels,
                const char *extra)
{
    evbuffer_add_printf(out, "%s%s", name, suffix);
    bool has_labels = labels[0] != '\0';
    if (!has_labels && extra == NULL)
        return;
    evbuffer_add_printf(out, "{%s%s%s}", labels, has_labels && extra != NULL ? "," : "",
                        extra != NULL ? extra : "");
}

static void
render_histogram(struct evbuffer *out, const struct family *f, const struct metric *s)
{
    /* _count is the cumulative total of the buckets read here, so +Inf and
     * _count agree even while other threads keep observing. */
    uint64_t cum = 0;
    char le[32];
    for (size_t i = 0; i <= NBUCKETS; i++) {
        cum += __atomic_load_n(&s->buckets[i], __ATOMIC_RELAXED);
        snprintf(le, sizeof(le), "le=\"%s\"", i < NBUCKETS ? bucket_labels[i] : "+Inf");
        render_selector(out, f->name, "_bucket", s->labels, le);
        evbuffer_add_printf(out, " %" PRIu64 "\n", cum);
    }
    uint64_t bits = __atomic_load_n(&s->sum_bits, __ATOMIC_RELAXED);
    double sum;
    memcpy(&sum, &bits, sizeof(sum));
    render_selector(out, f->name, "_sum", s->labels, NULL);
    evbuffer_add_printf(out, " %.17g\n", sum);
    render_selector(out, f->name, "_count", s->labels, NULL);
    evbuffer_add_printf(out, " %" PRIu64 "\n", cum);
}

bool
metrics_add_collector(struct metrics *m, metrics_collector_fn fn, void *arg)
{
    if (m == NULL || fn == NULL)
        return false;
    pthread_mutex_lock(&m->mu);
    bool ok = m->ncollectors < METRICS_MAX_COLLECTORS;
    if (ok) {
        m->collectors[m->ncollectors].fn = fn;
        m->collectors[m->ncollectors].arg = arg;
        m->ncollectors++;
    }
    pthread_mutex_unlock(&m->mu);
    return ok;
}

void
metrics_render(struct metrics *m, struct evbuffer *out)
{
    if (m == NULL || out == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->nfamilies; i++) {
        const struct family *f = m->families[i];
        evbuffer_add_printf(out, "# HELP %s ", f->name);
        render_help(out, f->help);
        evbuffer_add_printf(out, "\n# TYPE %s %s\n", f->name, type_name(f->type));
        for (const struct metric *s = f->head; s != NULL; s = s->next) {
            int64_t v = __atomic_load_n(&s->value, __ATOMIC_RELAXED);
            switch (f->type) {
            case METRIC_COUNTER:
                render_selector(out, f->name, "", s->labels, NULL);
                evbuffer_add_printf(out, " %" PRIu64 "\n", (uint64_t)v);
                break;
            case METRIC_GAUGE:
                render_selector(out, f->name, "", s->labels, NULL);
                evbuffer_add_printf(out, " %" PRId64 "\n", v);
                break;
            case METRIC_HISTOGRAM:
                render_histogram(out, f, s);
                break;
            }
        }
    }
    /* Collectors run outside the mutex: they may take their time (reading
     * /proc) and must not block the hot paths' registrations. */
    size_t nc = m->ncollectors;
    metrics_collector_fn fns[METRICS_MAX_COLLECTORS];
    void *args[METRICS_MAX_COLLECTORS];
    for (size_t i = 0; i < nc; i++) {
        fns[i] = m->collectors[i].fn;
        args[i] = m->collectors[i].arg;
    }
    pthread_mutex_unlock(&m->mu);
    for (size_t i = 0; i < nc; i++)
        fns[i](out, args[i]);
}
