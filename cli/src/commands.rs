//! The commands: each turns arguments into gRPC calls and prints the result.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use palisade_proto::{
    ACTOR_METADATA_KEY,
    document::{self, PolicyDocument},
    v1::{
        self, event_service_client::EventServiceClient, node_service_client::NodeServiceClient,
        policy_service_client::PolicyServiceClient, token_service_client::TokenServiceClient,
    },
};
use tokio_stream::StreamExt as _;
use tonic::{Request, Status};

/// A connection whose every call carries the `--token` (when one is given).
type Conn = palisade_proto::client::Connection;

use tonic_types::StatusExt as _;

use crate::{
    Cli, Command, Format, RolloutCommand, TokenCommand,
    output::{Listing, Output, print_value},
    table::Table,
};

/// Verdict filter for `events`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum VerdictArg {
    /// Denied operations.
    Deny,
    /// Audit reports.
    Audit,
    /// Reported allows.
    Allow,
}

/// Largest message the CLI sends or accepts.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Commands that need no server.
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "palisade", &mut std::io::stdout());
            return Ok(());
        }
        Command::Compile { path, disasm, offline: true, output } => return compile_offline(path, *disasm, *output),
        _ => {}
    }
    let cli = match cli {
        Cli { command: Command::Capture(command), .. } if command.is_offline() => return crate::capture::run(command),
        cli => cli,
    };
    let ca = match cli.ca_cert.as_deref() {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("--ca-cert {}", path.display()))?),
        None => None,
    };
    let channel = palisade_proto::client::channel(&cli.server, ca.as_deref(), None).await?;
    let channel = palisade_proto::client::with_token(channel, cli.token.as_deref())?;
    match cli.command {
        Command::Apply { path, dry_run, expected_revision, wait, timeout } => {
            let applied = apply(&channel, &path, dry_run, expected_revision).await?;
            if wait { crate::rollout::wait(&channel, &applied, timeout).await } else { Ok(()) }
        }
        Command::Get { name, output, revision } => get(&channel, &name, output, revision).await,
        Command::List { selector, output } => list(&channel, &selector, output).await,
        Command::Delete { name, expected_revision } => delete(&channel, &name, expected_revision).await,
        Command::History { name, output } => history(&channel, &name, output).await,
        Command::Compile { path, disasm, output, .. } => compile(&channel, &path, disasm, output).await,
        Command::Nodes { output } => nodes(&channel, output).await,
        Command::Rollout(RolloutCommand::Status { policy, revision, watch, output }) => {
            crate::rollout::status(&channel, policy.as_deref(), revision, watch, output).await
        }
        Command::Explain(args) => crate::explain::run(&channel, args).await,
        Command::Flows(args) => crate::flows::run(&channel, args).await,
        Command::Version { output } => version(&channel, output).await,
        Command::Capture(command) => crate::capture::run_online(&channel, command).await,
        Command::Completions { .. } => Ok(()),
        Command::Token(TokenCommand::List { output }) => tokens(&channel, output).await,
        Command::Token(TokenCommand::Revoke { name }) => revoke_token(&channel, &name).await,
        Command::Events { policy, node, verdict, limit, follow, output } => {
            let filter = v1::EventFilter {
                policy: policy.unwrap_or_default(),
                node: node.unwrap_or_default(),
                verdict: verdict.map_or(v1::Verdict::Unspecified, |v| match v {
                    VerdictArg::Deny => v1::Verdict::Deny,
                    VerdictArg::Audit => v1::Verdict::Audit,
                    VerdictArg::Allow => v1::Verdict::Allow,
                }) as i32,
                ..Default::default()
            };
            events(&channel, filter, limit, follow, output).await
        }
    }
}

pub fn policies(channel: &Conn) -> PolicyServiceClient<Conn> {
    PolicyServiceClient::new(channel.clone())
        .max_encoding_message_size(MAX_MESSAGE)
        .max_decoding_message_size(MAX_MESSAGE)
}

/// Wraps a message with the actor metadata the audit log records.
pub fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
    if let Ok(value) = format!("{user} (palisade cli)").parse() {
        request.metadata_mut().insert(ACTOR_METADATA_KEY, value);
    }
    request
}

