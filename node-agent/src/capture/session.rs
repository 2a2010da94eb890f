//! Capture sessions on the node: the server's `CaptureOrder`s (on the Sync stream) start and
//! stop captures; each runs the order's filter on an `AF_PACKET` ring per interface
//! ([`live::Capture`]), one thread per interface, and streams the packets it keeps to the
//! server (`ReportCapture`) until a limit — duration, packets, bytes — an order to stop, the
//! server's quota, or the agent's shutdown ends it. The last message says why.
//!
//! Memory is bounded: each interface's ring is 8 MiB, and between the threads and the
//! stream at most [`QUEUED_BATCHES`] batches of at most [`BATCH_BYTES`] wait.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use palisade_compiler::capture::{Link, Target};
use palisade_proto::v1::{self, agent_service_client::AgentServiceClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::live::{self, Capture, Ring};
use crate::sync::Server;

/// Captures one agent runs at once; orders beyond it are refused (reported as failed).
pub const MAX_CAPTURES: usize = 8;
/// Packet data per `ReportCapture` message, at most.
pub const BATCH_BYTES: usize = 256 << 10;
/// Longest a kept packet waits before it is sent.
const BATCH_AGE: Duration = Duration::from_millis(200);
/// Batches waiting between the interface threads and the stream.
const QUEUED_BATCHES: usize = 16;
/// How long an interface thread waits for a block before checking its limits again.
const POLL: Duration = Duration::from_millis(100);

/// Where one capture is, shared by its interface threads and its stream.
#[derive(Debug, Default)]
struct Shared {
    stopped: AtomicBool,
    /// Why it stopped (the first reason wins) and what went wrong.
    reason: Mutex<Option<(String, String)>>,
    kept: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn stop(&self, reason: &str, error: String) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_none()
        {
            *r = Some((reason.to_owned(), error));
        }
        self.stopped.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Reserves room for one packet of `len` bytes under the limits; false (and stopped) when
    /// a limit is reached.
    fn admit(&self, len: u64, limits: (u64, u64)) -> bool {
        if self.kept.fetch_add(1, Ordering::AcqRel) >= limits.0 {
            self.kept.fetch_sub(1, Ordering::AcqRel);
            self.stop("packets", String::new());
            return false;
        }
        if self.bytes.fetch_add(len, Ordering::AcqRel) + len > limits.1 {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            self.kept.fetch_sub(1, Ordering::AcqRel);
            self.stop("bytes", String::new());
            return false;
        }
        true
    }
}

/// Takes capture orders until `shutdown`, running each started capture until it ends.
pub async fn run(
    server: Server,
    node_name: String,
    mut orders: mpsc::Receiver<v1::CaptureOrder>,
    shutdown: CancellationToken,
) {
    let mut running: HashMap<u64, Arc<Shared>> = HashMap::new();
    let (done_tx, mut done) = mpsc::unbounded_channel::<u64>();
    let tracker = TaskTracker::new();
    loop {
        let order = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(id) = done.recv() => {
                running.remove(&id);
                continue;
            }
            order = orders.recv() => match order {
                Some(order) => order,
                None => break,
            },
        };
        if order.stop {
            if let Some(shared) = running.get(&order.id) {
                tracing::info!(capture = order.id, "capture stop ordered");
                shared.stop("stopped", String::new());
            }
            continue;
        }
        if running.contains_key(&order.id) {
            continue;
        }
        let shared = Arc::new(Shared::default());
        if running.len() >= MAX_CAPTURES {
            shared.stop("error", format!("the agent already runs {MAX_CAPTURES} captures"));
        }
        running.insert(order.id, shared.clone());
        let (server, node, done, shutdown) = (server.clone(), node_name.clone(), done_tx.clone(), shutdown.clone());
        tracker.spawn(async move {
            let id = order.id;
            run_one(&server, &node, order, &shared, &shutdown).await;
            let _ = done.send(id);
        });
    }
    for shared in running.values() {
        shared.stop("agent", String::new());
    }
    tracker.close();
    tracker.wait().await;
}

/// Packets the interfaces carried: (received, sent) per interface name, from
/// `/proc/net/dev` (which, unlike sysfs, shows the caller's network namespace).
fn interface_counters() -> HashMap<String, (u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let fields: Vec<u64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            Some((name.trim().to_owned(), (*fields.get(1)?, *fields.get(9)?)))
        })
        .collect()
}

/// Packets `interfaces` (`any`: every interface) carried since `base`: received plus sent,
/// received only on a loopback (where every packet is both).
fn seen_since(interfaces: &[String], base: &HashMap<String, (u64, u64)>) -> u64 {
    let now = interface_counters();
    let every: Vec<String>;
    let names = if interfaces.iter().any(|i| i == "any") {
        every = now.keys().cloned().collect();
        &every
    } else {
        interfaces
    };
    names
        .iter()
        .map(|name| {
            let (rx, tx) = now.get(name).copied().unwrap_or_default();
            let (rx0, tx0) = base.get(name).copied().unwrap_or_default();
            let rx = rx.saturating_sub(rx0);
            if name == "lo" { rx } else { rx + tx.saturating_sub(tx0) }
        })
        .sum()
}

