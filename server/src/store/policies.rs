//! Policies and their immutable revisions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use palisade_proto::{document::PolicyDocument, v1};
use prost::Message as _;
use sqlx::{Postgres, Row as _, Transaction, postgres::PgRow};

use super::{GENERATION_CHANNEL, Store, timestamp};
use crate::error::ApiError;

/// Result of an apply.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// The policy as stored (or as it would be stored, for a dry run).
    pub stored: v1::StoredPolicy,
    /// Whether a new revision was (or would be) written.
    pub changed: bool,
    /// Whether the name was not live before.
    pub created: bool,
}

/// Canonical encoding and its hex SHA-256. Maps are BTreeMaps, so the encoding is stable.
fn canonical(policy: &v1::Policy) -> (Vec<u8>, String) {
    let bytes = policy.encode_to_vec();
    let digest = palisade_proto::sha256_hex(&bytes);
    (bytes, digest)
}

fn decode(name: &str, bytes: &[u8]) -> Result<v1::Policy, ApiError> {
    v1::Policy::decode(bytes).map_err(|e| ApiError::Corrupt(format!("policy {name}: {e}")))
}

fn to_json(policy: &v1::Policy) -> Result<serde_json::Value, ApiError> {
    let doc = PolicyDocument::from_proto(policy).map_err(|e| ApiError::Corrupt(e.to_string()))?;
    serde_json::to_value(doc).map_err(|e| ApiError::Corrupt(e.to_string()))
}

const STORED_COLUMNS: &str =
    "p.name, p.created_at, r.revision, r.spec, r.digest, r.created_at AS updated_at, r.created_by";

fn stored_from_row(row: &PgRow) -> Result<v1::StoredPolicy, ApiError> {
    let name: String = row.try_get("name")?;
    let spec: Vec<u8> = row.try_get("spec")?;
    Ok(v1::StoredPolicy {
        policy: Some(decode(&name, &spec)?),
        revision: row.try_get::<i64, _>("revision")? as u64,
        digest: row.try_get("digest")?,
        created_at: Some(timestamp(row.try_get("created_at")?)),
        updated_at: Some(timestamp(row.try_get("updated_at")?)),
        updated_by: row.try_get("created_by")?,
    })
}

/// Bumps the global generation and announces it at commit.
pub(super) async fn bump_generation(tx: &mut Transaction<'_, Postgres>) -> Result<i64, sqlx::Error> {
    let generation: i64 =
        sqlx::query_scalar("UPDATE policy_generation SET generation = generation + 1 RETURNING generation")
            .fetch_one(&mut **tx)
            .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(GENERATION_CHANNEL)
        .bind(generation.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(generation)
}

async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    actor: &str,
    action: &str,
    name: &str,
    revision: i64,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, object_kind, object_name, revision, details) \
         VALUES ($1, $2, 'policy', $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(name)
    .bind(revision)
    .bind(details)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn check_expected(name: &str, expected: Option<u64>, actual: u64) -> Result<(), ApiError> {
    match expected {
        Some(expected) if expected != actual => {
            Err(ApiError::RevisionMismatch { name: name.to_owned(), expected, actual })
        }
        _ => Ok(()),
    }
}

impl Store {
    /// Stores `policy` (already validated and normalised) as a new revision of its name,
    /// unless it equals the current revision. One transaction; a dry run rolls it back.
    pub async fn apply_policy(
        &self,
        policy: &v1::Policy,
        expected_revision: Option<u64>,
        dry_run: bool,
        actor: &str,
    ) -> Result<ApplyOutcome, ApiError> {
        let mut tx = self.pool.begin().await?;
        let outcome = apply_in(&mut tx, policy, expected_revision, actor, &mut None).await?;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
            if outcome.changed {
                let (name, revision) = (&policy.name, outcome.stored.revision);
                tracing::info!(policy = name, revision, actor, "policy stored");
            }
        }
        Ok(outcome)
    }

    /// Stores several policies (validated, distinct names) in one transaction and at most
    /// one new policy generation: all or nothing. Rows are locked in name order, so two
    /// batches never deadlock. On failure, the index of the policy that failed.
    pub async fn apply_policies(
        &self,
        policies: &[(v1::Policy, Option<u64>)],
        dry_run: bool,
        actor: &str,
    ) -> Result<Vec<ApplyOutcome>, (usize, ApiError)> {
        let mut order: Vec<usize> = (0..policies.len()).collect();
        order.sort_by(|a, b| policies[*a].0.name.cmp(&policies[*b].0.name));
        let mut tx = self.pool.begin().await.map_err(|e| (0, e.into()))?;
        // Every policy row first, in name order, then (at the first change) the generation
        // row: the order a single apply or delete takes them in, so no two writers wait on
        // each other in a cycle.
        let mut names: Vec<&str> = policies.iter().map(|(p, _)| p.name.as_str()).collect();
        names.sort_unstable();
        sqlx::query(
            "INSERT INTO policies (name, current_revision, deleted) \
             SELECT unnest($1::text[]), 0, true ON CONFLICT (name) DO NOTHING",
        )
        .bind(&names)
        .execute(&mut *tx)
        .await
        .map_err(|e| (0, e.into()))?;
        sqlx::query("SELECT 1 FROM policies WHERE name = ANY($1) ORDER BY name FOR UPDATE")
            .bind(&names)
            .execute(&mut *tx)
            .await
            .map_err(|e| (0, e.into()))?;
        let mut generation = None;
        let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; policies.len()];
        for i in order {
            let (policy, expected) = &policies[i];
            outcomes[i] = Some(apply_in(&mut tx, policy, *expected, actor, &mut generation).await.map_err(|e| (i, e))?);
        }
        if dry_run {
            tx.rollback().await.map_err(|e| (0, e.into()))?;
        } else {
            tx.commit().await.map_err(|e| (0, e.into()))?;
            let changed = outcomes.iter().flatten().filter(|o| o.changed).count();
            tracing::info!(policies = policies.len(), changed, ?generation, actor, "policies stored");
        }
        Ok(outcomes.into_iter().flatten().collect())
    }
}

