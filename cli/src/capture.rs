//! `palisade capture`: packet capture. `capture filter` runs a compiled filter over a capture
//! file with no server — the `tcpdump -r` of Palisade, for trying an expression before it
//! goes to the fleet — in the kernel (`BPF_PROG_TEST_RUN`, as root) or in the compiler's
//! interpreter (any user); both run the same instructions. `capture start|list|status|stop|
//! get|delete` drive capture sessions on the fleet through the server's `CaptureService`.

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
};

use anyhow::Context as _;
use palisade_agent::capture::offline::{self, Engine, Filter, Output, Summary};
use palisade_compiler::capture::{CompileError, DEFAULT_SNAPLEN, Link, Target, compile_for};
use palisade_proto::v1::{self, capture_service_client::CaptureServiceClient};

/// `palisade capture ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CaptureCommand {
    /// Run a filter over a capture file (pcap or pcapng; Ethernet or `LINUX_SLL2`, what
    /// `tcpdump -i any` writes) and print, count or write
    /// the frames it accepts. No server needed.
    Filter(FilterArgs),
    /// Start a capture on every node the selector matches; prints its id.
    Start(StartArgs),
    /// List captures, newest first.
    List {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = crate::output::Output::Table)]
        output: crate::output::Output,
    },
    /// One capture's status, node by node.
    Status {
        /// Capture id.
        id: u64,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = crate::output::Output::Table)]
        output: crate::output::Output,
    },
    /// Ask every node still capturing to stop (what was kept stays downloadable).
    Stop {
        /// Capture id.
        id: u64,
    },
    /// Download a capture as one file, merged across nodes in time order.
    Get {
        /// Capture id.
        id: u64,
        /// Where to write it (`-` for standard output).
        #[arg(short = 'w', long = "write")]
        write: PathBuf,
        /// pcapng names the node of every packet (an interface "IFACE@NODE" per node); pcap
        /// does not.
        #[arg(long, value_enum, default_value_t = FormatArg::Pcapng)]
        format: FormatArg,
    },
    /// Delete a finished capture and its packets.
    Delete {
        /// Capture id.
        id: u64,
    },
}

impl CaptureCommand {
    /// Whether the command runs without a server.
    pub fn is_offline(&self) -> bool {
        matches!(self, Self::Filter(_))
    }
}

/// File format of `capture get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// pcapng, naming the node of each packet.
    Pcapng,
    /// Classic pcap.
    Pcap,
}

/// `palisade capture start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The filter expression (docs/capture.md); several words are joined with spaces. None:
    /// every packet.
    expression: Vec<String>,
    /// Nodes with these labels (KEY=VALUE, repeatable or comma-separated); none: every node.
    #[arg(short = 'l', long = "selector", value_delimiter = ',')]
    selector: Vec<String>,
    /// Interface to capture on (repeatable or comma-separated), for example lo or eth0.
    #[arg(short = 'i', long = "interface", value_delimiter = ',', required = true)]
    interfaces: Vec<String>,
    /// How long the capture runs from now (`30s`, `5m`, `1h`; at most 24h); every node stops
    /// by then. Required.
    #[arg(long, value_parser = crate::rollout::parse_duration)]
    duration: std::time::Duration,
    /// Packets each node keeps at most. Required.
    #[arg(long)]
    max_packets: u64,
    /// Bytes of packet data each node keeps at most. Required.
    #[arg(long)]
    max_bytes: u64,
    /// Bytes kept of each packet, 1 to 262144 (0: 262144).
    #[arg(short = 's', long = "snaplen", default_value_t = 0)]
    snaplen: u32,
    /// Wait for the capture to finish, printing its status at the end.
    #[arg(long)]
    wait: bool,
}

/// Which engine runs an offline filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// The kernel as root, the interpreter otherwise.
    Auto,
    /// `BPF_PROG_TEST_RUN` (needs root or `CAP_BPF`).
    Kernel,
    /// The compiler's interpreter.
    Interpreter,
}

