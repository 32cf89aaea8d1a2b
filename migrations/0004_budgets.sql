-- 0004_budgets.sql: budgets on keys, teams and organizations, enforced by
-- every instance through leases (DESIGN.md §6, docs/billing.md).
--
-- A budget is a maximum customer price (nano-USD) per period. Its row is
-- kept in step with the max_budget_nano / budget_duration columns of the
-- key, team or organization by triggers. spent_nano is the spend
-- instances have reported; leased_nano the sum of the outstanding leases.
-- An instance never asks the database per request: it holds a lease (a
-- slice of the remaining budget), admits calls from it in memory by their
-- worst-case price, and calls tollgate_lease() to report what it spent
-- and to renew, grow, shrink or return its lease. The function grants
-- only from max - spent - other leases, under the budget row's lock, so
-- spent + leases never exceed the maximum.
--
-- A lease that is not renewed expires; the next call on that budget
-- reclaims it and counts its whole amount as spent (the instance that
-- held it may have spent it before it died), so a crashed instance can
-- never cause an overspend; the budget just refuses a little early until
-- its period resets.

-- durations: s, m, h and d are fixed lengths, mo calendar months (UTC)
ALTER TABLE virtual_keys DROP CONSTRAINT virtual_keys_budget_duration_check,
    ADD CONSTRAINT virtual_keys_budget_duration_check
        CHECK (budget_duration ~ '^[1-9][0-9]{0,5}(s|m|h|d|mo)$');
ALTER TABLE organizations
    ADD COLUMN max_budget_nano bigint CHECK (max_budget_nano >= 0),
    ADD COLUMN budget_duration text CHECK (budget_duration ~ '^[1-9][0-9]{0,5}(s|m|h|d|mo)$');
ALTER TABLE teams
    ADD COLUMN max_budget_nano bigint CHECK (max_budget_nano >= 0),
    ADD COLUMN budget_duration text CHECK (budget_duration ~ '^[1-9][0-9]{0,5}(s|m|h|d|mo)$');

CREATE TABLE budgets (
    scope        text NOT NULL CHECK (scope IN ('key', 'team', 'org')),
    scope_id     uuid NOT NULL,
    max_nano     bigint NOT NULL CHECK (max_nano >= 0),
    duration     text CHECK (duration ~ '^[1-9][0-9]{0,5}(s|m|h|d|mo)$'), -- NULL: never resets
    period_start timestamptz NOT NULL DEFAULT now(),
    reset_at     timestamptz,                                    -- NULL: never
    spent_nano   bigint NOT NULL DEFAULT 0,
    leased_nano  bigint NOT NULL DEFAULT 0 CHECK (leased_nano >= 0),
    assumed_nano bigint NOT NULL DEFAULT 0,   -- of spent: expired leases counted whole
    soft_fired_for timestamptz,                -- the period whose soft threshold was reported
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, scope_id)
);

CREATE TABLE budget_leases (
    scope        text NOT NULL,
    scope_id     uuid NOT NULL,
    instance     text NOT NULL,
    lease_id     uuid NOT NULL DEFAULT gen_random_uuid(),
    amount_nano  bigint NOT NULL CHECK (amount_nano >= 0),
    period_start timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (scope, scope_id, instance),
    FOREIGN KEY (scope, scope_id) REFERENCES budgets (scope, scope_id) ON DELETE CASCADE
);

-- The end of the period that starts at `start`: fixed lengths for s, m, h
-- and d, calendar months (UTC) for mo.
CREATE FUNCTION tollgate_period_end(start timestamptz, duration text)
RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN duration IS NULL THEN NULL
        WHEN duration LIKE '%mo' THEN
            (date_trunc('month', start AT TIME ZONE 'UTC')
             + make_interval(months => left(duration, -2)::int)) AT TIME ZONE 'UTC'
        WHEN duration LIKE '%s' THEN start + make_interval(secs => left(duration, -1)::int)
        WHEN duration LIKE '%m' THEN start + make_interval(mins => left(duration, -1)::int)
        WHEN duration LIKE '%h' THEN start + make_interval(hours => left(duration, -1)::int)
        ELSE start + make_interval(days => left(duration, -1)::int)
    END
$$;

-- Keeps budgets in step with the owners' columns.
CREATE FUNCTION tollgate_budget_sync() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sc text := CASE TG_TABLE_NAME WHEN 'virtual_keys' THEN 'key'
                                  WHEN 'teams' THEN 'team' ELSE 'org' END;
