//! gRPC service implementations: convert requests, call the store, map errors.

pub mod agent;
pub mod capture;
pub mod event;
pub mod explain;
pub mod flow;
pub mod node;
pub mod policy;
pub mod rollout;
pub mod token;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use palisade_proto::ACTOR_METADATA_KEY;
use tonic::Request;

use crate::error::ApiError;

/// Default page size of list calls.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size of list calls.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Who performs a request on a `--dev` server (no tokens): the `palisade-actor` metadata,
/// else "anonymous" with the peer. With tokens, [`crate::auth::Auth::check`] names the caller.
pub fn actor<T>(request: &Request<T>) -> String {
    let named = request
        .metadata()
        .get(ACTOR_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect::<String>())
        .filter(|s| !s.is_empty());
    named.unwrap_or_else(|| match request.remote_addr() {
        Some(addr) => format!("anonymous@{addr}"),
        None => "anonymous".to_owned(),
    })
}

/// Checks a page size: 0 means the default.
pub fn page_size(size: u32) -> Result<u32, ApiError> {
    match size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => Ok(size),
        _ => Err(ApiError::invalid("page_size", format!("{size} is above the limit of {MAX_PAGE_SIZE}"))),
    }
}

/// Encodes a pagination cursor. The kind prefix stops a token from one list being used on
/// another.
pub fn encode_token(kind: &str, cursor: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{cursor}"))
}

/// Decodes a pagination cursor made by [`encode_token`] with the same kind.
pub fn decode_token(kind: &str, token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ApiError::invalid("page_token", "not a token returned by this call");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    match text.split_once(':') {
        Some((k, cursor)) if k == kind => Ok(Some(cursor.to_owned())),
        _ => Err(invalid()),
    }
}

/// Decodes a numeric cursor.
pub fn decode_number_token(kind: &str, token: &str) -> Result<Option<u64>, ApiError> {
    decode_token(kind, token)?
        .map(|c| c.parse().map_err(|_| ApiError::invalid("page_token", "not a token returned by this call")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_rejects_other_kinds() {
        let token = encode_token("policy", "web-1");
        assert_eq!(decode_token("policy", &token).expect("valid"), Some("web-1".to_owned()));
        assert!(decode_token("node", &token).is_err());
        assert!(decode_token("policy", "%%%").is_err());
        assert_eq!(decode_token("policy", "").expect("empty"), None);
        assert!(decode_number_token("event", &encode_token("event", "x")).is_err());
    }

    #[test]
    fn page_size_defaults_and_limits() {
        assert_eq!(page_size(0).expect("default"), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).expect("ok"), 7);
        assert!(page_size(MAX_PAGE_SIZE + 1).is_err());
    }
}
