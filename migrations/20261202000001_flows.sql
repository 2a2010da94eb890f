-- Flow aggregates of closed TCP connections (`connections.observe`, semantics §13), one row
-- per (node, policy, rule, cgroup, direction, local address and port, peer address and
-- port) and agent window. Partitioned by day of arrival (UTC, the server's clock: an agent's
-- clock or a backlog from days ago can never name a day without a partition), so retention
-- (`--flow-retention`) drops whole partitions instead of deleting rows.

-- Daily partitions of any table partitioned by day, named `<parent>_YYYYMMDD`: the event
-- functions below become thin wrappers of these, so both tables follow one rule.
CREATE FUNCTION palisade_ensure_partitions(parent text, first date, last date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    created integer := 0;
    name text;
BEGIN
    PERFORM pg_advisory_xact_lock(7061727473);
    -- Creating a partition locks the parent: rather fail (and retry next hour) than queue
    -- every insert and read behind a long query.
    PERFORM set_config('lock_timeout', '5s', true);
    day := first;
    WHILE day <= last LOOP
        name := parent || '_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                name, parent, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END $$;

-- Drops every daily partition of `parent` whose whole day (UTC) ends at or before
-- `horizon`; returns how many it dropped.
CREATE FUNCTION palisade_drop_partitions(parent text, horizon timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(7061727473);
    PERFORM set_config('lock_timeout', '5s', true);
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent::regclass AND c.relname ~ ('^' || parent || '_[0-9]{8}$')
    LOOP
        IF (to_date(right(part.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= horizon THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

CREATE OR REPLACE FUNCTION palisade_ensure_event_partitions(first date, last date) RETURNS integer
LANGUAGE sql AS $$ SELECT palisade_ensure_partitions('events', first, last) $$;
CREATE OR REPLACE FUNCTION palisade_drop_event_partitions(horizon timestamptz) RETURNS integer
LANGUAGE sql AS $$ SELECT palisade_drop_partitions('events', horizon) $$;

CREATE SEQUENCE flows_id_seq;
CREATE TABLE flows (
    id                bigint NOT NULL DEFAULT nextval('flows_id_seq'),
    node              text NOT NULL,
    policy            text NOT NULL,
    revision          bigint NOT NULL,
    rule_id           text NOT NULL,
    cgroup_id         numeric(20, 0) NOT NULL,
    -- palisade.v1.FlowDirection: 1 outbound, 2 inbound.
    direction         smallint NOT NULL,
    local_address     inet NOT NULL,
    local_port        integer NOT NULL,
    peer_address      inet NOT NULL,
    peer_port         integer NOT NULL,
    connections       bigint NOT NULL,
    bytes_sent        bigint NOT NULL,
    bytes_received    bigint NOT NULL,
    segments_sent     bigint NOT NULL,
    segments_received bigint NOT NULL,
    retransmits       bigint NOT NULL,
    srtt_us_min       integer NOT NULL,
    -- Sum over the connections, so sums of rows keep an exact mean.
    srtt_us_sum       bigint NOT NULL,
    srtt_us_max       integer NOT NULL,
    tune_refused      bigint NOT NULL,
    window_start      timestamptz NOT NULL,
    window_end        timestamptz NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE flows_id_seq OWNED BY flows.id;
-- Ingest speed is a target (≥ 100,000 rows/s): every index costs on each row. The primary
-- key serves id order (scanned backwards for newest first); (node, id) grows at one point
-- per message (a message is one node's); windows only grow, so a BRIN index serves time
-- ranges at a fraction of a b-tree's cost. Filters on policy, rule or peer scan within
-- these.
CREATE INDEX flows_node_idx ON flows (node, id);
CREATE INDEX flows_window_idx ON flows USING brin (window_end);

SELECT palisade_ensure_partitions('flows', ((now() AT TIME ZONE 'UTC') - interval '1 day')::date,
                                  ((now() AT TIME ZONE 'UTC') + interval '3 days')::date);

-- Flow aggregates the server refused from a node because it reported faster than
-- `--flow-rate`.
ALTER TABLE nodes ADD COLUMN flows_rate_limited bigint NOT NULL DEFAULT 0;
