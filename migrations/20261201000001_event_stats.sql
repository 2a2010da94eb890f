-- The agent's event counters (palisade.v1.EventStats, protobuf-encoded) as of its latest
-- hello or heartbeat.
ALTER TABLE nodes ADD COLUMN event_stats bytea;
