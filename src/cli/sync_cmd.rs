//! Commands of the sync stage: export and import.

use std::path::PathBuf;

use clap::Args;

use super::Output;
use crate::apply::{import, ImportReport};
use crate::config::Config;
use crate::export::{export, ExportOptions};
use crate::node::NodeContext;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Export only to this peer (repeatable); all configured peers by default.
    #[arg(long = "peer", value_name = "NAME")]
    pub peers: Vec<String>,
    /// Write a bundle even when there is nothing new, to carry acknowledgements.
    #[arg(long)]
    pub heartbeat: bool,
    /// Seal every row of every synced table for the named peers, not only what changed
    /// since their last bundle: for a site that joins the network (from a fresh
    /// OpenMRS or a copy), or one that missed changes the log no longer holds. Rows
    /// no captured change touched travel as they were before capture, so any edit made
    /// anywhere wins over them; where the peer holds such a row with other values, it
    /// takes these and records its own in `ferry conflicts`. Tables switched off are
    /// left out. Run it one way, from the node whose data the other should take.
    /// Needs --peer.
    #[arg(long, requires = "peers")]
    pub full: bool,
    /// Print JSON for scripts instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Bundle files or directories to import; with none, everything waiting in the inbox.
    #[arg(value_name = "FILE|DIR")]
    pub files: Vec<PathBuf>,
    /// Print JSON for scripts instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `ferry export`.
pub async fn run_export(config: Config, mut args: ExportArgs, out: &Output) -> anyhow::Result<()> {
    // Checked before anything connects: a mistyped peer is a usage error, and a peer
    // named twice seals one bundle (issue 4, found by review).
    if let Some(unknown) = args.peers.iter().find(|p| config.peer(p).is_none()) {
        let what = format!(
            "{unknown} is not a peer of this node (add a new one with `ferry peer add NAME KEY`)"
        );
        return Err(super::no_such_peer(&config, what).into());
    }
    args.peers.sort();
    args.peers.dedup();
    let node = NodeContext::load(config)?;
    let mut conn = node.db.connect().await?;
    let mut fetch = node.db.connect().await?;
    let opts = ExportOptions {
        heartbeat: args.heartbeat,
        full: args.full,
    };
    let reports = export(&mut conn, &mut fetch, &node, &args.peers, &opts).await?;
    if args.json {
        out.json(&reports);
        return Ok(());
    }
    if reports.is_empty() {
        out.line("no peers configured (add one with `ferry peer add NAME KEY`)");
    }
    for r in reports {
        match &r.bundle {
            Some(file) => out.line(format!(
                "{}: bundle {} with {} changes ({} bytes) in outbox/{}/{file}",
                r.peer,
                r.seq.unwrap_or(0),
                r.changes,
                r.bytes,
                r.peer
            )),
            None => out.line(format!("{}: nothing new", r.peer)),
        }
        if let Some(upto) = r.missed_before {
            out.line(missed_line(&r.peer, upto));
        }
        if r.rebuild && r.bundle.is_some() {
            out.line(format!(
                "{}: its database went back in time (restored from a backup): this bundle gives it every row",
                r.peer
            ));
        }
    }
    Ok(())
}

/// `ferry rejoin`.
pub async fn run_rejoin(
    config: Config,
    args: super::capture_cmd::JsonArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let node = NodeContext::load(config)?;
    let report = crate::rejoin::rejoin(&node).await?;
    if args.json {
        out.json(&report);
        return Ok(());
    }
    out.line(
        "rejoined: this database was restored from a backup; its bundle numbers are back in step",
    );
    for p in &report.peers {
        out.line(format!(
            "  {}: bundles sealed for it {} -> {}, applied from it {} -> {}",
            p.peer, p.sealed.0, p.sealed.1, p.applied.0, p.applied.1
        ));
    }
    if report.moved_entries > 0 {
        out.line(format!(
            "  {} change(s) made here since the restore keep their order after the changes the peers know",
            report.moved_entries
        ));
    }
    let names: Vec<&str> = report
        .peers
        .iter()
        .filter(|p| p.asked)
        .map(|p| p.peer.as_str())
        .collect();
    out.line(format!(
        "next: export and carry bundles as usual. The next bundle for {} asks for every row; \
         each sends them back with its next export once it has applied that bundle. \
         `ferry status` shows the rejoin until then.",
        names.join(", ")
    ));
    out.line(
        "warning: changes made here after the backup that no bundle carried before the failure are lost; \
         see \"A database restored from a backup\" in docs/operations.md",
    );
    Ok(())
}

/// `ferry import`.
pub async fn run_import(config: Config, args: ImportArgs, out: &Output) -> anyhow::Result<()> {
    let node = NodeContext::load(config)?;
    let mut conn = node.db.connect().await?;
    let bar = out.progress(0, "applying");
    let report = import(&mut conn, &node, &args.files, &bar).await;
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        out.json(&report);
    } else {
        print_report(&report, out);
    }
    if report.has_problems() {
        let n = report.refused.len() + report.failed.len();
        return Err(anyhow::anyhow!(
            "{n} bundle(s) could not be applied (see above)\n\
             hint: each one's error above says what to do; refused files are in the \
             quarantine folder with a .reason.txt, the others stay in the inbox and \
             apply on the next import once the cause is fixed"
        ));
    }
    Ok(())
}

fn print_report(r: &ImportReport, out: &Output) {
    for a in &r.applied {
        out.line(format!(
            "applied bundle {} from {}: {} changes ({} inserted, {} updated, {} deleted, {} deletes of rows not here, {} already newer here)",
            a.seq,
            a.sender,
            a.changes,
            a.stats.inserted,
            a.stats.updated,
            a.stats.deleted,
            a.stats.already_gone,
            a.stats.skipped
        ));
    }
    for d in &r.duplicates {
        out.line(format!("{d}: already applied before; nothing to do"));
    }
    for h in &r.held {
        out.line(format!(
            "waiting for bundle {} from {} (holding {} later one(s): {})",
            h.waiting_for,
            h.sender,
            h.held.len(),
            h.held
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for p in r.refused.iter().chain(&r.failed) {
        out.line(format!("{}: {}", p.file, p.error));
        if let Some(q) = &p.quarantined {
            out.line(format!("  moved to {q}"));
        }
    }
    if r.applied.is_empty() && r.duplicates.is_empty() && r.held.is_empty() && !r.has_problems() {
        out.line("nothing to import");
    }
}

/// What export and status say of a peer added after the log was pruned up to `upto`.
pub fn missed_line(peer: &str, upto: u64) -> String {
    format!(
        "warning: {peer} became a peer after this node's change log was pruned up to \
         #{upto}; it has the changes before that only if it started from a copy of this \
         database; else give it every row with `ferry export --full --peer {peer}` (see \
         \"A site joins\" in docs/operations.md)"
    )
}
