//! Fan-out of database changes to this replica: newly stored events to `WatchEvents`
//! subscribers, newly stored flow aggregates and relayed flow records to `WatchFlows`
//! subscribers, which nodes' records live watchers want (to `ReportFlows`), and the global
//! policy generation to Sync streams.
//!
//! Writes may happen on any server replica, so the hub does not trust in-process calls: it
//! LISTENs on [`EVENTS_CHANNEL`] and [`GENERATION_CHANNEL`] and, on every notification, after
//! every listener reconnect (notifications sent while disconnected are lost) and every
//! [`REREAD`] as a backstop, re-reads what changed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use palisade_proto::v1;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use tokio::sync::watch;

use crate::{
    error::ApiError,
    store::{
        CAPTURES_CHANNEL, EVENTS_CHANNEL, EventQuery, FLOW_RECORDS_CHANNEL, FLOW_WATCH_CHANNEL, FLOWS_CHANNEL,
        FlowQuery, GENERATION_CHANNEL, Store, decode_relayed,
    },
};

/// A live watcher's record interest lasts this long after its last announcement; watchers
/// announce every [`WATCH_RENEWAL`].
pub const WATCH_LIFETIME: Duration = Duration::from_mins(1);
/// How often a `WatchFlows` call asking for records announces itself.
pub const WATCH_RENEWAL: Duration = Duration::from_secs(20);
/// Most distinct node filters of record watchers remembered (a filter is a node name).
const MAX_WATCH_FILTERS: usize = 4096;

/// What `WatchFlows` subscribers receive.
pub type FlowItem = v1::watch_flows_response::Item;

/// How often the hub re-reads even without notifications.
pub const REREAD: Duration = Duration::from_secs(30);

/// Events buffered per subscriber before it counts as lagging.
const SUBSCRIBER_BUFFER: usize = 4096;
/// Events read per catch-up query.
const CATCH_UP_BATCH: u32 = 1000;

/// What every node still capturing, or yet to start a capture, must be told: node → orders.
pub type CaptureOrders = std::collections::BTreeMap<String, Vec<v1::CaptureOrder>>;

/// Broadcasts stored events to live subscribers.
#[derive(Clone, Debug)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<v1::DecisionEvent>>,
    flows: broadcast::Sender<Arc<FlowItem>>,
    /// Node filter ("" for every node) → when a watcher last asked for its records.
    record_watches: Arc<Mutex<HashMap<String, Instant>>>,
    generation: watch::Receiver<u64>,
    captures: watch::Receiver<Arc<CaptureOrders>>,
}

