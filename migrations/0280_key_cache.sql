-- A key's own exact response cache (issue 18): shared::snapshot::ResponseCache as JSON, in
-- place of each model policy's cache for the key's requests (`enabled: false` turns caching off
-- for the key). NULL: the model policy decides. The data plane honoured it in standalone
-- snapshots only; the control plane now stores it and carries it into the snapshot it builds.
ALTER TABLE virtual_keys ADD COLUMN cache jsonb;
