-- The price-file version (price_versions.id) that priced each request, beside the config
-- revision (price_revision) whose overrides and deployment prices applied. NULL for rows
-- from data planes that predate it, or whose snapshot carried no synced prices.
ALTER TABLE spend_events ADD COLUMN price_version bigint;