/// `palisade capture filter`.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// The filter expression, in pcap-filter syntax (docs/capture.md); several words are
    /// joined with spaces, as tcpdump does.
    #[arg(required = true, num_args = 1..)]
    expression: Vec<String>,
    /// The capture file to read.
    #[arg(short = 'r', long = "read")]
    read: PathBuf,
    /// Write the accepted frames to this pcap file (`-` for standard output).
    #[arg(short = 'w', long = "write")]
    write: Option<PathBuf>,
    /// Print only how many frames the filter accepted.
    #[arg(long)]
    count: bool,
    /// Which engine runs the filter.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    engine: EngineArg,
    /// Bytes kept of each accepted frame (what the filter returns), 1 to 262144.
    #[arg(short = 's', long = "snaplen", default_value_t = DEFAULT_SNAPLEN)]
    snaplen: u32,
    /// Print the compiled program instead of running it.
    #[arg(short = 'd', long)]
    disassemble: bool,
}

/// The expression (up to 40 characters each side of the column, for a long one) with a caret
/// under the column an error names.
fn pointed(text: &str, e: &CompileError) -> String {
    const SIDE: usize = 40;
    let at = e.column().saturating_sub(1).min(text.len());
    let mut start = at.saturating_sub(SIDE);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + SIDE).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    let (before, after) = (if start > 0 { "…" } else { "" }, if end < text.len() { "…" } else { "" });
    let caret = " ".repeat(text[start..at].chars().count() + before.chars().count());
    format!("error: capture filter: {e}\n  {before}{}{after}\n  {caret}^", &text[start..end])
}

pub fn run(command: CaptureCommand) -> anyhow::Result<()> {
    let CaptureCommand::Filter(args) = command else {
        anyhow::bail!("error: this capture command needs a server");
    };
    if args.snaplen == 0 || args.snaplen > DEFAULT_SNAPLEN {
        anyhow::bail!("error: --snaplen {}: must be 1 to {DEFAULT_SNAPLEN}", args.snaplen);
    }
    let text = args.expression.join(" ");
    // The filter is compiled for the file's framing (Ethernet, or LINUX_SLL2 from `any`),
    // read from its first bytes, which are then read again from memory: `-r` may be a pipe.
    let mut file = std::fs::File::open(&args.read).with_context(|| format!("error: -r {}", args.read.display()))?;
    let mut prefix = Vec::with_capacity(64 * 1024);
    (&mut file)
        .take(64 * 1024)
        .read_to_end(&mut prefix)
        .with_context(|| format!("error: -r {}", args.read.display()))?;
    let link = offline::sniff_link(&prefix)?.unwrap_or(Link::Ethernet);
    let input = std::io::Cursor::new(prefix).chain(file);
    let program =
        compile_for(&text, Target::File, link, args.snaplen).map_err(|e| anyhow::anyhow!(pointed(&text, &e)))?;
    if args.disassemble {
        print!("{}", palisade_compiler::bpf::disasm::disassemble(&program));
        return Ok(());
    }
    let engine = match args.engine {
        EngineArg::Auto => Engine::for_this_process(),
        EngineArg::Kernel => Engine::Kernel,
        EngineArg::Interpreter => Engine::Interpreter,
    };
    let filter = Filter::for_link(program, Target::File, link, engine)
        .map_err(|e| anyhow::anyhow!("error: capture filter: {e}"))?;
    let summary = match &args.write {
        Some(path) if path.as_os_str() == "-" => {
            let mut out = Output::for_link(std::io::stdout().lock(), link)?;
            let summary = offline::filter_file(&filter, input, Some(&mut out))?;
            out.finish()?.flush()?;
            summary
        }
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("error: -w {}", path.display()))?;
            let mut out = Output::for_link(std::io::BufWriter::new(file), link)?;
            let summary = offline::filter_file(&filter, input, Some(&mut out))?;
            out.finish()?.flush()?;
            summary
        }
        None if args.count => offline::filter_file::<std::io::Sink>(&filter, input, None)?,
        None => list(&filter, input)?,
    };
    if args.count {
        println!("{}", summary.accepted);
    }
    report(&summary, engine);
    Ok(())
}

