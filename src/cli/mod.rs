//! The command line: parses argv once into a validated [`Config`] and typed arguments,
//! runs one command, and maps the outcome to an exit code (0 ok, 1 operational failure,
//! 2 usage). Nothing below this module sees argv; `anyhow` is used only here and in web
//! handlers, the layers below return typed errors.

mod bundle_cmd;
mod capture_cmd;
mod conflicts_cmd;
mod dev_cmd;
mod output;
mod sync_cmd;
mod verify_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};

pub use output::Output;

/// Exit code of a successful run.
pub const EXIT_OK: i32 = 0;
/// Exit code of an operational failure (a database down, a bundle refused, ...).
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of a usage error (bad arguments, a missing config).
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Keep the databases of many OpenMRS servers in sync over slow, expensive or absent links.",
    long_about = "ferry captures every row change of an OpenMRS database with triggers, seals the \
changes into signed, encrypted bundle files, and applies bundles from other nodes in order, once, \
atomically. Bundles travel by any means: a shared folder, rsync, a USB stick.\n\n\
First steps on a node:\n  ferry init --db mysql://USER:PASS@127.0.0.1:3306/openmrs --node clinic-a\n  \
ferry plan        # what ferry will do with every table\n  ferry setup       # install capture\n  \
ferry status      # what is going on",
    after_help = "Exit codes: 0 ok, 1 operational failure, 2 usage error.\n\
Logs go to stderr; set FERRY_LOG=debug for more, FERRY_LOG_FORMAT=json for machine-readable logs."
)]
pub struct Cli {
    /// The node's config file.
    #[arg(long, global = true, env = "FERRY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write this node's config file (database URL and node name) and create its keys.
    Init(capture_cmd::InitArgs),
    /// Show the sync plan ferry derives from the schema: identity, foreign keys and
    /// columns of every table, and why a table stays node-local.
    Plan(capture_cmd::PlanArgs),
    /// Install capture: ferry's bookkeeping tables and triggers. Safe to run again;
    /// run it after an OpenMRS upgrade to pick up schema changes.
    Setup(capture_cmd::JsonArgs),
    /// Remove every trigger and table ferry installed. OpenMRS tables are left as they were.
    Teardown(capture_cmd::TeardownArgs),
    /// Show capture state, pending changes and schema drift.
    Status(capture_cmd::JsonArgs),
    /// List tables with their sync state, or switch sync on or off per table.
    Tables(capture_cmd::TablesArgs),
    /// Seal every change a peer does not hold yet into the next bundle for it, in the
    /// outbox. With nothing new, no bundle is written unless --heartbeat.
    Export(sync_cmd::ExportArgs),
    /// Verify and apply bundles: the given files, or everything waiting in the inbox.
    /// Each bundle applies whole or not at all, once, in its sender's order.
    Import(sync_cmd::ImportArgs),
    /// After this node's database was restored from a backup (export and import say
    /// "this database is behind this node's own record"): put it back in step with the
    /// bundles its peers hold, so that sync goes on. The peers then send every row back
    /// by themselves. Run it once, with OpenMRS running or not.
    Rejoin(capture_cmd::JsonArgs),
    /// Developer tools for tests, benchmarks and the demo (no config file needed).
    #[command(subcommand)]
    Dev(dev_cmd::DevCommand),
    /// Print this node's public key, for `ferry peer add` on other nodes.
    Key,
    /// Manage the nodes this node exchanges bundles with.
    #[command(subcommand)]
    Peer(bundle_cmd::PeerCommand),
    /// Copy outbox bundles not yet carried onto a carrier directory (e.g. a USB stick);
    /// --again copies the unacknowledged ones again (after a damaged or lost carrier).
    Send(bundle_cmd::SendArgs),
    /// Take the bundles for this node (and nodes it relays for) off a carrier directory.
    Receive(bundle_cmd::CarryArgs),
    /// Look at and check bundle files.
    #[command(subcommand)]
    Bundle(bundle_cmd::BundleCommand),
    /// Prove convergence: per-table row counts and content digests in uuid space, equal
    /// on two nodes iff their synced content is equal; --against compares with another node.
    Verify(verify_cmd::VerifyArgs),
    /// List the conflicts import recorded here, show one, or resolve one (keep the
    /// winner, or restore the loser as a new edit that syncs everywhere).
    Conflicts(conflicts_cmd::ConflictsArgs),
}

