-- 0006_credit_leases.sql: a team in a consumption mode may be refused
-- calls when its credits run out, across instances, without a query per
-- call.
--
-- teams.credit_limit_nano says how far below zero the balance may go: 0
-- is prepaid (calls stop at zero), NULL means credits are not enforced
-- (postpaid: the balance records usage, an invoice settles it). New teams
-- are prepaid; teams that existed before this migration keep their
-- behaviour (not enforced) until an admin sets a limit.
--
-- An enforced team in consumption_usd or consumption_tokens mode has a
-- budget of scope 'credit' (kept by a trigger). Instances take leases on
-- it with tollgate_lease() like on any budget, but what a lease may be
-- granted from is the team's credit, not a maximum:
--
--   balance + credit_limit - spent - the leases of others
--
-- where spent is the usage instances have reported and the ledger has not
-- yet charged: a report adds to it (tollgate_lease), the ledger's charge
-- takes it away in the statement that lowers the balance (the calls
-- insert). Either may come first; while the charge is ahead, spent is
-- below 0 and counts as 0 (the usage is then in the balance and still in
-- a lease: counted twice, never missed). Amounts are billionths of a
-- credit, as in credit_transactions.
--
-- The lease of an instance that stopped answering is counted as spent
-- when it is reclaimed (assumed), as for any budget. A budget's period
-- ends that; credits have none, so an assumed amount is forgotten an hour
-- after it was assumed: by then the instance's spool has been replayed
-- (its calls are in the balance) or it is not coming back.
--
-- A team in job_based mode with a limit starts a job only while its
-- balance covers one credit (jobs are created by a statement anyway).
--
-- A key of the config file with a budget (max_budget, budget_duration) is
-- enforced across the instances that share a database the same way: a
-- budget of scope 'config', its id derived from the key's alias by the
-- gateway, created or updated from the config by tollgate_lease_config().

ALTER TABLE teams ADD COLUMN credit_limit_nano bigint CHECK (credit_limit_nano >= 0);
ALTER TABLE teams ALTER COLUMN credit_limit_nano SET DEFAULT 0;

ALTER TABLE budgets DROP CONSTRAINT budgets_scope_check,
    ADD CONSTRAINT budgets_scope_check CHECK (scope IN ('key', 'team', 'org', 'credit', 'config')),
    ADD COLUMN assumed_at timestamptz;

CREATE FUNCTION tollgate_credit_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.budget_mode IN ('consumption_usd', 'consumption_tokens')
       AND NEW.credit_limit_nano IS NOT NULL THEN
        INSERT INTO budgets (scope, scope_id, max_nano) VALUES ('credit', NEW.id, 0)
        ON CONFLICT (scope, scope_id) DO NOTHING;
    ELSE
        DELETE FROM budgets WHERE scope = 'credit' AND scope_id = NEW.id;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER teams_credit AFTER INSERT OR UPDATE OF budget_mode, credit_limit_nano ON teams
    FOR EACH ROW EXECUTE FUNCTION tollgate_credit_sync();
-- a deleted team's credit budget goes with it (its leases by cascade)
CREATE FUNCTION tollgate_credit_drop() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM budgets WHERE scope = 'credit' AND scope_id = OLD.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER teams_credit_drop AFTER DELETE ON teams
    FOR EACH ROW EXECUTE FUNCTION tollgate_credit_drop();

INSERT INTO budgets (scope, scope_id, max_nano)
SELECT 'credit', id, 0 FROM teams WHERE budget_mode IN ('consumption_usd', 'consumption_tokens')
   AND credit_limit_nano IS NOT NULL
ON CONFLICT (scope, scope_id) DO NOTHING;

-- the gateway caches the limit with the team
DROP TRIGGER teams_notify_update ON teams;
CREATE TRIGGER teams_notify_update
    AFTER UPDATE OF org_id, name, status, budget_mode, tokens_per_credit, max_budget_nano,
                    budget_duration, rpm, tpm, credit_limit_nano ON teams
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();