/// Prints one line per accepted frame: index, time, captured and wire length.
fn list(filter: &Filter, input: impl std::io::Read) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut out = std::io::stdout().lock();
    offline::read_frames(input, |frame| {
        filter.check_link(summary.packets, frame)?;
        let verdict = filter.run(summary.packets, &frame.data, frame.wire_len)?;
        if verdict.engine == Engine::Interpreter && filter.uses_kernel() {
            summary.interpreted += 1;
        }
        if verdict.keep != 0 {
            summary.accepted += 1;
            let _ = writeln!(
                out,
                "{}\t{}.{:09}\t{} of {} bytes",
                summary.packets,
                frame.timestamp.as_secs(),
                frame.timestamp.subsec_nanos(),
                frame.data.len().min(verdict.keep as usize),
                frame.wire_len
            );
        }
        summary.packets += 1;
        Ok(())
    })?;
    Ok(summary)
}

fn report(summary: &Summary, engine: Engine) {
    let how = match engine {
        Engine::Kernel if summary.interpreted > 0 => format!(
            "kernel (BPF_PROG_TEST_RUN); {} frames it does not take ran in the interpreter",
            summary.interpreted
        ),
        Engine::Kernel => "kernel (BPF_PROG_TEST_RUN)".to_owned(),
        Engine::Interpreter => "interpreter".to_owned(),
    };
    eprintln!("{} of {} frames accepted; engine: {how}", summary.accepted, summary.packets);
}

fn node_state(state: i32) -> &'static str {
    match v1::CaptureNodeState::try_from(state) {
        Ok(v1::CaptureNodeState::Pending) => "pending",
        Ok(v1::CaptureNodeState::Running) => "running",
        Ok(v1::CaptureNodeState::Finished) => "finished",
        Ok(v1::CaptureNodeState::Failed) => "failed",
        _ => "?",
    }
}

/// Columns of a capture's row ([`capture_row`]).
const CAPTURE_HEADERS: &[&str] =
    &["ID", "STATE", "NODES DONE", "KEPT", "STORED", "INTERFACES", "CREATED", "EXPRESSION"];

fn capture_row(c: &v1::Capture) -> Vec<String> {
    let state = if c.state == v1::CaptureState::Finished as i32 { "finished" } else { "running" };
    vec![
        c.id.to_string(),
        state.to_owned(),
        format!("{}/{}", c.nodes_finished, c.node_count),
        c.packets_kept.to_string(),
        c.stored_bytes.to_string(),
        c.interfaces.join(","),
        crate::commands::when(c.created_at.as_ref()),
        crate::table::escape_controls(&c.expression),
    ]
}

/// Prints a capture and its nodes.
fn print_capture(output: crate::output::Output, capture: &v1::Capture) {
    use crate::output::{Listing, Output};
    if output != Output::Table {
        crate::output::print_value(output, &crate::output::json("palisade.v1.Capture", capture));
        return;
    }
    let mut listing = Listing::new(output, CAPTURE_HEADERS);
    listing.push("palisade.v1.Capture", capture, capture_row(capture));
    listing.finish();
    let mut nodes = Listing::new(output, &["NODE", "STATE", "SEEN", "KEPT", "DROPPED", "BYTES", "STOPPED BY", "ERROR"]);
    for n in &capture.nodes {
        let row = vec![
            n.node.clone(),
            node_state(n.state).to_owned(),
            n.packets_seen.to_string(),
            n.packets_kept.to_string(),
            n.packets_dropped.to_string(),
            n.bytes.to_string(),
            if n.stop_reason.is_empty() { "-".to_owned() } else { n.stop_reason.clone() },
            if n.error.is_empty() { "-".to_owned() } else { crate::table::escape_controls(&n.error) },
        ];
        nodes.push("palisade.v1.CaptureNodeStatus", n, row);
    }
    println!();
    nodes.finish();
}

