-- Bearer tokens for the admin API. Only the SHA-256 of each secret is stored: the secret
-- is printed once, when the token is created.
CREATE TABLE tokens (
    name text PRIMARY KEY,
    role text NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    secret_sha256 bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