/// A server error as a human reads it: the message plus one line per field violation.
fn describe(status: &Status) -> String {
    let mut out = format!("{} ({:?})", status.message(), status.code());
    if let Some(bad) = status.get_details_bad_request() {
        out = format!("invalid ({:?}):", status.code());
        for violation in bad.field_violations {
            let _ = write!(out, "\n  {}: {}", violation.field, violation.description);
        }
    }
    out
}

pub fn failed(context: &str, status: &Status) -> anyhow::Error {
    anyhow::anyhow!("error: {context}: {}", describe(status))
}

/// Policy files under `path`: the file itself, or a directory's YAML/JSON files by name.
fn policy_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read directory {}", path.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("error: {} has no .yaml, .yml or .json files", path.display());
    }
    Ok(files)
}

/// Parses every document in every file first, so a typo anywhere applies nothing.
fn load_documents(path: &Path) -> anyhow::Result<Vec<(String, PolicyDocument)>> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for file in policy_files(path)? {
        let text = std::fs::read_to_string(&file).with_context(|| format!("error: cannot read {}", file.display()))?;
        for (i, parsed) in document::parse_all(&text).into_iter().enumerate() {
            let origin = format!("{} (document {})", file.display(), i + 1);
            match parsed {
                Ok(doc) => documents.push((origin, doc)),
                Err(e) => errors.push(format!("  {origin}: {}: {}", e.path, e.message)),
            }
        }
    }
    if !errors.is_empty() {
        bail!("error: invalid policy documents, nothing applied:\n{}", errors.join("\n"));
    }
    if documents.is_empty() {
        bail!("error: {} contains no policy documents", path.display());
    }
    Ok(documents)
}

/// Applies every document; returns each applied policy's name and revision.
async fn apply(
    channel: &Conn,
    path: &Path,
    dry_run: bool,
    expected_revision: Option<u64>,
) -> anyhow::Result<Vec<(String, u64)>> {
    let documents = load_documents(path)?;
    let mut client = policies(channel);
    let entries: Vec<v1::ApplyPolicyRequest> = documents
        .iter()
        .map(|(_, doc)| v1::ApplyPolicyRequest {
            source: Some(v1::apply_policy_request::Source::Policy(doc.to_proto())),
            expected_revision,
            dry_run: documents.len() == 1 && dry_run,
        })
        .collect();
    // One document: ApplyPolicy. Several: one ApplyPolicies call, one transaction and one
    // policy generation — all or nothing.
    let results = if let [entry] = entries.as_slice() {
        let (origin, doc) = &documents[0];
        let response = client
            .apply_policy(request(entry.clone()))
            .await
            .map_err(|s| failed(&format!("{origin}: policy/{}", doc.name), &s))?;
        vec![response.into_inner()]
    } else {
        let batch = v1::ApplyPoliciesRequest { policies: entries, dry_run };
        match client.apply_policies(request(batch)).await {
            Ok(response) => response.into_inner().results,
            Err(status) => bail!("{}", batch_failure(&documents, &status)),
        }
    };
    let mut applied = Vec::new();
    for ((_, doc), response) in documents.iter().zip(results) {
        let revision = response.policy.map_or(0, |p| p.revision);
        let what = match (response.changed, response.created) {
            (false, _) => "unchanged".to_owned(),
            (true, true) => format!("created (revision {revision})"),
            (true, false) => format!("updated (revision {revision})"),
        };
        let suffix = if dry_run { " [dry run]" } else { "" };
        println!("policy/{} {what}{suffix}", doc.name);
        applied.push((doc.name.clone(), revision));
    }
    Ok(applied)
}

/// A refused batch, with every field violation under the file and document it came from.
fn batch_failure(documents: &[(String, PolicyDocument)], status: &Status) -> String {
    let Some(bad) = status.get_details_bad_request() else {
        return format!("error: nothing applied: {}", describe(status));
    };
    let mut out = format!("error: nothing applied ({:?}):", status.code());
    for violation in bad.field_violations {
        let located = violation.field.strip_prefix("policies[").and_then(|rest| {
            let (index, field) = rest.split_once(']')?;
            let (origin, doc) = documents.get(index.parse::<usize>().ok()?)?;
            Some(format!("{origin}: policy/{}: {}", doc.name, field.trim_start_matches('.')))
        });
        let _ = write!(out, "\n  {}: {}", located.unwrap_or(violation.field), violation.description);
    }
    out
}

