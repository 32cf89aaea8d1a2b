/* cli_migrate.c - `tollgate migrate`: bring a database's schema up to the
 * migrations compiled into this binary (daemon/migrate.h).
 *
 * A command-line tool, never on the loop: this is the one place in
 * tollgate that uses blocking libpq (PQconnectdbParams, PQexec).
 *
 * One session does, in order:
 *   1. take the session advisory lock MIGRATE_LOCK_KEY, so migrates that
 *      several instances start at once run one after the other (the later
 *      ones find everything applied and do nothing);
 *   2. create schema_migrations if it is missing;
 *   3. refuse a database this binary does not fully know: a version newer
 *      than migrations_latest() or absent from the binary, an applied
 *      migration whose sha256 differs from the embedded text, or a gap
 *      (a known migration missing below the newest applied one);
 *   4. apply each missing migration in its own transaction together with
 *      its schema_migrations row, so a failure leaves nothing behind.
 * --status reads the same state without changing anything (no lock, no
 * CREATE TABLE) and exits 1 exactly when step 3 would refuse.
 *
 * A migration file runs as one simple-protocol query inside BEGIN/COMMIT,
 * so it must not contain BEGIN/COMMIT, COPY ... FROM STDIN, or statements
 * that refuse a transaction block (CREATE INDEX CONCURRENTLY, VACUUM).
 *
 * No message carries the URL's password: the database is named by dbname,
 * host and port, libpq's messages are printed with the password replaced
 * by "***", and URL parse errors lose the quoted text libpq would echo. */
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/config.h"
#include "daemon/migrate.h"

/* Exit codes (migrate.h). */
enum { MIGRATE_EXIT_OK = 0, MIGRATE_EXIT_FAIL = 1, MIGRATE_EXIT_USAGE = 2 };

/* Key of the session advisory lock held while migrating: the ASCII bytes
 * of "tollgate" as a big-endian 64-bit integer. Never change it: migrates
 * of different tollgate versions must exclude each other. */
#define MIGRATE_LOCK_KEY "8390043843661231205"

/* connect_timeout (seconds) added when the URL sets none. */
#define MIGRATE_CONNECT_TIMEOUT "10"

/* Where the URL comes from when no option names one. */
#define MIGRATE_URL_ENV "TOLLGATE_DATABASE_URL"

/* Longest source line quoted under an SQL error (bytes). */
#define MIGRATE_QUOTE_MAX 200

#define MIGRATE_CREATE_TABLE                                                                       \
    "CREATE TABLE IF NOT EXISTS schema_migrations ("                                               \
    " version integer PRIMARY KEY,"                                                                \
    " name text NOT NULL,"                                                                         \
    " sha256 text NOT NULL,"                                                                       \
    " applied_at timestamptz NOT NULL DEFAULT now())"

/* Columns: version, name, sha256, applied_at as "YYYY-MM-DD HH:MM:SS" UTC. */
#define MIGRATE_SELECT_APPLIED                                                                     \
    "SELECT version, name, sha256,"                                                                \
    " to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"                             \
    " FROM schema_migrations ORDER BY version"

/* The same columns, no rows: --status on a database never migrated. */
#define MIGRATE_SELECT_NONE "SELECT NULL::integer, NULL::text, NULL::text, NULL::text WHERE false"

/* The command line. */
typedef struct migrate_args {
    const char *url;         /* --database-url, or NULL */
    const char *config_path; /* --config, or NULL */
    bool status;             /* --status: report, change nothing */
} migrate_args;

/* One run against one database. */
typedef struct migrate_run {
    PGconn *conn;     /* the session; holds the advisory lock until PQfinish */
    char *password;   /* the URL's password, scrubbed from messages; NULL if none */
    char target[320]; /* `database "x" at host:port`, for messages */
} migrate_run;

/* ------------------------------------------------------------ messages */

/* Length of s without trailing white space (libpq ends messages with \n). */
static int trimmed_len(const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    return n > 4096 ? 4096 : (int)n;
}

/* Prints "tollgate migrate: <message>\n" on stderr, every occurrence of
 * secret (the URL's password; NULL or "" for none) replaced by "***". */
