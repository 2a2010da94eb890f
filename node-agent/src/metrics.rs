//! The agent's Prometheus metrics (`--metrics-listen`): decisions by verdict and policy,
//! event drops, the enforced generation, bundle apply time, map memory, per-program run
//! time (when `kernel.bpf_stats_enabled` is on), and the Sync stream state. Names are listed
//! in docs/operations.md.
//!
//! Kernel-side values (programs, maps) are read from the active generation's pins at scrape
//! time, so a scrape costs a few `bpf(2)` calls and nothing in between.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use palisade_proto::v1;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::stats::EventCounters;

/// Distinct policy names `decisions_total` labels; decisions of further policies count under
/// `policy="other"`, so a fleet with many policies cannot grow a node's series without bound.
pub const MAX_POLICY_LABELS: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    verdict: &'static str,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: String,
}

/// Every metric the agent exposes.
pub struct AgentMetrics {
    registry: Arc<Registry>,
    decisions: Family<DecisionLabels, Counter>,
    labelled: Mutex<HashSet<String>>,
    dropped: Family<ReasonLabels, Counter>,
    generation: Gauge,
    apply: Histogram,
    map_bytes: Gauge,
    run_time: Family<ProgramLabels, Counter<f64, AtomicU64>>,
    runs: Family<ProgramLabels, Counter>,
    connected: Gauge,
    active_dir: Mutex<Option<PathBuf>>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    /// A registry with every series registered.
    #[must_use]
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("palisade_agent");
        let decisions = Family::<DecisionLabels, Counter>::default();
        let dropped = Family::<ReasonLabels, Counter>::default();
        let generation = Gauge::default();
        let apply = Histogram::new(palisade_metrics::duration_buckets());
        let map_bytes = Gauge::default();
        let run_time = Family::<ProgramLabels, Counter<f64, AtomicU64>>::default();
        let runs = Family::<ProgramLabels, Counter>::default();
        let connected = Gauge::default();
        registry.register(
            "decisions",
            "Decisions the kernel reported (deny, audit), by verdict and policy",
            decisions.clone(),
        );
        registry.register(
            "events_dropped",
            "Decision events lost before delivery, by reason (ring_full, queue_full, backlog_full, undecodable)",
            dropped.clone(),
        );
        registry.register("bundle_generation", "Generation the kernel enforces (0: none)", generation.clone());
        registry.register(
            "bundle_apply_duration_seconds",
            "Time to verify, load, fill and attach a bundle",
            apply.clone(),
        );
        registry.register(
            "map_bytes",
            "Declared size of the enforced generation's maps (max_entries x (key + value))",
            map_bytes.clone(),
        );
        registry.register(
            "program_run_time_seconds",
            "Time the enforced programs ran, from bpf_prog_info (only while kernel.bpf_stats_enabled=1)",
            run_time.clone(),
        );
        registry.register(
            "program_runs",
            "Runs of the enforced programs, from bpf_prog_info (only while kernel.bpf_stats_enabled=1)",
            runs.clone(),
        );
        registry.register("connected", "1 while a Sync stream to a server is open", connected.clone());
        for reason in ["ring_full", "queue_full", "backlog_full", "undecodable"] {
            let _ = dropped.get_or_create(&ReasonLabels { reason });
        }
        Arc::new(Self {
            registry: Arc::new(registry),
            decisions,
            labelled: Mutex::new(HashSet::new()),
            dropped,
            generation,
            apply,
            map_bytes,
            run_time,
            runs,
            connected,
            active_dir: Mutex::new(None),
        })
    }

    /// The registry the endpoint encodes.
    #[must_use]
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Counts a decision the datapath read from the ring buffer.
    pub fn decision(&self, event: &v1::DecisionEvent) {
        let verdict = match v1::Verdict::try_from(event.verdict) {
            Ok(v1::Verdict::Deny) => "deny",
            Ok(v1::Verdict::Audit) => "audit",
            Ok(v1::Verdict::Allow) => "allow",
            _ => "unknown",
        };
        let policy = {
            let mut labelled = self.labelled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if labelled.contains(&event.policy) {
                event.policy.clone()
            } else if labelled.len() < MAX_POLICY_LABELS {
                labelled.insert(event.policy.clone());
                event.policy.clone()
            } else {
                "other".to_owned()
            }
        };
        self.decisions.get_or_create(&DecisionLabels { verdict, policy }).inc();
    }

    /// A bundle apply took `elapsed` (success or not).
    pub fn applied(&self, elapsed: Duration) {
        self.apply.observe(elapsed.as_secs_f64());
    }

    /// The datapath now enforces the generation pinned in `dir` (or nothing).
    pub fn enforcing(&self, generation: Option<u64>, dir: Option<&Path>) {
        self.generation.set(generation.map_or(0, |g| i64::try_from(g).unwrap_or(i64::MAX)));
        *self.active_dir.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = dir.map(Path::to_owned);
    }

    /// The Sync stream opened (`true`) or ended.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Reads the event counters and the enforced programs and maps (before every scrape).
    pub fn refresh(&self, stats: &EventCounters) {
        let s = stats.snapshot();
        for (reason, value) in [
            ("ring_full", s.ring_full),
            ("queue_full", s.queue_full),
            ("backlog_full", s.backlog_full),
            ("undecodable", s.undecodable),
        ] {
            self.dropped.get_or_create(&ReasonLabels { reason }).inner().store(value, Ordering::Relaxed);
        }
        let dir = self.active_dir.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(dir) = dir else {
            self.map_bytes.set(0);
            return;
        };
        let mut map_bytes = 0_u64;
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            if let Some(name) = file.strip_prefix("map_") {
                if let Ok(info) = aya::maps::MapInfo::from_pin(entry.path()) {
                    let entry_bytes = u64::from(info.key_size()) + u64::from(info.value_size());
                    map_bytes += u64::from(info.max_entries()) * entry_bytes;
                } else {
                    tracing::debug!(map = name, "metrics: cannot read map info");
                }
            } else if let Some(name) = file.strip_prefix("prog_")
                && let Ok(info) = aya::programs::ProgramInfo::from_pin(entry.path())
            {
                let labels = ProgramLabels { program: name.to_owned() };
                let runs = info.run_count();
                if runs > 0 {
                    self.runs.get_or_create(&labels).inner().store(runs, Ordering::Relaxed);
                    let seconds = info.run_time().as_secs_f64();
                    self.run_time.get_or_create(&labels).inner().store(seconds.to_bits(), Ordering::Relaxed);
                }
            }
        }
        self.map_bytes.set(i64::try_from(map_bytes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(policy: &str, verdict: v1::Verdict) -> v1::DecisionEvent {
        v1::DecisionEvent { policy: policy.to_owned(), verdict: verdict as i32, ..Default::default() }
    }

    fn text(metrics: &AgentMetrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &metrics.registry()).expect("encodes");
        out
    }

    #[test]
    fn decisions_are_counted_by_verdict_and_policy_with_bounded_policy_labels() {
        let metrics = AgentMetrics::new();
        metrics.decision(&event("a", v1::Verdict::Deny));
        metrics.decision(&event("a", v1::Verdict::Deny));
        metrics.decision(&event("a", v1::Verdict::Audit));
        for i in 0..MAX_POLICY_LABELS + 10 {
            metrics.decision(&event(&format!("p{i}"), v1::Verdict::Deny));
        }
        let out = text(&metrics);
        let value = |series: &str| palisade_metrics::sample(&out, series);
        assert_eq!(value(r#"palisade_agent_decisions_total{verdict="deny",policy="a"}"#), Some(2.0), "{out}");
        assert_eq!(value(r#"palisade_agent_decisions_total{verdict="audit",policy="a"}"#), Some(1.0));
        // "a" took one of the labels: the last 11 policies count as "other".
        assert_eq!(value(r#"palisade_agent_decisions_total{verdict="deny",policy="other"}"#), Some(11.0));
        let policies: HashSet<&str> = out
            .lines()
            .filter(|l| l.starts_with("palisade_agent_decisions_total{"))
            .filter_map(|l| l.split("policy=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(policies.len(), MAX_POLICY_LABELS + 1, "256 names and other");
    }

    #[test]
    fn drops_follow_the_event_counters() {
        let metrics = AgentMetrics::new();
        let stats = EventCounters::default();
        stats.queue_full(7);
        stats.set_ring_full(3);
        metrics.refresh(&stats);
        let out = text(&metrics);
        assert_eq!(
            palisade_metrics::sample(&out, r#"palisade_agent_events_dropped_total{reason="queue_full"}"#),
            Some(7.0)
        );
        assert_eq!(
            palisade_metrics::sample(&out, r#"palisade_agent_events_dropped_total{reason="ring_full"}"#),
            Some(3.0)
        );
        assert_eq!(
            palisade_metrics::sample(&out, r#"palisade_agent_events_dropped_total{reason="undecodable"}"#),
            Some(0.0)
        );
    }
}
