//! Nodes and their sync state.

use std::collections::BTreeMap;

use palisade_proto::v1;
use prost::Message as _;
use sqlx::{Row as _, postgres::PgRow};

use super::{Store, timestamp};
use crate::error::ApiError;

/// What the server knows about a node that bundles depend on.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Kernel features.
    pub features: Option<v1::KernelFeatures>,
    /// Server endpoints the agent reaches (`IP:PORT`).
    pub endpoints: Vec<String>,
    /// Failsafe ports.
    pub ports: Vec<u32>,
}

/// `(name, labels, features, failsafe)` as stored.
type ContextRow = (String, serde_json::Value, Option<Vec<u8>>, serde_json::Value);

fn context_from_row((name, labels, features, failsafe): ContextRow) -> Result<(String, NodeContext), ApiError> {
    let corrupt = |e: &dyn std::fmt::Display| ApiError::Corrupt(format!("node {name}: {e}"));
    let context = NodeContext {
        labels: serde_json::from_value(labels).map_err(|e| corrupt(&e))?,
        features: features.map(|f| v1::KernelFeatures::decode(f.as_slice())).transpose().map_err(|e| corrupt(&e))?,
        endpoints: serde_json::from_value(failsafe.get("endpoints").cloned().unwrap_or_default()).unwrap_or_default(),
        ports: serde_json::from_value(failsafe.get("ports").cloned().unwrap_or_default()).unwrap_or_default(),
    };
    Ok((name, context))
}

/// A node counts as connected only if it was heard from this recently, so a replica that
/// died without marking its streams closed does not leave nodes "connected" forever.
const LIVENESS_SECONDS: i64 = 90;

/// What a node reports on its own streams, each with its own rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reported {
    /// Decision events (`ReportEvents`).
    Events,
    /// Flow aggregates (`ReportFlows`).
    Flows,
}

const NODE_COLUMNS: &str = "name, labels, features, agent_version, registered_at, last_seen, \
     desired_generation, desired_digest, applied_generation, applied_digest, \
     last_error, last_error_generation, last_error_digest, last_error_at, event_stats, events_rate_limited, \
     flows_rate_limited, \
     (connected AND last_seen > now() - make_interval(secs => $LIVE)) AS connected_now";

fn columns() -> String {
    NODE_COLUMNS.replace("$LIVE", &LIVENESS_SECONDS.to_string())
}

fn node_from_row(row: &PgRow) -> Result<v1::Node, ApiError> {
    let name: String = row.try_get("name")?;
    let labels: serde_json::Value = row.try_get("labels")?;
    let labels: BTreeMap<String, String> =
        serde_json::from_value(labels).map_err(|e| ApiError::Corrupt(format!("node {name} labels: {e}")))?;
    let features: Option<Vec<u8>> = row.try_get("features")?;
    let features = features
        .map(|f| v1::KernelFeatures::decode(f.as_slice()))
        .transpose()
        .map_err(|e| ApiError::Corrupt(format!("node {name} features: {e}")))?;
    let last_error = match row.try_get::<Option<String>, _>("last_error")? {
        None => None,
        Some(message) => Some(v1::NodeError {
            generation: row.try_get::<Option<i64>, _>("last_error_generation")?.unwrap_or_default() as u64,
            digest: row.try_get::<Option<String>, _>("last_error_digest")?.unwrap_or_default(),
            message,
            at: row.try_get::<Option<_>, _>("last_error_at")?.map(timestamp),
        }),
    };
    let event_stats: Option<Vec<u8>> = row.try_get("event_stats")?;
    let event_stats = event_stats
        .map(|s| v1::EventStats::decode(s.as_slice()))
        .transpose()
        .map_err(|e| ApiError::Corrupt(format!("node {name} event stats: {e}")))?;
    Ok(v1::Node {
        event_stats,
        name,
        labels,
        features,
        agent_version: row.try_get("agent_version")?,
        connected: row.try_get("connected_now")?,
        last_seen: Some(timestamp(row.try_get("last_seen")?)),
        registered_at: Some(timestamp(row.try_get("registered_at")?)),
        desired_generation: row.try_get::<i64, _>("desired_generation")? as u64,
        desired_digest: row.try_get("desired_digest")?,
        applied_generation: row.try_get::<i64, _>("applied_generation")? as u64,
        applied_digest: row.try_get("applied_digest")?,
        last_error,
        // Computed by the API from the current policies.
        not_enforceable: Vec::new(),
        events_rate_limited: row.try_get::<i64, _>("events_rate_limited")? as u64,
        flows_rate_limited: row.try_get::<i64, _>("flows_rate_limited")? as u64,
    })
}

