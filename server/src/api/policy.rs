//! `PolicyService`.

use palisade_proto::{
    document,
    v1::{self, apply_policy_request::Source, compile_policy_request::Target, policy_service_server::PolicyService},
};
use tonic::{Request, Response, Status};

use super::{decode_number_token, decode_token, encode_token, page_size};
use palisade_compiler::policy::model;

use crate::{
    auth::{Auth, Role},
    bundler::{self, DEFAULT_OFFSETS},
    error::{ApiError, Violation},
    store::Store,
    validate,
};

/// Most policies in one `ApplyPolicies` call.
pub const MAX_BATCH: usize = 10_000;

/// Parses and validates every entry of a batch; every problem with `policies[i].` paths.
fn check_batch(entries: Vec<v1::ApplyPolicyRequest>) -> Result<Vec<(v1::Policy, Option<u64>)>, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut checked = Vec::with_capacity(entries.len());
    let mut names = std::collections::HashMap::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let prefix = format!("policies[{i}]");
        if violations.len() >= validate::MAX_VIOLATIONS {
            break;
        }
        if entry.dry_run {
            violations.push(Violation::new(format!("{prefix}.dry_run"), "set dry_run on the batch, not on an entry"));
        }
        let policy = match entry.source {
            Some(Source::Policy(policy)) => policy,
            Some(Source::Document(text)) => match document::parse(&text) {
                Ok(doc) => doc.to_proto(),
                Err(e) => {
                    let field =
                        if e.path == "." { format!("{prefix}.document") } else { format!("{prefix}.{}", e.path) };
                    violations.push(Violation::new(field, e.message));
                    continue;
                }
            },
            None => {
                violations.push(Violation::new(format!("{prefix}.source"), "a policy or a document is required"));
                continue;
            }
        };
        match validate::policy(&policy) {
            Ok(policy) => {
                let first = *names.entry(policy.name.clone()).or_insert(i);
                if first != i {
                    violations.push(Violation::new(
                        format!("{prefix}.name"),
                        format!("{:?} is also policies[{first}]: names in a batch must be distinct", policy.name),
                    ));
                }
                checked.push((policy, entry.expected_revision));
            }
            Err(found) => violations
                .extend(found.into_iter().map(|v| Violation::new(format!("{prefix}.{}", v.field), v.description))),
        }
    }
    violations.truncate(validate::MAX_VIOLATIONS);
    if violations.is_empty() { Ok(checked) } else { Err(violations) }
}

/// Policy CRUD over the store.
#[derive(Debug, Clone)]
pub struct PolicyApi {
    store: Store,
    bundler: bundler::Bundler,
    auth: Auth,
}

impl PolicyApi {
    /// Serves policies from `store` to callers `auth` admits, checking capacity with `bundler`.
    pub fn new(store: Store, bundler: bundler::Bundler, auth: Auth) -> Self {
        Self { store, bundler, auth }
    }
}