/// Runs the capture commands that need a server.
pub async fn run_online(channel: &palisade_proto::client::Connection, command: CaptureCommand) -> anyhow::Result<()> {
    use crate::commands::{failed, request};
    let mut client = CaptureServiceClient::new(channel.clone()).max_decoding_message_size(8 << 20);
    match command {
        CaptureCommand::Filter(_) => anyhow::bail!("error: capture filter runs without a server"),
        CaptureCommand::Start(args) => start(&mut client, args).await,
        CaptureCommand::List { output } => {
            let mut listing = crate::output::Listing::new(output, CAPTURE_HEADERS);
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_captures(request(v1::ListCapturesRequest { page_size: 1000, page_token }))
                    .await
                    .map_err(|s| failed("list captures", &s))?
                    .into_inner();
                for c in &page.captures {
                    listing.push("palisade.v1.Capture", c, capture_row(c));
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            listing.finish();
            Ok(())
        }
        CaptureCommand::Status { id, output } => {
            let capture = client
                .get_capture(request(v1::GetCaptureRequest { id }))
                .await
                .map_err(|s| failed("capture status", &s))?
                .into_inner()
                .capture
                .unwrap_or_default();
            print_capture(output, &capture);
            Ok(())
        }
        CaptureCommand::Stop { id } => {
            client
                .stop_capture(request(v1::StopCaptureRequest { id }))
                .await
                .map_err(|s| failed("stop capture", &s))?;
            eprintln!("capture {id}: stop requested");
            Ok(())
        }
        CaptureCommand::Delete { id } => {
            client
                .delete_capture(request(v1::DeleteCaptureRequest { id }))
                .await
                .map_err(|s| failed("delete capture", &s))?;
            eprintln!("capture {id} deleted");
            Ok(())
        }
        CaptureCommand::Get { id, write, format } => get(&mut client, id, &write, format).await,
    }
}

type Client = CaptureServiceClient<palisade_proto::client::Connection>;

/// `capture start`.
async fn start(client: &mut Client, args: StartArgs) -> anyhow::Result<()> {
    use crate::commands::{failed, request};
    let duration = prost_types::Duration::try_from(args.duration).unwrap_or_default();
    let start = v1::StartCaptureRequest {
        expression: args.expression.join(" "),
        node_selector: crate::commands::parse_selector(&args.selector)?,
        interfaces: args.interfaces,
        snap_length: args.snaplen,
        limits: Some(v1::CaptureLimits {
            duration: Some(duration),
            max_packets: args.max_packets,
            max_bytes: args.max_bytes,
        }),
    };
    let started = client
        .start_capture(request(start))
        .await
        .map_err(|s| failed("start capture", &s))?
        .into_inner()
        .capture
        .unwrap_or_default();
    println!("{}", started.id);
    eprintln!("capture {} started on {} nodes", started.id, started.node_count);
    if args.wait {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let now = client
                .get_capture(request(v1::GetCaptureRequest { id: started.id }))
                .await
                .map_err(|s| failed("capture status", &s))?
                .into_inner()
                .capture
                .unwrap_or_default();
            if now.state == v1::CaptureState::Finished as i32 {
                print_capture(crate::output::Output::Table, &now);
                break;
            }
        }
    }
    Ok(())
}

/// `capture get`.
async fn get(client: &mut Client, id: u64, write: &std::path::Path, format: FormatArg) -> anyhow::Result<()> {
    use crate::commands::{failed, request};
    let format = match format {
        FormatArg::Pcapng => v1::CaptureFormat::Pcapng,
        FormatArg::Pcap => v1::CaptureFormat::Pcap,
    } as i32;
    let mut stream = client
        .download_capture(request(v1::DownloadCaptureRequest { id, format }))
        .await
        .map_err(|s| failed("download capture", &s))?
        .into_inner();
    // Written to a temporary file renamed at the end: an interrupted download leaves
    // no truncated capture behind under the asked name.
    let to_stdout = write.as_os_str() == "-";
    let partial = write.with_extension("partial");
    let mut out: Box<dyn std::io::Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(&partial).with_context(|| format!("error: -w {}", partial.display()))?)
    };
    let mut bytes = 0;
    let copied = async {
        while let Some(chunk) = stream.message().await.map_err(|s| failed("download capture", &s))? {
            out.write_all(&chunk.data).context("error: writing the capture")?;
            bytes += chunk.data.len();
        }
        anyhow::Ok(())
    };
    if let Err(error) = copied.await {
        if !to_stdout {
            let _ = std::fs::remove_file(&partial);
        }
        return Err(error);
    }
    out.flush().context("error: writing the capture")?;
    drop(out);
    if !to_stdout {
        std::fs::rename(&partial, write).with_context(|| format!("error: -w {}", write.display()))?;
        eprintln!("capture {id}: {bytes} bytes written to {}", write.display());
    }
    Ok(())
}
