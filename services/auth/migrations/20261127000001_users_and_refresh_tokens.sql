-- Accounts and their refresh tokens. Table names are schema-qualified: the
-- auth service owns the `auth` schema and nothing else.

CREATE TABLE auth.users (
    id            uuid        PRIMARY KEY,
    -- Normalised (trimmed, lower-case) before it gets here.
    email         text        NOT NULL UNIQUE,
    -- A PHC string: $argon2id$v=19$m=19456,t=2,p=1$...
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Refresh tokens are opaque random strings; only their HMAC is stored, so a
-- copy of this table cannot be replayed. A login starts a family; each
-- refresh marks its token used and adds the next one to the family. A used
-- token presented again means a copy exists somewhere: the family is revoked.
CREATE TABLE auth.refresh_tokens (
    id          uuid        PRIMARY KEY,
    family_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    token_hash  bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);

CREATE INDEX refresh_tokens_family_idx ON auth.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON auth.refresh_tokens (user_id);
