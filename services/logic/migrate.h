/*
 * migrate: applies migrations/NNNN_name.sql in order (`logicd --migrate`).
 *
 * Each file runs in its own transaction together with its row in
 * schema_migrations, so a failed file leaves nothing half-applied, and an
 * applied file is skipped: re-running is safe. A session advisory lock
 * serialises concurrent migrators (several logicd started at once).
 * Blocking libpq on purpose: this runs before the daemon serves anything.
 */
#ifndef LOGIC_MIGRATE_H
#define LOGIC_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>

/* Applies what is missing; reports each file applied on stderr. */
bool migrate_run(const char *conninfo, const char *dir, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