static void say_error(const char *secret, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say_error(const char *secret, const char *fmt, ...)
{
    char *msg = NULL;
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    if (n >= 0 && (msg = malloc((size_t)n + 1)) != NULL)
        vsnprintf(msg, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    va_end(ap);
    fputs("tollgate migrate: ", stderr);
    if (!msg) {
        fputs("out of memory while reporting an error\n", stderr);
        goto out;
    }
    const char *p = msg;
    size_t slen = secret ? strlen(secret) : 0;
    for (const char *hit; slen > 0 && (hit = strstr(p, secret)) != NULL; p = hit + slen) {
        fwrite(p, 1, (size_t)(hit - p), stderr);
        fputs("***", stderr);
    }
    fputs(p, stderr);
    fputc('\n', stderr);
out:
    free(msg);
}

/* Copies in to out (at most outlen - 1 bytes, always terminated) with the
 * text between each pair of double quotes replaced by "...": libpq's URL
 * parse errors quote the offending part of the URL, which may be the
 * password. */
static void scrub_quoted(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    bool quoted = false;
    for (const char *p = in; *p && o + 4 < outlen; p++) {
        if (*p == '"') {
            quoted = !quoted;
            out[o++] = '"';
            if (quoted) {
                memcpy(out + o, "...", 3);
                o += 3;
            }
        } else if (!quoted) {
            out[o++] = *p;
        }
    }
    if (quoted && o + 1 < outlen)
        out[o++] = '"';
    if (outlen > 0)
        out[o < outlen ? o : outlen - 1] = '\0';
}

/* Finds the 1-based character position pos (PostgreSQL counts characters,
 * the text is UTF-8) in text: its 1-based line and column, and the bytes
 * of that line without the line end. One past the last character is the
 * end of the text. false when pos is outside. */
static bool locate_position(const char *text, long pos, int *line, int *col,
                            const char **line_start, size_t *line_len)
{
    bool found = false;
    long chars = 0;
    int ln = 1, cl = 0;
    const char *start = text, *p = text;
    if (pos < 1)
        goto out;
    for (; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if ((ch & 0xC0) == 0x80) /* UTF-8 continuation byte */
            continue;
        if (++chars == pos) {
            found = true;
            break;
        }
        if (ch == '\n') {
            ln++;
            cl = 0;
            start = p + 1;
        } else {
            cl++;
        }
    }
    if (!found && chars + 1 == pos)
        found = true; /* the end of the text ("at end of input") */
    if (!found)
        goto out;
    *line = ln;
    *col = cl + 1;
    *line_start = start;
    *line_len = strcspn(start, "\n");
    if (*line_len > 0 && start[*line_len - 1] == '\r')
        (*line_len)--;
out:
    return found;
}

/* Prints the line (at most MIGRATE_QUOTE_MAX bytes) and a caret under
 * column col, indented, on stderr. */
static void print_caret(const char *line, size_t len, int col)
{
    if (len > MIGRATE_QUOTE_MAX)
        len = MIGRATE_QUOTE_MAX;
    fprintf(stderr, "    %.*s\n    ", (int)len, line);
    int c = 1;
    for (size_t i = 0; i < len && c < col; i++) {
        unsigned char ch = (unsigned char)line[i];
        if ((ch & 0xC0) == 0x80)
            continue;
        fputc(ch == '\t' ? '\t' : ' ', stderr);
        c++;
    }
    fputs("^\n", stderr);
}

/* The primary message of a failed result, else the connection's. */
static const char *result_message(const migrate_run *r, const PGresult *res)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    return m ? m : PQerrorMessage(r->conn);
}

/* Reports that m failed: PostgreSQL's message and SQLSTATE, where in the
 * file (line, column, the line itself) when the server says, and its
 * detail, hint, context and internal query. */
static void report_sql_error(const migrate_run *r, const migration *m, const PGresult *res)
{
    const char *msg = result_message(r, res);
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
    char where[64] = "";
    int line = 0, col = 0;
    const char *lstart = NULL;
    size_t llen = 0;
    bool located = false;
    if (pos) {
        char *end;
        long p = strtol(pos, &end, 10);
        located = *end == '\0' && locate_position(m->sql, p, &line, &col, &lstart, &llen);
        if (located)
            snprintf(where, sizeof(where), " at line %d, column %d", line, col);
    }
    say_error(r->password, "%s failed%s: %.*s%s%s%s", m->name, where, trimmed_len(msg), msg,
              state ? " (SQLSTATE " : "", state ? state : "", state ? ")" : "");
    if (located)
        print_caret(lstart, llen, col);
    static const struct {
        int field;
        const char *label;
    } extra[] = {
        {PG_DIAG_MESSAGE_DETAIL, "DETAIL"},
        {PG_DIAG_MESSAGE_HINT, "HINT"},
        {PG_DIAG_INTERNAL_QUERY, "QUERY"},
        {PG_DIAG_CONTEXT, "CONTEXT"},
    };
    for (size_t i = 0; res && i < sizeof(extra) / sizeof(extra[0]); i++) {
        const char *v = PQresultErrorField(res, extra[i].field);
        if (v)
            fprintf(stderr, "  %s: %.*s\n", extra[i].label, trimmed_len(v), v);
    }
}

/* ---------------------------------------------------------- connection */

/* Names the database for messages: `database "x" at host:port`. */
static void describe_target(migrate_run *r)
{
    const char *db = PQdb(r->conn), *host = PQhost(r->conn), *port = PQport(r->conn);
    bool v6 = host && strchr(host, ':') && host[0] != '/';
    snprintf(r->target, sizeof(r->target), "database \"%s\" at %s%s%s:%s", db ? db : "",
             v6 ? "[" : "", host && *host ? host : "localhost", v6 ? "]" : "",
             port && *port ? port : "5432");
}

/* Connects to url (a postgres:// URI or a key=value conninfo), adding
 * connect_timeout=MIGRATE_CONNECT_TIMEOUT unless it sets one and
 * client_encoding=UTF8 (positions in error messages count UTF-8
 * characters). 0, or -1 with the reason printed. */
static int run_connect(migrate_run *r, const char *url)
{
    int rc = -1;
    char *perr = NULL;
    const char **keys = NULL, **vals = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (!opts) {
        char clean[512];
        scrub_quoted(perr ? perr : "out of memory", clean, sizeof(clean));
        say_error(NULL,
                  "the database URL is not a PostgreSQL URL or connection string (%.*s); "
                  "expected postgres://USER:PASSWORD@HOST:PORT/DBNAME or "
                  "'host=HOST port=PORT dbname=DBNAME user=USER'",
                  trimmed_len(clean), clean);
        goto out;
    }
    size_t n = 0;
    for (const PQconninfoOption *o = opts; o->keyword; o++)
        n++;
    keys = calloc(n + 4, sizeof(*keys));
    vals = calloc(n + 4, sizeof(*vals));
    if (!keys || !vals) {
        say_error(NULL, "out of memory");
        goto out_free_opts;
    }
    size_t k = 0;
    bool has_timeout = false, has_appname = false;
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || strcmp(o->keyword, "client_encoding") == 0)
            continue;
        if (strcmp(o->keyword, "password") == 0 && o->val[0] && !r->password) {
            r->password = strdup(o->val);
            if (!r->password) {
                say_error(NULL, "out of memory");
                goto out_free_opts;
            }
        }
        has_timeout |= strcmp(o->keyword, "connect_timeout") == 0;
        has_appname |= strcmp(o->keyword, "fallback_application_name") == 0;
        keys[k] = o->keyword;
        vals[k++] = o->val;
    }
    if (!has_timeout) {
        keys[k] = "connect_timeout";
        vals[k++] = MIGRATE_CONNECT_TIMEOUT;
    }
    if (!has_appname) {
        keys[k] = "fallback_application_name";
        vals[k++] = "tollgate-migrate";
    }
    keys[k] = "client_encoding";
    vals[k++] = "UTF8";
    keys[k] = NULL;
    vals[k] = NULL;

    r->conn = PQconnectdbParams(keys, vals, 0);
    if (!r->conn) {
        say_error(NULL, "out of memory");
        goto out_free_opts;
    }
    describe_target(r);
    if (PQstatus(r->conn) != CONNECTION_OK) {
        const char *e = PQerrorMessage(r->conn);
        say_error(r->password, "cannot connect to %s: %.*s", r->target, trimmed_len(e), e);
        goto out_free_opts;
    }
    rc = 0;
