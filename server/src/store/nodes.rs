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

const NODE_COLUMNS: &str = "name, labels, features, agent_version, registered_at, last_seen, \
     desired_generation, desired_digest, applied_generation, applied_digest, \
     last_error, last_error_generation, last_error_digest, last_error_at, event_stats, events_rate_limited, \
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
    pub async fn node_hello(&self, hello: &v1::AgentHello) -> Result<(), ApiError> {
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
        sqlx::query(
            "INSERT INTO nodes (name, labels, features, agent_version, connected, last_seen, applied_generation, applied_digest, \
               failsafe, event_stats, desired_generation, desired_digest) \
             VALUES ($1, $2, $3, $4, true, now(), $5, $6, $7, $8, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET labels = $2, features = $3, agent_version = $4, connected = true, \
               last_seen = now(), applied_generation = $5, applied_digest = $6, failsafe = $7, event_stats = $8, \
               desired_digest = CASE WHEN $5 >= nodes.desired_generation THEN $6 ELSE nodes.desired_digest END, \
               desired_generation = GREATEST(nodes.desired_generation, $5)",
        )
        .bind(&hello.node_name)
        .bind(labels.clone())
        .bind(features)
        .bind(&hello.agent_version)
        .bind(hello.bundle_generation as i64)
        .bind(&hello.bundle_digest)
        .bind(failsafe)
        .bind(event_stats)
        .execute(&mut *tx)
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
        Ok(())
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

    /// Every registered node's context, by name, in one query.
    pub async fn node_contexts(&self) -> Result<Vec<(String, NodeContext)>, ApiError> {
        let rows: Vec<ContextRow> = sqlx::query_as("SELECT name, labels, features, failsafe FROM nodes ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(context_from_row).collect()
    }

    /// Records the bundle the node should run; the node's generation moves only when the
    /// digest changes. Returns the desired generation.
    pub async fn node_set_desired(&self, name: &str, digest: &str) -> Result<u64, ApiError> {
        let generation: i64 = sqlx::query_scalar(
            "UPDATE nodes SET desired_generation = CASE WHEN desired_digest = $2 THEN desired_generation \
               ELSE desired_generation + 1 END, desired_digest = $2 WHERE name = $1 RETURNING desired_generation",
        )
        .bind(name)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound { kind: "node", name: name.to_owned() })?;
        Ok(generation as u64)
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

    /// Counts `dropped` events the node reported beyond its rate limit.
    pub async fn node_rate_limited(&self, name: &str, dropped: u64) -> Result<(), ApiError> {
        sqlx::query("UPDATE nodes SET events_rate_limited = events_rate_limited + $2 WHERE name = $1")
            .bind(name)
            .bind(i64::try_from(dropped).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that the node was heard from, with its event counters when it sent them.
    pub async fn node_seen(&self, name: &str, event_stats: Option<&v1::EventStats>) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE nodes SET last_seen = now(), connected = true, event_stats = COALESCE($2, event_stats) \
             WHERE name = $1",
        )
        .bind(name)
        .bind(event_stats.map(prost::Message::encode_to_vec))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records an ACK: the node enforces `generation`/`digest`; an older NACK is cleared.
    pub async fn node_ack(&self, name: &str, generation: u64, digest: &str) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE nodes SET last_seen = now(), applied_generation = $2, applied_digest = $3, \
               last_error = CASE WHEN last_error_generation <= $2 THEN NULL ELSE last_error END, \
               last_error_generation = CASE WHEN last_error_generation <= $2 THEN NULL ELSE last_error_generation END, \
               last_error_digest = CASE WHEN last_error_generation <= $2 THEN NULL ELSE last_error_digest END, \
               last_error_at = CASE WHEN last_error_generation <= $2 THEN NULL ELSE last_error_at END \
             WHERE name = $1",
        )
        .bind(name)
        .bind(generation as i64)
        .bind(digest)
        .execute(&self.pool)
        .await?;
        Ok(())
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

    /// Marks the node's Sync stream as closed.
    pub async fn node_disconnected(&self, name: &str) -> Result<(), ApiError> {
        sqlx::query("UPDATE nodes SET connected = false WHERE name = $1").bind(name).execute(&self.pool).await?;
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