/// Compiles the order's filter and opens a socket per interface (`any`: one socket on every
/// interface, cooked frames).
fn open(order: &v1::CaptureOrder) -> Result<Vec<Capture>, String> {
    let any = order.interfaces.iter().any(|i| i == "any");
    let link = if any { Link::LinuxSll2 } else { Link::Ethernet };
    let program = if order.expression.is_empty() {
        palisade_compiler::capture::accept_all(order.snap_length)
    } else {
        palisade_compiler::capture::compile_for(&order.expression, Target::Live, link, order.snap_length)
    }
    .map_err(|e| format!("the filter does not compile on this agent: {e}"))?;
    if any {
        return Capture::open_any(&program, Ring::default())
            .map(|c| vec![c])
            .map_err(|e: live::LiveError| format!("interface \"any\": {e}"));
    }
    order
        .interfaces
        .iter()
        .map(|name| {
            let c_name = std::ffi::CString::new(name.as_str()).map_err(|_| format!("interface {name:?}: NUL"))?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            if ifindex == 0 {
                return Err(format!("interface {name:?}: {}", std::io::Error::last_os_error()));
            }
            Capture::open(ifindex, &program, Target::Live, Ring::default())
                .map_err(|e: live::LiveError| format!("interface {name:?}: {e}"))
        })
        .collect()
}

/// One interface's thread: reads blocks until the capture stops, sending what it keeps.
fn read_interface(
    interface: u32,
    mut capture: Capture,
    shared: &Shared,
    limits: (u64, u64),
    deadline: Instant,
    out: &mpsc::Sender<(u32, Vec<v1::CapturedPacket>)>,
) {
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut oldest: Option<Instant> = None;
    let mut draining = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            shared.stop("duration", String::new());
        }
        // After a stop, what the ring already holds is still read (a block is handed over
        // at most 20 ms after its first packet), then the thread ends.
        if shared.stopped() {
            draining += 1;
        }
        let wait = if draining > 0 { Duration::from_millis(30) } else { POLL.min(deadline - now) };
        let read = capture.next_block(wait, |frame| {
            if shared.admit(frame.data.len() as u64, limits) {
                let timestamp_ns = u64::try_from(frame.timestamp.as_nanos()).unwrap_or(u64::MAX);
                batch_bytes += frame.data.len();
                batch.push(v1::CapturedPacket { timestamp_ns, wire_length: frame.wire_len, data: frame.data });
                oldest.get_or_insert_with(Instant::now);
            }
        });
        let read = match read {
            Ok(n) => n,
            Err(e) => {
                shared.stop("error", format!("reading the ring: {e}"));
                0
            }
        };
        if let Ok(c) = capture.counters() {
            shared.dropped.fetch_add(c.dropped, Ordering::AcqRel);
        }
        let done = draining > 0 && (read == 0 || draining > 64);
        if !batch.is_empty() && (done || batch_bytes >= BATCH_BYTES || oldest.is_some_and(|t| t.elapsed() >= BATCH_AGE))
        {
            if out.blocking_send((interface, std::mem::take(&mut batch))).is_err() {
                shared.stop("error", "the stream to the server ended".to_owned());
                return;
            }
            (batch_bytes, oldest) = (0, None);
        }
        if done {
            return;
        }
    }
}

/// Opens the order's sockets and starts a thread per interface; whether the capture could
/// not start at all.
fn start_threads(
    order: &v1::CaptureOrder,
    shared: &Arc<Shared>,
    limits: (u64, u64),
    deadline: Instant,
    batches: &mpsc::Sender<(u32, Vec<v1::CapturedPacket>)>,
) -> (Vec<std::thread::JoinHandle<()>>, bool) {
    let id = order.id;
    let mut threads = Vec::new();
    if shared.stopped() {
        // Refused before it started (the agent runs too many captures already).
        return (threads, true);
    }
    match open(order) {
        Ok(captures) => {
            tracing::info!(capture = id, interfaces = ?order.interfaces, "capture started");
            for (i, capture) in captures.into_iter().enumerate() {
                let (thread_shared, out) = (shared.clone(), batches.clone());
                let spawned = std::thread::Builder::new().name(format!("palisade-cap{id}")).spawn(move || {
                    read_interface(i as u32, capture, &thread_shared, limits, deadline, &out);
                });
                match spawned {
                    Ok(handle) => threads.push(handle),
                    Err(e) => shared.stop("error", format!("cannot start a capture thread: {e}")),
                }
            }
            (threads, false)
        }
        Err(error) => {
            tracing::warn!(capture = id, error, "capture cannot start");
            shared.stop("error", error);
            (threads, true)
        }
    }
}

