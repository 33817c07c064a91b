//! Export: sealing, for each peer, every captured change the peer does not hold yet
//! into the next bundle of that (sender, peer) sequence.
//!
//! Export writes nothing to the log (but a heartbeat's marker, which only takes a
//! position): an entry's position and version follow from the entry itself
//! ([`crate::capture::versions`]). One export of one peer runs in four steps:
//! 1. **Horizon** ([`horizon`]): the position up to which no entry can still appear.
//! 2. **Read the range** (cursor, horizon] of the log inside one consistent snapshot
//!    (in chunks; local entries with only the columns a local entry uses, until the
//!    first entry an import logged), and sort it into bundle order ([`sorter`]): by table (parents first,
//!    [`crate::schema::SyncPlan::apply_order`]), then by the row's local id (rows
//!    compress best in the order they were written, as in a dump), then by position.
//!    All entries of one identity sort together: one deleted and made again under a
//!    new local id keeps the place of its deleted entries ([`sorter::Placer`]).
//! 3. **Seal** ([`group`]): each row's entries coalesce into one change (the last op
//!    and version) on top of the version the peer is known to hold (the base); a thread
//!    of its own groups the sorted entries into rows and batches ahead of sealing.
//!    Entries that came from the peer, or originated there, are not sent back; the peer
//!    holds them, and they are the base of what follows them. The rows' values are read
//!    in batches in uuid space ([`fetch::RowFetcher`]) on connections of their own, two
//!    batches ahead of sealing (a row changed after the snapshot is read as it is now,
//!    and its later entries travel in the next bundle); a deleted row travels as a
//!    tombstone. Changes are sealed straight from the rows read (no copy of their
//!    values), zstd compressing on a thread of its own meanwhile, into `<name>.pending`
//!    in the outbox.
//! 4. **Commit** (a short transaction): the peer's sequence, hash chain and cursor
//!    advance, then the pending file is renamed to its final name. A crash between the
//!    two leaves a pending file that the next export publishes (if the commit happened)
//!    or deletes (if not): the outbox never holds two different bundles with one number.
//!
//! Memory stays bounded whatever the backlog: the sort spills to disk (the placer keeps
//! a hash per delete in the range, not per entry), rows are read a batch at a time, the
//! reference cache has a ceiling and the sealing queue is bounded.
//! Entries stay in the log until every peer that must receive them has acknowledged
//! them ([`crate::state::prune`]).

pub mod fetch;
pub mod group;
pub mod horizon;
mod range;
pub mod refs;
pub mod renames;
pub mod rows;
pub mod sorter;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::Conn;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::bundle::{BundleError, BundleMeta, BundleName, BundleWriter};
use crate::capture::clock::db_now_us;
use crate::capture::drift::{self, DriftItem, DriftKind};
use crate::capture::setup::{enabled_tables, installed_clock_offset, stored_plan};
use crate::capture::versions::Floors;
use crate::capture::CaptureError;
use crate::db::{release_lock, take_lock, DbError};
use crate::node::NodeContext;
use crate::rejoin::Rejoin;
use crate::schema::Schema;
use crate::state;
use crate::transport::atomic;
use crate::transport::sequences::{Committed, Sequences};
use crate::transport::state::TransportError;
use fetch::FetchError;
use group::Sealer;
use range::read_range;
use rows::RowError;
use sorter::SortError;

