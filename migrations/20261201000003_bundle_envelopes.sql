-- Bundle signatures now cover an envelope (digest, generation, node, issue time) and are
-- made per push, so stored content has no signature of its own.
ALTER TABLE bundles DROP COLUMN signature;
