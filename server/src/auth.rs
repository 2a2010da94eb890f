//! Admin API authentication: bearer tokens (`authorization: Bearer SECRET`) stored hashed,
//! each with a role. Off in `--dev`, where the audit actor is the `palisade-actor` header.

use palisade_proto::v1;
use rand::RngCore as _;
use sha2::Digest as _;
use tonic::{Request, Status};

use crate::store::Store;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Get, list, history, compile; nodes; events.
    Viewer,
    /// + apply and delete.
    Editor,
    /// + tokens.
    Admin,
}

impl Role {
    /// The stored and command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }

    /// Parses [`Self::as_str`]'s spelling.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Viewer, Self::Editor, Self::Admin].into_iter().find(|r| r.as_str() == text)
    }

    /// The wire enum.
    pub fn to_proto(self) -> v1::Role {
        match self {
            Self::Viewer => v1::Role::Viewer,
            Self::Editor => v1::Role::Editor,
            Self::Admin => v1::Role::Admin,
        }
    }
}

/// A new token secret: `pal_` and 64 hex digits (256 random bits).
pub fn new_secret() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("pal_{}", palisade_proto::to_hex(&bytes))
}

/// What the database keeps of a secret.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    sha2::Sha256::digest(secret.as_bytes()).to_vec()
}

/// Checks callers of the admin API.
#[derive(Debug, Clone)]
pub struct Auth {
    /// `None`: authentication off (`--dev`).
    tokens: Option<Store>,
}

impl Auth {
    /// No authentication: every caller may do everything (`--dev`).
    pub fn off() -> Self {
        Self { tokens: None }
    }

    /// Bearer tokens from `store`.
    pub fn tokens(store: Store) -> Self {
        Self { tokens: Some(store) }
    }

    /// The caller's name for the audit log if it may do what `needs` allows: its token's
    /// name. A missing, unknown or revoked token is `UNAUTHENTICATED`; a token whose role is
    /// below `needs` is `PERMISSION_DENIED`.
    pub async fn check<T>(&self, request: &Request<T>, needs: Role) -> Result<String, Status> {
        self.check_for(request, needs, false).await
    }

    /// [`Self::check`] for `CaptureService`: the token must also have been created with
    /// `--capture`, or be an admin's (packets reveal what policies never show).
    pub async fn check_capture<T>(&self, request: &Request<T>) -> Result<String, Status> {
        self.check_for(request, Role::Viewer, true).await
    }

    async fn check_for<T>(&self, request: &Request<T>, needs: Role, capture: bool) -> Result<String, Status> {
        let Some(store) = &self.tokens else { return Ok(crate::api::actor(request)) };
        let value = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("a token is required: authorization: Bearer TOKEN"))?;
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer TOKEN`"))?;
        let token = store
            .token_by_secret(&secret_hash(secret))
            .await?
            .filter(|t| t.revoked_at.is_none())
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?;
        if token.role < needs {
            return Err(Status::permission_denied(format!(
                "token {:?} has role {}; this call needs {}",
                token.name,
                token.role.as_str(),
                needs.as_str()
            )));
        }
        if capture && !token.capture && token.role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "token {:?} may not capture packets: create one with `palisade-server token create --capture`",
                token.name
            )));
        }
        Ok(token.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_and_spell() {
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        for role in [Role::Viewer, Role::Editor, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn secrets_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(secret_hash(&a), secret_hash(&a));
        assert_ne!(secret_hash(&a), secret_hash(&b));
    }
}
