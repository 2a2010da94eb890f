//! `flow-ingest`: how fast the server stores flow aggregates (`Store::insert_flows`, the
//! path every `ReportFlows` takes), against PostgreSQL writing the same rows with no client at
//! all (`INSERT … SELECT generate_series`), measured in the same run on a database of its own.
//!
//! `cargo build --release -p palisade-integration --bin flow-ingest &&
//! target/release/flow-ingest` (`DATABASE_URL`; no root). `--min-rows-per-second N` fails
//! the run below N.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a benchmark prints its figures")]
#![allow(clippy::cast_precision_loss, reason = "row counts far below 2^52")]

use std::time::Instant;

use anyhow::Context as _;
use palisade_proto::v1;

/// Flags.
#[derive(Debug, clap::Parser)]
#[command(
    name = "flow-ingest",
    about = "Flow aggregate ingest into PostgreSQL: rows per second, and vs. PostgreSQL alone"
)]
struct Args {
    /// Aggregates stored per run.
    #[arg(long, default_value_t = 500_000)]
    rows: usize,
    /// Aggregates per `insert_flows` call (one `ReportFlows` message holds at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Exit non-zero below this many rows per second.
    #[arg(long)]
    min_rows_per_second: Option<f64>,
}

fn aggregate(i: usize) -> v1::FlowAggregate {
    let now = chrono::Utc::now().timestamp();
    v1::FlowAggregate {
        policy: format!("policy-{}", i % 20),
        revision: 3,
        rule_id: format!("rule-{}", i % 7),
        cgroup_id: 10_000 + (i % 300) as u64,
        direction: if i.is_multiple_of(2) { v1::FlowDirection::Outbound } else { v1::FlowDirection::Inbound } as i32,
        local_address: "10.0.0.1".into(),
        local_port: if i.is_multiple_of(2) { 0 } else { 8080 },
        peer_address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        peer_port: if i.is_multiple_of(2) { 443 } else { 0 },
        connections: 1 + (i % 50) as u64,
        bytes_sent: 1000 * i as u64,
        bytes_received: 2000 * i as u64,
        segments_sent: 10,
        segments_received: 20,
        retransmits: (i % 3) as u64,
        srtt_us_min: 50,
        srtt_us_avg: 100,
        srtt_us_max: 400,
        tune_refused: 0,
        window_start: Some(prost_types::Timestamp { seconds: now - 10, nanos: 0 }),
        window_end: Some(prost_types::Timestamp { seconds: now, nanos: 0 }),
        ..Default::default()
    }
}

/// Drops the bench database however the run ends.
struct Cleanup {
    base: String,
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        palisade_integration::drop_database_blocking(&self.base, &self.name);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let base = std::env::var("DATABASE_URL").context("set DATABASE_URL (scripts/ensure-postgres.sh prints one)")?;
    let name = format!("palisade_flow_ingest_{}", std::process::id());
    let _cleanup = Cleanup { base: base.clone(), name: name.clone() };
    let database = palisade_integration::create_database(&base, &name).await?;
    let pool = sqlx::PgPool::connect(&database).await?;
    palisade_server::MIGRATOR.run(&pool).await?;
    let store = palisade_server::store::Store::new(pool.clone());

    // Built before the clock starts: the agent's work, not the server's.
    let batches: Vec<Vec<v1::FlowAggregate>> = (0..args.rows)
        .collect::<Vec<_>>()
        .chunks(args.batch.max(1))
        .map(|c| c.iter().map(|&i| aggregate(i)).collect())
        .collect();
    // Warm-up (plans, partitions' first pages), not counted.
    store.insert_flows("warm-up", &batches[0][..batches[0].len().min(1000)]).await?;

    let started = Instant::now();
    let mut stored = 0;
    for batch in &batches {
        stored += store.insert_flows("bench-node", batch).await?;
    }
    let ours = started.elapsed();

    // Baseline: the same number of rows, generated inside PostgreSQL (no client, no binds).
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO flows (node, policy, revision, rule_id, cgroup_id, direction, local_address, local_port,
           peer_address, peer_port, connections, bytes_sent, bytes_received, segments_sent, segments_received,
           retransmits, srtt_us_min, srtt_us_sum, srtt_us_max, tune_refused, window_start, window_end)
         SELECT 'baseline', 'policy-' || (i % 20), 3, 'rule-' || (i % 7), 10000 + i % 300, 1 + i % 2, '10.0.0.1',
           0, ('10.0.0.0'::inet + i), 443, 1 + i % 50, 1000 * i, 2000 * i, 10, 20, i % 3, 50, 100, 400, 0,
           now() - interval '10 seconds', now()
         FROM generate_series(1, $1) AS i",
    )
    .bind(i64::try_from(args.rows)?)
    .execute(&pool)
    .await?;
    let baseline = started.elapsed();

    let rate = stored as f64 / ours.as_secs_f64();
    let base_rate = args.rows as f64 / baseline.as_secs_f64();
    println!("flow-ingest: {} aggregates in batches of {}", args.rows, args.batch);
    println!("  insert_flows (the ReportFlows path): {:>10.0} rows/s ({:.2} s)", rate, ours.as_secs_f64());
    println!("  PostgreSQL alone (generate_series):  {:>10.0} rows/s ({:.2} s)", base_rate, baseline.as_secs_f64());
    println!("  ratio ours / PostgreSQL alone:       {:>10.2}", rate / base_rate);
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM flows WHERE node = 'bench-node'").fetch_one(&pool).await?;
    anyhow::ensure!(usize::try_from(count)? == args.rows, "stored {count} rows of {}", args.rows);
    if let Some(min) = args.min_rows_per_second {
        anyhow::ensure!(rate >= min, "{rate:.0} rows/s is below --min-rows-per-second {min}");
    }
    Ok(())
}
