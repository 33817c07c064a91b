//! Export: sealing, for each peer, every captured change the peer does not hold yet
//! into the next bundle of that (sender, peer) sequence.
//!
//! One export of one peer runs in three steps:
//! 1. **Stamp** (a short transaction): every committed local change gets its `seq` and
//!    version (see [`crate::capture::stamp`]). The highest `seq` is the horizon.
//! 2. **Seal**: the log entries between the peer's cursor and the horizon, except those
//!    that came from the peer or originated there, are read ordered by table (parents
//!    first, [`SyncPlan::apply_order`]), then by the row's local id (rows compress
//!    best in the order they were written, as in a dump), row and seq; each row's entries coalesce into
//!    one change (last op and version, first base version) carrying the row's values in
//!    uuid space ([`rows::TableReader`]); a deleted row travels as a tombstone. Entries
//!    stream from the server and rows are fetched in batches, so memory stays bounded
//!    whatever the backlog. The bundle is written to `<name>.pending` in the outbox.
//! 3. **Commit** (a second short transaction): the peer's sequence, hash chain and cursor
//!    advance, then the pending file is renamed to its final name. A crash between the
//!    two leaves a pending file that the next export publishes (if the commit happened)
//!    or deletes (if not): the outbox never holds two different bundles with one number.
//!
//! Entries stay in the log until every peer that must receive them has acknowledged
//! them ([`crate::state::prune`]).

pub mod rows;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, Row, Value as MyValue};
use serde::Serialize;

use crate::bundle::{BundleError, BundleMeta, BundleName, BundleWriter, Change, Identity, Op};
use crate::capture::drift::{self, DriftItem};
use crate::capture::setup::{enabled_tables, stored_plan};
use crate::capture::stamp::{row_versions, version_from, Stamp};
use crate::capture::CaptureError;
use crate::db::{literal, DbError};
use crate::node::NodeContext;
use crate::schema::identity_sql::parse_identity;
use crate::schema::{Schema, SyncPlan};
use crate::state;
use crate::transport::atomic;
use crate::transport::state::TransportError;
use rows::{RowError, TableReader};

/// Rows fetched per query while sealing.
const FETCH_BATCH: usize = 500;

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
    #[error("the schema changed since the last setup ({})\nhint: run `ferry setup` first, on every node, so that all nodes read bundles the same way", describe(.0))]
    Drift(Vec<DriftItem>),
    #[error("{peer} is not a peer of this node\nhint: add it with `ferry peer add {peer} KEY`")]
    UnknownPeer { peer: String },
    #[error("the change log holds an entry for {table} row {key:?} that ferry cannot read\nhint: run `ferry setup` to repair the plan, then export again")]
    BadEntry { table: String, key: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn describe(d: &[DriftItem]) -> String {
    d.iter()
        .map(|i| format!("{}: {}", i.table, i.change))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Write a bundle even when there is nothing new (to carry acknowledgements).
    pub heartbeat: bool,
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
}

/// Exports to every configured peer (or the named ones).
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
    let mut out = Vec::new();
    for p in names {
        if node.config.peer(&p).is_none() {
            return Err(ExportError::UnknownPeer { peer: p });
        }
        out.push(export_peer(conn, fetch, node, &p, opts).await?);
    }
    Ok(out)
}

