-- 0002_ledger.sql: the usage ledger (one row per call, partitioned by
-- month) and its daily rollup.
--
-- Rows arrive in batches from every instance (billing/ledger.h) with
-- INSERT ... ON CONFLICT DO NOTHING on (id, at), so a batch that is
-- retried or replayed from a spool never counts twice. `id` is the
-- gateway's own id of the call (128 random bits), unique whatever the
-- client sent as x-request-id (kept in request_id). `at` is the call's
-- start as the gateway saw it; it is the partition key and travels with
-- the row, so a replay lands in the same partition. The rollup is fed in
-- the same statement from the rows actually inserted (RETURNING), so it
-- stays equal to the sum of the calls.
--
-- Money: BIGINT nano-USD. cost_nano is what the provider charges (list
-- price), price_nano what the customer is charged (0 for BYOK calls);
-- NULL when unknown (no price for the model).

CREATE TABLE calls (
    id                 text NOT NULL,             -- the gateway's call id
    at                 timestamptz NOT NULL,
    request_id         text NOT NULL,             -- x-request-id (the client's or generated)
    instance           text NOT NULL,             -- the gateway instance that served it
    key_id             uuid,                      -- NULL: a key of the config file
    key_alias          text NOT NULL,
    team_id            uuid,
    org_id             uuid,
    job_id             uuid,
    endpoint           text NOT NULL,             -- chat, messages, completions, embeddings
    requested_model    text NOT NULL,
    provider           text NOT NULL,
    provider_model     text NOT NULL,
    stream             boolean NOT NULL,
    status             integer NOT NULL,          -- HTTP status sent to the client
    upstream_status    integer,
    prompt_tokens      bigint NOT NULL DEFAULT 0,
    completion_tokens  bigint NOT NULL DEFAULT 0,
    cached_tokens      bigint NOT NULL DEFAULT 0,
    cache_write_tokens bigint NOT NULL DEFAULT 0,
    usage_source       text NOT NULL CHECK (usage_source IN ('provider', 'estimated', 'none')),
    cost_nano          bigint,
    price_nano         bigint,
    credential         text NOT NULL,             -- config, org, team_byok, key_byok
    latency_us         bigint NOT NULL,
    ttft_us            bigint,
    error              text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);

CREATE INDEX calls_team_at ON calls (team_id, at);
CREATE INDEX calls_key_at ON calls (key_id, at);
CREATE INDEX calls_job ON calls (job_id) WHERE job_id IS NOT NULL;

-- A catch-all for rows outside every monthly partition (a clock far off):
-- nothing is ever refused for want of a partition.
CREATE TABLE calls_default PARTITION OF calls DEFAULT;

-- Creates the monthly partitions from the month of `since` for `months`
-- months (skips those that exist). The gateway calls it at start and
-- daily; retention is DROP TABLE calls_YYYYMM.
CREATE FUNCTION tollgate_calls_partitions(since timestamptz, months integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    m timestamptz := date_trunc('month', since AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    made integer := 0;
    name text;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        name := 'calls_' || to_char(m AT TIME ZONE 'UTC', 'YYYYMM');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF calls FOR VALUES FROM (%L) TO (%L)',
                           name, m, m + interval '1 month');
            made := made + 1;
        END IF;
        m := m + interval '1 month';
    END LOOP;
    RETURN made;
END;
$$;

SELECT tollgate_calls_partitions(now() - interval '1 month', 4);

-- Daily sums per tenant, key, job, model and provider, for analytics
-- that stay fast at billions of calls.
CREATE TABLE usage_daily (
    day                date NOT NULL,
    org_id             uuid,
    team_id            uuid,
    key_id             uuid,
    key_alias          text NOT NULL,
    job_id             uuid,
    requested_model    text NOT NULL,
    provider           text NOT NULL,
    requests           bigint NOT NULL,
    errors             bigint NOT NULL,
    prompt_tokens      bigint NOT NULL,
    completion_tokens  bigint NOT NULL,
    cached_tokens      bigint NOT NULL,
    cost_nano          bigint NOT NULL,
    price_nano         bigint NOT NULL,
    latency_us_sum     bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (day, org_id, team_id, key_id, key_alias, job_id, requested_model,
                               provider)
);
CREATE INDEX usage_daily_team_day ON usage_daily (team_id, day);