impl EventHub {
    /// Starts listening. Events stored after this returns are broadcast.
    pub async fn start(store: Store, shutdown: CancellationToken, tracker: &TaskTracker) -> Result<Self, ApiError> {
        let mut listener = PgListener::connect_with(store.pool()).await?;
        listener
            .listen_all([
                EVENTS_CHANNEL,
                GENERATION_CHANNEL,
                FLOWS_CHANNEL,
                FLOW_RECORDS_CHANNEL,
                FLOW_WATCH_CHANNEL,
                CAPTURES_CHANNEL,
            ])
            .await?;
        let last = (store.max_event_id().await?, store.max_flow_id().await?);
        let (sender, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let (flows, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let (generation_tx, generation) = watch::channel(store.generation().await?);
        let (captures_tx, captures) = watch::channel(Arc::new(store.capture_orders().await?));
        let hub = Self { sender, flows, record_watches: Arc::default(), generation, captures };
        tracker.spawn(run(store, listener, hub.clone(), (generation_tx, captures_tx), last, shutdown));
        Ok(hub)
    }

    /// A receiver of every flow aggregate stored and every flow record relayed from now on.
    pub fn subscribe_flows(&self) -> broadcast::Receiver<Arc<FlowItem>> {
        self.flows.subscribe()
    }

    /// Whether a live watcher on any replica asked for `node`'s flow records within
    /// [`WATCH_LIFETIME`].
    pub fn records_wanted(&self, node: &str) -> bool {
        let Ok(watches) = self.record_watches.lock() else { return false };
        [node, ""].iter().any(|f| watches.get(*f).is_some_and(|at| at.elapsed() < WATCH_LIFETIME))
    }

    /// Notes a watcher's announcement for `filter` (a node name, "" for every node).
    fn watched(&self, filter: &str) {
        let Ok(mut watches) = self.record_watches.lock() else { return };
        if watches.len() >= MAX_WATCH_FILTERS {
            watches.retain(|_, at| at.elapsed() < WATCH_LIFETIME);
        }
        if watches.len() < MAX_WATCH_FILTERS || watches.contains_key(filter) {
            watches.insert(filter.to_owned(), Instant::now());
        }
    }

    /// The global policy generation, updated as it moves.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    /// The capture orders of every node, updated as captures start, stop and end.
    pub fn capture_orders(&self) -> watch::Receiver<Arc<CaptureOrders>> {
        self.captures.clone()
    }

    /// A receiver of every event stored from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<v1::DecisionEvent>> {
        self.sender.subscribe()
    }
}

async fn run(
    store: Store,
    mut listener: PgListener,
    hub: EventHub,
    (generation, captures): (watch::Sender<u64>, watch::Sender<Arc<CaptureOrders>>),
    (mut last, mut last_flow): (i64, i64),
    shutdown: CancellationToken,
) {
    loop {
        let notified = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REREAD) => None,
            n = listener.recv() => Some(n),
        };
        let channel = match notified {
            Some(Ok(n)) if n.channel() == FLOW_RECORDS_CHANNEL => {
                // Live only: nothing to catch up with, so nothing to re-read.
                for record in decode_relayed(n.payload()).unwrap_or_default() {
                    let _ = hub.flows.send(Arc::new(FlowItem::Record(record)));
                }
                continue;
            }
            Some(Ok(n)) if n.channel() == FLOW_WATCH_CHANNEL => {
                hub.watched(n.payload());
                continue;
            }
            Some(Ok(n)) => Some(n.channel().to_owned()),
            Some(Err(error)) => {
                // PgListener reconnects on the next recv; re-read everything below.
                tracing::warn!(%error, "database listener lost its connection");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                None
            }
            None => None,
        };
        let only = |c: &str| channel.as_deref().is_none_or(|channel| channel == c);
        if only(EVENTS_CHANNEL)
            && let Err(error) = catch_up(&store, &hub.sender, &mut last).await
        {
            tracing::warn!(%error, "event catch-up failed; retrying on the next notification");
        }
        if only(FLOWS_CHANNEL)
            && let Err(error) = catch_up_flows(&store, &hub.flows, &mut last_flow).await
        {
            tracing::warn!(%error, "flow catch-up failed; retrying on the next notification");
        }
        if only(GENERATION_CHANNEL) {
            match store.generation().await {
                Ok(g) => {
                    generation.send_if_modified(|current| {
                        let moved = *current != g;
                        *current = g;
                        moved
                    });
                }
                Err(error) => tracing::warn!(%error, "cannot read the policy generation"),
            }
        }
        if only(CAPTURES_CHANNEL) {
            match store.capture_orders().await {
                Ok(orders) => {
                    captures.send_if_modified(|current| {
                        let moved = **current != orders;
                        if moved {
                            *current = Arc::new(orders);
                        }
                        moved
                    });
                }
                Err(error) => tracing::warn!(%error, "cannot read the capture orders"),
            }
        }
    }
}

async fn catch_up_flows(
    store: &Store,
    sender: &broadcast::Sender<Arc<FlowItem>>,
    last: &mut i64,
) -> Result<(), ApiError> {
    loop {
        let query = FlowQuery { after_id: Some(*last), ..FlowQuery::default() };
        let (flows, more) = store.list_flows(&query, CATCH_UP_BATCH).await?;
        for flow in flows {
            *last = flow.id as i64;
            let _ = sender.send(Arc::new(FlowItem::Aggregate(flow)));
        }
        if !more {
            return Ok(());
        }
    }
}

async fn catch_up(
    store: &Store,
    sender: &broadcast::Sender<Arc<v1::DecisionEvent>>,
    last: &mut i64,
) -> Result<(), ApiError> {
    loop {
        let query = EventQuery { after_id: Some(*last), ..EventQuery::default() };
        let (events, more) = store.list_events(&query, CATCH_UP_BATCH).await?;
        for event in events {
            *last = event.id as i64;
            // No subscribers is fine: nobody is watching.
            let _ = sender.send(Arc::new(event));
        }
        if !more {
            return Ok(());
        }
    }
}
