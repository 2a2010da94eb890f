//! Flow aggregates of closed TCP connections (`connections.observe`).

use chrono::{DateTime, Utc};
use palisade_proto::v1;
use sqlx::{Postgres, QueryBuilder, Row as _, postgres::PgRow};

use super::{FLOW_RECORDS_CHANNEL, FLOW_WATCH_CHANNEL, FLOWS_CHANNEL, Store, from_timestamp, timestamp};
use crate::error::ApiError;

/// Advisory lock key serialising flow ingest (ids become visible in id order, as for events).
const FLOW_INGEST_LOCK: i64 = 0x7061_6c66_6c6f_7773;

/// Largest NOTIFY payload PostgreSQL takes is 8000 bytes; records are relayed in chunks of
/// base64 below it.
const RELAY_PAYLOAD: usize = 7800;

/// Filters for listing and summing aggregates.
#[derive(Debug, Clone, Default)]
pub struct FlowQuery {
    /// Only this node.
    pub node: Option<String>,
    /// Only this policy.
    pub policy: Option<String>,
    /// Only this observe rule.
    pub rule_id: Option<String>,
    /// Only this cgroup id.
    pub cgroup_id: Option<u64>,
    /// Only peers inside this network.
    pub peer: Option<ipnet::IpNet>,
    /// Only keys with this local or peer port.
    pub port: Option<u16>,
    /// Only this direction (`v1::FlowDirection` value).
    pub direction: Option<i32>,
    /// Windows ending after.
    pub since: Option<DateTime<Utc>>,
    /// Windows starting before.
    pub until: Option<DateTime<Utc>>,
    /// Only ids below this (pagination cursor).
    pub before_id: Option<i64>,
    /// Only ids above this (watch catch-up).
    pub after_id: Option<i64>,
}

impl FlowQuery {
    /// Whether a live aggregate passes the filter (time bounds do not apply to live streams).
    pub fn matches(&self, f: &v1::FlowAggregate) -> bool {
        self.matches_key(&f.node, &f.policy, &f.rule_id, f.cgroup_id, f.direction, &f.peer_address)
            && self.port.is_none_or(|p| u32::from(p) == f.peer_port || u32::from(p) == f.local_port)
    }

    /// Whether a live record passes the filter.
    pub fn matches_record(&self, r: &v1::FlowRecord) -> bool {
        self.matches_key(&r.node, &r.policy, &r.rule_id, r.cgroup_id, r.direction, &r.peer_address)
            && self.port.is_none_or(|p| u32::from(p) == r.peer_port || u32::from(p) == r.local_port)
    }

    fn matches_key(&self, node: &str, policy: &str, rule: &str, cgroup: u64, direction: i32, peer: &str) -> bool {
        self.node.as_ref().is_none_or(|n| n == node)
            && self.policy.as_ref().is_none_or(|p| p == policy)
            && self.rule_id.as_ref().is_none_or(|r| r == rule)
            && self.cgroup_id.is_none_or(|c| c == cgroup)
            && self.direction.is_none_or(|d| d == direction)
            && self
                .peer
                .is_none_or(|net| peer.parse::<std::net::IpAddr>().is_ok_and(|a| net.contains(&a.to_canonical())))
    }

    /// Appends the filter's conditions.
    fn push_where(&self, query: &mut QueryBuilder<Postgres>) {
        if let Some(node) = &self.node {
            query.push(" AND node = ").push_bind(node.clone());
        }
        if let Some(policy) = &self.policy {
            query.push(" AND policy = ").push_bind(policy.clone());
        }
        if let Some(rule) = &self.rule_id {
            query.push(" AND rule_id = ").push_bind(rule.clone());
        }
        if let Some(cgroup) = self.cgroup_id {
            query.push(" AND cgroup_id = ").push_bind(cgroup.to_string()).push("::numeric");
        }
        if let Some(peer) = self.peer {
            query.push(" AND peer_address <<= ").push_bind(peer.to_string()).push("::inet");
        }
        if let Some(port) = self.port {
            query.push(" AND (peer_port = ").push_bind(i32::from(port));
            query.push(" OR local_port = ").push_bind(i32::from(port)).push(")");
        }
        if let Some(direction) = self.direction {
            query.push(" AND direction = ").push_bind(direction as i16);
        }
        if let Some(since) = self.since {
            query.push(" AND window_end > ").push_bind(since);
        }
        if let Some(until) = self.until {
            query.push(" AND window_start < ").push_bind(until);
        }
    }
}

const FLOW_COLUMNS: &str = "id, node, policy, revision, rule_id, cgroup_id::text AS cgroup_id, direction, \
     host(local_address) AS local_address, local_port, host(peer_address) AS peer_address, peer_port, \
     connections, bytes_sent, bytes_received, segments_sent, segments_received, retransmits, \
     srtt_us_min, srtt_us_sum, srtt_us_max, tune_refused, window_start, window_end";

