//! Store tests for nodes, against real PostgreSQL.

use std::collections::BTreeMap;

use palisade_proto::v1;
use sqlx::PgPool;

use crate::{error::ApiError, store::Store};

fn hello(name: &str, team: &str, generation: u64) -> v1::AgentHello {
    v1::AgentHello {
        node_name: name.into(),
        labels: BTreeMap::from([("team".to_owned(), team.to_owned())]),
        features: Some(v1::KernelFeatures { kernel_release: "6.18.0".into(), bpf_lsm: true, ..Default::default() }),
        bundle_digest: format!("d{generation}"),
        bundle_generation: generation,
        agent_version: "0.1.0".into(),
        server_endpoints: vec!["127.0.0.1:50051".into()],
        failsafe_ports: vec![22],
        event_stats: None,
        accepts_bundle_parts: true,
    }
}

async fn registrations(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'node.registered' AND object_name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn node_hello_registers_once_and_refreshes_labels_features_and_failsafe(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.node_hello(&hello("n1", "web", 0)).await.expect("register");
    store.node_hello(&hello("n1", "db", 3)).await.expect("re-register");
    assert_eq!(registrations(&pool, "n1").await, 1, "a re-registration is not a new node");
    let node = store.get_node("n1").await.expect("node");
    assert_eq!(node.labels.get("team").map(String::as_str), Some("db"));
    assert_eq!((node.applied_generation, node.applied_digest.as_str()), (3, "d3"), "the hello says what enforces");
    assert!(node.connected);
    assert_eq!(node.features.map(|f| f.kernel_release), Some("6.18.0".into()));
    let context = store.node_context("n1").await.expect("context");
    assert_eq!(context.ports, vec![22]);
    assert_eq!(context.endpoints, vec!["127.0.0.1:50051".to_owned()]);
    assert!(matches!(store.node_context("n2").await, Err(ApiError::NotFound { kind: "node", .. })));
    assert!(matches!(store.get_node("n2").await, Err(ApiError::NotFound { kind: "node", .. })));
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn desired_generation_moves_only_when_the_digest_changes(pool: PgPool) {
    let store = Store::new(pool);
    store.node_hello(&hello("n1", "web", 0)).await.expect("register");
    assert_eq!(store.node_set_desired("n1", "a").await.expect("desired"), 1);
    assert_eq!(store.node_set_desired("n1", "a").await.expect("same digest"), 1);
    assert_eq!(store.node_set_desired("n1", "b").await.expect("new digest"), 2);
    assert!(matches!(store.node_set_desired("ghost", "a").await, Err(ApiError::NotFound { .. })));
    let node = store.get_node("n1").await.expect("node");
    assert_eq!((node.desired_generation, node.desired_digest.as_str()), (2, "b"));
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn a_node_enforcing_a_newer_generation_than_the_database_gets_a_higher_one_next(pool: PgPool) {
    // The database was restored from a backup taken at generation 2; the agent runs 9.
    let store = Store::new(pool);
    store.node_hello(&hello("n1", "web", 0)).await.expect("register");
    assert_eq!(store.node_set_desired("n1", "a").await.expect("desired"), 1);
    assert_eq!(store.node_set_desired("n1", "b").await.expect("desired"), 2);
    store.node_hello(&hello("n1", "web", 9)).await.expect("hello from the future");
    let node = store.get_node("n1").await.expect("node");
    assert_eq!((node.desired_generation, node.desired_digest.as_str()), (9, "d9"), "what the node runs");
    assert_eq!(store.node_set_desired("n1", "b").await.expect("restored policy"), 10, "above what the agent enforces");
    assert_eq!(store.node_set_desired("n1", "d9").await.expect("back to d9"), 11);
    // An agent behind the database (its state was wiped) does not pull the number down.
    store.node_hello(&hello("n1", "web", 0)).await.expect("hello from an empty agent");
    let node = store.get_node("n1").await.expect("node");
    assert_eq!((node.desired_generation, node.desired_digest.as_str()), (11, "d9"));
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn label_changes_on_re_registration_are_audited(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.node_hello(&hello("n1", "web", 0)).await.expect("register");
    store.node_hello(&hello("n1", "web", 1)).await.expect("same labels");
    store.node_hello(&hello("n1", "db", 1)).await.expect("new labels");
    let rows: Vec<(String, String, serde_json::Value)> =
        sqlx::query_as("SELECT actor, action, details FROM audit_log WHERE object_name = 'n1' ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("audit");
    let actions: Vec<&str> = rows.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(actions, ["node.registered", "node.labels_changed"], "{rows:?}");
    let (actor, _, details) = &rows[1];
    assert_eq!(actor, "n1");
    assert_eq!(details["before"]["team"], "web");
    assert_eq!(details["after"]["team"], "db");
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn ack_clears_only_an_older_or_equal_nack_and_disconnect_is_shown(pool: PgPool) {
    let store = Store::new(pool);
    let session = store.node_hello(&hello("n1", "web", 0)).await.expect("register");
    store.node_nack("n1", 5, "d5", "verifier said no").await.expect("nack");
    store.node_ack("n1", 4, "d4").await.expect("ack of an older generation");
    let node = store.get_node("n1").await.expect("node");
    let error = node.last_error.expect("a NACK of a newer generation stays");
    assert_eq!((error.generation, error.digest.as_str(), error.message.as_str()), (5, "d5", "verifier said no"));
    assert_eq!(node.applied_generation, 4);
    store.node_ack("n1", 5, "d5").await.expect("ack");
    let node = store.get_node("n1").await.expect("node");
    assert!(node.last_error.is_none(), "{:?}", node.last_error);
    assert_eq!((node.applied_generation, node.applied_digest.as_str()), (5, "d5"));
    store.node_disconnected("n1", session).await.expect("disconnect");
    assert!(!store.get_node("n1").await.expect("node").connected);
    let stats = v1::EventStats { backlog_full: 7, pending: 3, ..Default::default() };
    store.node_seen("n1", session, Some(&stats)).await.expect("seen");
    store.node_seen("n1", session, None).await.expect("seen without counters");
    assert_eq!(store.get_node("n1").await.expect("node").event_stats, Some(stats), "kept until new counters come");
    assert!(store.get_node("n1").await.expect("node").connected, "heard from again");
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn a_node_not_heard_from_for_the_liveness_window_is_not_connected(pool: PgPool) {
    let store = Store::new(pool.clone());
    store.node_hello(&hello("n1", "web", 0)).await.expect("register");
    sqlx::query("UPDATE nodes SET last_seen = now() - interval '91 seconds' WHERE name = 'n1'")
        .execute(&pool)
        .await
        .expect("age");
    assert!(!store.get_node("n1").await.expect("node").connected, "a replica that died left connected = true");
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn list_nodes_filters_by_labels_and_paginates_by_name(pool: PgPool) {
    let store = Store::new(pool);
    for (name, team) in [("a", "web"), ("b", "db"), ("c", "web"), ("d", "web")] {
        store.node_hello(&hello(name, team, 0)).await.expect("register");
    }
    let web = BTreeMap::from([("team".to_owned(), "web".to_owned())]);
    let (page, more) = store.list_nodes(&web, None, 2).await.expect("page 1");
    assert_eq!(page.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    assert!(more);
    let (page, more) = store.list_nodes(&web, Some("c"), 2).await.expect("page 2");
    assert_eq!(page.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["d"]);
    assert!(!more);
    let (all, _) = store.list_nodes(&BTreeMap::new(), None, 10).await.expect("all");
    assert_eq!(all.len(), 4);
    let contexts = store.node_contexts().await.expect("contexts");
    // a, c and d report the same labels and kernel: one context, named by a.
    assert_eq!(contexts.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a", "b"]);
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn an_old_stream_ending_after_a_new_hello_leaves_the_node_connected(pool: PgPool) {
    // The agent failed over: its new stream (another replica's) said hello before the old
    // one noticed it was gone.
    let store = Store::new(pool);
    let old = store.node_hello(&hello("n1", "web", 0)).await.expect("first stream");
    let new = store.node_hello(&hello("n1", "web", 0)).await.expect("second stream");
    assert!(new > old, "{new} > {old}");
    store.node_disconnected("n1", old).await.expect("old stream ends");
    assert!(store.get_node("n1").await.expect("node").connected, "connected through the new stream");
    store.node_disconnected("n1", new).await.expect("new stream ends");
    assert!(!store.get_node("n1").await.expect("node").connected);
    // A late heartbeat on the old stream does not bring the node back.
    store.node_seen("n1", old, None).await.expect("late heartbeat");
    assert!(!store.get_node("n1").await.expect("node").connected, "the old stream's heartbeat");
    let newest = store.node_hello(&hello("n1", "web", 0)).await.expect("third stream");
    store.node_disconnected("n1", newest).await.expect("ends");
    store.node_seen("n1", newest, None).await.expect("its heartbeat");
    assert!(store.get_node("n1").await.expect("node").connected, "the newest stream's heartbeat");
}
