//! `palisade-server`: parse flags, start logging, serve until SIGINT/SIGTERM.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "the tools print what they made")]

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = palisade_server::Cli::parse();
    if let Some(palisade_server::Tool::Token(palisade_server::TokenTool::Create {
        role,
        name,
        capture,
        database_url,
    })) = cli.command
    {
        let role = palisade_server::auth::Role::parse(&role).ok_or_else(|| anyhow::anyhow!("--role {role}"))?;
        let secret = palisade_server::create_token_capturing(&database_url, &name, role, capture).await?;
        let may = if capture { ", allowed to capture packets" } else { "" };
        eprintln!(
            "created token {name:?} with role {}{may}; its secret (shown once, stored only hashed):",
            role.as_str()
        );
        println!("{secret}");
        return Ok(());
    }
    if let Some(palisade_server::Tool::Pki(tool)) = cli.command {
        let written = match tool {
            palisade_server::PkiTool::Init { dir, san } => palisade_server::pki::init(&dir, &san)?,
            palisade_server::PkiTool::IssueNode { name, dir } => palisade_server::pki::issue_node(&name, &dir)?,
        };
        for path in written {
            println!("{}", path.display());
        }
        return Ok(());
    }
    let config = cli.serve;
    palisade_server::init_logging(config.log_json);
    let shutdown = CancellationToken::new();
    palisade_server::cancel_on_signals(shutdown.clone());
    palisade_server::run(config, shutdown).await?;
    Ok(())
}
