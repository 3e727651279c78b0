-- The manifest's `concurrency` block, per deployment.
ALTER TABLE deployments ADD COLUMN min_instances BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN max_concurrency BIGINT;
