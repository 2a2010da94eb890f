//! Decision events.

use chrono::{DateTime, Utc};
use palisade_proto::v1;
use sqlx::{Postgres, QueryBuilder, Row as _, postgres::PgRow};

use super::{EVENTS_CHANNEL, Store, from_timestamp, timestamp};
use crate::error::ApiError;

/// Rows per `INSERT` statement: 19 binds each stays far below PostgreSQL's 65535 limit.
const INSERT_CHUNK: usize = 1000;

/// Advisory lock key serialising event ingest ("palisade" in ASCII, truncated).
const EVENT_INGEST_LOCK: i64 = 0x7061_6c69_7361_6465;

/// Filters for listing events.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only this node.
    pub node: Option<String>,
    /// Only this policy.
    pub policy: Option<String>,
    /// Only this verdict.
    pub verdict: Option<i32>,
    /// Kernel time at or after.
    pub since: Option<DateTime<Utc>>,
    /// Kernel time before.
    pub until: Option<DateTime<Utc>>,
    /// Only ids below this (pagination cursor).
    pub before_id: Option<i64>,
    /// Only ids above this (watch catch-up).
    pub after_id: Option<i64>,
}

const EVENT_COLUMNS: &str = "id, node, policy, revision, rule_id, verdict, would_deny, hook, pid, comm, uid, \
     cgroup_id::text AS cgroup_id, address, port, protocol, bundle_digest, event_time, received_at, path, access";

fn event_from_row(row: &PgRow) -> Result<v1::DecisionEvent, ApiError> {
    let cgroup_id: String = row.try_get("cgroup_id")?;
    Ok(v1::DecisionEvent {
        id: row.try_get::<i64, _>("id")? as u64,
        node: row.try_get("node")?,
        policy: row.try_get("policy")?,
        revision: row.try_get::<i64, _>("revision")? as u64,
        rule_id: row.try_get("rule_id")?,
        verdict: i32::from(row.try_get::<i16, _>("verdict")?),
        hook: row.try_get("hook")?,
        pid: row.try_get::<i64, _>("pid")? as u32,
        comm: row.try_get("comm")?,
        uid: row.try_get::<i64, _>("uid")? as u32,
        cgroup_id: cgroup_id.parse().map_err(|_| ApiError::Corrupt(format!("cgroup id {cgroup_id}")))?,
        address: row.try_get("address")?,
        port: row.try_get::<i32, _>("port")? as u32,
        protocol: i32::from(row.try_get::<i16, _>("protocol")?),
        bundle_digest: row.try_get("bundle_digest")?,
        time: Some(timestamp(row.try_get("event_time")?)),
        received_at: Some(timestamp(row.try_get("received_at")?)),
        would_deny: row.try_get("would_deny")?,
        path: row.try_get("path")?,
        access: access_list(row.try_get::<i16, _>("access")?),
    })
}

/// File accesses as stored (bit 1 read, bit 2 write).
fn access_bits(access: &[i32]) -> i16 {
    access.iter().fold(0, |bits, a| match v1::FileAccess::try_from(*a) {
        Ok(v1::FileAccess::Read) => bits | 1,
        Ok(v1::FileAccess::Write) => bits | 2,
        _ => bits,
    })
}

fn access_list(bits: i16) -> Vec<i32> {
    [(1, v1::FileAccess::Read), (2, v1::FileAccess::Write)]
        .into_iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, a)| a as i32)
        .collect()
}

