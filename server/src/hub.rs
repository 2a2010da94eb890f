//! Fan-out of newly stored events to `WatchEvents` subscribers.
//!
//! Ingest may happen on any server replica, so the hub does not trust in-process calls:
//! it LISTENs on [`EVENTS_CHANNEL`] and, on every notification (and after every listener
//! reconnect, since notifications sent while disconnected are lost), reads the events
//! stored after the last one it broadcast.

use std::{sync::Arc, time::Duration};

use palisade_proto::v1;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    error::ApiError,
    store::{EVENTS_CHANNEL, EventQuery, Store},
};

/// Events buffered per subscriber before it counts as lagging.
const SUBSCRIBER_BUFFER: usize = 4096;
/// Events read per catch-up query.
const CATCH_UP_BATCH: u32 = 1000;

/// Broadcasts stored events to live subscribers.
#[derive(Clone, Debug)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<v1::DecisionEvent>>,
}

impl EventHub {
    /// Starts listening. Events stored after this returns are broadcast.
    pub async fn start(store: Store, shutdown: CancellationToken, tracker: &TaskTracker) -> Result<Self, ApiError> {
        let mut listener = PgListener::connect_with(store.pool()).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        let last = store.max_event_id().await?;
        let (sender, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let hub = Self { sender: sender.clone() };
        tracker.spawn(run(store, listener, sender, last, shutdown));
        Ok(hub)
    }

    /// A receiver of every event stored from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<v1::DecisionEvent>> {
        self.sender.subscribe()
    }
}

async fn run(
    store: Store,
    mut listener: PgListener,
    sender: broadcast::Sender<Arc<v1::DecisionEvent>>,
    mut last: i64,
    shutdown: CancellationToken,
) {
    loop {
        let notified = tokio::select! {
            () = shutdown.cancelled() => return,
            n = listener.recv() => n,
        };
        if let Err(error) = notified {
            // PgListener reconnects on the next recv; catch up below either way.
            tracing::warn!(%error, "event listener lost its connection");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        match catch_up(&store, &sender, &mut last).await {
            Ok(()) => {}
            Err(error) => tracing::warn!(%error, "event catch-up failed; retrying on the next notification"),
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