/// Parses argv, runs the command, and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let code = if e.downcast_ref::<UsageError>().is_some()
                || e
                    .downcast_ref::<crate::config::ConfigError>()
                    .is_some_and(crate::config::ConfigError::is_usage)
                // A table argument that names no table, or one ferry cannot switch.
                || matches!(
                    e.downcast_ref::<crate::capture::CaptureError>(),
                    Some(crate::capture::CaptureError::UnknownTable { .. })
                        | Some(crate::capture::CaptureError::LocalTable { .. })
                ) {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
            eprintln!("error: {}", format_error(&e));
            code
        }
    }
}

/// An error in how ferry was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The usage error for a peer name the config does not declare: `what` says what was
/// wrong, the hint lists the peers there are.
pub fn no_such_peer(config: &crate::config::Config, what: String) -> UsageError {
    let known: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
    UsageError(format!(
        "{what}\nhint: the peers are: {}",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    ))
}

fn format_error(e: &anyhow::Error) -> String {
    // Typed errors already carry their cause and hint; show the chain once.
    let mut text = e.to_string();
    let root = e.root_cause().to_string().to_lowercase();
    if text.to_lowercase().contains(&root) {
        return text; // the message already names the innermost cause
    }
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("FERRY_LOG_FORMAT").as_deref() == Ok("json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Output::stdout();
    match cli.command {
        Command::Init(args) => capture_cmd::init(&cli.config, args, &out),
        Command::Plan(args) => capture_cmd::plan(&load(&cli.config)?, args, &out).await,
        Command::Setup(args) => capture_cmd::setup(&load(&cli.config)?, args, &out).await,
        Command::Teardown(args) => capture_cmd::teardown(&load(&cli.config)?, args, &out).await,
        Command::Status(args) => capture_cmd::status(&load(&cli.config)?, args, &out).await,
        Command::Tables(args) => capture_cmd::tables(&load(&cli.config)?, args, &out).await,
        Command::Dev(cmd) => dev_cmd::run(cmd, &out).await,
        Command::Export(args) => sync_cmd::run_export(load(&cli.config)?, args, &out).await,
        Command::Import(args) => sync_cmd::run_import(load(&cli.config)?, args, &out).await,
        Command::Rejoin(args) => sync_cmd::run_rejoin(load(&cli.config)?, args, &out).await,
        Command::Key => bundle_cmd::key(&cli.config, &out),
        Command::Peer(cmd) => bundle_cmd::peer(&cli.config, cmd, &out),
        Command::Send(args) => bundle_cmd::send(&cli.config, args, &out),
        Command::Receive(args) => bundle_cmd::receive(&cli.config, args, &out),
        Command::Bundle(cmd) => bundle_cmd::bundle(&cli.config, cmd, &out),
        Command::Verify(args) => verify_cmd::verify(&load(&cli.config)?, args, &out).await,
        Command::Conflicts(args) => conflicts_cmd::run(load(&cli.config)?, args, &out).await,
    }
}

/// Loads the config for a command that needs one.
pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

#[cfg(test)]
mod tests {
    use super::format_error;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect: connection refused\nhint: start the server")]
    struct Named {
        source: std::io::Error,
    }

    fn refused() -> std::io::Error {
        std::io::Error::other("Connection refused")
    }

    #[test]
    fn a_message_that_names_its_root_cause_is_not_followed_by_the_chain() {
        let e = anyhow::Error::new(Named { source: refused() });
        assert_eq!(
            format_error(&e),
            "cannot connect: connection refused\nhint: start the server"
        );
    }
}
