//! Import: verifying bundles and applying them atomically, once, in order.
//!
//! [`import`] takes explicit files (verified, then copied into the inbox) and everything
//! waiting in the inbox, and walks each sender's bundles in sequence order, sender by
//! sender in name order:
//! - a bundle whose number was applied before is a duplicate if the ledger holds the
//!   same hash (it is removed, nothing else happens) and is refused otherwise;
//! - the next bundle in the sequence is opened (signature, hashes, decryption) and
//!   applied in ONE transaction together with its ledger entry, its place in the
//!   sender's chain and the sender's acknowledgements: all of it or none of it;
//! - a later bundle is held in the inbox, reported as "waiting for bundle N from S",
//!   and applies by itself on the next import once the gap is filled.
//!
//! A bundle that fails verification goes to quarantine with the reason beside it; one
//! that fails to apply (a missing reference, say) stays in the inbox with the error
//! reported, so it applies once the cause is fixed. Where bundles were tried together,
//! only the one that failed verification goes to quarantine. A sender whose next bundle
//! refers to a row that is not here yet is tried again after the others, because
//! another sender's bundle in the same inbox may bring that row: it is tried again
//! after a pass in which another sender applied a bundle, and a sender tried again
//! reports only its last try's failure. Apply never sees a transport: it reads files
//! from the inbox only.

// Import errors carry the names an operator needs (table, row, column, target, sender);
// they are returned once per bundle, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod changes;
pub mod conflict;
pub mod fresh;
pub mod ids;
pub mod operator;
pub mod resolve;
pub mod unique;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::Serialize;

use crate::bundle::{self, BundleError, BundleName};
use crate::capture::clock::db_now_us;
use crate::capture::setup::stored_plan;
use crate::capture::versions::{raise_floor, Floors};
use crate::capture::CaptureError;
use crate::db::{release_lock, take_lock, DbError};
use crate::export::{begin, finish};
use crate::node::NodeContext;
use crate::rejoin::{self, Rejoin};
use crate::schema::Schema;
use crate::state;
use crate::transport::sequences::{Committed, Sequences};
use crate::transport::state::{copy_atomic, file_sha256, TransportError};
use changes::{Applier, ApplyStats};
use fresh::FreshTables;