out_free_opts:
    free(keys);
    free(vals);
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val)
            explicit_bzero(o->val, strlen(o->val));
    PQconninfoFree(opts);
out:
    PQfreemem(perr);
    return rc;
}

/* Closes the session (releasing the advisory lock) and wipes the password. */
static void run_close(migrate_run *r)
{
    PQfinish(r->conn);
    r->conn = NULL;
    if (r->password) {
        explicit_bzero(r->password, strlen(r->password));
        free(r->password);
        r->password = NULL;
    }
}

/* Runs sql, which must end in status want. The result (PQclear it), or
 * NULL with "<what> failed on <target>: <message>" printed. */
static PGresult *run_query(migrate_run *r, const char *sql, ExecStatusType want, const char *what)
{
    PGresult *res = PQexec(r->conn, sql);
    if (PQresultStatus(res) != want) {
        const char *m = result_message(r, res);
        say_error(r->password, "%s failed on %s: %.*s", what, r->target, trimmed_len(m), m);
        PQclear(res);
        res = NULL;
    }
    return res;
}

/* run_query() for a command without rows: 0 or -1. */
static int run_command(migrate_run *r, const char *sql, const char *what)
{
    PGresult *res = run_query(r, sql, PGRES_COMMAND_OK, what);
    int rc = res ? 0 : -1;
    PQclear(res);
    return rc;
}

