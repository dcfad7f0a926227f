-- Switchboard control plane: the initial schema. Forward-only; never edit once released.
--
-- Ids of tenants, providers and deployments are chosen by the operator (they appear in
-- snapshots, logs and metrics); virtual keys and admin users get generated UUID ids.
-- Nested settings that the snapshot carries as a whole (budgets, prices, timeouts) are
-- jsonb in exactly the snapshot's shape (shared::snapshot). Value rules (limits, weights,
-- references between objects) are checked by validating the whole snapshot inside each write
-- transaction, which reports them with field paths.

CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    rpm         bigint,
    tpm         bigint,
    budget      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE admin_users (
    id             uuid PRIMARY KEY,
    email          text NOT NULL UNIQUE,
    password_hash  text NOT NULL,          -- argon2id PHC string
    role           text NOT NULL CHECK (role IN ('platform_admin', 'tenant_admin', 'viewer')),
    tenant_id      text REFERENCES tenants (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'tenant_admin') = (tenant_id IS NOT NULL))
);

CREATE TABLE virtual_keys (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    name            text NOT NULL DEFAULT '',
    key_hash        text NOT NULL UNIQUE,  -- hex HMAC-SHA-256 under the pepper
    display_prefix  text NOT NULL,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    expires_at      timestamptz,
    allowed_models  text[] NOT NULL DEFAULT '{}',
    rpm             bigint,
    tpm             bigint,
    budget          jsonb,                 -- shared::snapshot::Budget
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
CREATE INDEX virtual_keys_tenant ON virtual_keys (tenant_id, id);

CREATE TABLE providers (
    id          text PRIMARY KEY,
    kind        text NOT NULL,
    base_url    text,
    credential  jsonb,                     -- shared::sealed::Sealed; never plaintext
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deployments (
    id              text PRIMARY KEY,
    model           text NOT NULL,
    provider_id     text NOT NULL REFERENCES providers (id),
    upstream_model  text NOT NULL,
    weight          bigint NOT NULL DEFAULT 1,
    tags            text[] NOT NULL DEFAULT '{}',
    rpm             bigint,
    tpm             bigint,
    priority        bigint NOT NULL DEFAULT 0,
    price           jsonb,                 -- shared::price::PriceEntry, LiteLLM field names
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployments_model ON deployments (model);

CREATE TABLE model_policies (
    model       text PRIMARY KEY,
    policy      jsonb NOT NULL,            -- shared::snapshot::ModelPolicy
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row: the config revision. Every admin write bumps it first, in its own transaction,
-- which also serialises writers.
CREATE TABLE config_revision (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    revision  bigint NOT NULL CHECK (revision >= 0)
);
INSERT INTO config_revision (id, revision) VALUES (true, 0);

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor_id     uuid,
    actor        text NOT NULL,            -- the admin's email, or "system"
    action       text NOT NULL,            -- create | update | delete | revoke | rotate | ...
    object_type  text NOT NULL,
    object_id    text NOT NULL,
    tenant_id    text,                     -- set for tenant-scoped objects
    revision     bigint NOT NULL,
    before       jsonb,                    -- secrets redacted
    after        jsonb
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
