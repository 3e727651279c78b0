-- The manifest's `interceptors` (JSON), per deployment: what the router wraps around its
-- invocations (retry, circuit breaker). NULL: none.
ALTER TABLE deployments ADD COLUMN interceptors TEXT;
