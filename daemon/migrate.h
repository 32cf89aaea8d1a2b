/* migrate.h - the schema migrations compiled into the binary.
 *
 * migrations/NNNN_name.sql are embedded at build time (cmake), so the
 * binary alone can migrate a database and knows which schema it speaks.
 * Applied versions are recorded in the table schema_migrations (version,
 * name, sha256 of the SQL text, applied_at). */
#ifndef TG_DAEMON_MIGRATE_H
#define TG_DAEMON_MIGRATE_H

#include <stddef.h>

/* One migration file. */
typedef struct migration {
    int version;        /* NNNN of the file name, > 0, strictly increasing */
    const char *name;   /* file name without directory: "0001_tenancy.sql" */
    const char *sql;    /* the file's text */
    const char *sha256; /* lower-case hex SHA-256 of sql */
} migration;

/* The embedded migrations in version order; *n receives the count. */
const migration *migrations_all(size_t *n);
/* The newest version this binary knows (0 when there is none). */
int migrations_latest(void);

/* tollgate migrate [--config FILE | --database-url URL] [--status]
 * Applies the missing migrations (blocking libpq: a CLI, never on the
 * loop). Exit 0 done (or nothing to do), 1 failure, 2 usage. */
int cli_migrate(int argc, char **argv);

#endif
