//! Transport security (DESIGN.md §7): the server's TLS identity, the client CA agents'
//! certificates are checked against, and the node identity a certificate carries.

use std::path::{Path, PathBuf};

use tonic::{
    Request, Status,
    transport::{Certificate, Identity, ServerTlsConfig},
};

/// The PEM files TLS is served with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs client (node) certificates.
    pub client_ca: PathBuf,
}

/// A TLS file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}")]
pub struct TlsFileError {
    /// File.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError { path: path.to_owned(), source })
}

impl TlsFiles {
    /// The tonic configuration: our identity, and client certificates verified against the
    /// client CA when a client presents one (admin clients need none; `AgentService` refuses
    /// calls without one, see [`node_identity`]).
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsFileError> {
        let identity = Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        Ok(ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(read(&self.client_ca)?))
            .client_auth_optional(true))
    }
}

/// The node a request's client certificate names (its subject common name), or `None` when
/// the server runs without TLS (`--dev`). With TLS, a call without a client certificate is
/// `UNAUTHENTICATED`; the certificate chain itself was verified by the TLS handshake.
pub fn node_identity<T>(request: &Request<T>, required: bool) -> Result<Option<String>, Status> {
    if !required {
        return Ok(None);
    }
    let certs = request.peer_certs().filter(|c| !c.is_empty()).ok_or_else(|| {
        Status::unauthenticated("AgentService needs a client certificate signed by the server's client CA")
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|_| Status::unauthenticated("the client certificate does not parse"))?;
    // The handshake accepts a certificate without any extended key usage; a node's must say
    // clientAuth, so that no server (or other) certificate from the CA can speak for a node.
    let client_auth = cert.extended_key_usage().ok().flatten().is_some_and(|e| e.value.client_auth);
    if !client_auth {
        return Err(Status::unauthenticated("the client certificate is not for client authentication (no clientAuth)"));
    }
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| Status::unauthenticated("the client certificate names no node (no common name)"))?;
    Ok(Some(name.to_owned()))
}

/// Refuses `claimed` unless it is the certificate's node (`PERMISSION_DENIED`).
pub fn check_node(identity: Option<&str>, field: &str, claimed: &str) -> Result<(), Status> {
    match identity {
        Some(node) if node != claimed => Err(Status::permission_denied(format!(
            "{field} is {claimed:?}, but this connection's client certificate is node {node:?}"
        ))),
        _ => Ok(()),
    }
}
