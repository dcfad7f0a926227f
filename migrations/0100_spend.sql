-- Spend: one narrow row per request (from the data planes' usage events), partitioned by
-- day, plus daily rollups that survive the raw rows' retention.
--
-- Idempotency: a usage event is delivered at least once; its request id (with the day it
-- started, which the partitioning needs in every unique key) is unique, and ingestion
-- inserts with ON CONFLICT DO NOTHING, adding only the rows it really inserted to the
-- rollups in the same statement. A replayed event therefore changes nothing.
--
-- No foreign keys to tenants or keys: spend must be recorded even for a key deleted since,
-- and ingestion must not take locks on config tables.

CREATE TABLE spend_events (
    started_at             timestamptz NOT NULL,
    request_id             text NOT NULL,
    tenant_id              text NOT NULL,
    key_id                 text NOT NULL,
    model                  text NOT NULL,
    deployment_id          text,
    provider_id            text,
    endpoint               text NOT NULL,
    stream                 boolean NOT NULL,
    outcome                text NOT NULL,
    status                 smallint NOT NULL,
    attempts               smallint NOT NULL,
    prompt_tokens          bigint NOT NULL,
    completion_tokens      bigint NOT NULL,
    cached_read_tokens     bigint NOT NULL,
    cache_creation_tokens  bigint NOT NULL,
    usage_reported         boolean NOT NULL,
    cost_usd               double precision NOT NULL,
    price_revision         bigint NOT NULL,
    latency_ms             integer NOT NULL,
    ttft_ms                integer,
    PRIMARY KEY (started_at, request_id)
) PARTITION BY RANGE (started_at);

-- Catches rows outside the partitions made ahead (clock skew, replays of old events).
CREATE TABLE spend_events_default PARTITION OF spend_events DEFAULT;

CREATE INDEX spend_events_tenant ON spend_events (tenant_id, started_at);
CREATE INDEX spend_events_key ON spend_events (key_id, started_at);

CREATE TABLE spend_daily (
    day                    date NOT NULL,          -- UTC
    tenant_id              text NOT NULL,
    key_id                 text NOT NULL,
    model                  text NOT NULL,
    deployment_id          text NOT NULL,          -- '' when no deployment was tried
    requests               bigint NOT NULL,
    errors                 bigint NOT NULL,
    prompt_tokens          bigint NOT NULL,
    completion_tokens      bigint NOT NULL,
    cached_read_tokens     bigint NOT NULL,
    cache_creation_tokens  bigint NOT NULL,
    cost_usd               double precision NOT NULL,
    PRIMARY KEY (day, tenant_id, key_id, model, deployment_id)
);
CREATE INDEX spend_daily_tenant ON spend_daily (tenant_id, day);