/// The `ReportCapture` call carrying `stream`, on the first replica that answers.
async fn report(
    server: Server,
    stream: mpsc::Receiver<v1::ReportCaptureRequest>,
) -> Result<tonic::Response<v1::ReportCaptureResponse>, tonic::Status> {
    let mut last_error = String::from("no server address");
    for at in 0..server.urls.len() {
        match server.connect(at).await {
            Ok(channel) => return AgentServiceClient::new(channel).report_capture(ReceiverStream::new(stream)).await,
            Err(e) => last_error = crate::error_chain(&e),
        }
    }
    Err(tonic::Status::unavailable(last_error))
}

/// Runs capture `order` to its end, reporting to the server.
async fn run_one(
    server: &Server,
    node: &str,
    order: v1::CaptureOrder,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let id = order.id;
    let base = interface_counters();
    let remaining = order
        .deadline
        .and_then(|d| SystemTime::try_from(d).ok())
        .and_then(|d| d.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    let deadline = Instant::now() + remaining;
    let limits = (order.max_packets, order.max_bytes);
    let (batches_tx, mut batches) = mpsc::channel(QUEUED_BATCHES);
    let (threads, failed) = start_threads(&order, shared, limits, deadline, &batches_tx);
    drop(batches_tx);
    let mut uploader = Uploader { server: server.clone(), stream: None, give_up: deadline + GIVE_UP_AFTER };
    let message = |interface: u32, packets: Vec<v1::CapturedPacket>| v1::ReportCaptureRequest {
        // Every message names the node: after a reconnect it is the first of a new stream.
        node_name: node.to_owned(),
        capture_id: id,
        interface,
        packets,
        packets_seen: seen_since(&order.interfaces, &base),
        packets_dropped: shared.dropped.load(Ordering::Acquire),
        ..Default::default()
    };
    // Says the capture started, so the server shows it running before the first packet.
    let mut open = uploader.send(message(0, Vec::new()), shared, shutdown).await;
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled(), if !shared.stopped() => {
                shared.stop("agent", String::new());
                continue;
            }
            batch = batches.recv() => batch,
        };
        let Some((interface, packets)) = batch else { break };
        if open {
            open = uploader.send(message(interface, packets), shared, shutdown).await;
        }
    }
    for thread in threads {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    let (reason, error) =
        shared.reason.lock().ok().and_then(|r| r.clone()).unwrap_or_else(|| ("error".to_owned(), String::new()));
    let mut last = message(0, Vec::new());
    last.stop_reason.clone_from(&reason);
    last.error = error;
    last.failed = failed;
    if open {
        uploader.send(last, shared, shutdown).await;
    }
    match uploader.finish().await {
        Some(Ok(response)) => tracing::info!(
            capture = id,
            reason,
            kept = shared.kept.load(Ordering::Acquire),
            stored = response.get_ref().accepted,
            "capture finished"
        ),
        Some(Err(status)) => tracing::warn!(capture = id, reason, %status, "capture ended by the server"),
        None => tracing::warn!(capture = id, reason, "capture ended without reaching the server"),
    }
}

/// How long past its deadline a capture keeps trying to reach the server with what it has.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

type ReportCall = tokio::task::JoinHandle<Result<tonic::Response<v1::ReportCaptureResponse>, tonic::Status>>;

/// The `ReportCapture` stream of one capture, opened again when the connection breaks.
struct Uploader {
    server: Server,
    stream: Option<(mpsc::Sender<v1::ReportCaptureRequest>, ReportCall)>,
    give_up: Instant,
}

/// Whether a failed `ReportCapture` is worth repeating: the transport failed, the server did
/// not refuse.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    )
}

impl Uploader {
    /// Sends `message`, reconnecting with backoff while the server is unreachable; false once
    /// the capture must stop (the server refused it, or it stayed away too long), with the
    /// capture stopped and why.
    async fn send(
        &mut self,
        mut message: v1::ReportCaptureRequest,
        shared: &Shared,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Duration::from_millis(200);
        loop {
            let (sender, _) = self.stream.get_or_insert_with(|| {
                let (sender, stream) = mpsc::channel(4);
                (sender, tokio::spawn(report(self.server.clone(), stream)))
            });
            match sender.send(message).await {
                Ok(()) => return true,
                Err(mpsc::error::SendError(unsent)) => message = unsent,
            }
            let ended = match self.stream.take() {
                Some((_, call)) => call.await.ok().and_then(Result::err),
                None => None,
            };
            match ended {
                Some(status) if !transient(&status) => {
                    shared.stop("error", format!("the server ended the capture: {}", status.message()));
                    return false;
                }
                other => {
                    let why = other.map_or_else(|| "the stream closed".to_owned(), |s| s.message().to_owned());
                    if Instant::now() + backoff > self.give_up || shutdown.is_cancelled() {
                        shared.stop("error", format!("cannot reach the server: {why}"));
                        return false;
                    }
                    tracing::debug!(capture = message.capture_id, why, ?backoff, "capture stream lost; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Closes the stream; the server's answer, if a stream was open.
    async fn finish(self) -> Option<Result<tonic::Response<v1::ReportCaptureResponse>, tonic::Status>> {
        let (sender, call) = self.stream?;
        drop(sender);
        call.await.ok()
    }
}
