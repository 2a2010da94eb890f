//! The benchmarks stay runnable: `fleet-bench` against a real server with a small fleet
//! prints its table with every figure, and `palisade-bench --help` prints usage instead of
//! running the whole bench.

use std::{path::Path, process::Command};

#[test]
fn palisade_bench_help_prints_usage_and_unknown_flags_are_refused() {
    let help = Command::new(env!("CARGO_BIN_EXE_palisade-bench")).arg("--help").output().expect("runs");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: palisade-bench") && text.contains("--lookup-costs"), "{text}");
    let bogus = Command::new(env!("CARGO_BIN_EXE_palisade-bench")).arg("--bogus").output().expect("runs");
    assert_eq!(bogus.status.code(), Some(2), "an unknown flag is an error, not a bench run");
}

#[test]
fn fleet_bench_reports_every_figure_for_a_small_fleet() {
    let bench = Path::new(env!("CARGO_BIN_EXE_fleet-bench"));
    let server = bench.with_file_name("palisade-server");
    if !server.exists() {
        assert!(std::env::var_os("CI").is_none(), "{} is missing: the test command builds it first", server.display());
        eprintln!("SKIPPED fleet-bench: build palisade-server first (cargo build --bins)");
        return;
    }
    let Ok(database) = std::env::var("DATABASE_URL") else {
        assert!(std::env::var_os("CI").is_none(), "DATABASE_URL is required");
        eprintln!("SKIPPED fleet-bench: no DATABASE_URL");
        return;
    };
    let out = Command::new(bench)
        .args(["--agents", "20", "--rounds", "2"])
        .env("DATABASE_URL", database)
        .output()
        .expect("fleet-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let row = stdout.lines().find(|l| l.starts_with("| 20 |")).unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 7, "{row}");
    for cell in &cells[1..5] {
        assert!(cell.contains(" ms"), "a duration in {cell:?}: {row}");
    }
    let ratio: f64 = cells[5].parse().unwrap_or_else(|_| panic!("ratio {:?}", cells[5]));
    assert!(ratio > 0.0, "{row}");
    assert!(cells[6].ends_with("KiB"), "{row}");
}

/// The agent's footprint, on the agent binary in the real kernel: the idle agent stays small
/// and gives back what a 10,000-rule bundle took. Anonymous memory is what the agent
/// controls (file-backed pages are its binary, far larger in a debug build); before the
/// allocator was held to one arena and trimmed after loads it was ~27 MiB idle.
/// Its flow phase (a light load in a debug build) must bring every closed connection end to
/// the server.
#[test]
fn agent_footprint_reports_rss_and_the_idle_agent_stays_small() {
    if !palisade_integration::kernel_tests_enabled("agent-footprint") {
        return;
    }
    let Ok(database) = std::env::var("DATABASE_URL") else {
        assert!(std::env::var_os("CI").is_none(), "DATABASE_URL is required");
        eprintln!("SKIPPED agent-footprint: no DATABASE_URL");
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_agent-footprint"))
        .args(["--max-idle-mib", "24", "--flow-rate", "2000", "--flow-seconds", "5"])
        .env("DATABASE_URL", database)
        .output()
        .expect("agent-footprint runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let anon = |state: &str| -> f64 {
        let row = stdout.lines().find(|l| l.starts_with(&format!("| {state}"))).unwrap_or_else(|| panic!("{stdout}"));
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        cells[2].trim_end_matches(" MiB").parse().unwrap_or_else(|_| panic!("{row}"))
    };
    let (idle, busy, after) = (anon("idle, the empty"), anon("enforcing 10000"), anon("idle again"));
    assert!(idle <= 8.0, "idle anonymous memory {idle} MiB:\n{stdout}");
    assert!(busy > 0.0 && busy <= 16.0, "anonymous memory enforcing 10,000 rules {busy} MiB:\n{stdout}");
    assert!(after <= idle + 2.0, "memory taken by the large bundle is given back ({after} vs {idle} MiB):\n{stdout}");
    // The flow phase: every connection end the load closed reached the server's table.
    let line = stdout.lines().find(|l| l.starts_with("flow records:")).unwrap_or_else(|| panic!("{stdout}"));
    let number_after = |key: &str| -> u64 {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let (connections, stored) = (number_after("flow records:"), number_after("the server stored"));
    assert!(connections >= 5_000, "the load made its connections: {line}");
    assert_eq!(stored, 2 * connections, "every connection end was stored: {line}");
}

/// `flow-bench` runs (debug build, a small tune table) and accounts for every connection end
/// of its loop: each is decoded from the ring buffer exactly once, none dropped or untracked.
#[test]
fn flow_bench_reports_its_figures_and_records_every_connection_end() {
    if !palisade_integration::kernel_tests_enabled("flow-bench") {
        return;
    }
    let out =
        Command::new(env!("CARGO_BIN_EXE_flow-bench")).args(["--rules", "100"]).output().expect("flow-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("x no program") && stdout.contains("ns per sockops callback"), "{stdout}");
    let line = stdout.lines().find(|l| l.contains("flow records decoded")).unwrap_or_else(|| panic!("{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    // "- flow records decoded: N of M connection ends (dropped D, untracked U); …"
    assert_eq!(words[4], words[6], "every connection end recorded: {line}");
    assert!(line.contains("(dropped 0, untracked 0)"), "{line}");
}

/// `flow-ingest` (debug build, a small run) stores every aggregate and prints its rate and
/// the ratio to PostgreSQL alone.
#[test]
fn flow_ingest_reports_rows_per_second_and_stores_every_row() {
    let out = Command::new(env!("CARGO_BIN_EXE_flow-ingest"))
        .args(["--rows", "20000", "--batch", "5000"])
        .output()
        .expect("flow-ingest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let rate = |label: &str| -> f64 {
        let line = stdout.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("{label}: {stdout}"));
        line.split_whitespace().find_map(|w| w.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    assert!(rate("insert_flows") > 0.0 && rate("PostgreSQL alone") > 0.0, "{stdout}");
    assert!(stdout.contains("ratio ours / PostgreSQL alone"), "{stdout}");
}

/// `capture-bench` at 10 hosts: both programs load and run in the kernel and every figure of
/// the row is printed (ratios against libpcap's program in the same run).
#[test]
fn capture_bench_reports_compile_and_per_packet_figures() {
    if !palisade_integration::kernel_tests_enabled("capture-bench") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_capture-bench"))
        .args(["--hosts", "10", "--repeat", "1000", "--rounds", "1"])
        .output()
        .expect("capture-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let row = stdout.lines().find(|l| l.starts_with("| 10 |")).unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 11, "{row}");
    assert!(cells[1].ends_with(" ms") && cells[2].ends_with(" ms"), "{row}");
    for cell in [cells[5], cells[6], cells[8], cells[9]] {
        assert!(cell.parse::<u32>().is_ok_and(|ns| ns > 0), "a per-packet figure in {cell:?}: {row}");
    }
    for cell in [cells[7], cells[10]] {
        assert!(cell.parse::<f64>().is_ok_and(|r| r > 0.0), "a ratio in {cell:?}: {row}");
    }
}

/// `capture-worker flood` for a second: frames are kept, and the figures are printed.
#[test]
fn capture_flood_keeps_frames_and_reports_its_rate() {
    if !palisade_integration::kernel_tests_enabled("capture-worker flood") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_capture-worker"))
        .args(["flood", "udp port 53", "1"])
        .output()
        .expect("capture-worker runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let kept: u64 = stdout
        .split("kept ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(kept > 1000, "{stdout}");
    assert!(stdout.contains("ring drops") && stdout.contains("per 100k kept/s"), "{stdout}");
}
