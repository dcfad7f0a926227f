-- Usage events that can never be ingested (issue 13 item 2): not a usage record, or values
-- outside what the books accept (token counts beyond 10^12, a cost that is not a finite
-- non-negative number), or a row Postgres refuses on its own. Each is stored here with its
-- reason, terminated in JetStream (never redelivered) and counted in
-- switchboard_ingest_dead_letters_total; its batch-mates are stored as usual.
-- GET /admin/v1/dead-letters lists them (platform admins).
CREATE TABLE ingest_dead_letters (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    request_id  text,                      -- when the payload was a record
    reason      text NOT NULL,
    payload     text NOT NULL              -- the message as received (cut at 16 KiB)
);
