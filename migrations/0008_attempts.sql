-- 0008_attempts.sql: how many attempts a call took (retries on its route
-- and fallbacks to other routes, docs/routing.md). provider and
-- provider_model already name the route that served it (or the last one
-- tried).
ALTER TABLE calls ADD COLUMN attempts smallint NOT NULL DEFAULT 1 CHECK (attempts >= 0);
