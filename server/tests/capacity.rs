//! Capacity-aware apply: a policy whose bundle would exceed a limit — alone, or together with
//! the policies a registered node already holds — is rejected at apply time with the numbers.

use std::collections::BTreeMap;

use palisade_compiler::{compile, policy::model::PolicySet, program::KernelOffsets};
use palisade_proto::{
    document,
    v1::{self, agent_service_client::AgentServiceClient, policy_service_client::PolicyServiceClient},
};
use palisade_server::embedded::EmbeddedServer;
use sqlx::PgPool;
use tonic::Code;

fn doc(name: &str, base_port: u32, ranges: u32) -> String {
    // Ranges that start and end inside 256-port chunks need port nodes and table cells.
    let ports: Vec<String> =
        (0..ranges).map(|i| format!("\"{}-{}\"", base_port + i * 100 + 1, base_port + i * 100 + 77)).collect();
    format!(
        "name: {name}\nnode_selector: {{match_labels: {{role: web}}}}\nnetwork: {{connect: {{rules: [{{id: r, action: deny, cidrs: [10.0.0.0/8], ports: [{}]}}]}}}}",
        ports.join(", ")
    )
}

/// The map with the most filled entries in the bundle of `docs`, and that count.
fn largest_map(docs: &[&str]) -> (String, u32) {
    let policies: Vec<v1::Policy> = docs.iter().map(|d| document::parse(d).expect("parses").to_proto()).collect();
    let set = PolicySet::new(policies.iter().map(|p| (p, 1)), Vec::new()).expect("model");
    let compiled = compile(&set, KernelOffsets::LINUX_6_12).expect("compiles");
    let m = compiled.content.maps.iter().max_by_key(|m| m.filled()).expect("maps");
    (m.name.clone(), m.filled() as u32)
}

fn port_entries(docs: &[&str]) -> u32 {
    largest_map(docs).1
}

/// Registers a node labelled role=web; keep the result alive to hold the stream.
async fn hello_web(
    server: &EmbeddedServer,
    name: &str,
) -> (tokio::sync::mpsc::Sender<v1::SyncRequest>, tonic::Response<tonic::Streaming<v1::SyncResponse>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let hello = v1::AgentHello {
        node_name: name.into(),
        labels: BTreeMap::from([("role".to_owned(), "web".to_owned())]),
        ..Default::default()
    };
    tx.send(v1::SyncRequest { message: Some(v1::sync_request::Message::Hello(hello)) }).await.expect("hello");
    let stream = AgentServiceClient::new(server.node(name).await)
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("sync");
    (tx, stream)
}

fn apply(document: String) -> v1::ApplyPolicyRequest {
    v1::ApplyPolicyRequest { source: Some(v1::apply_policy_request::Source::Document(document)), ..Default::default() }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_policy_over_capacity_is_rejected_with_numbers_alone_and_on_a_node(pool: PgPool) {
    let (a, b) = (doc("a", 1000, 8), doc("b", 5000, 8));
    let (alone_a, alone_b, together) = (port_entries(&[&a]), port_entries(&[&b]), port_entries(&[&a, &b]));
    assert!(together > alone_a.max(alone_b), "the combined set must be larger");
    let limit = alone_a.max(alone_b);
    let mut options = palisade_server::Options::default();
    options.limits.max_map_entries = limit;
    let server = EmbeddedServer::start_with(pool.clone(), options).await.expect("server");
    let mut policies = PolicyServiceClient::new(server.admin().await);

    // Too big on its own.
    let big = doc("big", 10_000, 16);
    assert!(port_entries(&[&big]) > limit);
    let err = policies.apply_policy(apply(big)).await.expect_err("over capacity");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("the policy alone"), "{}", err.message());
    assert!(err.message().contains(&format!("the limit is {limit}")), "{}", err.message());

    // Each fits alone; a node with role=web would hold both, which does not fit.
    let _session = hello_web(&server, "web-1").await;
    let a_doc = a.clone();
    policies.apply_policy(apply(a)).await.expect("a fits");
    let err = policies.apply_policy(apply(b.clone())).await.expect_err("a + b does not fit on web-1");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("node web-1"), "{}", err.message());
    let (map, _) = largest_map(&[&a_doc, &b]);
    assert!(err.message().contains(&format!("map {map} needs {together} entries")), "{}", err.message());
    let stored: Vec<String> = sqlx::query_scalar("SELECT name FROM policies").fetch_all(&pool).await.expect("names");
    assert_eq!(stored, ["a"], "nothing of the rejected policy is stored");
    // Without the node selector match it fits.
    let elsewhere = b.replace("role: web", "role: db");
    policies.apply_policy(apply(elsewhere)).await.expect("b on other nodes fits");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn node_whose_policy_set_is_over_capacity_shows_why_it_gets_no_bundle(pool: PgPool) {
    let (a, b) = (doc("a", 1000, 8), doc("b", 5000, 8));
    let mut options = palisade_server::Options::default();
    options.limits.max_map_entries = port_entries(&[&a]).max(port_entries(&[&b]));
    let server = EmbeddedServer::start_with(pool, options).await.expect("server");
    let mut policies = PolicyServiceClient::new(server.admin().await);
    // No node is registered yet, so each policy only has to fit alone.
    policies.apply_policy(apply(a)).await.expect("a fits");
    policies.apply_policy(apply(b)).await.expect("b fits");
    let _session = hello_web(&server, "web-2").await;
    let nodes = v1::node_service_client::NodeServiceClient::new(server.admin().await);
    let error =
        palisade_testkit::eventually("the build failure to be recorded", std::time::Duration::from_secs(10), || {
            let mut nodes = nodes.clone();
            async move {
                let node =
                    nodes.get_node(v1::GetNodeRequest { name: "web-2".into() }).await.expect("get").into_inner().node;
                node.and_then(|n| n.last_error)
            }
        })
        .await;
    assert!(error.message.contains("could not build"), "{}", error.message);
    assert!(error.message.contains(&largest_map(&[&doc("a", 1000, 8), &doc("b", 5000, 8)]).0), "{}", error.message);
}