impl Store {
    /// Stores events reported by `node` in one transaction and announces the highest new id.
    /// Events must have been validated. Returns how many were stored.
    pub async fn insert_events(&self, node: &str, events: &[v1::DecisionEvent]) -> Result<u64, ApiError> {
        if events.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let _writer = self.ingest.lock().await;
        let mut tx = self.pool.begin().await?;
        // Serialise ingest so ids become visible in id order: watchers catch up with
        // `id > last_seen`, which would skip a lower id committed after a higher one.
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(EVENT_INGEST_LOCK).execute(&mut *tx).await?;
        let mut max_id = 0_i64;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO events (node, policy, revision, rule_id, verdict, would_deny, hook, pid, comm, uid, \
                 cgroup_id, address, port, protocol, bundle_digest, event_time, path, access) ",
            );
            query.push_values(chunk, |mut b, e| {
                b.push_bind(node)
                    .push_bind(&e.policy)
                    .push_bind(e.revision as i64)
                    .push_bind(&e.rule_id)
                    .push_bind(e.verdict as i16)
                    .push_bind(e.would_deny)
                    .push_bind(&e.hook)
                    .push_bind(i64::from(e.pid))
                    .push_bind(&e.comm)
                    .push_bind(i64::from(e.uid))
                    .push_bind(e.cgroup_id.to_string())
                    .push_unseparated("::numeric")
                    .push_bind(&e.address)
                    .push_bind(e.port as i32)
                    .push_bind(e.protocol as i16)
                    .push_bind(&e.bundle_digest)
                    .push_bind(e.time.as_ref().and_then(from_timestamp).unwrap_or(now))
                    .push_bind(&e.path)
                    .push_bind(access_bits(&e.access));
            });
            query.push(" RETURNING id");
            let ids: Vec<i64> = query.build_query_scalar().fetch_all(&mut *tx).await?;
            max_id = ids.into_iter().fold(max_id, i64::max);
        }
        sqlx::query("SELECT pg_notify($1, $2)").bind(EVENTS_CHANNEL).bind(max_id.to_string()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(events.len() as u64)
    }

    /// Keeps the event table's daily partitions (UTC) from yesterday to three days ahead,
    /// and drops every partition whose day ended more than `retention` ago (`None`: keep
    /// everything). Events are thus kept at least `retention` and at most a day longer.
    /// Returns (partitions created, partitions dropped).
    pub async fn maintain_event_partitions(
        &self,
        retention: Option<std::time::Duration>,
    ) -> Result<(u32, u32), ApiError> {
        self.maintain_partitions("events", retention).await
    }

    /// [`Store::maintain_event_partitions`] for any table partitioned by day (`events`,
    /// `flows`).
    pub(super) async fn maintain_partitions(
        &self,
        table: &str,
        retention: Option<std::time::Duration>,
    ) -> Result<(u32, u32), ApiError> {
        // From yesterday, but never a day retention would drop again at once.
        let created: i32 = sqlx::query_scalar(
            "SELECT palisade_ensure_partitions($2, GREATEST(((now() AT TIME ZONE 'UTC') - interval '1 day')::date, \
               ((now() - make_interval(secs => $1)) AT TIME ZONE 'UTC')::date), \
               ((now() AT TIME ZONE 'UTC') + interval '3 days')::date)",
        )
        .bind(retention.map(|r| r.as_secs_f64()))
        .bind(table)
        .fetch_one(&self.pool)
        .await?;
        let dropped: i32 = match retention {
            None => 0,
            Some(retention) => {
                sqlx::query_scalar("SELECT palisade_drop_partitions($2, now() - make_interval(secs => $1))")
                    .bind(retention.as_secs_f64())
                    .bind(table)
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        Ok((created.unsigned_abs(), dropped.unsigned_abs()))
    }

    /// Events matching `q`, ordered by id: descending for listing, ascending when
    /// `q.after_id` is set (catch-up). At most `limit`; the flag says whether more exist.
    pub async fn list_events(&self, q: &EventQuery, limit: u32) -> Result<(Vec<v1::DecisionEvent>, bool), ApiError> {
        let mut query: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE true"));
        if let Some(node) = &q.node {
            query.push(" AND node = ").push_bind(node);
        }
        if let Some(policy) = &q.policy {
            query.push(" AND policy = ").push_bind(policy);
        }
        if let Some(verdict) = q.verdict {
            query.push(" AND verdict = ").push_bind(verdict as i16);
        }
        if let Some(since) = q.since {
            query.push(" AND event_time >= ").push_bind(since);
        }
        if let Some(until) = q.until {
            query.push(" AND event_time < ").push_bind(until);
        }
        if let Some(before) = q.before_id {
            query.push(" AND id < ").push_bind(before);
        }
        if let Some(after) = q.after_id {
            query.push(" AND id > ").push_bind(after).push(" ORDER BY id ASC");
        } else {
            query.push(" ORDER BY id DESC");
        }
        query.push(" LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(&self.pool).await?;
        let more = rows.len() > limit as usize;
        let events = rows.iter().take(limit as usize).map(event_from_row).collect::<Result<_, _>>()?;
        Ok((events, more))
    }

    /// Highest stored event id (0 if none).
    pub async fn max_event_id(&self) -> Result<i64, ApiError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM events").fetch_one(&self.pool).await?)
    }
}

#[cfg(test)]
mod tests;
