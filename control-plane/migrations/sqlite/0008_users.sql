-- Users who sign in with an email and a password (an argon2id PHC string; the password
-- itself is never stored), their membership of orgs with a role, their sign-ins (a
-- refresh token kept as its SHA-256, rotated on every refresh) and the Ed25519 keys that
-- sign access tokens (the private half sealed under the data key, like secrets).
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
    rotated_at      INTEGER,
    created_at      TEXT NOT NULL,
    -- Seconds since the Unix epoch.
    expires_at      INTEGER NOT NULL,
    revoked_at      TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_previous ON sessions (previous_sha256);
CREATE TABLE signing_keys (
    id          TEXT PRIMARY KEY,
    public_key  BLOB NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    created_at  TEXT NOT NULL
);
