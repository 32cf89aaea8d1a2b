-- 0005_rate_limits.sql: requests and tokens per minute, per key and per
-- team, held across instances.
--
-- Each minute (the database's clock) is a window with an allowance per
-- limited key or team. Instances take slices of the window's allowance
-- with tollgate_rate() and admit from the slice in memory, so the
-- database sees a slice request every few dozen calls, not one per call.
-- The sum of what all instances admit in a window never exceeds the
-- limit; what instances hold unused when the window ends is lost, which
-- keeps the admitted total a little under the limit (slices are small:
-- a fiftieth of the limit, or the caller's need).

ALTER TABLE teams
    ADD COLUMN rpm integer CHECK (rpm >= 0),
    ADD COLUMN tpm bigint CHECK (tpm >= 0);

-- rate state is worth nothing after a crash: no WAL for it
CREATE UNLOGGED TABLE rate_windows (
    scope        text NOT NULL,
    scope_id     uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('rpm', 'tpm')),
    window_start timestamptz NOT NULL,
    granted      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, scope_id, kind, window_start)
);

-- A slice of up to p_want of this minute's allowance p_limit.
CREATE FUNCTION tollgate_rate(p_scope text, p_scope_id uuid, p_kind text, p_limit bigint,
                              p_want bigint)
RETURNS TABLE (granted bigint, used bigint, window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    w timestamptz := date_trunc('minute', now());
    have bigint;
    g bigint;
BEGIN
    INSERT INTO rate_windows AS r (scope, scope_id, kind, window_start)
    VALUES (p_scope, p_scope_id, p_kind, w) ON CONFLICT DO NOTHING;
    SELECT r.granted INTO have FROM rate_windows r
     WHERE r.scope = p_scope AND r.scope_id = p_scope_id AND r.kind = p_kind
       AND r.window_start = w FOR UPDATE;
    g := least(greatest(p_want, 0), greatest(p_limit - have, 0));
    UPDATE rate_windows r SET granted = r.granted + g
     WHERE r.scope = p_scope AND r.scope_id = p_scope_id AND r.kind = p_kind
       AND r.window_start = w;
    -- the windows before the last one are done with
    DELETE FROM rate_windows r
     WHERE r.scope = p_scope AND r.scope_id = p_scope_id AND r.kind = p_kind
       AND r.window_start < w - interval '1 minute';
    RETURN QUERY SELECT g, have + g, w, w + interval '1 minute';
END;
$$;

-- team rpm/tpm are cached with the team
DROP TRIGGER teams_notify_update ON teams;
CREATE TRIGGER teams_notify_update
    AFTER UPDATE OF org_id, name, status, budget_mode, tokens_per_credit, max_budget_nano,
                    budget_duration, rpm, tpm ON teams
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