/// Runs stamping in its own short transaction; returns the horizon (last `seq`).
pub async fn stamp(conn: &mut Conn, node: &NodeContext) -> Result<u64, DbError> {
    begin(conn).await?;
    let result = async {
        let mut s = Stamp::lock(conn, node.name(), node.clock).await?;
        s.stamp_pending(conn).await?;
        s.save(conn).await?;
        Ok::<u64, DbError>(s.seq)
    }
    .await;
    finish(conn, result).await
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

async fn export_peer(
    conn: &mut Conn,
    fetch: &mut Conn,
    node: &NodeContext,
    peer: &str,
    opts: &ExportOptions,
) -> Result<PeerExport, ExportError> {
    let database = node.db.database.clone();
    let plan = stored_plan(conn, &database).await?;
    let drift = drift::detect(conn, &database).await?;
    if !drift.is_empty() {
        return Err(ExportError::Drift(drift));
    }
    // Serialise exports of this database (a second `ferry export` waits).
    let _: Option<i64> = conn
        .exec_first(
            "SELECT GET_LOCK(CONCAT('ferry-export-', DATABASE()), 600)",
            (),
        )
        .await
        .map_err(DbError::query("taking the export lock"))?;
    let result =
        async {
            let started = std::time::Instant::now();
            let horizon = stamp(conn, node).await?;
            let stamped = started.elapsed();
            let ps = state::peer(conn, peer, false).await?;
            recover_pending(node, peer, ps.out_seq)?;
            let mut report = PeerExport {
                peer: peer.to_string(),
                bundle: None,
                seq: None,
                changes: 0,
                bytes: 0,
                entries: 0,
            };
            if horizon <= ps.out_cursor && !opts.heartbeat {
                return Ok(report);
            }
            let schema = Schema::read(conn, &database).await?;
            let enabled = enabled_tables(conn).await?;
            let mut acks = state::applied(conn).await?;
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
            let mut sealer = Sealer {
                plan: &plan,
                schema: &schema,
                readers: HashMap::new(),
                fetching: Duration::ZERO,
                writing: Duration::ZERO,
                declared: Default::default(),
                me: node.name().to_string(),
                peer: peer.to_string(),
            };
            let (entries, changes) = sealer
                .seal(
                    conn,
                    fetch,
                    &mut writer,
                    peer,
                    ps.out_cursor,
                    horizon,
                    &enabled,
                )
                .await?;
            report.entries = entries;
            if changes == 0 && !opts.heartbeat {
                // Nothing for this peer (everything was its own): just move the cursor.
                begin(conn).await?;
                let r = async {
                    state::peer(conn, peer, true).await?;
                    conn.exec_drop(
                        "UPDATE ferry_peer SET out_cursor = ? WHERE peer = ?",
                        (horizon, peer),
                    )
                    .await
                    .map_err(DbError::query("moving the export cursor"))
                }
                .await;
                finish(conn, r).await?;
                return Ok(report);
            }
            let sealing = started.elapsed() - stamped;
            let sealed = writer.finish(&pending)?;
            let finished = started.elapsed() - stamped - sealing;
            begin(conn).await?;
            let r =
                async {
                    let now = state::peer(conn, peer, true).await?;
                    if now.out_seq != ps.out_seq {
                        return Err(ExportError::Db(DbError::Query {
                            doing: "recording the bundle".into(),
                            source: mysql_async::Error::Other(
                                "another export ran at the same time".into(),
                            ),
                        }));
                    }
                    state::record_out(conn, peer, name.seq, &sealed.hash, horizon, meta.created_us)
                        .await?;
                    conn.exec_drop(
                "INSERT INTO ferry_outbox (peer, seq, cursor_seq, changes, bytes, sealed_us) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                (peer, name.seq, horizon, changes, sealed.len, meta.created_us),
            )
            .await
            .map_err(DbError::query("recording the outbox"))?;
                    Ok(())
                }
                .await;
            if let Err(e) = finish(conn, r).await {
                let _ = fs::remove_file(&pending);
                return Err(e);
            }
            atomic::publish(&pending, &final_path).map_err(|source| ExportError::Io {
                path: final_path.clone(),
                source,
            })?;
            report.bundle = Some(name.file_name());
            report.seq = Some(name.seq);
            report.changes = changes;
            report.bytes = sealed.len;
            tracing::info!(
                changes,
                entries,
                stamp_s = stamped.as_secs_f64(),
                seal_s = sealing.as_secs_f64(),
                seal_fetch_s = sealer.fetching.as_secs_f64(),
                seal_write_s = sealer.writing.as_secs_f64(),
                finish_s = finished.as_secs_f64(),
                total_s = started.elapsed().as_secs_f64(),
                "export stages"
            );
            Ok(report)
        }
        .await;
    let _ = conn
        .query_drop("DO RELEASE_LOCK(CONCAT('ferry-export-', DATABASE()))")
        .await;
    result
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

/// One log entry as the sealer reads it.
struct Entry {
    table: String,
    key: String,
    row_id: Option<i64>,
    op: String,
    version: Option<crate::bundle::Version>,
    base: Option<crate::bundle::Version>,
    origin: Option<String>,
}

/// A row's coalesced entries.
struct Group {
    table: String,
    key: String,
    row_id: Option<i64>,
    op: Op,
    version: crate::bundle::Version,
    base: Option<crate::bundle::Version>,
    origin: String,
}

struct Sealer<'a> {
    plan: &'a SyncPlan,
    schema: &'a Schema,
    readers: HashMap<String, TableReader>,
    declared: std::collections::HashSet<String>,
    me: String,
    /// Time spent reading rows, and encoding them into the bundle (for the stage log).
    fetching: Duration,
    writing: Duration,
    peer: String,
}

impl Sealer<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn seal(
        &mut self,
        conn: &mut Conn,
        fetch: &mut Conn,
        writer: &mut BundleWriter,
        peer: &str,
        cursor: u64,
        horizon: u64,
        enabled: &BTreeMap<String, bool>,
    ) -> Result<(u64, u64), ExportError> {
        let order: Vec<String> = self
            .plan
            .apply_order()
            .into_iter()
            .filter(|t| enabled.get(t).copied().unwrap_or(true))
            .collect();
        if order.is_empty() {
            return Ok((0, 0));
        }
        let field = order
            .iter()
            .map(|t| literal(t))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT table_name, row_key, row_id, op, version_wall, version_counter, version_node, \
             base_wall, base_counter, base_node, origin FROM ferry_change \
             WHERE seq > ? AND seq <= ? AND (origin IS NULL OR origin <> ?) AND (via IS NULL OR via <> ?) \
             AND table_name IN ({field}) \
             ORDER BY FIELD(table_name, {field}), \
             MIN(row_id) OVER (PARTITION BY table_name, row_key), row_key, seq"
        );
        let mut result = conn
            .exec_iter(sql, (cursor, horizon, peer, peer))
            .await
            .map_err(DbError::query("reading the change log"))?;
        let mut entries = 0u64;
        let mut changes = 0u64;
        let mut batch: Vec<Group> = Vec::new();
        let mut current: Option<Group> = None;
        while let Some(row) = result
            .next()
            .await
            .map_err(DbError::query("reading the change log"))?
        {
            entries += 1;
            let e = entry(row);
            match current.as_mut() {
                Some(g) if g.table == e.table && g.key == e.key => {
                    g.op = op_of(&e.op);
                    if let Some(v) = e.version {
                        g.version = v;
                    }
                    g.origin = e.origin.unwrap_or_else(|| self.me.clone());
                    if e.row_id.is_some() {
                        g.row_id = e.row_id;
                    }
                }
                _ => {
                    if let Some(g) = current.take() {
                        if batch.first().is_some_and(|b| b.table != g.table)
                            || batch.len() >= FETCH_BATCH
                        {
                            changes += self.flush(fetch, writer, &mut batch).await?;
                        }
                        batch.push(g);
                    }
                    let version = e.version.clone().ok_or_else(|| ExportError::BadEntry {
                        table: e.table.clone(),
                        key: e.key.clone(),
                    })?;
                    current = Some(Group {
                        op: op_of(&e.op),
                        version,
                        base: e.base,
                        origin: e.origin.unwrap_or_else(|| self.me.clone()),
                        row_id: e.row_id,
                        table: e.table,
                        key: e.key,
                    });
                }
            }
        }
        drop(result);
        if let Some(g) = current.take() {
            if batch.first().is_some_and(|b| b.table != g.table) {
                changes += self.flush(fetch, writer, &mut batch).await?;
            }
            batch.push(g);
        }
        changes += self.flush(fetch, writer, &mut batch).await?;
        Ok((entries, changes))
    }

    /// Fetches the rows of a batch (one table) and writes their changes.
    async fn flush(
        &mut self,
        fetch: &mut Conn,
        writer: &mut BundleWriter,
        batch: &mut Vec<Group>,
    ) -> Result<u64, ExportError> {
        let Some(first) = batch.first() else {
            return Ok(0);
        };
        let table = first.table.clone();
        if !self.readers.contains_key(&table) {
            match TableReader::new(self.plan, self.schema, &table) {
                Some(r) => {
                    self.readers.insert(table.clone(), r);
                }
                None => {
                    batch.clear(); // the table is no longer synced
                    return Ok(0);
                }
            }
        }
        let reader = &self.readers[&table];
        if self.declared.insert(table.clone()) {
            writer.declare_table(&table, &reader.columns)?;
        }
        let arity = self
            .plan
            .table(&table)
            .and_then(|t| t.synced())
            .map(|s| s.identity.arity())
            .unwrap_or(1);
        // Fetch the values of rows that still exist.
        let started = Instant::now();
        let live: Vec<&Group> = batch.iter().filter(|g| g.op != Op::Delete).collect();
        let mut rows: HashMap<String, (Identity, Vec<crate::bundle::Value>)> = HashMap::new();
        let by_id: Vec<i64> = live.iter().filter_map(|g| g.row_id).collect();
        if reader.row_id.is_some() && by_id.len() == live.len() && !by_id.is_empty() {
            let sql = reader.select_by_row_ids(by_id.len()).expect("row id");
            let params: Vec<MyValue> = by_id.iter().map(|i| MyValue::Int(*i)).collect();
            let found: Vec<Row> = fetch
                .exec(sql, params)
                .await
                .map_err(DbError::query(format!("reading {table} rows")))?;
            for r in found {
                let (k, id, v) = reader.decode(&r)?;
                rows.insert(k, (id, v));
            }
        } else if !live.is_empty() {
            let sql = reader.select_by_keys(live.len());
            let params: Vec<MyValue> = live.iter().map(|g| MyValue::from(g.key.clone())).collect();
            let found: Vec<Row> = fetch
                .exec(sql, params)
                .await
                .map_err(DbError::query(format!("reading {table} rows")))?;
            for r in found {
                let (k, id, v) = reader.decode(&r)?;
                rows.insert(k, (id, v));
            }
        }
        // A row whose current version was made at the peer itself and beat the
        // versions grouped here (a local edit that lost on import): the peer holds a
        // greater version already, and the row's values are no longer these versions'.
        // The loser was recorded here; sending it would only mislabel the winner's values.
        let keys: Vec<(String, String)> = batch
            .iter()
            .map(|g| (g.table.clone(), g.key.clone()))
            .collect();
        let current = row_versions(fetch, &keys).await?;
        batch.retain(|g| {
            !current
                .get(&(g.table.clone(), g.key.clone()))
                .is_some_and(|(v, _)| v.node == self.peer && *v > g.version)
        });
        let mut n = 0;
        let fetched = Instant::now();
        self.fetching += fetched.duration_since(started);
        for g in batch.drain(..) {
            let change = if g.op == Op::Delete {
                let parts = parse_identity(&g.key, arity).ok_or_else(|| ExportError::BadEntry {
                    table: g.table.clone(),
                    key: g.key.clone(),
                })?;
                Change {
                    table: g.table,
                    identity: Identity(parts),
                    op: Op::Delete,
                    version: g.version,
                    base_version: g.base,
                    origin: g.origin,
                    values: Vec::new(),
                }
            } else {
                // A row that is gone was deleted after the horizon; its delete
                // travels in the next bundle.
                let Some((identity, values)) = rows.remove(&g.key) else {
                    continue;
                };
                Change {
                    table: g.table,
                    identity,
                    op: if g.base.is_none() {
                        Op::Insert
                    } else {
                        Op::Update
                    },
                    version: g.version,
                    base_version: g.base,
                    origin: g.origin,
                    values,
                }
            };
            writer.push(&change)?;
            n += 1;
        }
        self.writing += fetched.elapsed();
        Ok(n)
    }
}

fn op_of(op: &str) -> Op {
    match op {
        "I" => Op::Insert,
        "D" => Op::Delete,
        _ => Op::Update,
    }
}

fn entry(row: Row) -> Entry {
    type R = (
        String,
        String,
        Option<i64>,
        String,
        Option<i64>,
        Option<u32>,
        Option<String>,
        Option<i64>,
        Option<u32>,
        Option<String>,
        Option<String>,
    );
    let (table, key, row_id, op, vw, vc, vn, bw, bc, bn, origin): R = mysql_async::from_row(row);
    Entry {
        table,
        key,
        row_id,
        op,
        version: version_from(vw, vc, vn),
        base: version_from(bw, bc, bn),
        origin,
    }
}
