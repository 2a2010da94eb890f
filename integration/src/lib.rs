//! End-to-end test support: cgroups the tests own, a connect probe run inside them, and
//! polling helpers. Kernel tests need root; outside CI they skip loudly, under `CI=true`
//! they fail (STYLE.md).
#![allow(clippy::print_stderr, reason = "tests say loudly why they skip")]
#![allow(clippy::missing_panics_doc, reason = "test support: panicking is how it reports failure")]

pub mod capture;
pub mod cbpf;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Whether kernel tests can run here; panics under CI when they cannot.
pub fn kernel_tests_enabled(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: kernel tests need root, and CI runs as root");
    eprintln!("SKIPPED {test}: kernel tests need root (they fail instead under CI=true)");
    false
}

/// This kernel's struct offsets, from its BTF (what the agent reports), sockops included.
pub fn node_offsets() -> palisade_compiler::program::KernelOffsets {
    use palisade_compiler::program::KernelOffsets;
    let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
    let found = palisade_agent::btf::member_offsets(&blob, &palisade_contract::btf::FIELDS).expect("BTF parses");
    let offsets = KernelOffsets::from_reported(|key| found.get(key).copied(), KernelOffsets::LINUX_6_12);
    assert!(offsets.sock.is_some(), "this kernel reports every offset the sockops program needs: {found:?}");
    offsets
}

/// `getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION)`: the congestion control a TCP socket uses
/// (`error` when the call fails).
pub fn tcp_congestion(fd: i32) -> String {
    let mut name = [0_u8; 16];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: valid buffer and length; a bad fd only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, name.as_mut_ptr().cast(), &raw mut len)
    };
    if rc != 0 {
        return "error".to_owned();
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}

/// Makes closing `fd` send a reset (`SO_LINGER` 0): both ends of the connection reach
/// `TCP_CLOSE` at once, and no `TIME_WAIT` holds the port.
pub fn reset_on_close(fd: i32) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid option value and length; a bad fd only makes the call fail.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The cgroup2 mount point.
pub fn cgroup2() -> PathBuf {
    palisade_agent::probe::cgroup2_mount().expect("this machine has a cgroup2 hierarchy")
}

/// A cgroup created for one test and removed (with its children, after moving their
/// processes out) on drop.
#[derive(Debug)]
pub struct TestCgroup {
    root: PathBuf,
    path: String,
}

impl TestCgroup {
    /// Creates `/palisade-test-<name>-<pid>` under the cgroup2 mount.
    pub fn new(name: &str) -> Self {
        let path = format!("/palisade-test-{name}-{}", std::process::id());
        let root = cgroup2();
        let dir = root.join(path.trim_start_matches('/'));
        let _ = std::fs::create_dir_all(&dir);
        Self { root, path }
    }

    /// Path relative to the cgroup2 mount (what policies name).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A child path (not created).
    pub fn child_path(&self, name: &str) -> String {
        format!("{}/{name}", self.path)
    }

