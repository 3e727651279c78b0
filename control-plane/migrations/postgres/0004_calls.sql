-- The manifest's `calls` (JSON), per deployment (see migrations/sqlite/0004).
ALTER TABLE deployments ADD COLUMN calls TEXT;
