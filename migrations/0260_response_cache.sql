-- The exact response cache (issue 18): a request answered from the gateway's cache reached no
-- upstream and cost nothing; its usage record says so (`cached_response`) and carries what the
-- stored answer cost when it was generated (`saved_usd`). Spend rows, their daily rollups and
-- the request log keep both, so spend reports show what the cache saved. Older rows: false, 0.
--
-- (request_log.cache_hit is another thing: the provider's prompt cache served part of a prompt.)

ALTER TABLE spend_events
    ADD COLUMN cached_response boolean NOT NULL DEFAULT false,
    ADD COLUMN saved_usd double precision NOT NULL DEFAULT 0;

ALTER TABLE spend_daily
    ADD COLUMN cached_responses bigint NOT NULL DEFAULT 0,
    ADD COLUMN saved_usd double precision NOT NULL DEFAULT 0;

ALTER TABLE request_log
    ADD COLUMN cached_response boolean NOT NULL DEFAULT false,
    ADD COLUMN saved_usd double precision NOT NULL DEFAULT 0;
