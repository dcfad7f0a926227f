-- Settings the data plane enforced from standalone snapshots only, now stored by the control
-- plane and carried into the snapshot it builds: requests in flight (`limits.concurrency`) of
-- tenants, keys and deployments; a deployment's spend caps and request quotas (`caps`,
-- shared::snapshot::DeploymentCaps) and the edits to the body it receives (`transforms`,
-- shared::shaping::Transforms). Model policies are stored whole (model_policies.policy), so
-- their transforms, content rules and routing refinements need no column.
ALTER TABLE tenants ADD COLUMN concurrency bigint;
ALTER TABLE virtual_keys ADD COLUMN concurrency bigint;
ALTER TABLE deployments
    ADD COLUMN concurrency bigint,
    ADD COLUMN caps jsonb,
    ADD COLUMN transforms jsonb;