async fn get(channel: &Conn, name: &str, output: Format, revision: Option<u64>) -> anyhow::Result<()> {
    let response = policies(channel)
        .get_policy(v1::GetPolicyRequest { name: name.to_owned(), revision })
        .await
        .map_err(|s| failed(&format!("policy/{name}"), &s))?;
    let policy = response.into_inner().policy.and_then(|p| p.policy).context("error: server sent no policy")?;
    let doc = PolicyDocument::from_proto(&policy).map_err(|e| anyhow::anyhow!("error: server sent {e}"))?;
    match output {
        Format::Yaml => print!("{}", doc.to_yaml()),
        Format::Json => println!("{}", doc.to_json()),
    }
    Ok(())
}

pub(crate) fn parse_selector(selector: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    selector
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => bail!("error: selector {s:?} must be KEY=VALUE"),
        })
        .collect()
}

pub(crate) fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

fn mode_name(mode: i32) -> &'static str {
    match v1::Mode::try_from(mode) {
        Ok(v1::Mode::Audit) => "audit",
        Ok(v1::Mode::Disabled) => "disabled",
        _ => "enforce",
    }
}

async fn list(channel: &Conn, selector: &[String], output: Output) -> anyhow::Result<()> {
    let label_selector = parse_selector(selector)?;
    let mut client = policies(channel);
    let mut table = Listing::new(output, &["NAME", "REVISION", "MODE", "CONNECT RULES", "UPDATED", "BY"]);
    let mut page_token = String::new();
    loop {
        let page = client
            .list_policies(v1::ListPoliciesRequest {
                label_selector: label_selector.clone(),
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(|s| failed("list policies", &s))?
            .into_inner();
        for stored in page.policies {
            let Some(policy) = &stored.policy else { continue };
            let rules = policy.network.as_ref().and_then(|n| n.connect.as_ref()).map_or(0, |c| c.rules.len());
            let row = vec![
                policy.name.clone(),
                stored.revision.to_string(),
                mode_name(policy.mode).to_owned(),
                rules.to_string(),
                when(stored.updated_at.as_ref()),
                stored.updated_by.clone(),
            ];
            table.push("palisade.v1.StoredPolicy", &stored, row);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    table.finish();
    Ok(())
}

async fn tokens(channel: &Conn, output: Output) -> anyhow::Result<()> {
    let tokens = TokenServiceClient::new(channel.clone())
        .list_tokens(v1::ListTokensRequest {})
        .await
        .map_err(|s| failed("list tokens", &s))?
        .into_inner()
        .tokens;
    let mut table = Listing::new(output, &["NAME", "ROLE", "CREATED", "REVOKED"]);
    for t in tokens {
        let role = v1::Role::try_from(t.role).map_or("?", |r| r.as_str_name().trim_start_matches("ROLE_"));
        let row = vec![t.name.clone(), role.to_lowercase(), when(t.created_at.as_ref()), when(t.revoked_at.as_ref())];
        table.push("palisade.v1.Token", &t, row);
    }
    table.finish();
    Ok(())
}

async fn revoke_token(channel: &Conn, name: &str) -> anyhow::Result<()> {
    TokenServiceClient::new(channel.clone())
        .revoke_token(v1::RevokeTokenRequest { name: name.to_owned() })
        .await
        .map_err(|s| failed(&format!("token/{name}"), &s))?;
    println!("token/{name} revoked");
    Ok(())
}

async fn delete(channel: &Conn, name: &str, expected_revision: Option<u64>) -> anyhow::Result<()> {
    let response = policies(channel)
        .delete_policy(request(v1::DeletePolicyRequest { name: name.to_owned(), expected_revision }))
        .await
        .map_err(|s| failed(&format!("policy/{name}"), &s))?;
    println!("policy/{name} deleted (revision {})", response.into_inner().revision);
    Ok(())
}

async fn history(channel: &Conn, name: &str, output: Output) -> anyhow::Result<()> {
    let mut client = policies(channel);
    let mut table = Listing::new(output, &["REVISION", "KIND", "DIGEST", "WHEN", "BY"]);
    let mut page_token = String::new();
    loop {
        let page = client
            .list_policy_revisions(v1::ListPolicyRevisionsRequest {
                name: name.to_owned(),
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(|s| failed(&format!("policy/{name}"), &s))?
            .into_inner();
        for r in page.revisions {
            let kind = match v1::RevisionKind::try_from(r.kind) {
                Ok(v1::RevisionKind::Created) => "created",
                Ok(v1::RevisionKind::Updated) => "updated",
                Ok(v1::RevisionKind::Deleted) => "deleted",
                _ => "?",
            };
            let digest: String = r.digest.chars().take(12).collect();
            let row = vec![
                r.revision.to_string(),
                kind.to_owned(),
                digest,
                when(r.created_at.as_ref()),
                r.created_by.clone(),
            ];
            table.push("palisade.v1.PolicyRevision", &r, row);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    table.finish();
    Ok(())
}

/// Reads the one policy document `compile` takes.
fn compile_document(path: &Path) -> anyhow::Result<PolicyDocument> {
    let text = std::fs::read_to_string(path).with_context(|| format!("error: cannot read {}", path.display()))?;
    document::parse(&text).map_err(|e| anyhow::anyhow!("error: {}: {}: {}", path.display(), e.path, e.message))
}

/// `compile --offline`: the server's validation and compiler, linked into the CLI.
fn compile_offline(path: &Path, disasm: bool, output: Output) -> anyhow::Result<()> {
    use palisade_compiler::{bundle, limits, policy::model::PolicySet, program::KernelOffsets};
    let doc = compile_document(path)?;
    let policy = palisade_compiler::validate::policy(&doc.to_proto()).map_err(|violations| {
        let lines: Vec<String> = violations.iter().map(|v| format!("\n  {}: {}", v.field, v.description)).collect();
        anyhow::anyhow!("error: compile {}: invalid:{}", path.display(), lines.concat())
    })?;
    let set = PolicySet::new([(&policy, 0)], Vec::new())
        .map_err(|e| anyhow::anyhow!("error: compile {}: policy cannot be compiled: {e}", path.display()))?;
    let compiled = palisade_compiler::compile(&set, KernelOffsets::LINUX_6_12)
        .map_err(|e| anyhow::anyhow!("error: compile {}: compilation failed: {e}", path.display()))?;
    limits::check(&compiled, &limits::Limits::DEFAULT)
        .map_err(|e| anyhow::anyhow!("error: compile {}: {e}", path.display()))?;
    print_compiled(&bundle::describe(&compiled, &set, disasm), disasm, output);
    Ok(())
}

async fn compile(channel: &Conn, path: &Path, disasm: bool, output: Output) -> anyhow::Result<()> {
    let doc = compile_document(path)?;
    let response = policies(channel)
        .compile_policy(v1::CompilePolicyRequest {
            target: Some(v1::compile_policy_request::Target::Policy(doc.to_proto())),
            disassemble: disasm,
        })
        .await
        .map_err(|s| failed(&format!("compile {}", path.display()), &s))?
        .into_inner();
    print_compiled(&response, disasm, output);
    Ok(())
}

fn print_compiled(response: &v1::CompilePolicyResponse, disasm: bool, output: Output) {
    if output != Output::Table {
        print_value(output, &crate::output::json("palisade.v1.CompilePolicyResponse", response));
        return;
    }
    let mut programs = Table::new(&["PROGRAM", "SECTION", "INSTRUCTIONS", "MAX PATH JUMPS"]);
    for p in &response.programs {
        programs.row(vec![p.name.clone(), p.section.clone(), p.instructions.to_string(), p.max_path_jumps.to_string()]);
    }
    print!("{}", programs.render());
    let mut maps = Table::new(&["MAP", "KIND", "KEY", "VALUE", "MAX ENTRIES", "ENTRIES", "KERNEL BYTES"]);
    for m in &response.maps {
        maps.row(vec![
            m.name.clone(),
            m.kind.clone(),
            m.key_size.to_string(),
            m.value_size.to_string(),
            m.max_entries.to_string(),
            m.entries.to_string(),
            m.bytes.to_string(),
        ]);
    }
    println!();
    print!("{}", maps.render());
    println!("\ndigest {}  elf {} bytes", response.digest, response.elf_size);
    for warning in &response.warnings {
        println!("warning: {warning}");
    }
    if disasm {
        println!("\n{}", response.disassembly);
    }
}

async fn version(channel: &Conn, output: Output) -> anyhow::Result<()> {
    let client = env!("CARGO_PKG_VERSION");
    let server = v1::rollout_service_client::RolloutServiceClient::new(channel.clone())
        .get_server_info(v1::GetServerInfoRequest {})
        .await
        .map_err(|s| failed("server info", &s))?
        .into_inner();
    if output == Output::Table {
        println!("client  {client}");
        println!("server  {}", server.version);
        println!("bundle public key  {}", server.bundle_public_key);
    } else {
        let value = serde_json::json!({
            "client": {"version": client},
            "server": crate::output::json("palisade.v1.ServerInfo", &server),
        });
        print_value(output, &value);
    }
    Ok(())
}

async fn nodes(channel: &Conn, output: Output) -> anyhow::Result<()> {
    let mut client = NodeServiceClient::new(channel.clone());
    let mut table = Listing::new(
        output,
        &["NAME", "CONNECTED", "LAST SEEN", "KERNEL", "BPF-LSM", "DESIRED", "APPLIED", "NOT ENFORCEABLE", "LAST ERROR"],
    );
    let mut notes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_nodes(v1::ListNodesRequest { page_size: 1000, page_token, ..Default::default() })
            .await
            .map_err(|s| failed("list nodes", &s))?
            .into_inner();
        for n in page.nodes {
            let node = n.clone();
            let features = n.features.unwrap_or_default();
            let error = n.last_error.map_or_else(|| "-".to_owned(), |e| format!("gen {}: {}", e.generation, e.message));
            let unenforced: Vec<String> =
                n.not_enforceable.iter().map(|u| format!("{}/{}", u.policy, u.section)).collect();
            for u in &n.not_enforceable {
                notes.push(format!(
                    "node {}: policy {} (revision {}) section {} is not enforceable on this node: {}",
                    n.name, u.policy, u.revision, u.section, u.reason
                ));
            }
            if let Some(s) = n.event_stats.as_ref() {
                let dropped = s.backlog_full + s.queue_full + s.undecodable + s.ring_full;
                if dropped > 0 {
                    notes.push(format!(
                        "node {}: {dropped} decision events dropped since the agent started (ring buffer full {}, \
                         queue full {}, backlog full {}, undecodable {}); {} waiting to be reported ({} KiB)",
                        n.name,
                        s.ring_full,
                        s.queue_full,
                        s.backlog_full,
                        s.undecodable,
                        s.pending,
                        s.pending_bytes.div_ceil(1024)
                    ));
                }
            }
            if let Some(s) = n.event_stats.as_ref()
                && s.flows_dropped + s.flows_untracked + s.tune_refused + s.flows_backlog_full + s.flow_records_dropped
                    > 0
            {
                notes.push(format!(
                    "node {}: connections: {} flow records dropped in the agent (queue or --flow-max-keys), {} \
                     connections not tracked (the kernel's connection-state map was full), {} tuning settings \
                     refused by the kernel, {} aggregates dropped from the backlog, {} live records not sent \
                     (--flow-record-rate)",
                    n.name,
                    s.flows_dropped,
                    s.flows_untracked,
                    s.tune_refused,
                    s.flows_backlog_full,
                    s.flow_records_dropped
                ));
            }
            if n.flows_rate_limited > 0 {
                notes.push(format!(
                    "node {}: {} flow aggregates refused by the server because the node reported faster than \
                     its --flow-rate (the agent sends them again)",
                    n.name, n.flows_rate_limited
                ));
            }
            if n.events_rate_limited > 0 {
                notes.push(format!(
                    "node {}: {} decision events refused by the server because the node reported faster than \
                     its --event-rate",
                    n.name, n.events_rate_limited
                ));
            }
            let row = vec![
                n.name,
                if n.connected { "yes" } else { "no" }.to_owned(),
                when(n.last_seen.as_ref()),
                features.kernel_release,
                if features.bpf_lsm { "yes" } else { "no" }.to_owned(),
                n.desired_generation.to_string(),
                n.applied_generation.to_string(),
                if unenforced.is_empty() { "-".to_owned() } else { unenforced.join(",") },
                error.lines().next().unwrap_or_default().to_owned(),
            ];
            table.push("palisade.v1.Node", &node, row);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // Notes explain the table; JSON and YAML carry the same facts as fields.
    if !table.is_table() {
        notes.clear();
    }
    table.finish();
    for note in notes {
        println!("{}", crate::table::escape_controls(&note));
    }
    Ok(())
}

const EVENT_HEADERS: &[&str] = &["TIME", "NODE", "VERDICT", "POLICY", "REV", "RULE", "COMM", "PID", "UID", "TARGET"];

fn event_row(e: &v1::DecisionEvent) -> Vec<String> {
    let verdict = match v1::Verdict::try_from(e.verdict) {
        Ok(v1::Verdict::Deny) => "DENY",
        Ok(v1::Verdict::Audit) if e.would_deny => "AUDIT(would deny)",
        Ok(v1::Verdict::Audit) => "AUDIT",
        Ok(v1::Verdict::Allow) => "ALLOW",
        _ => "?",
    };
    let protocol = match v1::Protocol::try_from(e.protocol) {
        Ok(v1::Protocol::Udp) => "udp",
        Ok(v1::Protocol::Tcp) => "tcp",
        _ => "",
    };
    let accesses: Vec<&str> = e
        .access
        .iter()
        .filter_map(|a| match v1::FileAccess::try_from(*a) {
            Ok(v1::FileAccess::Read) => Some("read"),
            Ok(v1::FileAccess::Write) => Some("write"),
            _ => None,
        })
        .collect();
    let destination = if e.hook.contains("bprm_check_security") {
        format!("exec {}", if e.path.is_empty() { "(unresolved path)" } else { &e.path })
    } else if e.hook.contains("file_open") {
        format!("open({}) {}", accesses.join("+"), if e.path.is_empty() { "(unresolved path)" } else { &e.path })
    } else if e.address.contains(':') {
        format!("[{}]:{}/{protocol}", e.address, e.port)
    } else {
        format!("{}:{}/{protocol}", e.address, e.port)
    };
    vec![
        when(e.time.as_ref()),
        e.node.clone(),
        verdict.to_owned(),
        e.policy.clone(),
        e.revision.to_string(),
        e.rule_id.clone(),
        e.comm.clone(),
        e.pid.to_string(),
        e.uid.to_string(),
        destination,
    ]
}

async fn events(
    channel: &Conn,
    filter: v1::EventFilter,
    limit: u32,
    follow: bool,
    output: Output,
) -> anyhow::Result<()> {
    let mut client = EventServiceClient::new(channel.clone());
    // Subscribe first so nothing stored between the listing and the watch is missed.
    let watch = if follow {
        Some(
            client
                .watch_events(v1::WatchEventsRequest { filter: Some(filter.clone()) })
                .await
                .map_err(|s| failed("watch events", &s))?
                .into_inner(),
        )
    } else {
        None
    };
    let page = client
        .list_events(v1::ListEventsRequest {
            filter: Some(filter),
            page_size: limit.clamp(1, 1000),
            page_token: String::new(),
        })
        .await
        .map_err(|s| failed("list events", &s))?
        .into_inner();
    let mut table = Listing::new(output, EVENT_HEADERS);
    let newest = page.events.first().map_or(0, |e| e.id);
    for e in page.events.iter().rev() {
        table.push("palisade.v1.DecisionEvent", e, event_row(e));
    }
    table.finish();
    if let Some(mut watch) = watch {
        while let Some(item) = watch.next().await {
            let e = item.map_err(|s| failed("watch events", &s))?;
            if e.id <= newest {
                continue;
            }
            if output == Output::Table {
                let mut line = Table::default();
                line.row(event_row(&e));
                print!("{}", line.render());
            } else {
                print_value(output, &crate::output::json("palisade.v1.DecisionEvent", &e));
            }
        }
    }
    Ok(())
}
