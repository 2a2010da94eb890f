//! `palisade explain`: what a node's kernel would decide for one operation, and why.

use std::net::SocketAddr;

use anyhow::Context as _;
use palisade_proto::v1::{self, explain_request::Operation as Op, explain_service_client::ExplainServiceClient};

use crate::{
    commands::failed,
    output::{Output, json, print_value},
    table::{Table, escape_controls},
};

/// Arguments of `explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The node whose bundle decides.
    #[arg(long, global = true)]
    node: Option<String>,
    /// cgroup v2 path of the process (relative to the cgroup2 mount).
    #[arg(long, global = true, default_value = "/")]
    cgroup: String,
    /// uid of the process.
    #[arg(long, global = true, default_value_t = 0)]
    uid: u32,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, global = true, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    operation: Operation,
}

/// Transport protocol of a connect or bind.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Protocol {
    Tcp,
    Udp,
}

/// The operation to explain.
#[derive(Debug, clap::Subcommand)]
enum Operation {
    /// connect(2), e.g. `connect tcp 10.1.2.3:443` or `connect tcp [2001:db8::1]:443`.
    Connect {
        /// tcp or udp.
        #[arg(value_enum)]
        protocol: Protocol,
        /// ADDRESS:PORT.
        target: SocketAddr,
    },
    /// bind(2), e.g. `bind udp 0.0.0.0:53`.
    Bind {
        /// tcp or udp.
        #[arg(value_enum)]
        protocol: Protocol,
        /// ADDRESS:PORT.
        target: SocketAddr,
    },
    /// execve(2) of a resolved path, e.g. `exec /usr/bin/curl`.
    Exec {
        /// Absolute path.
        path: String,
    },
    /// open(2) of a resolved path, e.g. `open /etc/shadow --write`.
    Open {
        /// Absolute path.
        path: String,
        /// Opened for reading (the default when neither is given).
        #[arg(long)]
        read: bool,
        /// Opened for writing.
        #[arg(long)]
        write: bool,
    },
}

fn network(protocol: Protocol, target: SocketAddr) -> v1::NetworkOperation {
    v1::NetworkOperation {
        protocol: match protocol {
            Protocol::Tcp => v1::Protocol::Tcp,
            Protocol::Udp => v1::Protocol::Udp,
        } as i32,
        address: target.ip().to_string(),
        port: u32::from(target.port()),
    }
}

fn verdict(v: i32, would_deny: bool) -> &'static str {
    match v1::Verdict::try_from(v) {
        Ok(v1::Verdict::Deny) => "DENY",
        Ok(v1::Verdict::Audit) if would_deny => "AUDIT(would deny)",
        Ok(v1::Verdict::Audit) => "AUDIT",
        _ => "ALLOW",
    }
}

/// Runs `explain`.
pub async fn run(channel: &palisade_proto::client::Connection, args: ExplainArgs) -> anyhow::Result<()> {
    let node = args.node.context("error: explain needs --node NAME")?;
    let (operation, what) = match args.operation {
        Operation::Connect { protocol, target } => {
            (Op::Connect(network(protocol, target)), format!("connect {protocol:?} {target}").to_lowercase())
        }
        Operation::Bind { protocol, target } => {
            (Op::Bind(network(protocol, target)), format!("bind {protocol:?} {target}").to_lowercase())
        }
        Operation::Exec { path } => (Op::Exec(v1::ExecOperation { path: path.clone() }), format!("exec {path}")),
        Operation::Open { path, read, write } => {
            let mut access = Vec::new();
            if read || !write {
                access.push(v1::FileAccess::Read as i32);
            }
            if write {
                access.push(v1::FileAccess::Write as i32);
            }
            let how = match (read || !write, write) {
                (true, true) => "read+write",
                (false, true) => "write",
                _ => "read",
            };
            (Op::Open(v1::OpenOperation { path: path.clone(), access }), format!("open({how}) {path}"))
        }
    };
    let request = v1::ExplainRequest {
        node: node.clone(),
        operation: Some(operation),
        cgroup: args.cgroup.clone(),
        uid: args.uid,
    };
    let response = ExplainServiceClient::new(channel.clone())
        .explain(request)
        .await
        .map_err(|s| failed(&format!("explain on node {node}"), &s))?
        .into_inner();
    if args.output != Output::Table {
        print_value(args.output, &json("palisade.v1.ExplainResponse", &response));
        return Ok(());
    }
    let bundle: String = response.digest.chars().take(12).collect();
    let state = if response.acknowledged { "acknowledged" } else { "desired, not yet acknowledged" };
    println!("node {}: generation {} ({state}), bundle {bundle}", response.node, response.generation);
    println!("{what} from cgroup {} uid {}", args.cgroup, args.uid);
    let mut table = Table::new(&["POLICY", "REV", "MODE", "APPLIES", "OUTCOME", "RULE", "DECIDES"]);
    for p in &response.policies {
        let mode = v1::Mode::try_from(p.mode).map_or("?", |m| m.as_str_name().trim_start_matches("MODE_"));
        table.row(vec![
            p.policy.clone(),
            p.revision.to_string(),
            mode.to_lowercase(),
            if p.applies { "yes".to_owned() } else { format!("no: {}", p.reason) },
            if p.applies { verdict(p.verdict, p.would_deny).to_owned() } else { "-".to_owned() },
            if p.rule_id.is_empty() { "-".to_owned() } else { p.rule_id.clone() },
            if p.decides { "yes" } else { "" }.to_owned(),
        ]);
    }
    if response.policies.is_empty() {
        println!("no policies in the node's bundle");
    } else {
        print!("{}", table.render());
    }
    if response.failsafe {
        println!("failsafe: the node's failsafe list exempts this connect from every policy");
    }
    if !response.not_enforced.is_empty() {
        println!("not enforced: {}", escape_controls(&response.not_enforced));
    }
    let event = match &response.event {
        Some(e) => format!(
            "{} policy {} revision {} rule {} (hook {})",
            verdict(e.verdict, e.would_deny),
            e.policy,
            e.revision,
            e.rule_id,
            e.hook
        ),
        None => "none".to_owned(),
    };
    println!("verdict: {}", verdict(response.verdict, false));
    println!("event: {}", escape_controls(&event));
    Ok(())
}
