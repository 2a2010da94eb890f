//! Fan-out of database changes to this replica: newly stored events to `WatchEvents`
//! subscribers, and the global policy generation to Sync streams.
//!
//! Writes may happen on any server replica, so the hub does not trust in-process calls: it
//! LISTENs on [`EVENTS_CHANNEL`] and [`GENERATION_CHANNEL`] and, on every notification, after
//! every listener reconnect (notifications sent while disconnected are lost) and every
//! [`REREAD`] as a backstop, re-reads what changed.

use std::{sync::Arc, time::Duration};

use palisade_proto::v1;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use tokio::sync::watch;

use crate::{
    error::ApiError,
    store::{EVENTS_CHANNEL, EventQuery, GENERATION_CHANNEL, Store},
};

/// How often the hub re-reads even without notifications.
pub const REREAD: Duration = Duration::from_secs(30);

/// Events buffered per subscriber before it counts as lagging.
const SUBSCRIBER_BUFFER: usize = 4096;
/// Events read per catch-up query.
const CATCH_UP_BATCH: u32 = 1000;

/// Broadcasts stored events to live subscribers.
#[derive(Clone, Debug)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<v1::DecisionEvent>>,
    generation: watch::Receiver<u64>,
}

impl EventHub {
    /// Starts listening. Events stored after this returns are broadcast.
    pub async fn start(store: Store, shutdown: CancellationToken, tracker: &TaskTracker) -> Result<Self, ApiError> {
        let mut listener = PgListener::connect_with(store.pool()).await?;
        listener.listen_all([EVENTS_CHANNEL, GENERATION_CHANNEL]).await?;
        let last = store.max_event_id().await?;
        let (sender, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let (generation_tx, generation) = watch::channel(store.generation().await?);
        let hub = Self { sender: sender.clone(), generation };
        tracker.spawn(run(store, listener, sender, generation_tx, last, shutdown));
        Ok(hub)
    }

    /// The global policy generation, updated as it moves.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.clone()
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
    generation: watch::Sender<u64>,
    mut last: i64,
    shutdown: CancellationToken,
) {
    loop {
        let notified = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REREAD) => None,
            n = listener.recv() => Some(n),
        };
        let channel = match notified {
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
        if channel.as_deref() != Some(GENERATION_CHANNEL)
            && let Err(error) = catch_up(&store, &sender, &mut last).await
        {
            tracing::warn!(%error, "event catch-up failed; retrying on the next notification");
        }
        if channel.as_deref() != Some(EVENTS_CHANNEL) {
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
