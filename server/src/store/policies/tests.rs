//! Store tests for policies, against real PostgreSQL.

use std::collections::BTreeMap;

use palisade_proto::{document, v1};
use sqlx::PgPool;

use crate::{error::ApiError, store::Store, validate};

fn policy(yaml: &str) -> v1::Policy {
    validate::policy(&document::parse(yaml).expect("test document parses").to_proto()).expect("test policy is valid")
}

fn web(port: u32) -> v1::Policy {
    policy(&format!(
        "name: web\nlabels: {{team: web}}\nnetwork: {{connect: {{rules: [{{id: block, action: deny, ports: [{port}]}}]}}}}"
    ))
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn apply_policy_new_name_creates_revision_one_with_audit(pool: PgPool) {
    let store = Store::new(pool.clone());
    let out = store.apply_policy(&web(80), None, false, "alice").await.expect("apply");
    assert!(out.changed && out.created);
    assert_eq!(out.stored.revision, 1);
    let got = store.get_policy("web", None).await.expect("get");
    assert_eq!(got.policy, Some(web(80)));
    assert_eq!(got.digest, out.stored.digest);
    assert_eq!(got.updated_by, "alice");
    let audit: (String, String, String, i64) =
        sqlx::query_as("SELECT actor, action, object_name, revision FROM audit_log")
            .fetch_one(&pool)
            .await
            .expect("audit");
    assert_eq!(audit, ("alice".into(), "policy.created".into(), "web".into(), 1));
    assert_eq!(store.generation().await.expect("generation"), 1);
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn apply_policy_identical_content_changes_nothing(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.apply_policy(&web(80), None, false, "alice").await.expect("apply");
    let again = store.apply_policy(&web(80), None, false, "bob").await.expect("apply again");
    assert!(!again.changed);
    assert_eq!(again.stored.revision, 1);
    assert_eq!(count(&pool, "policy_revisions").await, 1);
    assert_eq!(count(&pool, "audit_log").await, 1);
    assert_eq!(store.generation().await.expect("generation"), 1);
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn apply_policy_update_appends_revision_and_history(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.apply_policy(&web(80), None, false, "alice").await.expect("create");
    let out = store.apply_policy(&web(443), Some(1), false, "bob").await.expect("update");
    assert!(out.changed && !out.created);
    assert_eq!(out.stored.revision, 2);
    let (history, more) = store.list_revisions("web", None, 10).await.expect("history");
    assert!(!more);
    let kinds: Vec<_> = history.iter().map(|r| (r.revision, r.kind, r.created_by.as_str())).collect();
    assert_eq!(
        kinds,
        vec![(2, v1::RevisionKind::Updated as i32, "bob"), (1, v1::RevisionKind::Created as i32, "alice")]
    );
    assert_eq!(history[1].policy, Some(web(80)));
    assert_eq!(store.get_policy("web", Some(1)).await.expect("old revision").policy, Some(web(80)));
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn apply_policy_stale_expected_revision_is_rejected_and_stores_nothing(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.apply_policy(&web(80), None, false, "alice").await.expect("create");
    let err = store.apply_policy(&web(443), Some(5), false, "bob").await.expect_err("stale");
    assert!(matches!(err, ApiError::RevisionMismatch { expected: 5, actual: 1, .. }), "{err:?}");
    let err = store.apply_policy(&web(443), Some(0), false, "bob").await.expect_err("must not exist");
    assert!(matches!(err, ApiError::RevisionMismatch { expected: 0, actual: 1, .. }), "{err:?}");
    assert_eq!(count(&pool, "policy_revisions").await, 1);
    assert_eq!(count(&pool, "audit_log").await, 1);
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn apply_policy_dry_run_stores_nothing(pool: PgPool) {
    let store = Store::new(pool.clone());
    let out = store.apply_policy(&web(80), None, true, "alice").await.expect("dry run");
    assert!(out.changed && out.created);
    assert_eq!(out.stored.revision, 1);
    for table in ["policies", "policy_revisions", "audit_log"] {
        assert_eq!(count(&pool, table).await, 0, "{table}");
    }
    assert_eq!(store.generation().await.expect("generation"), 0);
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn delete_policy_records_revision_and_reapply_continues_numbering(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.apply_policy(&web(80), None, false, "alice").await.expect("create");
    assert!(matches!(store.delete_policy("web", Some(7), "bob").await, Err(ApiError::RevisionMismatch { .. })));
    assert_eq!(store.delete_policy("web", Some(1), "bob").await.expect("delete"), 2);
    assert!(matches!(store.get_policy("web", None).await, Err(ApiError::NotFound { .. })));
    assert!(matches!(store.delete_policy("web", None, "bob").await, Err(ApiError::NotFound { .. })));
    assert!(matches!(store.get_policy("web", Some(2)).await, Err(ApiError::NotFound { .. })));
    let out = store.apply_policy(&web(80), Some(0), false, "carol").await.expect("re-create");
    assert!(out.created);
    assert_eq!(out.stored.revision, 3);
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id").fetch_all(&pool).await.expect("audit");
    assert_eq!(actions, ["policy.created", "policy.deleted", "policy.created"]);
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn list_policies_filters_by_labels_and_pages(pool: PgPool) {
    let store = Store::new(pool.clone());
    for i in 0..5 {
        let team = if i % 2 == 0 { "a" } else { "b" };
        store
            .apply_policy(&policy(&format!("name: p{i}\nlabels: {{team: {team}}}")), None, false, "t")
            .await
            .expect("apply");
    }
    let team_a = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
    let (page, more) = store.list_policies(&team_a, None, 2).await.expect("page 1");
    let names: Vec<_> = page.iter().filter_map(|p| p.policy.as_ref()).map(|p| p.name.clone()).collect();
    assert_eq!((names, more), (vec!["p0".to_owned(), "p2".to_owned()], true));
    let (page, more) = store.list_policies(&team_a, Some("p2"), 2).await.expect("page 2");
    let names: Vec<_> = page.iter().filter_map(|p| p.policy.as_ref()).map(|p| p.name.clone()).collect();
    assert_eq!((names, more), (vec!["p4".to_owned()], false));
    store.delete_policy("p0", None, "t").await.expect("delete");
    let (all, _) = store.list_policies(&BTreeMap::new(), None, 100).await.expect("all");
    assert_eq!(all.len(), 4, "deleted policies are not listed");
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn apply_policy_concurrent_same_expected_revision_one_wins(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.apply_policy(&web(80), None, false, "alice").await.expect("create");
    let (p81, p82) = (web(81), web(82));
    let (a, b) =
        tokio::join!(store.apply_policy(&p81, Some(1), false, "a"), store.apply_policy(&p82, Some(1), false, "b"));
    let wins = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "a={a:?} b={b:?}");
    assert!([a, b].into_iter().any(|r| matches!(r, Err(ApiError::RevisionMismatch { expected: 1, actual: 2, .. }))));
    assert_eq!(count(&pool, "policy_revisions").await, 2);
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn revisions_and_audit_log_are_immutable(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.apply_policy(&web(80), None, false, "alice").await.expect("create");
    assert!(sqlx::query("UPDATE audit_log SET actor = 'mallory'").execute(&pool).await.is_err());
    assert!(sqlx::query("DELETE FROM audit_log").execute(&pool).await.is_err());
    assert!(sqlx::query("UPDATE policy_revisions SET created_by = 'mallory'").execute(&pool).await.is_err());
    assert_eq!(count(&pool, "audit_log").await, 1);
}