/// Stores `policy` in `tx` unless it equals the current revision; the first change in the
/// transaction bumps the policy generation (`generation`), later ones reuse it.
async fn apply_in(
    tx: &mut Transaction<'_, Postgres>,
    policy: &v1::Policy,
    expected_revision: Option<u64>,
    actor: &str,
    generation: &mut Option<i64>,
) -> Result<ApplyOutcome, ApiError> {
    {
        let name = policy.name.as_str();
        let (spec, digest) = canonical(policy);
        // Insert a placeholder (revision 0, deleted) so that concurrent creates of the same
        // name serialise on the row; it disappears if this transaction rolls back.
        let inserted = sqlx::query(
            "INSERT INTO policies (name, current_revision, deleted) VALUES ($1, 0, true) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        let current = if inserted {
            None
        } else {
            // Lock first, read second: under READ COMMITTED a locking join would re-check
            // the join against the pre-lock revision row and return nothing after a
            // concurrent update. The next statement takes a fresh snapshot.
            sqlx::query("SELECT 1 FROM policies WHERE name = $1 FOR UPDATE").bind(name).execute(&mut **tx).await?;
            sqlx::query(dynamic_sql!(
                "SELECT {STORED_COLUMNS}, p.deleted FROM policies p \
                 JOIN policy_revisions r ON r.policy_name = p.name AND r.revision = p.current_revision \
                 WHERE p.name = $1"
            ))
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
        };
        let (current_revision, live_digest) = match &current {
            None => (0_i64, None),
            Some(row) => {
                let deleted: bool = row.try_get("deleted")?;
                let digest: Option<String> = row.try_get("digest")?;
                (row.try_get("revision")?, if deleted { None } else { digest })
            }
        };
        let live = live_digest.is_some();
        check_expected(name, expected_revision, if live { current_revision as u64 } else { 0 })?;
        if live_digest.as_deref() == Some(digest.as_str()) {
            let row = current.as_ref().ok_or_else(|| ApiError::Corrupt("live policy without row".into()))?;
            return Ok(ApplyOutcome { stored: stored_from_row(row)?, changed: false, created: false });
        }
        let revision = current_revision + 1;
        let kind = if live { "updated" } else { "created" };
        let generation = match *generation {
            Some(g) => g,
            None => *generation.insert(bump_generation(tx).await?),
        };
        let labels = serde_json::to_value(&policy.labels).map_err(|e| ApiError::Corrupt(e.to_string()))?;
        let created_at: DateTime<Utc> = sqlx::query_scalar(
            "UPDATE policies SET current_revision = $2, deleted = false, labels = $3, updated_at = now() \
             WHERE name = $1 RETURNING created_at",
        )
        .bind(name)
        .bind(revision)
        .bind(labels)
        .fetch_one(&mut **tx)
        .await?;
        let updated_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO policy_revisions (policy_name, revision, kind, spec, spec_json, digest, created_by, generation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING created_at",
        )
        .bind(name)
        .bind(revision)
        .bind(kind)
        .bind(&spec)
        .bind(to_json(policy)?)
        .bind(&digest)
        .bind(actor)
        .bind(generation)
        .fetch_one(&mut **tx)
        .await?;
        audit(
            tx,
            actor,
            &format!("policy.{kind}"),
            name,
            revision,
            serde_json::json!({ "digest": digest, "generation": generation }),
        )
        .await?;
        Ok(ApplyOutcome {
            stored: v1::StoredPolicy {
                policy: Some(policy.clone()),
                revision: revision as u64,
                digest,
                created_at: Some(timestamp(created_at)),
                updated_at: Some(timestamp(updated_at)),
                updated_by: actor.to_owned(),
            },
            changed: true,
            created: !live,
        })
    }
}

