//! Reading the log range (cursor, horizon] of one export into bundle order.
//!
//! The range is read inside the export's snapshot, in chunks of [`LOG_CHUNK`] entries.
//! Each entry is decoded into a compact [`Item`] only when its table is synced (a
//! marker or an entry of a table that is not synced costs a lookup), placed
//! ([`Placer`]: an identity's entries sort together) and pushed into the [`Sorter`]:
//! placing and sorting (spills included) run on a thread of their own (`ferry-sort`),
//! fed batches of [`SORT_BATCH`] entries, while the reading thread decodes the next.
//! Local entries are read with [`LOCAL_COLUMNS`] until the first entry an import
//! logged, and with every column ([`LogEntry::COLUMNS`]) from there on. Without a
//! settled horizon, the range ends at the first gap in positions ([`Contiguous`]).
//!
//! Reading the range over two connections at once, alternate chunks each, was tried
//! and measured (benches/RESULTS.md, 2026-12-05 fourth session): once decoding is
//! spread, the read is bound by the two cores' CPU, and the export took as long.

use mysql_async::prelude::*;
use mysql_async::Conn;
use rustc_hash::FxHashMap;

use super::horizon::Contiguous;
use super::sorter::{Item, Placer, SortError, Sorter};
use super::ExportError;
use crate::capture::versions::LogEntry;
use crate::db::DbError;
use crate::node::NodeContext;

/// The log range read into bundle order.
pub(super) struct Range {
    pub sorter: Sorter,
    /// The horizon: every entry up to it was read.
    pub horizon: u64,
    /// Entries of synced tables in the range that did not come from the peer.
    pub entries: u64,
    /// Rows whose identity changed in the range, with their first identity
    /// ([`Placer::renamed`]; checked by [`super::renames::check`]).
    pub renamed: FxHashMap<(u32, i64), String>,
}

/// The columns of a local log entry: a local entry has no origin, and nothing else of
/// [`LogEntry::COLUMNS`] (those columns hold the version, base and path of an entry an
/// import logged, which always has an origin). Reading six columns fewer costs the
/// server about a quarter less per entry, so the range is read with these until the
/// first entry with an origin, and with [`LogEntry::COLUMNS`] from there on.
const LOCAL_COLUMNS: &str = "change_id, table_name, row_id, row_key, op, wall_us, origin";

/// Log entries read per query: the range is read in chunks so that switching to the
/// wide columns wastes at most the rest of one chunk.
const LOG_CHUNK: usize = 10_000;

/// Reads the log after `cursor` (up to `settled` when the barrier gave it, else up to
/// the end of the unbroken run) into a sorter, inside the snapshot of `fetch`.
pub(super) async fn read_range(
    fetch: &mut Conn,
    node: &NodeContext,
    peer: &str,
    cursor: u64,
    settled: Option<u64>,
    ranks: &FxHashMap<String, u32>,
) -> Result<Range, ExportError> {
    // Placing and sorting (spills included) run on a thread of their own, fed batches
    // of entries, while this one reads and decodes the next.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Item>>(4);
    let root = node.dirs.root().to_path_buf();
    let sorting = std::thread::Builder::new()
        .name("ferry-sort".into())
        .spawn(move || -> Result<(Sorter, Placer), SortError> {
            let mut sorter = Sorter::new(&root);
            let mut placer = Placer::default();
            for batch in rx {
                for mut item in batch {
                    placer.place(&mut item);
                    sorter.push(item)?;
                }
            }
            Ok((sorter, placer))
        })
        .map_err(|e| SortError {
            dir: node.dirs.root().display().to_string(),
            detail: format!("cannot start the sorting thread: {e}"),
        })?;
    let read = read_items(fetch, peer, cursor, settled, ranks, &tx).await;
    drop(tx);
    let sorted = sorting.join().unwrap_or_else(|_| {
        Err(SortError {
            dir: node.dirs.root().display().to_string(),
            detail: "the sorting thread failed".into(),
        })
    });
    let (end, entries) = read?;
    let (sorter, placer) = sorted?;
    Ok(Range {
        sorter,
        horizon: settled.unwrap_or(end),
        entries,
        renamed: placer.renamed,
    })
}

