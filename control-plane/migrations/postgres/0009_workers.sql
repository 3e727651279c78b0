-- Workers registered through any control-plane replica, read by every replica (issue 22).
-- A worker is live while `last_seen` (the database's clock) is within the TTL; SQLite
-- has one control plane, which keeps its workers in memory (no such table).
CREATE TABLE workers (
    id             TEXT PRIMARY KEY,
    runtime        TEXT NOT NULL,
    url            TEXT NOT NULL,
    secret_sha256  TEXT NOT NULL,
    last_seen      TIMESTAMPTZ NOT NULL DEFAULT now()
);