impl Store {
    /// The current revision of a live policy, or a given non-deletion revision.
    pub async fn get_policy(&self, name: &str, revision: Option<u64>) -> Result<v1::StoredPolicy, ApiError> {
        let row = match revision {
            None => {
                sqlx::query(dynamic_sql!(
                    "SELECT {STORED_COLUMNS} FROM policies p \
                     JOIN policy_revisions r ON r.policy_name = p.name AND r.revision = p.current_revision \
                     WHERE p.name = $1 AND NOT p.deleted"
                ))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
            }
            Some(revision) => {
                sqlx::query(dynamic_sql!(
                    "SELECT {STORED_COLUMNS} FROM policies p \
                     JOIN policy_revisions r ON r.policy_name = p.name \
                     WHERE p.name = $1 AND r.revision = $2 AND r.kind <> 'deleted'"
                ))
                .bind(name)
                .bind(revision as i64)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        let row = row.ok_or_else(|| ApiError::NotFound { kind: "policy", name: name.to_owned() })?;
        stored_from_row(&row)
    }

    /// Live policies with names after `after`, ordered by name, whose labels contain
    /// `selector`. Returns at most `limit` and whether more exist.
    pub async fn list_policies(
        &self,
        selector: &BTreeMap<String, String>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<v1::StoredPolicy>, bool), ApiError> {
        let selector = serde_json::to_value(selector).map_err(|e| ApiError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(dynamic_sql!(
            "SELECT {STORED_COLUMNS} FROM policies p \
             JOIN policy_revisions r ON r.policy_name = p.name AND r.revision = p.current_revision \
             WHERE NOT p.deleted AND p.labels @> $1 AND ($2::text IS NULL OR p.name > $2) \
             ORDER BY p.name LIMIT $3"
        ))
        .bind(selector)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let policies = rows.iter().take(limit as usize).map(stored_from_row).collect::<Result<_, _>>()?;
        Ok((policies, more))
    }

    /// Deletes a live policy, recording a deletion revision. Returns its revision number.
    pub async fn delete_policy(
        &self,
        name: &str,
        expected_revision: Option<u64>,
        actor: &str,
    ) -> Result<u64, ApiError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(i64, bool)> =
            sqlx::query_as("SELECT current_revision, deleted FROM policies WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((current, false)) = row else {
            return Err(ApiError::NotFound { kind: "policy", name: name.to_owned() });
        };
        check_expected(name, expected_revision, current as u64)?;
        let revision = current + 1;
        let generation = bump_generation(&mut tx).await?;
        sqlx::query("UPDATE policies SET current_revision = $2, deleted = true, updated_at = now() WHERE name = $1")
            .bind(name)
            .bind(revision)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO policy_revisions (policy_name, revision, kind, created_by, generation) \
             VALUES ($1, $2, 'deleted', $3, $4)",
        )
        .bind(name)
        .bind(revision)
        .bind(actor)
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        audit(&mut tx, actor, "policy.deleted", name, revision, serde_json::json!({ "generation": generation }))
            .await?;
        tx.commit().await?;
        tracing::info!(policy = name, revision, generation, actor, "policy deleted");
        Ok(revision as u64)
    }

    /// The global generation and every live policy with its revision, read in one snapshot.
    pub async fn live_policies(&self) -> Result<(u64, Vec<(v1::Policy, u64)>), ApiError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let generation: i64 =
            sqlx::query_scalar("SELECT generation FROM policy_generation").fetch_one(&mut *tx).await?;
        let rows: Vec<(String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT p.name, r.spec, r.revision FROM policies p \
             JOIN policy_revisions r ON r.policy_name = p.name AND r.revision = p.current_revision \
             WHERE NOT p.deleted ORDER BY p.name",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let policies = rows
            .iter()
            .map(|(name, spec, revision)| Ok((decode(name, spec)?, *revision as u64)))
            .collect::<Result<_, ApiError>>()?;
        Ok((generation as u64, policies))
    }

    /// The specs of exactly these `(name, revision)` pairs (a bundle's policies), in the
    /// order given. A pair that is not stored is `Corrupt`: bundles only name stored ones.
    pub async fn policy_revisions(&self, wanted: &[(String, u64)]) -> Result<Vec<(v1::Policy, u64)>, ApiError> {
        let names: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
        let revisions: Vec<i64> = wanted.iter().map(|(_, r)| *r as i64).collect();
        let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT r.policy_name, r.revision, r.spec FROM policy_revisions r \
             JOIN unnest($1::text[], $2::bigint[]) AS w(name, revision) \
               ON r.policy_name = w.name AND r.revision = w.revision \
             WHERE r.spec IS NOT NULL",
        )
        .bind(&names)
        .bind(&revisions)
        .fetch_all(&self.pool)
        .await?;
        let mut found: std::collections::HashMap<(String, u64), Vec<u8>> =
            rows.into_iter().map(|(n, r, spec)| ((n, r as u64), spec)).collect();
        wanted
            .iter()
            .map(|(name, revision)| {
                let spec = found
                    .remove(&(name.clone(), *revision))
                    .ok_or_else(|| ApiError::Corrupt(format!("policy {name} revision {revision} is not stored")))?;
                Ok((decode(name, &spec)?, *revision))
            })
            .collect()
    }

