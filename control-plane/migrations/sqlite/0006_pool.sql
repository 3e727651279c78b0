-- The manifest's `pool` (JSON, settled: static, lazy or adaptive with every value), per
-- deployment. NULL: the workers' own settings.
ALTER TABLE deployments ADD COLUMN pool TEXT;
