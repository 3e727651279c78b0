-- The manifest's `calls` (JSON), per deployment: the aliases it may call. NULL: any
-- function of the org may be called.
ALTER TABLE deployments ADD COLUMN calls TEXT;
