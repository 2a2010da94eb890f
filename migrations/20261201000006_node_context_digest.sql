-- What a node's bundle depends on (labels, kernel features, failsafe list), as one indexed
-- value: the capacity check at apply time compiles once per distinct context, and finds the
-- distinct contexts of a fleet of thousands by skipping through this index instead of
-- reading every node.
ALTER TABLE nodes ADD COLUMN context_digest text GENERATED ALWAYS AS
    (md5(labels::text || '|' || coalesce(encode(features, 'hex'), '') || '|' || failsafe::text)) STORED;
CREATE INDEX nodes_context_digest_idx ON nodes (context_digest, name);
