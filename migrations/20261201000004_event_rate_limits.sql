-- Events the server refused from a node because it reported faster than `--event-rate`.
ALTER TABLE nodes ADD COLUMN events_rate_limited bigint NOT NULL DEFAULT 0;