/* Takes the migration lock, saying so when another migrate holds it and
 * this one waits. 0 or -1. */
static int take_lock(migrate_run *r)
{
    int rc = -1;
    PGresult *res = run_query(r, "SELECT pg_try_advisory_lock(" MIGRATE_LOCK_KEY ")",
                              PGRES_TUPLES_OK, "taking the migration lock");
    if (!res)
        goto out;
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        fprintf(stderr, "tollgate migrate: another migrate is running on %s; waiting for it\n",
                r->target);
        PQclear(res);
        res = run_query(r, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", PGRES_TUPLES_OK,
                        "waiting for the migration lock");
        if (!res)
            goto out;
    }
    rc = 0;
out:
    PQclear(res);
    return rc;
}

/* The rows of schema_migrations (MIGRATE_SELECT_APPLIED), or NULL with
 * the reason printed. Read-only: without the table, no rows. */
static PGresult *read_applied(migrate_run *r, bool create)
{
    PGresult *res = NULL;
    const char *sql = MIGRATE_SELECT_APPLIED;
    if (create) {
        if (run_command(r, MIGRATE_CREATE_TABLE, "creating the table schema_migrations") != 0)
            goto out;
    } else {
        PGresult *t = run_query(r, "SELECT to_regclass('schema_migrations') IS NOT NULL",
                                PGRES_TUPLES_OK, "looking for the table schema_migrations");
        if (!t)
            goto out;
        if (strcmp(PQgetvalue(t, 0, 0), "t") != 0)
            sql = MIGRATE_SELECT_NONE;
        PQclear(t);
    }
    res = run_query(r, sql, PGRES_TUPLES_OK, "reading the table schema_migrations");
out:
    return res;
}

/* ------------------------------------------------------------ the state */

/* The version of row i of an applied result. */
static int row_version(const PGresult *applied, int i)
{
    char *end;
    long v = strtol(PQgetvalue(applied, i, 0), &end, 10);
    return *end == '\0' && v > 0 && v <= 1000000000 ? (int)v : -1;
}

/* The row of applied with version v, or -1. */
static int find_applied(const PGresult *applied, int v)
{
    int found = -1;
    for (int i = 0; i < PQntuples(applied) && found < 0; i++)
        if (row_version(applied, i) == v)
            found = i;
    return found;
}

/* The embedded migration with version v, or NULL. */
static const migration *find_known(const migration *all, size_t n, int v)
{
    const migration *found = NULL;
    for (size_t i = 0; i < n && !found; i++)
        if (all[i].version == v)
            found = &all[i];
    return found;
}