    /// What a rollout of `name` at `revision` (default: current) wants: the revision, its
    /// spec (`None` when it deletes the policy), and the spec whose node selector says which
    /// nodes it concerns (for a deletion, the last live revision's).
    pub async fn rollout_target(
        &self,
        name: &str,
        revision: Option<u64>,
    ) -> Result<(u64, Option<v1::Policy>, v1::Policy, DateTime<Utc>), ApiError> {
        let not_found = || ApiError::NotFound { kind: "policy", name: name.to_owned() };
        let revision = match revision {
            Some(r) => r as i64,
            None => sqlx::query_scalar("SELECT current_revision FROM policies WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(not_found)?,
        };
        let rows: Vec<(i64, Option<Vec<u8>>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT revision, spec, created_at FROM policy_revisions WHERE policy_name = $1 AND revision <= $2 \
             AND (revision = $2 OR spec IS NOT NULL) ORDER BY revision DESC LIMIT 2",
        )
        .bind(name)
        .bind(revision)
        .fetch_all(&self.pool)
        .await?;
        let Some((found, spec, committed)) = rows.first() else { return Err(not_found()) };
        if *found != revision {
            return Err(ApiError::NotFound { kind: "policy revision", name: format!("{name}@{revision}") });
        }
        let target = spec.as_deref().map(|s| decode(name, s)).transpose()?;
        let selector = match &target {
            Some(p) => p.clone(),
            None => match rows.get(1) {
                Some((_, Some(spec), _)) => decode(name, spec)?,
                _ => {
                    return Err(ApiError::Corrupt(format!(
                        "policy {name}: a deletion without a live revision before it"
                    )));
                }
            },
        };
        Ok((revision as u64, target, selector, *committed))
    }

    /// When each live policy's current revision was committed.
    pub async fn current_revision_times(&self) -> Result<std::collections::HashMap<String, DateTime<Utc>>, ApiError> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT p.name, r.created_at FROM policies p \
             JOIN policy_revisions r ON r.policy_name = p.name AND r.revision = p.current_revision \
             WHERE NOT p.deleted",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Revisions of a policy (live or deleted) older than `before`, newest first.
    pub async fn list_revisions(
        &self,
        name: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<v1::PolicyRevision>, bool), ApiError> {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM policies WHERE name = $1)")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Err(ApiError::NotFound { kind: "policy", name: name.to_owned() });
        }
        let rows = sqlx::query(
            "SELECT revision, kind, spec, digest, created_at, created_by FROM policy_revisions \
             WHERE policy_name = $1 AND ($2::bigint IS NULL OR revision < $2) \
             ORDER BY revision DESC LIMIT $3",
        )
        .bind(name)
        .bind(before.map(|b| b as i64))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let revisions = rows
            .iter()
            .take(limit as usize)
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let spec: Option<Vec<u8>> = row.try_get("spec")?;
                Ok(v1::PolicyRevision {
                    revision: row.try_get::<i64, _>("revision")? as u64,
                    kind: match kind.as_str() {
                        "created" => v1::RevisionKind::Created,
                        "updated" => v1::RevisionKind::Updated,
                        _ => v1::RevisionKind::Deleted,
                    } as i32,
                    policy: spec.map(|s| decode(name, &s)).transpose()?,
                    digest: row.try_get::<Option<String>, _>("digest")?.unwrap_or_default(),
                    created_at: Some(timestamp(row.try_get("created_at")?)),
                    created_by: row.try_get("created_by")?,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok((revisions, more))
    }
}

#[cfg(test)]
mod tests;