impl Store {
    /// Records an agent's hello: registers the node or refreshes its labels, features and
    /// the bundle it says it enforces, and marks it connected. Label changes are audited.
    ///
    /// The node's desired generation never falls below the one it enforces: an agent refuses
    /// any bundle older than what it runs (a replay or a downgrade), so after the database is
    /// restored from a backup the next bundle is numbered above the agent's, and a
    /// deliberate rollback of policy reaches the node as a new, higher generation.
    ///
    /// Returns the stream's session number, which [`Self::node_disconnected`] needs.
    pub async fn node_hello(&self, hello: &v1::AgentHello) -> Result<i64, ApiError> {
        let labels = serde_json::to_value(&hello.labels).map_err(|e| ApiError::Corrupt(e.to_string()))?;
        let features = hello.features.as_ref().map(prost::Message::encode_to_vec);
        let failsafe = serde_json::json!({ "endpoints": hello.server_endpoints, "ports": hello.failsafe_ports });
        let event_stats = hello.event_stats.as_ref().map(prost::Message::encode_to_vec);
        let mut tx = self.pool.begin().await?;
        let previous: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT labels FROM nodes WHERE name = $1 FOR UPDATE")
                .bind(&hello.node_name)
                .fetch_optional(&mut *tx)
                .await?;
        let session: i64 = sqlx::query_scalar(
            "INSERT INTO nodes (name, labels, features, agent_version, connected, last_seen, applied_generation, applied_digest, \
               failsafe, event_stats, desired_generation, desired_digest, sync_session) \
             VALUES ($1, $2, $3, $4, true, now(), $5, $6, $7, $8, $5, $6, 1) \
             ON CONFLICT (name) DO UPDATE SET labels = $2, features = $3, agent_version = $4, connected = true, \
               last_seen = now(), applied_generation = $5, applied_digest = $6, failsafe = $7, event_stats = $8, \
               desired_digest = CASE WHEN $5 >= nodes.desired_generation THEN $6 ELSE nodes.desired_digest END, \
               desired_generation = GREATEST(nodes.desired_generation, $5), sync_session = nodes.sync_session + 1 \
             RETURNING sync_session",
        )
        .bind(&hello.node_name)
        .bind(labels.clone())
        .bind(features)
        .bind(&hello.agent_version)
        .bind(hello.bundle_generation as i64)
        .bind(&hello.bundle_digest)
        .bind(failsafe)
        .bind(event_stats)
        .fetch_one(&mut *tx)
        .await?;
        let audit = match previous {
            None => {
                Some(("node.registered", serde_json::json!({ "labels": labels, "agent_version": hello.agent_version })))
            }
            Some(before) if before != labels => {
                Some(("node.labels_changed", serde_json::json!({ "before": before, "after": labels })))
            }
            Some(_) => None,
        };
        if let Some((action, details)) = audit {
            sqlx::query(
                "INSERT INTO audit_log (actor, action, object_kind, object_name, details) \
                 VALUES ($1, $2, 'node', $1, $3)",
            )
            .bind(&hello.node_name)
            .bind(action)
            .bind(details)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(session)
    }

    /// What compiling a bundle for the node needs: labels, features and failsafe list.
    pub async fn node_context(&self, name: &str) -> Result<NodeContext, ApiError> {
        let row: Option<ContextRow> =
            sqlx::query_as("SELECT name, labels, features, failsafe FROM nodes WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        let row = row.ok_or_else(|| ApiError::NotFound { kind: "node", name: name.to_owned() })?;
        Ok(context_from_row(row)?.1)
    }

    /// Every distinct context among registered nodes (labels, features, failsafe), each
    /// with the first node (by name) that has it, ordered by that name.
    pub async fn node_contexts(&self) -> Result<Vec<(String, NodeContext)>, ApiError> {
        // One row per distinct context (named by its first node): a fleet of thousands of
        // alike nodes is a handful of rows to decode, not thousands.
        // A skip scan over nodes_context_digest_idx: one index probe per distinct context.
        let rows: Vec<ContextRow> = sqlx::query_as(
            "WITH RECURSIVE d(digest) AS ( \
               (SELECT context_digest FROM nodes ORDER BY context_digest LIMIT 1) \
               UNION ALL \
               SELECT (SELECT n.context_digest FROM nodes n WHERE n.context_digest > d.digest \
                       ORDER BY n.context_digest LIMIT 1) FROM d WHERE d.digest IS NOT NULL) \
             SELECT x.name, x.labels, x.features, x.failsafe FROM d CROSS JOIN LATERAL \
               (SELECT name, labels, features, failsafe FROM nodes WHERE context_digest = d.digest \
                ORDER BY name LIMIT 1) x \
             ORDER BY x.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(context_from_row).collect()
    }

    /// Records the bundle the node should run; the node's generation moves only when the
    /// digest changes. Returns the desired generation. Concurrent calls (a policy change
    /// reaching every session at once) are written together, one statement per group.
    pub async fn node_set_desired(&self, name: &str, digest: &str) -> Result<u64, ApiError> {
        let pool = self.pool.clone();
        self.desired
            .submit((name.to_owned(), digest.to_owned()), move |rows| {
                let pool = pool.clone();
                async move { set_desired(&pool, rows).await }
            })
            .await?
            .ok_or_else(|| ApiError::NotFound { kind: "node", name: name.to_owned() })
    }

    /// The content of the stored bundle `digest`.
    pub async fn bundle_content(&self, digest: &str) -> Result<v1::BundleContent, ApiError> {
        let content: Vec<u8> = sqlx::query_scalar("SELECT content FROM bundles WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| ApiError::NotFound { kind: "bundle", name: digest.to_owned() })?;
        v1::BundleContent::decode(content.as_slice()).map_err(|e| ApiError::Corrupt(format!("bundle {digest}: {e}")))
    }

    /// Stores a compiled bundle (content-addressed; storing it again is a no-op).
    pub async fn save_bundle(&self, digest: &str, content: &[u8], stats: serde_json::Value) -> Result<(), ApiError> {
        sqlx::query("INSERT INTO bundles (digest, content, stats) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(digest)
            .bind(content)
            .bind(stats)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Counts `dropped` events (or flow aggregates) the node reported beyond its rate limit.
    /// Concurrent counts are written together, summed per node, in one statement: a flood
    /// from many streams of one node must not queue its streams' updates of that node's row
    /// on as many database connections (which other calls then wait for).
    pub async fn node_rate_limited(&self, name: &str, what: Reported, dropped: u64) -> Result<(), ApiError> {
        let pool = self.pool.clone();
        self.rate_limited
            .submit((name.to_owned(), what, dropped), move |rows| {
                let pool = pool.clone();
                async move { record_rate_limited(&pool, rows).await }
            })
            .await
    }

    /// Records that the node was heard from, with its event counters when it sent them.
    ///
    /// Only the node's newest stream (`session`, from [`Self::node_hello`]) marks it
    /// connected: a last heartbeat on a stream the node has left must not undo the
    /// disconnect of the stream it moved to.
    pub async fn node_seen(
        &self,
        name: &str,
        session: i64,
        event_stats: Option<&v1::EventStats>,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE nodes SET last_seen = now(), connected = (connected OR sync_session = $3), \
               event_stats = COALESCE($2, event_stats) \
             WHERE name = $1",
        )
        .bind(name)
        .bind(event_stats.map(prost::Message::encode_to_vec))
        .bind(session)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records an ACK: the node runs `generation`/`digest`; a rejection of that generation
    /// or an older one is cleared. Concurrent ACKs are written together.
    pub async fn node_ack(&self, name: &str, generation: u64, digest: &str) -> Result<(), ApiError> {
        let pool = self.pool.clone();
        self.acks
            .submit((name.to_owned(), generation, digest.to_owned()), move |rows| {
                let pool = pool.clone();
                async move { record_acks(&pool, rows).await }
            })
            .await
    }

    /// Records a NACK with the loader's error.
    pub async fn node_nack(&self, name: &str, generation: u64, digest: &str, error: &str) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE nodes SET last_seen = now(), last_error = $4, last_error_generation = $2, \
               last_error_digest = $3, last_error_at = now() WHERE name = $1",
        )
        .bind(name)
        .bind(generation as i64)
        .bind(digest)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the node's Sync stream `session` (from [`Self::node_hello`]) as closed, unless
    /// the node has said hello again since — on this replica or another — and so is
    /// connected through a newer stream.
    pub async fn node_disconnected(&self, name: &str, session: i64) -> Result<(), ApiError> {
        sqlx::query("UPDATE nodes SET connected = false WHERE name = $1 AND sync_session = $2")
            .bind(name)
            .bind(session)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One node.
    pub async fn get_node(&self, name: &str) -> Result<v1::Node, ApiError> {
        let row = sqlx::query(dynamic_sql!("SELECT {} FROM nodes WHERE name = $1", columns()))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| ApiError::NotFound { kind: "node", name: name.to_owned() })?;
        node_from_row(&row)
    }

    /// Nodes with names after `after` whose labels contain `selector`, ordered by name.
    pub async fn list_nodes(
        &self,
        selector: &BTreeMap<String, String>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<v1::Node>, bool), ApiError> {
        let selector = serde_json::to_value(selector).map_err(|e| ApiError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(dynamic_sql!(
            "SELECT {} FROM nodes WHERE labels @> $1 AND ($2::text IS NULL OR name > $2) ORDER BY name LIMIT $3",
            columns()
        ))
        .bind(selector)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let nodes = rows.iter().take(limit as usize).map(node_from_row).collect::<Result<_, _>>()?;
        Ok((nodes, more))
    }
}

#[cfg(test)]
mod tests;

/// Counts for the server's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetSummary {
    /// Live policies.
    pub policies: i64,
    /// Nodes by [`crate::metrics::NODE_STATES`] (`in_sync`, `pending`, `failed`, `disconnected`).
    pub nodes: [i64; 4],
    /// Largest desired minus acknowledged generation over connected nodes.
    pub lag_max: i64,
}

impl Store {
    /// Policies and nodes by sync state, in one statement. A connected node is in sync when
    /// it acknowledged the desired digest, failed when it rejected something since, pending
    /// otherwise.
    pub async fn fleet_summary(&self) -> Result<FleetSummary, ApiError> {
        let sql = "WITH n AS (SELECT desired_generation, desired_digest, applied_generation, applied_digest, \
                     last_error, (connected AND last_seen > now() - make_interval(secs => $LIVE)) AS live FROM nodes) \
                   SELECT (SELECT count(*) FROM policies WHERE NOT deleted), \
                     count(*) FILTER (WHERE live AND desired_digest <> '' AND applied_digest = desired_digest), \
                     count(*) FILTER (WHERE live AND NOT (desired_digest <> '' AND applied_digest = desired_digest) \
                       AND last_error IS NULL), \
                     count(*) FILTER (WHERE live AND NOT (desired_digest <> '' AND applied_digest = desired_digest) \
                       AND last_error IS NOT NULL), \
                     count(*) FILTER (WHERE NOT live), \
                     COALESCE(max(GREATEST(desired_generation - applied_generation, 0)) FILTER (WHERE live), 0) \
                   FROM n"
            .replace("$LIVE", &LIVENESS_SECONDS.to_string());
        let row: (i64, i64, i64, i64, i64, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(&self.pool).await?;
        Ok(FleetSummary { policies: row.0, nodes: [row.1, row.2, row.3, row.4], lag_max: row.5 })
    }
}

/// One statement for a group of desired-bundle records, in name order (two replicas' groups
/// lock rows in the same order). Each answer is the node's desired generation, `None` for a
/// node that does not exist.
async fn set_desired(pool: &sqlx::PgPool, rows: Vec<(String, String)>) -> Result<Vec<Option<u64>>, ApiError> {
    // The last record per node wins (a node has one session; a duplicate is a reconnect).
    let mut latest: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, digest) in &rows {
        latest.insert(name, digest);
    }
    let (names, digests): (Vec<&str>, Vec<&str>) = latest.into_iter().unzip();
    let written: Vec<(String, i64)> = sqlx::query_as(
        "WITH w AS (SELECT * FROM unnest($1::text[], $2::text[]) AS w(name, digest)), \
              locked AS (SELECT n.name FROM nodes n JOIN w USING (name) ORDER BY n.name FOR UPDATE OF n) \
         UPDATE nodes n SET desired_generation = CASE WHEN n.desired_digest = w.digest THEN n.desired_generation \
               ELSE n.desired_generation + 1 END, desired_digest = w.digest \
         FROM w WHERE n.name = w.name AND n.name IN (SELECT name FROM locked) \
         RETURNING n.name, n.desired_generation",
    )
    .bind(&names)
    .bind(&digests)
    .fetch_all(pool)
    .await?;
    let generations: std::collections::HashMap<String, i64> = written.into_iter().collect();
    Ok(rows.iter().map(|(name, _)| generations.get(name).map(|g| *g as u64)).collect())
}

/// Adds refused counts to the nodes' rows, one statement for every row queued.
async fn record_rate_limited(pool: &sqlx::PgPool, rows: Vec<(String, Reported, u64)>) -> Result<Vec<()>, ApiError> {
    let mut sums: std::collections::BTreeMap<&str, (i64, i64)> = std::collections::BTreeMap::new();
    for (name, what, n) in &rows {
        let n = i64::try_from(*n).unwrap_or(i64::MAX);
        let entry = sums.entry(name.as_str()).or_default();
        match what {
            Reported::Events => entry.0 = entry.0.saturating_add(n),
            Reported::Flows => entry.1 = entry.1.saturating_add(n),
        }
    }
    sqlx::query(
        "UPDATE nodes SET events_rate_limited = events_rate_limited + d.events, \
           flows_rate_limited = flows_rate_limited + d.flows \
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS d(name, events, flows) WHERE nodes.name = d.name",
    )
    .bind(sums.keys().copied().collect::<Vec<_>>())
    .bind(sums.values().map(|s| s.0).collect::<Vec<_>>())
    .bind(sums.values().map(|s| s.1).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(vec![(); rows.len()])
}

/// One statement for a group of ACKs, in name order.
async fn record_acks(pool: &sqlx::PgPool, rows: Vec<(String, u64, String)>) -> Result<Vec<()>, ApiError> {
    let mut latest: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for (name, generation, digest) in &rows {
        let generation = *generation as i64;
        if latest.get(name.as_str()).is_none_or(|(g, _)| *g <= generation) {
            latest.insert(name, (generation, digest));
        }
    }
    let names: Vec<&str> = latest.keys().copied().collect();
    let generations: Vec<i64> = latest.values().map(|(g, _)| *g).collect();
    let digests: Vec<&str> = latest.values().map(|(_, d)| *d).collect();
    sqlx::query(
        "WITH w AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) AS w(name, generation, digest)), \
              locked AS (SELECT n.name FROM nodes n JOIN w USING (name) ORDER BY n.name FOR UPDATE OF n) \
         UPDATE nodes n SET last_seen = now(), applied_generation = w.generation, applied_digest = w.digest, \
           last_error = CASE WHEN n.last_error_generation <= w.generation THEN NULL ELSE n.last_error END, \
           last_error_generation = CASE WHEN n.last_error_generation <= w.generation THEN NULL \
             ELSE n.last_error_generation END, \
           last_error_digest = CASE WHEN n.last_error_generation <= w.generation THEN NULL ELSE n.last_error_digest END, \
           last_error_at = CASE WHEN n.last_error_generation <= w.generation THEN NULL ELSE n.last_error_at END \
         FROM w WHERE n.name = w.name AND n.name IN (SELECT name FROM locked)",
    )
    .bind(&names)
    .bind(&generations)
    .bind(&digests)
    .execute(pool)
    .await?;
    Ok(vec![(); rows.len()])
}