fn flow_from_row(row: &PgRow) -> Result<v1::FlowAggregate, ApiError> {
    let cgroup_id: String = row.try_get("cgroup_id")?;
    let count = |name: &str| row.try_get::<i64, _>(name).map(|v| v as u64);
    let connections = count("connections")?;
    let sum = count("srtt_us_sum")?;
    Ok(v1::FlowAggregate {
        id: count("id")?,
        node: row.try_get("node")?,
        policy: row.try_get("policy")?,
        revision: count("revision")?,
        rule_id: row.try_get("rule_id")?,
        cgroup_id: cgroup_id.parse().map_err(|_| ApiError::Corrupt(format!("cgroup id {cgroup_id}")))?,
        direction: i32::from(row.try_get::<i16, _>("direction")?),
        local_address: row.try_get("local_address")?,
        local_port: row.try_get::<i32, _>("local_port")? as u32,
        peer_address: row.try_get("peer_address")?,
        peer_port: row.try_get::<i32, _>("peer_port")? as u32,
        connections,
        bytes_sent: count("bytes_sent")?,
        bytes_received: count("bytes_received")?,
        segments_sent: count("segments_sent")?,
        segments_received: count("segments_received")?,
        retransmits: count("retransmits")?,
        srtt_us_min: row.try_get::<i32, _>("srtt_us_min")? as u32,
        srtt_us_avg: u32::try_from(sum.checked_div(connections).unwrap_or(0)).unwrap_or(u32::MAX),
        srtt_us_max: row.try_get::<i32, _>("srtt_us_max")? as u32,
        tune_refused: count("tune_refused")?,
        window_start: Some(timestamp(row.try_get("window_start")?)),
        window_end: Some(timestamp(row.try_get("window_end")?)),
    })
}