/* The newest applied version, 0 when none. */
static int applied_version(const PGresult *applied)
{
    int rows = PQntuples(applied);
    return rows > 0 ? row_version(applied, rows - 1) : 0;
}

/* Whether migrate may go on from this state: 0, or -1 with each reason
 * printed (newer than known, unknown version, changed file, gap). */
static int check_applied(const PGresult *applied)
{
    int rc = 0;
    size_t n;
    const migration *all = migrations_all(&n);
    int db = applied_version(applied), latest = migrations_latest();
    if (db > latest) {
        say_error(NULL,
                  "database schema is at version %d, newer than this tollgate knows (%d): "
                  "upgrade tollgate",
                  db, latest);
        rc = -1;
        goto out;
    }
    for (int i = 0; i < PQntuples(applied); i++) {
        int v = row_version(applied, i);
        const migration *m = find_known(all, n, v);
        if (!m) {
            say_error(NULL,
                      "database has migration %s (version %d) applied, which this tollgate "
                      "does not carry: it was migrated by a different build",
                      PQgetvalue(applied, i, 1), v);
            rc = -1;
        } else if (strcmp(PQgetvalue(applied, i, 2), m->sha256) != 0) {
            say_error(NULL,
                      "migration %s was changed after it was applied (sha256 %.12s... in the "
                      "database, %.12s... in this tollgate): restore the file and put the change "
                      "in a new migration",
                      m->name, PQgetvalue(applied, i, 2), m->sha256);
            rc = -1;
        }
    }
    for (size_t i = 0; i < n && all[i].version < db; i++) {
        if (find_applied(applied, all[i].version) < 0) {
            say_error(NULL,
                      "migration %s is not applied but the newer version %d is: migrations "
                      "apply in order; apply it by hand or restore the database",
                      all[i].name, db);
            rc = -1;
        }
    }
out:
    return rc;
}

/* Milliseconds from a to b. */
static long long elapsed_ms(const struct timespec *a, const struct timespec *b)
{
    return (long long)(b->tv_sec - a->tv_sec) * 1000 + (b->tv_nsec - a->tv_nsec) / 1000000;
}

/* Applies m and records it, in one transaction; prints "applied NAME (N ms)".
 * 0, or -1 with the reason printed and the transaction rolled back. */
static int apply_one(migrate_run *r, const migration *m)
{
    int rc = -1;
    PGresult *res = NULL;
    struct timespec t0, t1;
    char version[16];
    clock_gettime(CLOCK_MONOTONIC, &t0);

    if (run_command(r, "BEGIN", "starting a transaction") != 0)
        goto out;
    res = PQexec(r->conn, m->sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        report_sql_error(r, m, res);
        goto out_rollback;
    }
    if (PQtransactionStatus(r->conn) != PQTRANS_INTRANS) {
        say_error(NULL,
                  "%s ended the transaction it runs in (a COMMIT or ROLLBACK in the file?): "
                  "it may be partly applied and is not recorded; migrations must not manage "
                  "transactions",
                  m->name);
        goto out;
    }
    PQclear(res);
    snprintf(version, sizeof(version), "%d", m->version);
    const char *params[3] = {version, m->name, m->sha256};
    res = PQexecParams(r->conn,
                       "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                       3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        const char *e = result_message(r, res);
        say_error(r->password, "recording %s in schema_migrations failed: %.*s", m->name,
                  trimmed_len(e), e);
        goto out_rollback;
    }
    PQclear(res);
    res = PQexec(r->conn, "COMMIT"); /* deferred constraints are checked here */
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        report_sql_error(r, m, res);
        goto out;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("applied %s (%lld ms)\n", m->name, elapsed_ms(&t0, &t1));
    fflush(stdout);
    rc = 0;
    goto out;

out_rollback:
    PQclear(res);
    res = PQexec(r->conn, "ROLLBACK");
    if (PQresultStatus(res) == PGRES_COMMAND_OK)
        say_error(NULL, "rolled back: nothing of %s was applied", m->name);
out:
    PQclear(res);
    return rc;
}

