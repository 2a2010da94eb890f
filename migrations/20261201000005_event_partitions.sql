-- Events partitioned by day of arrival (UTC), so retention drops whole partitions instead
-- of deleting rows (`--event-retention`). The server keeps partitions a few days ahead
-- and drops expired ones (store::events::maintain_partitions); both are these functions.

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
ALTER INDEX events_node_idx RENAME TO events_unpartitioned_node_idx;
ALTER INDEX events_policy_idx RENAME TO events_unpartitioned_policy_idx;
ALTER INDEX events_verdict_idx RENAME TO events_unpartitioned_verdict_idx;
ALTER INDEX events_time_idx RENAME TO events_unpartitioned_time_idx;
-- Ids keep growing from where they were: watchers catch up with `id > last_seen`.
ALTER SEQUENCE events_id_seq OWNED BY NONE;

CREATE TABLE events (
    id            bigint NOT NULL DEFAULT nextval('events_id_seq'),
    node          text NOT NULL,
    policy        text NOT NULL,
    revision      bigint NOT NULL,
    rule_id       text NOT NULL,
    verdict       smallint NOT NULL,
    would_deny    boolean NOT NULL DEFAULT false,
    hook          text NOT NULL,
    pid           bigint NOT NULL,
    comm          text NOT NULL,
    uid           bigint NOT NULL,
    cgroup_id     numeric(20, 0) NOT NULL,
    address       text NOT NULL,
    port          integer NOT NULL,
    protocol      smallint NOT NULL,
    bundle_digest text NOT NULL,
    event_time    timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    path          text NOT NULL DEFAULT '',
    access        smallint NOT NULL DEFAULT 0,
    -- A partitioned table's key must hold the partition key; ids alone are unique anyway.
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE events_id_seq OWNED BY events.id;
CREATE INDEX events_node_idx ON events (node, id DESC);
CREATE INDEX events_policy_idx ON events (policy, id DESC);
CREATE INDEX events_verdict_idx ON events (verdict, id DESC);
CREATE INDEX events_time_idx ON events (event_time);

-- Creates the daily partitions `events_YYYYMMDD` for days first..last (UTC) that do not
-- exist yet; returns how many it created. Serialised, so replicas may call it together.
CREATE FUNCTION palisade_ensure_event_partitions(first date, last date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    created integer := 0;
    name text;
BEGIN
    PERFORM pg_advisory_xact_lock(7061727473);
    -- Creating a partition locks the parent: rather fail (and retry next hour) than queue
    -- every event insert and read behind a long query.
    PERFORM set_config('lock_timeout', '5s', true);
    day := first;
    WHILE day <= last LOOP
        name := 'events_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                name, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END $$;

-- Drops every daily partition whose whole day (UTC) ends at or before `horizon`; returns
-- how many it dropped.
CREATE FUNCTION palisade_drop_event_partitions(horizon timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(7061727473);
    -- Dropping a partition takes an exclusive lock on the parent (see above).
    PERFORM set_config('lock_timeout', '5s', true);
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_[0-9]{8}$'
    LOOP
        IF (to_date(substr(part.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= horizon THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

SELECT palisade_ensure_event_partitions(
    (LEAST(COALESCE((SELECT min(received_at) FROM events_unpartitioned), now()), now()) AT TIME ZONE 'UTC')::date,
    ((now() AT TIME ZONE 'UTC') + interval '3 days')::date);
INSERT INTO events (id, node, policy, revision, rule_id, verdict, would_deny, hook, pid, comm, uid, cgroup_id,
                    address, port, protocol, bundle_digest, event_time, received_at, path, access)
SELECT id, node, policy, revision, rule_id, verdict, would_deny, hook, pid, comm, uid, cgroup_id,
       address, port, protocol, bundle_digest, event_time, received_at, path, access
FROM events_unpartitioned;
DROP TABLE events_unpartitioned;
