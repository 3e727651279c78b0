-- The same tables as migrations/sqlite, in PostgreSQL's types. Flags and counts are
-- BIGINT (not BOOLEAN or INTEGER) so that one decoding path serves both databases.
CREATE TABLE orgs (
    name        TEXT PRIMARY KEY,
    platform    BIGINT NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    org         TEXT NOT NULL REFERENCES orgs(name) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'invoker')),
    name        TEXT,
    sha256      TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE functions (
    org                 TEXT NOT NULL REFERENCES orgs(name) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    runtime             TEXT NOT NULL,
    live_deployment_id  TEXT,
    created_at          TEXT NOT NULL,
    PRIMARY KEY (org, name)
);

CREATE TABLE deployments (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    org         TEXT NOT NULL,
    function    TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('materializing', 'ready', 'failed')),
    error       TEXT,
    sha256      TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    entrypoint  TEXT NOT NULL,
    bundle_key  TEXT NOT NULL,
    timeout_ms  BIGINT NOT NULL,
    memory_mb   BIGINT NOT NULL,
    created_at  TEXT NOT NULL,
    FOREIGN KEY (org, function) REFERENCES functions(org, name) ON DELETE CASCADE
);
CREATE INDEX deployments_by_function ON deployments (org, function, seq);

-- One row: the routing table's version, so that it only grows across restarts.
CREATE TABLE routing_version (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL
);
INSERT INTO routing_version (id, version) VALUES (1, 0);
