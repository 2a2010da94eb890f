//! `lsm-guest`: the BPF-LSM suite, run as root inside a qemu guest booted from a stock Debian
//! kernel (scripts/lsm-suite.sh builds the initramfs and boots it). It compiles policies with
//! the real compiler, loads them through the agent's real datapath in BPF-LSM mode and makes
//! real connects from cgroups it creates. It prints `RESULT <name> PASS|FAIL <detail>` lines
//! and a final `DONE <passed> <failed>` for the host to collect.
#![allow(clippy::print_stdout, reason = "results go to the serial console")]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use palisade_agent::{
    btf,
    loader::{Datapath, Enforcement, Paths},
    probe,
};
use palisade_compiler::{compile, policy::model::PolicySet, program::KernelOffsets};
use palisade_proto::{document, v1};

const PROBE: &str = "/bin/connect-probe";

struct Suite {
    passed: u32,
    failed: u32,
}

impl Suite {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            self.passed += 1;
            println!("RESULT {name} PASS {detail}");
        } else {
            self.failed += 1;
            println!("RESULT {name} FAIL {detail}");
        }
    }
}

/// The running kernel's struct offsets, read from its BTF once (parsing vmlinux BTF is slow
/// under TCG, and the crash checks compile many bundles).
fn offsets() -> KernelOffsets {
    static OFFSETS: std::sync::OnceLock<KernelOffsets> = std::sync::OnceLock::new();
    *OFFSETS.get_or_init(|| {
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
        let found = btf::member_offsets(&blob, &btf::FIELDS).unwrap_or_default();
        KernelOffsets::from_reported(|key| found.get(key).copied(), KernelOffsets::LINUX_6_12)
    })
}

