//! `CaptureService`: packet capture sessions across nodes (docs/capture.md), and the merged
//! download.

use std::{
    borrow::Cow,
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, VecDeque},
    pin::Pin,
    time::Duration,
};

use futures::Stream;
use palisade_compiler::capture::{DEFAULT_SNAPLEN, Link, Target};
use palisade_proto::v1::{self, capture_service_server::CaptureService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{decode_number_token, encode_token, page_size};
use crate::{
    auth::Auth,
    error::{ApiError, Violation},
    store::{NewCapture, Source, Store},
    validate,
};

/// Interfaces one capture may name.
pub const MAX_INTERFACES: usize = 16;
/// Longest capture.
pub const MAX_DURATION: Duration = Duration::from_hours(24);
/// Most packets one node may keep.
pub const MAX_PACKETS: u64 = 100_000_000;
/// Largest snap length (libpcap's default, [`DEFAULT_SNAPLEN`]).
pub const MAX_SNAP_LENGTH: u32 = DEFAULT_SNAPLEN;
/// Default server-wide capture storage (`--capture-quota`).
pub const DEFAULT_QUOTA: u64 = 1 << 30;
/// Bytes per download chunk.
const DOWNLOAD_CHUNK: usize = 1 << 20;
/// Most node interfaces one download merges (it holds one stored chunk of each).
pub const MAX_DOWNLOAD_SOURCES: usize = 4096;

/// Capture sessions.
#[derive(Debug, Clone)]
pub struct CaptureApi {
    store: Store,
    auth: Auth,
    shutdown: CancellationToken,
    quota: u64,
}

impl CaptureApi {
    /// Serves captures from `store` with `quota` bytes of packet storage; downloads end at
    /// `shutdown`.
    pub fn new(store: Store, auth: Auth, shutdown: CancellationToken, quota: u64) -> Self {
        Self { store, auth, shutdown, quota }
    }
}

/// Whether `name` can be a Linux interface name (`dev_valid_name`).
fn interface_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".into())
    } else if name.len() > 15 {
        Some(format!("{name:?} is longer than the kernel's 15 bytes"))
    } else if name == "."
        || name == ".."
        || name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        Some(format!("{name:?} is not an interface name"))
    } else {
        None
    }
}

