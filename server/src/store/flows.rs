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

/// PostgreSQL's epoch (2000-01-01) in Unix seconds: binary timestamps count µs from it.
const PG_EPOCH: i64 = 946_684_800;

/// Binary `COPY` data (the format PostgreSQL's own `COPY … (FORMAT binary)` writes): no text
/// to parse per column on the server, which is most of what a text `COPY` of this table
/// costs (two timestamps, two addresses, a numeric per row).
struct BinaryCopy(Vec<u8>);

impl BinaryCopy {
    fn new(rows: usize) -> Self {
        let mut out = Vec::with_capacity(19 + rows * 240);
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        out.extend_from_slice(&0_i32.to_be_bytes()); // flags
        out.extend_from_slice(&0_i32.to_be_bytes()); // header extension length
        Self(out)
    }

    fn row(&mut self, columns: i16) {
        self.0.extend_from_slice(&columns.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(&i32::try_from(bytes.len()).unwrap_or(i32::MAX).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn text(&mut self, s: &str) {
        self.field(s.as_bytes());
    }

    fn int8(&mut self, v: u64) {
        self.field(&big(v).to_be_bytes());
    }

    fn int4(&mut self, v: u32) {
        self.field(&i32::try_from(v).unwrap_or(i32::MAX).to_be_bytes());
    }

    fn int2(&mut self, v: i32) {
        self.field(&i16::try_from(v).unwrap_or(i16::MAX).to_be_bytes());
    }

    /// `numeric`: base-10000 digits, most significant first.
    fn numeric(&mut self, mut v: u64) {
        let mut digits = Vec::new();
        while v > 0 {
            digits.push((v % 10_000) as i16);
            v /= 10_000;
        }
        digits.reverse();
        let n = i16::try_from(digits.len()).unwrap_or(0);
        let mut b = Vec::with_capacity(8 + 2 * digits.len());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&(n - 1).max(0).to_be_bytes()); // weight of the first digit
        b.extend_from_slice(&0_i16.to_be_bytes()); // sign: positive
        b.extend_from_slice(&0_i16.to_be_bytes()); // display scale
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        self.field(&b);
    }

    /// `inet` of one host address (validation made sure it parses).
    fn inet(&mut self, address: &str) {
        let addr: std::net::IpAddr = address.parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        // PGSQL_AF_INET is 2, PGSQL_AF_INET6 is 3; then the bits, is_cidr and the length.
        let mut b = Vec::with_capacity(20);
        match addr {
            std::net::IpAddr::V4(a) => {
                b.extend_from_slice(&[2, 32, 0, 4]);
                b.extend_from_slice(&a.octets());
            }
            std::net::IpAddr::V6(a) => {
                b.extend_from_slice(&[3, 128, 0, 16]);
                b.extend_from_slice(&a.octets());
            }
        }
        self.field(&b);
    }

    fn timestamp(&mut self, t: DateTime<Utc>) {
        let micros = (t.timestamp() - PG_EPOCH) * 1_000_000 + i64::from(t.timestamp_subsec_micros());
        self.field(&micros.to_be_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1_i16).to_be_bytes());
        self.0
    }
}

/// The binary `COPY` data of `flows`, columns in `insert_flows`'s order.
fn copy_rows(node: &str, flows: &[v1::FlowAggregate], now: DateTime<Utc>) -> Vec<u8> {
    let time = |t: Option<&prost_types::Timestamp>| t.and_then(from_timestamp).unwrap_or(now);
    let mut out = BinaryCopy::new(flows.len());
    for a in flows {
        out.row(22);
        out.text(node);
        out.text(&a.policy);
        out.int8(a.revision);
        out.text(&a.rule_id);
        out.numeric(a.cgroup_id);
        out.int2(a.direction);
        out.inet(&a.local_address);
        out.int4(a.local_port);
        out.inet(&a.peer_address);
        out.int4(a.peer_port);
        out.int8(a.connections);
        out.int8(a.bytes_sent);
        out.int8(a.bytes_received);
        out.int8(a.segments_sent);
        out.int8(a.segments_received);
        out.int8(a.retransmits);
        out.int4(a.srtt_us_min);
        out.int8(u64::from(a.srtt_us_avg).saturating_mul(a.connections));
        out.int4(a.srtt_us_max);
        out.int8(a.tune_refused);
        out.timestamp(time(a.window_start.as_ref()));
        out.timestamp(time(a.window_end.as_ref()));
    }
    out.finish()
}

impl Store {
    /// Stores aggregates reported by `node` with one binary `COPY` (the fastest way into
    /// PostgreSQL: no statement per row, no bind parameters) and announces the highest new
    /// id. Aggregates must have been validated. Returns how many were stored.
    pub async fn insert_flows(&self, node: &str, flows: &[v1::FlowAggregate]) -> Result<u64, ApiError> {
        if flows.is_empty() {
            return Ok(0);
        }
        let data = copy_rows(node, flows, Utc::now());
        let _writer = self.flow_ingest.lock().await;
        let mut tx = self.pool.begin().await?;
        // Serialised so ids become visible in id order (watchers catch up with `id > last`).
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(FLOW_INGEST_LOCK).execute(&mut *tx).await?;
        let mut copy = tx
            .copy_in_raw(
                "COPY flows (node, policy, revision, rule_id, cgroup_id, direction, local_address, local_port, \
                 peer_address, peer_port, connections, bytes_sent, bytes_received, segments_sent, segments_received, \
                 retransmits, srtt_us_min, srtt_us_sum, srtt_us_max, tune_refused, window_start, window_end) \
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        copy.send(data).await?;
        copy.finish().await?;
        // This transaction's own last id from the sequence: every row it copied is at or below.
        let max_id: i64 = sqlx::query_scalar("SELECT currval('flows_id_seq')").fetch_one(&mut *tx).await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(FLOWS_CHANNEL).bind(max_id.to_string()).execute(&mut *tx).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate(peer: &str, peer_port: u32, bytes: u64) -> v1::FlowAggregate {
        let now = Utc::now().timestamp();
        v1::FlowAggregate {
            policy: "we\tb\\x".into(),
            revision: 4,
            rule_id: "peers".into(),
            cgroup_id: u64::MAX - 7,
            direction: v1::FlowDirection::Outbound as i32,
            local_address: "10.0.0.1".into(),
            peer_address: peer.into(),
            peer_port,
            connections: 2,
            bytes_sent: bytes,
            bytes_received: 2 * bytes,
            srtt_us_min: 10,
            srtt_us_avg: 20,
            srtt_us_max: 30,
            window_start: Some(prost_types::Timestamp { seconds: now - 10, nanos: 123_000 }),
            window_end: Some(prost_types::Timestamp { seconds: now, nanos: 0 }),
            ..Default::default()
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn copied_aggregates_list_filter_and_sum_as_stored(pool: sqlx::PgPool) {
        let store = Store::new(pool);
        let rows =
            [aggregate("10.1.2.3", 443, 100), aggregate("2001:db8::5", 443, 1000), aggregate("10.1.2.3", 443, 5)];
        assert_eq!(store.insert_flows("n1", &rows).await.expect("stored"), 3);
        let (all, more) = store.list_flows(&FlowQuery::default(), 10).await.expect("list");
        assert!(!more);
        assert_eq!(all.iter().map(|f| f.bytes_sent).collect::<Vec<_>>(), [5, 1000, 100], "newest first");
        let f = &all[2];
        assert_eq!((f.node.as_str(), f.policy.as_str(), f.cgroup_id), ("n1", "we\tb\\x", u64::MAX - 7));
        assert_eq!((f.srtt_us_min, f.srtt_us_avg, f.srtt_us_max, f.connections), (10, 20, 30, 2));
        assert_eq!(f.window_start.map(|t| t.nanos), Some(123_000));
        let v4 = FlowQuery { peer: Some("10.0.0.0/8".parse().expect("net")), ..FlowQuery::default() };
        assert_eq!(store.list_flows(&v4, 10).await.expect("list").0.len(), 2);
        let other_port = FlowQuery { port: Some(80), ..FlowQuery::default() };
        assert!(store.list_flows(&other_port, 10).await.expect("list").0.is_empty());
        let top = store.top_flows(&FlowQuery::default(), 10).await.expect("top");
        assert_eq!(top.len(), 2, "two keys");
        assert_eq!((top[0].peer_address.as_str(), top[0].bytes_sent), ("2001:db8::5", 1000));
        assert_eq!((top[1].connections, top[1].bytes_sent, top[1].srtt_us_avg), (4, 105, 20), "summed per key");
        assert_eq!(store.max_flow_id().await.expect("max") as u64, all[0].id);
    }

    #[test]
    fn numerics_are_base_ten_thousand_digits() {
        let mut c = BinaryCopy(Vec::new());
        c.numeric(123_456_789);
        // length 14: 3 digits (1, 2345, 6789), weight 2, sign 0, scale 0.
        assert_eq!(c.0, [0, 0, 0, 14, 0, 3, 0, 2, 0, 0, 0, 0, 0, 1, 0x09, 0x29, 0x1a, 0x85]);
    }
}