    /// Absolute directory of a path relative to the cgroup2 mount.
    pub fn dir_of(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Absolute directory.
    pub fn dir(&self) -> PathBuf {
        self.dir_of(&self.path)
    }

    /// Creates a child cgroup and returns its path.
    pub fn create_child(&self, name: &str) -> String {
        let path = self.child_path(name);
        std::fs::create_dir_all(self.dir_of(&path)).expect("create child cgroup");
        path
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_tree(&self.dir());
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            }
        }
    }
    // Probes exit right away; anything left is moved to the root before rmdir.
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines() {
            let _ = std::fs::write(cgroup2().join("cgroup.procs"), pid);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A bpffs directory for one test's pins (`/sys/fs/bpf/palisade-test-<name>-<pid>`),
/// removed on drop — which detaches every link pinned there — also when the test panics.
#[derive(Debug)]
pub struct TestPins(PathBuf);

impl TestPins {
    /// Mounts bpffs at `/sys/fs/bpf` if needed and names the directory (not created).
    pub fn new(name: &str) -> Self {
        palisade_agent::sys::ensure_bpffs(Path::new("/sys/fs/bpf")).expect("bpffs");
        Self(PathBuf::from(format!("/sys/fs/bpf/palisade-test-{name}-{}", std::process::id())))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Outcome of one probe connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// Connected.
    Ok,
    /// connect(2) failed with EPERM.
    Denied,
    /// Anything else (the text the probe printed).
    Other(String),
}

/// Runs the connect probe, inside `cgroup_dir` when given.
pub fn probe(probe_bin: &str, cgroup_dir: Option<&Path>, proto: &str, addr: &str, port: u16) -> Connect {
    let mut cmd = Command::new(probe_bin);
    if let Some(dir) = cgroup_dir {
        cmd.arg("--cgroup").arg(dir);
    }
    let out = cmd.args([proto, addr, &port.to_string()]).output().expect("connect-probe runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) => Connect::Ok,
        Some(1) => Connect::Denied,
        _ => Connect::Other(text),
    }
}

/// Listeners on `127.0.0.1:P` and `[::1]:P` for one port `P`.
pub fn dual_listeners() -> (std::net::TcpListener, std::net::TcpListener, u16) {
    for _ in 0..50 {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind v4");
        let port = v4.local_addr().expect("addr").port();
        if let Ok(v6) = std::net::TcpListener::bind(("::1", port)) {
            return (v4, v6, port);
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

/// An agent running in-process against a server, scoped to a test cgroup: its programs
/// attach to that cgroup, its pins and state are unique to the test.
pub struct TestAgent {
    /// The configuration (reused to restart the agent).
    pub config: palisade_agent::Config,
    shutdown: tokio_util::sync::CancellationToken,
    agent: Option<palisade_agent::Agent>,
}

impl TestAgent {
    /// Configuration for an agent of `server` named `node` attached at `attach` (cgroup
    /// path), pinning the server's bundle key, with node `node`'s certificate when the
    /// server runs TLS.
    pub fn config(
        server: &palisade_server::embedded::EmbeddedServer,
        node: &str,
        attach: &str,
        state_dir: &Path,
    ) -> palisade_agent::Config {
        let tls = server.node_tls(node);
        palisade_agent::Config {
            server: vec![server.url()],
            ca_cert: tls.as_ref().map(|t| t.ca_cert.clone()),
            cert: tls.as_ref().map(|t| t.cert.clone()),
            key: tls.map(|t| t.key),
            bundle_public_key: Some(server.public_key_hex().to_owned()),
            insecure_skip_bundle_signature: false,
            uninstall: false,
            node_name: Some(node.to_owned()),
            labels: vec!["suite=integration".to_owned()],
            bpffs: PathBuf::from(format!("/sys/fs/bpf/palisade-test-{node}")),
            state_dir: state_dir.to_owned(),
            attach_cgroup: attach.to_owned(),
            failsafe_ports: vec![22],
            heartbeat_seconds: 30,
            event_backlog: 100_000,
            event_backlog_bytes: 64 << 20,
            log_json: false,
            metrics_listen: None,
            flow_window_seconds: 10,
            flow_max_keys: 10_000,
            flow_backlog: 100_000,
            flow_record_rate: 1_000,
        }
    }

    /// Starts an agent.
    pub async fn start(config: palisade_agent::Config) -> Self {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let agent = palisade_agent::Agent::start(config.clone(), shutdown.clone()).await.expect("agent starts");
        Self { config, shutdown, agent: Some(agent) }
    }

    /// Stops the agent (pinned programs keep enforcing).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(agent) = self.agent.take() {
            agent.wait().await;
        }
    }

    /// Where the running agent serves `/metrics` (when `config.metrics_listen` was set).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.agent.as_ref().and_then(palisade_agent::Agent::metrics_addr)
    }

    /// The running agent's event counters.
    pub fn event_stats(&self) -> Option<palisade_proto::v1::EventStats> {
        self.agent.as_ref().map(palisade_agent::Agent::event_stats)
    }

    /// Removes the agent's pins, detaching its programs.
    pub fn remove_pins(&self) {
        let _ = std::fs::remove_dir_all(&self.config.bpffs);
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.remove_pins();
    }
}

/// Number of programs attached to a cgroup for `attach_type` (`BPF_PROG_QUERY`).
pub fn attached_programs(cgroup_dir: &Path, attach_type: u32) -> u32 {
    #[repr(C)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
    }
    let dir = std::fs::File::open(cgroup_dir).expect("open cgroup");
    let mut attr = QueryAttr {
        target_fd: std::os::fd::AsRawFd::as_raw_fd(&dir) as u32,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: 0,
        prog_cnt: 0,
    };
    // SAFETY: a valid BPF_PROG_QUERY (16) attribute prefix; the kernel writes prog_cnt.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, 16, std::ptr::from_mut(&mut attr), size_of::<QueryAttr>()) };
    assert!(ret == 0, "BPF_PROG_QUERY failed: {}", std::io::Error::last_os_error());
    attr.prog_cnt
}

/// Creates (after dropping any leftover of that name) database `name` on the server of
/// `base` (a `DATABASE_URL`), and returns its URL.
///
/// # Errors
/// When the server cannot be reached or refuses.
pub async fn create_database(base: &str, name: &str) -> Result<String, sqlx::Error> {
    use sqlx::{Connection as _, Executor as _};
    let mut admin = sqlx::PgConnection::connect(base).await?;
    admin.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await?;
    admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await?;
    // postgres://USER@HOST:PORT/DB?PARAMS: swap DB, keep PARAMS (sslmode and the like).
    let (url, params) = base.split_once('?').map_or((base, None), |(u, p)| (u, Some(p)));
    let prefix = url.rsplit_once('/').map_or(url, |(prefix, _)| prefix);
    Ok(params.map_or_else(|| format!("{prefix}/{name}"), |p| format!("{prefix}/{name}?{p}")))
}

/// Drops database `name` from the server of `base`, from any context (a `Drop`, a runtime
/// shutting down): on a thread with a runtime of its own. Failures are ignored.
pub fn drop_database_blocking(base: &str, name: &str) {
    use sqlx::{Connection as _, Executor as _};
    let (base, name) = (base.to_owned(), name.to_owned());
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            if let Ok(mut admin) = sqlx::PgConnection::connect(&base).await {
                let _ =
                    admin.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await;
            }
        });
    })
    .join();
}

/// Removes a bench's pins and cgroup however the run ends (error or panic): removing the pins
/// detaches every program they hold; the process moves back to the root cgroup first so its
/// own can be removed.
#[derive(Debug)]
pub struct BenchCleanup {
    /// The bench's bpffs directory.
    pub pins: PathBuf,
    /// The cgroup2 mount.
    pub cgroup2: PathBuf,
    /// The bench's cgroup directory.
    pub dir: PathBuf,
}

impl Drop for BenchCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::write(self.cgroup2.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}
