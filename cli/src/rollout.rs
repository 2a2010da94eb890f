//! `apply --wait` and `rollout status`: which selected nodes enforce a policy revision, from
//! `RolloutService` (the revisions inside each node's acknowledged bundle).

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use anyhow::bail;
use palisade_proto::{
    client::Connection,
    v1::{self, rollout_service_client::RolloutServiceClient},
};

use crate::{
    commands::failed,
    output::{Listing, Output},
    table::escape_controls,
};

/// How often progress is polled.
const POLL: Duration = Duration::from_millis(500);

/// Parses `500ms`, `30s`, `5m`, `1h` (or plain seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number with ms, s, m or h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_mins(n)),
        "h" => Ok(Duration::from_hours(n)),
        _ => Err(format!("{text:?}: the unit must be ms, s, m or h")),
    }
}

fn state_name(state: i32) -> &'static str {
    match v1::RolloutState::try_from(state) {
        Ok(v1::RolloutState::Applied) => "applied",
        Ok(v1::RolloutState::Pending) => "pending",
        Ok(v1::RolloutState::Failed) => "failed",
        Ok(v1::RolloutState::Disconnected) => "disconnected",
        _ => "?",
    }
}

async fn rollout(channel: &Connection, policy: &str, revision: Option<u64>) -> anyhow::Result<v1::GetRolloutResponse> {
    let request = v1::GetRolloutRequest { policy: policy.to_owned(), revision };
    Ok(RolloutServiceClient::new(channel.clone())
        .get_rollout(request)
        .await
        .map_err(|s| failed(&format!("rollout of {}", if policy.is_empty() { "every policy" } else { policy }), &s))?
        .into_inner())
}

/// Where every node selected by any of several revisions stands: the worst of its states
/// (failed, then pending, then disconnected, then applied).
#[derive(Debug, Default, PartialEq, Eq)]
struct Fleet {
    nodes: BTreeMap<String, (v1::RolloutState, String)>,
    /// Nodes that hold a revision but cannot enforce part of it, and why.
    not_enforced: BTreeMap<String, String>,
}

impl Fleet {
    fn add(&mut self, row: &v1::NodeRollout) {
        let state = v1::RolloutState::try_from(row.state).unwrap_or(v1::RolloutState::Pending);
        let rank = |s: v1::RolloutState| match s {
            v1::RolloutState::Failed => 3,
            v1::RolloutState::Pending | v1::RolloutState::Unspecified => 2,
            v1::RolloutState::Disconnected => 1,
            v1::RolloutState::Applied => 0,
        };
        if !row.not_enforced.is_empty() {
            self.not_enforced.insert(row.node.clone(), row.not_enforced.clone());
        }
        let entry = self.nodes.entry(row.node.clone()).or_insert((v1::RolloutState::Applied, String::new()));
        if rank(state) > rank(entry.0) {
            *entry = (state, row.error.clone());
        }
    }

    fn count(&self, state: v1::RolloutState) -> usize {
        self.nodes.values().filter(|(s, _)| *s == state).count()
    }

    fn names(&self, state: v1::RolloutState) -> Vec<&str> {
        self.nodes.iter().filter(|(_, (s, _))| *s == state).map(|(n, _)| n.as_str()).collect()
    }

    fn summary(&self) -> String {
        format!(
            "{} selected: {} applied, {} failed, {} pending, {} disconnected",
            self.nodes.len(),
            self.count(v1::RolloutState::Applied),
            self.count(v1::RolloutState::Failed),
            self.count(v1::RolloutState::Pending),
            self.count(v1::RolloutState::Disconnected)
        )
    }

    fn bar(&self) -> String {
        const WIDTH: usize = 30;
        let total = self.nodes.len().max(1);
        let done = self.count(v1::RolloutState::Applied) * WIDTH / total;
        let failed = self.count(v1::RolloutState::Failed) * WIDTH / total;
        let rest = WIDTH.saturating_sub(done + failed);
        format!("[{}{}{}] {}", "=".repeat(done), "!".repeat(failed), " ".repeat(rest), self.summary())
    }
}

async fn fleet(channel: &Connection, applied: &[(String, u64)]) -> anyhow::Result<Fleet> {
    let mut fleet = Fleet::default();
    for (policy, revision) in applied {
        for r in rollout(channel, policy, Some(*revision)).await?.policies {
            for row in &r.nodes {
                fleet.add(row);
            }
        }
    }
    Ok(fleet)
}

