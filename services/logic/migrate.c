/*
 * migrate: numbered SQL migrations (see migrate.h).
 */
#include "migrate.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "log.h"

#define MIGRATE_LOCK_KEY  "7204312001" /* arbitrary advisory lock id */
#define MIGRATE_MAX_FILES 1000
#define MIGRATE_MAX_BYTES (16 * 1024 * 1024)

/* Runs one statement; false with the server's message in err. */
static bool
exec_ok(PGconn *c, const char *sql, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        snprintf(err, errlen, "%s", PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

/* A migration file name: digits, '_', then anything, ending in .sql. */
static bool
is_migration(const char *name)
{
    size_t n = strlen(name);
    if (n < 6 || strcmp(name + n - 4, ".sql") != 0)
        return false;
    size_t i = 0;
    while (name[i] >= '0' && name[i] <= '9')
        i++;
    return i > 0 && name[i] == '_';
}

static int
cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads a whole file into a new NUL-terminated buffer (caller frees). */
static char *
read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MIGRATE_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MIGRATE_MAX_BYTES + 1, f) : 0;
    fclose(f);
    if (buf == NULL || n > MIGRATE_MAX_BYTES) {
        snprintf(err, errlen, "%s: unreadable or larger than %d bytes", path, MIGRATE_MAX_BYTES);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* Applies one file unless recorded; *applied tells which happened. */
static bool
apply_one(PGconn *c, const char *dir, const char *name, bool *applied, char *err, size_t errlen)
{
    const char *params[1] = {name};
    PGresult *r = PQexecParams(c, "SELECT 1 FROM schema_migrations WHERE name = $1", 1, NULL,
                               params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(err, errlen, "%s", PQresultErrorMessage(r));
        PQclear(r);
        return false;
    }
    bool done = PQntuples(r) > 0;
    PQclear(r);
    *applied = false;
    if (done)
        return true;

    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    char *sql = read_file(path, err, errlen);
    if (sql == NULL)
        return false;

    char serr[1024];
    bool ok = exec_ok(c, "BEGIN", serr, sizeof(serr)) && exec_ok(c, sql, serr, sizeof(serr));
    free(sql);
    if (ok) {
        r = PQexecParams(c, "INSERT INTO schema_migrations (name, applied_at) VALUES ($1, now())",
                         1, NULL, params, NULL, NULL, 0);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            snprintf(serr, sizeof(serr), "%s", PQresultErrorMessage(r));
        PQclear(r);
    }
    if (ok)
        ok = exec_ok(c, "COMMIT", serr, sizeof(serr));
    if (!ok) {
        char ignored[64];
        (void)exec_ok(c, "ROLLBACK", ignored, sizeof(ignored));
        serr[strcspn(serr, "\n")] = '\0';
        snprintf(err, errlen, "%s: %s", name, serr);
        return false;
    }
    *applied = true;
    return true;
}

bool
migrate_run(const char *conninfo, const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        snprintf(err, errlen, "migrations directory %s: %s", dir, strerror(errno));
        return false;
    }
    char *names[MIGRATE_MAX_FILES];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < MIGRATE_MAX_FILES) {
        if (is_migration(e->d_name) && (names[n] = strdup(e->d_name)) != NULL)
            n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof(names[0]), cmp_names);

    bool ok = false;
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(err, errlen, "cannot connect: %s", PQerrorMessage(c));
        err[strcspn(err, "\n")] = '\0';
        goto out;
    }
    if (!exec_ok(c, "SET client_min_messages = warning", err, errlen) ||
        !exec_ok(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", err, errlen) ||
        !exec_ok(c,
                 "CREATE TABLE IF NOT EXISTS schema_migrations ("
                 " name text PRIMARY KEY, applied_at timestamptz NOT NULL)",
                 err, errlen))
        goto out;
    int applied_count = 0;
    for (int i = 0; i < n; i++) {
        bool applied;
        if (!apply_one(c, dir, names[i], &applied, err, errlen))
            goto out;
        if (applied) {
            applied_count++;
            log_info("migration_applied", "file=%s", names[i]);
        }
    }
    log_info("migrations_done", "applied=%d total=%d", applied_count, n);
    ok = true;
out:
    PQfinish(c);
    for (int i = 0; i < n; i++)
        free(names[i]);
    return ok;
}
