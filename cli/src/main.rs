//! `palisade`: the operator's command line for the Palisade control plane.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool prints its results")]

mod capture;
mod commands;
mod explain;
mod flows;
mod output;
mod rollout;
mod table;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use output::Output;

/// Palisade: fleet-wide eBPF network and security policy.
#[derive(Debug, Parser)]
#[command(name = "palisade", version)]
struct Cli {
    /// Server address: https://HOST:PORT (TLS), or http://HOST:PORT / HOST:PORT for a
    /// `--dev` server. Several replicas, comma-separated: the first that accepts a connection
    /// is used.
    #[arg(long, env = "PALISADE_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    server: String,
    /// PEM CA certificate the server's certificate must chain to (needed for https://).
    #[arg(long, env = "PALISADE_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Bearer token for the admin API (`palisade-server token create`); not needed against a
    /// `--dev` server.
    #[arg(long, env = "PALISADE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Output format of `get`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

/// `palisade token ...`.
#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Lists tokens (names, roles, creation and revocation times; never secrets).
    List {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Revokes a token: calls carrying it are refused from then on.
    Revoke {
        /// Token name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update policies from a YAML/JSON file (several documents separated by
    /// `---`) or from every *.yaml, *.yml and *.json file in a directory.
    Apply {
        /// File or directory.
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
        /// Validate and show what would change without storing anything.
        #[arg(long)]
        dry_run: bool,
        /// Only apply if the policy is at this revision (0: it must not exist yet).
        #[arg(long)]
        expected_revision: Option<u64>,
        /// Wait until every connected node the policies select enforces them, showing
        /// progress; exit non-zero naming any node that rejects them.
        #[arg(long, conflicts_with = "dry_run")]
        wait: bool,
        /// How long --wait waits (e.g. 30s, 5m).
        #[arg(long, default_value = "2m", value_parser = rollout::parse_duration, requires = "wait")]
        timeout: std::time::Duration,
    },
    /// Print a policy as stored (defaults filled in).
    Get {
        /// Policy name.
        name: String,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Yaml)]
        output: Format,
        /// A past revision instead of the current one.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// List policies.
    List {
        /// Only policies with these labels (KEY=VALUE, repeatable or comma-separated).
        #[arg(short = 'l', long = "selector", value_delimiter = ',')]
        selector: Vec<String>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete a policy (its history stays).
    Delete {
        /// Policy name.
        name: String,
        /// Only delete if the policy is at this revision.
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// Show every revision of a policy, newest first.
    History {
        /// Policy name.
        name: String,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Compile a policy file without storing it and show program statistics.
    Compile {
        /// Policy file (one document).
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
        /// Print the disassembly with rule ids as comments.
        #[arg(long)]
        disasm: bool,
        /// Compile here with the linked compiler instead of asking the server (no server
        /// needed; the same validation and compiler).
        #[arg(long)]
        offline: bool,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List nodes and their sync state.
    Nodes {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Which nodes enforce a policy's current revision (or every policy's).
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// What a node's kernel would decide for an operation, and why: every policy in the
    /// node's bundle with its own outcome, the verdict and the event it would report.
    Explain(explain::ExplainArgs),
    /// Packet capture: `capture filter EXPR -r IN.pcap [-w OUT.pcap] [--count]` runs a filter
    /// over a capture file, without a server; `capture start|list|status|stop|get|delete`
    /// run capture sessions on the fleet.
    #[command(subcommand)]
    Capture(capture::CaptureCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Show the client's and the server's versions.
    Version {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Admin API tokens (needs an admin token). Create them on the server's host with
    /// `palisade-server token create`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show TCP flow aggregates (`connections.observe`), newest last; --follow streams new
    /// ones; `flows top` shows the top talkers.
    Flows(flows::FlowsArgs),
    /// Show decision events, newest first; --follow streams new ones.
    Events {
        /// Only events of this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only events from this node.
        #[arg(long)]
        node: Option<String>,
        /// Only events with this verdict.
        #[arg(long, value_enum)]
        verdict: Option<commands::VerdictArg>,
        /// How many stored events to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Keep streaming new events until interrupted.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// `palisade rollout ...`.
#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Rollout progress: per node for one policy, or a summary per policy.
    Status {
        /// Policy name; omitted: every policy.
        policy: Option<String>,
        /// A past revision instead of the current one.
        #[arg(long, requires = "policy")]
        revision: Option<u64>,
        /// Keep showing progress until no connected node is pending.
        #[arg(long)]
        watch: bool,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
