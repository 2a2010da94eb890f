//! Both daemons' `/metrics`, scraped live after a real deny: the server's request, policy,
//! node, apply→ACK and event series, and the agent's decision, generation, apply, map and
//! per-program series (with the kernel's run-time statistics switched on for the test).
#![allow(
    clippy::float_cmp,
    clippy::cast_precision_loss,
    reason = "the samples compared are small integers, exact in f64"
)]

use std::{net::TcpListener, time::Duration};

use palisade_integration::{Connect, TestAgent, TestCgroup, kernel_tests_enabled, probe};
use palisade_metrics::{sample, scrape};
use palisade_proto::v1::{
    self, apply_policy_request::Source, node_service_client::NodeServiceClient,
    policy_service_client::PolicyServiceClient,
};
use palisade_server::{MetricsListener, embedded::EmbeddedServer};
use palisade_testkit::eventually;
use sqlx::PgPool;

const PROBE: &str = env!("CARGO_BIN_EXE_connect-probe");

fn value(scrape: &str, series: &str) -> f64 {
    sample(scrape, series).unwrap_or_else(|| panic!("no sample {series} in:\n{scrape}"))
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn a_scrape_of_server_and_agent_shows_the_deny_the_rollout_and_the_programs_cost(pool: PgPool) {
    if !kernel_tests_enabled("metrics") {
        return;
    }
    // Run-time statistics while this fd is open (BPF_ENABLE_STATS), not the global sysctl.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let cg = TestCgroup::new("metrics");
    let work = cg.create_child("work");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server_metrics = MetricsListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind metrics");
    let server_addr = server_metrics.local_addr().expect("addr");
    let options = palisade_server::Options { metrics_listener: Some(server_metrics), ..Default::default() };
    let server = EmbeddedServer::start_with(pool, options).await.expect("server");
    let channel = server.admin().await;
    let state = tempfile::tempdir().expect("tempdir");
    let node = format!("metrics-{}", std::process::id());
    let mut config = TestAgent::config(&server, &node, cg.path(), state.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let agent = TestAgent::start(config).await;
    let agent_addr = agent.metrics_addr().expect("the agent serves metrics");

    let nodes = NodeServiceClient::new(channel.clone());
    let applied_after = |after: u64| {
        let (nodes, node) = (nodes.clone(), node.clone());
        eventually("the node applies a new generation", Duration::from_secs(30), move || {
            let (mut nodes, node) = (nodes.clone(), node.clone());
            async move {
                let n = nodes.get_node(v1::GetNodeRequest { name: node }).await.ok()?.into_inner().node?;
                (n.applied_digest == n.desired_digest && n.applied_generation > after).then_some(n)
            }
        })
    };
    // The node syncs its first bundle before the policy exists, so applying it is a change
    // the server times from commit to ACK.
    let first = applied_after(0).await;
    let doc = format!(
        "name: m-deny\nworkload: {{cgroup: \"{work}\"}}\nnetwork:\n  connect:\n    rules:\n      - {{id: block, action: deny, cidrs: [127.0.0.0/8], ports: [{port}]}}\n"
    );
    PolicyServiceClient::new(channel.clone())
        .apply_policy(v1::ApplyPolicyRequest { source: Some(Source::Document(doc)), ..Default::default() })
        .await
        .expect("apply");
    let applied = applied_after(first.applied_generation).await;
    let missing = PolicyServiceClient::new(channel.clone())
        .get_policy(v1::GetPolicyRequest { name: "no-such-policy".into(), revision: None })
        .await;
    assert_eq!(missing.expect_err("unknown policy").code(), tonic::Code::NotFound);

    let dir = cg.dir_of(&work);
    for _ in 0..3 {
        let d = dir.clone();
        let result =
            tokio::task::spawn_blocking(move || probe(PROBE, Some(&d), "tcp", "127.0.0.1", port)).await.expect("probe");
        assert_eq!(result, Connect::Denied);
    }

    // The agent counted the three denies as it read them from the ring buffer.
    let agent_scrape = eventually("the agent counts 3 denies", Duration::from_secs(10), || async {
        let text = scrape(agent_addr).await.ok()?;
        (sample(&text, r#"palisade_agent_decisions_total{verdict="deny",policy="m-deny"}"#) == Some(3.0))
            .then_some(text)
    })
    .await;
    assert_eq!(value(&agent_scrape, "palisade_agent_bundle_generation"), applied.applied_generation as f64);
    assert_eq!(value(&agent_scrape, "palisade_agent_connected"), 1.0);
    assert!(value(&agent_scrape, "palisade_agent_bundle_apply_duration_seconds_count") >= 2.0, "{agent_scrape}");
    let apply_seconds = value(&agent_scrape, "palisade_agent_bundle_apply_duration_seconds_sum");
    assert!(apply_seconds > 0.0 && apply_seconds < 30.0, "{apply_seconds}");
    let map_bytes = value(&agent_scrape, "palisade_agent_map_bytes");
    assert!(map_bytes > 0.0 && map_bytes < 256.0 * 1024.0 * 1024.0, "map bytes {map_bytes}");
    assert_eq!(value(&agent_scrape, r#"palisade_agent_events_dropped_total{reason="ring_full"}"#), 0.0);
    // The connect program ran at least for the three denies, and took measurable time.
    let runs: Vec<(String, f64)> = agent_scrape
        .lines()
        .filter_map(|l| l.strip_prefix("palisade_agent_program_runs_total{program=\""))
        .filter_map(|l| {
            let (program, rest) = l.split_once("\"} ")?;
            Some((program.to_owned(), rest.split(' ').next()?.parse().ok()?))
        })
        .collect();
    let (program, most) = runs.iter().max_by(|a, b| a.1.total_cmp(&b.1)).expect("program runs reported").clone();
    assert!(most >= 3.0, "{runs:?}");
    let run_time =
        value(&agent_scrape, &format!("palisade_agent_program_run_time_seconds_total{{program=\"{program}\"}}"));
    assert!(run_time > 0.0 && run_time / most < 0.001, "{run_time} s over {most} runs");

    // The server stored the events, sees the node in sync, and timed the rollout.
    let server_scrape = eventually("the server ingests 3 events", Duration::from_secs(20), || async {
        let text = scrape(server_addr).await.ok()?;
        (sample(&text, "palisade_server_events_ingested_total") >= Some(3.0)).then_some(text)
    })
    .await;
    assert_eq!(value(&server_scrape, "palisade_server_policies"), 1.0);
    assert_eq!(value(&server_scrape, r#"palisade_server_nodes{state="in_sync"}"#), 1.0);
    assert_eq!(value(&server_scrape, r#"palisade_server_nodes{state="failed"}"#), 0.0);
    assert_eq!(value(&server_scrape, "palisade_server_node_generation_lag_max"), 0.0);
    assert_eq!(value(&server_scrape, "palisade_server_agents_connected"), 1.0);
    assert_eq!(value(&server_scrape, r#"palisade_server_events_dropped_total{reason="rate_limited"}"#), 0.0);
    assert_eq!(value(&server_scrape, "palisade_server_apply_to_ack_seconds_count"), 1.0, "one apply, one node");
    let delay = value(&server_scrape, "palisade_server_apply_to_ack_seconds_sum");
    assert!(delay > 0.0 && delay < 30.0, "apply→ack {delay} s");
    let apply = r#"{method="palisade.v1.PolicyService/ApplyPolicy",code="Ok"}"#;
    assert_eq!(value(&server_scrape, &format!("palisade_server_grpc_requests_total{apply}")), 1.0);
    let not_found = r#"{method="palisade.v1.PolicyService/GetPolicy",code="NotFound"}"#;
    assert_eq!(value(&server_scrape, &format!("palisade_server_grpc_requests_total{not_found}")), 1.0);
    let timed =
        r#"palisade_server_grpc_request_duration_seconds_count{method="palisade.v1.PolicyService/ApplyPolicy"}"#;
    assert_eq!(value(&server_scrape, timed), 1.0);
    drop(agent);
    drop(listener);
}
