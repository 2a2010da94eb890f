//! Connecting to a Palisade server (the Rust SDK's entry point): TLS against the CA the
//! server's certificate chains to, a client certificate for agents, and an admin token on
//! every call.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use palisade_proto::{client, v1::{self, policy_service_client::PolicyServiceClient}};
//! let ca = std::fs::read("pki/ca.crt")?;
//! let channel = client::channel("https://127.0.0.1:50051", Some(&ca), None).await?;
//! let mut policies = PolicyServiceClient::new(client::with_token(channel, Some("pal_…"))?);
//! let listed = policies.list_policies(v1::ListPoliciesRequest::default()).await?.into_inner();
//! # Ok(()) }
//! ```

use std::time::Duration;

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// A channel whose every call carries a bearer token (when one was given).
pub type Connection = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer TOKEN` to each call.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not a URL or `host:port`.
    #[error("invalid server address {0:?}")]
    Address(String),
    /// An `https://` server without a CA to check its certificate against.
    #[error("an https:// server needs the CA its certificate chains to (--ca-cert, PALISADE_CA_CERT)")]
    NoCa,
    /// A token a header cannot carry.
    #[error("the token has characters a header cannot carry")]
    Token,
    /// Several replicas, some `https://` and some `http://`.
    #[error("server replicas {0:?} mix https:// and http://")]
    MixedSchemes(String),
    /// The server accepted no connection (TCP and TLS) within [`CONNECT_TIMEOUT`].
    #[error("no connection to the Palisade server at {0} within {CONNECT_TIMEOUT:?}")]
    Timeout(String),
    /// TLS configuration or the connection failed.
    #[error("cannot reach the Palisade server at {url}")]
    Transport {
        /// The URL.
        url: String,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// How long one replica may take to accept a connection before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `server` (`https://host:port`, `http://host:port` for a `--dev` server, or
/// `host:port`, meaning `https://` when a CA is given and `http://` otherwise). `ca_pem` is
/// required for `https://`; `identity_pem` (certificate, key) is a node's certificate, which
/// `AgentService` requires.
///
/// `server` may name several replicas, separated by commas: they are tried in order and the
/// first that accepts a connection within [`CONNECT_TIMEOUT`] is used. The error, when none
/// does, is the last replica's.
pub async fn channel(
    server: &str,
    ca_pem: Option<&[u8]>,
    identity_pem: Option<(&[u8], &[u8])>,
) -> Result<Channel, ConnectError> {
    let replicas: Vec<&str> = server.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    // One service, one scheme: a list mixing them would send a token in the clear to
    // whichever plaintext replica answered.
    let https = |s: &&str| s.starts_with("https://") || (!s.contains("://") && ca_pem.is_some());
    if replicas.iter().any(https) && !replicas.iter().all(https) {
        return Err(ConnectError::MixedSchemes(server.to_owned()));
    }
    let mut last = ConnectError::Address(server.to_owned());
    for one in replicas {
        match replica(one, ca_pem, identity_pem).await {
            Ok(channel) => return Ok(channel),
            Err(error @ (ConnectError::Transport { .. } | ConnectError::Timeout(_))) => last = error,
            Err(error) => return Err(error),
        }
    }
    Err(last)
}

async fn replica(
    server: &str,
    ca_pem: Option<&[u8]>,
    identity_pem: Option<(&[u8], &[u8])>,
) -> Result<Channel, ConnectError> {
    let url = match (server.contains("://"), ca_pem) {
        (true, _) => server.to_owned(),
        (false, Some(_)) => format!("https://{server}"),
        (false, None) => format!("http://{server}"),
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|_| ConnectError::Address(server.to_owned()))?
        .connect_timeout(CONNECT_TIMEOUT);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem.ok_or(ConnectError::NoCa)?));
        if let Some((cert, key)) = identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).map_err(|source| ConnectError::Transport { url: url.clone(), source })?;
    }
    // `connect_timeout` bounds the TCP connect only; this bounds the TLS handshake too.
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(connected) => connected.map_err(|source| ConnectError::Transport { url, source }),
        Err(_) => Err(ConnectError::Timeout(url)),
    }
}

/// `channel` with `token` on every call (surrounding whitespace ignored; empty means none).
/// Give a token only to a channel made for `https://`: over `http://` (a `--dev` server,
/// which ignores tokens) it would travel in the clear.
pub fn with_token(channel: Channel, token: Option<&str>) -> Result<Connection, ConnectError> {
    let bearer = match token.map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| ConnectError::Token)?),
        None => None,
    };
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}

/// Downloads capture `id` in `format` (a `CaptureFormat`), writing each chunk to `out` as it
/// arrives; the bytes written. The file is complete only when this returns `Ok`.
///
/// # Errors
/// The server's status for the call or a chunk, or `out`'s write error as `INTERNAL`.
pub async fn download_capture(
    channel: &Connection,
    id: u64,
    format: crate::v1::CaptureFormat,
    out: &mut dyn std::io::Write,
) -> Result<u64, Status> {
    let mut client = crate::v1::capture_service_client::CaptureServiceClient::new(channel.clone());
    let request = crate::v1::DownloadCaptureRequest { id, format: format as i32 };
    let mut stream = client.download_capture(request).await?.into_inner();
    let mut written = 0;
    while let Some(chunk) = stream.message().await? {
        out.write_all(&chunk.data).map_err(|e| Status::internal(format!("writing the capture: {e}")))?;
        written += chunk.data.len() as u64;
    }
    Ok(written)
}
