-- 0010_lease_reports.sql: a report that comes after a zero grant counts.
--
-- When a renewal can grant nothing (the budget was lowered, the credit
-- balance fell, another instance's lease was assumed) tollgate_lease()
-- deletes the caller's lease and answers with no lease id. The caller may
-- still have calls in flight that were admitted from that lease; when they
-- end, their spend is reported by the next call, which has no lease id to
-- send. 0004 and 0006 took a report only with the caller's current lease,
-- so that spend was dropped: a budget counted less than was spent, and a
-- credit budget was left with spent below 0 for ever (the ledger's charge
-- lowered it, no report raised it back).
--
-- A report without a lease id is now taken. A report naming a lease that
-- is gone is still dropped: that lease was reclaimed (counted whole, as
-- assumed) or belonged to a period that has ended.

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
    -- the report: with this caller's lease, or with none (its lease was
    -- deleted by a zero grant while calls it had admitted were in flight)
    IF mine.lease_id IS NOT NULL OR p_lease_id IS NULL THEN
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
