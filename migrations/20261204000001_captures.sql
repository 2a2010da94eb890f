-- Packet capture sessions (issue 12, docs/capture.md): what was asked, where each node is,
-- and the packets, stored in the chunks agents send them in. Deleting a capture deletes its
-- nodes and packets.
CREATE TABLE captures (
    id            bigserial PRIMARY KEY,
    expression    text NOT NULL,
    node_selector jsonb NOT NULL DEFAULT '{}'::jsonb,
    interfaces    text[] NOT NULL,
    snap_length   integer NOT NULL CHECK (snap_length > 0),
    duration_ms   bigint NOT NULL CHECK (duration_ms > 0),
    max_packets   bigint NOT NULL CHECK (max_packets > 0),
    max_bytes     bigint NOT NULL CHECK (max_bytes > 0),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- No node captures past this (created_at + duration, plus the time nodes take to start).
    deadline      timestamptz NOT NULL,
    stop_requested boolean NOT NULL DEFAULT false,
    finished_at   timestamptz,
    stored_bytes  bigint NOT NULL DEFAULT 0
);
CREATE INDEX captures_finished_idx ON captures (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE capture_nodes (
    capture_id      bigint NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
    node            text NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'finished', 'failed')),
    packets_seen    bigint NOT NULL DEFAULT 0,
    packets_kept    bigint NOT NULL DEFAULT 0,
    packets_dropped bigint NOT NULL DEFAULT 0,
    bytes           bigint NOT NULL DEFAULT 0,
    stop_reason     text NOT NULL DEFAULT '',
    error           text NOT NULL DEFAULT '',
    started_at      timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (capture_id, node)
);
CREATE INDEX capture_nodes_active_idx ON capture_nodes (node) WHERE state IN ('pending', 'running');

-- One row per ReportCapture message: the packets of one interface, in time order, encoded
-- as a `palisade.v1.ReportCaptureRequest` holding only `packets`.
CREATE TABLE capture_chunks (
    id          bigserial PRIMARY KEY,
    capture_id  bigint NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
    node        text NOT NULL,
    interface   integer NOT NULL,
    first_ns    bigint NOT NULL,
    packets     bytea NOT NULL,
    bytes       bigint NOT NULL
);
CREATE INDEX capture_chunks_source_idx ON capture_chunks (capture_id, node, interface, id);

-- Capturing reveals packet contents: a token may start and read captures only when created
-- with `--capture` (admins always may).
ALTER TABLE tokens ADD COLUMN capture boolean NOT NULL DEFAULT false;
