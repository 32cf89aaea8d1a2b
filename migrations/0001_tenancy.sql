-- 0001_tenancy.sql: organizations, teams, virtual keys, model aliases and
-- access groups, provider credentials, BYOK keys, admin keys, audit log.
--
-- Money is BIGINT nano-USD (1 USD = 1e9); prices are per 1M tokens.
-- Secrets are Fernet tokens (crypto/fernet.h), never plaintext; keys are
-- SHA-256 digests. Every table the gateway caches notifies the channel
-- "tollgate_cache" with "<table>:<id>" on any change, made through the
-- admin API or by hand, so every instance reloads that row within a
-- second. Billing (jobs, calls, budgets, credit transactions) comes in
-- later migrations.

CREATE TABLE organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    metadata    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE teams (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id              uuid NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    budget_mode         text NOT NULL DEFAULT 'consumption_usd'
                        CHECK (budget_mode IN ('consumption_usd', 'consumption_tokens', 'job_based')),
    tokens_per_credit   bigint NOT NULL DEFAULT 10000 CHECK (tokens_per_credit > 0),
    -- credits in billionths (consumption_usd: nano-USD); the billing
    -- migration adds the transactions this balance is the sum of
    credit_balance_nano bigint NOT NULL DEFAULT 0,
    metadata            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);
CREATE INDEX teams_org ON teams (org_id);

CREATE TABLE access_groups (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$'),
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_aliases (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    -- [{"provider": "<config provider>", "model": "...", "weight": 1, "priority": 0}, ...]
    routes            jsonb NOT NULL
                      CHECK (jsonb_typeof(routes) = 'array' AND jsonb_array_length(routes) >= 1),
    access_group      text REFERENCES access_groups (name) ON UPDATE CASCADE ON DELETE SET NULL,
    -- customer price per 1M tokens in nano-USD; NULL: the provider's cost
    price_input_nano  bigint CHECK (price_input_nano >= 0),
    price_output_nano bigint CHECK (price_output_nano >= 0),
    price_cached_nano bigint CHECK (price_cached_nano >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE virtual_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key_hash        bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    key_prefix      text NOT NULL,
    alias           text NOT NULL CHECK (length(alias) BETWEEN 1 AND 200),
    team_id         uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    models          text[] NOT NULL DEFAULT '{}',       -- allowed aliases ('*' suffix: prefix)
    access_groups   text[] NOT NULL DEFAULT '{}',       -- allowed access groups
    rpm             integer CHECK (rpm >= 0),           -- NULL: unlimited
    tpm             bigint CHECK (tpm >= 0),
    max_budget_nano bigint CHECK (max_budget_nano >= 0),
    budget_duration text CHECK (budget_duration ~ '^[0-9]+(h|d|mo)$'),
    budget_reset_at timestamptz,
    expires_at      timestamptz,
    blocked         boolean NOT NULL DEFAULT false,
    metadata        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (team_id, alias)
);

CREATE TABLE provider_credentials (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    provider    text NOT NULL CHECK (length(provider) BETWEEN 1 AND 100),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    secret_enc  text NOT NULL,            -- Fernet token
    secret_mask text NOT NULL,            -- "sk-...wxyz", for humans
    active      boolean NOT NULL DEFAULT false,
    created_by  text NOT NULL,
    updated_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, provider, name)
);
-- at most one active credential per org and provider; deferred, so that
-- one UPDATE can switch the active one (SET active = (id = $new))
ALTER TABLE provider_credentials ADD CONSTRAINT provider_credentials_one_active
    EXCLUDE USING btree (org_id WITH =, provider WITH =) WHERE (active)
    DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE byok_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id     uuid REFERENCES teams (id) ON DELETE CASCADE,
    key_id      uuid REFERENCES virtual_keys (id) ON DELETE CASCADE,
    provider    text NOT NULL CHECK (length(provider) BETWEEN 1 AND 100),
    secret_enc  text NOT NULL,
    secret_mask text NOT NULL,
    created_by  text NOT NULL,
    updated_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((team_id IS NULL) <> (key_id IS NULL))
);
CREATE UNIQUE INDEX byok_keys_team ON byok_keys (team_id, provider) WHERE team_id IS NOT NULL;
CREATE UNIQUE INDEX byok_keys_key ON byok_keys (key_id, provider) WHERE key_id IS NOT NULL;

CREATE TABLE admin_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key_hash    bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    key_prefix  text NOT NULL,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'viewer')),
    blocked     boolean NOT NULL DEFAULT false,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,            -- "master" or "admin:<name>"
    action      text NOT NULL,            -- create, update, delete, activate, read_secret, ...
    entity      text NOT NULL,            -- table name
    entity_id   text,
    before      jsonb,                    -- secrets masked
    after       jsonb
);
CREATE INDEX audit_log_entity ON audit_log (entity, entity_id);
CREATE INDEX audit_log_at ON audit_log (at);

-- nano-USD as the decimal USD string of the API ("2.5", "0.000000001")
-- (at least two decimals, as the gateway's money_format prints them)
CREATE FUNCTION tollgate_usd(nano bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN scale(trim_scale(nano::numeric / 1000000000)) < 2
                THEN round(nano::numeric / 1000000000, 2)
                ELSE trim_scale(nano::numeric / 1000000000) END::text
$$;

-- cache invalidation: "<table>:<id>" on channel tollgate_cache
CREATE FUNCTION tollgate_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tollgate_cache', TG_TABLE_NAME || ':' || OLD.id::text);
    ELSE
        PERFORM pg_notify('tollgate_cache', TG_TABLE_NAME || ':' || NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER teams_notify AFTER INSERT OR UPDATE OR DELETE ON teams
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
CREATE TRIGGER virtual_keys_notify AFTER INSERT OR UPDATE OR DELETE ON virtual_keys
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
CREATE TRIGGER model_aliases_notify AFTER INSERT OR UPDATE OR DELETE ON model_aliases
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
CREATE TRIGGER provider_credentials_notify AFTER INSERT OR UPDATE OR DELETE ON provider_credentials
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
CREATE TRIGGER byok_keys_notify AFTER INSERT OR UPDATE OR DELETE ON byok_keys
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
CREATE TRIGGER admin_keys_notify AFTER INSERT OR UPDATE OR DELETE ON admin_keys
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();
