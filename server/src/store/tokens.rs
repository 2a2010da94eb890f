//! Admin API tokens (hashed secrets, roles, revocation).

use chrono::{DateTime, Utc};
use palisade_proto::v1;

use super::{Store, timestamp};
use crate::{auth::Role, error::ApiError};

/// A stored token, without its secret.
#[derive(Debug, Clone)]
pub struct StoredToken {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Whether it may start and read packet captures (admins always may).
    pub capture: bool,
}

impl StoredToken {
    /// The wire form.
    pub fn to_proto(&self) -> v1::Token {
        v1::Token {
            name: self.name.clone(),
            role: self.role.to_proto() as i32,
            created_at: Some(timestamp(self.created_at)),
            revoked_at: self.revoked_at.map(timestamp),
            capture: self.capture || self.role == Role::Admin,
        }
    }
}

type TokenRow = (String, String, DateTime<Utc>, Option<DateTime<Utc>>, bool);

fn from_row((name, role, created_at, revoked_at, capture): TokenRow) -> Result<StoredToken, ApiError> {
    let role = Role::parse(&role).ok_or_else(|| ApiError::Corrupt(format!("token {name}: role {role:?}")))?;
    Ok(StoredToken { name, role, created_at, revoked_at, capture })
}

impl Store {
    /// Stores a new token named `name` whose secret hashes to `secret_sha256`.
    /// `AlreadyExists` if the name is taken (revoked tokens keep their names).
    pub async fn create_token(&self, name: &str, role: Role, secret_sha256: &[u8]) -> Result<(), ApiError> {
        self.create_token_capturing(name, role, false, secret_sha256).await
    }

    /// [`Self::create_token`], saying whether the token may capture packets.
    pub async fn create_token_capturing(
        &self,
        name: &str,
        role: Role,
        capture: bool,
        secret_sha256: &[u8],
    ) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO tokens (name, role, secret_sha256, capture) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(secret_sha256)
        .bind(capture)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(ApiError::AlreadyExists { kind: "token", name: name.to_owned(), revision: 0 });
        }
        sqlx::query(
            "INSERT INTO audit_log (actor, action, object_kind, object_name, details) \
             VALUES ('palisade-server token create', 'token.created', 'token', $1, $2)",
        )
        .bind(name)
        .bind(serde_json::json!({ "role": role.as_str(), "capture": capture }))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The token whose secret hashes to `secret_sha256`, revoked or not.
    pub async fn token_by_secret(&self, secret_sha256: &[u8]) -> Result<Option<StoredToken>, ApiError> {
        let row: Option<TokenRow> =
            sqlx::query_as("SELECT name, role, created_at, revoked_at, capture FROM tokens WHERE secret_sha256 = $1")
                .bind(secret_sha256)
                .fetch_optional(&self.pool)
                .await?;
        row.map(from_row).transpose()
    }

    /// Every token, by name.
    pub async fn list_tokens(&self) -> Result<Vec<StoredToken>, ApiError> {
        let rows: Vec<TokenRow> =
            sqlx::query_as("SELECT name, role, created_at, revoked_at, capture FROM tokens ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(from_row).collect()
    }

    /// Revokes `name` (revoking a revoked token keeps its first revocation time), recording
    /// `actor` in the audit log.
    pub async fn revoke_token(&self, name: &str, actor: &str) -> Result<StoredToken, ApiError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<TokenRow> = sqlx::query_as(
            "UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1 \
             RETURNING name, role, created_at, revoked_at, capture",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let token = from_row(row.ok_or_else(|| ApiError::NotFound { kind: "token", name: name.to_owned() })?)?;
        sqlx::query(
            "INSERT INTO audit_log (actor, action, object_kind, object_name) VALUES ($1, 'token.revoked', 'token', $2)",
        )
        .bind(actor)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(token)
    }
}
