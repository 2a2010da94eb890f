//! The `/metrics` endpoint both daemons serve with `--metrics-listen`: the `OpenMetrics` text
//! exposition of a `prometheus-client` registry, refreshed just before every scrape (gauges
//! read from the database or the kernel are as fresh as the scrape).
//!
//! The endpoint is bounded like the gRPC listener: at most [`MAX_CONNECTIONS`] scrapers at
//! once, request heads of at most [`MAX_REQUEST_HEAD`] bytes read within
//! [`REQUEST_HEAD_TIMEOUT`], and nothing but `GET /metrics` answered with a body.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
pub use prometheus_client;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

/// Scrapers served at once; more wait for a slot.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers) the endpoint reads.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// How long a scraper may take to send its request head.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the refresh before a scrape may take; the scrape then shows the values as they
/// were.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// The content type of the `OpenMetrics` text format `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Updates the registry's values just before a scrape encodes them.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A refresh that does nothing (every value is updated as it changes).
#[must_use]
pub fn no_refresh() -> Refresh {
    Arc::new(|| Box::pin(async {}))
}

/// Binds `addr` for [`serve`], with the address in the error.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("--metrics-listen {addr}: {e}")))
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, refresh: Refresh, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics at /metrics");
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let refresh = refresh.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| answer(request, registry.clone(), refresh.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "metrics connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    registry: Arc<Registry>,
    refresh: Refresh,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n"));
    }
    if tokio::time::timeout(REFRESH_TIMEOUT, refresh()).await.is_err() {
        tracing::warn!(timeout = ?REFRESH_TIMEOUT, "metrics refresh timed out; serving the previous values");
    }
    let mut text = String::with_capacity(16 * 1024);
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(%error, "cannot encode metrics");
        return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"));
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    if let Ok(value) = http::HeaderValue::from_str(CONTENT_TYPE) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// Buckets for durations from 1 ms to about 65 s, doubling.
#[must_use]
pub fn duration_buckets() -> Vec<f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17).collect()
}

/// Fetches `http://{addr}/metrics` and returns the body (for tests and `palisade-bench`).
///
/// # Errors
/// The endpoint cannot be reached or does not answer 200.
pub async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8(response).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP head"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("metrics endpoint answered {}", head.lines().next().unwrap_or(""))));
    }
    Ok(body.to_owned())
}

/// The value of the sample `series` (name with labels exactly as exposed, e.g.
/// `palisade_server_policies` or `x_total{code="OK"}`) in a scrape, if present.
#[must_use]
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn a_scrape_refreshes_then_encodes_the_registry_and_other_paths_are_refused() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        let gauge: Gauge = Gauge::default();
        registry.register("test_things", "Things counted", counter.clone());
        registry.register("test_level", "A level set by the refresh", gauge.clone());
        counter.inc_by(3);
        let refreshed = gauge.clone();
        let refresh: Refresh = Arc::new(move || {
            let g = refreshed.clone();
            Box::pin(async move {
                g.inc();
            })
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(registry), refresh, shutdown.clone()));
        let first = scrape(addr).await.expect("scrape");
        assert_eq!(sample(&first, "test_things_total"), Some(3.0), "{first}");
        assert_eq!(sample(&first, "test_level"), Some(1.0), "{first}");
        let second = scrape(addr).await.expect("scrape");
        assert_eq!(sample(&second, "test_level"), Some(2.0), "refreshed again: {second}");
        assert!(second.trim_end().ends_with("# EOF"), "{second}");

        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");

        // An oversized request head is refused, and the endpoint keeps serving.
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST_HEAD * 2));
        let _ = stream.write_all(huge.as_bytes()).await;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        assert!(!String::from_utf8_lossy(&out).contains("test_things"), "an oversized head got metrics");
        assert!(scrape(addr).await.is_ok(), "still serving");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops").expect("no panic");
    }
}