/* tollgate migrate: lock, check, apply what is missing. An exit code. */
static int do_migrate(migrate_run *r)
{
    int rc = MIGRATE_EXIT_FAIL;
    PGresult *applied = NULL;
    size_t n;
    const migration *all = migrations_all(&n);

    if (take_lock(r) != 0)
        goto out;
    applied = read_applied(r, true);
    if (!applied || check_applied(applied) != 0)
        goto out;
    int version = applied_version(applied);
    for (size_t i = 0; i < n; i++) {
        if (find_applied(applied, all[i].version) >= 0)
            continue;
        if (apply_one(r, &all[i]) != 0) {
            if (version > 0)
                say_error(NULL, "the schema stays at version %d", version);
            goto out;
        }
        version = all[i].version;
    }
    printf("schema is up to date at version %d\n", version);
    rc = MIGRATE_EXIT_OK;
out:
    PQclear(applied);
    return rc;
}

static int max_int(int a, int b)
{
    return a > b ? a : b;
}

/* tollgate migrate --status: one line per migration, known or applied, in
 * version order, then a summary. Exit 1 when migrate would refuse. */
static int do_status(migrate_run *r)
{
    int rc = MIGRATE_EXIT_FAIL;
    size_t n;
    const migration *all = migrations_all(&n);
    PGresult *applied = read_applied(r, false);
    if (!applied)
        goto out;
    int rows = PQntuples(applied), width = 0, pending = 0;
    for (size_t i = 0; i < n; i++)
        width = max_int(width, (int)strlen(all[i].name));
    for (int j = 0; j < rows; j++)
        width = max_int(width, (int)strlen(PQgetvalue(applied, j, 1)));
    printf("%s: schema at version %d; this tollgate knows up to %d\n", r->target,
           applied_version(applied), migrations_latest());
    size_t i = 0;
    int j = 0;
    while (i < n || j < rows) {
        int kv = i < n ? all[i].version : -1, av = j < rows ? row_version(applied, j) : -1;
        if (j >= rows || (i < n && kv < av)) {
            printf("  %-*s  pending\n", width, all[i].name);
            pending++;
            i++;
        } else if (i >= n || av < kv) {
            printf("  %-*s  applied %s UTC, unknown to this tollgate\n", width,
                   PQgetvalue(applied, j, 1), PQgetvalue(applied, j, 3));
            j++;
        } else {
            bool same = strcmp(PQgetvalue(applied, j, 2), all[i].sha256) == 0;
            printf("  %-*s  applied %s UTC%s\n", width, all[i].name, PQgetvalue(applied, j, 3),
                   same ? "" : ", CHANGED since (sha256 differs)");
            i++;
            j++;
        }
    }
    if (check_applied(applied) != 0)
        goto out;
    if (pending > 0)
        printf("%d pending: run tollgate migrate\n", pending);
    else
        printf("schema is up to date at version %d\n", applied_version(applied));
    rc = MIGRATE_EXIT_OK;
out:
    PQclear(applied);
    return rc;
}

/* ---------------------------------------------------------- the command */

#define MIGRATE_USAGE "usage: tollgate migrate [--config FILE | --database-url URL] [--status]\n"

/* The help text (--help). */
static void usage(FILE *f)
{
    fprintf(f,
            MIGRATE_USAGE
            "Applies the schema migrations built into this tollgate (up to version %d) that\n"
            "the database lacks, each in its own transaction, and records them in the table\n"
            "schema_migrations. Safe to start from several instances at once: they take\n"
            "turns, and the later ones find nothing to do.\n"
            "  --database-url URL  postgres://USER:PASSWORD@HOST:PORT/DBNAME or a libpq\n"
            "                      connection string ('host=... dbname=...')\n"
            "  --config FILE       use database.url of this config file\n"
            "  --status            list each migration as applied or pending; change nothing\n"
            "Without either option the URL comes from " MIGRATE_URL_ENV ".\n"
            "Exit 0 done (--status: unless migrate would refuse), 1 failure, 2 usage.\n",
            migrations_latest());
}

/* Parses argv (argv[0] is "migrate") into a. -1 to go on, else the exit
 * code (usage printed). */