/// Errors of export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Row(#[from] RowError),
    #[error(transparent)]
    Sort(#[from] SortError),
    #[error("the schema or ferry's capture changed since the last setup ({})\nhint: {}", describe(.0), drift_hint(.0))]
    Drift(Vec<DriftItem>),
    #[error("the clock offset in the config ({config} s) is not the one the triggers were set up with ({installed} s)\nhint: run `ferry setup` to apply it")]
    ClockOffset { config: i64, installed: i64 },
    #[error("{peer} is not a peer of this node\nhint: add it with `ferry peer add {peer} KEY`")]
    UnknownPeer { peer: String },
    #[error("the change log holds an entry for {table} row {key:?} that ferry cannot read\nhint: run `ferry setup` to repair the plan, then export again")]
    BadEntry { table: String, key: String },
    #[error(transparent)]
    IdentityChanged(Box<renames::IdentityChange>),
    #[error("another export to {peer} ran at the same time\nhint: nothing was lost; export again")]
    Concurrent { peer: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<FetchError> for ExportError {
    fn from(e: FetchError) -> ExportError {
        match e {
            FetchError::Db(e) => ExportError::Db(e),
            FetchError::Row(e) => ExportError::Row(e),
        }
    }
}

fn describe(d: &[DriftItem]) -> String {
    drift::summary(d, 3).join("; ")
}

fn drift_hint(d: &[DriftItem]) -> &'static str {
    if d.iter().any(|i| i.kind == DriftKind::Truncate) {
        crate::capture::counters::EMPTIED_HINT
    } else {
        "run `ferry setup` first, on every node, so that all nodes read bundles the same way"
    }
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Write a bundle even when there is nothing new (to carry acknowledgements).
    pub heartbeat: bool,
    /// Seal every row of every synced table, not only the changes the peer lacks: for a
    /// peer that joins with other data, or that missed changes the log no longer holds.
    pub full: bool,
}

/// What an export did for one peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerExport {
    pub peer: String,
    /// The bundle's file name, when one was written.
    pub bundle: Option<String>,
    pub seq: Option<u64>,
    pub changes: u64,
    pub bytes: u64,
    /// Log entries covered (before coalescing).
    pub entries: u64,
    /// When the peer became a peer after the log was pruned up to this position: the
    /// changes up to it do not reach it (`state::note_missed`).
    pub missed_before: Option<u64>,
    /// The bundle gives the peer every row, its own included: its database went back
    /// in time (restored from a backup), and it rejoined ([`crate::rejoin`]).
    pub rebuild: bool,
}

/// Exports to every configured peer (or the named ones). `fetch` is a second
/// connection that reads the log and the rows inside one snapshot.
pub async fn export(
    conn: &mut Conn,
    fetch: &mut Conn,
    node: &NodeContext,
    peers: &[String],
    opts: &ExportOptions,
) -> Result<Vec<PeerExport>, ExportError> {
    let names: Vec<String> = if peers.is_empty() {
        node.peer_names()
    } else {
        peers.to_vec()
    };
    if let Some(p) = names.iter().find(|p| node.config.peer(p).is_none()) {
        return Err(ExportError::UnknownPeer { peer: p.clone() });
    }
    crate::capture::bookkeeping::check_node(conn, node.name()).await?;
    crate::capture::bookkeeping::check_current(conn).await?;
    // Once for every peer: it reads the schema and every trigger.
    let drift = drift::detect(conn, &node.db.database).await?;
    if !drift.is_empty() {
        return Err(ExportError::Drift(drift));
    }
    // From here, a table's id counter going back is a truncate.
    crate::capture::counters::record(conn, &node.db.database).await?;
    let mut out = Vec::new();
    for p in names {
        out.push(export_peer(conn, fetch, node, &p, opts).await?);
    }
    Ok(out)
}

/// Starts a READ COMMITTED transaction.
pub async fn begin(conn: &mut Conn) -> Result<(), DbError> {
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .map_err(DbError::query("setting the isolation level"))?;
    conn.query_drop("START TRANSACTION")
        .await
        .map_err(DbError::query("starting a transaction"))
}

/// Starts a read-only transaction on one consistent snapshot.
pub async fn begin_snapshot(conn: &mut Conn) -> Result<(), DbError> {
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(DbError::query("setting the isolation level"))?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(DbError::query("starting a snapshot"))
}

