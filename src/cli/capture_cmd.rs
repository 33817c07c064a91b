//! Commands of the capture stage: init, plan, setup, teardown, status, tables.

use std::path::Path;

use clap::Args;

use mysql_async::prelude::*;

use super::{Output, UsageError};
use crate::capture::{self, bookkeeping, tables::TableState};
use crate::config::Config;
use crate::db::DbUrl;
use crate::schema::{Schema, SyncPlan};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The OpenMRS database, e.g. mysql://openmrs:PASS@127.0.0.1:3306/openmrs
    #[arg(long = "db", value_name = "URL")]
    pub db: String,
    /// This node's name, unique among the nodes that sync (a-z, 0-9, '-', '_').
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// Overwrite an existing config file: its database and node name change, and its
    /// peers and other settings are kept (when it can still be read).
    #[arg(long)]
    pub force: bool,
}

/// `ferry init`: writes the config file.
pub fn init(path: &Path, args: InitArgs, out: &Output) -> anyhow::Result<()> {
    let mut config = Config::new(path, &args.node, &args.db)?;
    if args.force && path.exists() {
        // Rewriting the database URL or node name must not silently forget the peers.
        // A config that parses but no longer validates (a bad URL) keeps its fields;
        // the merged one is validated.
        match Config::parse(path) {
            Ok(old) => {
                config = Config {
                    node: config.node,
                    database: config.database,
                    ..old
                };
                config.validate()?;
                if !config.peers.is_empty() {
                    out.line(format!(
                        "kept {} peer(s) of {}",
                        config.peers.len(),
                        path.display()
                    ));
                }
            }
            // A config that cannot be read is not replaced: its peers, `relay_for` and
            // `state_dir` (where the keys are) would be lost without a word (issue 4,
            // found by review).
            Err(e @ crate::config::ConfigError::Parse { .. }) => {
                return Err(UsageError(format!(
                    "{} cannot be read, and writing a new one would lose its peers, relay_for and state_dir ({})\nhint: fix it by hand at the place named, or move it away and run `ferry init` again",
                    path.display(),
                    e.to_string().lines().next().unwrap_or_default()
                ))
                .into())
            }
            Err(_) => {} // gone or unreadable as a file: nothing to keep
        }
    }
    config.save(args.force)?;
    let public = super::bundle_cmd::ensure_keys(&config)?;
    out.line(format!(
        "wrote {} for node {} (state directory {})",
        path.display(),
        config.node,
        config.state_dir().display()
    ));
    out.line(format!("public key: {public}"));
    Ok(())
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON for scripts instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Print the full plan as JSON (identity, columns, references of every table).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TeardownArgs {
    /// Really remove ferry's triggers and tables, including unsent changes.
    #[arg(long)]
    pub yes: bool,
    /// Print JSON for scripts instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TablesArgs {
    #[command(subcommand)]
    pub action: Option<TablesAction>,
    /// Print JSON for scripts instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum TablesAction {
    /// List tables with their state (the default).
    List,
    /// Switch capture on for tables.
    Enable {
        #[arg(required = true, value_name = "TABLE")]
        tables: Vec<String>,
    },
    /// Switch capture off for tables; their changes are no longer recorded.
    Disable {
        #[arg(required = true, value_name = "TABLE")]
        tables: Vec<String>,
    },
}

async fn connect(config: &Config) -> anyhow::Result<(mysql_async::Conn, String)> {
    let url = DbUrl::parse(&config.database)?;
    let conn = url.connect().await?;
    Ok((conn, url.database))
}

/// `ferry plan`: derives the plan from the live schema.
pub async fn plan(config: &Config, args: PlanArgs, out: &Output) -> anyhow::Result<()> {
    let (mut conn, database) = connect(config).await?;
    let schema = Schema::read(&mut conn, &database).await?;
    let plan = SyncPlan::derive(&schema);
    if args.json {
        out.json(&plan);
    } else {
        out.line(crate::schema::render::plan_text(&plan).trim_end());
    }
    Ok(())
}

/// `ferry setup`.
pub async fn setup(config: &Config, args: JsonArgs, out: &Output) -> anyhow::Result<()> {
    let (mut conn, database) = connect(config).await?;
    bookkeeping::check_node(&mut conn, &config.node).await?;
    let offset_us = config.clock_offset_seconds.saturating_mul(1_000_000);
    let report = capture::setup::setup(&mut conn, &database, offset_us).await?;
    bookkeeping::set_meta(&mut conn, "node", &config.node).await?;
    if args.json {
        out.json(&report);
    } else {
        out.line(format!(
            "capture installed in {database}: {} synced tables ({} enabled), {} node-local\n\
             triggers: {} created or updated, {} unchanged, {} dropped; plan fingerprint {}",
            report.synced_tables,
            report.enabled_tables,
            report.local_tables,
            report.triggers_created,
            report.triggers_unchanged,
            report.triggers_dropped,
            &report.plan_fingerprint[..16]
        ));
        if !report.triggers_restored.is_empty() {
            out.line(format!(
                "warning: these capture triggers were missing and are back: {}\n\
                 changes made to their tables while they were gone were not captured; to \
                 find the rows that differ, see `ferry verify --rows --against` in the \
                 operations guide (\"capture trigger … missing\")",
                report.triggers_restored.join(", ")
            ));
        }
        if report.triggers_created > 0 && report.triggers_unchanged == 0 {
            out.line(
                "note: capture starts now; rows already in the database do not travel to peers \
                 (see \"Starting data\" in docs/operations.md)",
            );
        }
    }
    Ok(())
}

/// `ferry teardown`.
pub async fn teardown(config: &Config, args: TeardownArgs, out: &Output) -> anyhow::Result<()> {
    if !args.yes {
        return Err(super::UsageError(
            "teardown removes ferry's triggers, change log and settings, including changes not yet sent\n\
             hint: run `ferry teardown --yes` if that is what you want"
                .into(),
        )
        .into());
    }
    let (mut conn, database) = connect(config).await?;
    let report = capture::setup::teardown(&mut conn).await?;
    if args.json {
        out.json(&report);
    } else {
        out.line(format!(
            "removed {} triggers and {} tables from {database}",
            report.triggers_dropped.len(),
            report.tables_dropped.len()
        ));
    }
    Ok(())
}

/// The capture part of `ferry status`.
#[derive(Debug, serde::Serialize)]
pub struct StatusReport {
    pub node: String,
    pub database: String,
    pub installed: bool,
    pub plan_fingerprint: Option<String>,
    pub tables_enabled: usize,
    pub tables_disabled: Vec<String>,
    pub tables_local: usize,
    pub pending_changes: u64,
    pub pending_forwarded: u64,
    pub oldest_pending_age_s: Option<i64>,
    pub drift: Vec<capture::drift::DriftItem>,
    /// Server settings that work against capture (`setup::server_warnings`).
    pub server_warnings: Vec<String>,
    pub peers: Vec<crate::state::PeerStatus>,
    /// Unresolved conflicts per table (`ferry conflicts`).
    pub conflicts: std::collections::BTreeMap<String, u64>,
    /// Nodes whose versions arrived with their clock ahead of the bundle's creation.
    pub clock_skew: Vec<crate::apply::operator::Skew>,
}

/// `ferry status`.
pub async fn status(config: &Config, args: JsonArgs, out: &Output) -> anyhow::Result<()> {
    let (mut conn, database) = connect(config).await?;
    let installed = bookkeeping::installed(&mut conn).await?;
    bookkeeping::check_current(&mut conn).await?;
    let mut report = StatusReport {
        node: config.node.clone(),
        database: database.clone(),
        installed,
        plan_fingerprint: None,
        tables_enabled: 0,
        tables_disabled: Vec::new(),
        tables_local: 0,
        pending_changes: 0,
        pending_forwarded: 0,
        oldest_pending_age_s: None,
        drift: Vec::new(),
        server_warnings: Vec::new(),
        peers: Vec::new(),
        conflicts: Default::default(),
        clock_skew: Vec::new(),
    };
    if installed {
        report.plan_fingerprint = bookkeeping::get_meta(&mut conn, "plan_fingerprint").await?;
        for t in capture::tables::list(&mut conn, &database).await? {
            match t.state {
                TableState::Enabled => report.tables_enabled += 1,
                TableState::Disabled => report.tables_disabled.push(t.table),
                TableState::Local => report.tables_local += 1,
            }
        }
        let (local, forwarded, oldest): (u64, u64, Option<i64>) = conn
            .query_first(format!(
                "SELECT COALESCE(SUM(origin IS NULL), 0), COALESCE(SUM(origin IS NOT NULL), 0), \
                 MIN(wall_us) FROM {} WHERE op <> '{}'",
                bookkeeping::CHANGE_TABLE,
                capture::versions::MARKER
            ))
            .await?
            .unwrap_or((0, 0, None));
        report.pending_changes = local;
        report.pending_forwarded = forwarded;
        // A change written after a clock was set back can carry a later time than now.
        report.oldest_pending_age_s = oldest.map(|us| ((now_us() - us) / 1_000_000).max(0));
        report.drift = capture::drift::detect(&mut conn, &database).await?;
        report.server_warnings = capture::setup::server_warnings(&mut conn).await?;
        report.peers = peer_status(config, &mut conn).await?;
        report.conflicts = crate::apply::operator::unresolved_per_table(&mut conn).await?;
        report.clock_skew = crate::apply::operator::skews(&mut conn).await?;
    }
    if args.json {
        out.json(&report);
        return Ok(());
    }
    out.line(format!("node      {}", report.node));
    out.line(format!("database  {}", report.database));
    if !installed {
        out.line("capture   not installed (run `ferry setup`)");
        return Ok(());
    }
    out.line(format!(
        "capture   {} tables enabled, {} disabled, {} node-local; plan {}",
        report.tables_enabled,
        report.tables_disabled.len(),
        report.tables_local,
        report
            .plan_fingerprint
            .as_deref()
            .map(|f| &f[..16.min(f.len())])
            .unwrap_or("?")
    ));
    if !report.tables_disabled.is_empty() {
        out.line(format!("disabled  {}", report.tables_disabled.join(", ")));
    }
    for w in &report.server_warnings {
        out.line(format!("warning   {w}"));
    }
    out.line(format!(
        "changes   {} local and {} forwarded waiting{}",
        report.pending_changes,
        report.pending_forwarded,
        report
            .oldest_pending_age_s
            .map(|s| format!(", oldest {s} s old"))
            .unwrap_or_default()
    ));
    for p in &report.peers {
        out.line(print_peer(p));
    }
    if report.drift.is_empty() {
        out.line("drift     none");
    } else {
        out.line(format!(
            "drift     {} change(s) since setup; run `ferry setup`:",
            report.drift.len()
        ));
        for line in capture::drift::summary(&report.drift, 10) {
            out.line(format!("          {line}"));
        }
        if report
            .drift
            .iter()
            .any(|d| d.kind == capture::drift::DriftKind::Truncate)
        {
            out.line(format!("          {}", capture::counters::EMPTIED_HINT));
        }
    }
    if report.conflicts.is_empty() {
        out.line("conflicts none unresolved");
    } else {
        let total: u64 = report.conflicts.values().sum();
        out.line(format!(
            "conflicts {total} unresolved (see `ferry conflicts`):"
        ));
        for (table, n) in &report.conflicts {
            out.line(format!("          {table}: {n}"));
        }
    }
    for skew in &report.clock_skew {
        out.line(format!(
            "skew      {}'s clock looks {} s ({:.1} days) ahead (seen in a bundle from {}); conflicts its versions won are marked SKEWED",
            skew.node,
            skew.skew_s,
            skew.skew_s as f64 / 86_400.0,
            skew.sender
        ));
    }
    Ok(())
}

async fn peer_status(
    config: &Config,
    conn: &mut mysql_async::Conn,
) -> anyhow::Result<Vec<crate::state::PeerStatus>> {
    let peers: Vec<String> = config.peers.iter().map(|p| p.name.clone()).collect();
    let dirs = crate::transport::state::StateDirs::new(&config.state_dir());
    let inbox: Vec<_> = dirs
        .inbox_bundles()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let notes = peers
        .iter()
        .filter_map(|p| Some((p.clone(), dirs.blocked(p)?)))
        .collect();
    let record = crate::transport::sequences::Sequences::load(&dirs);
    Ok(crate::state::peer_status(
        conn,
        &config.node,
        &peers,
        &inbox,
        &notes,
        &record,
        now_us(),
    )
    .await?)
}

fn print_peer(p: &crate::state::PeerStatus) -> String {
    let ago = |us: Option<i64>| match us {
        Some(us) => format!("{} s ago", (now_us() - us).max(0) / 1_000_000),
        None => "never".to_string(),
    };
    let mut line = format!(
        "peer      {}: sent #{} ({}), received #{} ({}); {} change(s) not yet acknowledged",
        p.peer,
        p.last_sent_seq,
        ago(p.last_sent_us),
        p.last_received_seq,
        ago(p.last_received_us),
        p.unacknowledged_changes,
    );
    if let Some(s) = p.oldest_unacknowledged_s {
        line.push_str(&format!(" (oldest {s} s old)"));
    }
    line.push_str(&format!(
        ", {} sealed bundle(s) not yet acknowledged",
        p.unacknowledged_bundles
    ));
    if let Some(w) = p.waiting_for {
        line.push_str(&format!(
            "; waiting for bundle {w} from {} (holding {:?})",
            p.peer, p.held_bundles
        ));
    }
    if let Some(upto) = p.missed_before {
        line.push_str(&format!(
            "\n          {}",
            super::sync_cmd::missed_line(&p.peer, upto)
        ));
    }
    if let Some(since) = p.rebuild_since_us {
        line.push_str(&format!(
            "\n          {}'s database went back in time (restored from a backup; seen {}): the next export sends it every row",
            p.peer,
            ago(Some(since))
        ));
    }
    match p.rejoining {
        Some("to_ask") => line.push_str(&format!(
            "\n          this node rejoined after a restore: the next bundle for {} asks it for every row (export, and carry it)",
            p.peer
        )),
        Some(_) => line.push_str(&format!(
            "\n          this node rejoined after a restore: waiting for every row from {} (it sends them once it has applied this node's bundles)",
            p.peer
        )),
        None => {}
    }
    if let Some(e) = &p.behind_record {
        for l in e.lines() {
            line.push_str(&format!("\n          {l}"));
        }
    }
    if let Some(b) = &p.blocked {
        // The error's first line names the defect; the hint says what to do.
        let mut lines = b.error.lines();
        let what = lines.next().unwrap_or_default();
        line.push_str(&format!(
            "\n          bundle {} from {} waits in the inbox: it failed to apply ({} s ago): {what}",
            b.seq,
            p.peer,
            (now_us() - b.since_us).max(0) / 1_000_000
        ));
        for more in lines {
            line.push_str(&format!("\n          {more}"));
        }
    }
    line
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `ferry tables`.
pub async fn tables(config: &Config, args: TablesArgs, out: &Output) -> anyhow::Result<()> {
    let (mut conn, database) = connect(config).await?;
    match args.action.unwrap_or(TablesAction::List) {
        TablesAction::List => {
            let list = capture::tables::list(&mut conn, &database).await?;
            if args.json {
                out.json(&list);
            } else {
                let w = list.iter().map(|t| t.table.len()).max().unwrap_or(5);
                out.line(format!(
                    "{:w$}  {:8}  {:>8}  detail",
                    "table", "state", "pending"
                ));
                for t in list {
                    let state = match t.state {
                        TableState::Enabled => "enabled",
                        TableState::Disabled => "disabled",
                        TableState::Local => "local",
                    };
                    out.line(format!(
                        "{:w$}  {:8}  {:>8}  {}",
                        t.table, state, t.pending_changes, t.detail
                    ));
                }
            }
        }
        TablesAction::Enable { tables } => {
            switch(&mut conn, &database, tables, true, args.json, out).await?
        }
        TablesAction::Disable { tables } => {
            switch(&mut conn, &database, tables, false, args.json, out).await?
        }
    }
    Ok(())
}

async fn switch(
    conn: &mut mysql_async::Conn,
    database: &str,
    tables: Vec<String>,
    enable: bool,
    json: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for t in &tables {
        let changed = capture::tables::set_enabled(conn, database, t, enable).await?;
        results.push(serde_json::json!({"table": t, "enabled": enable, "changed": changed}));
        if !json {
            out.line(format!(
                "{t}: capture {}{}",
                if enable { "enabled" } else { "disabled" },
                if changed { "" } else { " (it already was)" }
            ));
        }
    }
    if json {
        out.json(&results);
    }
    Ok(())
}
