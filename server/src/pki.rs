//! A development PKI in one command: a CA, a server certificate, and one client certificate
//! per node (`palisade-server pki init DIR`, `palisade-server pki issue-node NAME DIR`). The
//! node certificate's common name is the node's identity (DESIGN.md §7); the server refuses
//! a hello or events for any other node name on that connection.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Why a PKI command failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation")]
    Rcgen(#[from] rcgen::Error),
    /// A file would be replaced.
    #[error("{0} already exists: refusing to replace it (remove it to start over)")]
    Exists(PathBuf),
    /// The node name cannot be a certificate identity.
    #[error("node name {0:?}: {1}")]
    Name(String, String),
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

/// Creates `path` (never an existing file or symlink: `O_EXCL`) holding `text`, mode 0600
/// for keys from the first byte on, 0644 for certificates.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_owned(), source };
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    if !secret {
        // The umask may have narrowed it; a certificate is public.
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Refuses to replace any of `files` in `dir`.
fn refuse_existing(dir: &Path, files: &[String]) -> Result<(), PkiError> {
    match files.iter().map(|f| dir.join(f)).find(|p| p.symlink_metadata().is_ok()) {
        Some(existing) => Err(PkiError::Exists(existing)),
        None => Ok(()),
    }
}

/// The files `init` writes; no node may be named after them.
const RESERVED: [&str; 4] = ["ca.crt", "ca.key", "server.crt", "server.key"];

/// How long the development CA is valid, and the server and node certificates it signs.
const CA_DAYS: i64 = 10 * 365;
const LEAF_DAYS: i64 = 397;

/// Valid from a day ago (clock skew between hosts) for `days` days.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    validity(&mut params, CA_DAYS);
    params.distinguished_name.push(DnType::CommonName, "Palisade development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// Creates `ca.crt`, `ca.key`, `server.crt` and `server.key` in `dir`. The server
/// certificate names `localhost`, `127.0.0.1`, `::1`, this host's name and every `sans` entry.
pub fn init(dir: &Path, sans: &[String]) -> Result<Vec<PathBuf>, PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
    refuse_existing(dir, &RESERVED.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>())?;
    let ca_crt = dir.join("ca.crt");
    let ca_key = KeyPair::generate()?;
    let params = ca_params()?;
    let ca = params.self_signed(&ca_key)?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    write(&ca_crt, &ca.pem(), false)?;
    let issuer = Issuer::new(params, ca_key);

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(host) = hostname::get() {
        names.push(host.to_string_lossy().to_lowercase());
    }
    for san in sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let mut server = CertificateParams::new(names)?;
    validity(&mut server, LEAF_DAYS);
    server.distinguished_name.push(DnType::CommonName, "palisade-server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_key = KeyPair::generate()?;
    let cert = server.signed_by(&server_key, &issuer)?;
    write(&dir.join("server.key"), &server_key.serialize_pem(), true)?;
    write(&dir.join("server.crt"), &cert.pem(), false)?;
    Ok(RESERVED.iter().map(|f| dir.join(f)).collect())
}

/// Creates `NAME.crt` and `NAME.key` in `dir`: a client certificate for node `name`, signed
/// by the CA `init` made there.
pub fn issue_node(name: &str, dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
    crate::validate::node_name("name", name)
        .map_err(|v| PkiError::Name(name.to_owned(), v.iter().map(|v| v.description.clone()).collect()))?;
    if name == "ca" || name == "server" {
        return Err(PkiError::Name(name.to_owned(), "is reserved for the CA's and the server's own files".into()));
    }
    refuse_existing(dir, &[format!("{name}.crt"), format!("{name}.key")])?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&dir.join("ca.crt"))?, ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    validity(&mut params, LEAF_DAYS);
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let (crt_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    write(&key_path, &key.serialize_pem(), true)?;
    write(&crt_path, &cert.pem(), false)?;
    Ok(vec![crt_path, key_path])
}
