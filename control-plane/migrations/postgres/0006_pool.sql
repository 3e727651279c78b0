-- The manifest's `pool` (JSON), per deployment (see migrations/sqlite/0006).
ALTER TABLE deployments ADD COLUMN pool TEXT;
