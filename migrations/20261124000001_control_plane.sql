-- Palisade control plane v1: policies with immutable revisions, nodes and their sync state,
-- compiled bundles, decision events and the audit log.

-- The global policy generation: bumped in the same transaction as every policy change, so
-- "the fleet's desired state moved" is one number that every server replica can re-read.
CREATE TABLE policy_generation (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation bigint NOT NULL
);
INSERT INTO policy_generation (generation) VALUES (0);

-- One row per policy name ever created. A deleted policy keeps its row (deleted = true) so
-- revision numbers continue if the name is applied again.
CREATE TABLE policies (
    name             text PRIMARY KEY,
    -- 0 only inside the transaction that creates the name (see store::policies::apply).
    current_revision bigint NOT NULL CHECK (current_revision >= 0),
    deleted          boolean NOT NULL DEFAULT false,
    -- Copy of the current revision's labels for label-selector queries.
    labels           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policies_labels_idx ON policies USING gin (labels);

-- Immutable revisions. spec is the canonical protobuf encoding of palisade.v1.Policy with
-- defaults filled; spec_json the same content for humans and ad-hoc SQL.
CREATE TABLE policy_revisions (
    policy_name text NOT NULL REFERENCES policies (name),
    revision    bigint NOT NULL CHECK (revision > 0),
    kind        text NOT NULL CHECK (kind IN ('created', 'updated', 'deleted')),
    spec        bytea,
    spec_json   jsonb,
    digest      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    generation  bigint NOT NULL,
    PRIMARY KEY (policy_name, revision),
    CHECK ((kind = 'deleted') = (spec IS NULL))
);

-- Nodes as registered by their agents.
CREATE TABLE nodes (
    name                 text PRIMARY KEY,
    labels               jsonb NOT NULL DEFAULT '{}'::jsonb,
    features             bytea,
    agent_version        text NOT NULL DEFAULT '',
    connected            boolean NOT NULL DEFAULT false,
    registered_at        timestamptz NOT NULL DEFAULT now(),
    last_seen            timestamptz NOT NULL DEFAULT now(),
    desired_generation   bigint NOT NULL DEFAULT 0,
    desired_digest       text NOT NULL DEFAULT '',
    applied_generation   bigint NOT NULL DEFAULT 0,
    applied_digest       text NOT NULL DEFAULT '',
    last_error           text,
    last_error_generation bigint,
    last_error_digest    text,
    last_error_at        timestamptz,
    -- Failsafe destinations from the latest hello: server endpoints and ports (§8).
    failsafe             jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX nodes_labels_idx ON nodes USING gin (labels);

-- Compiled bundles, content-addressed.
CREATE TABLE bundles (
    digest     text PRIMARY KEY,
    content    bytea NOT NULL,
    signature  bytea NOT NULL,
    stats      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Decision events reported by agents.
CREATE TABLE events (
    id            bigserial PRIMARY KEY,
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
    received_at   timestamptz NOT NULL DEFAULT now()
);
-- ListEvents pages newest-first by id, optionally filtered by one of these.
CREATE INDEX events_node_idx ON events (node, id DESC);
CREATE INDEX events_policy_idx ON events (policy, id DESC);
CREATE INDEX events_verdict_idx ON events (verdict, id DESC);
CREATE INDEX events_time_idx ON events (event_time);

-- Append-only record of every change: who, what, when.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    object_kind text NOT NULL,
    object_name text NOT NULL,
    revision    bigint,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_object_idx ON audit_log (object_kind, object_name, id);

-- Append-only means append-only: refuse UPDATE and DELETE at the database level.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Revisions are immutable once written.
CREATE FUNCTION policy_revisions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'policy_revisions are immutable';
END $$;
CREATE TRIGGER policy_revisions_immutable BEFORE UPDATE OR DELETE ON policy_revisions
    FOR EACH ROW EXECUTE FUNCTION policy_revisions_immutable();
