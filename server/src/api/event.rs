//! `EventService`.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use palisade_proto::v1::{self, event_service_server::EventService};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{decode_number_token, encode_token, page_size};
use crate::{
    auth::{Auth, Role},
    error::ApiError,
    hub::EventHub,
    store::{EventQuery, Store, from_timestamp},
};

/// Event reads: stored (list) and live (watch).
#[derive(Debug, Clone)]
pub struct EventApi {
    store: Store,
    hub: EventHub,
    shutdown: CancellationToken,
    auth: Auth,
}

impl EventApi {
    /// Serves events from `store` and live events from `hub`; watch streams end at `shutdown`.
    pub fn new(store: Store, hub: EventHub, shutdown: CancellationToken, auth: Auth) -> Self {
        Self { store, hub, shutdown, auth }
    }
}

/// Converts and checks a filter.
fn query(filter: Option<&v1::EventFilter>) -> Result<EventQuery, ApiError> {
    let Some(filter) = filter else { return Ok(EventQuery::default()) };
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let verdict = match v1::Verdict::try_from(filter.verdict) {
        Ok(v1::Verdict::Unspecified) => None,
        Ok(v) => Some(v as i32),
        Err(_) => return Err(ApiError::invalid("filter.verdict", format!("unknown verdict {}", filter.verdict))),
    };
    let time = |field: &str, t: Option<&prost_types::Timestamp>| {
        t.map(|t| from_timestamp(t).ok_or_else(|| ApiError::invalid(field, "timestamp out of range"))).transpose()
    };
    Ok(EventQuery {
        node: non_empty(&filter.node),
        policy: non_empty(&filter.policy),
        verdict,
        since: time("filter.since", filter.since.as_ref())?,
        until: time("filter.until", filter.until.as_ref())?,
        before_id: None,
        after_id: None,
    })
}

/// Whether a live event passes a filter (time bounds do not apply to live streams).
fn matches(q: &EventQuery, event: &v1::DecisionEvent) -> bool {
    q.node.as_ref().is_none_or(|n| *n == event.node)
        && q.policy.as_ref().is_none_or(|p| *p == event.policy)
        && q.verdict.is_none_or(|v| v == event.verdict)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::DecisionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    type WatchEventsStream = EventStream;

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let limit = page_size(request.page_size)?;
        let mut q = query(request.filter.as_ref())?;
        q.before_id = decode_number_token("event", &request.page_token)?.map(|id| id as i64);
        let (events, more) = self.store.list_events(&q, limit).await?;
        let next_page_token = match (more, events.last()) {
            (true, Some(last)) => encode_token("event", &last.id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListEventsResponse { events, next_page_token }))
    }

    async fn watch_events(&self, request: Request<v1::WatchEventsRequest>) -> Result<Response<EventStream>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let q = query(request.into_inner().filter.as_ref())?;
        // Subscribe before returning, so everything stored after the call is answered is seen.
        let receiver = self.hub.subscribe();
        let stream = BroadcastStream::new(receiver)
            .filter_map(move |item| {
                let out = match item {
                    Ok(event) if matches(&q, &event) => Some(Ok((*event).clone())),
                    Ok(_) => None,
                    Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Err(Status::resource_exhausted(format!(
                        "watcher fell {missed} events behind; use ListEvents to catch up and watch again"
                    )))),
                };
                futures::future::ready(out)
            })
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_rejects_unknown_verdict() {
        let filter = v1::EventFilter { verdict: 42, ..Default::default() };
        assert!(matches!(query(Some(&filter)), Err(ApiError::Invalid(v)) if v[0].field == "filter.verdict"));
    }

    #[test]
    fn matches_applies_every_filter() {
        let q = query(Some(&v1::EventFilter {
            node: "n1".into(),
            policy: "p".into(),
            verdict: v1::Verdict::Deny as i32,
            ..Default::default()
        }))
        .expect("valid");
        let event = v1::DecisionEvent {
            node: "n1".into(),
            policy: "p".into(),
            verdict: v1::Verdict::Deny as i32,
            ..Default::default()
        };
        assert!(matches(&q, &event));
        assert!(!matches(&q, &v1::DecisionEvent { node: "n2".into(), ..event.clone() }));
        assert!(!matches(&q, &v1::DecisionEvent { policy: "q".into(), ..event.clone() }));
        assert!(!matches(&q, &v1::DecisionEvent { verdict: v1::Verdict::Audit as i32, ..event }));
    }
}