static int parse_args(int argc, char **argv, migrate_args *a)
{
    int rc = -1;
    for (int i = 1; i < argc && rc < 0; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout);
            rc = MIGRATE_EXIT_OK;
        } else if (strcmp(arg, "--status") == 0) {
            a->status = true;
        } else if (strncmp(arg, "--database-url=", 15) == 0) {
            a->url = arg + 15;
        } else if (strcmp(arg, "--database-url") == 0 && i + 1 < argc) {
            a->url = argv[++i];
        } else if (strncmp(arg, "--config=", 9) == 0) {
            a->config_path = arg + 9;
        } else if ((strcmp(arg, "--config") == 0 || strcmp(arg, "-c") == 0) && i + 1 < argc) {
            a->config_path = argv[++i];
        } else {
            bool needs_value = strcmp(arg, "--database-url") == 0 || strcmp(arg, "--config") == 0 ||
                               strcmp(arg, "-c") == 0;
            fprintf(stderr,
                    needs_value ? "tollgate migrate: %s needs a value\n"
                                : "tollgate migrate: unknown argument '%s'\n",
                    arg);
            fputs(MIGRATE_USAGE, stderr);
            rc = MIGRATE_EXIT_USAGE;
        }
    }
    if (rc < 0 && a->url && a->config_path) {
        fprintf(stderr, "tollgate migrate: give --config or --database-url, not both\n");
        fputs(MIGRATE_USAGE, stderr);
        rc = MIGRATE_EXIT_USAGE;
    } else if (rc < 0 && ((a->url && !*a->url) || (a->config_path && !*a->config_path))) {
        fprintf(stderr, "tollgate migrate: %s is empty\n", a->url ? "--database-url" : "--config");
        fputs(MIGRATE_USAGE, stderr);
        rc = MIGRATE_EXIT_USAGE;
    }
    return rc;
}

/* The database URL: --database-url, else database.url of --config FILE,
 * else $TOLLGATE_DATABASE_URL. 0 with *out set (free it wiped), or an
 * exit code with the reason printed. */
static int resolve_url(const migrate_args *a, char **out)
{
    int rc = MIGRATE_EXIT_FAIL;
    config *cfg = NULL;
    const char *url = a->url;
    if (!url && a->config_path) {
        char err[512];
        if (config_load_file(a->config_path, &cfg, err, sizeof(err)) != 0) {
            say_error(NULL, "%s", err); /* config errors never quote a secret */
            goto out;
        }
        url = cfg->database.url && *cfg->database.url ? cfg->database.url : NULL;
    }
    if (!url) {
        const char *env = getenv(MIGRATE_URL_ENV);
        url = env && *env ? env : NULL;
    }
    if (!url) {
        if (a->config_path)
            say_error(NULL,
                      "%s sets no database.url and " MIGRATE_URL_ENV " is not set: "
                      "nothing to migrate",
                      a->config_path);
        else
            say_error(NULL, "no database given: use --database-url URL, or --config FILE with "
                            "database.url set, or set " MIGRATE_URL_ENV);
        rc = MIGRATE_EXIT_USAGE;
        goto out;
    }
    *out = strdup(url);
    if (!*out) {
        say_error(NULL, "out of memory");
        goto out;
    }
    rc = 0;
out:
    config_unref(cfg);
    return rc;
}

int cli_migrate(int argc, char **argv)
{
    migrate_args a = {0};
    migrate_run r = {0};
    char *url = NULL;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0)
        goto out;
    rc = resolve_url(&a, &url);
    if (rc != 0)
        goto out;
    rc = MIGRATE_EXIT_FAIL;
    if (run_connect(&r, url) != 0)
        goto out_close;
    /* "relation already exists, skipping" and the like are noise here */
    if (run_command(&r, "SET client_min_messages = warning", "setting client_min_messages") != 0)
        goto out_close;
    rc = a.status ? do_status(&r) : do_migrate(&r);
out_close:
    run_close(&r);
out:
    if (fflush(stdout) != 0 && rc == MIGRATE_EXIT_OK)
        rc = MIGRATE_EXIT_FAIL;
    if (url) {
        explicit_bzero(url, strlen(url));
        free(url);
    }
    return rc;
}
