-- 0003_jobs_credits.sql: jobs (cost per business operation) and team
-- credits as a ledger of transactions.
--
-- A job belongs to the team of the key that created it (a key of the
-- config file, which has no team, owns its jobs by its alias). Calls
-- attach to a running job with the x-tollgate-job header; the calls table
-- carries the job id, so a job's summary is a sum over its calls.
--
-- Credits: every change of a team's balance is a row of
-- credit_transactions; the trigger keeps teams.credit_balance_nano equal to
-- their sum in the same transaction. Amounts are billionths of a credit
-- (consumption_usd: nano-USD). (kind, reference) is unique, so a payment
-- id or a job is charged or credited at most once, however often it is
-- replayed.

CREATE TABLE jobs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id     uuid REFERENCES teams (id) ON DELETE CASCADE,
    key_id      uuid REFERENCES virtual_keys (id) ON DELETE SET NULL,
    key_alias   text NOT NULL,
    type        text NOT NULL CHECK (length(type) BETWEEN 1 AND 200),
    metadata    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed', 'failed')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_team_created ON jobs (team_id, created_at);

CREATE TRIGGER jobs_notify AFTER UPDATE OF status OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();

CREATE TABLE credit_transactions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_id     uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    amount_nano bigint NOT NULL CHECK (amount_nano <> 0),
    kind        text NOT NULL CHECK (kind IN ('topup', 'adjustment', 'payment', 'job',
                                                'usage', 'refund')),
    reference   text,                     -- payment id, job id, ...
    actor       text NOT NULL,            -- "master", "admin:<name>", "webhook", "gateway"
    note        text,
    at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, reference)
);
CREATE INDEX credit_transactions_team ON credit_transactions (team_id, at);

CREATE FUNCTION tollgate_credit_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE teams SET credit_balance_nano = credit_balance_nano + NEW.amount_nano
     WHERE id = NEW.team_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER credit_transactions_apply AFTER INSERT ON credit_transactions
    FOR EACH ROW EXECUTE FUNCTION tollgate_credit_apply();

-- A balance change must not make every instance reload the team: notify
-- only when a cached column changes.
DROP TRIGGER teams_notify ON teams;
CREATE TRIGGER teams_notify AFTER INSERT OR DELETE ON teams
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
CREATE TRIGGER teams_notify_update
    AFTER UPDATE OF org_id, name, status, budget_mode, tokens_per_credit ON teams
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
