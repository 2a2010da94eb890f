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