/// Checks a start request; every problem names its field.
pub fn check_start(request: &v1::StartCaptureRequest, quota: u64) -> Result<NewCapture, ApiError> {
    let mut v = Vec::new();
    let snap_length = match request.snap_length {
        0 => DEFAULT_SNAPLEN,
        n if n > MAX_SNAP_LENGTH => {
            v.push(Violation::new("snap_length", format!("{n} is above the largest snap length, {MAX_SNAP_LENGTH}")));
            DEFAULT_SNAPLEN
        }
        n => n,
    };
    // `any` is a cooked (LINUX_SLL2) capture of every interface; it stands alone.
    let any = request.interfaces.iter().any(|i| i == "any");
    let link = if any { Link::LinuxSll2 } else { Link::Ethernet };
    if !request.expression.is_empty()
        && let Err(e) = palisade_compiler::capture::compile_for(&request.expression, Target::Live, link, snap_length)
    {
        let message = e.to_string();
        let message =
            if message.starts_with("column ") { message } else { format!("column {}: {message}", e.column()) };
        v.push(Violation::new("expression", message));
    }
    if let Err(violations) = validate::selector("node_selector", &request.node_selector) {
        v.extend(violations);
    }
    if request.interfaces.is_empty() {
        v.push(Violation::new("interfaces", "name at least one interface (for example lo or eth0)"));
    } else if request.interfaces.len() > MAX_INTERFACES {
        v.push(Violation::new(
            "interfaces",
            format!("{} interfaces, the limit is {MAX_INTERFACES}", request.interfaces.len()),
        ));
    } else if any && request.interfaces.len() > 1 {
        v.push(Violation::new("interfaces", "`any` captures every interface already; name it alone"));
    } else {
        let mut seen = BTreeSet::new();
        for (i, name) in request.interfaces.iter().enumerate() {
            if let Some(problem) = interface_problem(name) {
                v.push(Violation::new(format!("interfaces[{i}]"), problem));
            } else if !seen.insert(name) {
                v.push(Violation::new(format!("interfaces[{i}]"), format!("{name:?} is named twice")));
            }
        }
    }
    let mut duration = Duration::ZERO;
    match &request.limits {
        None => v.push(Violation::new("limits", "required: duration, max_packets and max_bytes")),
        Some(limits) => {
            match &limits.duration {
                None => v.push(Violation::new("limits.duration", "required (1s to 24h)")),
                Some(d) => match u64::try_from(d.seconds).ok().zip(u32::try_from(d.nanos).ok()) {
                    Some((s, n)) if n < 1_000_000_000 && (1..=MAX_DURATION.as_secs()).contains(&s) => {
                        duration = Duration::new(s, n).min(MAX_DURATION);
                    }
                    _ => v.push(Violation::new("limits.duration", format!("{}s is not between 1s and 24h", d.seconds))),
                },
            }
            if limits.max_packets == 0 || limits.max_packets > MAX_PACKETS {
                v.push(Violation::new("limits.max_packets", format!("required: 1 to {MAX_PACKETS} packets per node")));
            }
            if limits.max_bytes == 0 || limits.max_bytes > quota {
                v.push(Violation::new(
                    "limits.max_bytes",
                    format!("required: 1 byte to the server's capture quota, {quota} bytes, per node"),
                ));
            }
        }
    }
    if !v.is_empty() {
        return Err(ApiError::Invalid(v));
    }
    let limits = request.limits.unwrap_or_default();
    Ok(NewCapture {
        expression: request.expression.clone(),
        node_selector: request.node_selector.clone(),
        interfaces: request.interfaces.clone(),
        snap_length,
        duration,
        max_packets: limits.max_packets,
        max_bytes: limits.max_bytes,
    })
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<v1::DownloadCaptureResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CaptureService for CaptureApi {
    type DownloadCaptureStream = DownloadStream;

    async fn start_capture(
        &self,
        request: Request<v1::StartCaptureRequest>,
    ) -> Result<Response<v1::StartCaptureResponse>, Status> {
        let actor = self.auth.check_capture(&request).await?;
        let capture = check_start(request.get_ref(), self.quota)?;
        let started = self.store.start_capture(&capture, &actor).await?;
        tracing::info!(capture = started.id, actor, nodes = started.node_count, "capture started");
        Ok(Response::new(v1::StartCaptureResponse { capture: Some(started) }))
    }

    async fn get_capture(
        &self,
        request: Request<v1::GetCaptureRequest>,
    ) -> Result<Response<v1::GetCaptureResponse>, Status> {
        self.auth.check_capture(&request).await?;
        let id = request.get_ref().id;
        let capture =
            self.store.capture(id).await?.ok_or(ApiError::NotFound { kind: "capture", name: id.to_string() })?;
        Ok(Response::new(v1::GetCaptureResponse { capture: Some(capture) }))
    }

    async fn list_captures(
        &self,
        request: Request<v1::ListCapturesRequest>,
    ) -> Result<Response<v1::ListCapturesResponse>, Status> {
        self.auth.check_capture(&request).await?;
        let limit = page_size(request.get_ref().page_size)?;
        let before = decode_number_token("captures", &request.get_ref().page_token)?;
        let (captures, more) = self.store.list_captures(before, limit).await?;
        let next_page_token = match captures.last() {
            Some(last) if more => encode_token("captures", &last.id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListCapturesResponse { captures, next_page_token }))
    }

    async fn stop_capture(
        &self,
        request: Request<v1::StopCaptureRequest>,
    ) -> Result<Response<v1::StopCaptureResponse>, Status> {
        let actor = self.auth.check_capture(&request).await?;
        let id = request.get_ref().id;
        self.store.stop_capture(id, &actor).await?;
        let capture = self.store.capture(id).await?;
        Ok(Response::new(v1::StopCaptureResponse { capture }))
    }

    async fn delete_capture(
        &self,
        request: Request<v1::DeleteCaptureRequest>,
    ) -> Result<Response<v1::DeleteCaptureResponse>, Status> {
        let actor = self.auth.check_capture(&request).await?;
        self.store.delete_capture(request.get_ref().id, &actor).await?;
        Ok(Response::new(v1::DeleteCaptureResponse {}))
    }

    async fn download_capture(
        &self,
        request: Request<v1::DownloadCaptureRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        self.auth.check_capture(&request).await?;
        let v1::DownloadCaptureRequest { id, format } = *request.get_ref();
        let format = match v1::CaptureFormat::try_from(format) {
            Ok(v1::CaptureFormat::Unspecified | v1::CaptureFormat::Pcapng) => Format::PcapNg,
            Ok(v1::CaptureFormat::Pcap) => Format::Pcap,
            Err(_) => return Err(ApiError::invalid("format", format!("unknown format {format}")).into()),
        };
        let capture =
            self.store.capture(id).await?.ok_or(ApiError::NotFound { kind: "capture", name: id.to_string() })?;
        let sources = self.store.capture_sources(id).await?;
        if sources.len() > MAX_DOWNLOAD_SOURCES {
            return Err(ApiError::FailedPrecondition(format!(
                "capture {id} holds packets from {} node interfaces; a download merges at most {MAX_DOWNLOAD_SOURCES}",
                sources.len()
            ))
            .into());
        }
        let (sender, receiver) = mpsc::channel(4);
        let (store, shutdown) = (self.store.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let merge = merge(&store, &capture, sources, format, &sender);
            let result = tokio::select! {
                () = shutdown.cancelled() => Err(Status::unavailable("the server is shutting down")),
                r = merge => r,
            };
            if let Err(status) = result {
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// File format of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    PcapNg,
    Pcap,
}

/// One source's packets not yet written: the chunk read last.
struct Cursor {
    source: Source,
    chunk: i64,
    packets: VecDeque<v1::CapturedPacket>,
}

/// What a capture file writer writes into, drained chunk by chunk (the pcap writer does not
/// lend its output out).
#[derive(Clone, Default)]
struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("capture buffer poisoned"))?.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn len(&self) -> usize {
        self.0.lock().map_or(0, |b| b.len())
    }

    fn take(&self) -> Vec<u8> {
        self.0.lock().map(|mut b| std::mem::take(&mut *b)).unwrap_or_default()
    }
}

/// Writes a capture file into a [`Buffer`].
struct Writer {
    buffer: Buffer,
    file: File,
}

enum File {
    PcapNg(pcap_file::pcapng::PcapNgWriter<Buffer>),
    Pcap(pcap_file::pcap::PcapWriter<Buffer>),
}

fn write_error(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "cannot encode a capture file");
    Status::internal("cannot encode the capture file")
}

impl Writer {
    fn new(format: Format, snap_length: u32, sources: &[Source]) -> Result<Self, Status> {
        use pcap_file::pcapng::blocks::interface_description::{
            InterfaceDescriptionBlock, InterfaceDescriptionOption as Opt, InterfaceTsResolution,
        };
        let link = |source: &Source| {
            if source.interface_name == "any" { pcap_file::DataLink::LINUX_SLL2 } else { pcap_file::DataLink::ETHERNET }
        };
        let buffer = Buffer::default();
        let file = match format {
            Format::Pcap => {
                let datalink = sources.first().map_or(pcap_file::DataLink::ETHERNET, link);
                if sources.iter().any(|s| link(s) != datalink) {
                    return Err(Status::failed_precondition(
                        "this capture mixes `any` (LINUX_SLL2) and Ethernet interfaces; classic pcap holds one link \
                         type: download it as pcapng",
                    ));
                }
                let header = pcap_file::pcap::PcapHeader {
                    snaplen: snap_length,
                    datalink,
                    ..pcap_file::pcap::PcapHeader::default()
                };
                File::Pcap(pcap_file::pcap::PcapWriter::with_header(buffer.clone(), header).map_err(write_error)?)
            }
            Format::PcapNg => {
                let mut writer = pcap_file::pcapng::PcapNgWriter::new(buffer.clone()).map_err(write_error)?;
                let nanoseconds = InterfaceTsResolution::from_u8(9).map_err(write_error)?;
                for source in sources {
                    let name = format!("{}@{}", source.interface_name, source.node);
                    let block = InterfaceDescriptionBlock {
                        linktype: link(source),
                        snaplen: snap_length,
                        options: vec![
                            Opt::IfName(Cow::Owned(name)),
                            Opt::IfDescription(Cow::Owned(format!("node {}", source.node))),
                            Opt::IfTsResol(nanoseconds),
                        ],
                    };
                    writer.write_pcapng_block(block).map_err(write_error)?;
                }
                File::PcapNg(writer)
            }
        };
        Ok(Self { buffer, file })
    }

    fn packet(&mut self, interface: u32, packet: &v1::CapturedPacket) -> Result<(), Status> {
        let timestamp = Duration::from_nanos(packet.timestamp_ns);
        match &mut self.file {
            File::PcapNg(w) => {
                let block = pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock {
                    interface_id: interface,
                    timestamp,
                    original_len: packet.wire_length,
                    data: Cow::Borrowed(&packet.data),
                    options: Vec::new(),
                };
                w.write_pcapng_block(block).map_err(write_error)?;
            }
            File::Pcap(w) => {
                let p = pcap_file::pcap::PcapPacket::new(timestamp, packet.wire_length, packet.data.as_slice())
                    .map_err(write_error)?;
                w.write_packet(&p).map_err(write_error)?;
            }
        }
        Ok(())
    }
}

/// Streams capture `capture`'s packets from `sources` as one file, in time order over every
/// source (each source's packets are stored in order), holding one stored chunk per source.
async fn merge(
    store: &Store,
    capture: &v1::Capture,
    sources: Vec<Source>,
    format: Format,
    out: &mpsc::Sender<Result<v1::DownloadCaptureResponse, Status>>,
) -> Result<(), Status> {
    let mut writer = Writer::new(format, capture.snap_length, &sources)?;
    let mut cursors = Vec::with_capacity(sources.len());
    let mut heap = BinaryHeap::new();
    for source in sources {
        let mut cursor = Cursor { source, chunk: 0, packets: VecDeque::new() };
        refill(store, capture.id, &mut cursor).await?;
        if let Some(first) = cursor.packets.front() {
            heap.push(Reverse((first.timestamp_ns, cursors.len())));
        }
        cursors.push(cursor);
    }
    while let Some(Reverse((_, at))) = heap.pop() {
        let cursor = &mut cursors[at];
        let Some(packet) = cursor.packets.pop_front() else { continue };
        writer.packet(at as u32, &packet)?;
        if cursor.packets.is_empty() {
            refill(store, capture.id, cursor).await?;
        }
        if let Some(next) = cursor.packets.front() {
            heap.push(Reverse((next.timestamp_ns, at)));
        }
        if writer.buffer.len() >= DOWNLOAD_CHUNK {
            let data = writer.buffer.take();
            if out.send(Ok(v1::DownloadCaptureResponse { data })).await.is_err() {
                return Ok(());
            }
        }
    }
    let data = writer.buffer.take();
    let _ = out.send(Ok(v1::DownloadCaptureResponse { data })).await;
    Ok(())
}

async fn refill(store: &Store, id: u64, cursor: &mut Cursor) -> Result<(), Status> {
    if let Some((chunk, packets)) = store.capture_chunk(id, &cursor.source, cursor.chunk).await? {
        cursor.chunk = chunk;
        cursor.packets = packets.into();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> v1::StartCaptureRequest {
        v1::StartCaptureRequest {
            expression: "udp port 53".into(),
            interfaces: vec!["lo".into()],
            limits: Some(v1::CaptureLimits {
                duration: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
                max_packets: 100,
                max_bytes: 1 << 20,
            }),
            ..Default::default()
        }
    }

    fn fields(r: &v1::StartCaptureRequest) -> Vec<String> {
        match check_start(r, DEFAULT_QUOTA) {
            Ok(_) => Vec::new(),
            Err(ApiError::Invalid(v)) => v.into_iter().map(|v| format!("{}: {}", v.field, v.description)).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn a_good_request_passes_with_the_default_snap_length() {
        let c = check_start(&request(), DEFAULT_QUOTA).expect("valid");
        assert_eq!((c.snap_length, c.duration, c.max_packets), (DEFAULT_SNAPLEN, Duration::from_secs(10), 100));
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut r = request();
        r.expression = "tcp port 99999".into();
        let f = fields(&r);
        assert!(f.len() == 1 && f[0].starts_with("expression: column 10:"), "{f:?}");
        let mut r = request();
        r.limits = None;
        assert_eq!(fields(&r), ["limits: required: duration, max_packets and max_bytes"]);
        let mut r = request();
        r.limits.as_mut().expect("limits").duration = None;
        assert!(fields(&r)[0].starts_with("limits.duration: required"));
        let mut r = request();
        r.limits.as_mut().expect("limits").duration = Some(prost_types::Duration { seconds: 86_401, nanos: 0 });
        assert!(fields(&r)[0].starts_with("limits.duration:"));
        let mut r = request();
        r.limits.as_mut().expect("limits").max_packets = 0;
        r.limits.as_mut().expect("limits").max_bytes = DEFAULT_QUOTA + 1;
        let f = fields(&r);
        assert!(f[0].starts_with("limits.max_packets:") && f[1].starts_with("limits.max_bytes:"), "{f:?}");
        let mut r = request();
        r.snap_length = 262_145;
        assert!(fields(&r)[0].starts_with("snap_length: 262145 is above"));
        let mut r = request();
        r.interfaces = vec!["eth/0".into(), "lo".into(), "lo".into(), "sixteen-bytes-xx".into()];
        let f = fields(&r);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].starts_with("interfaces[0]:") && f[1].starts_with("interfaces[2]:"));
        assert!(f[2].starts_with("interfaces[3]:"));
        r.interfaces = vec!["any".into(), "lo".into()];
        assert_eq!(fields(&r), ["interfaces: `any` captures every interface already; name it alone"]);
        // On `any` the expression is compiled for cooked frames: `vlan` is refused there.
        r.interfaces = vec!["any".into()];
        r.expression = "vlan and udp".into();
        assert!(fields(&r)[0].starts_with("expression: column 1:"), "{:?}", fields(&r));
        r.expression = "udp port 53".into();
        assert!(fields(&r).is_empty());
        let mut r = request();
        r.interfaces.clear();
        assert!(fields(&r)[0].starts_with("interfaces: name at least one"));
    }
}