/// A counter as PostgreSQL's bigint (saturating; counters that large are not real).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Stores aggregates reported by `node` in one statement (one array per column, so a
    /// batch of any size is one round trip) and announces the highest new id. Aggregates
    /// must have been validated. Returns how many were stored.
    pub async fn insert_flows(&self, node: &str, flows: &[v1::FlowAggregate]) -> Result<u64, ApiError> {
        if flows.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let time = |t: Option<&prost_types::Timestamp>| t.and_then(from_timestamp).unwrap_or(now);
        let text = |f: fn(&v1::FlowAggregate) -> &str| flows.iter().map(|a| f(a).to_owned()).collect::<Vec<_>>();
        let int = |f: fn(&v1::FlowAggregate) -> u64| flows.iter().map(|a| big(f(a))).collect::<Vec<_>>();
        let small = |f: fn(&v1::FlowAggregate) -> u32| flows.iter().map(|a| f(a) as i32).collect::<Vec<_>>();
        let _writer = self.flow_ingest.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(FLOW_INGEST_LOCK).execute(&mut *tx).await?;
        let max_id: Option<i64> = sqlx::query_scalar(
            "WITH stored AS (
               INSERT INTO flows (node, policy, revision, rule_id, cgroup_id, direction, local_address, local_port,
                 peer_address, peer_port, connections, bytes_sent, bytes_received, segments_sent, segments_received,
                 retransmits, srtt_us_min, srtt_us_sum, srtt_us_max, tune_refused, window_start, window_end)
               SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::numeric[], $6::smallint[],
                 $7::inet[], $8::integer[], $9::inet[], $10::integer[], $11::bigint[], $12::bigint[], $13::bigint[],
                 $14::bigint[], $15::bigint[], $16::bigint[], $17::integer[], $18::bigint[], $19::integer[],
                 $20::bigint[], $21::timestamptz[], $22::timestamptz[])
               RETURNING id)
             SELECT max(id) FROM stored",
        )
        .bind(node)
        .bind(text(|a| &a.policy))
        .bind(int(|a| a.revision))
        .bind(text(|a| &a.rule_id))
        .bind(flows.iter().map(|a| a.cgroup_id.to_string()).collect::<Vec<_>>())
        .bind(flows.iter().map(|a| a.direction as i16).collect::<Vec<_>>())
        .bind(text(|a| &a.local_address))
        .bind(small(|a| a.local_port))
        .bind(text(|a| &a.peer_address))
        .bind(small(|a| a.peer_port))
        .bind(int(|a| a.connections))
        .bind(int(|a| a.bytes_sent))
        .bind(int(|a| a.bytes_received))
        .bind(int(|a| a.segments_sent))
        .bind(int(|a| a.segments_received))
        .bind(int(|a| a.retransmits))
        .bind(small(|a| a.srtt_us_min))
        .bind(flows.iter().map(|a| big(u64::from(a.srtt_us_avg).saturating_mul(a.connections))).collect::<Vec<_>>())
        .bind(small(|a| a.srtt_us_max))
        .bind(int(|a| a.tune_refused))
        .bind(flows.iter().map(|a| time(a.window_start.as_ref())).collect::<Vec<_>>())
        .bind(flows.iter().map(|a| time(a.window_end.as_ref())).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(FLOWS_CHANNEL)
            .bind(max_id.unwrap_or_default().to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(flows.len() as u64)
    }

    /// Keeps the flow table's daily partitions, like [`Store::maintain_event_partitions`].
    pub async fn maintain_flow_partitions(
        &self,
        retention: Option<std::time::Duration>,
    ) -> Result<(u32, u32), ApiError> {
        self.maintain_partitions("flows", retention).await
    }

    /// Aggregates matching `q`, ordered by id: descending for listing, ascending when
    /// `q.after_id` is set (catch-up). At most `limit`; the flag says whether more exist.
    pub async fn list_flows(&self, q: &FlowQuery, limit: u32) -> Result<(Vec<v1::FlowAggregate>, bool), ApiError> {
        let mut query: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {FLOW_COLUMNS} FROM flows WHERE true"));
        q.push_where(&mut query);
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
        let flows = rows.iter().take(limit as usize).map(flow_from_row).collect::<Result<_, _>>()?;
        Ok((flows, more))
    }

    /// Sums of the aggregates matching `q` per key, the `limit` largest by bytes both ways.
    pub async fn top_flows(&self, q: &FlowQuery, limit: u32) -> Result<Vec<v1::FlowAggregate>, ApiError> {
        const KEY: &str =
            "node, policy, rule_id, cgroup_id, direction, local_address, local_port, peer_address, peer_port";
        let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT 0::bigint AS id, 0::bigint AS revision, node, policy, rule_id, cgroup_id::text AS cgroup_id, \
             direction, host(local_address) AS local_address, local_port, host(peer_address) AS peer_address, \
             peer_port, sum(connections)::bigint AS connections, sum(bytes_sent)::bigint AS bytes_sent, \
             sum(bytes_received)::bigint AS bytes_received, sum(segments_sent)::bigint AS segments_sent, \
             sum(segments_received)::bigint AS segments_received, sum(retransmits)::bigint AS retransmits, \
             min(srtt_us_min) AS srtt_us_min, sum(srtt_us_sum)::bigint AS srtt_us_sum, \
             max(srtt_us_max) AS srtt_us_max, sum(tune_refused)::bigint AS tune_refused, \
             min(window_start) AS window_start, max(window_end) AS window_end FROM flows WHERE true",
        );
        q.push_where(&mut query);
        query.push(format!(" GROUP BY {KEY} ORDER BY sum(bytes_sent) + sum(bytes_received) DESC, {KEY} LIMIT "));
        query.push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(flow_from_row).collect()
    }

    /// Highest stored aggregate id (0 if none).
    pub async fn max_flow_id(&self) -> Result<i64, ApiError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM flows").fetch_one(&self.pool).await?)
    }

    /// Relays per-connection records to every replica's live watchers (NOTIFY, never
    /// stored), in chunks that fit a notification.
    pub async fn relay_flow_records(&self, records: &[v1::FlowRecord]) -> Result<(), ApiError> {
        use base64::Engine as _;
        use prost::Message as _;
        let mut payloads = Vec::new();
        let mut chunk = v1::ReportFlowsRequest::default();
        for record in records {
            chunk.records.push(record.clone());
            // base64 grows by 4/3.
            if chunk.encoded_len() * 4 / 3 + 4 > RELAY_PAYLOAD && chunk.records.len() > 1 {
                let last = chunk.records.pop();
                payloads.push(base64::engine::general_purpose::STANDARD.encode(chunk.encode_to_vec()));
                chunk.records = last.into_iter().collect();
            }
        }
        if !chunk.records.is_empty() {
            payloads.push(base64::engine::general_purpose::STANDARD.encode(chunk.encode_to_vec()));
        }
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(FLOW_RECORDS_CHANNEL)
            .bind(payloads)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Announces to every replica that a live watcher wants the records of `node` (empty:
    /// every node).
    pub async fn announce_flow_watch(&self, node: &str) -> Result<(), ApiError> {
        sqlx::query("SELECT pg_notify($1, $2)").bind(FLOW_WATCH_CHANNEL).bind(node).execute(&self.pool).await?;
        Ok(())
    }
}

/// Decodes a relayed payload ([`Store::relay_flow_records`]).
pub fn decode_relayed(payload: &str) -> Option<Vec<v1::FlowRecord>> {
    use base64::Engine as _;
    use prost::Message as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(payload).ok()?;
    Some(v1::ReportFlowsRequest::decode(bytes.as_slice()).ok()?.records)
}