/// Entries handed to the sorting thread at a time.
const SORT_BATCH: usize = 4096;

/// Reads the range into batches for the sorting thread; returns the end of the
/// unbroken run read and the count of entries that did not come from the peer. Stops
/// early (without an error of its own) when the sorting thread has stopped: its error
/// is the one to report.
async fn read_items(
    fetch: &mut Conn,
    peer: &str,
    cursor: u64,
    settled: Option<u64>,
    ranks: &FxHashMap<String, u32>,
    tx: &std::sync::mpsc::SyncSender<Vec<Item>>,
) -> Result<(u64, u64), ExportError> {
    let mut batch: Vec<Item> = Vec::with_capacity(SORT_BATCH);
    let mut run = Contiguous::after(cursor);
    let mut entries = 0;
    // The last position read, and whether entries with an origin were met.
    let mut after = cursor;
    let mut wide = false;
    loop {
        let columns = if wide {
            LogEntry::COLUMNS
        } else {
            LOCAL_COLUMNS
        };
        let (sql, params): (String, Vec<mysql_async::Value>) = match settled {
            Some(h) => (
                format!(
                    "SELECT {columns} FROM ferry_change WHERE change_id > ? AND change_id <= ? \
                     ORDER BY change_id LIMIT {LOG_CHUNK}"
                ),
                vec![after.into(), h.into()],
            ),
            None => (
                format!(
                    "SELECT {columns} FROM ferry_change WHERE change_id > ? \
                     ORDER BY change_id LIMIT {LOG_CHUNK}"
                ),
                vec![after.into()],
            ),
        };
        let mut result = fetch
            .exec_iter(sql, params)
            .await
            .map_err(DbError::query("reading the change log"))?;
        let mut read = 0;
        let mut more = true;
        let mut switched = false;
        while let Some(mut row) = result
            .next()
            .await
            .map_err(DbError::query("reading the change log"))?
        {
            read += 1;
            let origin_null = matches!(row.as_ref(6), Some(mysql_async::Value::NULL));
            if !wide && !origin_null {
                // An entry an import logged: read it and the rest with every column.
                wide = true;
                switched = true;
                break;
            }
            let change_id: u64 = row.get(0).unwrap_or(0);
            after = change_id;
            if settled.is_none() && !run.take(change_id) {
                more = false; // past a gap: the next export takes the rest
                break;
            }
            // Most entries are local and of a synced table: decide before decoding.
            let rank = match row.as_ref(1) {
                Some(mysql_async::Value::Bytes(t)) => std::str::from_utf8(t)
                    .ok()
                    .and_then(|t| ranks.get(t))
                    .copied(),
                _ => None,
            };
            let Some(rank) = rank else {
                continue; // a marker, or a table not synced
            };
            let local =
                origin_null && (!wide || matches!(row.as_ref(9), Some(mysql_async::Value::NULL)));
            let item = if local {
                let op = match row.as_ref(4) {
                    Some(mysql_async::Value::Bytes(b)) => <[u8]>::first(b).copied().unwrap_or(b'U'),
                    _ => b'U',
                };
                let row_id: Option<i64> = row.take(2).unwrap_or(None);
                Item {
                    rank,
                    turn: 0,
                    change_id,
                    row_id,
                    at: row_id.unwrap_or(i64::MAX),
                    row_key: row.take(3).unwrap_or_default(),
                    op,
                    wall_us: row.get(5).unwrap_or(0),
                    stored: None,
                }
            } else {
                Item::of(rank, LogEntry::from_row(row))
            };
            if item.origin() != Some(peer) && item.via() != Some(peer) {
                entries += 1;
            }
            batch.push(item);
            if batch.len() == SORT_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(SORT_BATCH));
                if tx.send(full).is_err() {
                    return Ok((run.end, entries)); // the sorting thread stopped
                }
            }
        }
        drop(result);
        if !switched && (!more || read < LOG_CHUNK) {
            break;
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    Ok((run.end, entries))
}
