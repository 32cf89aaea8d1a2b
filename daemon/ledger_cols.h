/* ledger_cols.h - ledger rows as one PostgreSQL array literal per column.
 *
 * The ledger hands its sink a JSON array of rows (billing/ledger.h). The
 * store sends them as 28 array parameters read with unnest() rather than
 * one jsonb parameter read with jsonb_to_recordset(): PostgreSQL spends
 * about 15 us less per row that way (22 against 37 us of backend CPU for
 * the whole ledger statement, 500-row batches), and the database shares
 * the machine with the gateway.
 *
 * The conversion keeps jsonb_to_recordset's meaning: a member that is
 * absent or null is NULL, members of other names are ignored. Whatever it
 * could not carry over exactly (a string holding NUL, a number that is not
 * a plain integer, a member given twice, an element that is not an
 * object) makes ledger_cols_fill() answer -EINVAL, and the caller sends
 * that batch as JSON, so the database judges every row as it always did. */
#ifndef TG_DAEMON_LEDGER_COLS_H
#define TG_DAEMON_LEDGER_COLS_H

#include <stddef.h>

#include "daemon/base/buf.h"

#define LEDGER_NCOLS 29

/* The rows as SQL: a FROM item over parameters $1..$28 (the columns)... */
#define LEDGER_COLS_UNNEST                                                                         \
    "unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::uuid[], $6::text[], "       \
    "$7::uuid[], $8::uuid[], $9::uuid[], $10::text[], $11::text[], $12::text[], $13::text[], "     \
    "$14::boolean[], $15::integer[], $16::integer[], $17::bigint[], $18::bigint[], "               \
    "$19::bigint[], $20::bigint[], $21::text[], $22::bigint[], $23::bigint[], $24::text[], "       \
    "$25::bigint[], $26::bigint[], $27::text[], $28::smallint[], $29::boolean[]) AS x(id, at, "    \
    "request_id, instance, key_id, key_alias, team_id, org_id, job_id, endpoint, "                 \
    "requested_model, provider, "                                                                  \
    "provider_model, stream, status, upstream_status, prompt_tokens, completion_tokens, "          \
    "cached_tokens, cache_write_tokens, usage_source, cost_nano, price_nano, credential, "         \
    "latency_us, ttft_us, error, attempts, credit_leased)"
/* ... and over one parameter (the JSON array), with the same columns. */
#define LEDGER_JSON_RECORDSET(param)                                                               \
    "jsonb_to_recordset(" param "::jsonb) AS x(id text, at timestamptz, request_id text, "         \
    "instance text, key_id uuid, key_alias text, team_id uuid, org_id uuid, job_id uuid, "         \
    "endpoint text, requested_model text, provider text, provider_model text, stream boolean, "    \
    "status integer, upstream_status integer, prompt_tokens bigint, completion_tokens bigint, "    \
    "cached_tokens bigint, cache_write_tokens bigint, usage_source text, cost_nano bigint, "       \
    "price_nano bigint, credential text, latency_us bigint, ttft_us bigint, error text, "          \
    "attempts smallint, credit_leased boolean)"

/* Column names in parameter order ($1 = id ... $28 = attempts, $29 =
 * credit_leased: not a column of calls, see billing/ledger.h). */
extern const char *const ledger_col_names[LEDGER_NCOLS];

typedef struct ledger_cols {
    buf col[LEDGER_NCOLS]; /* "{...}" array literals (buf keeps them NUL-terminated) */
    size_t rows;
    unsigned char guess[LEDGER_NCOLS * 2]; /* column of the i-th member, learnt from the last row */
} ledger_cols;

void ledger_cols_init(ledger_cols *c);
void ledger_cols_free(ledger_cols *c);

/* Fills c (reset first) from json[0..len), a JSON array of row objects.
 * 0; -EINVAL when the rows are not valid JSON or cannot be written as
 * array elements exactly (send the JSON instead); -ENOMEM. */
int ledger_cols_fill(ledger_cols *c, const char *json, size_t len);

#endif
