//! `palisade flows`: TCP flow aggregates (`connections.observe`), stored and live, and the
//! top talkers.
//!
//! `-o json` prints one object per line with the names the issue and docs/cli.md give
//! (`cgroup`, `srtt_us: {min, avg, max}`, …) rather than the raw protobuf mapping, so
//! scripts read one shape for aggregates, talkers and (with `--records`) records.

use std::time::Duration;

use palisade_proto::v1::{self, flow_service_client::FlowServiceClient};
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::{
    commands::{failed, when},
    output::{Output, print_value},
    rollout::parse_duration,
    table::Table,
};

/// Filters shared by `flows` and `flows top`.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only flows seen by this node.
    #[arg(long)]
    node: Option<String>,
    /// Only flows named by this policy.
    #[arg(long)]
    policy: Option<String>,
    /// Only flows named by this observe rule id.
    #[arg(long)]
    rule: Option<String>,
    /// Only sockets of this cgroup id.
    #[arg(long)]
    cgroup: Option<u64>,
    /// Only peers inside this CIDR (or this one address).
    #[arg(long)]
    peer: Option<String>,
    /// Only flows whose local or peer port is this.
    #[arg(long)]
    port: Option<u16>,
    /// Only windows that ended within this long (e.g. 10m, 2h); `flows top` defaults to 1h.
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl FilterArgs {
    fn filter(&self) -> v1::FlowFilter {
        let since = self.since.map(|d| {
            let t = chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
            prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 }
        });
        v1::FlowFilter {
            node: self.node.clone().unwrap_or_default(),
            policy: self.policy.clone().unwrap_or_default(),
            rule_id: self.rule.clone().unwrap_or_default(),
            cgroup_id: self.cgroup.unwrap_or(0),
            peer: self.peer.clone().unwrap_or_default(),
            port: self.port.map_or(0, u32::from),
            since,
            ..Default::default()
        }
    }
}

/// Arguments of `flows`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FlowsArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// How many stored aggregates to show.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Keep streaming new aggregates until interrupted.
    #[arg(long)]
    follow: bool,
    /// With --follow, also stream every closed connection's own record (agents start
    /// sending them within one aggregation window).
    #[arg(long, requires = "follow")]
    records: bool,
    #[command(subcommand)]
    command: Option<FlowsCommand>,
}

/// `palisade flows ...`.
#[derive(Debug, clap::Subcommand)]
enum FlowsCommand {
    /// Top talkers: aggregates summed per key over the time range, most bytes first.
    Top {
        #[command(flatten)]
        filter: FilterArgs,
        /// How many talkers.
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
}

const HEADERS: &[&str] = &[
    "WINDOW END",
    "NODE",
    "POLICY",
    "RULE",
    "CGROUP",
    "DIR",
    "LOCAL",
    "PEER",
    "CONNS",
    "SENT",
    "RECEIVED",
    "RETRANS",
    "SRTT MIN/AVG/MAX µs",
];

fn direction(d: i32) -> &'static str {
    match v1::FlowDirection::try_from(d) {
        Ok(v1::FlowDirection::Outbound) => "outbound",
        Ok(v1::FlowDirection::Inbound) => "inbound",
        _ => "?",
    }
}

fn rfc3339(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map_or(serde_json::Value::Null, |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true).into())
}

fn endpoint(address: &str, port: u32) -> String {
    let port = if port == 0 { "*".to_owned() } else { port.to_string() };
    if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") }
}

/// One aggregate (or talker) as a JSON line.
pub fn aggregate_json(f: &v1::FlowAggregate) -> serde_json::Value {
    json!({
        "node": f.node,
        "policy": f.policy,
        "revision": f.revision,
        "rule_id": f.rule_id,
        "cgroup": f.cgroup_id,
        "direction": direction(f.direction),
        "local_address": f.local_address,
        "local_port": f.local_port,
        "peer_address": f.peer_address,
        "peer_port": f.peer_port,
        "connections": f.connections,
        "bytes_sent": f.bytes_sent,
        "bytes_received": f.bytes_received,
        "segments_sent": f.segments_sent,
        "segments_received": f.segments_received,
        "retransmits": f.retransmits,
        "srtt_us": {"min": f.srtt_us_min, "avg": f.srtt_us_avg, "max": f.srtt_us_max},
        "tune_refused": f.tune_refused,
        "window_start": rfc3339(f.window_start.as_ref()),
        "window_end": rfc3339(f.window_end.as_ref()),
    })
}

/// One per-connection record as a JSON line (`"record": true` tells it from aggregates).
fn record_json(r: &v1::FlowRecord) -> serde_json::Value {
    json!({
        "record": true,
        "node": r.node,
        "policy": r.policy,
        "revision": r.revision,
        "rule_id": r.rule_id,
        "tune_rule": r.tune_rule,
        "tune_refused": r.tune_refused,
        "cgroup": r.cgroup_id,
        "uid": r.uid,
        "direction": direction(r.direction),
        "local_address": r.local_address,
        "local_port": r.local_port,
        "peer_address": r.peer_address,
        "peer_port": r.peer_port,
        "connections": 1,
        "bytes_sent": r.bytes_sent,
        "bytes_received": r.bytes_received,
        "segments_sent": r.segments_sent,
        "segments_received": r.segments_received,
        "retransmits": r.retransmits,
        "srtt_us": {"min": r.srtt_us, "avg": r.srtt_us, "max": r.srtt_us},
        "rtt_min_us": r.rtt_min_us,
        "start": rfc3339(r.start.as_ref()),
        "end": rfc3339(r.end.as_ref()),
    })
}

