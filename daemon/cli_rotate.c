/* cli_rotate.c - `tollgate rotate-secrets`: re-encrypt every stored secret
 * (provider credentials, BYOK keys) with the first key of secrets.keys.
 *
 * Rotation is three steps: put the new key first in secrets.keys and keep
 * the old ones after it (every instance then reads both, writes with the
 * new one), run this command once, then drop the old keys. The command is
 * a CLI, not on the loop, so it uses blocking libpq.
 *
 * Everything happens in one transaction with the rows locked: a secret
 * that no configured key opens aborts the whole run (nothing changes, the
 * ids are printed), so a wrong key list can never destroy a secret. A
 * secret already under the first key is left alone, which makes a second
 * run a no-op. Each updated row fires the cache triggers, so running
 * instances reload it (same plaintext, new token). */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto/fernet.h"
#include "daemon/cli.h"
#include "daemon/config.h"

static const char *const rotate_tables[] = {"provider_credentials", "byok_keys"};

static void rotate_usage(FILE *f)
{
    fprintf(f, "usage: tollgate rotate-secrets [--config FILE] [--dry-run]\n"
               "Re-encrypts every stored provider credential and BYOK key with the first key\n"
               "of secrets.keys. database.url and secrets.keys come from the config file, or\n"
               "without one from TOLLGATE_DATABASE_URL and TOLLGATE_SECRET_KEYS.\n"
               "Exit 0 done, 1 failure (nothing changed), 2 usage.\n");
}

static const char *env_get(const char *name)
{
    return getenv(name);
}

/* Rotates one table inside the open transaction. Counts into *done and
 * *current; -1 after printing why (unreadable rows are all listed). */
static int rotate_table(PGconn *db, const fernet_keyring *ring, const char *table, bool dry,
                        long *done, long *current)
{
    char sql[256];
    fernet_keyring first = {0};
    int rc = -1, bad = 0;
    uint64_t now = (uint64_t)time(NULL);

    snprintf(sql, sizeof(sql), "SELECT id::text, secret_enc FROM %s ORDER BY id FOR UPDATE", table);
    PGresult *res = PQexec(db, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "tollgate rotate-secrets: reading %s: %s", table, PQerrorMessage(db));
        goto out;
    }
    memcpy(first.keys[0], ring->keys[0], FERNET_KEY_LEN);
    first.n = 1;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *id = PQgetvalue(res, i, 0), *tok = PQgetvalue(res, i, 1);
        size_t n = strlen(tok);
        buf plain, out;
        buf_init(&plain, 64 * 1024);
        buf_init(&out, 64 * 1024);
        if (fernet_decrypt(&first, tok, n, now, 0, &plain) == 0) {
            (*current)++;
        } else if (fernet_decrypt(ring, tok, n, now, 0, &plain) != 0) {
            fprintf(stderr, "tollgate rotate-secrets: %s %s: no key of secrets.keys opens it\n",
                    table, id);
            bad++;
        } else if (fernet_encrypt(ring, plain.data, plain.len, now, &out) != 0) {
            fprintf(stderr, "tollgate rotate-secrets: %s %s: cannot encrypt\n", table, id);
            bad++;
        } else if (!dry) {
            const char *params[2] = {out.data, id};
            snprintf(sql, sizeof(sql),
                     "UPDATE %s SET secret_enc = $1, updated_by = 'cli:rotate-secrets', "
                     "updated_at = now() WHERE id = $2::uuid",
                     table);
            PGresult *u = PQexecParams(db, sql, 2, NULL, params, NULL, NULL, 0);
            if (PQresultStatus(u) != PGRES_COMMAND_OK) {
                fprintf(stderr, "tollgate rotate-secrets: updating %s %s: %s", table, id,
                        PQerrorMessage(db));
                bad++;
            } else {
                (*done)++;
            }
            PQclear(u);
        } else {
            (*done)++;
        }
        if (plain.data)
            explicit_bzero(plain.data, plain.len);
        buf_free(&plain);
        buf_free(&out);
    }
    rc = bad ? -1 : 0;
out:
    fernet_keyring_wipe(&first);
    PQclear(res);
    return rc;
}

static bool exec_ok(PGconn *db, const char *sql)
{
    PGresult *r = PQexec(db, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "tollgate rotate-secrets: %s: %s", sql, PQerrorMessage(db));
    PQclear(r);
    return ok;
}

int cli_rotate_secrets(int argc, char **argv)
{
    const char *path = NULL;
    bool dry = false;
    config *cfg = NULL;
    PGconn *db = NULL;
    char err[512], demo[CONFIG_DEMO_KEY_MAX];
    int rc = 1;
    long done = 0, current = 0;

    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) && i + 1 < argc) {
            path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
        } else if (strcmp(argv[i], "--dry-run") == 0) {
            dry = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            rotate_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "tollgate rotate-secrets: unknown argument '%s'\n", argv[i]);
            rotate_usage(stderr);
            return 2;
        }
    }
    if ((path ? config_load_file(path, &cfg, err, sizeof(err))
              : config_default(env_get, &cfg, demo, sizeof(demo), err, sizeof(err))) != 0) {
        fprintf(stderr, "tollgate rotate-secrets: %s\n", err);
        return 1;
    }
    explicit_bzero(demo, sizeof(demo));
    if (!cfg->database.url) {
        fprintf(stderr, "tollgate rotate-secrets: no database.url (or TOLLGATE_DATABASE_URL)\n");
        rc = 2;
        goto out;
    }
    if (cfg->secrets.n == 0) {
        fprintf(stderr, "tollgate rotate-secrets: no secrets.keys (or TOLLGATE_SECRET_KEYS): put "
                        "the new key first and the old ones after it\n");
        rc = 2;
        goto out;
    }
    db = PQconnectdb(cfg->database.url);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "tollgate rotate-secrets: cannot connect to the database: %s",
                PQerrorMessage(db));
        goto out;
    }
    if (!exec_ok(db, "BEGIN"))
        goto out;
    for (size_t t = 0; t < sizeof(rotate_tables) / sizeof(rotate_tables[0]); t++) {
        if (rotate_table(db, &cfg->secrets, rotate_tables[t], dry, &done, &current) != 0) {
            exec_ok(db, "ROLLBACK");
            fprintf(stderr, "tollgate rotate-secrets: nothing changed\n");
            goto out;
        }
    }
    if (!dry && done > 0) {
        char audit[256];
        snprintf(audit, sizeof(audit),
                 "INSERT INTO audit_log (actor, action, entity, after) VALUES ('cli', "
                 "'rotate_secrets', 'secrets', '{\"rotated\": %ld}')",
                 done);
        if (!exec_ok(db, audit)) {
            exec_ok(db, "ROLLBACK");
            goto out;
        }
    }
    if (!exec_ok(db, dry ? "ROLLBACK" : "COMMIT"))
        goto out;
    printf("%s%ld secrets re-encrypted with the first key, %ld already were\n",
           dry ? "dry run: " : "", done, current);
    rc = 0;
out:
    PQfinish(db);
    config_unref(cfg);
    return rc;
}
