-- Work exactly one control-plane replica does at a time (garbage collection): the holder
-- renews its lease; another replica takes it over once it has expired (issue 22).
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