fn aggregate_row(f: &v1::FlowAggregate) -> Vec<String> {
    vec![
        when(f.window_end.as_ref()),
        f.node.clone(),
        f.policy.clone(),
        f.rule_id.clone(),
        f.cgroup_id.to_string(),
        direction(f.direction).to_owned(),
        endpoint(&f.local_address, f.local_port),
        endpoint(&f.peer_address, f.peer_port),
        f.connections.to_string(),
        f.bytes_sent.to_string(),
        f.bytes_received.to_string(),
        f.retransmits.to_string(),
        format!("{}/{}/{}", f.srtt_us_min, f.srtt_us_avg, f.srtt_us_max),
    ]
}

fn record_row(r: &v1::FlowRecord) -> Vec<String> {
    vec![
        when(r.end.as_ref()),
        r.node.clone(),
        r.policy.clone(),
        r.rule_id.clone(),
        r.cgroup_id.to_string(),
        format!("{} (conn)", direction(r.direction)),
        endpoint(&r.local_address, r.local_port),
        endpoint(&r.peer_address, r.peer_port),
        "1".to_owned(),
        r.bytes_sent.to_string(),
        r.bytes_received.to_string(),
        r.retransmits.to_string(),
        format!("{0}/{0}/{0}", r.srtt_us),
    ]
}

fn print_rows(output: Output, rows: impl IntoIterator<Item = (serde_json::Value, Vec<String>)>) {
    let mut table = Table::new(HEADERS);
    let mut any = false;
    for (value, row) in rows {
        any = true;
        match output {
            Output::Table => table.row(row),
            other => print_value(other, &value),
        }
    }
    if output == Output::Table && any {
        print!("{}", table.render());
    }
}

/// Runs `flows` / `flows top`.
pub async fn run(channel: &palisade_proto::client::Connection, args: FlowsArgs) -> anyhow::Result<()> {
    let mut client = FlowServiceClient::new(channel.clone());
    if let Some(FlowsCommand::Top { filter, limit }) = args.command {
        let talkers = client
            .top_flows(v1::TopFlowsRequest { filter: Some(filter.filter()), limit: limit.clamp(1, 1000) })
            .await
            .map_err(|s| failed("top flows", &s))?
            .into_inner()
            .talkers;
        if talkers.is_empty() && filter.output == Output::Table {
            println!("no flows in the time range");
        }
        print_rows(filter.output, talkers.iter().map(|f| (aggregate_json(f), aggregate_row(f))));
        return Ok(());
    }
    let output = args.filter.output;
    let filter = args.filter.filter();
    // Subscribe first so nothing stored between the listing and the watch is missed.
    let watch = if args.follow {
        let request = v1::WatchFlowsRequest { filter: Some(filter.clone()), records: args.records };
        Some(client.watch_flows(request).await.map_err(|s| failed("watch flows", &s))?.into_inner())
    } else {
        None
    };
    let page = client
        .list_flows(v1::ListFlowsRequest {
            filter: Some(filter),
            page_size: args.limit.clamp(1, 1000),
            page_token: String::new(),
        })
        .await
        .map_err(|s| failed("list flows", &s))?
        .into_inner();
    let newest = page.flows.first().map_or(0, |f| f.id);
    if page.flows.is_empty() && output == Output::Table && !args.follow {
        println!("no flows stored (policies need a `connections.observe` section)");
    }
    print_rows(output, page.flows.iter().rev().map(|f| (aggregate_json(f), aggregate_row(f))));
    let Some(mut watch) = watch else { return Ok(()) };
    while let Some(item) = watch.next().await {
        let item = item.map_err(|s| failed("watch flows", &s))?;
        let line = match item.item {
            Some(v1::watch_flows_response::Item::Aggregate(f)) if f.id > newest => {
                (aggregate_json(&f), aggregate_row(&f))
            }
            Some(v1::watch_flows_response::Item::Record(r)) => (record_json(&r), record_row(&r)),
            _ => continue,
        };
        print_rows(output, [line]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_the_documented_names() {
        let f = v1::FlowAggregate {
            node: "n1".into(),
            cgroup_id: 42,
            direction: v1::FlowDirection::Inbound as i32,
            srtt_us_min: 1,
            srtt_us_avg: 2,
            srtt_us_max: 3,
            window_start: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            ..Default::default()
        };
        let v = aggregate_json(&f);
        for key in [
            "node",
            "policy",
            "rule_id",
            "cgroup",
            "direction",
            "local_address",
            "local_port",
            "peer_address",
            "peer_port",
            "connections",
            "bytes_sent",
            "bytes_received",
            "retransmits",
            "srtt_us",
            "window_start",
            "window_end",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert_eq!((v["cgroup"].as_u64(), v["direction"].as_str()), (Some(42), Some("inbound")));
        assert_eq!(v["srtt_us"]["avg"], 2);
        assert_eq!(v["window_start"], "2023-11-14T22:13:20Z");
        assert_eq!(endpoint("::1", 0), "[::1]:*");
    }
}