/// Commits on success, rolls back on failure.
pub async fn finish<T, E: From<DbError>>(conn: &mut Conn, result: Result<T, E>) -> Result<T, E> {
    match result {
        Ok(v) => {
            conn.query_drop("COMMIT")
                .await
                .map_err(DbError::query("committing"))?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Refuses when the triggers record time with another offset than the config says.
pub async fn check_clock(conn: &mut Conn, node: &NodeContext) -> Result<(), ExportError> {
    let installed = installed_clock_offset(conn).await?;
    if installed != node.clock.offset_us {
        return Err(ExportError::ClockOffset {
            config: node.clock.offset_us / 1_000_000,
            installed: installed / 1_000_000,
        });
    }
    Ok(())
}

async fn export_peer(
    conn: &mut Conn,
    fetch: &mut Conn,
    node: &NodeContext,
    peer: &str,
    opts: &ExportOptions,
) -> Result<PeerExport, ExportError> {
    let entered = Instant::now();
    let database = node.db.database.clone();
    let plan = stored_plan(conn, &database).await?;
    check_clock(conn, node).await?;
    // Serialise exports of this database (a second `ferry export` waits; one that waited
    // in vain still meets the sequence check at commit).
    take_lock(conn, EXPORT_LOCK, 600).await?;
    let result =
        async {
            let started = Instant::now();
            let prelude = started - entered;
            let ps = state::peer(conn, peer, false).await?;
            // Before anything is published or deleted by the database's numbers: they
            // must not be behind what this node did (a database restored from a backup).
            Sequences::load(&node.dirs).check(peer, ps.out_seq, ps.in_seq)?;
            recover_pending(node, peer, ps.out_seq)?;
            // A peer whose database went back in time gets every row, its own too.
            let rebuild = ps.rebuild_us;
            let full = opts.full || rebuild.is_some();
            // This node rejoined after a restore: its first bundle for the peer asks
            // for every row; the next ones claim nothing of the peer's until it answered.
            let rejoin = Rejoin::load(conn).await?;
            let asking = rejoin.as_ref().is_some_and(|r| r.asks(peer));
            let waiting = !asking && rejoin.as_ref().is_some_and(|r| r.peers.contains_key(peer));
            // A full export gives the peer every row: nothing is missed.
            let missed_before = if full {
                None
            } else {
                state::note_missed(conn, peer, ps.out_cursor).await?
            };
            if let Some(upto) = missed_before {
                tracing::info!(
                    peer,
                    upto,
                    "the log was pruned before this peer was added: it does not receive those changes"
                );
            }
            let mut report = PeerExport {
                peer: peer.to_string(),
                bundle: None,
                seq: None,
                changes: 0,
                bytes: 0,
                entries: 0,
                missed_before,
                rebuild: rebuild.is_some(),
            };
            // A bundle that asks takes a position of its own, above every one the peer
            // knows: its ack of it is the answer.
            if opts.heartbeat || asking {
                crate::capture::versions::mark_position(conn, node.clock.now_us()).await?;
            }
            let settled = horizon::barrier(conn).await?;
            // Every synced table, switched off or not: switching a table off stops its
            // capture, and what was captured before still goes out. Leaving it out
            // moved the cursor past it, and those changes were lost (issue 4).
            let tables: Vec<String> = plan.apply_order();
            // Looked up for every log entry read: FxHash.
            let ranks: FxHashMap<String, u32> = tables
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u32))
                .collect();
            begin_snapshot(fetch).await?;
            let sealed = async {
                let floors = Floors::load(fetch).await?;
                let range = read_range(fetch, node, peer, ps.out_cursor, settled, &ranks).await?;
                let read = started.elapsed();
                report.entries = range.entries;
                let horizon = range.horizon;
                let always = opts.heartbeat || full || asking;
                if horizon <= ps.out_cursor && !always {
                    return Ok(None);
                }
                if range.sorter.is_empty() && !always {
                    return Ok(Some((horizon, None, read)));
                }
                let reading_schema = Instant::now();
                let schema = Schema::read(fetch, &database).await?;
                renames::check(fetch, &plan, &schema, &tables, ps.out_cursor, &range.renamed).await?;
                let schema_s = reading_schema.elapsed().as_secs_f64();
                let mut acks = state::applied_upto(fetch, ps.out_cursor, horizon).await?;
                // The peer reads its own entry as proof of which of its bundles were
                // applied here (they leave its outbox). In a mesh its changes can arrive
                // by another node first, so that entry is the horizon of the last bundle
                // from the peer itself applied here, not all this node holds (issue 4).
                // An entry of 0 for the peer is stated only by a bundle that asks for
                // every row (0 claims nothing; otherwise it is left out).
                match ps.acks.get(peer) {
                    _ if asking => acks.insert(peer.to_string(), 0),
                    _ if waiting => acks.remove(peer),
                    Some(&direct) if direct > 0 => acks.insert(peer.to_string(), direct),
                    _ => acks.remove(peer),
                };
                acks.insert(node.name().to_string(), horizon);
                let recipient_key = node
                    .peers
                    .get(peer)
                    .ok_or_else(|| ExportError::UnknownPeer { peer: peer.into() })?
                    .clone();
                let mut meta = BundleMeta::new(node.name(), peer, ps.out_seq + 1, ps.out_hash);
                if ps.out_seq == 0 {
                    meta.prev_hash = [0; 32];
                }
                meta.created_us = node.clock.now_us();
                meta.plan_fingerprint = plan.fingerprint();
                meta.acks = acks;
                let name = BundleName {
                    sender: node.name().to_string(),
                    recipient: peer.to_string(),
                    seq: meta.seq,
                };
                let final_path = node.dirs.outbox_path(&name)?;
                let pending = pending_path(&final_path);
                let mut writer = BundleWriter::new(
                    node.dirs.root(),
                    &node.keys,
                    &recipient_key,
                    meta.clone(),
                    &mut rand::rngs::OsRng,
                )?;
                writer.compress_in_background()?;
                let mut sealer = Sealer::new(
                    &plan,
                    &schema,
                    &tables,
                    &floors,
                    node.name(),
                    peer,
                    ps.out_cursor,
                    writer,
                    row_readers(node).await?,
                );
                sealer.include_peer_rows = rebuild.is_some();
                let changes = if full {
                    // Every row as it stands in the snapshot covers the range's changes
                    // (the range gives the horizon, the peer's next cursor, and the rows
                    // of tables switched off whose changes it holds).
                    let enabled = enabled_tables(fetch).await?;
                    sealer
                        .seal_full(fetch, &enabled, range.sorter.finish()?)
                        .await?
                } else {
                    sealer.seal(fetch, range.sorter.finish()?).await?
                };
                let stages = sealer.stages();
                let finishing = Instant::now();
                let sealed = sealer.finish(&pending)?;
                let finished = finishing.elapsed();
                if changes == 0 && !opts.heartbeat && !asking {
                    let _ = fs::remove_file(&pending);
                    return Ok(Some((horizon, None, read)));
                }
                tracing::info!(
                    changes,
                    entries = report.entries,
                    prelude_s = prelude.as_secs_f64(),
                    schema_s,
                    read_s = read.as_secs_f64(),
                    seal_s = stages.fetching.as_secs_f64(),
                    rows_s = stages.reading.as_secs_f64(),
                    cache_s = stages.preparing.as_secs_f64(),
                    lookups = stages.lookups,
                    cache_hits = stages.cache_hits,
                    cache_fetched = stages.cache_fetched,
                    cache_queries = stages.cache_queries,
                    cache_waited_s = stages.cache_waited.as_secs_f64(),
                    finish_s = finished.as_secs_f64(),
                    total_s = started.elapsed().as_secs_f64(),
                    "export stages"
                );
                Ok(Some((
                    horizon,
                    Some((name, meta, pending, final_path, sealed, changes)),
                    read,
                )))
            }
            .await;
            let sealed: Result<_, ExportError> = finish(fetch, sealed).await;
            let Some((horizon, bundle, _)) = sealed? else {
                return Ok(report);
            };
            let Some((name, meta, pending, final_path, sealed, changes)) = bundle else {
                // Nothing for this peer (everything was its own): just move the cursor.
                begin(conn).await?;
                let r = async {
                    state::peer(conn, peer, true).await?;
                    conn.exec_drop(
                        "UPDATE ferry_peer SET out_cursor = GREATEST(out_cursor, ?) WHERE peer = ?",
                        (horizon, peer),
                    )
                    .await
                    .map_err(DbError::query("moving the export cursor"))
                }
                .await;
                finish(conn, r).await?;
                return Ok(report);
            };
            begin(conn).await?;
            let r =
                async {
                    let now = state::peer(conn, peer, true).await?;
                    if now.out_seq != ps.out_seq {
                        return Err(ExportError::Concurrent { peer: peer.into() });
                    }
                    state::record_out(conn, peer, name.seq, &sealed.hash, horizon, meta.created_us)
                        .await?;
                    conn.exec_drop(
                "INSERT INTO ferry_outbox (peer, seq, cursor_seq, prev_cursor, changes, bytes, sealed_us) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                (peer, name.seq, horizon, ps.out_cursor, changes, sealed.len, meta.created_us),
            )
            .await
            .map_err(DbError::query("recording the outbox"))?;
                    if full {
                        state::clear_missed(conn, peer).await?;
                    }
                    if let Some(since) = rebuild {
                        conn.exec_drop(
                            "UPDATE ferry_peer SET rebuild_us = NULL WHERE peer = ? AND rebuild_us = ?",
                            (peer, since),
                        )
                        .await
                        .map_err(DbError::query("noting the peer has every row"))?;
                    }
                    if asking && horizon > ps.out_cursor {
                        crate::rejoin::note_asked(conn, peer, horizon).await?;
                    }
                    Ok(())
                }
                .await;
            if let Err(e) = r {
                // Rolled back: this bundle number was never taken.
                let _ = conn.query_drop("ROLLBACK").await;
                let _ = fs::remove_file(&pending);
                return Err(e);
            }
            // A failed COMMIT may still have committed (the connection can drop after
            // the server did): the pending file stays, and the next export publishes it
            // or deletes it by the sequence the database holds (`recover_pending`).
            finish(conn, Ok::<(), ExportError>(())).await?;
            atomic::publish(&pending, &final_path).map_err(|source| ExportError::Io {
                path: final_path.clone(),
                source,
            })?;
            let db_us = db_now_us(conn, node.clock.offset_us).await?;
            let committed = Committed {
                seq: name.seq,
                hash: sealed.hash,
                db_us,
            };
            Sequences::record_sent(&node.dirs, peer, &committed, horizon)?;
            report.bundle = Some(name.file_name());
            report.seq = Some(name.seq);
            report.changes = changes;
            report.bytes = sealed.len;
            Ok(report)
        }
        .await;
    release_lock(conn, EXPORT_LOCK).await;
    result
}

/// Connections that read rows ahead of sealing: two, so that a batch's rows are
/// seldom still on their way when sealing reaches it.
const ROW_READERS: usize = 2;

async fn row_readers(node: &NodeContext) -> Result<Vec<mysql_async::Conn>, ExportError> {
    let mut conns = Vec::with_capacity(ROW_READERS);
    for _ in 0..ROW_READERS {
        conns.push(node.db.connect().await?);
    }
    Ok(conns)
}

/// The named lock exports take (per database).
pub const EXPORT_LOCK: &str = "ferry-export-";

/// Time spent per stage of sealing (for the stage log).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stages {
    /// Sealing, all told, and the part of it spent reading rows (queries included).
    pub fetching: Duration,
    pub reading: Duration,
    /// Filling the reference cache.
    pub preparing: Duration,
    pub lookups: u64,
    pub cache_hits: u64,
    pub cache_fetched: u64,
    /// Queries that filled the cache, and the time spent waiting for them.
    pub cache_queries: u64,
    pub cache_waited: Duration,
}

fn pending_path(final_path: &std::path::Path) -> PathBuf {
    let mut name = final_path.file_name().unwrap_or_default().to_os_string();
    name.push(".pending");
    final_path.with_file_name(name)
}

/// Publishes pending bundles whose commit happened; deletes the others.
fn recover_pending(node: &NodeContext, peer: &str, committed: u64) -> Result<(), ExportError> {
    let dir = node.dirs.outbox(peer);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(base) = file.strip_suffix(".pending") else {
            continue;
        };
        let path = entry.path();
        match BundleName::parse(base) {
            Some(n) if n.seq <= committed => {
                atomic::publish(&path, &dir.join(base)).map_err(|source| ExportError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    Ok(())
}
