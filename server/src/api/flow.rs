//! `FlowService`: stored flow aggregates (list, top talkers) and live ones with records.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use palisade_proto::v1::{self, flow_service_server::FlowService};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{decode_number_token, encode_token, page_size};
use crate::{
    auth::{Auth, Role},
    error::ApiError,
    hub::{EventHub, FlowItem, WATCH_RENEWAL},
    store::{FlowQuery, Store, from_timestamp},
};

/// Default and largest number of top talkers.
const DEFAULT_TOP: u32 = 10;
const MAX_TOP: u32 = 1000;

/// Flow reads.
#[derive(Debug, Clone)]
pub struct FlowApi {
    store: Store,
    hub: EventHub,
    shutdown: CancellationToken,
    auth: Auth,
}

impl FlowApi {
    /// Serves flows from `store` and live ones from `hub`; watch streams end at `shutdown`.
    pub fn new(store: Store, hub: EventHub, shutdown: CancellationToken, auth: Auth) -> Self {
        Self { store, hub, shutdown, auth }
    }
}

/// Converts and checks a filter; every error names its field.
pub fn query(filter: Option<&v1::FlowFilter>) -> Result<FlowQuery, ApiError> {
    let Some(f) = filter else { return Ok(FlowQuery::default()) };
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let time = |field: &str, t: Option<&prost_types::Timestamp>| {
        t.map(|t| from_timestamp(t).ok_or_else(|| ApiError::invalid(field, "timestamp out of range"))).transpose()
    };
    let peer = if f.peer.is_empty() {
        None
    } else {
        let net = f
            .peer
            .parse::<ipnet::IpNet>()
            .or_else(|_| f.peer.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| ApiError::invalid("filter.peer", format!("{:?} is not an address or CIDR", f.peer)))?;
        if net.trunc() != net {
            return Err(ApiError::invalid(
                "filter.peer",
                format!("{net} has host bits set (did you mean {}?)", net.trunc()),
            ));
        }
        Some(net)
    };
    let port = match f.port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| ApiError::invalid("filter.port", format!("port {p} is above 65535")))?),
    };
    let direction = match v1::FlowDirection::try_from(f.direction) {
        Ok(v1::FlowDirection::Unspecified) => None,
        Ok(d) => Some(d as i32),
        Err(_) => return Err(ApiError::invalid("filter.direction", format!("unknown direction {}", f.direction))),
    };
    Ok(FlowQuery {
        node: non_empty(&f.node),
        policy: non_empty(&f.policy),
        rule_id: non_empty(&f.rule_id),
        cgroup_id: (f.cgroup_id != 0).then_some(f.cgroup_id),
        peer,
        port,
        direction,
        since: time("filter.since", f.since.as_ref())?,
        until: time("filter.until", f.until.as_ref())?,
        before_id: None,
        after_id: None,
    })
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<v1::WatchFlowsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlowService for FlowApi {
    type WatchFlowsStream = FlowStream;

    async fn list_flows(
        &self,
        request: Request<v1::ListFlowsRequest>,
    ) -> Result<Response<v1::ListFlowsResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let limit = page_size(request.page_size)?;
        let mut q = query(request.filter.as_ref())?;
        q.before_id = decode_number_token("flow", &request.page_token)?.map(|id| id as i64);
        let (flows, more) = self.store.list_flows(&q, limit).await?;
        let next_page_token = match (more, flows.last()) {
            (true, Some(last)) => encode_token("flow", &last.id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListFlowsResponse { flows, next_page_token }))
    }

    async fn top_flows(&self, request: Request<v1::TopFlowsRequest>) -> Result<Response<v1::TopFlowsResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_TOP,
            1..=MAX_TOP => request.limit,
            n => return Err(ApiError::invalid("limit", format!("{n} is above the limit of {MAX_TOP}")).into()),
        };
        let mut q = query(request.filter.as_ref())?;
        if q.since.is_none() {
            q.since = Some(chrono::Utc::now() - chrono::Duration::hours(1));
        }
        let talkers = self.store.top_flows(&q, limit).await?;
        Ok(Response::new(v1::TopFlowsResponse { talkers }))
    }

    async fn watch_flows(&self, request: Request<v1::WatchFlowsRequest>) -> Result<Response<FlowStream>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let q = query(request.filter.as_ref())?;
        let records = request.records;
        // Subscribe before returning, so everything stored after the call is answered is seen.
        let receiver = self.hub.subscribe_flows();
        // While the stream lives, tell every replica (and through them the agents) that its
        // records are wanted; the guard inside the stream ends the announcements with it.
        let watching = CancellationToken::new();
        let guard = watching.clone().drop_guard();
        if records {
            let (store, node, shutdown) =
                (self.store.clone(), q.node.clone().unwrap_or_default(), self.shutdown.clone());
            self.store.announce_flow_watch(&node).await?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = watching.cancelled() => return,
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(WATCH_RENEWAL) => {}
                    }
                    if let Err(error) = store.announce_flow_watch(&node).await {
                        tracing::warn!(%error, "cannot renew a flow record watch");
                    }
                }
            });
        }
        let stream = BroadcastStream::new(receiver)
            .filter_map(move |item| {
                let _keep = &guard;
                let out = match item {
                    Ok(item) => match &*item {
                        FlowItem::Aggregate(a) if q.matches(a) => Some(Ok(item)),
                        FlowItem::Record(r) if records && q.matches_record(r) => Some(Ok(item)),
                        _ => None,
                    },
                    Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Err(Status::resource_exhausted(format!(
                        "watcher fell {missed} flows behind; use ListFlows to catch up and watch again"
                    )))),
                };
                futures::future::ready(
                    out.map(|r| r.map(|item| v1::WatchFlowsResponse { item: Some((*item).clone()) })),
                )
            })
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(filter: &v1::FlowFilter) -> String {
        match query(Some(filter)) {
            Err(ApiError::Invalid(v)) => v[0].field.clone(),
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn query_names_the_bad_field() {
        assert_eq!(field(&v1::FlowFilter { peer: "10.0.0.1/8".into(), ..Default::default() }), "filter.peer");
        assert_eq!(field(&v1::FlowFilter { peer: "nope".into(), ..Default::default() }), "filter.peer");
        assert_eq!(field(&v1::FlowFilter { port: 70_000, ..Default::default() }), "filter.port");
        assert_eq!(field(&v1::FlowFilter { direction: 9, ..Default::default() }), "filter.direction");
    }

    #[test]
    fn live_filters_match_peer_networks_ports_and_mapped_addresses() {
        let q = query(Some(&v1::FlowFilter {
            node: "n1".into(),
            peer: "10.0.0.0/8".into(),
            port: 443,
            ..Default::default()
        }))
        .expect("valid");
        let a = v1::FlowAggregate {
            node: "n1".into(),
            peer_address: "10.1.2.3".into(),
            peer_port: 443,
            ..Default::default()
        };
        assert!(q.matches(&a));
        assert!(q.matches(&v1::FlowAggregate { peer_address: "::ffff:10.1.2.3".into(), ..a.clone() }));
        assert!(!q.matches(&v1::FlowAggregate { peer_address: "11.1.2.3".into(), ..a.clone() }));
        assert!(!q.matches(&v1::FlowAggregate { peer_port: 80, ..a.clone() }));
        assert!(q.matches(&v1::FlowAggregate { peer_port: 0, local_port: 443, ..a.clone() }));
        assert!(!q.matches(&v1::FlowAggregate { node: "n2".into(), ..a }));
        let one = query(Some(&v1::FlowFilter { peer: "2001:db8::1".into(), ..Default::default() })).expect("valid");
        assert_eq!(one.peer.map(|n| n.prefix_len()), Some(128));
    }
}
