-- 0007_prices.sql: the price catalog edited through the admin API, and a
-- markup as the customer price of a model alias.
--
-- tollgate ships a catalog of list prices (billing/prices.json, or the
-- config's prices_file). A row of price_overrides replaces the catalog's
-- entry for (provider, model), or adds one, on every instance (they cache
-- the table and reload a row on NOTIFY). provider is the catalog's name
-- for a preset ("openai", "anthropic", "gemini", ...) or, for a provider
-- without one (openai_compatible), the provider's name in the config.
-- Prices are nano-USD per 1M tokens, as everywhere.
CREATE TABLE price_overrides (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider           text NOT NULL CHECK (provider ~ '^[a-z0-9_-]{1,64}$'),
    model              text NOT NULL CHECK (length(model) BETWEEN 1 AND 256),
    input_nano         bigint NOT NULL CHECK (input_nano >= 0),
    output_nano        bigint NOT NULL CHECK (output_nano >= 0),
    cached_input_nano  bigint CHECK (cached_input_nano >= 0), -- NULL: the input rate
    cache_write_nano   bigint CHECK (cache_write_nano >= 0),  -- NULL: the input rate
    created_by         text NOT NULL,
    updated_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, model)
);
CREATE TRIGGER price_overrides_notify AFTER INSERT OR UPDATE OR DELETE ON price_overrides
    FOR EACH ROW EXECUTE FUNCTION tollgate_notify_change();

-- The customer price of an alias: its explicit price when set, else the
-- provider's cost plus markup_bps (basis points: 2000 = 20%), else the
-- cost itself.
ALTER TABLE model_aliases
    ADD COLUMN markup_bps integer CHECK (markup_bps BETWEEN 0 AND 1000000),
    ADD CONSTRAINT model_aliases_markup_or_price
        CHECK (markup_bps IS NULL OR (price_input_nano IS NULL AND price_output_nano IS NULL));