/// `apply --wait`: shows progress until no connected node is pending; fails naming every
/// node that rejected the bundle, or every node still pending at the timeout.
pub async fn wait(channel: &Connection, applied: &[(String, u64)], timeout: Duration) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let fleet = loop {
        // Each round of calls gets the time that is left, so a slow server cannot stretch
        // the timeout.
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let fleet = tokio::time::timeout(left, fleet(channel, applied))
            .await
            .map_err(|_| anyhow::anyhow!("error: timed out after {timeout:?} asking the server for the rollout"))??;
        let line = if terminal { fleet.bar() } else { fleet.summary() };
        if last.as_ref() != Some(&line) {
            let mut err = std::io::stderr().lock();
            let _ = if terminal { write!(err, "\r\x1b[2K{line}") } else { writeln!(err, "rollout: {line}") };
            let _ = err.flush();
            last = Some(line);
        }
        if fleet.count(v1::RolloutState::Pending) == 0 {
            break fleet;
        }
        if Instant::now() >= deadline {
            if terminal {
                eprintln!();
            }
            bail!(
                "error: timed out after {timeout:?}; still pending: {}",
                fleet.names(v1::RolloutState::Pending).join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    };
    if terminal {
        eprintln!();
    }
    if fleet.nodes.is_empty() {
        eprintln!("rollout: warning: no registered node is selected by these policies (check node_selector)");
    }
    for (node, why) in &fleet.not_enforced {
        eprintln!("rollout: warning: node {node} holds the policy but does not enforce {why}");
    }
    let disconnected = fleet.names(v1::RolloutState::Disconnected);
    if !disconnected.is_empty() {
        eprintln!(
            "rollout: not waiting for disconnected nodes (they get it when they reconnect): {}",
            disconnected.join(", ")
        );
    }
    let failures: Vec<String> = fleet
        .nodes
        .iter()
        .filter(|(_, (s, _))| *s == v1::RolloutState::Failed)
        .map(|(node, (_, error))| format!("  node {node}: {}", error.lines().next().unwrap_or("rejected")))
        .collect();
    if !failures.is_empty() {
        bail!("error: {} node(s) did not apply the policy:\n{}", failures.len(), failures.join("\n"));
    }
    println!("rollout complete: {}", fleet.summary());
    Ok(())
}

fn print_status(response: &v1::GetRolloutResponse, per_node: bool, output: Output) {
    if per_node {
        for r in &response.policies {
            let mut table =
                Listing::new(output, &["NODE", "STATE", "ENFORCED REV", "APPLIED GEN", "DESIRED GEN", "ERROR"]);
            if !table.is_table() {
                table.push("palisade.v1.PolicyRollout", r, Vec::new());
                continue;
            }
            let what = if r.deleted { "deletion" } else { "revision" };
            println!(
                "policy {} {what} {}: {} selected, {} applied, {} pending, {} failed, {} disconnected",
                r.policy, r.revision, r.selected, r.applied, r.pending, r.failed, r.disconnected
            );
            for n in &r.nodes {
                let row = vec![
                    n.node.clone(),
                    state_name(n.state).to_owned(),
                    n.enforced_revision.to_string(),
                    n.applied_generation.to_string(),
                    n.desired_generation.to_string(),
                    if n.error.is_empty() { "-".to_owned() } else { n.error.lines().next().unwrap_or("").to_owned() },
                ];
                table.push("palisade.v1.NodeRollout", n, row);
            }
            table.finish();
            for n in r.nodes.iter().filter(|n| !n.not_enforced.is_empty()) {
                println!("note: node {} holds it but does not enforce {}", n.node, escape_controls(&n.not_enforced));
            }
        }
        return;
    }
    let mut table =
        Listing::new(output, &["POLICY", "REVISION", "SELECTED", "APPLIED", "PENDING", "FAILED", "DISCONNECTED"]);
    for r in &response.policies {
        let row = vec![
            r.policy.clone(),
            r.revision.to_string(),
            r.selected.to_string(),
            r.applied.to_string(),
            r.pending.to_string(),
            r.failed.to_string(),
            r.disconnected.to_string(),
        ];
        table.push("palisade.v1.PolicyRollout", r, row);
    }
    table.finish();
}

/// `rollout status`: prints progress; with `watch`, again on every change until no
/// connected node is pending. Exits non-zero when a node failed.
pub async fn status(
    channel: &Connection,
    policy: Option<&str>,
    revision: Option<u64>,
    watch: bool,
    output: Output,
) -> anyhow::Result<()> {
    let mut last = None;
    loop {
        let response = rollout(channel, policy.unwrap_or(""), revision).await?;
        let pending: u32 = response.policies.iter().map(|p| p.pending).sum();
        let failed: u32 = response.policies.iter().map(|p| p.failed).sum();
        if last.as_ref() != Some(&response) {
            if last.is_some() && output == Output::Table {
                println!();
            }
            print_status(&response, policy.is_some(), output);
            last = Some(response);
        }
        if !watch || pending == 0 {
            if failed > 0 {
                bail!("error: {failed} node(s) rejected the policy");
            }
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_m_h_and_plain_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_mins(5)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_hours(2)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn a_node_counts_by_its_worst_state_across_policies() {
        let row = |node: &str, state: v1::RolloutState| v1::NodeRollout {
            node: node.into(),
            state: state as i32,
            error: if state == v1::RolloutState::Failed { "verifier".into() } else { String::new() },
            ..Default::default()
        };
        let mut fleet = Fleet::default();
        fleet.add(&row("a", v1::RolloutState::Applied));
        fleet.add(&row("a", v1::RolloutState::Pending));
        fleet.add(&row("b", v1::RolloutState::Failed));
        fleet.add(&row("b", v1::RolloutState::Applied));
        fleet.add(&row("c", v1::RolloutState::Disconnected));
        assert_eq!(fleet.count(v1::RolloutState::Pending), 1);
        assert_eq!(fleet.names(v1::RolloutState::Failed), ["b"]);
        assert_eq!(fleet.nodes["b"].1, "verifier");
        assert_eq!(fleet.summary(), "3 selected: 0 applied, 1 failed, 1 pending, 1 disconnected");
    }
}
