-- Contracts (see migrations/sqlite/0007).
ALTER TABLE deployments ADD COLUMN contract TEXT;
CREATE TABLE contracts (
    org              TEXT NOT NULL REFERENCES orgs(name) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    description      TEXT,
    input            TEXT,
    output           TEXT,
    validate_output  BIGINT NOT NULL DEFAULT 0,
    function         TEXT,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (org, name)
);
CREATE INDEX contracts_by_function ON contracts (org, function);
