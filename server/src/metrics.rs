//! The server's Prometheus metrics (`--metrics-listen`): gRPC requests by method and code
//! with latency, policies, nodes by sync state, generation lag, apply→ACK delay, events
//! ingested and dropped, connected agents. Names are listed in docs/operations.md.
//!
//! Request metrics come from a tower layer in front of every service; the `grpc-status` of
//! a call is read from the response head (errors) or its trailers (everything else), so a
//! stream is counted when it ends. Method labels are bounded: paths the server does not
//! serve count as `method="other"`.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body::{Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use prost::Message as _;

use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Node sync states as `palisade_server_nodes{state}` counts them.
pub const NODE_STATES: [&str; 4] = ["in_sync", "pending", "failed", "disconnected"];

fn latency_histogram() -> Histogram {
    Histogram::new(palisade_metrics::duration_buckets())
}

/// Every metric the server exposes.
pub struct ServerMetrics {
    registry: Arc<Registry>,
    methods: HashSet<String>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    policies: Gauge,
    nodes: Family<StateLabels, Gauge>,
    lag_max: Gauge,
    apply_to_ack: Histogram,
    events_ingested: Counter,
    events_dropped: Family<ReasonLabels, Counter>,
    agents_connected: Gauge,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics").field("methods", &self.methods.len()).finish_non_exhaustive()
    }
}

impl ServerMetrics {
    /// A registry with every series registered, at zero.
    #[must_use]
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("palisade_server");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let policies = Gauge::default();
        let nodes = Family::<StateLabels, Gauge>::default();
        let lag_max = Gauge::default();
        let apply_to_ack = latency_histogram();
        let events_ingested = Counter::default();
        let events_dropped = Family::<ReasonLabels, Counter>::default();
        let agents_connected = Gauge::default();
        registry.register("grpc_requests", "gRPC calls finished, by method and status code", requests.clone());
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC call duration from request to the last response frame (streams: their lifetime)",
            latency.clone(),
        );
        registry.register("policies", "Live (not deleted) policies", policies.clone());
        registry.register(
            "nodes",
            "Registered nodes by sync state: in_sync (acknowledged the desired bundle), pending, failed \
             (rejected it), disconnected",
            nodes.clone(),
        );
        registry.register(
            "node_generation_lag_max",
            "Largest desired minus acknowledged generation over connected nodes",
            lag_max.clone(),
        );
        registry.register(
            "apply_to_ack_seconds",
            "Time from this server seeing the policy generation move (a policy change committed) to a node \
             acknowledging the bundle that includes it",
            apply_to_ack.clone(),
        );
        registry.register("events_ingested", "Decision events stored", events_ingested.clone());
        registry.register(
            "events_dropped",
            "Decision events not stored: rate_limited (beyond --event-rate) or invalid (the call was refused)",
            events_dropped.clone(),
        );
        registry.register("agents_connected", "Sync streams open on this replica", agents_connected.clone());
        for state in NODE_STATES {
            let _ = nodes.get_or_create(&StateLabels { state });
        }
        for reason in ["rate_limited", "invalid"] {
            let _ = events_dropped.get_or_create(&ReasonLabels { reason });
        }
        Arc::new(Self {
            registry: Arc::new(registry),
            methods: served_methods(),
            requests,
            latency,
            policies,
            nodes,
            lag_max,
            apply_to_ack,
            events_ingested,
            events_dropped,
            agents_connected,
        })
    }

    /// The registry the endpoint encodes.
    #[must_use]
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Reads the database-backed gauges (called before every scrape).
    pub async fn refresh(&self, store: &Store) {
        match store.fleet_summary().await {
            Ok(summary) => {
                self.policies.set(summary.policies);
                for (state, count) in NODE_STATES.iter().zip(summary.nodes) {
                    self.nodes.get_or_create(&StateLabels { state }).set(count);
                }
                self.lag_max.set(summary.lag_max);
            }
            Err(error) => tracing::warn!(%error, "metrics: cannot read the fleet summary"),
        }
    }

    /// The label a request path gets.
    fn method(&self, path: &str) -> String {
        if self.methods.contains(path) { path.trim_start_matches('/').to_owned() } else { "other".to_owned() }
    }

    fn finished(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { method: method.to_owned(), code: format!("{code:?}") }).inc();
        self.latency.get_or_create(&MethodLabels { method: method.to_owned() }).observe(elapsed.as_secs_f64());
    }

    /// A node acknowledged a bundle `delay` after the change it includes.
    pub fn applied(&self, delay: Duration) {
        self.apply_to_ack.observe(delay.as_secs_f64());
    }

    /// `n` events stored.
    pub fn ingested(&self, n: u64) {
        self.events_ingested.inc_by(n);
    }

    /// `n` events refused for `reason` (`rate_limited`, `invalid`).
    pub fn dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.events_dropped.get_or_create(&ReasonLabels { reason }).inc_by(n);
        }
    }

    /// A Sync stream opened on this replica; closed when the guard drops.
    #[must_use]
    pub fn agent_connected(self: &Arc<Self>) -> ConnectedGuard {
        self.agents_connected.inc();
        ConnectedGuard(self.clone())
    }
}

/// Counts one open Sync stream while it lives.
#[derive(Debug)]
pub struct ConnectedGuard(Arc<ServerMetrics>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.agents_connected.dec();
    }
}

/// `/package.Service/Method` of every RPC the server serves (Palisade's, health, reflection).
fn served_methods() -> HashSet<String> {
    let mut methods: HashSet<String> = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    if let Ok(set) = prost_types::FileDescriptorSet::decode(palisade_proto::FILE_DESCRIPTOR_SET) {
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    methods.insert(format!("/{package}.{name}/{}", method.name.unwrap_or_default()));
                }
            }
        }
    }
    methods
}

/// The tower layer that counts and times every gRPC call.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer(pub Arc<ServerMetrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, metrics: self.0.clone() }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<ServerMetrics>,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.metrics.method(request.uri().path());
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            // Counts the call as Cancelled if this future is dropped before the handler
            // answers (the client went away, or the request timeout cut it off).
            let mut waiting = Observed { inner: None, method, metrics, start, done: false };
            let response = future.await?;
            waiting.done = true;
            let (method, metrics) = (std::mem::take(&mut waiting.method), waiting.metrics.clone());
            if let Some(code) = status_of(response.headers()) {
                metrics.finished(&method, code, start.elapsed());
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(Observed { inner: Some(body), method, metrics, start, done: false })
            }))
        })
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

/// A response body that records the call when its trailers pass (or it ends or is dropped
/// without them: `Unknown`, or `Cancelled` when the client went away first).
struct Observed {
    inner: Option<tonic::body::Body>,
    method: String,
    metrics: Arc<ServerMetrics>,
    start: Instant,
    done: bool,
}

impl Observed {
    fn finish(&mut self, code: tonic::Code) {
        if !self.done {
            self.done = true;
            self.metrics.finished(&self.method, code, self.start.elapsed());
        }
    }
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(tonic::Code::Internal),
            Poll::Ready(None) => self.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(tonic::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(tonic::body::Body::size_hint).unwrap_or_default()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}
