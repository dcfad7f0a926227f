-- Model prices: versions of LiteLLM's model_prices_and_context_window.json as synced, and
-- admin overrides on top. The effective price of a model is its override if any, else its
-- entry in the newest version. Entries are jsonb in shared::price::PriceEntry's shape.

CREATE TABLE price_versions (
    id          bigserial PRIMARY KEY,
    source      text NOT NULL,                 -- a URL or a file path
    sha256      text NOT NULL UNIQUE,          -- of the file as fetched
    entries     integer NOT NULL,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    checked_at  timestamptz NOT NULL DEFAULT now()  -- last time the source still had this content
);

CREATE TABLE price_entries (
    version_id  bigint NOT NULL REFERENCES price_versions (id) ON DELETE CASCADE,
    model       text NOT NULL,
    entry       jsonb NOT NULL,
    PRIMARY KEY (version_id, model)
);

CREATE TABLE price_overrides (
    model       text PRIMARY KEY,
    entry       jsonb NOT NULL,
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
