-- The request log: one row per request a data plane saw (successes, upstream failures and
-- refusals; never an unauthenticated request), from the same usage events as spend, with the
-- attempt timeline. Partitioned by day and dropped by partition after its retention, like
-- spend_events. Idempotent like spend: (started_at, request_id) is unique and ingestion inserts
-- with ON CONFLICT DO NOTHING.
--
-- Content (prompt and answer) is apart, in request_content, only for tenants that opted in
-- (tenants.capture_content), with its own, shorter retention.

CREATE TABLE request_log (
    started_at             timestamptz NOT NULL,
    request_id             text NOT NULL,
    client_request_id      text,
    tenant_id              text NOT NULL,
    key_id                 text NOT NULL,
    model                  text NOT NULL,
    deployment_id          text,
    provider_id            text,
    endpoint               text NOT NULL,
    stream                 boolean NOT NULL,
    outcome                text NOT NULL,
    status                 smallint NOT NULL,
    error_kind             text,
    -- [{deployment_id, status, error_kind?, latency_ms}] in attempt order.
    attempts               jsonb NOT NULL,
    prompt_tokens          bigint NOT NULL,
    completion_tokens      bigint NOT NULL,
    cached_read_tokens     bigint NOT NULL,
    cache_creation_tokens  bigint NOT NULL,
    -- Whether the provider served part of the prompt from its prompt cache.
    cache_hit              boolean NOT NULL,
    cost_usd               double precision NOT NULL,
    latency_ms             integer NOT NULL,
    ttft_ms                integer,
    PRIMARY KEY (started_at, request_id)
) PARTITION BY RANGE (started_at);

CREATE TABLE request_log_default PARTITION OF request_log DEFAULT;

CREATE INDEX request_log_tenant ON request_log (tenant_id, started_at DESC, request_id DESC);
CREATE INDEX request_log_started ON request_log (started_at DESC, request_id DESC);
CREATE INDEX request_log_request_id ON request_log (request_id);

CREATE TABLE request_content (
    started_at   timestamptz NOT NULL,
    request_id   text NOT NULL,
    tenant_id    text NOT NULL,
    prompt       text NOT NULL,
    completion   text NOT NULL,
    truncated    boolean NOT NULL,
    PRIMARY KEY (started_at, request_id)
) PARTITION BY RANGE (started_at);

CREATE TABLE request_content_default PARTITION OF request_content DEFAULT;
CREATE INDEX request_content_request_id ON request_content (request_id);

ALTER TABLE tenants ADD COLUMN capture_content boolean NOT NULL DEFAULT false;
