//! `palisade capture`: packet capture filters. `capture filter` runs a compiled filter over a
//! capture file with no server — the `tcpdump -r` of Palisade, for trying an expression before
//! it goes to the fleet — in the kernel (`BPF_PROG_TEST_RUN`, as root) or in the compiler's
//! interpreter (any user); both run the same instructions.

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
};

use anyhow::Context as _;
use palisade_agent::capture::offline::{self, Engine, Filter, Output, Summary};
use palisade_compiler::capture::{CompileError, DEFAULT_SNAPLEN, Link, Target, compile_for};

/// `palisade capture ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CaptureCommand {
    /// Run a filter over a capture file (pcap or pcapng; Ethernet or `LINUX_SLL2`, what
    /// `tcpdump -i any` writes) and print, count or write
    /// the frames it accepts. No server needed.
    Filter(FilterArgs),
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
    let CaptureCommand::Filter(args) = command;
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