-- tollgate_lease (0004) with the credit branch: for scope 'credit' the
-- maximum is the team's balance plus its limit, spent below 0 counts as 0, assumed
-- amounts are forgotten after an hour, and there is no soft threshold.
CREATE OR REPLACE FUNCTION tollgate_lease(p_scope text, p_scope_id uuid, p_instance text,
                                          p_lease_id uuid, p_spent bigint, p_want bigint,
                                          p_ttl_ms integer, p_soft_pct integer DEFAULT 0)
RETURNS TABLE (lease_id uuid, granted bigint, max_nano bigint, spent_nano bigint,
               leased_nano bigint, period_start timestamptz, reset_at timestamptz,
               soft_crossed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
    mine budget_leases%ROWTYPE;
    expired bigint;
    others bigint;
    g bigint;
    step interval;
    n bigint;
    soft boolean;
    credit boolean := p_scope = 'credit';
BEGIN
    SELECT * INTO b FROM budgets
     WHERE budgets.scope = p_scope AND budgets.scope_id = p_scope_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF credit THEN
        SELECT t.credit_balance_nano + coalesce(t.credit_limit_nano, 0) INTO b.max_nano
          FROM teams t WHERE t.id = p_scope_id;
        IF b.assumed_nano > 0 AND b.assumed_at < now() - interval '1 hour' THEN
            b.spent_nano := b.spent_nano - b.assumed_nano;
            b.assumed_nano := 0;
        END IF;
    END IF;
    -- 1. the period
    IF b.reset_at IS NOT NULL AND now() >= b.reset_at THEN
        -- jump over the whole periods that went by (a '1s' budget idle
        -- for a week has 600,000 of them: one step each would outlast
        -- the statement timeout, for ever), then step the last few
        IF b.duration NOT LIKE '%mo' THEN
            step := CASE right(b.duration, 1)
                        WHEN 's' THEN make_interval(secs => left(b.duration, -1)::int)
                        WHEN 'm' THEN make_interval(mins => left(b.duration, -1)::int)
                        WHEN 'h' THEN make_interval(hours => left(b.duration, -1)::int)
                        ELSE make_interval(days => left(b.duration, -1)::int) END;
            n := floor(extract(epoch FROM now() - b.period_start) / extract(epoch FROM step))::bigint - 1;
            IF n > 1 THEN
                b.reset_at := b.period_start + step * n; -- a period's end, before now
            END IF;
        END IF;
        WHILE now() >= b.reset_at LOOP
            b.period_start := b.reset_at;
            b.reset_at := tollgate_period_end(b.period_start, b.duration);
        END LOOP;
        b.spent_nano := 0;
        b.assumed_nano := 0;
        b.leased_nano := 0;
        DELETE FROM budget_leases l WHERE l.scope = p_scope AND l.scope_id = p_scope_id;
    END IF;
    -- 2. expired leases of others
    WITH gone AS (
        DELETE FROM budget_leases l
         WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.expires_at < now()
           AND l.instance <> p_instance
        RETURNING l.amount_nano)
    SELECT coalesce(sum(amount_nano), 0) INTO expired FROM gone;
    b.spent_nano := b.spent_nano + expired;
    b.assumed_nano := b.assumed_nano + expired;
    IF expired > 0 THEN
        b.assumed_at := now();
    END IF;
    -- 3. this instance's report
    SELECT * INTO mine FROM budget_leases l
     WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.instance = p_instance;
    IF FOUND AND (mine.lease_id <> p_lease_id OR p_lease_id IS NULL
                  OR mine.period_start <> b.period_start) THEN
        -- a lease this caller does not know of (it restarted): its amount
        -- may have been spent; count it, as for an expired one
        b.spent_nano := b.spent_nano + mine.amount_nano;
        b.assumed_nano := b.assumed_nano + mine.amount_nano;
        b.assumed_at := now();
        DELETE FROM budget_leases l
         WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.instance = p_instance;
        FOUND := false;
        mine := NULL;
    END IF;
    IF mine.lease_id IS NOT NULL THEN
        b.spent_nano := b.spent_nano + greatest(p_spent, 0);
    END IF;
    -- 4. the new lease
    SELECT coalesce(sum(l.amount_nano), 0) INTO others FROM budget_leases l
     WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.instance <> p_instance;
    g := least(greatest(p_want, 0),
               greatest(b.max_nano - CASE WHEN credit THEN greatest(b.spent_nano, 0)
                                          ELSE b.spent_nano END - others, 0));
    IF g > 0 THEN
        INSERT INTO budget_leases AS l (scope, scope_id, instance, lease_id, amount_nano,
                                        period_start, expires_at)
        VALUES (p_scope, p_scope_id, p_instance, coalesce(mine.lease_id, gen_random_uuid()), g,
                b.period_start, now() + make_interval(secs => p_ttl_ms / 1000.0))
        ON CONFLICT ON CONSTRAINT budget_leases_pkey DO UPDATE
            SET amount_nano = excluded.amount_nano, expires_at = excluded.expires_at,
                period_start = excluded.period_start
        RETURNING l.lease_id INTO mine.lease_id;
    ELSE
        DELETE FROM budget_leases l
         WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.instance = p_instance;
        mine.lease_id := NULL;
    END IF;
    -- 5. the soft threshold: reported once per period, to the first
    --    instance that sees the spend past it
    soft := NOT credit AND p_soft_pct > 0
            AND b.spent_nano::numeric * 100 >= b.max_nano::numeric * p_soft_pct
            AND b.soft_fired_for IS DISTINCT FROM b.period_start;
    IF soft THEN
        b.soft_fired_for := b.period_start;
    END IF;
    UPDATE budgets SET period_start = b.period_start, reset_at = b.reset_at,
                       spent_nano = b.spent_nano, assumed_nano = b.assumed_nano,
                       assumed_at = b.assumed_at,
                       leased_nano = others + g, soft_fired_for = b.soft_fired_for,
                       updated_at = now()
     WHERE budgets.scope = p_scope AND budgets.scope_id = p_scope_id;
    RETURN QUERY SELECT mine.lease_id, g, b.max_nano,
                        CASE WHEN credit THEN greatest(b.spent_nano, 0) ELSE b.spent_nano END,
                        others + g, b.period_start, b.reset_at, soft;
END;
$$;

-- A config key's budget: the row is made (or its maximum and duration set)
-- from what the instance's config says, then leased like any budget.
CREATE FUNCTION tollgate_lease_config(p_scope_id uuid, p_max bigint, p_duration text,
                                      p_instance text, p_lease_id uuid, p_spent bigint,
                                      p_want bigint, p_ttl_ms integer, p_soft_pct integer DEFAULT 0)
RETURNS TABLE (lease_id uuid, granted bigint, max_nano bigint, spent_nano bigint,
               leased_nano bigint, period_start timestamptz, reset_at timestamptz,
               soft_crossed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    start timestamptz := CASE WHEN p_duration LIKE '%mo'
                              THEN date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                              ELSE now() END;
BEGIN
    INSERT INTO budgets AS b (scope, scope_id, max_nano, duration, period_start, reset_at)
    VALUES ('config', p_scope_id, p_max, p_duration, start, tollgate_period_end(start, p_duration))
    ON CONFLICT (scope, scope_id) DO UPDATE
        SET max_nano = excluded.max_nano,
            duration = excluded.duration,
            reset_at = CASE WHEN b.duration IS NOT DISTINCT FROM excluded.duration THEN b.reset_at
                            ELSE tollgate_period_end(b.period_start, excluded.duration) END,
            updated_at = now()
        WHERE b.max_nano <> excluded.max_nano OR b.duration IS DISTINCT FROM excluded.duration;
    RETURN QUERY SELECT * FROM tollgate_lease('config', p_scope_id, p_instance, p_lease_id,
                                              p_spent, p_want, p_ttl_ms, p_soft_pct);
END;
$$;
