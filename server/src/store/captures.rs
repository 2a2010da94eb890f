//! Packet capture sessions: what was asked, where each node is, and the packets, stored in
//! the chunks agents send (one row per `ReportCapture` message). Storage is bounded by a
//! global quota: a chunk that would exceed it first expires the oldest finished captures,
//! and is refused (the node stops with "quota") if that is not enough.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use palisade_proto::v1;
use prost::Message as _;
use sqlx::Row as _;

use super::{Store, timestamp};
use crate::error::ApiError;

/// Channel a replica notifies when captures start, stop or end: every replica's hub re-reads
/// the orders its agents must get.
pub const CAPTURES_CHANNEL: &str = "palisade_captures";
/// Most nodes one capture may select.
pub const MAX_CAPTURE_NODES: usize = 10_000;
/// Advisory lock serialising quota checks (one chunk at a time decides what expires).
const QUOTA_LOCK: i64 = 0x7061_6c69_6361_7031;
/// How long after its deadline a capture waits for nodes' final reports before giving up on
/// them ("lost").
pub const FINAL_REPORT_GRACE: Duration = Duration::from_secs(30);

/// A capture to start, checked.
#[derive(Debug, Clone)]
pub struct NewCapture {
    /// The filter expression (compiled by the caller).
    pub expression: String,
    /// Which nodes.
    pub node_selector: BTreeMap<String, String>,
    /// Interface names.
    pub interfaces: Vec<String>,
    /// Bytes kept per packet.
    pub snap_length: u32,
    /// How long the capture runs.
    pub duration: Duration,
    /// Packets each node may keep.
    pub max_packets: u64,
    /// Bytes each node may keep.
    pub max_bytes: u64,
}

/// What one `ReportCapture` message says besides its packets.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Interface counters on the node.
    pub seen: u64,
    /// Ring drops on the node.
    pub dropped: u64,
    /// Set on the last message: (stop reason, error, whether it failed to start).
    pub end: Option<(String, String, bool)>,
}