/// Errors of import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Row(#[from] crate::export::rows::RowError),
    #[error("bundle {seq} from {sender} is not the bundle {seq} applied here before (its hash differs)\nhint: it was moved to quarantine; find out where this file came from, the sender's outbox holds the genuine one")]
    Conflicting { sender: String, seq: u64 },
    #[error("another import into this database ran all the {waited} s this one waited\nhint: nothing was applied and the bundles wait in the inbox; let the other import finish, then import again (`import_wait_seconds` in ferry.toml sets the wait)")]
    Busy { waited: u32 },
    #[error("bundle {seq} from {sender} does not follow bundle {prev} applied here (its previous-bundle hash differs)\nhint: the sender's state was probably restored from a backup or re-initialised; do not delete anything, and ask for help before going on")]
    ChainBroken { sender: String, seq: u64, prev: u64 },
    #[error("bundle {seq} from {sender} was made with a different sync plan (schema)\nhint: bring both nodes to the same OpenMRS version and run `ferry setup` on both; the bundle stays in the inbox")]
    PlanMismatch { sender: String, seq: u64 },
    #[error("a bundle names table {table}, which this node does not sync\nhint: run `ferry setup` on both nodes so that their plans agree")]
    UnknownTable { table: String },
    #[error("a change to {table} is malformed: {why}\nhint: the sender's ferry is incompatible; update both nodes")]
    BadChange { table: String, why: String },
    #[error("{0}")]
    MissingReference(Box<MissingReference>),
    #[error("a bundle from {sender} deletes {table} rows that {child}.{column} here still refers to (for example {child}.{column} = {example})\nhint: {sender} deleted those rows, or gave them a new uuid by direct SQL; nothing of this bundle was applied, it stays in the inbox. Point the referring rows here at another row (or set the column to NULL, or delete them), then import again; it names the next such value, if any (a row that got a new uuid arrives with this bundle: point them back at it afterwards)")]
    StillReferenced {
        table: String,
        child: String,
        column: String,
        /// One value of the column that refers to a deleted row (what to look for).
        example: String,
        sender: String,
    },
    #[error("writing {table} row {row} failed: {source}\nhint: nothing of this bundle was applied; it stays in the inbox")]
    Write {
        table: String,
        row: String,
        source: mysql_async::Error,
    },
    #[error("{path} is addressed to {recipient}, not to this node ({me})\nhint: take it to {recipient}, or let `ferry receive` sort a carrier directory")]
    NotForMe {
        path: PathBuf,
        recipient: String,
        me: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A reference that resolves to no row (boxed in [`ImportError`] to keep it small).
#[derive(Debug, thiserror::Error)]
#[error("{table} row {row} refers through {column} to {target} row {identity}, {}", self.why())]
pub struct MissingReference {
    pub table: String,
    pub row: String,
    pub column: String,
    pub target: String,
    pub identity: String,
    pub sender: String,
    /// Other rows (table, identity) the bundle refers to and nobody has.
    pub also: BTreeSet<(String, String)>,
    /// The first row missing was deleted here: a delete met an edit of a row that
    /// refers to it (a known problem, docs/operations.md).
    pub deleted_here: bool,
}

impl MissingReference {
    fn why(&self) -> String {
        let (target, sender) = (&self.target, &self.sender);
        if self.deleted_here {
            format!(
                "which was deleted here: {sender} changed a row that refers to it, not knowing \
                 of the delete{}\nhint: decide whether the deleted row or the change should \
                 stay, and follow \"Known problems\" in docs/operations.md (a row deleted at one \
                 node while another edits a row that refers to it); nothing of this bundle was \
                 applied, it stays in the inbox",
                named_also(&self.also)
            )
        } else {
            format!(
                "which is neither in the bundle from {sender} nor in this database{}\nhint: check \
                 that {target} is enabled on {sender} (`ferry tables` there) and that no bundle \
                 from {sender} is missing; nothing of this bundle was applied, it stays in the \
                 inbox",
                named_also(&self.also)
            )
        }
    }

    /// Notes another row the bundle lacks (the first one named is not repeated).
    pub fn also_missing(&mut self, target: &str, identity: String) {
        if (target, identity.as_str()) != (self.target.as_str(), self.identity.as_str()) {
            self.also.insert((target.to_string(), identity));
        }
    }
}

/// The other missing rows, named after the first: at most [`ALSO_NAMED`].
fn named_also(also: &BTreeSet<(String, String)>) -> String {
    if also.is_empty() {
        return String::new();
    }
    let named: Vec<String> = also
        .iter()
        .take(ALSO_NAMED)
        .map(|(t, id)| format!("{t} row {id}"))
        .collect();
    let more = also.len().saturating_sub(ALSO_NAMED);
    format!(
        "; {} more row(s) are missing as well: {}{}",
        also.len(),
        named.join(", "),
        if more > 0 {
            format!(" and {more} others")
        } else {
            String::new()
        }
    )
}

/// Missing rows a [`MissingReference`] names beyond the first.
const ALSO_NAMED: usize = 20;

impl ImportError {
    /// Whether the file itself is bad (quarantine it) rather than unappliable for now.
    fn file_is_bad(&self) -> bool {
        matches!(
            self,
            ImportError::Bundle(e) if !matches!(e, BundleError::Io { .. })
        ) || matches!(
            self,
            ImportError::Conflicting { .. } | ImportError::ChainBroken { .. }
        )
    }
}

/// One applied bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub file: String,
    pub sender: String,
    pub seq: u64,
    pub changes: u64,
    pub stats: ApplyStats,
}

