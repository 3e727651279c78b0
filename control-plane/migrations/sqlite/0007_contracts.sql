-- The manifest's `contract` (JSON: input and output schemas, validate_output, mode), per
-- deployment. NULL: no schema.
ALTER TABLE deployments ADD COLUMN contract TEXT;
-- Named, versioned contracts of an org (`email.sender@1`), immutable once created, and the
-- function bound to implement each (NULL: unbound; deleting the function unbinds it).
CREATE TABLE contracts (
    org              TEXT NOT NULL REFERENCES orgs(name) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    description      TEXT,
    input            TEXT,
    output           TEXT,
    validate_output  INTEGER NOT NULL DEFAULT 0,
    function         TEXT,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (org, name)
);
CREATE INDEX contracts_by_function ON contracts (org, function);
