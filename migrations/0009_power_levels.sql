-- 0009_power_levels.sql: the power level ("eco", "balanced", "precision")
-- a key's calls to model "auto" mean, set on the key or, for every key of
-- it, on the team (docs/routing.md). NULL: the team's, else balanced.
ALTER TABLE teams
    ADD COLUMN power_level text CHECK (power_level IN ('eco', 'balanced', 'precision'));
ALTER TABLE virtual_keys
    ADD COLUMN power_level text CHECK (power_level IN ('eco', 'balanced', 'precision'));

-- the gateway caches a team's level with the team
DROP TRIGGER teams_notify_update ON teams;
CREATE TRIGGER teams_notify_update
    AFTER UPDATE OF org_id, name, status, budget_mode, tokens_per_credit, max_budget_nano,
                    budget_duration, rpm, tpm, credit_limit_nano, power_level ON teams
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