fn bundle(yaml: &str, generation: u64) -> Result<v1::Bundle, String> {
    let policies: Vec<v1::Policy> = document::parse_all(yaml)
        .into_iter()
        .map(|d| d.map(|d| d.to_proto()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let set = PolicySet::new(policies.iter().map(|p| (p, generation)), Vec::new()).map_err(|e| e.to_string())?;
    let compiled = compile(&set, offsets()).map_err(|e| e.to_string())?;
    Ok(v1::Bundle { generation, digest: compiled.digest, content: compiled.bytes.into(), ..Default::default() })
}

/// Runs the probe in `cgroup` with `args`: "ok", "EPERM" or the error text.
fn probe_in(cgroup: &Path, args: &[&str]) -> String {
    match Command::new(PROBE).arg("--cgroup").arg(cgroup).args(args).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(e) => format!("probe: {e}"),
    }
}

/// A path operation in `cgroup` (`exec`, `open-read`, `open-write`, `open-rw`).
fn path_op(cgroup: &Path, mode: &str, path: &str) -> String {
    probe_in(cgroup, &[mode, path])
}

/// A connect (or `bind-tcp`) in `cgroup`.
fn connect(cgroup: &Path, proto: &str, addr: &str, port: u16) -> String {
    probe_in(cgroup, &[proto, addr, &port.to_string()])
}

fn deny_policy(cgroup: &str, port: u16, mode: &str, default: &str, action: &str) -> String {
    format!(
        "name: lsm-test\nmode: {mode}\nworkload: {{cgroup: \"{cgroup}\"}}\nnetwork:\n  connect:\n    default: {default}\n    rules:\n      - {{id: rule-{port}, action: {action}, cidrs: [127.0.0.0/8, \"::1\"], ports: [{port}], protocols: [tcp]}}\n"
    )
}

/// Where the guest's agent keeps things (the suite's datapaths and the crash workers share it).
fn guest_paths() -> Paths {
    let cgroup2 = probe::cgroup2_mount().unwrap_or_default();
    Paths {
        bpffs: PathBuf::from("/sys/fs/bpf/palisade"),
        state_dir: PathBuf::from("/tmp/palisade-state"),
        attach: cgroup2.clone(),
        cgroup2,
    }
}

/// `lsm-guest worker BUNDLE PATHS`: one agent lifetime in a process of its own for the crash
/// checks — adopt what is pinned, apply the bundle file (`PATHS` 1: the kernel lets LSM
/// programs resolve paths, as the suite's probe found); `PALISADE_FAULT_AT` aborts it at a
/// step. Exit 0 when applied, 1 otherwise.
fn worker(bundle: &str, resolve_paths: bool) -> i32 {
    let mut datapath = Datapath::new(guest_paths()).with_enforcement(Enforcement::Lsm { resolve_paths });
    let adopted = datapath.adopt();
    let bundle = std::fs::read(bundle).ok().and_then(|b| <v1::Bundle as prost::Message>::decode(b.as_slice()).ok());
    let Some(bundle) = bundle else { return 3 };
    match datapath.apply(bundle, &mut Vec::new()) {
        Ok(()) => {
            println!("adopted={adopted:?} ok");
            0
        }
        Err(e) => {
            println!("adopted={adopted:?} {}", palisade_agent::error_chain(&e));
            1
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, bundle, paths] = args.as_slice()
        && mode == "worker"
    {
        std::process::exit(worker(bundle, paths == "1"));
    }
    let mut suite = Suite { passed: 0, failed: 0 };
    let features = probe::probe();
    println!(
        "INFO kernel {} bpf_lsm={} btf={} offsets={:?}",
        features.kernel_release, features.bpf_lsm, features.btf, features.btf_offsets
    );
    suite.check(
        "probe_reports_bpf_lsm_with_paths",
        features.bpf_lsm && features.bpf_lsm_paths,
        format!(
            "kernel {} bpf_lsm={} bpf_lsm_paths={}",
            features.kernel_release, features.bpf_lsm, features.bpf_lsm_paths
        ),
    );
    let Some(cgroup2) = probe::cgroup2_mount() else {
        suite.check("cgroup2_mounted", false, "no cgroup2");
        println!("DONE {} {}", suite.passed, suite.failed);
        return;
    };
    let work = cgroup2.join("work");
    let other = cgroup2.join("other");
    for dir in [&work, &other] {
        let _ = std::fs::create_dir_all(dir);
    }
    let listener4 = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener4.local_addr().expect("addr").port();
    let _listener6 = TcpListener::bind(("::1", port)).ok();
    let other_listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let other_port = other_listener.local_addr().expect("addr").port();
    let paths = Paths {
        bpffs: PathBuf::from("/sys/fs/bpf/palisade"),
        state_dir: PathBuf::from("/tmp/palisade-state"),
        cgroup2: cgroup2.clone(),
        attach: cgroup2.clone(),
    };
    let mut datapath =
        Datapath::new(paths).with_enforcement(Enforcement::Lsm { resolve_paths: features.bpf_lsm_paths });
    let mut drained = Vec::new();
    let mut generation = 1;
    let mut apply = |datapath: &mut Datapath, yaml: &str, drained: &mut Vec<v1::DecisionEvent>| -> Result<(), String> {
        generation += 1;
        let started = Instant::now();
        let b = bundle(yaml, generation)?;
        datapath.apply(b, drained).map_err(|e| palisade_agent::error_chain(&e))?;
        println!("INFO generation {generation} loaded in {} ms", started.elapsed().as_millis());
        Ok(())
    };

    // Deny, enforce mode.
    let loaded = apply(&mut datapath, &deny_policy("/work", port, "enforce", "allow", "deny"), &mut drained);
    suite.check("lsm_bundle_loads", loaded.is_ok(), format!("{loaded:?}"));
    // The bundle's decision arrays (bundle format 2) went in by BPF_MAP_UPDATE_BATCH, not by
    // the per-element fallback.
    let fallbacks = datapath.batch_fallbacks();
    suite.check("arrays_filled_by_batch_update", loaded.is_ok() && fallbacks == 0, format!("{fallbacks} fallbacks"));
    let v4 = connect(&work, "tcp", "127.0.0.1", port);
    suite.check("connect_v4_denied_with_eperm", v4 == "EPERM", &v4);
    let v6 = connect(&work, "tcp", "::1", port);
    suite.check("connect_v6_denied_with_eperm", v6 == "EPERM", &v6);
    let other_port_result = connect(&work, "tcp", "127.0.0.1", other_port);
    suite.check("connect_other_port_allowed", other_port_result == "ok", &other_port_result);
    let outside = connect(&other, "tcp", "127.0.0.1", port);
    suite.check("process_outside_cgroup_unaffected", outside == "ok", &outside);
    let mut events = Vec::new();
    datapath.drain(&mut events);
    let named: Vec<String> =
        events.iter().map(|e| format!("{}/{}:{}:{}", e.rule_id, e.verdict, e.address, e.hook)).collect();
    let want = [format!("rule-{port}/2:127.0.0.1:lsm/socket_connect"), format!("rule-{port}/2:::1:lsm/socket_connect")];
    suite.check("deny_events_name_the_rule", named == want, format!("{named:?}"));

    // Audit mode: would-deny events, nothing denied.
    let loaded = apply(&mut datapath, &deny_policy("/work", port, "audit", "allow", "deny"), &mut drained);
    let audited = connect(&work, "tcp", "127.0.0.1", port);
    let mut events = Vec::new();
    datapath.drain(&mut events);
    let would_deny = events.iter().any(|e| e.verdict == v1::Verdict::Audit as i32 && e.would_deny);
    suite.check(
        "audit_mode_reports_without_denying",
        loaded.is_ok() && audited == "ok" && would_deny,
        format!("{audited} {events:?}"),
    );

    // Default deny allow-lists.
    let loaded = apply(&mut datapath, &deny_policy("/work", port, "enforce", "deny", "allow"), &mut drained);
    let listed = connect(&work, "tcp", "127.0.0.1", port);
    let unlisted = connect(&work, "tcp", "127.0.0.1", other_port);
    suite.check(
        "default_deny_allow_lists",
        loaded.is_ok() && listed == "ok" && unlisted == "EPERM",
        format!("listed={listed} unlisted={unlisted}"),
    );

    connections_checks(&mut suite, &mut datapath, &mut apply, &work, other_port);
    swap_under_load(&mut suite, &mut datapath, &mut apply, &work, port);

    bind_denied(&mut suite, &mut datapath, &mut apply, &work, &other, other_port);
    exec_checks(&mut suite, &mut datapath, &mut apply, &work, &other);
    file_checks(&mut suite, &mut datapath, &mut apply, &work, &other);
    path_swap_under_load(&mut suite, &mut datapath, &mut apply, &work);
    datapath = restart_and_reject(&mut suite, datapath, &mut apply, &work, port);
    datapath = crash_at_every_step(&mut suite, datapath, &work, port, features.bpf_lsm_paths);

    remove_and_check_detached(&mut suite, datapath, &work, port);
    println!("DONE {} {}", suite.passed, suite.failed);
}

/// connections: the sockops program records and tunes a connection from the workload (its
/// establishment path verified by this kernel).
fn connections_checks(
    suite: &mut Suite,
    datapath: &mut Datapath,
    apply: &mut impl FnMut(&mut Datapath, &str, &mut Vec<v1::DecisionEvent>) -> Result<(), String>,
    work: &Path,
    other_port: u16,
) {
    let flows_policy = format!(
        "name: lsm-flows\nworkload: {{cgroup: /work}}\nconnections:\n  observe: {{}}\n  tune:\n    rules:\n      - {{id: tune-{other_port}, cidrs: [127.0.0.0/8], ports: [{other_port}], congestion: reno, initial_cwnd: 16, no_delay: true}}\n"
    );
    let loaded = apply(datapath, &flows_policy, &mut Vec::new());
    let made = connect(work, "tcp", "127.0.0.1", other_port);
    let flows = palisade_testkit::poll_blocking(Duration::from_secs(3), || {
        datapath.drain(&mut Vec::new());
        let flows = datapath.take_flows();
        (!flows.is_empty()).then_some(flows)
    })
    .unwrap_or_default();
    let seen: Vec<String> = flows
        .iter()
        .map(|f| format!("{}:{}:{}:{:?}:{}", f.rule_id, f.peer, f.record.peer_port, f.tune, f.record.flags))
        .collect();
    let tuned = palisade_contract::record::flow::flags::TUNED;
    let ok = flows.iter().any(|f| {
        f.record.peer_port == other_port
            && f.tune.as_deref() == Some(&format!("lsm-flows/tune-{other_port}"))
            && f.record.flags == tuned
    });
    suite.check(
        "connections_recorded_and_tuned",
        loaded.is_ok() && made == "ok" && ok,
        format!("loaded={loaded:?} connect={made} flows={seen:?} stats={:?}", datapath.flow_stats()),
    );
}

/// Removing the pins detaches everything.
fn remove_and_check_detached(suite: &mut Suite, mut datapath: Datapath, work: &Path, port: u16) {
    let _ = datapath.remove_all();
    // Detaching after the last pin goes away completes asynchronously: poll.
    let mut after = String::new();
    let _ = palisade_testkit::poll_blocking(Duration::from_secs(2), || {
        after = connect(work, "tcp", "127.0.0.1", port);
        (after == "ok").then_some(())
    });
    suite.check("removing_pins_detaches", after == "ok", &after);
}

/// Connects from `work` to `port` in a loop until `stop`: (attempts, attempts not refused
/// with EPERM).
fn denied_connect_prober(stop: &Arc<AtomicBool>, work: &Path, port: u16) -> std::thread::JoinHandle<(u32, u32)> {
    let (stop, work) = (stop.clone(), work.to_owned());
    std::thread::spawn(move || {
        let (mut tries, mut through) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            tries += 1;
            if connect(&work, "tcp", "127.0.0.1", port) != "EPERM" {
                through += 1;
            }
        }
        (tries, through)
    })
}

/// Generation swaps under a loop of attempts: zero denied attempts may get through.
fn swap_under_load(
    suite: &mut Suite,
    datapath: &mut Datapath,
    apply: &mut impl FnMut(&mut Datapath, &str, &mut Vec<v1::DecisionEvent>) -> Result<(), String>,
    work: &Path,
    port: u16,
) {
    let mut drained = Vec::new();
    let _ = apply(datapath, &deny_policy("/work", port, "enforce", "allow", "deny"), &mut drained);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = denied_connect_prober(&stop, work, port);
    let mut swaps_ok = true;
    for i in 0..6 {
        let yaml =
            deny_policy("/work", port, "enforce", "allow", "deny").replace("id: rule", &format!("id: swap{i}-rule"));
        swaps_ok &= apply(datapath, &yaml, &mut drained).is_ok();
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let (tries, through) = prober.join().unwrap_or((0, 1));
    suite.check(
        "swap_lets_no_denied_attempt_through",
        swaps_ok && tries > 0 && through == 0,
        format!("{through} of {tries} through"),
    );
}

/// `network.bind` through `lsm/socket_bind`: the listed local port is refused with EPERM and
/// reported; another port and another cgroup are unaffected.
fn bind_denied(
    suite: &mut Suite,
    datapath: &mut Datapath,
    apply: &mut impl FnMut(&mut Datapath, &str, &mut Vec<v1::DecisionEvent>) -> Result<(), String>,
    work: &Path,
    other: &Path,
    free_port: u16,
) {
    let mut drained = Vec::new();
    let bind_port = free_port.wrapping_add(1).max(1024);
    let yaml = format!(
        "name: lsm-bind\nworkload: {{cgroup: /work}}\nnetwork:\n  bind:\n    rules:\n      - {{id: no-listen, action: deny, cidrs: [127.0.0.0/8], ports: [{bind_port}], protocols: [tcp]}}\n"
    );
    let loaded = apply(datapath, &yaml, &mut drained);
    let denied = connect(work, "bind-tcp", "127.0.0.1", bind_port);
    let elsewhere = connect(work, "bind-tcp", "127.0.0.1", bind_port.wrapping_add(1));
    let outside = connect(other, "bind-tcp", "127.0.0.1", bind_port);
    let mut events = Vec::new();
    datapath.drain(&mut events);
    let event_ok = events
        .iter()
        .any(|e| e.rule_id == "no-listen" && e.hook == "lsm/socket_bind" && e.port == u32::from(bind_port));
    suite.check(
        "bind_denied_with_eperm_and_reported",
        loaded.is_ok() && denied == "EPERM" && elsewhere == "ok" && outside == "ok" && event_ok,
        format!("loaded={loaded:?} denied={denied} elsewhere={elsewhere} outside={outside} events={}", events.len()),
    );
}

/// Executables for the exec checks: copies of busybox (`PATH true` runs its `true` applet),
/// so each has its own path and inode.
fn make_tools() -> Result<(), String> {
    for dir in ["/tmp/tools", "/tmp/tools/sub"] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    }
    for name in ["blocked", "allowed", "watched", "sub/inner", "glob-one"] {
        let path = format!("/tmp/tools/{name}");
        std::fs::copy("/bin/busybox", &path).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// `exec` through `lsm/bprm_check_security`: exact, subtree and trailing-`*` paths denied with
/// EPERM and reported with the path; other binaries run; audit rules report without denying;
/// processes outside the cgroup are unaffected; a default-deny section allow-lists.
fn exec_checks(
    suite: &mut Suite,
    datapath: &mut Datapath,
    apply: &mut impl FnMut(&mut Datapath, &str, &mut Vec<v1::DecisionEvent>) -> Result<(), String>,
    work: &Path,
    other: &Path,
) {
    let mut drained = Vec::new();
    let tools = make_tools();
    let yaml = "name: lsm-exec\nworkload: {cgroup: /work}\nexec:\n  rules:\n    - {id: no-blocked, action: deny, paths: [/tmp/tools/blocked, /tmp/tools/sub/, /tmp/tools/glob*]}\n    - {id: watch, action: audit, paths: [/tmp/tools/watched]}\n";
    let loaded = apply(datapath, yaml, &mut drained);
    let blocked = path_op(work, "exec", "/tmp/tools/blocked");
    let subtree = path_op(work, "exec", "/tmp/tools/sub/inner");
    let glob = path_op(work, "exec", "/tmp/tools/glob-one");
    let allowed = path_op(work, "exec", "/tmp/tools/allowed");
    let outside = path_op(other, "exec", "/tmp/tools/blocked");
    let watched = path_op(work, "exec", "/tmp/tools/watched");
    let mut events = Vec::new();
    datapath.drain(&mut events);
    let seen: Vec<String> = events
        .iter()
        .filter(|e| e.hook == "lsm/bprm_check_security")
        .map(|e| format!("{}:{}:{}", e.rule_id, e.verdict, e.path))
        .collect();
    suite.check(
        "exec_denied_with_eperm_other_binary_runs",
        tools.is_ok() && loaded.is_ok() && blocked == "EPERM" && allowed == "ok" && outside == "ok",
        format!("tools={tools:?} loaded={loaded:?} blocked={blocked} allowed={allowed} outside={outside}"),
    );
    suite.check(
        "exec_subtree_and_trailing_star_match",
        subtree == "EPERM" && glob == "EPERM",
        format!("subtree={subtree} glob={glob}"),
    );
    let want = [
        "no-blocked:2:/tmp/tools/blocked",
        "no-blocked:2:/tmp/tools/sub/inner",
        "no-blocked:2:/tmp/tools/glob-one",
        "watch:3:/tmp/tools/watched",
    ];
    suite.check(
        "exec_events_name_rule_and_path",
        watched == "ok" && seen == want,
        format!("watched={watched} events={seen:?}"),
    );
    let yaml = "name: lsm-exec\nworkload: {cgroup: /work}\nexec:\n  default: deny\n  rules:\n    - {id: tools, action: allow, paths: [/tmp/tools/allowed]}\n";
    let loaded = apply(datapath, yaml, &mut drained);
    let listed = path_op(work, "exec", "/tmp/tools/allowed");
    let unlisted = path_op(work, "exec", "/tmp/tools/watched");
    let mut events = Vec::new();
    datapath.drain(&mut events);
    let default_named = events.iter().any(|e| e.rule_id == "default" && e.path == "/tmp/tools/watched");
    suite.check(
        "exec_default_deny_allow_lists",
        loaded.is_ok() && listed == "ok" && unlisted == "EPERM" && default_named,
        format!("loaded={loaded:?} listed={listed} unlisted={unlisted} default_event={default_named}"),
    );
}

/// `files` through `lsm/file_open`: a file denied for write opens for read but not for write
/// or read+write, with an event naming the rule, path and access; audit mode reports a
/// would-deny without denying.
fn file_checks(
    suite: &mut Suite,
    datapath: &mut Datapath,
    apply: &mut impl FnMut(&mut Datapath, &str, &mut Vec<v1::DecisionEvent>) -> Result<(), String>,
    work: &Path,
    other: &Path,
) {
    let mut drained = Vec::new();
    let made = std::fs::create_dir_all("/tmp/data")
        .and_then(|()| std::fs::write("/tmp/data/secret", b"s"))
        .and_then(|()| std::fs::write("/tmp/data/plain", b"p"));
    let policy = |mode: &str| {
        format!(
            "name: lsm-files\nmode: {mode}\nworkload: {{cgroup: /work}}\nfiles:\n  rules:\n    - {{id: secret-ro, action: deny, access: [write], paths: [/tmp/data/secret]}}\n"
        )
    };
    let loaded = apply(datapath, &policy("enforce"), &mut drained);
    let read = path_op(work, "open-read", "/tmp/data/secret");
    let write = path_op(work, "open-write", "/tmp/data/secret");
    let rw = path_op(work, "open-rw", "/tmp/data/secret");
    let plain = path_op(work, "open-write", "/tmp/data/plain");
    let outside = path_op(other, "open-write", "/tmp/data/secret");
    let mut events = Vec::new();
    datapath.drain(&mut events);
    let seen: Vec<String> = events
        .iter()
        .filter(|e| e.hook == "lsm/file_open")
        .map(|e| format!("{}:{}:{}:{:?}", e.rule_id, e.verdict, e.path, e.access))
        .collect();
    suite.check(
        "file_denied_for_write_opens_for_read",
        made.is_ok() && loaded.is_ok() && read == "ok" && write == "EPERM" && rw == "EPERM" && plain == "ok",
        format!("made={made:?} loaded={loaded:?} read={read} write={write} rw={rw} plain={plain}"),
    );
    suite.check("file_rule_spares_other_cgroups", outside == "ok", &outside);
    let want = ["secret-ro:2:/tmp/data/secret:[2]", "secret-ro:2:/tmp/data/secret:[1, 2]"];
    suite.check("file_events_name_rule_path_and_access", seen == want, format!("{seen:?}"));
    let loaded = apply(datapath, &policy("audit"), &mut drained);
    let write = path_op(work, "open-write", "/tmp/data/secret");
    let mut events = Vec::new();
    datapath.drain(&mut events);
    let would_deny = events.iter().any(|e| e.would_deny && e.rule_id == "secret-ro" && e.path == "/tmp/data/secret");
    suite.check(
        "file_audit_mode_reports_without_denying",
        loaded.is_ok() && write == "ok" && would_deny,
        format!("loaded={loaded:?} write={write} would_deny={would_deny}"),
    );
}

/// exec and open swaps under a loop of execs and opens: zero denied attempts get through.
fn path_swap_under_load(
    suite: &mut Suite,
    datapath: &mut Datapath,
    apply: &mut impl FnMut(&mut Datapath, &str, &mut Vec<v1::DecisionEvent>) -> Result<(), String>,
    work: &Path,
) {
    let mut drained = Vec::new();
    let policy = |i: usize| {
        format!(
            "name: lsm-paths\nworkload: {{cgroup: /work}}\nexec:\n  rules:\n    - {{id: no-exec-{i}, action: deny, paths: [/tmp/tools/blocked]}}\nfiles:\n  rules:\n    - {{id: ro-{i}, action: deny, access: [write], paths: [/tmp/data/secret]}}\n"
        )
    };
    let first = apply(datapath, &policy(0), &mut drained);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (stop, work) = (stop.clone(), work.to_owned());
        std::thread::spawn(move || {
            let (mut tries, mut through) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for (mode, path) in [("exec", "/tmp/tools/blocked"), ("open-write", "/tmp/data/secret")] {
                    tries += 1;
                    let got = path_op(&work, mode, path);
                    if got != "EPERM" {
                        through.push(format!("{mode}:{got}"));
                    }
                }
            }
            (tries, through)
        })
    };
    let mut swaps_ok = first.is_ok();
    for i in 1..7 {
        swaps_ok &= apply(datapath, &policy(i), &mut drained).is_ok();
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let (tries, through) = prober.join().unwrap_or((0, vec!["prober panicked".into()]));
    suite.check(
        "exec_and_open_swaps_let_no_denied_attempt_through",
        swaps_ok && tries > 0 && through.is_empty(),
        format!("swaps_ok={swaps_ok} {} of {tries} through {through:?}", through.len()),
    );
}

/// The agent killed at every step of a swap (a worker process with `PALISADE_FAULT_AT`)
/// under a connect loop: the restarted agent applies the next bundle, exactly one generation
/// stays pinned and attached (its LSM links are the only links in the kernel), nothing
/// denied gets through, and an allowing generation then allows (no orphan keeps denying).
fn crash_at_every_step(suite: &mut Suite, datapath: Datapath, work: &Path, port: u16, paths: bool) -> Datapath {
    drop(datapath);
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/bin/lsm-guest"));
    let run = |yaml: &str, generation: u64, fault: &str| -> Result<std::process::Output, String> {
        let b = bundle(yaml, generation)?;
        std::fs::write("/tmp/crash.bundle", prost::Message::encode_to_vec(&b)).map_err(|e| e.to_string())?;
        Command::new(&exe)
            .args(["worker", "/tmp/crash.bundle", if paths { "1" } else { "0" }])
            .env("PALISADE_FAULT_AT", fault)
            .env("PALISADE_LOG", "warn")
            .output()
            .map_err(|e| e.to_string())
    };
    let gen_dirs = || {
        std::fs::read_dir("/sys/fs/bpf/palisade")
            .map_or(0, |d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("gen-")).count())
    };
    let expected_links = if paths { 4 } else { 2 };
    let links = || aya::programs::loaded_links().flatten().count();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = denied_connect_prober(&stop, work, port);
    let mut problems = Vec::new();
    let mut generation = 1000;
    for step in palisade_agent::loader::FAULT_STEPS {
        generation += 1;
        let deny = deny_policy("/work", port, "enforce", "allow", "deny");
        let dying = run(&deny.replace("id: rule", &format!("id: {step}-rule")), generation, step);
        // LSM swaps move no links (these bundles have no connections section, so no sockops
        // link either), so `hook` is never reached: that worker finishes.
        let aborted = dying.as_ref().is_ok_and(|o| {
            use std::os::unix::process::ExitStatusExt as _;
            if step == "hook" { o.status.success() } else { o.status.signal() == Some(libc::SIGABRT) }
        });
        if !aborted {
            problems.push(format!("{step}: worker {dying:?}"));
        }
        generation += 1;
        let next = run(&deny.replace("id: rule", &format!("id: after-{step}")), generation, "");
        if !next.as_ref().is_ok_and(|o| o.status.success()) {
            problems.push(format!("{step}: next bundle {next:?}"));
        }
        let settled = palisade_testkit::poll_blocking(Duration::from_secs(3), || {
            (gen_dirs() == 1 && links() == expected_links).then_some(())
        });
        if settled.is_err() {
            problems.push(format!("{step}: {} generations pinned, {} links", gen_dirs(), links()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (tries, through) = prober.join().unwrap_or((0, 1));
    generation += 1;
    let open = run(&deny_policy("/work", port, "enforce", "allow", "allow"), generation, "");
    let allowed = palisade_testkit::poll_blocking(Duration::from_secs(2), || {
        (connect(work, "tcp", "127.0.0.1", port) == "ok").then_some(())
    });
    suite.check(
        "crash_at_every_swap_step_leaves_one_generation",
        problems.is_empty() && tries > 0 && through == 0 && open.is_ok_and(|o| o.status.success()) && allowed.is_ok(),
        format!("{through} of {tries} through; allowed after={allowed:?}; {problems:?}"),
    );
    let mut adopted = Datapath::new(guest_paths()).with_enforcement(Enforcement::Lsm { resolve_paths: paths });
    let _ = adopted.adopt();
    adopted
}

/// An agent restart adopts the pinned LSM generation (still denying, nothing reloaded), and
/// a bundle the verifier rejects leaves the previous generation enforcing.
fn restart_and_reject(
    suite: &mut Suite,
    datapath: Datapath,
    apply: &mut impl FnMut(&mut Datapath, &str, &mut Vec<v1::DecisionEvent>) -> Result<(), String>,
    work: &Path,
    port: u16,
) -> Datapath {
    let mut drained = Vec::new();
    let loaded = apply(&mut { datapath }, &deny_policy("/work", port, "enforce", "allow", "deny"), &mut drained);
    // The datapath above was dropped (the agent "stopped"); a new one adopts the pins.
    let cgroup2 = probe::cgroup2_mount().unwrap_or_default();
    let paths = Paths {
        bpffs: PathBuf::from("/sys/fs/bpf/palisade"),
        state_dir: PathBuf::from("/tmp/palisade-state"),
        attach: cgroup2.clone(),
        cgroup2,
    };
    let down = connect(work, "tcp", "127.0.0.1", port);
    let mut restarted = Datapath::new(paths).with_enforcement(Enforcement::Lsm { resolve_paths: true });
    let adopted = restarted.adopt();
    let after = connect(work, "tcp", "127.0.0.1", port);
    suite.check(
        "restart_adopts_pinned_lsm_generation",
        loaded.is_ok() && matches!(adopted, Ok(true)) && down == "EPERM" && after == "EPERM",
        format!("loaded={loaded:?} adopted={adopted:?} while_down={down} after={after}"),
    );
    // A bundle whose programs the verifier rejects (exit without setting r0).
    let mut bad = match bundle(&deny_policy("/work", port, "enforce", "allow", "allow"), 99) {
        Ok(b) => b,
        Err(e) => {
            suite.check("rejected_bundle_keeps_previous_generation", false, e);
            return restarted;
        }
    };
    let mut content = <v1::BundleContent as prost::Message>::decode(&bad.content[..]).unwrap_or_default();
    let mut a = palisade_compiler::bpf::asm::Asm::new();
    a.push(palisade_compiler::bpf::insn::exit());
    let exit_only = a.finish().unwrap_or_else(|_| palisade_compiler::bpf::asm::Asm::new().finish().unwrap_or_default());
    let programs: Vec<_> = content
        .programs
        .iter()
        .map(|p| palisade_compiler::bpf::elf::ElfProgram { name: &p.name, section: &p.section, program: &exit_only })
        .collect();
    content.elf = palisade_compiler::bpf::elf::write(&programs, &palisade_compiler::bundle::map_defs(&content.maps))
        .unwrap_or_default();
    bad.content = prost::Message::encode_to_vec(&content).into();
    bad.digest = palisade_proto::sha256_hex(&bad.content);
    let result = restarted.apply(bad, &mut drained);
    let still = connect(work, "tcp", "127.0.0.1", port);
    let verifier = matches!(&result, Err(palisade_agent::loader::LoadError::Verifier { .. }));
    suite.check(
        "rejected_bundle_keeps_previous_generation",
        verifier && still == "EPERM",
        format!(
            "result={} still={still}",
            result.map_or_else(|e| e.to_string().lines().next().unwrap_or("").to_owned(), |()| "loaded".into())
        ),
    );
    restarted
}