BEGIN
    IF TG_OP = 'DELETE' OR NEW.max_budget_nano IS NULL THEN
        DELETE FROM budgets WHERE scope = sc
           AND scope_id = CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
        RETURN NULL;
    END IF;
    INSERT INTO budgets AS b (scope, scope_id, max_nano, duration, period_start, reset_at)
    VALUES (sc, NEW.id, NEW.max_budget_nano, NEW.budget_duration,
            CASE WHEN NEW.budget_duration LIKE '%mo'
                 THEN date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                 ELSE now() END,
            tollgate_period_end(CASE WHEN NEW.budget_duration LIKE '%mo'
                                     THEN date_trunc('month', now() AT TIME ZONE 'UTC')
                                          AT TIME ZONE 'UTC'
                                     ELSE now() END, NEW.budget_duration))
    ON CONFLICT (scope, scope_id) DO UPDATE
        SET max_nano = excluded.max_nano,
            duration = excluded.duration,
            reset_at = CASE WHEN b.duration IS NOT DISTINCT FROM excluded.duration THEN b.reset_at
                            ELSE tollgate_period_end(b.period_start, excluded.duration) END,
            updated_at = now();
    RETURN NULL;
END;
$$;

CREATE TRIGGER virtual_keys_budget AFTER INSERT OR DELETE OR UPDATE OF max_budget_nano, budget_duration
    ON virtual_keys FOR EACH ROW EXECUTE FUNCTION tollgate_budget_sync();
CREATE TRIGGER teams_budget AFTER INSERT OR DELETE OR UPDATE OF max_budget_nano, budget_duration
    ON teams FOR EACH ROW EXECUTE FUNCTION tollgate_budget_sync();
CREATE TRIGGER organizations_budget AFTER INSERT OR DELETE OR UPDATE OF max_budget_nano, budget_duration
    ON organizations FOR EACH ROW EXECUTE FUNCTION tollgate_budget_sync();

-- Budgets for keys that already have one (0001 had the columns).
INSERT INTO budgets (scope, scope_id, max_nano, duration, period_start, reset_at)
SELECT 'key', id, max_budget_nano, budget_duration, now(),
       tollgate_period_end(now(), budget_duration)
  FROM virtual_keys WHERE max_budget_nano IS NOT NULL;

-- One instance's lease on one budget, in one locked step:
--   1. roll the period if it ended (spend and leases start again);
--   2. reclaim expired leases of other instances, counting them as spent;
--   3. take p_spent (what this instance spent from its lease p_lease_id
--      since its last call) into spent; a report for a lease that is gone
--      (reclaimed, or of an old period) was already counted and is dropped;
--   4. set this instance's lease to min(p_want, max - spent - other
--      leases), at least 0, for p_ttl_ms.
-- No row when the budget does not exist (the owner has none).
CREATE FUNCTION tollgate_lease(p_scope text, p_scope_id uuid, p_instance text,
                               p_lease_id uuid, p_spent bigint, p_want bigint, p_ttl_ms integer,
                               p_soft_pct integer DEFAULT 0)
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
BEGIN
    SELECT * INTO b FROM budgets
     WHERE budgets.scope = p_scope AND budgets.scope_id = p_scope_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
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
    -- 3. this instance's report
    SELECT * INTO mine FROM budget_leases l
     WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.instance = p_instance;
    IF FOUND AND (mine.lease_id <> p_lease_id OR p_lease_id IS NULL
                  OR mine.period_start <> b.period_start) THEN
        -- a lease this caller does not know of (it restarted): its amount
        -- may have been spent; count it, as for an expired one
        b.spent_nano := b.spent_nano + mine.amount_nano;
        b.assumed_nano := b.assumed_nano + mine.amount_nano;
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
    g := least(greatest(p_want, 0), greatest(b.max_nano - b.spent_nano - others, 0));
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
    soft := p_soft_pct > 0 AND b.spent_nano::numeric * 100 >= b.max_nano::numeric * p_soft_pct
            AND b.soft_fired_for IS DISTINCT FROM b.period_start;
    IF soft THEN
        b.soft_fired_for := b.period_start;
    END IF;
    UPDATE budgets SET period_start = b.period_start, reset_at = b.reset_at,
                       spent_nano = b.spent_nano, assumed_nano = b.assumed_nano,
                       leased_nano = others + g, soft_fired_for = b.soft_fired_for,
                       updated_at = now()
     WHERE budgets.scope = p_scope AND budgets.scope_id = p_scope_id;
    RETURN QUERY SELECT mine.lease_id, g, b.max_nano, b.spent_nano, others + g, b.period_start,
                        b.reset_at, soft;
END;
$$;

-- The gateway caches a team's budget and its org's with the team: notify
-- the teams when either changes.
DROP TRIGGER teams_notify_update ON teams;
CREATE TRIGGER teams_notify_update
    AFTER UPDATE OF org_id, name, status, budget_mode, tokens_per_credit, max_budget_nano,
                    budget_duration ON teams
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();

CREATE FUNCTION tollgate_notify_org_teams() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tollgate_cache', 'teams:' || t.id::text) FROM teams t WHERE t.org_id = NEW.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER organizations_notify_budget
    AFTER UPDATE OF max_budget_nano, budget_duration ON organizations
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_org_teams();