/// One source of a download: a node's interface, named.
#[derive(Debug, Clone)]
pub struct Source {
    /// The node.
    pub node: String,
    /// Index into the capture's interfaces.
    pub interface: u32,
    /// That interface's name.
    pub interface_name: String,
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn node_state(text: &str) -> v1::CaptureNodeState {
    match text {
        "pending" => v1::CaptureNodeState::Pending,
        "running" => v1::CaptureNodeState::Running,
        "finished" => v1::CaptureNodeState::Finished,
        _ => v1::CaptureNodeState::Failed,
    }
}

const CAPTURE_COLUMNS: &str = "c.id, c.expression, c.node_selector, c.interfaces, c.snap_length, c.duration_ms, \
     c.max_packets, c.max_bytes, c.created_by, c.created_at, c.finished_at, c.stored_bytes, \
     (SELECT count(*) FROM capture_nodes n WHERE n.capture_id = c.id) AS node_count, \
     (SELECT count(*) FROM capture_nodes n WHERE n.capture_id = c.id AND n.state IN ('finished', 'failed')) \
        AS nodes_finished, \
     (SELECT coalesce(sum(n.packets_kept), 0)::bigint FROM capture_nodes n WHERE n.capture_id = c.id) AS kept";

fn capture_from_row(row: &sqlx::postgres::PgRow) -> Result<v1::Capture, ApiError> {
    let selector: serde_json::Value = row.try_get("node_selector")?;
    let node_selector =
        serde_json::from_value(selector).map_err(|e| ApiError::Corrupt(format!("capture selector: {e}")))?;
    let finished_at: Option<DateTime<Utc>> = row.try_get("finished_at")?;
    let duration_ms: i64 = row.try_get("duration_ms")?;
    let count = |name: &str| -> Result<u32, ApiError> {
        let n: i64 = row.try_get(name)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    };
    Ok(v1::Capture {
        id: row.try_get::<i64, _>("id")? as u64,
        expression: row.try_get("expression")?,
        node_selector,
        interfaces: row.try_get("interfaces")?,
        snap_length: row.try_get::<i32, _>("snap_length")? as u32,
        limits: Some(v1::CaptureLimits {
            duration: Some(prost_types::Duration {
                seconds: duration_ms / 1000,
                nanos: ((duration_ms % 1000) * 1_000_000) as i32,
            }),
            max_packets: row.try_get::<i64, _>("max_packets")? as u64,
            max_bytes: row.try_get::<i64, _>("max_bytes")? as u64,
        }),
        created_by: row.try_get("created_by")?,
        created_at: Some(timestamp(row.try_get("created_at")?)),
        finished_at: finished_at.map(timestamp),
        state: if finished_at.is_some() { v1::CaptureState::Finished } else { v1::CaptureState::Running } as i32,
        nodes: Vec::new(),
        stored_bytes: row.try_get::<i64, _>("stored_bytes")? as u64,
        node_count: count("node_count")?,
        nodes_finished: count("nodes_finished")?,
        packets_kept: row.try_get::<i64, _>("kept")? as u64,
    })
}

impl Store {
    /// Starts `capture` on every registered node its selector matches, as `actor`; the
    /// capture with its nodes. Nothing is stored when no node matches.
    pub async fn start_capture(&self, capture: &NewCapture, actor: &str) -> Result<v1::Capture, ApiError> {
        let selector = serde_json::to_value(&capture.node_selector).map_err(|e| ApiError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let nodes: Vec<String> = sqlx::query_scalar("SELECT name FROM nodes WHERE labels @> $1 ORDER BY name LIMIT $2")
            .bind(&selector)
            .bind(i64_of(MAX_CAPTURE_NODES as u64 + 1))
            .fetch_all(&mut *tx)
            .await?;
        if nodes.is_empty() {
            return Err(ApiError::invalid("node_selector", "matches no registered node"));
        }
        if nodes.len() > MAX_CAPTURE_NODES {
            return Err(ApiError::invalid(
                "node_selector",
                format!("matches more than {MAX_CAPTURE_NODES} nodes; capture on fewer at a time"),
            ));
        }
        let duration_ms = i64::try_from(capture.duration.as_millis()).unwrap_or(i64::MAX);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO captures (expression, node_selector, interfaces, snap_length, duration_ms, max_packets, \
             max_bytes, created_by, deadline) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + $5 * interval '1 millisecond') RETURNING id",
        )
        .bind(&capture.expression)
        .bind(&selector)
        .bind(&capture.interfaces)
        .bind(capture.snap_length as i32)
        .bind(duration_ms)
        .bind(i64_of(capture.max_packets))
        .bind(i64_of(capture.max_bytes))
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO capture_nodes (capture_id, node) SELECT $1, unnest($2::text[])")
            .bind(id)
            .bind(&nodes)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO audit_log (actor, action, object_kind, object_name, details) \
             VALUES ($1, 'capture.started', 'capture', $2, $3)",
        )
        .bind(actor)
        .bind(id.to_string())
        .bind(serde_json::json!({
            "expression": capture.expression,
            "interfaces": capture.interfaces,
            "nodes": nodes.len(),
        }))
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(CAPTURES_CHANNEL).bind(id.to_string()).execute(&mut *tx).await?;
        tx.commit().await?;
        self.capture(id as u64).await?.ok_or_else(|| ApiError::Corrupt(format!("capture {id} vanished")))
    }

    /// Capture `id` with its per-node status.
    pub async fn capture(&self, id: u64) -> Result<Option<v1::Capture>, ApiError> {
        let Some(row) = sqlx::query(dynamic_sql!("SELECT {CAPTURE_COLUMNS} FROM captures c WHERE c.id = $1"))
            .bind(i64_of(id))
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut capture = capture_from_row(&row)?;
        let rows = sqlx::query(
            "SELECT node, state, packets_seen, packets_kept, packets_dropped, bytes, stop_reason, error, started_at, \
             finished_at FROM capture_nodes WHERE capture_id = $1 ORDER BY node",
        )
        .bind(i64_of(id))
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let started: Option<DateTime<Utc>> = row.try_get("started_at")?;
            let finished: Option<DateTime<Utc>> = row.try_get("finished_at")?;
            capture.nodes.push(v1::CaptureNodeStatus {
                node: row.try_get("node")?,
                state: node_state(row.try_get("state")?) as i32,
                packets_seen: row.try_get::<i64, _>("packets_seen")? as u64,
                packets_kept: row.try_get::<i64, _>("packets_kept")? as u64,
                packets_dropped: row.try_get::<i64, _>("packets_dropped")? as u64,
                bytes: row.try_get::<i64, _>("bytes")? as u64,
                stop_reason: row.try_get("stop_reason")?,
                error: row.try_get("error")?,
                started_at: started.map(timestamp),
                finished_at: finished.map(timestamp),
            });
        }
        Ok(Some(capture))
    }

    /// Captures with ids below `before` (all when `None`), newest first; whether more follow.
    pub async fn list_captures(&self, before: Option<u64>, limit: u32) -> Result<(Vec<v1::Capture>, bool), ApiError> {
        let rows = sqlx::query(dynamic_sql!(
            "SELECT {CAPTURE_COLUMNS} FROM captures c WHERE ($1::bigint IS NULL OR c.id < $1) ORDER BY c.id DESC \
             LIMIT $2"
        ))
        .bind(before.map(i64_of))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let captures = rows.iter().take(limit as usize).map(capture_from_row).collect::<Result<_, _>>()?;
        Ok((captures, more))
    }

    /// Asks capture `id` to stop, as `actor`: nodes that never started it finish now
    /// ("stopped"), running ones are told to stop.
    pub async fn stop_capture(&self, id: u64, actor: &str) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query("UPDATE captures SET stop_requested = true WHERE id = $1")
            .bind(i64_of(id))
            .execute(&mut *tx)
            .await?;
        if found.rows_affected() == 0 {
            return Err(ApiError::NotFound { kind: "capture", name: id.to_string() });
        }
        sqlx::query(
            "UPDATE capture_nodes SET state = 'finished', stop_reason = 'stopped', finished_at = now() \
             WHERE capture_id = $1 AND state = 'pending'",
        )
        .bind(i64_of(id))
        .execute(&mut *tx)
        .await?;
        finish_if_done(&mut tx, id).await?;
        sqlx::query(
            "INSERT INTO audit_log (actor, action, object_kind, object_name) VALUES ($1, 'capture.stopped', 'capture', $2)",
        )
        .bind(actor)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(CAPTURES_CHANNEL).bind(id.to_string()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes finished capture `id` and its packets, as `actor`.
    pub async fn delete_capture(&self, id: u64, actor: &str) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let finished: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT finished_at FROM captures WHERE id = $1 FOR UPDATE")
                .bind(i64_of(id))
                .fetch_optional(&mut *tx)
                .await?;
        match finished {
            None => return Err(ApiError::NotFound { kind: "capture", name: id.to_string() }),
            Some(None) => {
                return Err(ApiError::FailedPrecondition(format!(
                    "capture {id} is still running; stop it first (palisade capture stop {id})"
                )));
            }
            Some(Some(_)) => {}
        }
        sqlx::query("DELETE FROM captures WHERE id = $1").bind(i64_of(id)).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO audit_log (actor, action, object_kind, object_name) VALUES ($1, 'capture.deleted', 'capture', $2)",
        )
        .bind(actor)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What every node still capturing, or yet to start, must be told: node → orders.
    pub async fn capture_orders(&self) -> Result<BTreeMap<String, Vec<v1::CaptureOrder>>, ApiError> {
        let rows = sqlx::query(
            "SELECT c.id, n.node, c.expression, c.interfaces, c.snap_length, c.deadline, c.stop_requested, \
             greatest(c.max_packets - n.packets_kept, 0) AS packets, greatest(c.max_bytes - n.bytes, 0) AS bytes \
             FROM capture_nodes n JOIN captures c ON c.id = n.capture_id \
             WHERE n.state IN ('pending', 'running') AND c.finished_at IS NULL ORDER BY c.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut orders: BTreeMap<String, Vec<v1::CaptureOrder>> = BTreeMap::new();
        for row in rows {
            let id = row.try_get::<i64, _>("id")? as u64;
            let order = if row.try_get("stop_requested")? {
                v1::CaptureOrder { id, stop: true, ..v1::CaptureOrder::default() }
            } else {
                v1::CaptureOrder {
                    id,
                    stop: false,
                    expression: row.try_get("expression")?,
                    interfaces: row.try_get("interfaces")?,
                    snap_length: row.try_get::<i32, _>("snap_length")? as u32,
                    deadline: Some(timestamp(row.try_get("deadline")?)),
                    max_packets: row.try_get::<i64, _>("packets")? as u64,
                    max_bytes: row.try_get::<i64, _>("bytes")? as u64,
                }
            };
            orders.entry(row.try_get("node")?).or_default().push(order);
        }
        Ok(orders)
    }

    /// Stores what `node` reported for capture `id` from interface `interface`: the packets
    /// (as many as the capture's limits and the quota leave room for) and the progress.
    /// The number stored. `NotFound` if the node is not part of the capture,
    /// `FailedPrecondition` once its part has finished, `ResourceExhausted` when the quota
    /// cannot make room (the node's part then finishes with "quota").
    pub async fn report_capture(
        &self,
        node: &str,
        id: u64,
        interface: u32,
        mut packets: Vec<v1::CapturedPacket>,
        progress: &Progress,
        quota: u64,
    ) -> Result<u64, ApiError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT n.state, n.packets_kept, n.bytes, c.max_packets, c.max_bytes, cardinality(c.interfaces) AS ifaces \
             FROM capture_nodes n JOIN captures c ON c.id = n.capture_id \
             WHERE n.capture_id = $1 AND n.node = $2 FOR UPDATE OF n",
        )
        .bind(i64_of(id))
        .bind(node)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::NotFound { kind: "capture", name: format!("{id} on node {node}") })?;
        let state: String = row.try_get("state")?;
        if state == "finished" || state == "failed" {
            return Err(ApiError::FailedPrecondition(format!("capture {id} has finished on node {node}")));
        }
        let ifaces: i32 = row.try_get("ifaces")?;
        if i64::from(interface) >= i64::from(ifaces) {
            return Err(ApiError::invalid("interface", format!("capture {id} has {ifaces} interfaces")));
        }
        // The agent enforces the limits; the server does not rely on it.
        let (kept, bytes): (i64, i64) = (row.try_get("packets_kept")?, row.try_get("bytes")?);
        let (max_packets, max_bytes): (i64, i64) = (row.try_get("max_packets")?, row.try_get("max_bytes")?);
        let mut room = (max_packets - kept).max(0) as usize;
        let mut byte_room = (max_bytes - bytes).max(0) as u64;
        packets.retain(|p| {
            let fits = room > 0 && p.data.len() as u64 <= byte_room;
            if fits {
                room -= 1;
                byte_room -= p.data.len() as u64;
            }
            fits
        });
        let chunk_bytes: u64 = packets.iter().map(|p| p.data.len() as u64).sum();
        let mut end = progress.end.clone();
        let mut refused = false;
        if !packets.is_empty() {
            if make_room(&mut tx, id, chunk_bytes, quota).await? {
                let first_ns = packets.iter().map(|p| p.timestamp_ns).min().unwrap_or(0);
                let encoded = v1::ReportCaptureRequest { packets: std::mem::take(&mut packets), ..Default::default() };
                let stored = encoded.packets.len() as u64;
                sqlx::query(
                    "INSERT INTO capture_chunks (capture_id, node, interface, first_ns, packets, bytes) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(i64_of(id))
                .bind(node)
                .bind(interface as i32)
                .bind(i64_of(first_ns))
                .bind(encoded.encode_to_vec())
                .bind(i64_of(chunk_bytes))
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE captures SET stored_bytes = stored_bytes + $2 WHERE id = $1")
                    .bind(i64_of(id))
                    .bind(i64_of(chunk_bytes))
                    .execute(&mut *tx)
                    .await?;
                return self.finish_report(tx, node, id, (stored, chunk_bytes), progress, end).await;
            }
            refused = true;
            end = Some(("quota".to_owned(), "the server's capture storage is full".to_owned(), false));
        }
        let outcome = self.finish_report(tx, node, id, (0, 0), progress, end).await;
        if refused {
            outcome?;
            return Err(ApiError::ResourceExhausted(format!(
                "the server's capture storage (--capture-quota {quota} bytes) is full; capture {id} stopped on {node}"
            )));
        }
        outcome
    }

    async fn finish_report(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        node: &str,
        id: u64,
        (stored, bytes): (u64, u64),
        progress: &Progress,
        end: Option<(String, String, bool)>,
    ) -> Result<u64, ApiError> {
        let (reason, error, failed) = end.clone().unwrap_or_default();
        let state = match (&end, failed) {
            (None, _) => "running",
            (Some(_), false) => "finished",
            (Some(_), true) => "failed",
        };
        sqlx::query(
            "UPDATE capture_nodes SET state = $3, packets_kept = packets_kept + $4, bytes = bytes + $5, \
             packets_seen = greatest(packets_seen, $6), packets_dropped = greatest(packets_dropped, $7), \
             stop_reason = $8, error = $9, started_at = coalesce(started_at, now()), \
             finished_at = CASE WHEN $3 = 'running' THEN NULL ELSE now() END \
             WHERE capture_id = $1 AND node = $2",
        )
        .bind(i64_of(id))
        .bind(node)
        .bind(state)
        .bind(i64_of(stored))
        .bind(i64_of(bytes))
        .bind(i64_of(progress.seen))
        .bind(i64_of(progress.dropped))
        .bind(&reason)
        .bind(&error)
        .execute(&mut *tx)
        .await?;
        if end.is_some() && finish_if_done(&mut tx, id).await? {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CAPTURES_CHANNEL)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// Gives up on nodes that did not report the end of a capture within
    /// [`FINAL_REPORT_GRACE`] of its deadline, and finishes captures whose nodes are all
    /// done; the number of captures finished.
    pub async fn expire_captures(&self) -> Result<u64, ApiError> {
        let mut tx = self.pool.begin().await?;
        let overdue: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM captures WHERE finished_at IS NULL AND deadline + $1 * interval '1 second' < now() \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(FINAL_REPORT_GRACE.as_secs() as i64)
        .fetch_all(&mut *tx)
        .await?;
        if overdue.is_empty() {
            return Ok(0);
        }
        sqlx::query(
            "UPDATE capture_nodes SET \
             state = CASE WHEN state = 'pending' THEN 'failed' ELSE 'finished' END, \
             stop_reason = 'lost', \
             error = CASE WHEN state = 'pending' THEN 'the node did not start the capture before its deadline (not \
             connected?)' ELSE 'the node did not report the end of the capture' END, \
             finished_at = now() WHERE capture_id = ANY($1) AND state IN ('pending', 'running')",
        )
        .bind(&overdue)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE captures SET finished_at = now() WHERE id = ANY($1)")
            .bind(&overdue)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, 'expired')").bind(CAPTURES_CHANNEL).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(overdue.len() as u64)
    }

    /// The node interfaces capture `id` holds packets from, each named.
    pub async fn capture_sources(&self, id: u64) -> Result<Vec<Source>, ApiError> {
        let rows = sqlx::query(
            "SELECT DISTINCT k.node, k.interface, c.interfaces[k.interface + 1] AS name \
             FROM capture_chunks k JOIN captures c ON c.id = k.capture_id WHERE k.capture_id = $1 \
             ORDER BY k.node, k.interface",
        )
        .bind(i64_of(id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Source {
                    node: row.try_get("node")?,
                    interface: row.try_get::<i32, _>("interface")? as u32,
                    interface_name: row.try_get::<Option<String>, _>("name")?.unwrap_or_default(),
                })
            })
            .collect()
    }

    /// The next chunk of `source` in capture `id` after chunk `after`: its id and packets.
    pub async fn capture_chunk(
        &self,
        id: u64,
        source: &Source,
        after: i64,
    ) -> Result<Option<(i64, Vec<v1::CapturedPacket>)>, ApiError> {
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT id, packets FROM capture_chunks WHERE capture_id = $1 AND node = $2 AND interface = $3 \
             AND id > $4 ORDER BY id LIMIT 1",
        )
        .bind(i64_of(id))
        .bind(&source.node)
        .bind(source.interface as i32)
        .bind(after)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(chunk, bytes)| {
            let decoded = v1::ReportCaptureRequest::decode(bytes.as_slice())
                .map_err(|e| ApiError::Corrupt(format!("capture {id} chunk {chunk}: {e}")))?;
            Ok((chunk, decoded.packets))
        })
        .transpose()
    }

    /// Bytes of packets stored over every capture.
    pub async fn capture_bytes(&self) -> Result<u64, ApiError> {
        let total: i64 = sqlx::query_scalar("SELECT coalesce(sum(stored_bytes), 0)::bigint FROM captures")
            .fetch_one(&self.pool)
            .await?;
        Ok(total as u64)
    }
}

