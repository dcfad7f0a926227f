-- Virtual-key rotation with a grace window: after a rotation the previous secret's hash keeps
-- working until previous_expires_at (shipped in snapshots; data planes check the expiry).
-- One previous secret at a time: a second rotation replaces it. Both columns are set together.
ALTER TABLE virtual_keys
    ADD COLUMN previous_key_hash text,
    ADD COLUMN previous_expires_at timestamptz,
    ADD CONSTRAINT virtual_keys_previous_pair
        CHECK ((previous_key_hash IS NULL) = (previous_expires_at IS NULL));