/// A sender whose bundles wait for a missing one.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub sender: String,
    pub waiting_for: u64,
    pub held: Vec<u64>,
}

/// A file that was refused or could not be applied.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub file: String,
    pub error: String,
    /// Where the file went (quarantine), or `None` when it stays where it was.
    pub quarantined: Option<String>,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub applied: Vec<Applied>,
    /// Bundles that had been applied before (files removed, nothing changed).
    pub duplicates: Vec<String>,
    pub held: Vec<Held>,
    pub refused: Vec<Problem>,
    pub failed: Vec<Problem>,
}

impl ImportReport {
    /// Whether anything went wrong (for the exit code).
    pub fn has_problems(&self) -> bool {
        !self.refused.is_empty() || !self.failed.is_empty()
    }

    /// Moves `other`'s entries to the end of this report's.
    fn append(&mut self, mut other: ImportReport) {
        self.applied.append(&mut other.applied);
        self.duplicates.append(&mut other.duplicates);
        self.held.append(&mut other.held);
        self.refused.append(&mut other.refused);
        self.failed.append(&mut other.failed);
    }
}

/// How one sender's bundles fared in a pass of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SenderOutcome {
    /// It applied what it could, or stopped for a reason that no other sender's bundle
    /// removes.
    Done,
    /// Its next bundle refers to a row that is not here (a missing reference): another
    /// sender's bundle may bring it.
    MissingReference,
}

/// Imports the given files (or, with none, whatever waits in the inbox).
///
/// Senders go in name order. One whose next bundle fails for a missing reference is
/// tried again after a pass in which another sender applied a bundle, so a row another
/// sender brings in the same import is there for it.
pub async fn import(
    conn: &mut Conn,
    node: &NodeContext,
    files: &[PathBuf],
    bar: &ProgressBar,
) -> Result<ImportReport, ImportError> {
    crate::capture::bookkeeping::check_node(conn, node.name()).await?;
    crate::capture::bookkeeping::check_current(conn).await?;
    let mut report = ImportReport::default();
    for f in expand(files)? {
        if let Err(e) = take_into_inbox(node, &f) {
            report.refused.push(Problem {
                file: f.display().to_string(),
                error: e.to_string(),
                quarantined: None,
            });
        }
    }
    // One import at a time per database: then only this one writes `ferry_row`, which
    // lets it skip looking for versions of rows new to it ([`fresh`]). An import that
    // went ahead without the lock would break that for the one holding it.
    if !take_lock(conn, IMPORT_LOCK, node.config.import_wait_seconds).await? {
        return Err(ImportError::Busy {
            waited: node.config.import_wait_seconds,
        });
    }
    // Listed under the lock: an import that held it before may have applied (and
    // removed) what was here when this one started (issue 4: two imports started
    // together, the second failed on the file the first had removed).
    let by_sender = match list_inbox(node, &mut report) {
        Ok(b) => b,
        Err(e) => {
            release_lock(conn, IMPORT_LOCK).await;
            return Err(e);
        }
    };
    let mut fresh = FreshTables::new(true);
    let result = import_locked(conn, node, by_sender, &mut fresh, &mut report, bar).await;
    release_lock(conn, IMPORT_LOCK).await;
    result?;
    Ok(report)
}

/// The inbox's bundles by sender; those addressed to another node go to quarantine.
fn list_inbox(
    node: &NodeContext,
    report: &mut ImportReport,
) -> Result<BTreeMap<String, Vec<(BundleName, PathBuf)>>, ImportError> {
    let mut by_sender: BTreeMap<String, Vec<(BundleName, PathBuf)>> = BTreeMap::new();
    for (name, path) in node.dirs.inbox_bundles()? {
        if name.recipient != node.name() {
            let e = ImportError::NotForMe {
                path: path.clone(),
                recipient: name.recipient.clone(),
                me: node.name().to_string(),
            };
            quarantine(node, &path, &e, report)?;
            continue;
        }
        by_sender
            .entry(name.sender.clone())
            .or_default()
            .push((name, path));
    }
    Ok(by_sender)
}

