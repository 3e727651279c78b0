-- The manifest's `interceptors` (JSON), per deployment (see migrations/sqlite/0005).
ALTER TABLE deployments ADD COLUMN interceptors TEXT;
