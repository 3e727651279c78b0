-- Env and secrets per function (see migrations/sqlite/0003): a plain value in `value`,
-- a secret only as AES-256-GCM ciphertext with its nonce and data key id.
CREATE TABLE env_vars (
    org         TEXT NOT NULL,
    function    TEXT NOT NULL,
    key         TEXT NOT NULL,
    secret      BIGINT NOT NULL,
    value       TEXT,
    key_id      TEXT,
    nonce       BYTEA,
    ciphertext  BYTEA,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (org, function, key),
    FOREIGN KEY (org, function) REFERENCES functions(org, name) ON DELETE CASCADE
);

-- The env as it was when a deployment was uploaded, so that a rollback restores it.
CREATE TABLE deployment_env (
    deployment_id  TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    key            TEXT NOT NULL,
    secret         BIGINT NOT NULL,
    value          TEXT,
    key_id         TEXT,
    nonce          BYTEA,
    ciphertext     BYTEA,
    PRIMARY KEY (deployment_id, key)
);

-- Invoke policies (JSON): the function's and the deployment manifest's.
ALTER TABLE functions ADD COLUMN policy TEXT;
ALTER TABLE deployments ADD COLUMN policy TEXT;
