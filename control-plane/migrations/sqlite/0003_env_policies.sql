-- Env and secrets per function. A plain value is stored in `value`; a secret only as
-- AES-256-GCM ciphertext (`ciphertext` holds the tag), its nonce and the id of the data
-- key that sealed it, with org/function/key bound as associated data.
CREATE TABLE env_vars (
    org         TEXT NOT NULL,
    function    TEXT NOT NULL,
    key         TEXT NOT NULL,
    secret      INTEGER NOT NULL,
    value       TEXT,
    key_id      TEXT,
    nonce       BLOB,
    ciphertext  BLOB,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (org, function, key),
    FOREIGN KEY (org, function) REFERENCES functions(org, name) ON DELETE CASCADE
);

-- The env as it was when a deployment was uploaded (copied rows, secrets still sealed),
-- so that a rollback restores it.
CREATE TABLE deployment_env (
    deployment_id  TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    key            TEXT NOT NULL,
    secret         INTEGER NOT NULL,
    value          TEXT,
    key_id         TEXT,
    nonce          BLOB,
    ciphertext     BLOB,
    PRIMARY KEY (deployment_id, key)
);

-- Invoke policies (JSON): the one set through the admin API on the function, and the one
-- a deployment's manifest carried. Both must allow a request.
ALTER TABLE functions ADD COLUMN policy TEXT;
ALTER TABLE deployments ADD COLUMN policy TEXT;
