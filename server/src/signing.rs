//! Bundle signatures (DESIGN.md §7): the server signs every bundle's envelope (digest,
//! generation, node, issue time; [`palisade_proto::envelope`]) with ed25519;
//! agents verify it against a pinned public key before loading anything.

use std::{io, os::unix::fs::OpenOptionsExt as _, path::Path};

use ed25519_dalek::{Signer as _, SigningKey};

/// A signing key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// Reading or creating the key file failed.
    #[error("bundle signing key {path}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file does not hold 64 hex characters.
    #[error("bundle signing key {0} must hold a 32-byte seed as 64 hex characters")]
    Malformed(String),
}

/// The server's bundle signing key.
#[derive(Clone)]
pub struct BundleSigner(SigningKey);

impl std::fmt::Debug for BundleSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BundleSigner").field(&self.public_key_hex()).finish()
    }
}

impl BundleSigner {
    /// A fresh random key (tests, or a server started without a key file).
    pub fn generate() -> Self {
        Self(SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    /// Loads the key from `path` (a hex seed), creating it (mode 0600) and `path.pub` (the
    /// public key, for agents) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningError> {
        let io_err = |source| SigningError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let seed: [u8; 32] = palisade_proto::from_hex(&text)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| SigningError::Malformed(path.display().to_string()))?;
                let signer = Self(SigningKey::from_bytes(&seed));
                let _ = std::fs::write(public_path(path), signer.public_key_hex() + "\n");
                Ok(signer)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let signer = Self::generate();
                let mut file =
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err)?;
                io::Write::write_all(&mut file, (palisade_proto::to_hex(&signer.0.to_bytes()) + "\n").as_bytes())
                    .map_err(io_err)?;
                std::fs::write(public_path(path), signer.public_key_hex() + "\n").map_err(io_err)?;
                Ok(signer)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Signs bundle content.
    pub fn sign(&self, content: &[u8]) -> Vec<u8> {
        self.0.sign(content).to_bytes().to_vec()
    }

    /// The public key agents pin, as hex.
    pub fn public_key_hex(&self) -> String {
        palisade_proto::to_hex(self.0.verifying_key().as_bytes())
    }
}

fn public_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

    use super::*;

    #[test]
    fn load_or_create_persists_the_key_and_writes_the_public_half() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bundle.key");
        let first = BundleSigner::load_or_create(&path).expect("created");
        let again = BundleSigner::load_or_create(&path).expect("loaded");
        assert_eq!(first.public_key_hex(), again.public_key_hex());
        let public = std::fs::read_to_string(dir.path().join("bundle.key.pub")).expect("public key file");
        assert_eq!(public.trim(), first.public_key_hex());
        let key =
            VerifyingKey::from_bytes(&palisade_proto::from_hex(&public).expect("hex").try_into().expect("32 bytes"))
                .expect("valid key");
        let signature = Signature::from_slice(&first.sign(b"bundle")).expect("signature");
        assert!(key.verify(b"bundle", &signature).is_ok());
        assert!(key.verify(b"tampered", &signature).is_err());
    }

    #[test]
    fn load_or_create_rejects_a_malformed_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "not hex").expect("write");
        assert!(matches!(BundleSigner::load_or_create(&path), Err(SigningError::Malformed(_))));
    }
}