/// Parses a document source; parse errors become violations with the document's path.
pub fn parse_document(text: &str) -> Result<v1::Policy, ApiError> {
    document::parse(text).map(|d| d.to_proto()).map_err(|e| {
        let field = if e.path == "." { "document".to_owned() } else { e.path };
        ApiError::invalid(field, e.message)
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() { Err(ApiError::invalid("name", "must not be empty")) } else { Ok(()) }
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn apply_policy(
        &self,
        request: Request<v1::ApplyPolicyRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let actor = self.auth.check(&request, Role::Editor).await?;
        let request = request.into_inner();
        let policy = match request.source {
            Some(Source::Policy(policy)) => policy,
            // Parsing is CPU work proportional to the document (up to 8 MiB): off the workers.
            Some(Source::Document(text)) => {
                tokio::task::spawn_blocking(move || parse_document(&text)).await.map_err(ApiError::Task)??
            }
            None => return Err(ApiError::invalid("source", "a policy or a document is required").into()),
        };
        let policy = validate::policy(&policy).map_err(ApiError::Invalid)?;
        self.bundler.check_apply(std::slice::from_ref(&policy)).await?;
        let outcome =
            self.store.apply_policy(&policy, request.expected_revision, request.dry_run, &actor).await.map_err(
                |e| match e {
                    // Create-only (expected revision 0) meeting a live policy is a duplicate.
                    ApiError::RevisionMismatch { name, expected: 0, actual } => {
                        ApiError::AlreadyExists { kind: "policy", name, revision: actual }
                    }
                    other => other,
                },
            )?;
        Ok(Response::new(v1::ApplyPolicyResponse {
            policy: Some(outcome.stored),
            changed: outcome.changed,
            created: outcome.created,
        }))
    }

    async fn apply_policies(
        &self,
        request: Request<v1::ApplyPoliciesRequest>,
    ) -> Result<Response<v1::ApplyPoliciesResponse>, Status> {
        let actor = self.auth.check(&request, Role::Editor).await?;
        let request = request.into_inner();
        if request.policies.is_empty() || request.policies.len() > MAX_BATCH {
            let what = format!("{} policies; give 1 to {MAX_BATCH}", request.policies.len());
            return Err(ApiError::invalid("policies", what).into());
        }
        // Parsing and validation are CPU work proportional to the batch: off the workers.
        let checked = tokio::task::spawn_blocking(move || check_batch(request.policies))
            .await
            .map_err(ApiError::Task)?
            .map_err(ApiError::Invalid)?;
        let policies: Vec<v1::Policy> = checked.iter().map(|(p, _)| p.clone()).collect();
        self.bundler.check_apply(&policies).await?;
        let outcomes =
            self.store.apply_policies(&checked, request.dry_run, &actor).await.map_err(|(_, e)| match e {
                // As for ApplyPolicy: create-only meeting a live policy is a duplicate; a
                // stale revision is ABORTED (naming the policy). Either rolls back the batch.
                ApiError::RevisionMismatch { name, expected: 0, actual } => {
                    ApiError::AlreadyExists { kind: "policy", name, revision: actual }
                }
                other => other,
            })?;
        let results = outcomes
            .into_iter()
            .map(|o| v1::ApplyPolicyResponse { policy: Some(o.stored), changed: o.changed, created: o.created })
            .collect();
        Ok(Response::new(v1::ApplyPoliciesResponse { results }))
    }

    async fn get_policy(
        &self,
        request: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::GetPolicyResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        check_name(&request.name)?;
        let policy = self.store.get_policy(&request.name, request.revision).await?;
        Ok(Response::new(v1::GetPolicyResponse { policy: Some(policy) }))
    }

    async fn list_policies(
        &self,
        request: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::ListPoliciesResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let limit = page_size(request.page_size)?;
        validate::selector("label_selector", &request.label_selector).map_err(ApiError::Invalid)?;
        let after = decode_token("policy", &request.page_token)?;
        let (policies, more) = self.store.list_policies(&request.label_selector, after.as_deref(), limit).await?;
        let next_page_token = match (more, policies.last().and_then(|p| p.policy.as_ref())) {
            (true, Some(last)) => encode_token("policy", &last.name),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListPoliciesResponse { policies, next_page_token }))
    }

    async fn delete_policy(
        &self,
        request: Request<v1::DeletePolicyRequest>,
    ) -> Result<Response<v1::DeletePolicyResponse>, Status> {
        let actor = self.auth.check(&request, Role::Editor).await?;
        let request = request.into_inner();
        check_name(&request.name)?;
        let revision = self.store.delete_policy(&request.name, request.expected_revision, &actor).await?;
        Ok(Response::new(v1::DeletePolicyResponse { revision }))
    }

    async fn list_policy_revisions(
        &self,
        request: Request<v1::ListPolicyRevisionsRequest>,
    ) -> Result<Response<v1::ListPolicyRevisionsResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        check_name(&request.name)?;
        let limit = page_size(request.page_size)?;
        let before = decode_number_token("revision", &request.page_token)?;
        let (revisions, more) = self.store.list_revisions(&request.name, before, limit).await?;
        let next_page_token = match (more, revisions.last()) {
            (true, Some(last)) => encode_token("revision", &last.revision.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListPolicyRevisionsResponse { revisions, next_page_token }))
    }

    async fn compile_policy(
        &self,
        request: Request<v1::CompilePolicyRequest>,
    ) -> Result<Response<v1::CompilePolicyResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let (policies, failsafe, offsets) = match request.target {
            Some(Target::Policy(policy)) => {
                (vec![(validate::policy(&policy).map_err(ApiError::Invalid)?, 0)], Vec::new(), DEFAULT_OFFSETS)
            }
            Some(Target::Document(text)) => {
                let policy = validate::policy(&parse_document(&text)?).map_err(ApiError::Invalid)?;
                (vec![(policy, 0)], Vec::new(), DEFAULT_OFFSETS)
            }
            Some(Target::NodeName(node)) => {
                let context = self.store.node_context(&node).await?;
                let (_, all) = self.store.live_policies().await?;
                let held = all.into_iter().filter(|(p, _)| model::node_selected(p, &context.labels)).collect();
                (held, bundler::failsafe(&context), bundler::offsets(context.features.as_ref()))
            }
            None => return Err(ApiError::invalid("target", "a policy, a document or a node name is required").into()),
        };
        let disassemble = request.disassemble;
        let limits = self.bundler.limits();
        let response = tokio::task::spawn_blocking(move || {
            let (set, compiled) = bundler::compile_set(&policies, failsafe, offsets)?;
            palisade_compiler::limits::check(&compiled, &limits)
                .map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
            Ok::<_, ApiError>(palisade_compiler::bundle::describe(&compiled, &set, disassemble))
        })
        .await
        .map_err(ApiError::Task)??;
        Ok(Response::new(response))
    }
}
