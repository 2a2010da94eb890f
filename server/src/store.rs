//! PostgreSQL storage. All SQL of the server lives here; every write is one transaction.

/// `format!` for SQL whose only dynamic parts are this module's own constants (column
/// lists), never user input — which is what sqlx's `AssertSqlSafe` asks us to vouch for.
macro_rules! dynamic_sql {
    ($($arg:tt)*) => {
        sqlx::AssertSqlSafe(format!($($arg)*))
    };
}

mod batch;
mod captures;
mod events;
mod flows;
mod nodes;
mod policies;
mod tokens;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

pub use captures::{CAPTURES_CHANNEL, NewCapture, Progress, Source};
pub use events::EventQuery;
pub use flows::{FlowQuery, decode_relayed};
pub use nodes::{NodeContext, Reported};
pub use policies::ApplyOutcome;
pub use tokens::StoredToken;

/// The one migrator: run by the server at start and by every `#[sqlx::test]`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// NOTIFY channel announcing that the global policy generation moved (payload: generation).
pub const GENERATION_CHANNEL: &str = "palisade_generation";
/// NOTIFY channel announcing newly stored events (payload: highest new event id).
pub const EVENTS_CHANNEL: &str = "palisade_events";
/// NOTIFY channel announcing newly stored flow aggregates (payload: highest new id).
pub const FLOWS_CHANNEL: &str = "palisade_flows";
/// NOTIFY channel relaying per-connection flow records to every replica's live watchers
/// (payload: base64 of an encoded `ReportFlowsRequest` holding only records).
pub const FLOW_RECORDS_CHANNEL: &str = "palisade_flow_records";
/// NOTIFY channel on which replicas announce that they have live record watchers (payload:
/// the node filter, empty for every node), renewed while they stay.
pub const FLOW_WATCH_CHANNEL: &str = "palisade_flow_watch";

/// Handle to the database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// Event ingest is serialised (see `insert_events`); writers queue here, holding no
    /// database connection, so however many streams report at once they take at most one
    /// connection of this process's pool and never starve other calls.
    ingest: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The same for flow aggregates.
    flow_ingest: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Desired-bundle records (node, digest → desired generation), written in groups.
    desired: std::sync::Arc<batch::Batcher<(String, String), Option<u64>>>,
    /// ACK records (node, generation, digest), written in groups.
    acks: std::sync::Arc<batch::Batcher<(String, u64, String), ()>>,
    /// Rate-limit refusals (node, what, count), written in groups.
    rate_limited: std::sync::Arc<batch::Batcher<(String, nodes::Reported, u64), ()>>,
}

impl Store {
    /// Wraps a pool whose database has been migrated with [`MIGRATOR`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            ingest: std::sync::Arc::default(),
            flow_ingest: std::sync::Arc::default(),
            desired: std::sync::Arc::default(),
            acks: std::sync::Arc::default(),
            rate_limited: std::sync::Arc::default(),
        }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The current global policy generation.
    pub async fn generation(&self) -> Result<u64, sqlx::Error> {
        let generation: i64 =
            sqlx::query_scalar("SELECT generation FROM policy_generation").fetch_one(&self.pool).await?;
        Ok(generation as u64)
    }
}

/// Converts a database timestamp to the wire type.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// Converts a wire timestamp to a database timestamp; `None` if out of range.
pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}
