-- Users, memberships, sign-ins and signing keys (see migrations/sqlite/0008).
CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
CREATE TABLE memberships (
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org         TEXT NOT NULL REFERENCES orgs(name) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'invoker')),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (user_id, org)
);
CREATE INDEX memberships_by_org ON memberships (org);
CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    refresh_sha256  TEXT NOT NULL UNIQUE,
    -- The refresh token this one replaced: presented again, it was stolen or leaked, and
    -- the sign-in ends.
    previous_sha256 TEXT,
    -- When the refresh token was last replaced (seconds since the epoch).
    rotated_at      BIGINT,
    created_at      TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    revoked_at      TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_previous ON sessions (previous_sha256);
CREATE TABLE signing_keys (
    id          TEXT PRIMARY KEY,
    public_key  BYTEA NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    created_at  TEXT NOT NULL
);