/// Marks capture `id` finished if none of its nodes is pending or running; whether it did.
async fn finish_if_done(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, id: u64) -> Result<bool, ApiError> {
    let done = sqlx::query(
        "UPDATE captures SET finished_at = now() WHERE id = $1 AND finished_at IS NULL AND NOT EXISTS \
         (SELECT 1 FROM capture_nodes WHERE capture_id = $1 AND state IN ('pending', 'running'))",
    )
    .bind(i64_of(id))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Makes room for `bytes` more under `quota` by deleting the oldest finished captures other
/// than `id`; whether it fits.
async fn make_room(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: u64,
    bytes: u64,
    quota: u64,
) -> Result<bool, ApiError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(QUOTA_LOCK).execute(&mut **tx).await?;
    loop {
        let total: i64 = sqlx::query_scalar("SELECT coalesce(sum(stored_bytes), 0)::bigint FROM captures")
            .fetch_one(&mut **tx)
            .await?;
        if (total as u64).saturating_add(bytes) <= quota {
            return Ok(true);
        }
        let oldest: Option<i64> = sqlx::query_scalar(
            "DELETE FROM captures WHERE id = (SELECT id FROM captures WHERE finished_at IS NOT NULL AND id <> $1 \
             ORDER BY finished_at, id LIMIT 1) RETURNING id",
        )
        .bind(i64_of(id))
        .fetch_optional(&mut **tx)
        .await?;
        match oldest {
            Some(expired) => {
                tracing::info!(capture = expired, "capture quota reached: oldest finished capture expired");
            }
            None => return Ok(false),
        }
    }
}