/// The named lock imports take (per database).
pub const IMPORT_LOCK: &str = "ferry-import-";

/// Applies each sender's bundles, in passes while senders stopped on a missing reference
/// and another sender applied something in the pass before, and prunes what every peer
/// has acknowledged.
async fn import_locked(
    conn: &mut Conn,
    node: &NodeContext,
    by_sender: BTreeMap<String, Vec<(BundleName, PathBuf)>>,
    fresh: &mut FreshTables,
    report: &mut ImportReport,
    bar: &ProgressBar,
) -> Result<(), ImportError> {
    let mut senders = by_sender;
    loop {
        // Senders stopped on a missing reference, with their failures and held bundles:
        // reported only if the sender is not tried again (a retry reports its own).
        let mut blocked: Vec<(String, ImportReport)> = Vec::new();
        // Senders that applied a bundle in this pass.
        let mut progressed: Vec<String> = Vec::new();
        for (sender, mut files) in senders {
            files.sort();
            let mut own = ImportReport::default();
            let outcome = import_sender(conn, node, &sender, files, fresh, &mut own, bar).await?;
            if !own.applied.is_empty() {
                progressed.push(sender.clone());
            }
            if outcome == SenderOutcome::MissingReference {
                let stopped = ImportReport {
                    failed: std::mem::take(&mut own.failed),
                    held: std::mem::take(&mut own.held),
                    ..ImportReport::default()
                };
                blocked.push((sender, stopped));
            }
            report.append(own);
        }
        // Only a row another sender brought can unblock a sender: one tried again after
        // only its own bundles applied would fail the same way.
        let (retry, stuck): (Vec<_>, Vec<_>) = blocked
            .into_iter()
            .partition(|(s, _)| progressed.iter().any(|p| p != s));
        for (_, stopped) in stuck {
            report.append(stopped);
        }
        if retry.is_empty() {
            break;
        }
        let blocked = retry;
        // Their bundles as the inbox holds them now (the applied ones are gone).
        senders = BTreeMap::new();
        for (name, path) in node.dirs.inbox_bundles()? {
            if name.recipient == node.name() && blocked.iter().any(|(s, _)| *s == name.sender) {
                senders
                    .entry(name.sender.clone())
                    .or_default()
                    .push((name, path));
            }
        }
    }
    // Acknowledged bundles leave the outbox; acknowledged changes leave the log.
    let mut peer_acks = Vec::new();
    for p in node.peer_names() {
        let ps = state::peer(conn, &p, false).await?;
        let mine = ps.acks.get(node.name()).copied().unwrap_or(0);
        let upto: Option<Option<u64>> = conn
            .exec_first(
                format!(
                    "SELECT MAX(seq) FROM ferry_outbox WHERE peer = ? AND {}",
                    state::ACKNOWLEDGED_BUNDLE
                ),
                (&p, mine, mine),
            )
            .await
            .map_err(DbError::query("reading the outbox record"))?;
        if let Some(Some(n)) = upto {
            node.dirs.acknowledge(node.name(), &p, n)?;
            conn.exec_drop(
                "DELETE FROM ferry_outbox WHERE peer = ? AND seq <= ?",
                (&p, n),
            )
            .await
            .map_err(DbError::query("pruning the outbox record"))?;
        }
        peer_acks.push((p, ps.acks, ps.out_cursor));
    }
    // Last: pruning writes `ferry_row` records, which the fresh tables of the applies
    // above do not account for.
    state::prune(conn, node.name(), &peer_acks).await?;
    Ok(())
}

