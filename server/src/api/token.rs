//! `TokenService`: admins list and revoke tokens (they are created on the server's host with
//! `palisade-server token create`, which prints the secret once).

use palisade_proto::v1::{self, token_service_server::TokenService};
use tonic::{Request, Response, Status};

use crate::{
    auth::{Auth, Role},
    error::ApiError,
    store::Store,
};

/// Token administration over the store.
#[derive(Debug, Clone)]
pub struct TokenApi {
    store: Store,
    auth: Auth,
}

impl TokenApi {
    /// Serves tokens from `store` to callers `auth` admits as admins.
    pub fn new(store: Store, auth: Auth) -> Self {
        Self { store, auth }
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        self.auth.check(&request, Role::Admin).await?;
        let tokens = self.store.list_tokens().await?.iter().map(crate::store::StoredToken::to_proto).collect();
        Ok(Response::new(v1::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let actor = self.auth.check(&request, Role::Admin).await?;
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(ApiError::invalid("name", "must not be empty").into());
        }
        let token = self.store.revoke_token(&name, &actor).await?;
        Ok(Response::new(v1::RevokeTokenResponse { token: Some(token.to_proto()) }))
    }
}