fn expand(files: &[PathBuf]) -> Result<Vec<PathBuf>, ImportError> {
    let mut out = Vec::new();
    for f in files {
        if f.is_dir() {
            for (_, p) in crate::transport::state::list_bundles(f)? {
                out.push(p);
            }
        } else {
            out.push(f.clone());
        }
    }
    Ok(out)
}

/// Verifies an explicit file's header and copies it into the inbox under its name.
fn take_into_inbox(node: &NodeContext, path: &Path) -> Result<(), ImportError> {
    let verified = bundle::verify_header(path, &node.peers)?;
    let h = &verified.header;
    if h.recipient != node.name() {
        return Err(ImportError::NotForMe {
            path: path.to_path_buf(),
            recipient: h.recipient.clone(),
            me: node.name().to_string(),
        });
    }
    let dest = node.dirs.inbox().join(h.name().file_name());
    if dest.exists() {
        let same = file_sha256(&dest).ok() == file_sha256(path).ok();
        if same {
            return Ok(());
        }
    }
    if fs::canonicalize(path).ok() != fs::canonicalize(&dest).ok() {
        copy_atomic(path, &dest)?;
    }
    Ok(())
}

fn quarantine(
    node: &NodeContext,
    path: &Path,
    e: &ImportError,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let dest = node.dirs.quarantine_file(path, &e.to_string())?;
    let _ = fs::remove_file(path);
    report.refused.push(Problem {
        file: file_name(path),
        error: e.to_string(),
        quarantined: Some(dest.display().to_string()),
    });
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Applies one sender's bundles from the next in its sequence on, as far as they go.
async fn import_sender(
    conn: &mut Conn,
    node: &NodeContext,
    sender: &str,
    files: Vec<(BundleName, PathBuf)>,
    fresh: &mut FreshTables,
    report: &mut ImportReport,
    bar: &ProgressBar,
) -> Result<SenderOutcome, ImportError> {
    let mut stopped = SenderOutcome::Done;
    let mut ps = state::peer(conn, sender, false).await?;
    Sequences::load(&node.dirs).check(sender, ps.out_seq, ps.in_seq)?;
    let mut next: Vec<(BundleName, PathBuf)> = Vec::new();
    // A database restored from a backup lost the ledger entries of bundles applied
    // since; `ferry rejoin` noted their numbers.
    let rejoin = Rejoin::load(conn).await?;
    for (name, path) in files {
        if name.seq <= ps.in_seq {
            match bundle::verify_named(&path, &file_name(&path), &node.peers) {
                // Gone meanwhile, or unreadable for now: not the file's fault.
                Err(e) if !e.is_refusal() => continue,
                Err(e) => quarantine(node, &path, &ImportError::Bundle(e), report)?,
                Ok(v) => {
                    let applied = state::ledger_hash(conn, sender, name.seq).await?;
                    let lost = applied.is_none()
                        && rejoin.as_ref().is_some_and(|r| r.lost(sender, name.seq));
                    if lost || applied.as_deref() == Some(hex::encode(v.hash).as_str()) {
                        fs::remove_file(&path).map_err(|source| ImportError::Io {
                            path: path.clone(),
                            source,
                        })?;
                        report.duplicates.push(file_name(&path));
                    } else {
                        let e = ImportError::Conflicting {
                            sender: sender.to_string(),
                            seq: name.seq,
                        };
                        quarantine(node, &path, &e, report)?;
                    }
                }
            }
        } else {
            next.push((name, path));
        }
    }
    // The run of consecutive bundles that can apply now; the rest is held.
    let mut run: Vec<PathBuf> = Vec::new();
    let mut held: Vec<u64> = Vec::new();
    for (name, path) in next {
        if held.is_empty() && name.seq == ps.in_seq + 1 + run.len() as u64 {
            run.push(path);
        } else {
            held.push(name.seq);
        }
    }
    let mut i = 0;
    while i < run.len() {
        // One bundle per transaction; when one refers to rows that only a later bundle
        // of the run brings, those apply together in one transaction.
        let mut width = 1;
        // The first bundle's own error, once it has failed alone.
        let mut first_error = None;
        let outcome = loop {
            match apply_files(conn, node, &run[i..i + width], &ps, fresh, bar).await {
                Err(f)
                    if matches!(f.error, ImportError::MissingReference(_))
                        && i + width < run.len() =>
                {
                    first_error.get_or_insert(f.error);
                    width += 1;
                }
                other => break other,
            }
        };
        let failed = match outcome {
            Ok(applied) => {
                for (a, path) in applied.into_iter().zip(&run[i..i + width]) {
                    fs::remove_file(path).map_err(|source| ImportError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    report.applied.push(a);
                }
                ps = state::peer(conn, sender, false).await?;
                let committed = Committed {
                    seq: ps.in_seq,
                    hash: ps.in_hash,
                    db_us: db_now_us(conn, node.clock.offset_us).await?,
                };
                Sequences::record_applied(&node.dirs, sender, &committed)?;
                node.dirs.clear_blocked(sender)?;
                i += width;
                continue;
            }
            Err(f) => f,
        };
        // The error goes with the bundle that failed. When that is a later one of the
        // run (it failed to open, say), the ones before it stay in the inbox, the first
        // reported with the error it failed with alone.
        let culprit = i + failed.at;
        // The first bundle's own error when it was tried alone first.
        let first_failed_with = first_error.as_ref().unwrap_or(&failed.error);
        if matches!(first_failed_with, ImportError::MissingReference(_)) {
            stopped = SenderOutcome::MissingReference;
        }
        // Why the first bundle, which stays in the inbox unless it is quarantined below,
        // did not apply.
        let why = first_failed_with.to_string();
        if failed.at > 0 {
            if let Some(e) = first_error.take() {
                report.failed.push(Problem {
                    file: file_name(&run[i]),
                    error: e.to_string(),
                    quarantined: None,
                });
            }
        }
        if failed.error.file_is_bad() {
            quarantine(node, &run[culprit], &failed.error, report)?;
            held.extend(
                (i + 1..run.len())
                    .filter(|&j| j != culprit)
                    .map(|j| ps.in_seq + 1 + (j - i) as u64),
            );
        } else {
            report.failed.push(Problem {
                file: file_name(&run[culprit]),
                error: failed.error.to_string(),
                quarantined: None,
            });
        }
        if failed.error.file_is_bad() && culprit == i {
            node.dirs.clear_blocked(sender)?; // it left the inbox
        } else {
            // The first bundle stays in the inbox; `ferry status` tells why.
            node.dirs
                .note_blocked(sender, ps.in_seq + 1, &why, node.clock.now_us())?;
        }
        break; // later bundles of this sender wait for the first one
    }
    if !held.is_empty() {
        held.sort_unstable();
        report.held.push(Held {
            sender: sender.to_string(),
            waiting_for: ps.in_seq + 1,
            held,
        });
    }
    Ok(stopped)
}

/// Why a run of bundles failed to apply.
struct RunFailed {
    /// The bundle of the run (its index) that was being opened or applied; 0 for what
    /// fails after all of them are in (a reference still missing, the commit).
    at: usize,
    error: ImportError,
}

/// Opens, checks and applies consecutive bundles of one sender in one transaction.
async fn apply_files(
    conn: &mut Conn,
    node: &NodeContext,
    paths: &[PathBuf],
    ps: &state::PeerState,
    fresh: &mut FreshTables,
    bar: &ProgressBar,
) -> Result<Vec<Applied>, RunFailed> {
    let mut at = 0;
    apply_run(conn, node, paths, ps, fresh, bar, &mut at)
        .await
        .map_err(|error| RunFailed { at, error })
}

/// [`apply_files`], noting in `at` which bundle it is at.
async fn apply_run(
    conn: &mut Conn,
    node: &NodeContext,
    paths: &[PathBuf],
    ps: &state::PeerState,
    fresh: &mut FreshTables,
    bar: &ProgressBar,
    at: &mut usize,
) -> Result<Vec<Applied>, ImportError> {
    let database = node.db.database.clone();
    let plan = stored_plan(conn, &database).await?;
    let schema = Schema::read(conn, &database).await?;
    let sender = ps.peer.clone();
    conn.exec_drop(
        "SET @ferry_origin = ?, FOREIGN_KEY_CHECKS = 0, \
         sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'",
        (&sender,),
    )
    .await
    .map_err(DbError::query("preparing the import session"))?;
    begin(conn).await?;
    let result = async {
        let mut now = state::peer(conn, &sender, true).await?;
        let floors = Floors::load(conn).await?;
        let mut applier = Applier::new(
            &plan,
            &schema,
            &sender,
            node.name(),
            BTreeMap::new(),
            floors,
            node.clock.now_us(),
        );
        applier.max_skew_us = node.config.max_clock_skew_seconds.saturating_mul(1_000_000);
        // Changes need logging only when there is another peer to forward them to.
        applier.forward = node.peer_names().iter().any(|p| *p != sender);
        // A multi-row insert's ids are `first + j` only with a lock mode that hands out
        // consecutive values and a step of one; otherwise (a Galera cluster sets the step,
        // say) the inserted rows' ids are looked up by key (issue 4).
        let modes: Option<(u64, u64)> = conn
            .query_first("SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment")
            .await
            .map_err(DbError::query("reading the auto-increment settings"))?;
        applier.consecutive_ids = matches!(modes, Some((0 | 1, 1)));
        // After a restore from a backup, until the sender has sent every row: the
        // rows' versions from the backup that it was sent (`rejoin`).
        applier.backup_upto = Rejoin::load(conn).await?.and_then(|r| r.seen_by(&sender));
        // A sender whose database went back in time (restored from a backup, then
        // `ferry rejoin`) asks for every row: its entry for this node is 0, which no
        // other bundle states.
        let mut went_back = false;
        // Taken back only on success: after a failure the run probes every key.
        applier.fresh = std::mem::take(fresh);
        let mut done = Vec::new();
        let mut pending_ledger = Vec::new();
        for (k, path) in paths.iter().enumerate() {
            *at = k;
            let reader =
                bundle::open_named(path, &file_name(path), node.name(), &node.keys, &node.peers)?;
            let header = reader.header().clone();
            let hash = reader.hash();
            if header.sender != sender || now.in_seq + 1 != header.seq {
                // Another import got here first, or the file lies about its name.
                return Err(ImportError::Conflicting {
                    sender: header.sender.clone(),
                    seq: header.seq,
                });
            }
            let expected_prev = if now.in_seq == 0 {
                [0u8; 32]
            } else {
                now.in_hash
            };
            if header.prev_hash != expected_prev {
                return Err(ImportError::ChainBroken {
                    sender: header.sender.clone(),
                    seq: header.seq,
                    prev: now.in_seq,
                });
            }
            if plan.fingerprint() != header.plan_fingerprint {
                return Err(ImportError::PlanMismatch {
                    sender: header.sender.clone(),
                    seq: header.seq,
                });
            }
            let acks: BTreeMap<String, u64> = header.acks.iter().cloned().collect();
            went_back |= acks.get(node.name()) == Some(&0);
            applier.start_bundle(conn, acks.clone()).await?;
            applier.created_us = header.created_us;
            let before = applier.stats.clone();
            // The bar counts this bundle's changes (from zero again if it is retried).
            bar.set_length(header.change_count);
            bar.set_position(0);
            bar.set_message(format!("{} #{}", header.sender, header.seq));
            // Decoded on a thread of its own while the server applies.
            let mut changes = bundle::ReadAhead::start(reader);
            while let Some(batch) = changes.next_batch().await? {
                let n = batch.len() as u64;
                for change in batch {
                    applier.push(conn, change).await?;
                }
                bar.inc(n);
            }
            applier.flush_all(conn).await?;
            let at = node.clock.now_us();
            pending_ledger.push((header.clone(), hash, acks, at));
            now.in_seq = header.seq;
            now.in_hash = hash;
            done.push(Applied {
                file: file_name(path),
                sender: sender.clone(),
                seq: header.seq,
                changes: header.change_count,
                stats: applier.stats.since(&before),
            });
        }
        *at = 0;
        let finishing = std::time::Instant::now();
        applier.finish(conn).await?;
        let t = applier.timings;
        tracing::info!(
            lookup_s = t.lookup.as_secs_f64(),
            keys_s = t.keys.as_secs_f64(),
            existing_s = t.existing.as_secs_f64(),
            versions_s = t.versions.as_secs_f64(),
            decide_s = t.decide.as_secs_f64(),
            translate_s = t.translate.as_secs_f64(),
            unique_s = t.unique.as_secs_f64(),
            update_s = t.update.as_secs_f64(),
            insert_s = t.insert.as_secs_f64(),
            settle_s = t.settle.as_secs_f64(),
            log_s = t.log.as_secs_f64(),
            finish_s = finishing.elapsed().as_secs_f64(),
            "import stages"
        );
        for (header, hash, acks, at) in pending_ledger {
            state::ledger_put(
                conn,
                &header.sender,
                header.seq,
                &hash,
                &header.bundle_id,
                header.change_count,
                at,
            )
            .await?;
            state::record_in(conn, &header.sender, header.seq, &hash, at, &acks).await?;
            state::merge_applied(conn, node.name(), &acks).await?;
            if let Some(&c) = acks.get(node.name()) {
                if rejoin::note_answered(conn, &header.sender, c).await? {
                    tracing::info!(
                        peer = header.sender,
                        seq = header.seq,
                        "the peer has sent every row: the rejoin with it is complete"
                    );
                }
            }
        }
        if went_back {
            tracing::warn!(
                peer = sender,
                "the peer's database went back in time (restored from a backup): the next export sends it every row"
            );
            conn.exec_drop(
                "UPDATE ferry_peer SET rebuild_us = COALESCE(rebuild_us, ?) WHERE peer = ?",
                (node.clock.now_us(), &sender),
            )
            .await
            .map_err(DbError::query("noting that the peer needs every row"))?;
        }
        if let Some(seen) = applier.seen.clone() {
            raise_floor(conn, &seen).await?;
        }
        *fresh = std::mem::take(&mut applier.fresh);
        Ok(done)
    }
    .await;
    let result = finish(conn, result).await;
    conn.query_drop("SET @ferry_origin = NULL, FOREIGN_KEY_CHECKS = 1")
        .await
        .map_err(DbError::query("resetting the import session"))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_reference_names_the_other_missing_rows_up_to_twenty() {
        let mut m = MissingReference {
            table: "visit".into(),
            row: "v1".into(),
            column: "location_id".into(),
            target: "location".into(),
            identity: "l1".into(),
            sender: "site-a".into(),
            also: BTreeSet::new(),
            deleted_here: false,
        };
        let alone = m.to_string();
        assert!(alone.contains("nor in this database\nhint: "), "{alone}");
        m.also.insert(("location".into(), "l2".into()));
        let two = m.to_string();
        assert!(
            two.contains(
                "nor in this database; 1 more row(s) are missing as well: location row l2\nhint: "
            ),
            "{two}"
        );
        for i in 3..30 {
            m.also.insert(("location".into(), format!("l{i:02}")));
        }
        let many = m.to_string();
        assert!(
            many.contains("28 more row(s)") && many.contains(" and 8 others\nhint: "),
            "{many}"
        );
    }
}
